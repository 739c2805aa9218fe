"""One run's files on disk, written atomically and read with clear errors.

    <run>/config.json         the TrainConfig, exactly what was trained
    <run>/model.safetensors   weights; their ModelSpec (and the config) in its metadata
    <run>/metrics.json        {"train": {...}, "validation": {...}, "sign": {...}}
    <run>/history.jsonl       one progress event's record per line
    <run>/codes.npy           packed hard bits (np.packbits), one row per concept
    <run>/split.json          the row indices of the validation part
    <run>/environment.json    the device (and its name), torch version and dtype that made the codes
    <run>/probes.csv          sparse probing per category: the chosen bit, its F1 on both parts, chance, the
                              dense embedding's held-out F1 (a header only for data without ontology labels)

Weights are loaded with safetensors, never with pickle.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sparsebin.config import TrainConfig
from sparsebin.devices import is_available
from sparsebin.errors import RunFileError
from sparsebin.files import atomic_path, write_atomic
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.progress import read_record

ENVIRONMENT = "environment.json"
PROBES = "probes.csv"
ARTIFACTS = ("config.json", "model.safetensors", "metrics.json", "history.jsonl", "codes.npy", PROBES)


def save_model(path: Path, model: BinaryAutoencoder, config: TrainConfig) -> None:
    """The weights, with the model's spec (under "model") and the config in the metadata."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    meta = {"model": model.spec.to_json(), "config": config.to_json()}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=meta)


def save_codes(path: Path, packed: np.ndarray) -> None:
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, packed)


def save_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, allow_nan=True).encode())


def save_history(path: Path, history: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(event) + "\n" for event in history).encode())


def save_probes(path: Path, probes: pd.DataFrame) -> None:
    """The per-category probe table as CSV, header and all even without a row."""
    write_atomic(path, probes.to_csv(index=False).encode())


def refuse_finished(folder: Path) -> None:
    """Raise RunFileError when `folder` already holds a finished run (its metrics.json), so nothing trains over it."""
    if (Path(folder) / "metrics.json").exists():
        raise RunFileError(f"{folder} already holds a finished run; train into another folder.")


def _require(folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise RunFileError(f"run {Path(folder).name} has no {name}; it may not have finished, or was damaged.")
    return path


def load_config(folder: Path) -> TrainConfig:
    path = _require(folder, "config.json")
    try:
        return TrainConfig.from_json(path.read_text())
    except (ValueError, TypeError) as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged config.json: {error}") from error


def load_metrics(folder: Path) -> dict:
    path = _require(folder, "metrics.json")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged metrics.json: {error}") from error


def evaluated_part(metrics: dict) -> tuple[str, dict]:
    """The part a run is judged on and its metrics: ("validation", ...), or ("train", ...) when nothing was held out."""
    split = "validation" if metrics.get("validation") else "train"
    return split, metrics.get(split) or {}


def load_probes(folder: Path) -> pd.DataFrame | None:
    """The run's probe table (`save_probes`); None for a run measured before it was written."""
    path = Path(folder) / PROBES
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged {PROBES}: {error}") from error


def load_history(folder: Path) -> list[dict]:
    """The run's progress records under today's names (see `sparsebin.progress.read_record`)."""
    path = _require(folder, "history.jsonl")
    try:
        return [read_record(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged history.jsonl: {error}") from error


def load_split_rows(folder: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices of a run over `n_rows` rows: the held-out part from split.json,
    the training part every other row."""
    path = _require(folder, "split.json")
    name = Path(folder).name
    try:
        validation = np.asarray(json.loads(path.read_text())["validation"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as error:
        raise RunFileError(f"run {name} has a damaged split.json: {error}") from error
    if validation.ndim != 1:
        raise RunFileError(f"run {name} has a damaged split.json: its validation rows are not a list.")
    if len(validation) and (validation.min() < 0 or validation.max() >= n_rows):
        raise RunFileError(f"run {name} has a damaged split.json: a validation row lies outside its {n_rows} rows.")
    return np.setdiff1d(np.arange(n_rows), validation), validation


def load_codes(folder: Path, mmap: bool = True) -> np.ndarray:
    """(M, N/8) uint8 packed codes, memory-mapped by default."""
    path = _require(folder, "codes.npy")
    try:
        codes = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EOFError:
        raise RunFileError(f"run {Path(folder).name} has an empty or truncated codes.npy.") from None
    except (ValueError, OSError) as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged codes.npy: {error}") from error
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise RunFileError(f"run {Path(folder).name} has a codes.npy of {codes.dtype} {codes.shape}, not packed bits.")
    return codes


def load_environment(folder: Path) -> dict:
    """The device record of a run; {} for a run written before it was recorded."""
    path = Path(folder) / ENVIRONMENT
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged {ENVIRONMENT}: {error}") from error


def evaluation_device(folder: Path) -> str:
    """The device that made the run's codes when this machine has it, else the CPU.

    Recomputing logits where the codes were made keeps views and `eval` on
    the same side of zero as the stored bits.
    """
    device = load_environment(folder).get("device") or "cpu"
    return device if is_available(device) else "cpu"


def load_model(folder: Path, device: str = "cpu") -> BinaryAutoencoder:
    """Rebuild the model from model.safetensors alone, in evaluation mode: the spec saved with the weights,
    and exactly its weights. A file written before ModelSpec existed holds the same fields but decoder_path."""
    path = _require(folder, "model.safetensors")
    try:
        with safe_open(str(path), framework="pt") as handle:
            spec = ModelSpec.from_json(handle.metadata()["model"])
        state = load_file(str(path), device=device)
        model = BinaryAutoencoder(spec).to(device)
        model.load_state_dict(state)
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise RunFileError(f"run {Path(folder).name} has a damaged model.safetensors: {error}") from error
    return model.eval()
