"""Queue overhead: the same training run called directly and through submit + worker.

    python benchmarks/bench_queue.py --rows 5000 --dim 64 --epochs 5 --repeats 3

In one process, on a synthetic dataset written to a temporary SPARSEBIN_DATA,
each repeat times `run_experiment` on the dataset's embeddings directly, then
`Store.submit` followed by an in-process `run_worker(once=True)` (dataset load,
claim, heartbeat thread, progress writes, finish). The ratio of the medians is
what the queue and its progress writes add to a run (the
minimum is reported too, as the least disturbed by other load).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def write_dataset(folder: Path, rows: int, dim: int) -> None:
    from sparsebin.datasets.importing import index_labels
    from sparsebin.datasets.store import EMBEDDINGS_FILE, write_concepts, write_meta

    folder.mkdir(parents=True)
    embeddings = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    np.save(folder / EMBEDDINGS_FILE, embeddings)
    write_concepts(folder, index_labels(rows))  # rows named by their index, as an import without labels
    write_meta(folder, {"name": folder.name, "count": rows, "dim": dim})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-bits", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=5, help="steps between progress events")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps a shared machine's noise down")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    os.environ["SPARSEBIN_HOME"] = str(root / "home")
    os.environ["SPARSEBIN_DATA"] = str(root / "data")
    import torch

    from sparsebin.config import TrainConfig
    from sparsebin.datasets import load_dataset
    from sparsebin.experiment import run_experiment
    from sparsebin.jobs.queue import Status, Store
    from sparsebin.jobs.worker import run_worker

    torch.set_num_threads(args.threads)
    write_dataset(root / "data" / "bench", args.rows, args.dim)
    config = TrainConfig(
        n_bits=args.n_bits,
        k=args.k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        log_every=args.log_every,
        device="cpu",
    )
    store = Store()

    def run_direct(repeat: int) -> None:
        run_experiment(load_dataset("bench").embeddings, config, root / f"direct-{repeat}")

    def run_queued(repeat: int) -> None:
        job = store.submit("bench", config)
        run_worker(once=True)
        assert store.job(job.id).status == Status.DONE

    timings = {run_direct: ([], []), run_queued: ([], [])}  # wall, CPU of all threads (the heartbeat's too)
    run_direct(-1)  # warm up caches and lazy imports before anything is timed
    for repeat in range(args.repeats):
        # Alternate which goes first, so neither always runs on a warmer machine.
        for runner in (run_direct, run_queued) if repeat % 2 == 0 else (run_queued, run_direct):
            started, started_cpu = time.perf_counter(), time.process_time()
            runner(repeat)
            timings[runner][0].append(time.perf_counter() - started)
            timings[runner][1].append(time.process_time() - started_cpu)
        (direct, direct_cpu), (queued, queued_cpu) = timings[run_direct], timings[run_queued]
        print(
            f"repeat {repeat}: direct {direct[-1]:.2f} s ({direct_cpu[-1]:.2f} s CPU), "
            f"queued {queued[-1]:.2f} s ({queued_cpu[-1]:.2f} s CPU)",
            flush=True,
        )
    steps = -(-round(args.rows * (1 - config.val_fraction)) // args.batch_size) * args.epochs
    print(
        f"{args.rows} x {args.dim}, N={args.n_bits}, K={args.k}, {steps} steps, a progress event every "
        f"{args.log_every} steps, {args.repeats} repeats"
    )
    # The minimum is the least disturbed by other processes on a shared machine.
    for name, pick in (("min", min), ("median", statistics.median)):
        for kind, plain, through_queue in (("wall", direct, queued), ("CPU", direct_cpu, queued_cpu)):
            print(
                f"{name} {kind}: direct {pick(plain):.2f} s, queued {pick(through_queue):.2f} s, "
                f"ratio {pick(through_queue) / pick(plain):.3f}"
            )


if __name__ == "__main__":
    main()
