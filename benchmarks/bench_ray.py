"""Ray dispatcher against the local worker: the same 6-job grid, wall time as a ratio in one run.

    python benchmarks/bench_ray.py --rows 5000 --dim 64 --epochs 5 --cpus 2

On a synthetic dataset in a temporary SPARSEBIN_DATA, the grid (k x loss, six
runs) is queued three times, in three homes. The local worker (`run_worker(once=True)`,
in this process, torch's default threads) trains its copy one job at a time;
the dispatcher (`run_dispatcher(once=True)` on a local Ray instance of
`--cpus` CPUs) trains the other as `--cpus` one-CPU tasks at once. A third copy
goes through the local worker held to one torch and one BLAS thread, as each
Ray task is: on a loaded machine, many threads cost more than they bring. Ray's
start-up (`ray.init`) is timed apart and reported with and without the grid.
With `--repeats` > 1 the order alternates, so neither always runs on the warmer
machine. The load average is printed before and after: the machine may be shared.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench_queue import write_dataset  # noqa: E402 - after the project is on the path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-bits", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance: tasks at once")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--skip-default-threads",
        action="store_true",
        help="leave out the local worker on torch's default threads (slow on a loaded machine)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ["SPARSEBIN_DATA"] = str(root / "data")
    import ray
    import torch
    from threadpoolctl import threadpool_limits

    from sparsebin.config import TrainConfig
    from sparsebin.jobs.dispatcher import run_dispatcher
    from sparsebin.jobs.queue import Status, Store
    from sparsebin.jobs.worker import run_worker

    write_dataset(root / "data" / "bench", args.rows, args.dim)
    base = TrainConfig(n_bits=args.n_bits, k=8, epochs=args.epochs, batch_size=args.batch_size, device="cpu")
    grid = {"k": [8, 16, 32], "loss": ["cosine", "mse"]}
    print(f"load average before: {' '.join(f'{value:.2f}' for value in os.getloadavg())}", flush=True)

    started = time.perf_counter()
    ray_dir = tempfile.mkdtemp(prefix="sbbench-")  # short: Ray's socket paths must stay short
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _temp_dir=ray_dir,
    )
    startup = time.perf_counter() - started
    print(f"Ray start-up (ray.init, local instance of {args.cpus} CPUs): {startup:.2f} s", flush=True)

    def run_grid(name: str, repeat: int, runner) -> float:
        store = Store(root / f"{name}-{repeat}")
        jobs = store.submit_grid("bench", base, grid)
        began = time.perf_counter()
        runner(store.home)
        wall = time.perf_counter() - began
        statuses = [store.job(job.id).status for job in jobs]
        assert statuses == [Status.DONE] * len(jobs), [store.job(job.id).error for job in jobs]
        return wall

    def run_local_one_thread(home: Path) -> None:
        # As a Ray task runs: one torch thread, one BLAS/OpenMP thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1):
                run_worker(home, once=True)
        finally:
            torch.set_num_threads(threads)

    runners = {
        "local": lambda home: run_worker(home, once=True),
        "local-1": run_local_one_thread,
        "ray": lambda home: run_dispatcher(home, once=True),
    }
    if args.skip_default_threads:
        del runners["local"]
    walls = {name: [] for name in runners}
    try:
        for repeat in range(args.repeats):
            order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
            for name in order:
                walls[name].append(run_grid(name, repeat, runners[name]))
            single, remote = walls["local-1"][-1], walls["ray"][-1]
            line = f"repeat {repeat}: Ray dispatcher {remote:.2f} s, local worker on one thread {single:.2f} s"
            line += f" (ratio {remote / single:.3f}, {(remote + startup) / single:.3f} with Ray's start-up)"
            if "local" in walls:
                local = walls["local"][-1]
                line += f", local worker on default threads {local:.2f} s (ratio {remote / local:.3f})"
            print(line, flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    steps = -(-round(args.rows * (1 - base.val_fraction)) // args.batch_size) * args.epochs
    print(
        f"6 jobs (k 8/16/32 x loss cosine/mse), {args.rows} x {args.dim}, N={args.n_bits}, {steps} steps each; "
        f"Ray: {args.cpus} one-CPU tasks at once; local: one job at a time"
    )
    single, remote = min(walls["local-1"]), min(walls["ray"])
    line = f"min wall: Ray {remote:.2f} s, local on one thread {single:.2f} s, ratio {remote / single:.3f}"
    if "local" in walls:
        local = min(walls["local"])
        line += f"; local on default threads {local:.2f} s, ratio {remote / local:.3f}"
    print(line)
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
