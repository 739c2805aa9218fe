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


DISTANCES = {"cosine": cosine_distance, "mse": mean_squared_error, "l1": mean_absolute_error}


def distance(kind: str, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return DISTANCES[kind](a, c)


def topk_mask(soft: torch.Tensor, k: int) -> torch.Tensor:
    """1 at the k largest entries of each row, 0 elsewhere; carries no gradient."""
    soft = soft.detach()
    indices = soft.topk(k, dim=-1).indices  # (B, k)
    return torch.zeros_like(soft).scatter_(-1, indices, 1.0)


def sparsity_term(sparsity: str, kind: str, soft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The penalty each sparsity scheme adds, before the alpha weight.

    align: d(s, t); l1: mean(s) (s is non-negative, so this is its L1 norm per
    entry); hard-topk and none: no penalty (hard-topk constrains the code itself).
    """
    if sparsity == "align":
        return distance(kind, soft, mask)
    if sparsity == "l1":
        return soft.mean()
    return soft.new_zeros(())
