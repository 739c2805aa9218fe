"""Remedies beyond the paper for always-on, dead and slow-to-settle bits.

Each is a TrainConfig setting, off by default, so the paper's setting trains
exactly as the paper describes. They follow sparse-autoencoder and
learning-to-hash practice:

- centre: u = (x - c) W_e^T + b_e and x_hat = ... + c, with c the training
  mean (fixed, or a learned pre-bias starting there) or the geometric median
  (a learned pre-bias). Sentence embeddings share a common direction; without
  a centre every bit can key on it and fire for every concept. The decoder
  product r is put back at the rows' mean distance L from the centre,
  x_hat = c + L r / |r| (see `sparsebin.model`). The training
  loss then compares the centred vectors, d(x - c0, x_hat - c0), c0 the
  centre at the start (fixed even when c is learned): under a cosine the
  shared direction would otherwise dominate both sides and leave the bits
  little to learn, and a learned c in the target drifts until every row looks
  alike (both measured on planted data: a collapse to a few always-on bits).
- rate_control: p_j = each bit's firing rate in the batch: the stored code's
  rate (h, or the TopK mask under hard-topk) with the soft rate's gradient
  (see `rate_term`). Both forms sum over
  bits, so a bit's push does not shrink as N grows.
    balance: sum_j KL(r || p_j), r = K / N, the Bernoulli KL of sparse
             autoencoders: steep towards p_j = 0 and p_j = 1.
    bounds:  sum_j relu(log p_j - log rate_max)^2 + relu(log rate_min - log p_j)^2,
             free inside the bounds. In log space so that a bit far outside
             (s near 0 or 1) still gets a gradient worth having.
- revive: a bit that fired on no training batch for `revive_after` steps is dead.
    auxk:   L_aux = d_cos(e, e_hat), e = x - x_hat (detached), e_hat = a @ W_d^T with
            a = 1 at each row's aux_k largest logits among dead bits (Gao et al.
            2024's AuxK made binary). Its gradient reaches those logits directly
            (a = mask * (u + (1 - u).detach())): a dead bit's sigmoid is flat.
    reinit: each dead bit is pointed at one of the batch's worst-reconstructed
            rows: decoder column = that row's residual, encoder row = the row's
            (centred) direction, bias set so the bit fires on a K / N share of the
            batch; its Adam moments are cleared.
- unit_decoder: every decoder column rescaled to length 1 after each step.
- tied_init: decoder columns start as random unit directions and the encoder
  as their transpose, so a bit starts by firing for inputs like its column.
- K schedule: the TopK target falls geometrically from k_start to K over
  k_anneal_epochs, then stays at K.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sparsebin.batches import read_rows
from sparsebin.config import TrainConfig
from sparsebin.losses import EPS, cosine_distance, mask_from_indices
from sparsebin.model import BinaryAutoencoder, Forward

CENTRE_CHUNK_ROWS = 65536  # training rows read at a time to find the centre
MEDIAN_ITERATIONS = 50  # Weiszfeld steps at most


@dataclass(frozen=True)
class Centre:
    """The centre c (D,) of the training rows and their mean distance L = mean |x - c| from it."""

    point: torch.Tensor
    length: float


def training_centre(
    config: TrainConfig, embeddings: np.ndarray, rows: np.ndarray, device: str | torch.device
) -> Centre | None:
    """The centre of the training rows (normalised as trained), or None without centring.

    Read from the data in chunks on the host, so a memory-mapped data set is
    never loaded whole: the mean, or the geometric median by Weiszfeld's
    iteration started at the mean (stopped when it moves less than 1e-6);
    then one more pass for the rows' mean distance from it.
    """
    if config.centre == "none":
        return None
    chunks = [rows[start : start + CENTRE_CHUNK_ROWS] for start in range(0, len(rows), CENTRE_CHUNK_ROWS)]
    total = np.zeros(embeddings.shape[1], dtype=np.float64)
    for chunk in chunks:
        total += read_rows(embeddings, chunk, config.normalize).sum(axis=0, dtype=np.float64)
    centre = total / len(rows)
    if config.centre == "learned-median":
        for _ in range(MEDIAN_ITERATIONS):
            weighted, weights = np.zeros_like(centre), 0.0
            for chunk in chunks:
                x = read_rows(embeddings, chunk, config.normalize).astype(np.float64)
                inverse = 1.0 / np.maximum(np.linalg.norm(x - centre, axis=1), 1e-8)  # (rows,)
                weighted += inverse @ x
                weights += inverse.sum()
            moved = np.linalg.norm(weighted / weights - centre)
            centre = weighted / weights
            if moved < 1e-6:
                break
    distance = sum(
        np.linalg.norm(read_rows(embeddings, chunk, config.normalize).astype(np.float64) - centre, axis=1).sum()
        for chunk in chunks
    )
    return Centre(torch.from_numpy(centre.astype(np.float32)).to(device), float(distance / len(rows)))


@torch.no_grad()
def init_model(model: BinaryAutoencoder, config: TrainConfig, centre: Centre | None) -> None:
    """Apply the initialisation remedies in place: the centre and its length, tied weights, unit decoder columns.

    Draws random numbers only for `tied_init`, after the model's own
    initialisation, so each setting keeps its runs reproducible by seed.
    """
    if model.centre is not None:
        model.centre.copy_(centre.point)
        if config.reconstruction_distance == "cosine":  # MSE / L1 fit |r| themselves: x_hat = r + c
            model.centre_length.fill_(centre.length)
    if config.tied_init:
        device = model.decoder.weight.device
        directions = F.normalize(torch.randn(model.n_bits, model.d_in, device=device), dim=1)  # (N, D)
        model.decoder.weight.copy_(directions.T)
        model.encoder.weight.copy_(directions)
    if config.unit_decoder:
        normalize_decoder_(model)


@torch.no_grad()
def normalize_decoder_(model: BinaryAutoencoder) -> None:
    """Rescale every decoder column W_d[:, j] to length 1."""
    weight = model.decoder.weight  # (D, N)
    weight.div_(weight.norm(dim=0, keepdim=True).clamp_min(EPS))


def k_at(config: TrainConfig, step: int, steps_per_epoch: int) -> int:
    """The TopK target at a (0-based) step: K, or the geometric anneal from k_start to K."""
    if not config.k_start:
        return config.k
    progress = min(1.0, step / max(1, config.k_anneal_epochs * steps_per_epoch))
    return max(config.k, round(config.k_start * (config.k / config.k_start) ** progress))


def rate_term(config: TrainConfig, soft: torch.Tensor, hard: torch.Tensor, k: int) -> torch.Tensor:
    """The firing-rate penalty (before its weight) on a batch's soft code s and stored code (B, N).

    The stored code is h = 1[u > 0], or the TopK mask t under rigid hard-topk.
    The rate is the stored bits' (what is kept), its gradient the soft rate's
    (pass-through), so the penalty cannot be met by s alone while h stays put.
    Rates are clamped to [1 / 2B, 1 - 1 / 2B]: a batch cannot tell finer.
    """
    floor = 0.5 / len(soft)
    soft_rate = soft.mean(dim=0)  # (N,)
    rate = hard.mean(dim=0).clamp(floor, 1 - floor) + (soft_rate - soft_rate.detach())  # (N,) p_j
    if config.rate_control == "balance":
        target = k / soft.shape[1]
        kl = target * torch.log(target / rate) + (1 - target) * torch.log((1 - target) / (1 - rate))
        return kl.sum()
    log_rate = rate.log()
    above = F.relu(log_rate - math.log(config.rate_max))
    below = F.relu(math.log(config.rate_min) - log_rate)
    return (above.square() + below.square()).sum()


def auxiliary_term(model: BinaryAutoencoder, x: torch.Tensor, out: Forward, dead: torch.Tensor, aux_k: int):
    """L_aux (see the module docstring), or None when no bit is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    logits = out.logits.masked_fill(~dead, float("-inf"))  # (B, N) only dead bits compete
    top = logits.detach().topk(min(aux_k, n_dead), dim=-1).indices  # (B, aux_k)
    mask = mask_from_indices(top, model.n_bits, out.logits)
    code = mask * (out.logits + (1 - out.logits).detach())  # forward: mask; backward: straight to u
    residual = (x - out.recon).detach()  # (B, D)
    return cosine_distance(residual, code @ model.decoder.weight.T)


class Remedies:
    """The remedies' per-run state and hooks, called by the training loop.

    `steps_idle` (N,) counts, per bit, the steps since it last fired on a
    training batch; it is saved in checkpoints so resumed runs revive alike.
    `loss_centre` is c0, the centre at the start, which the training loss
    subtracts from both sides (None without centring).
    """

    def __init__(
        self, config: TrainConfig, model: BinaryAutoencoder, steps_per_epoch: int, centre: Centre | None = None
    ):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.aux_k = config.aux_k or 2 * config.k
        self.steps_idle = torch.zeros(config.n_bits, dtype=torch.int64, device=next(model.parameters()).device)
        self.loss_centre = None if centre is None else centre.point

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        model: BinaryAutoencoder,
        embeddings: np.ndarray,
        rows: np.ndarray,
        steps_per_epoch: int,
    ) -> "Remedies":
        """The remedies of a new run: the centre found on the training `rows`, and the model initialised with it."""
        centre = training_centre(config, embeddings, rows, next(model.parameters()).device)
        init_model(model, config, centre)
        return cls(config, model, steps_per_epoch, centre)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep (empty when no remedy has state)."""
        return {"steps_idle": self.steps_idle} if self.config.revive != "none" else {}

    def k_at(self, step: int) -> int:
        return k_at(self.config, step, self.steps_per_epoch)

    def dead(self) -> torch.Tensor:
        return self.steps_idle >= self.config.revive_after

    def extra_terms(
        self, model: BinaryAutoencoder, x: torch.Tensor, out: Forward, k: int, code: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms the remedies add, by name (empty in the paper's setting).

        `code` (B, N) is the batch's stored code, `model.stored_code`: h, or the TopK mask under rigid hard-topk.
        """
        terms = {}
        if self.config.rate_control != "none":
            terms["rate_loss"] = self.config.rate_weight * rate_term(self.config, out.soft, code, k)
        if self.config.revive == "auxk":
            aux = auxiliary_term(model, x, out, self.dead(), self.aux_k)
            terms["auxiliary_loss"] = self.config.aux_weight * aux if aux is not None else out.logits.new_zeros(())
        return terms

    @torch.no_grad()
    def after_step(
        self, model: BinaryAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, out: Forward, code
    ) -> None:
        """After the optimizer step: renormalise the decoder, count idle steps, re-initialise dead bits."""
        if self.config.unit_decoder:
            normalize_decoder_(model)
        if self.config.revive == "none":
            return
        fired = code.sum(dim=0) > 0  # (N,)
        self.steps_idle = torch.where(fired, 0, self.steps_idle + 1)
        if self.config.revive == "reinit":
            self._reinit_dead(model, optimizer, x, out)

    def _reinit_dead(self, model: BinaryAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, out: Forward):
        bits = torch.nonzero(self.dead()).flatten()[: len(x)]  # at most one bit per batch row
        if len(bits) == 0:
            return
        worst = (1 - F.cosine_similarity(x, out.recon, dim=1)).argsort(descending=True)[: len(bits)]  # (n,)
        rows = worst[torch.arange(len(bits), device=x.device) % len(worst)]
        centred = x if model.centre is None else x - model.centre  # (B, D)
        encoder_scale = model.encoder.weight.norm(dim=1).mean()
        decoder_scale = model.decoder.weight.norm(dim=0).mean()
        directions = F.normalize(centred[rows], dim=1) * encoder_scale  # (n, D)
        model.encoder.weight[bits] = directions
        model.decoder.weight[:, bits] = (F.normalize(x[rows] - out.recon[rows], dim=1) * decoder_scale).T
        # Bias: fire on the K / N share of the batch whose rows point most like the new direction.
        projections = centred @ directions.T  # (B, n)
        share = 1 - self.config.k / self.config.n_bits
        model.encoder.bias[bits] = -torch.quantile(projections, share, dim=0)
        for parameter, index in (
            (model.encoder.weight, (bits,)),
            (model.encoder.bias, (bits,)),
            (model.decoder.weight, (slice(None), bits)),
        ):
            for moment in optimizer.state.get(parameter, {}).values():
                if moment.dim() > 0:
                    moment[index] = 0
        self.steps_idle[bits] = 0
