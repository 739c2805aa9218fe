"""Distances and the two loss terms of Binary Sparsity Alignment.

    L_rec = d(x, x_hat)
    L_sp  = d(s, t)              # soft code against its TopK mask
    L     = L_rec + alpha * L_sp

Each distance is averaged over the batch. Why the cosine alignment is a "soft
TopK": cos(s, t) = sum_{i in topK} s_i / (|s| sqrt(K)); maximising it raises the
K largest entries and lowers the rest, without forcing exactly K above 0.5.
"""

import torch
import torch.nn.functional as F

EPS = 1e-8


def cosine_distance(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 1 - <a, c> / (|a| |c| + eps)."""
    dot = (a * c).sum(dim=-1)
    norms = a.norm(dim=-1) * c.norm(dim=-1)
    return (1.0 - dot / (norms + EPS)).mean()


def mean_squared_error(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean of (a - c)^2 over every entry."""
    return F.mse_loss(a, c)


def mean_absolute_error(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean of |a - c| over every entry."""
    return F.l1_loss(a, c)


def row_squared_error(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over rows of |a - c|^2, summed over entries: on unit vectors about 2 - 2 cos,
    the cosine distance's scale (the per-entry mean is D times smaller)."""
    return (a - c).square().sum(dim=-1).mean()


def row_absolute_error(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over rows of |a - c|_1, summed over entries (the scale-fair L1)."""
    return (a - c).abs().sum(dim=-1).mean()


DISTANCES = {
    "cosine": cosine_distance,
    "mse": mean_squared_error,
    "l1": mean_absolute_error,
    "mse_sum": row_squared_error,
    "l1_sum": row_absolute_error,
}


def distance(kind: str, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return DISTANCES[kind](a, c)


def topk_indices(soft: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) positions of the k largest entries of each row; carries no gradient."""
    return soft.detach().topk(k, dim=-1).indices


def mask_from_indices(indices: torch.Tensor, n_bits: int, like: torch.Tensor) -> torch.Tensor:
    """(B, N) 0/1 mask with ones at `indices`."""
    return torch.zeros(len(indices), n_bits, dtype=like.dtype, device=like.device).scatter_(-1, indices, 1.0)


class _CosineAlignment(torch.autograd.Function):
    """d_cos(s, t) for a TopK mask t, with its gradient written out.

    With |t| = sqrt(K) and <s, t> = S = sum of s over the top K, per row
        d = 1 - S / D,  D = |s| sqrt(K) + eps
        dd/ds = -1_T / D + S sqrt(K) s / (D^2 |s|)
    Same value as cosine_distance(s, t), but no (B, N) mask, product or norm
    graph is built: the backward pass is one multiply and a K-wide scatter,
    which matters because these (B, N) passes rival the matrix products on a CPU.
    """

    @staticmethod
    def forward(ctx, soft: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        root_k = indices.shape[-1] ** 0.5
        top_sum = soft.gather(-1, indices).sum(dim=-1)  # (B,)
        norm = soft.norm(dim=-1)  # (B,)
        denominator = norm * root_k + EPS
        ctx.save_for_backward(soft, indices, top_sum, norm, denominator)
        return (1.0 - top_sum / denominator).mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        soft, indices, top_sum, norm, denominator = ctx.saved_tensors
        scale = grad_output / len(soft)
        root_k = indices.shape[-1] ** 0.5
        row = (scale * top_sum * root_k / (denominator**2 * norm.clamp_min(EPS))).unsqueeze(-1)  # (B, 1)
        grad = soft * row
        grad.scatter_add_(-1, indices, (-scale / denominator).unsqueeze(-1).expand_as(indices).contiguous())
        return grad, None


def cosine_alignment(soft: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cosine distance between s and its TopK mask."""
    return _CosineAlignment.apply(soft, indices)


def sparsity_term(sparsity: str, kind: str, soft: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The penalty each sparsity scheme adds, before the alpha weight.

    align: d(s, t) with t the TopK mask at `indices`; l1: mean(s) (s is
    non-negative, so this is its L1 norm per entry); hard-topk and none: no
    penalty (hard-topk constrains the code itself).
    """
    if sparsity == "align":
        if kind == "cosine":
            return cosine_alignment(soft, indices)
        return distance(kind, soft, mask_from_indices(indices, soft.shape[-1], soft))
    if sparsity == "l1":
        return soft.mean()
    return soft.new_zeros(())
