"""Training throughput: against the fp32 matrix-multiply bound and a plain TopK autoencoder loop.

One training sample costs about 12 * D * N floating-point operations in dense
products (encoder and decoder, forward and backward); the fraction of that
bound reached is samples/s * 12 * D * N / GEMM rate, both measured in this run.

The reference is a plain TopK sparse autoencoder step written here (encoder,
TopK of the ReLU'd pre-activations, dense decoder, normalised MSE, fused Adam),
run on the same data, shape and batches in the same process. sparsebin is
timed once its active count is near K: the model is primed by shifting every
encoder bias by the (1 - K/N) quantile of the initial pre-activations over
the data, so about K bits fire per row from the first step, as in a converged
run (the bench says the active count it saw).

    python benchmarks/bench_train.py [--n-bits 4096 --k 32] [--steps 6]
    python benchmarks/bench_train.py --memmap [--rows 1000000 --dim 768]

`--memmap` writes a rows x dim float32 file in /tmp (deleted afterwards) and
trains on it resident and memory-mapped, each in a fresh process, for
`--steps` steps: samples/s of each and peak RSS (beyond the process before
training) against the file's size.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparsebin.train  # noqa: E402 - after the project is on the path
from sparsebin.config import TrainConfig  # noqa: E402
from sparsebin.devices import reuse_freed_blocks  # noqa: E402
from sparsebin.files import CHUNK_ROWS  # noqa: E402
from sparsebin.train import train  # noqa: E402


def gemm_rate(dim: int, n_bits: int, batch: int, device: str, repeats: int = 5) -> float:
    """FLOP/s of a (batch x dim) @ (dim x n_bits) fp32 product."""
    a = torch.randn(batch, dim, device=device)
    b = torch.randn(dim, n_bits, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * batch * dim * n_bits * repeats / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def primed_builder(x: np.ndarray, plain, normalize: bool = True):
    """`plain` (build_model), with every encoder bias shifted so that about K bits fire per row of `x`."""

    def build(config: TrainConfig, d_in: int, decoder_path: str = "auto"):
        model = plain(config, d_in, decoder_path)
        with torch.no_grad():
            rows = torch.from_numpy(x[:4096])
            rows = torch.nn.functional.normalize(rows, dim=1) if normalize else rows
            logits = model.encode_logits(rows)
            model.encoder.bias -= torch.quantile(logits.flatten()[: 10**6], 1 - config.k / config.n_bits)
        return model

    return build


def sparsebin_rate(x: np.ndarray, config: TrainConfig, steps: int, **options) -> tuple[float, float]:
    """(samples/s over the last `steps` steps after `steps` warm-up steps, mean active bits logged)."""
    events = []
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2 * steps

    plain = sparsebin.train.build_model
    sparsebin.train.build_model = primed_builder(x, plain)
    try:
        train(x, config.replace(log_every=steps), progress=events.append, should_stop=stop, **options)
    finally:
        sparsebin.train.build_model = plain
    first, last = events[0], events[-1]
    rate = (last.step - first.step) * config.batch_size / (last.elapsed_seconds - first.elapsed_seconds)
    return rate, float(np.mean([event.active_mean for event in events]))


def reference_rate(x: np.ndarray, n_bits: int, k: int, batch: int, steps: int, device: str) -> float:
    """Samples/s of a plain TopK sparse autoencoder on the same rows, batches and Adam."""
    torch.manual_seed(0)
    rows = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).to(device)
    encoder = torch.nn.Linear(x.shape[1], n_bits).to(device)
    decoder = torch.nn.Linear(n_bits, x.shape[1]).to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=device.split(":")[0] in ("cpu", "cuda"))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).to(device)

    def step(begin: int) -> None:
        batch_rows = rows[order[begin : begin + batch]]  # (B, D)
        pre = torch.relu(encoder(batch_rows))  # (B, N)
        top = pre.topk(k, dim=1)
        latent = torch.zeros_like(pre).scatter_(1, top.indices, top.values)  # (B, N), K non-zeros a row
        recon = decoder(latent)  # (B, D)
        loss = ((recon - batch_rows).pow(2).sum(1) / batch_rows.pow(2).sum(1)).mean()  # normalised MSE
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    starts = [(i * batch) % (len(rows) - batch + 1) for i in range(2 * steps)]
    for begin in starts[:steps]:
        step(begin)
    _sync(device)
    started = time.perf_counter()
    for begin in starts[steps:]:
        step(begin)
    _sync(device)
    return steps * batch / (time.perf_counter() - started)


def compare(dim: int, n_bits: int, k: int, batch: int, steps: int, device: str, rounds: int) -> None:
    reuse_freed_blocks()  # what train() sets on a CPU, set first so the reference loop runs under it too
    x = np.random.default_rng(0).standard_normal((batch * 2 * steps, dim)).astype(np.float32)
    config = TrainConfig(n_bits=n_bits, k=k, batch_size=batch, epochs=1, val_fraction=0.0, device=device)
    flops = gemm_rate(dim, n_bits, batch, device)
    bound = flops / (12 * dim * n_bits)
    rates: dict[str, list[float]] = {"reference": [], "auto": [], "dense": []}
    actives = []
    for _ in range(rounds):  # interleaved, so a load change on the shared machine hits every loop alike
        rates["reference"].append(reference_rate(x, n_bits, k, batch, steps, device))
        rate, active = sparsebin_rate(x, config, steps)
        rates["auto"].append(rate)
        actives.append(active)
        rates["dense"].append(sparsebin_rate(x, config, steps, decoder_path="dense")[0])
    reference, ours, dense = (float(np.median(rates[name])) for name in ("reference", "auto", "dense"))
    active = float(np.mean(actives))
    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(rates["auto"], rates["reference"], strict=True))
    print(f"D={dim} N={n_bits} K={k} batch={batch}, {steps} timed steps after {steps} warm-up, device {device}")
    print(f"  medians of {rounds} interleaved rounds (ratio to the reference per round: {ratios})")
    print(f"  fp32 GEMM ({batch}x{dim})@({dim}x{n_bits}): {flops / 1e9:.1f} GFLOP/s")
    print(f"  12*D*N bound at that rate: {bound:.0f} samples/s")
    print(f"  TopK reference loop: {reference:.0f} samples/s ({reference / bound:.2f} of the bound)")
    print(f"  sparsebin, dense decoder: {dense:.0f} samples/s ({dense / bound:.2f} of the bound)")
    print(f"  sparsebin (auto decoder path), active bits per row {active:.1f}: {ours:.0f} samples/s")
    print(f"  fraction of the 12*D*N bound: {ours / bound:.2f}")
    print(f"  ratio to the TopK reference loop: {ours / reference:.2f}")


def memmap_child(path: str, placement: str, n_bits: int, k: int, batch: int, steps: int) -> None:
    """Train on the file in this fresh process; print JSON with samples/s and RSS growth."""
    data = np.load(path, mmap_mode="r")
    config = TrainConfig(n_bits=n_bits, k=k, batch_size=batch, epochs=1, val_fraction=0.0, device="cpu")
    before = _status("VmRSS")
    rate, active = sparsebin_rate(data, config, steps, placement=placement)
    peak = _status("VmHWM")  # this process's peak; ru_maxrss can carry the parent's peak over the fork
    model_bytes = 4 * 4 * (2 * n_bits * data.shape[1] + n_bits + data.shape[1])  # weights, grads, 2 Adam moments
    print(json.dumps({"rate": rate, "active": active, "before": before, "peak": peak, "model": model_bytes}))


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}; --memmap needs Linux.")


def memmap_comparison(rows: int, dim: int, n_bits: int, k: int, batch: int, steps: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        path = Path(folder) / "embeddings.npy"
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        rng = np.random.default_rng(0)
        for start in range(0, rows, CHUNK_ROWS):
            data[start : start + CHUNK_ROWS] = rng.standard_normal(
                (min(CHUNK_ROWS, rows - start), dim), dtype=np.float32
            )
        data.flush()
        del data
        size = path.stat().st_size
        runs: dict[str, list[dict]] = {"resident": [], "mapped": []}
        for _ in range(rounds):  # interleaved, so a load change on the shared machine hits both paths alike
            for placement in runs:
                command = [sys.executable, __file__, "--child", str(path), placement]
                command += ["--n-bits", str(n_bits), "--k", str(k), "--batch", str(batch), "--steps", str(steps)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                runs[placement].append(json.loads(output.strip().splitlines()[-1]))
    results = {  # median rates; the largest memory growth of any round
        placement: {key: float(np.median([run[key] for run in found])) for key in found[0]}
        | {"growth": max(run["peak"] - run["before"] for run in found), "peak": max(run["peak"] for run in found)}
        for placement, found in runs.items()
    }
    pairs = zip(runs["resident"], runs["mapped"], strict=True)
    per_round = ", ".join(f"{mapped['rate'] / resident['rate']:.2f}" for resident, mapped in pairs)
    gib = 2**30
    print(f"memory-mapped training: {rows} x {dim} float32 file of {size / gib:.2f} GiB")
    print(f"  N={n_bits} K={k}, batch {batch}, {steps} timed steps after {steps} warm-up, each path in a fresh process")
    print(f"  medians of {rounds} interleaved rounds (mapped against resident samples/s per round: {per_round})")
    for placement, result in results.items():
        growth = result["growth"]
        print(
            f"  {placement}: {result['rate']:.0f} samples/s, active {result['active']:.1f}; peak RSS "
            f"{result['peak'] / gib:.2f} GiB, {growth / gib:.2f} GiB beyond the process before training "
            f"(model with grads and Adam {result['model'] / gib:.2f} GiB), {growth / size:.2f} of the file size"
        )
    ratio = results["mapped"]["rate"] / results["resident"]["rate"]
    print(f"  mapped samples/s against resident: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=None, help="384, or 768 with --memmap")
    parser.add_argument("--n-bits", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; medians are printed")
    parser.add_argument("--memmap", action="store_true", help="train from a memory-mapped file against resident")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the --memmap file")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "PLACEMENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.child:
        memmap_child(args.child[0], args.child[1], args.n_bits, args.k, args.batch, args.steps)
    elif args.memmap:
        memmap_comparison(args.rows, args.dim or 768, args.n_bits, args.k, args.batch, args.steps, args.rounds)
    else:
        compare(args.dim or 384, args.n_bits, args.k, args.batch, args.steps, args.device, args.rounds)


if __name__ == "__main__":
    main()
