"""The training loop: device-agnostic, data resident on the device or read from a map.

Batches are slices of a seeded random permutation of the training rows (no
DataLoader in the hot loop); `batches.py` holds them on the device when they
fit, and otherwise reads each batch from the (memory-mapped) data. The loop
touches the host only at logging steps, where it reports a progress event
(`sparsebin.progress`) through a callback. It checkpoints at every epoch end
(`sparsebin.checkpoint`) and resumes from such a checkpoint to the same result
as an uninterrupted run. It watches its own stability (`Stability`,
`sparsebin.stability`): a step whose loss or gradient is not finite is never
applied, and too many of them stop the run with a TrainingError.
"""

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsebin.batches import RowPlacement, place_rows, read_rows
from sparsebin.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from sparsebin.config import TrainConfig, validation_size
from sparsebin.devices import resolve_device, reuse_freed_blocks, synchronize
from sparsebin.errors import DataError, TrainingError
from sparsebin.files import CHUNK_ROWS, release_pages
from sparsebin.losses import distance, sparsity_term
from sparsebin.model import BinaryAutoencoder, Forward, ModelSpec
from sparsebin.progress import ProgressEvent
from sparsebin.remedies import Remedies
from sparsebin.stability import probe_rows, stability_metrics

ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class Split:
    train: np.ndarray  # row indices of the training part
    validation: np.ndarray  # row indices of the held-out part


@dataclass
class TrainResult:
    model: BinaryAutoencoder
    config: TrainConfig
    split: Split
    history: list[dict] = field(default_factory=list)  # each progress event's record
    epochs_done: int = 0
    cancelled: bool = False
    device: str = "cpu"
    placement: RowPlacement | None = None  # where the training rows were held, and why

    @property
    def stability(self) -> dict:
        """The run's stability figures from its history: code_churn, code_churn_curve, loss_roughness,
        grad_norm_mean, grad_norm_max, nonfinite_steps (see `sparsebin.stability.stability_metrics`)."""
        return stability_metrics(self.history)


def split_rows(n_rows: int, val_fraction: float, seed: int) -> Split:
    """A fixed, seeded split; the same seed always holds out the same rows.

    Training passes the config's `split_seed`, not its training seed, so runs
    that differ only in seed are scored on the same held-out rows.
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    n_val = validation_size(n_rows, val_fraction)
    return Split(train=np.sort(order[n_val:]), validation=np.sort(order[:n_val]))


def check_embeddings(embeddings: np.ndarray, normalize: bool = True) -> None:
    """Reject what cannot be trained on, naming the first bad row.

    All-zero rows are only a fault when rows are to be normalised.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2 or embeddings.shape[1] < 2:
        raise DataError(f"embeddings must be a 2-D array of at least 2 x 2, got shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise DataError(f"embeddings must be floating point, got dtype {embeddings.dtype}.")
    for start in range(0, embeddings.shape[0], CHUNK_ROWS):
        chunk = np.asarray(embeddings[start : start + CHUNK_ROWS])
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise DataError(f"embeddings contain NaN or inf, first in row {row}.")
        zero = ~chunk.any(axis=1)
        if zero.any():
            row = start + int(np.argmax(zero))
            raise DataError(f"embeddings row {row} is all zeros and has no direction to learn.")
        release_pages(embeddings)  # a mapped file is checked without being held whole


def build_model(config: TrainConfig, d_in: int, decoder_path: str = "auto") -> BinaryAutoencoder:
    """The untrained model of `config` for inputs of size `d_in`: seeded by the config's seed, started by its `init`.

    `init` acts here rather than in the ModelSpec: it only sets the starting
    weights, which training then changes and a saved model's own weights
    replace. The initialisation remedies follow in `Remedies.start`.
    """
    torch.manual_seed(config.seed)
    model = BinaryAutoencoder(ModelSpec.from_config(config, d_in, decoder_path))
    if config.init == "sparse":
        # Few bits fire at the start; METHOD.md notes this leaves most bits dead.
        nn.init.constant_(model.encoder.bias, math.log(config.k / (config.n_bits - config.k)))
    return model


def start_state(
    config: TrainConfig,
    embeddings: np.ndarray,
    rows: np.ndarray,
    device: str,
    steps_per_epoch: int,
    decoder_path: str = "auto",
) -> TrainingState:
    """A new run's state on `device`, built in the order that makes a seed's run repeat: the model, the
    remedies (which find the centre on the training `rows` and may draw tied weights), Adam, the batch order."""
    model = build_model(config, embeddings.shape[1], decoder_path).to(device)
    remedies = Remedies.start(config, model, embeddings, rows, steps_per_epoch)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **_fast_adam(device))
    generator = torch.Generator().manual_seed(config.seed)
    nonfinite = torch.zeros(2, dtype=torch.int64, device=device)
    return TrainingState(config, model, optimizer, generator, remedies, device, nonfinite)


def _fast_adam(device: str) -> dict:
    # The fused kernel does the whole update in one pass; CPU and CUDA have it.
    return {"fused": True} if device.split(":")[0] in ("cpu", "cuda") else {}


def training_loss(
    model: BinaryAutoencoder,
    config: TrainConfig,
    x: torch.Tensor,
    k: int | None = None,
    centre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Forward]:
    """(total, reconstruction, alignment, forward) for one batch x (B, D).

    `k` overrides the TopK target; with a `centre` c0 (D,) the reconstruction
    distance compares the centred vectors, d(x - c0, x_hat - c0) (see sparsebin.remedies).
    """
    out = model(x, k)
    target, recon = (x, out.recon) if centre is None else (x - centre, out.recon - centre)
    reconstruction = distance(config.reconstruction_distance, target, recon)
    alignment = sparsity_term(config.sparsity, config.alignment_distance, out.soft, out.topk)
    return reconstruction + config.alpha * alignment, reconstruction, alignment, out


@dataclass
class Step:
    """What one training step leaves for its progress event."""

    k: int  # the TopK target it trained at
    loss: torch.Tensor  # () the total, remedy terms included
    reconstruction: torch.Tensor  # () L_rec
    alignment: torch.Tensor  # () L_sp, before alpha
    extra: dict[str, torch.Tensor]  # the remedies' weighted terms, by name
    code: torch.Tensor  # (B, N) the batch's stored code
    grad_norm: torch.Tensor  # () the encoder gradient norm |(dL/dW_e, dL/db_e)|


def train_step(state: TrainingState, x: torch.Tensor, step: int) -> Step:
    """One optimizer step on the batch x (B, D), the run's `step`-th (from 0), unless it is not finite.

    A step whose loss or gradient is not finite is not applied: Adam leaves the weights, its moments and
    its step count as they were, and the remedies' after-step work is left out; the step is counted in
    `state.nonfinite`, and `Stability` stops the run once config.max_nonfinite_steps are counted. The
    verdict stays on the device: the fused Adam of CPUs and CUDA takes it as its `found_inf` flag (the one
    GradScaler hands it) and skips the update in its kernel, so the loop still reads the device only at
    logging steps; a host read every step would make a GPU wait for each step before queueing the next.
    An unfused Adam (MPS) reads the verdict on the host, as does revive, which reads the device every step
    already (its dead-bit count) and must not point a bit at a batch that was not finite.
    """
    model, remedies, optimizer = state.model, state.remedies, state.optimizer
    k = remedies.k_at(step)
    loss, reconstruction, alignment, out = training_loss(model, state.config, x, k, remedies.loss_centre)
    code = model.stored_code(out.hard, out.topk)  # (B, N) what evaluation will store
    extra = remedies.extra_terms(model, x, out, k, code)
    if extra:
        loss = loss + sum(extra.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm, nonfinite = check_gradients(model, loss)
    skip = nonfinite.any()
    state.nonfinite += torch.stack([skip, nonfinite[0]])
    step_unless_(optimizer, skip)
    # Without revive, after_step at most renormalises the decoder columns, which a skipped step left unit length.
    if state.config.revive == "none" or not skip.item():
        remedies.after_step(model, optimizer, x, out, code)
    return Step(k, loss, reconstruction, alignment, extra, code, grad_norm)


def check_gradients(model: BinaryAutoencoder, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder gradient norm (), nonfinite (2,) bool: the loss is not finite, some gradient is not (by its norm))
    after a backward pass; on the device, no host read. One pass over the gradients."""
    encoder = {id(parameter) for parameter in model.encoder.parameters()}
    grads = [[], []]  # the encoder's, the others'
    for parameter in model.parameters():
        if parameter.grad is not None:
            grads[id(parameter) not in encoder].append(parameter.grad)
    encoder_norm, other_norm = (torch.nn.utils.get_total_norm(part) if part else loss.new_zeros(()) for part in grads)
    return encoder_norm, ~torch.isfinite(torch.stack([loss.detach(), encoder_norm + other_norm]))


def step_unless_(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step() unless `skip` (a () bool on the device); a fused Adam decides in its kernel, no host read."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()  # 1: the kernel leaves weights, moments and step count as they were
        optimizer.step()
    elif not skip.item():
        optimizer.step()


class DeadBits:
    """Bits of the stored code that fired on no training row, counted over each whole epoch.

    A step adds its code's firing counts on the device; the count is read
    back (a host sync) only at an epoch's end, and during the first epoch at
    each logging step. Between epoch ends the last whole epoch's count is
    reported, so it changes only when an epoch ends. A resumed run reads its
    last epoch end's count back from the `history` so far, and reports what
    the uninterrupted run did.
    """

    def __init__(self, n_bits: int, device: str, history: list[dict]):
        self.fired = torch.zeros(n_bits, device=device)  # (N,) firing counts this epoch
        ends = [event["dead_bits"] for event in history if event["epoch_end"]]
        self.last_epoch: int | None = ends[-1] if ends else None  # the count at the last epoch end; None at first

    def new_epoch(self) -> None:
        self.fired.zero_()

    def add(self, code: torch.Tensor) -> None:
        """Count the firing of a batch's stored code (B, N)."""
        self.fired += code.sum(dim=0)

    def count(self, epoch_end: bool) -> int:
        if epoch_end or self.last_epoch is None:
            dead = int((self.fired == 0).sum().item())
            self.last_epoch = dead if epoch_end else None
            return dead
        return self.last_epoch


class Stability:
    """What a progress event reports of the run's stability (see `sparsebin.stability`): the code churn of
    the probe sample at each epoch end; at every logging step the encoder gradient norm and the steps so far
    that were not finite, stopping the run with a TrainingError once they reach config.max_nonfinite_steps.

    The probe's codes are taken when this is made, just before the loop: before the first step of a new run,
    and on a resume from the restored weights, the very weights the uninterrupted run had at that epoch end,
    so a resumed run's next churn compares with the same codes (nothing of it is saved). The probe is encoded
    at epoch ends only (P x D x N multiply-adds, about 2 % of an epoch's training on HPO), `batch_size` rows
    at a time (no more memory than a step's), and draws no random numbers, so training's stream is untouched.
    The non-finite count stays on the device (`TrainingState.nonfinite`, which checkpoints keep) until a
    logging step: the run stops at the first logging step by which the limit was reached, at most
    log_every - 1 steps late, and no step it counted was applied.
    """

    def __init__(self, state: TrainingState, probe: torch.Tensor):
        self.model, self.nonfinite, self.probe = state.model, state.nonfinite, probe  # probe (P, D)
        self.config = state.config
        self.codes = self.encode()  # (P, N) bool: the probe's codes at the last epoch end, or before training

    @classmethod
    def start(cls, state: TrainingState, embeddings: np.ndarray, split: Split) -> "Stability":
        """Watch the run of `state` with the probe rows of `split` (`sparsebin.stability.probe_rows`)."""
        rows = probe_rows(split.train, split.validation, state.config.split_seed)
        return cls(state, torch.from_numpy(read_rows(embeddings, rows, state.config.normalize)).to(state.device))

    @torch.no_grad()
    def encode(self) -> torch.Tensor:
        return torch.cat([self.model.encode(rows).bool() for rows in self.probe.split(self.config.batch_size)])

    def churn(self) -> float:
        """The share of the probe's stored bits that changed since the last call (or since this was made)."""
        codes = self.encode()
        changed = torch.count_nonzero(codes != self.codes).item() / codes.numel()
        self.codes = codes
        return changed

    def report(self, done: Step, step: int, epoch: int, epoch_end: bool) -> dict:
        """The stability fields of the event of the `step`-th step (from 1), in `epoch` (from 0)."""
        count, loss_count = self.nonfinite.tolist()
        if count >= self.config.max_nonfinite_steps:
            raise TrainingError(nonfinite_sentence(count, loss_count, step, epoch + 1, self.config))
        churn = self.churn() if epoch_end else None
        return {"grad_norm": done.grad_norm.item(), "nonfinite_steps": count, "code_churn": churn}


def nonfinite_sentence(count: int, loss_count: int, step: int, epoch: int, config: TrainConfig) -> str:
    """Why the run stopped: `count` steps not finite by `step` of `epoch`, `loss_count` of them in the loss."""
    if loss_count == count:
        what = "a loss that was not finite (NaN or infinite)"
    elif loss_count == 0:
        what = "a gradient that was not finite (NaN or infinite) with a finite loss"
    else:
        what = f"a loss or gradient that was not finite (the loss in {loss_count}, only a gradient in the rest)"
    return (
        f"training stopped at step {step} (epoch {epoch}): {count} steps had {what}, and max_nonfinite_steps "
        f"is {config.max_nonfinite_steps}; none of them was applied to the weights, so train again with a "
        f"lower lr than {config.lr:g}."
    )


class Meter:
    """Counts what the progress events report, and makes one every `log_every` steps and at each epoch end.

    Only those steps touch the host: the device is synchronised first, since a
    GPU runs behind the host and only finished steps may be timed. `history`
    holds the records so far (a resumed run's), which the dead count carries on from.
    """

    def __init__(self, config: TrainConfig, total_steps: int, device: str, stability: Stability, history: list[dict]):
        self.k, self.log_every, self.total_steps, self.device = config.k, config.log_every, total_steps, device
        self.dead, self.stability = DeadBits(config.n_bits, device, history), stability
        self.started, self.samples = time.perf_counter(), 0

    def measure(self, done: Step, step: int, epoch: int, epoch_end: bool) -> ProgressEvent | None:
        """Count the `step`-th step (from 1) of `epoch` (from 0); its event when it is a logging step."""
        self.dead.add(done.code)
        self.samples += len(done.code)
        if step % self.log_every and not epoch_end:
            return None
        synchronize(self.device)
        elapsed = time.perf_counter() - self.started
        return ProgressEvent(
            step=step,
            epoch=epoch + 1,
            total_steps=self.total_steps,
            loss=done.loss.item(),
            reconstruction_loss=done.reconstruction.item(),
            alignment_loss=done.alignment.item(),
            active_mean=done.code.sum(dim=1).mean().item(),
            dead_bits=self.dead.count(epoch_end),
            samples_per_second=self.samples / max(elapsed, 1e-9),
            elapsed_seconds=elapsed,
            epoch_end=epoch_end,
            **{name: term.item() for name, term in done.extra.items()},
            target_active=done.k if done.k != self.k else None,
            **self.stability.report(done, step, epoch, epoch_end),
        )


def train(
    embeddings: np.ndarray,
    config: TrainConfig,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: Path | None = None,
    placement: str = "auto",
    free_bytes: int | None = None,
    decoder_path: str = "auto",
) -> TrainResult:
    """Train a model on `embeddings` (M, D) with `config`.

    `progress` receives a `ProgressEvent` every `log_every` steps and at each
    epoch end; the result's history keeps each event's record. `should_stop`
    is checked before every step; when it returns True the loop ends and the
    result says cancelled. With a `checkpoint_path`, an existing checkpoint
    there is resumed from (it must come from the same config), and a new one
    is written at the end of every epoch. A step whose loss or gradient is not
    finite is skipped and counted (`train_step`); once `max_nonfinite_steps`
    are counted the run stops with a TrainingError.

    `placement` is auto (the training rows are held on the device when they
    take at most half its free memory, else read batch by batch from the
    data), resident or mapped; every choice gives the same result. The free
    memory is measured unless `free_bytes` is given. `decoder_path` (auto,
    dense, sparse) says how the decoder product is computed (see
    `sparsebin.decoding`); every path learns the same model within float32 rounding.
    """
    check_embeddings(embeddings, config.normalize)
    config.validate(n_rows=embeddings.shape[0])
    device = resolve_device(config.device)
    if device == "cpu":
        reuse_freed_blocks()
    split = split_rows(embeddings.shape[0], config.val_fraction, config.split_seed)
    rows, placed = place_rows(placement, embeddings, split.train, config.normalize, device, free_bytes)
    steps_per_epoch = -(-len(rows) // config.batch_size)
    state = start_state(config, embeddings, split.train, device, steps_per_epoch, decoder_path)
    start_epoch, history = 0, []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start_epoch, history = load_checkpoint(checkpoint_path, state)
    result = TrainResult(state.model, config, split, history, start_epoch, device=device, placement=placed)
    stability = Stability.start(state, embeddings, split)  # after a resume, from the restored weights
    meter = Meter(config, steps_per_epoch * config.epochs, device, stability, history)
    step = start_epoch * steps_per_epoch
    state.model.train()
    for epoch in range(start_epoch, config.epochs):
        order = torch.randperm(len(rows), generator=state.generator)
        meter.dead.new_epoch()
        with closing(rows.epoch(order, config.batch_size)) as batches:
            for index in range(steps_per_epoch):
                if should_stop is not None and should_stop():
                    result.cancelled = True
                    break
                done = train_step(state, next(batches), step)
                step += 1
                event = meter.measure(done, step, epoch, epoch_end=index == steps_per_epoch - 1)
                if event is not None:
                    history.append(event.to_record())
                    if progress is not None:
                        progress(event)
        if result.cancelled:
            break
        result.epochs_done = epoch + 1
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, state, epoch + 1, history)
    state.model.eval()
    return result
