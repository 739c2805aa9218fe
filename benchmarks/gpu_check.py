"""GPU check: every figure a GPU run of sparsebin should give, in one process, each section on its own.

Sections (each has a wall-clock budget; a failure prints its traceback and the
next section runs; the script ends non-zero with a summary of what failed):
- environment: device name, torch, CUDA and cuDNN versions, TF32 flags, GPU memory, CPU threads;
- data: loads the dataset, or builds a built-in one (`build-data`, embedded on the GPU
  when there is one: the build's encode time and names/s are the figure);
- agreement: the paper's setting (N=1024, K=16) and the `recommended` preset (N=8192,
  K=40), 3 epochs, one seed on the device against 3 seeds on the CPU; recon, active mean
  and recall must lie within the CPU seeds' 99 % prediction interval (mean +- t * sd *
  sqrt(1 + 1/n)): the same seed need not give the same bits on two devices. With
  `--device cpu` the device run takes another seed than the references;
- timing: samples/s of `train()` at N=4096, K=32 and N=16384, K=64, batch 4096, through
  the dense and the sparse decoder path, each as a share of the 12 * D * N bound at the
  measured fp32 matmul rate (as `bench_train.py`); beside it a step written here, in float32
  and under bf16 autocast, from the same primed start and batches: autocast is kept only
  where the recon it leaves (measured in float32) stays within 1 % of float32's;
- worker: two jobs queued with `submit`, a `worker --device D` SIGKILLed after the first
  epoch's checkpoint, then `worker --device D --once` to the end: both jobs done, the killed
  one resumed at the epoch after its checkpoint with the first attempt's history kept, and
  every run's environment.json names the device (the GPU's name on CUDA);
- ray: one job through `worker --ray local --once`; the dispatcher asks Ray for one GPU for
  a CUDA job (`num_gpus=1`) and one CPU otherwise (`--ray-cpus` sizes the local instance).

On a GPU machine, from the project root:

    timeout 330 python benchmarks/gpu_check.py --device cuda --out $OUT/gpu

(`timeout_s` 350; about 3 minutes). Carry the built dataset along (`carry: ["data/hpo"]`,
about 29 MB, built beforehand with `python -m sparsebin build-data hpo`) so nothing is
embedded there; without it the data section builds it on the GPU and times that (about a
minute, taken from the later sections' time). The script ends itself within `--budget`
seconds (300), so its summary and `gpu_check.json` (written after every section, with
the worker and Ray logs beside it) come back even when a section runs long. On a CPU, at
the size CI tests (one thread: tiny models train fastest so on shared cores):

    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --device cpu --size tiny --data DATASET --skip ray
"""

import argparse
import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench_train, imported by the timing section
from sparsebin.config import TrainConfig, preset_config, validation_size  # noqa: E402 - after the project is on the path
from sparsebin.datasets import BUILTIN_DATASETS, load_dataset  # noqa: E402
from sparsebin.devices import canonical_device, describe_device, synchronize  # noqa: E402
from sparsebin.errors import DataError  # noqa: E402
from sparsebin.experiment import run_experiment  # noqa: E402
from sparsebin.train import train  # noqa: E402

SECTIONS = ("environment", "data", "agreement", "timing", "worker", "ray")
METRICS = ("recon_loss", "active_mean", "recall_at_10_hamming", "recall_at_10_jaccard", "recall_at_10_asymmetric")
AUTOCAST_TOLERANCE = 0.01  # bf16 autocast is kept where recon stays within 1 % of float32's
INTERVAL = 0.99  # the CPU seeds' prediction interval a device run must fall in


@dataclasses.dataclass(frozen=True)
class Size:
    """How much work each section does."""

    paper: dict  # changes to the paper's setting (the default TrainConfig: N=1024, K=16)
    recommended: dict  # changes to the recommended preset (N=8192, K=40)
    epochs: int  # agreement: epochs of every run
    seeds: int  # agreement: CPU reference seeds
    n_queries: int  # retrieval queries a run is measured with
    shapes: tuple[tuple[int, int], ...]  # timing: (N, K) pairs
    batch: int  # timing: rows a step
    steps: int  # timing: warm-up steps, then as many timed
    job: dict  # worker and ray: the jobs' settings (the paper's, smaller)
    budgets: dict[str, float]  # seconds each section may take


SIZES = {
    "full": Size(
        paper={},
        recommended={},
        epochs=3,
        seeds=3,
        n_queries=500,
        shapes=((4096, 32), (16384, 64)),
        batch=4096,
        steps=10,
        job={"epochs": 12, "log_every": 10},
        budgets={"environment": 30, "data": 150, "agreement": 120, "timing": 60, "worker": 90, "ray": 90},
    ),
    "tiny": Size(
        paper={"n_bits": 64, "k": 4, "batch_size": 32},
        recommended={"n_bits": 128, "k": 8, "batch_size": 32},
        epochs=2,
        seeds=3,
        n_queries=50,
        shapes=((256, 8), (512, 16)),
        batch=128,
        steps=3,
        job={"n_bits": 64, "k": 4, "batch_size": 16, "epochs": 10, "log_every": 5},
        budgets={"environment": 10, "data": 30, "agreement": 60, "timing": 60, "worker": 90, "ray": 120},
    ),
}


@dataclasses.dataclass
class Context:
    """What the sections share: the options, the device, and the data once the data section has loaded it."""

    args: argparse.Namespace
    size: Size
    device: str  # canonical: cpu or cuda:0
    dataset: str | None = None  # what `submit` takes: a dataset's name or folder
    embeddings: np.ndarray | None = None  # (M, D) in memory


class OutOfTime(BaseException):
    """A section ran past its budget (a BaseException, so no `except Exception` in the library swallows it)."""


class CheckFailed(Exception):
    """A section measured something that is not as it should be."""


# -- The one place that reaches into sparsebin's internals ----------------------------------------------
# Model construction, the loss of one batch, what a checkpoint holds, and the queue's word on its jobs
# (read here rather than by `python -m sparsebin status`, which costs a process start). Everything else in
# this script uses the public surface (the CLI, TrainConfig, preset_config, train, run_experiment, the run
# folder's files); when these internals move, adapt this function only.
def library_internals() -> SimpleNamespace:
    from safetensors import safe_open

    import sparsebin.train as training
    from sparsebin.jobs.queue import Store

    def build_model(config: TrainConfig, d_in: int, decoder_path: str = "auto") -> torch.nn.Module:
        return training.build_model(config, d_in, decoder_path)  # seeded by config.seed, on the CPU

    def batch_loss(model: torch.nn.Module, config: TrainConfig, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, reconstruction distance) of one batch (B, D)."""
        loss, rec, _, _ = training.training_loss(model, config, x)
        return loss, rec

    def checkpoint_state(path: Path) -> tuple[int, list[dict]]:
        """(epochs done, history so far) that a run folder's checkpoint holds."""
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        return json.loads(meta["epoch"]), json.loads(meta["history"])

    def job_states(home: Path) -> dict[int, dict]:
        """{job id: {status, attempts}} of the queue in SPARSEBIN_HOME `home`."""
        store = Store(home)
        try:
            return {job.id: {"status": job.status.name.lower(), "attempts": job.attempts} for job in store.jobs()}
        finally:
            store.close()

    return SimpleNamespace(
        build_model=build_model, batch_loss=batch_loss, checkpoint_state=checkpoint_state, job_states=job_states
    )


# -- environment and data --------------------------------------------------------------------------------


def check_environment(context: Context, figures: dict) -> None:
    figures |= {name: value for name, value in describe_device(context.device).items() if name != "threads"}
    figures |= {
        "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version() if context.device.startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "commit": _git_commit(),
    }
    if context.device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(torch.device(context.device))
        figures |= {
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "compute_capability": f"{properties.major}.{properties.minor}",
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "nvidia_smi": _nvidia_smi(),
        }
    print_table(["what", "value"], [[name, value] for name, value in figures.items()])


def _git_commit() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True)
    except OSError:
        return None
    return found.stdout.strip() or None


def _nvidia_smi() -> str | None:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_data(context: Context, figures: dict) -> None:
    """Load the dataset, building it first when it is a built-in one not yet built (timed)."""
    name = context.args.data
    try:
        dataset = load_dataset(name)
        figures["built_here"] = False
    except DataError:
        if name not in BUILTIN_DATASETS:
            raise
        print(f"{name} is not built here; building it (`python -m sparsebin build-data {name}`)", flush=True)
        started = time.perf_counter()
        sparsebin_command(["build-data", name], dict(os.environ), timeout=remaining_section_time())
        dataset = load_dataset(name)
        meta = dataset.meta
        figures |= {
            "built_here": True,
            "build_wall_s": round(time.perf_counter() - started, 1),
            "build_s": meta.get("build_seconds"),
            "encode_s": meta.get("encode_seconds"),
            "names_per_s": meta.get("names_per_second"),
            "embedded_on": "cuda" if torch.cuda.is_available() else "cpu",  # sentence-transformers' own choice
        }
    started = time.perf_counter()
    context.embeddings = np.ascontiguousarray(dataset.embeddings, dtype=np.float32)
    context.dataset = str(name)
    figures |= {
        "dataset": dataset.name,
        "rows": int(context.embeddings.shape[0]),
        "dim": int(context.embeddings.shape[1]),
        "read_s": round(time.perf_counter() - started, 2),
    }
    print_table(["what", "value"], [[name, value] for name, value in figures.items()])


# -- agreement: the device against the CPU's seed spread -------------------------------------------------


def check_agreement(context: Context, figures: dict) -> None:
    embeddings = needs_data(context)
    size, device = context.size, context.device
    seeds = list(range(size.seeds))
    device_seed = 0 if device != "cpu" else size.seeds  # on a CPU-only run: another seed than the references
    presets = {"paper": size.paper, "recommended": size.recommended}
    runs = figures.setdefault("runs", [])
    plan = [(name, device, device_seed) for name in presets]
    plan += [(name, "cpu", seed) for seed in seeds for name in presets]  # seed by seed: a cut-off run compares
    out_of_time = None
    with tempfile.TemporaryDirectory(prefix="gpu-check-agreement-") as scratch:
        try:
            for on in dict.fromkeys([device, "cpu"]):
                warm_up(embeddings, on)  # so the first run's samples/s leaves out CUDA's start and first kernels
            for index, (name, on, seed) in enumerate(plan):
                config = preset_config(name, **presets[name], epochs=size.epochs, seed=seed, device=on)
                runs.append(measured_run(embeddings, config, Path(scratch) / f"run-{index}", size.n_queries, name))
        except OutOfTime as error:  # compare the runs done, then report the time out
            out_of_time = error
            print(f"  out of time after {len(runs)} of {len(plan)} runs; comparing those with two CPU seeds or more")
    rows, problems = [], []
    for name in presets:
        done = [run for run in runs if run["preset"] == name]
        if len(done) < 3:
            continue
        on_device, *references = done  # the device run comes first
        for metric in METRICS:
            found = compare(on_device[metric], np.array([run[metric] for run in references]))
            figures.setdefault("comparison", []).append({"preset": name, "metric": metric} | found)
            low, high = found["interval"]
            rows.append(
                [name, metric, f"{found['device']:.4f}", *(f"{value:.4f}" for value in found["cpu"])]
                + [f"{found['mean']:.4f} +- {found['sd']:.4f}", f"{found['off_sd']:+.1f}", f"[{low:.4f}, {high:.4f}]"]
                + ["yes" if found["agrees"] else "NO"]
            )
            if not found["agrees"]:
                problems.append(f"{name} {metric} on {device}: {found['device']:.4f}, outside [{low:.4f}, {high:.4f}]")
        speeds = [f"{run['samples_per_s']:.0f}" for run in [on_device, *references]]
        rows.append([name, "train samples/s", *speeds])
    print(
        f"{size.epochs} epochs; {device} seed {device_seed} against cpu seeds {seeds}; agrees: inside the CPU "
        f"seeds' {INTERVAL:.0%} prediction interval; off: (device - cpu mean) / cpu sd"
    )
    headers = ["preset", "metric", f"{device} s{device_seed}", *(f"cpu s{seed}" for seed in seeds)]
    print_table(headers + ["cpu mean +- sd", "off (sd)", "interval", "agrees"], rows)
    if out_of_time is not None:
        raise out_of_time
    if problems:
        raise CheckFailed("; ".join(problems))


def warm_up(embeddings: np.ndarray, device: str) -> None:
    """One small training on `device`, untimed."""
    config = TrainConfig(n_bits=64, k=4, epochs=1, batch_size=64, val_fraction=0.0, device=device)
    train(embeddings[:512], config)


def measured_run(embeddings: np.ndarray, config: TrainConfig, folder: Path, n_queries: int, preset: str) -> dict:
    """Train and measure one run folder: its validation metrics, and training rows a second up to the last event."""
    stamps: list[float] = []  # when each progress event came; the last one ends training
    started = time.perf_counter()
    run_experiment(
        embeddings, config, folder, progress=lambda _: stamps.append(time.perf_counter()), n_queries=n_queries
    )
    wall = time.perf_counter() - started
    metrics = json.loads((folder / "metrics.json").read_text())["validation"]
    rows = len(embeddings) - validation_size(len(embeddings), config.val_fraction)
    print(f"  {preset} on {config.device}, seed {config.seed}: {wall:.1f} s", flush=True)
    return (
        {"preset": preset, "device": canonical_device(config.device), "seed": config.seed}
        | {metric: float(metrics[metric]) for metric in METRICS}
        | {"samples_per_s": rows * config.epochs / (stamps[-1] - started), "wall_s": round(wall, 2)}
    )


def compare(value: float, references: np.ndarray) -> dict:
    """The device's value against the CPU seeds' values: their mean, sd, 99 % prediction interval, and whether
    the value lies in it (mean +- t * sd * sqrt(1 + 1/n), t of n - 1 degrees of freedom: where one more
    seed's value falls with probability INTERVAL)."""
    from scipy.stats import t

    mean, sd, n = float(references.mean()), float(references.std(ddof=1)), len(references)
    half = float(t.ppf(0.5 + INTERVAL / 2, n - 1)) * sd * np.sqrt(1 + 1 / n)
    half = max(half, 1e-6 * max(1.0, abs(mean)))  # equal seeds (rigid TopK's active count): equal, to rounding
    return {
        "device": value,
        "cpu": references.tolist(),
        "mean": mean,
        "sd": sd,
        "off_sd": (value - mean) / sd if sd > 0 else 0.0 if abs(value - mean) <= half else float("inf"),
        "interval": [mean - half, mean + half],
        "agrees": bool(abs(value - mean) <= half),
    }


# -- timing: samples/s against the matmul bound, dense and sparse decoder, fp32 and bf16 autocast ------


def check_timing(context: Context, figures: dict) -> None:
    from bench_train import gemm_rate, primed_builder, sparsebin_rate

    size, device = context.size, context.device
    lib = library_internals()
    rows = timing_rows(context, size.batch * 2 * size.steps)
    dim = rows.shape[1]
    cells = figures.setdefault("cells", [])
    table, problems = [], []
    for n_bits, k in size.shapes:
        flops = gemm_rate(dim, n_bits, size.batch, device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            bf16_flops = gemm_rate(dim, n_bits, size.batch, device)  # inputs cast on every product, as in training
        bound = flops / (12 * dim * n_bits)
        print(
            f"N={n_bits} K={k} D={dim} batch {size.batch}: fp32 matmul {flops / 1e9:.1f} GFLOP/s, "
            f"bound {bound:.0f} samples/s; bf16 (autocast) matmul {bf16_flops / 1e9:.1f} GFLOP/s",
            flush=True,
        )
        config = TrainConfig(n_bits=n_bits, k=k, batch_size=size.batch, epochs=1, val_fraction=0.0, device=device)
        for path in ("dense", "sparse"):
            cell = {"n_bits": n_bits, "k": k, "path": path, "gemm_flops": flops, "bound": bound}
            cells.append(cell)

            def build(config, d_in, path=path):
                return primed_builder(rows, lib.build_model)(config, d_in, path)

            try:
                cell["train_rate"], cell["active"] = sparsebin_rate(rows, config, size.steps, decoder_path=path)
                cell["step_fp32"], cell["recon_fp32"] = step_rate(lib, build, rows, config, size.steps, False)
            except Exception as error:  # one cell failing leaves the others
                traceback.print_exc(file=sys.stdout)
                cell["error"] = f"{type(error).__name__}: {error}"
                problems.append(f"N={n_bits} {path}: {cell['error']}")
            else:
                try:  # autocast failing on a path is a finding about autocast, not a fault of the check
                    cell["step_bf16"], cell["recon_bf16"] = step_rate(lib, build, rows, config, size.steps, True)
                except Exception as error:
                    traceback.print_exc(file=sys.stdout)
                    cell["bf16_error"] = f"{type(error).__name__}: {error}"
            table.append(timing_row(cell))
    print_table(
        ["N", "K", "decoder", "active", "train() samples/s (of bound)", "step fp32", "step bf16", "bf16 speed-up"]
        + ["recon fp32", "recon bf16", "recon change", "keep autocast"],
        table,
    )
    if problems:
        raise CheckFailed("; ".join(problems))


def timing_row(cell: dict) -> list:
    """One line of the timing table; adds each rate's share of the bound, the recon change and the autocast
    verdict to `cell`."""
    if "error" in cell:
        return [cell["n_bits"], cell["k"], cell["path"], "failed: " + cell["error"]]
    for name in ("train_rate", "step_fp32", "step_bf16"):
        if name in cell:
            cell[f"{name}_share"] = cell[name] / cell["bound"]
    row = [cell["n_bits"], cell["k"], cell["path"], f"{cell['active']:.1f}"]
    row += [f"{cell['train_rate']:.0f} ({cell['train_rate_share']:.2f})"]
    row += [f"{cell['step_fp32']:.0f} ({cell['step_fp32_share']:.2f})"]
    if "bf16_error" in cell:
        cell["keep_autocast"] = False
        return row + ["failed", "", f"{cell['recon_fp32']:.4f}", "", "", "no: " + cell["bf16_error"]]
    change = (cell["recon_bf16"] - cell["recon_fp32"]) / cell["recon_fp32"]
    cell["recon_change"], cell["keep_autocast"] = change, abs(change) <= AUTOCAST_TOLERANCE
    row += [f"{cell['step_bf16']:.0f} ({cell['step_bf16_share']:.2f})", f"{cell['step_bf16'] / cell['step_fp32']:.2f}"]
    row += [f"{cell['recon_fp32']:.4f}", f"{cell['recon_bf16']:.4f}", f"{change:+.2%}"]
    return row + ["yes" if cell["keep_autocast"] else "no"]


def timing_rows(context: Context, count: int) -> np.ndarray:
    """`count` rows (M, D) for timing: the dataset's, tiled in a seeded order; random ones when it did not load."""
    if context.embeddings is None:
        return np.random.default_rng(0).standard_normal((count, 384)).astype(np.float32)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(len(context.embeddings)), count))
    return context.embeddings[order]


def step_rate(lib, build, rows: np.ndarray, config: TrainConfig, steps: int, autocast: bool) -> tuple[float, float]:
    """(samples/s over the last `steps` of 2 * `steps` training steps, fp32 recon after them) of a plain loop.

    The loop is this script's, not sparsebin's (which has no autocast): the model's forward pass and loss
    under bf16 autocast when asked, backward and fused Adam outside it. Recon is the reconstruction distance
    of the trained model on the first 4096 rows, evaluated in float32.
    """
    device, batch = config.device, config.batch_size
    model = build(config, rows.shape[1]).to(device)
    x = torch.nn.functional.normalize(torch.from_numpy(rows), dim=1).to(device)  # (M, D)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)

    def step(index: int) -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            loss, _ = lib.batch_loss(model, config, x[index * batch : (index + 1) * batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for index in range(steps):
        step(index)
    synchronize(device)
    started = time.perf_counter()
    for index in range(steps, 2 * steps):
        step(index)
    synchronize(device)
    rate = steps * batch / (time.perf_counter() - started)
    model.eval()
    with torch.no_grad():
        _, recon = lib.batch_loss(model, config, x[:4096])
    return rate, float(recon)


# -- the worker: two jobs, one SIGKILL, a resume ---------------------------------------------------------


def check_worker(context: Context, figures: dict) -> None:
    needs_data(context)
    lib = library_internals()
    with scratch_home(context, "worker") as (home, environment):
        epochs = context.size.job["epochs"]
        worker = ["worker", "--device", context.device, "--idle-sleep", "0.2", "--stale-after", "1"]
        started = time.perf_counter()
        first = start_sparsebin(worker, environment, home / "worker-1.log")  # starts up while submit runs
        try:
            jobs = submit_jobs(context, environment, home, ["--seed", "0", "1"])
            killed, checkpoint = wait_for_checkpoint(first, jobs)
            first.kill()  # SIGKILL: no chance to mark the job interrupted; the next worker finds it stale
            first.wait()
        finally:
            end_process(first)
        killed_epoch, kept = lib.checkpoint_state(checkpoint)
        figures["killed"] = {
            "job": killed["job"],
            "epoch_at_kill": killed_epoch,
            "after_s": round(time.perf_counter() - started, 1),
        }
        print(f"worker killed with job {killed['job']} at its epoch-{killed_epoch} checkpoint", flush=True)
        time.sleep(1.2)  # past --stale-after, so the next worker takes the job for interrupted at once
        second = start_sparsebin([*worker, "--once"], environment, home / "worker-2.log")
        try:
            returncode = second.wait(timeout=remaining_section_time())
        finally:
            end_process(second)
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        statuses = lib.job_states(home)
        table, problems = [], []
        if returncode != 0:
            problems.append(f"the second worker exited with status {returncode}")
        for job in jobs:
            found = finished_job(job, statuses, home, context.device, epochs)
            figures.setdefault("jobs", []).append(found)
            problems += found.pop("problems")
            table.append([found[name] for name in ("job", "status", "attempts", "epochs", "device", "device_name")])
        history = read_history(home / "runs" / killed["run"])
        resumed_at = history[len(kept)]["epoch"] if len(history) > len(kept) else None
        history_kept = history[: len(kept)] == kept
        figures["killed"] |= {"resumed_at_epoch": resumed_at, "history_kept": history_kept}
        if not 1 <= killed_epoch < epochs:
            problems.append(f"the kill came at epoch {killed_epoch} of {epochs}, not mid-run")
        if resumed_at != killed_epoch + 1 or not history_kept:
            problems.append(
                f"job {killed['job']} resumed at epoch {resumed_at} (expected {killed_epoch + 1}), "
                f"first attempt's history {'kept' if history_kept else 'lost'}"
            )
        print_table(["job", "status", "attempts", "epochs", "device", "device name"], table)
        print(
            f"job {killed['job']}: killed after its epoch {killed_epoch}, resumed at epoch {resumed_at}, "
            f"the first attempt's {len(kept)} events {'kept' if history_kept else 'NOT kept'}; "
            f"{figures['wall_s']} s from the first worker's start to the second's end"
        )
        if problems:
            raise CheckFailed("; ".join(problems))


def wait_for_checkpoint(worker: subprocess.Popen, jobs: list[dict]) -> tuple[dict, Path]:
    """The job whose run folder first holds an epoch's checkpoint, and that file; polled every 10 ms."""
    while worker.poll() is None:
        for job in jobs:
            path = Path(job["folder"]) / "checkpoint.safetensors"
            if path.exists():
                return job, path
        time.sleep(0.01)
    raise CheckFailed(f"the worker exited (status {worker.returncode}) before any job wrote a checkpoint")


def finished_job(job: dict, statuses: dict[int, dict], home: Path, device: str, epochs: int) -> dict:
    """A job's end as the queue and its run folder tell it, with what is not as it should be."""
    folder = home / "runs" / job["run"]
    status = statuses.get(job["job"], {"status": "missing", "attempts": 0})
    environment = (
        json.loads((folder / "environment.json").read_text()) if (folder / "environment.json").is_file() else {}
    )
    history = read_history(folder)
    ended = [event["epoch"] for event in history if event.get("epoch_end")]
    found = status | {
        "job": job["job"],
        "run": job["run"],
        "epochs": len(ended),
        "device": environment.get("device"),
        "device_name": environment.get("device_name"),
        "problems": [],
    }
    expected_name = describe_device(device)["device_name"]
    if status["status"] != "done":
        found["problems"].append(f"job {job['job']} is {status['status']}")
    if ended != list(range(1, epochs + 1)):
        found["problems"].append(f"job {job['job']} ended epochs {ended}, not 1 to {epochs} once each")
    if environment.get("device") != device or environment.get("device_name") != expected_name:
        found["problems"].append(
            f"job {job['job']}'s environment.json says {environment.get('device')} "
            f"({environment.get('device_name')}), not {device} ({expected_name})"
        )
    return found


# -- the Ray dispatcher ----------------------------------------------------------------------------------


def check_ray(context: Context, figures: dict) -> None:
    needs_data(context)
    with scratch_home(context, "ray") as (home, environment):
        jobs = submit_jobs(context, environment, home, [])
        cpus = str(context.args.ray_cpus)
        command = ["worker", "--ray", "local", "--ray-cpus", cpus, "--once", "--idle-sleep", "0.2"]
        started = time.perf_counter()
        dispatcher = start_sparsebin(command, environment, home / "dispatcher.log")
        try:
            returncode = dispatcher.wait(timeout=remaining_section_time())
        finally:
            end_process(dispatcher)
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        log = (home / "dispatcher.log").read_text(errors="replace")
        resources = re.search(r"([\d.]+) CPUs, ([\d.]+) GPUs", log)
        sent = re.search(r"sent to Ray \((GPU|CPU)\)", log)
        figures |= {
            "returncode": returncode,
            "cluster_cpus": float(resources[1]) if resources else None,
            "cluster_gpus": float(resources[2]) if resources else None,
            "asked_for": sent[1] if sent else None,
        }
        states = library_internals().job_states(home)
        found = finished_job(jobs[0], states, home, context.device, context.size.job["epochs"])
        problems = found.pop("problems")
        figures["job"] = found
        wanted = "GPU" if context.device.startswith("cuda") else "CPU"
        if returncode != 0:
            problems.append(f"the dispatcher exited with status {returncode}")
        if figures["asked_for"] != wanted:
            problems.append(f"the dispatcher asked Ray for {figures['asked_for']}, not {wanted}")
        row = [found["job"], found["status"], figures["cluster_cpus"], figures["cluster_gpus"], figures["asked_for"]]
        row += [found["device"], found["device_name"], figures["wall_s"]]
        print_table(["job", "status", "Ray CPUs", "Ray GPUs", "asked for", "device", "device name", "wall s"], [row])
        if problems:
            raise CheckFailed("; ".join(problems))


# -- jobs through the command line -----------------------------------------------------------------------


@contextmanager
def scratch_home(context: Context, section: str):
    """(home, environment): a fresh SPARSEBIN_HOME and the environment that points the CLI at it.

    The logs of the processes started there are copied into --out as SECTION-NAME.log, and their last
    lines printed when the section fails.
    """
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{section}-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        python_path = os.pathsep.join(part for part in (str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")) if part)
        environment = dict(os.environ, SPARSEBIN_HOME=str(home), SPARSEBIN_AUTO_RESUME="1", PYTHONPATH=python_path)
        try:
            yield home, environment
        except BaseException:
            keep_logs(home, context.args.out, section, show=True)
            raise
        keep_logs(home, context.args.out, section, show=False)


def submit_jobs(context: Context, environment: dict, home: Path, extra: list[str]) -> list[dict]:
    """Queue the size's job (one per value of `extra`'s lists) with `submit`; [{job, run, folder}] in order."""
    config = home / "job.json"
    config.write_text(TrainConfig(**context.size.job, device=context.device).to_json())
    output = sparsebin_command(["submit", context.dataset, "--config", str(config), *extra], environment, timeout=120)
    jobs = [
        {"job": int(number), "run": run, "folder": str(home / "runs" / run)}
        for number, run in re.findall(r"queued job (\d+)\s+run (\S+)", output)
    ]
    if not jobs:
        raise CheckFailed(f"submit queued nothing: {output.strip()}")
    return jobs


def read_history(folder: Path) -> list[dict]:
    path = Path(folder) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def sparsebin_command(arguments: list[str], environment: dict, timeout: float) -> str:
    """Run `python -m sparsebin ARGUMENTS` to its end; its output, or CheckFailed with the output's tail."""
    command = [sys.executable, "-m", "sparsebin", *arguments]
    done = subprocess.run(command, cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CheckFailed(f"`sparsebin {' '.join(arguments)}` exited with status {done.returncode}:\n{tail}")
    return done.stdout


def start_sparsebin(arguments: list[str], environment: dict, log_path: Path) -> subprocess.Popen:
    """Start `python -m sparsebin ARGUMENTS` in a session of its own (its children end with it), logging to a file."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sparsebin", *arguments],
            cwd=PROJECT_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def end_process(process: subprocess.Popen) -> None:
    """Stop a process this script started, and its session's children: SIGTERM, then SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what the process left behind in its session (Ray's daemons)
    except ProcessLookupError:
        pass
    process.wait()


def keep_logs(home: Path, out: Path | None, section: str, show: bool) -> None:
    """Copy the logs in `home` into --out as SECTION-NAME.log; print their last lines if `show`."""
    for path in sorted(home.glob("*.log")):
        text = path.read_text(errors="replace")
        if out is not None:
            (out / f"{section}-{path.name}").write_text(text)
        if show:
            print(f"--- last lines of {path.name}:\n" + "\n".join(text.splitlines()[-20:]))


# -- sections, budgets, tables ---------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Context, dict], None]] = {
    "environment": check_environment,
    "data": check_data,
    "agreement": check_agreement,
    "timing": check_timing,
    "worker": check_worker,
    "ray": check_ray,
}
_deadline = [float("inf")]  # the running section's end, for waits that must not outlast it


def remaining_section_time() -> float:
    return max(1.0, _deadline[0] - time.monotonic())


@contextmanager
def time_limit(seconds: float):
    """Raise OutOfTime in this (the main) thread once `seconds` have passed."""

    def expire(*_) -> None:
        raise OutOfTime(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    _deadline[0] = time.monotonic() + seconds
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _deadline[0] = float("inf")


def needs_data(context: Context) -> np.ndarray:
    if context.embeddings is None:
        raise CheckFailed("needs the data section, which did not load a dataset")
    return context.embeddings


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(value) for value in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells if column < len(row)) for column in range(len(headers))]
    for number, row in enumerate(cells):
        print("  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False)).rstrip())
        if number == 0:
            print("  " + "  ".join("-" * width for width in widths))
    sys.stdout.flush()


def run_sections(context: Context, report: dict, out: Path | None) -> list[str]:
    """Run each section not skipped within its budget and what is left of the whole; return the failed ones."""
    ends_at = time.monotonic() + context.args.budget
    failed = []
    for name, check in CHECKS.items():
        entry = report["sections"][name] = {"status": "skipped", "figures": {}}
        if name in context.args.skip:
            continue
        budget = min(context.size.budgets[name], ends_at - time.monotonic())
        if budget < 1:
            print(f"\n== {name}: not run, no time left of --budget {context.args.budget:.0f} s", flush=True)
            entry["status"] = "no time left"
            failed.append(f"{name} (no time left of --budget {context.args.budget:.0f} s)")
            continue
        print(f"\n== {name} (budget {budget:.0f} s)", flush=True)
        started = time.perf_counter()
        try:
            with time_limit(budget):
                check(context, entry["figures"])
            entry["status"] = "ok"
        except (Exception, OutOfTime) as error:
            if not isinstance(error, CheckFailed):
                traceback.print_exc(file=sys.stdout)
            entry["status"], entry["error"] = "failed", f"{type(error).__name__}: {error}"
            print(f"{name} FAILED: {entry['error']}", flush=True)
            failed.append(f"{name} ({entry['error'].splitlines()[0]})")
        entry["seconds"] = round(time.perf_counter() - started, 1)
        print(f"-- {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        if out is not None:
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (CI)")
    parser.add_argument("--data", default="hpo", help="a dataset's name or folder (default hpo, built when missing)")
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="full",
        help="full: the presets' own sizes, timing at N=4096 and 16384, batch 4096; tiny: seconds on a CPU (CI)",
    )
    parser.add_argument("--quick", action="store_const", const="tiny", dest="size", help="the same as --size tiny")
    parser.add_argument("--epochs", type=int, help="agreement: epochs of every run (default: the size's)")
    parser.add_argument("--seeds", type=int, help="agreement: CPU reference seeds, at least 2 (default 3)")
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=SECTIONS[1:],
        metavar="SECTION",
        help="sections to leave out: " + ", ".join(SECTIONS[1:]),
    )
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all sections together")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--out", type=Path, help="a folder for gpu_check.json, every figure of the run")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    size = dataclasses.replace(size, epochs=args.epochs or size.epochs, seeds=args.seeds or size.seeds)
    if size.seeds < 2:
        parser.error("--seeds must be at least 2: one seed has no spread.")
    device = canonical_device(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU here; use --device cpu.")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {device}, size {args.size}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    report = {"device": device, "size": args.size, "options": vars(args) | {"out": str(args.out)}, "sections": {}}
    failed = run_sections(Context(args, size, device), report, args.out)
    report["failed"] = failed
    if args.out is not None:
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    environment = report["sections"]["environment"]["figures"]
    versions = f"torch {environment.get('torch')}, CUDA {environment.get('cuda')}"
    print(f"\ndevice {environment.get('device_name')} ({device}), {versions}")
    if failed:
        print(f"gpu_check: {len(failed)} section(s) failed: " + "; ".join(failed))
        return 1
    ran = [name for name, entry in report["sections"].items() if entry["status"] == "ok"]
    print(f"gpu_check: all {len(ran)} sections passed ({', '.join(ran)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
