"""Training throughput against the machine's fp32 matrix-multiply rate.

One training sample costs about 12 * D * N floating-point operations (the
encoder and decoder products, forward and backward). The fraction of that
bound reached is samples/s * 12 * D * N / GEMM rate, both measured in this run.

    python benchmarks/bench_train.py [--device cpu] [--steps 6]
"""

import argparse
import time

import numpy as np
import torch

from sparsebin.config import TrainConfig
from sparsebin.train import train


def gemm_rate(dim: int, n_bits: int, batch: int, device: str, repeats: int = 10) -> float:
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


def training_rate(dim: int, n_bits: int, k: int, batch: int, steps: int, device: str) -> float:
    """Samples/s over `steps` steps after one warm-up epoch."""
    rows = batch * steps
    x = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    config = TrainConfig(
        n_bits=n_bits, k=k, batch_size=batch, epochs=2, val_fraction=0.0, device=device, log_every=10**9
    )
    events = []
    train(x, config, progress=events.append)
    # Each epoch-end event carries the samples/s so far; the second epoch's rate excludes warm-up.
    first, second = events[0], events[1]
    return (second["step"] - first["step"]) * batch / (second["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--n-bits", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    flops = gemm_rate(args.dim, args.n_bits, args.batch, args.device)
    samples = training_rate(args.dim, args.n_bits, args.k, args.batch, args.steps, args.device)
    bound = flops / (12 * args.dim * args.n_bits)
    print(f"device {args.device}, threads {torch.get_num_threads()}")
    print(f"fp32 GEMM ({args.batch}x{args.dim})@({args.dim}x{args.n_bits}): {flops / 1e9:.1f} GFLOP/s")
    print(f"training: {samples:.0f} samples/s; bound 12*D*N at that rate: {bound:.0f} samples/s")
    print(f"fraction of bound reached: {samples / bound:.1%}")


if __name__ == "__main__":
    main()
