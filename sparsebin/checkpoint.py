"""One training state saved at an epoch's end and restored to continue exactly where it stopped.

A checkpoint is a safetensors file (no pickle): the model's weights, Adam's
moments, the remedies' state, the batch-order generator, the training
device's random state and the count of non-finite steps, with the config, the
epochs done and the history in its metadata. A resumed run gives the same
model, and the same history, as an uninterrupted one. The churn probe's codes
are not kept: the restored weights give them again (`sparsebin.train.Stability`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparsebin.config import NEUTRAL_SETTINGS, TrainConfig
from sparsebin.devices import get_rng_state, set_rng_state
from sparsebin.errors import RunFileError
from sparsebin.files import atomic_path
from sparsebin.model import BinaryAutoencoder
from sparsebin.progress import read_record
from sparsebin.remedies import Remedies


@dataclass
class TrainingState:
    """What training carries from step to step, and a checkpoint keeps."""

    config: TrainConfig
    model: BinaryAutoencoder
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # batch order, on the host so that every device draws the same
    remedies: Remedies
    device: str  # where it trains, as `resolve_device` named it
    # (2,) int64 on the device: the steps whose loss or gradient was not finite, and of those, whose loss was.
    nonfinite: torch.Tensor


def save_checkpoint(path: Path, state: TrainingState, epochs_done: int, history: list[dict]) -> None:
    """Write the state, the epochs done and the history as safetensors.

    Written to a temporary name and renamed, so a kill mid-write leaves the
    previous checkpoint intact.
    """
    tensors = {f"model.{name}": value.detach().cpu() for name, value in state.model.state_dict().items()}
    optimizer_state = state.optimizer.state_dict()
    for index, moments in optimizer_state["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1)
    for name, value in state.remedies.state().items():
        tensors[f"state.{name}"] = value.detach().cpu()
    tensors["rng.batch_order"] = state.generator.get_state()
    # Stochastic rounding draws from the training device's generator: that one state is saved.
    tensors["rng.device"] = get_rng_state(state.device)
    tensors["stability.nonfinite"] = state.nonfinite.detach().cpu()
    meta = {
        "config": state.config.to_json(),
        "epoch": json.dumps(epochs_done),
        "history": json.dumps(history),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "rng_device": state.device,
    }
    with atomic_path(path) as partial:
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(partial), metadata=meta)


def check_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint's metadata; RunFileError when it was written for another config.

    Only the NEUTRAL_SETTINGS may differ (the device, the logging interval): they do not change what is learned.
    """
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    if "config" not in meta:
        raise RunFileError(f"{path} does not say which config it was written for; delete it to start over.")
    saved = TrainConfig.from_json(meta["config"]).to_dict()
    changed = [
        name for name, value in config.to_dict().items() if saved[name] != value and name not in NEUTRAL_SETTINGS
    ]
    if changed:
        raise RunFileError(
            f"{path} is a checkpoint of a different configuration ({', '.join(changed)} differ); "
            "train into another folder, or delete the checkpoint to start over."
        )
    return meta


def load_checkpoint(path: Path, state: TrainingState) -> tuple[int, list[dict]]:
    """Restore what save_checkpoint wrote into `state`, in place; return (epochs done, history).

    A checkpoint of another config is refused rather than silently continued.
    """
    meta = check_checkpoint(path, state.config)
    tensors = load_file(str(path))
    model, optimizer = state.model, state.optimizer
    device = next(model.parameters()).device
    model.load_state_dict({name[6:]: value for name, value in tensors.items() if name.startswith("model.")})
    moments: dict[int, dict] = {}
    reference = optimizer.state_dict()
    params = [p for group in reference["param_groups"] for p in group["params"]]
    shapes = dict(zip(params, (p.shape for p in model.parameters()), strict=True))
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            index = int(index)
            value = value.reshape(()) if key == "step" else value.reshape(shapes[index])
            moments.setdefault(index, {})[key] = value if key == "step" else value.to(device)
    optimizer.load_state_dict({"state": moments, "param_groups": json.loads(meta["param_groups"])})
    for name, value in state.remedies.state().items():
        value.copy_(tensors[f"state.{name}"])
    state.generator.set_state(tensors["rng.batch_order"])
    # Written before non-finite steps were counted: that run had none it knew of.
    state.nonfinite.copy_(tensors.get("stability.nonfinite", torch.zeros(2, dtype=torch.int64)))
    if "rng.device" in tensors:
        set_rng_state(str(device), tensors["rng.device"], meta["rng_device"])
    else:  # written before the device's state was saved alone: the host generator's
        set_rng_state(str(device), tensors["rng.torch"], "cpu")
    return json.loads(meta["epoch"]), [read_record(record) for record in json.loads(meta["history"])]
