"""The decoder product of a 0/1 code, from its active columns only.

    x_hat = b @ W_d.T + b_d        # (B, D); b is 0/1 in the forward pass
          = b_d + sum over active j of W_d[:, j]      (a gather-sum)
    dL/dW_d[:, j] = sum over rows i where b_ij = 1 of dL/dx_hat_i   (a scatter into active columns)
    dL/db = dL/dx_hat @ W_d         # (B, N) dense: the pass-through gradient reaches every bit

With nnz active entries the first two cost nnz * D each instead of B * N * D;
the third stays a dense product, because `ste`, `stochastic` and `hard-topk`
send the reconstruction gradient to every bit's soft value, not only the
active ones (with `hard` no gradient reaches b and it is skipped).

Whether the sparse form pays is decided by cost, as the search index decides:
costs measured on this project's 2-core CPU (torch 2.13, B = N = 4096,
D = 384, shared machine) in ns: a dense multiply-add ~0.084, a gathered or
scattered element ~0.54, finding the active entries ~5.2 per code entry. A
model's `DecoderChoice` applies that rule batch by batch.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DENSE_MAC_NS, GATHER_NS, SCAN_NS = 0.084, 0.54, 5.2
DECODER_PATHS = ("auto", "dense", "sparse")


def sparse_pays(active_share: float, d_in: int, positions_known: bool = False) -> bool:
    """Whether the gather-sum and scatter beat the two dense products at this active share.

    Per code entry: dense 2 * D * DENSE_MAC_NS; sparse share * 2 * D * GATHER_NS,
    plus SCAN_NS to find the active entries unless they are known (TopK indices).
    """
    dense = 2 * d_in * DENSE_MAC_NS
    sparse = active_share * 2 * d_in * GATHER_NS + (0.0 if positions_known else SCAN_NS)
    return sparse < dense


def active_positions(code: torch.Tensor, topk: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the ones of a 0/1 code, row by row; from the TopK indices when given."""
    if topk is not None:
        rows = torch.arange(len(topk), device=topk.device).repeat_interleave(topk.shape[1])
        return rows, topk.reshape(-1)
    rows, columns = code.detach().nonzero().unbind(1)
    return rows, columns


def _offsets(keys: torch.Tensor, length: int) -> torch.Tensor:
    """Start of each key's run in a list sorted by key: the exclusive cumulative count."""
    if keys.device.type == "cpu":  # numpy's bincount is ~100x faster than torch's on a CPU
        counts = torch.from_numpy(np.bincount(keys.numpy(), minlength=length))
    else:
        counts = torch.bincount(keys, minlength=length)
    return torch.cumsum(counts, 0) - counts


def _column_order(columns: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Positions of `columns` sorted by column, ties in their given order (so by row)."""
    if columns.device.type == "cpu":  # numpy sorts small integer keys by radix, ~5x faster than torch here
        keys = columns.numpy().astype(np.int16 if n_bits <= 2**15 else np.int32)
        return torch.from_numpy(np.argsort(keys, kind="stable"))
    return torch.argsort(columns, stable=True)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, code, rows, columns, weight, bias):
        # code: (B, N) whose forward value is 1 at (rows, columns), else 0; it only routes the gradient.
        table = weight.t().contiguous()  # (N, D): column j of W_d as a row
        out = F.embedding_bag(columns, table, _offsets(rows, len(code)), mode="sum") + bias  # (B, D)
        ctx.save_for_backward(rows, columns, weight)
        ctx.n_bits = code.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad):  # grad: (B, D)
        rows, columns, weight = ctx.saved_tensors
        grad_code = grad @ weight if ctx.needs_input_grad[0] else None  # (B, N), dense
        grad_weight = None
        if ctx.needs_input_grad[3]:
            order = _column_order(columns, ctx.n_bits)
            # (N, D): row j sums the output gradients of the rows where bit j is on.
            by_column = F.embedding_bag(rows[order], grad, _offsets(columns, ctx.n_bits), mode="sum")
            grad_weight = by_column.t().contiguous()  # (D, N)
        grad_bias = grad.sum(dim=0) if ctx.needs_input_grad[4] else None
        return grad_code, None, None, grad_weight, grad_bias


def sparse_decode(
    code: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """b @ weight.T + bias for a code whose forward value is 1 exactly at (rows, columns)."""
    return _SparseDecode.apply(code, rows, columns, weight, bias)


class DecoderChoice:
    """Which product decodes a training forward's 0/1 code: dense, or the gather-sum over its active columns.

    `path` dense or sparse fixes the choice. auto asks `sparse_pays`, on a CPU
    only (no GPU cost was measured), at `active_share`: the share of code
    entries on in the last training batch. The share starts at 1 (the
    standard initialisation fires about half the bits), except under rigid
    TopK (`positions_known`: the active entries are the TopK indices), where it
    is K / N from the start and the batch's K / N after, so a resumed run
    picks the path an uninterrupted one does.
    """

    def __init__(self, path: str, d_in: int, n_bits: int, k: int, positions_known: bool):
        self.path, self.d_in, self.positions_known = path, d_in, positions_known
        self.active_share = k / n_bits if positions_known else 1.0

    def decode(self, code: torch.Tensor, topk: torch.Tensor, decoder: nn.Linear) -> torch.Tensor:
        """b @ W_d.T + b_d, (B, D), for a code b (B, N) whose forward value is 0/1; `topk` (B, K) its TopK positions."""
        if self.positions_known:
            self.active_share = topk.shape[1] / code.shape[1]  # exact, also under a K schedule
        if not self._sparse_now(code.device):
            if self.path == "auto" and code.device.type == "cpu" and not self.positions_known:
                self.active_share = float(code.detach().sum()) / code.numel()
            return decoder(code)
        rows, columns = active_positions(code, topk if self.positions_known else None)
        if not self.positions_known:
            self.active_share = len(columns) / code.numel()
        return sparse_decode(code, rows, columns, decoder.weight, decoder.bias)

    def _sparse_now(self, device: torch.device) -> bool:
        if self.path != "auto":
            return self.path == "sparse"
        return device.type == "cpu" and sparse_pays(self.active_share, self.d_in, self.positions_known)
