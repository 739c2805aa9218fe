"""Ray dispatcher against the local worker: the same 6-job grid, wall time as a ratio in one run.

    python benchmarks/bench_ray.py --rows 20000 --dim 128 --n-bits 1024 --epochs 3 --cpus 2

On a synthetic dataset in a temporary SPARSEBIN_DATA, each contender serves
its own home from a thread of this process, as a long-running worker does:
- the Ray dispatcher (`run_dispatcher` on a local Ray instance of `--cpus`
  CPUs), running `--cpus` one-CPU trainers at once;
- the local worker (`run_worker`), one job at a time, held to one torch and one
  BLAS thread as each Ray trainer is;
- unless `--skip-default-threads`, the local worker on torch's default threads
  (on a loaded machine many threads cost more than they bring).
Each first trains `--cpus` warm-up jobs (timed apart: process start-ups,
imports, compiled-kernel caches), then the grid (k 8/16/32 x loss cosine/mse) is queued
and timed from submit to the last job done. Ray's start-up (`ray.init`) is
timed apart too. With `--repeats` > 1 the order alternates, so no contender
always runs on the warmer machine. The load average is printed before and
after: the machine may be shared.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench_queue import write_dataset  # noqa: E402 - after the project is on the path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--n-bits", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance: trainers at once")
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
    from sparsebin.jobs.queue import FINISHED, Status, Store
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

    def wait_done(store: Store, jobs: list) -> None:
        while any(store.job(job.id).status not in FINISHED for job in jobs):
            time.sleep(0.05)
        statuses = [store.job(job.id).status for job in jobs]
        assert statuses == [Status.DONE] * len(jobs), [store.job(job.id).error for job in jobs]

    def serve(name: str, repeat: int, server, threads: int | None) -> tuple[float, float]:
        """(warm-up wall, grid wall) for one contender serving its own home from a thread."""
        store = Store(root / f"{name}-{repeat}")
        shutdown = threading.Event()
        default_threads = torch.get_num_threads()
        limits = threadpool_limits(threads) if threads else None
        if threads:
            torch.set_num_threads(threads)
        thread = threading.Thread(target=server, args=(store.home, shutdown), daemon=True)
        try:
            began = time.perf_counter()
            # One warm-up job per Ray trainer, so the grid finds them all started.
            warm_up = [store.submit("bench", base.replace(seed=seed)) for seed in range(1, args.cpus + 1)]
            thread.start()
            wait_done(store, warm_up)
            first = time.perf_counter() - began
            began = time.perf_counter()
            wait_done(store, store.submit_grid("bench", base, grid))
            wall = time.perf_counter() - began
        finally:
            shutdown.set()
            thread.join()
            torch.set_num_threads(default_threads)
            if limits is not None:
                limits.restore_original_limits()
        return first, wall

    contenders = {
        "Ray dispatcher": (lambda home, stop: run_dispatcher(home, idle_sleep=0.1, shutdown=stop), None),
        "local worker, one thread": (lambda home, stop: run_worker(home, idle_sleep=0.1, shutdown=stop), 1),
        "local worker, default threads": (lambda home, stop: run_worker(home, idle_sleep=0.1, shutdown=stop), None),
    }
    if args.skip_default_threads:
        del contenders["local worker, default threads"]
    results = {name: [] for name in contenders}
    try:
        for repeat in range(args.repeats):
            order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
            for name in order:
                server, threads = contenders[name]
                results[name].append(serve(name.split(",")[0].replace(" ", "-"), repeat, server, threads))
                first, wall = results[name][-1]
                print(f"repeat {repeat}: {name}: warm-up {first:.2f} s, grid {wall:.2f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    steps = -(-round(args.rows * (1 - base.val_fraction)) // args.batch_size) * args.epochs
    print(
        f"6 jobs (k 8/16/32 x loss cosine/mse), {args.rows} x {args.dim}, N={args.n_bits}, {steps} steps each; "
        f"Ray: {args.cpus} one-CPU trainers at once; local worker: one job at a time"
    )
    remote = min(wall for _, wall in results["Ray dispatcher"])
    for name in contenders:
        if name != "Ray dispatcher":
            local = min(wall for _, wall in results[name])
            print(f"grid wall (min over repeats): Ray {remote:.2f} s / {name} {local:.2f} s = {remote / local:.3f}")
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
