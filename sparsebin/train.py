"""The training loop: device-agnostic, data resident on the device or read from a map.

Batches are slices of a seeded random permutation of the training rows (no
DataLoader in the hot loop); `batches.py` holds them on the device when they
fit, and otherwise reads each batch from the (memory-mapped) data. The loop touches the host only at logging steps,
where it reports a progress event through a callback. It checkpoints at every
epoch end (model, optimizer, random states, history) and resumes from such a
checkpoint to the same result as an uninterrupted run.
"""

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sparsebin.batches import Placement, choose_placement, release_pages, training_rows
from sparsebin.config import TrainConfig, validation_size
from sparsebin.devices import (
    free_memory,
    get_rng_state,
    resolve_device,
    reuse_freed_blocks,
    set_rng_state,
    synchronize,
)
from sparsebin.errors import DataError, RunFileError
from sparsebin.files import CHUNK_ROWS, atomic_path
from sparsebin.losses import distance, sparsity_term
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.remedies import Remedies, init_model, reconstruction_pair, training_centre

ProgressCallback = Callable[[dict], None]
log = logging.getLogger(__name__)


@dataclass
class Split:
    train: np.ndarray  # row indices of the training part
    validation: np.ndarray  # row indices of the held-out part


@dataclass
class TrainResult:
    model: BinaryAutoencoder
    config: TrainConfig
    split: Split
    history: list[dict] = field(default_factory=list)
    epochs_done: int = 0
    cancelled: bool = False
    device: str = "cpu"
    placement: Placement | None = None  # where the training rows were held, and why


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
    replace. The initialisation remedies follow in `sparsebin.remedies`.
    """
    torch.manual_seed(config.seed)
    model = BinaryAutoencoder(ModelSpec.from_config(config, d_in, decoder_path))
    if config.init == "sparse":
        # Few bits fire at the start; METHOD.md notes this leaves most bits dead.
        nn.init.constant_(model.encoder.bias, math.log(config.k / (config.n_bits - config.k)))
    return model


def training_loss(
    model: BinaryAutoencoder,
    config: TrainConfig,
    x: torch.Tensor,
    k: int | None = None,
    centre: torch.Tensor | None = None,
):
    """(total, reconstruction, sparsity, forward) for one batch.

    `k` overrides the TopK target; with a `centre` both sides of the
    reconstruction distance are centred (see sparsebin.remedies).
    """
    out = model(x, k)
    rec = distance(config.reconstruction_distance, *reconstruction_pair(x, out.recon, centre))
    sp = sparsity_term(config.sparsity, config.alignment_distance, out.soft, out.topk)
    return rec + config.alpha * sp, rec, sp, out


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

    `progress` receives a dict every `log_every` steps and at each epoch end:
    step, epoch, total_steps, loss, rec_loss, sp_loss, active_mean (active bits
    of the stored code in the logged batch), dead_bits (bits of the stored code
    that fired on no training row in the last whole epoch; during the first
    epoch, so far), samples_per_s, elapsed_s. `should_stop` is checked before
    every step; when it returns True the loop ends and the result says
    cancelled. With a `checkpoint_path`, an existing checkpoint there is resumed
    from (it must come from the same config), and a new one is written at the
    end of every epoch.

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
    d_in = embeddings.shape[1]
    free = free_memory(device) if free_bytes is None and placement == "auto" else free_bytes
    chosen = choose_placement(placement, len(split.train), d_in, device, free)
    if placement == "auto" and chosen.mode == "mapped":
        log.warning(chosen.reason)
    rows = training_rows(chosen, embeddings, split.train, config.normalize, device)
    n_train = len(rows)

    model = build_model(config, d_in, decoder_path).to(device)
    centre = training_centre(config, embeddings, split.train, device)
    init_model(model, config, centre)
    loss_centre = None if centre is None else centre.point
    steps_per_epoch = -(-n_train // config.batch_size)
    remedies = Remedies(config, model, steps_per_epoch)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **_fast_adam(device))
    generator = torch.Generator().manual_seed(config.seed)  # batch order, CPU so devices agree
    history: list[dict] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start_epoch, history = load_checkpoint(checkpoint_path, model, optimizer, generator, config, remedies.state())

    total_steps = steps_per_epoch * config.epochs
    step = start_epoch * steps_per_epoch
    fired = torch.zeros(config.n_bits, device=device)  # firing counts this epoch
    dead_last_epoch: int | None = None
    result = TrainResult(model, config, split, history, start_epoch, device=device, placement=chosen)
    model.train()
    started, samples = time.perf_counter(), 0
    for epoch in range(start_epoch, config.epochs):
        order = torch.randperm(n_train, generator=generator)
        fired.zero_()
        batches = rows.epoch(order, config.batch_size)
        for begin in range(0, n_train, config.batch_size):
            if should_stop is not None and should_stop():
                batches.close()  # stops the mapped path's reader thread
                result.cancelled = True
                model.eval()
                return result
            x = next(batches)  # (B, D)
            k = remedies.k_at(step)
            loss, rec, sp, out = training_loss(model, config, x, k, loss_centre)
            code = model.stored_code(out.hard, out.topk)  # (B, N) what evaluation will store
            extra = remedies.extra_terms(model, x, out, k, code)
            if extra:
                loss = loss + sum(extra.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            remedies.after_step(model, optimizer, x, out, code)
            fired += code.sum(dim=0)
            step += 1
            samples += x.shape[0]
            last_of_epoch = begin + config.batch_size >= n_train
            if step % config.log_every == 0 or last_of_epoch:
                synchronize(device)  # a GPU runs behind the host: count only finished steps
                elapsed = time.perf_counter() - started
                if last_of_epoch or dead_last_epoch is None:
                    dead = int((fired == 0).sum().item())
                    dead_last_epoch = dead if last_of_epoch else None
                else:
                    dead = dead_last_epoch
                event = {
                    "step": step,
                    "epoch": epoch + 1,
                    "total_steps": total_steps,
                    "loss": loss.item(),
                    "rec_loss": rec.item(),
                    "sp_loss": sp.item(),
                    "active_mean": code.sum(dim=1).mean().item(),
                    "dead_bits": dead,
                    "samples_per_s": samples / max(elapsed, 1e-9),
                    "elapsed_s": elapsed,
                    "epoch_end": last_of_epoch,
                }
                event |= {name: term.item() for name, term in extra.items()}
                if k != config.k:
                    event["k_target"] = k
                history.append(event)
                if progress is not None:
                    progress(event)
        batches.close()
        result.epochs_done = epoch + 1
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path, model, optimizer, generator, epoch + 1, history, config, device, remedies.state()
            )
    model.eval()
    return result


def _fast_adam(device: str) -> dict:
    # The fused kernel does the whole update in one pass; CPU and CUDA have it.
    return {"fused": True} if device.split(":")[0] in ("cpu", "cuda") else {}


def save_checkpoint(
    path: Path,
    model: BinaryAutoencoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    history: list[dict],
    config: TrainConfig,
    device: str = "cpu",
    remedy_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model, optimizer moments, random states and the remedies' state as safetensors (no pickle).

    Written to a temporary name and renamed, so a kill mid-write leaves the
    previous checkpoint intact.
    """
    tensors = {f"model.{name}": value.detach().cpu() for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1)
    for name, value in (remedy_state or {}).items():
        tensors[f"state.{name}"] = value.detach().cpu()
    tensors["rng.batch_order"] = generator.get_state()
    # Stochastic rounding draws from the training device's generator: that one state is saved.
    tensors["rng.device"] = get_rng_state(device)
    meta = {
        "config": config.to_json(),
        "epoch": json.dumps(epoch),
        "history": json.dumps(history),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "rng_device": device,
    }
    with atomic_path(path) as partial:
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(partial), metadata=meta)


def check_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint's metadata; RunFileError when it was written for another config.

    The device and the logging interval may differ: they do not change what is learned.
    """
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    if "config" not in meta:
        raise RunFileError(f"{path} does not say which config it was written for; delete it to start over.")
    saved = TrainConfig.from_json(meta["config"]).to_dict()
    changed = [
        name for name, value in config.to_dict().items() if saved[name] != value and name not in ("device", "log_every")
    ]
    if changed:
        raise RunFileError(
            f"{path} is a checkpoint of a different configuration ({', '.join(changed)} differ); "
            "train into another folder, or delete the checkpoint to start over."
        )
    return meta


def load_checkpoint(
    path: Path,
    model: BinaryAutoencoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainConfig,
    remedy_state: dict[str, torch.Tensor] | None = None,
) -> tuple[int, list[dict]]:
    """Restore what save_checkpoint wrote, `remedy_state`'s tensors in place; return (epochs done, history).

    A checkpoint of another config is refused rather than silently continued.
    """
    meta = check_checkpoint(path, config)
    tensors = load_file(str(path))
    device = next(model.parameters()).device
    model.load_state_dict({name[6:]: value for name, value in tensors.items() if name.startswith("model.")})
    state: dict[int, dict] = {}
    reference = optimizer.state_dict()
    params = [p for group in reference["param_groups"] for p in group["params"]]
    shapes = dict(zip(params, (p.shape for p in model.parameters()), strict=True))
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            index = int(index)
            value = value.reshape(()) if key == "step" else value.reshape(shapes[index])
            state.setdefault(index, {})[key] = value if key == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    for name, value in (remedy_state or {}).items():
        value.copy_(tensors[f"state.{name}"])
    generator.set_state(tensors["rng.batch_order"])
    if "rng.device" in tensors:
        set_rng_state(str(device), tensors["rng.device"], meta["rng_device"])
    else:  # written before the device's state was saved alone: the host generator's
        set_rng_state(str(device), tensors["rng.torch"], "cpu")
    return json.loads(meta["epoch"]), json.loads(meta["history"])
