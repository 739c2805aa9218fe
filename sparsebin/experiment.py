"""Train, evaluate and write one run folder: what the CLI and the worker both do."""

from pathlib import Path

import numpy as np

from sparsebin import runfolder
from sparsebin.config import TrainConfig
from sparsebin.devices import describe_device
from sparsebin.metrics import code_metrics, evaluate_model, normalized_rows, principal_axes, sign_codes
from sparsebin.search.codes import bytes_per_vector
from sparsebin.train import ProgressCallback, TrainResult, check_checkpoint, train

CHECKPOINT = "checkpoint.safetensors"


def run_experiment(
    embeddings: np.ndarray,
    config: TrainConfig,
    folder: Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop=None,
    n_queries: int = 500,
) -> TrainResult:
    """Train with `config` and write every artifact of a run into `folder`.

    The folder keeps a checkpoint while training, so calling this again after
    an interruption resumes from the last finished epoch (a checkpoint of
    another config is refused). A cancelled run writes its config and history
    but no metrics or codes; a finished run drops its checkpoint.
    """
    folder = Path(folder)
    runfolder.refuse_finished(folder)
    if (folder / CHECKPOINT).exists():
        check_checkpoint(folder / CHECKPOINT, config)  # before config.json is overwritten
    folder.mkdir(parents=True, exist_ok=True)
    runfolder.save_json(folder / "config.json", config.to_dict())
    result = train(embeddings, config, progress=progress, should_stop=should_stop, checkpoint_path=folder / CHECKPOINT)
    runfolder.save_history(folder / "history.jsonl", result.history)
    if result.cancelled:
        return result
    metrics, codes = evaluate_run(embeddings, result, n_queries=n_queries)
    runfolder.save_model(folder / "model.safetensors", result.model, config)
    runfolder.save_codes(folder / "codes.npy", codes)
    runfolder.save_json(folder / "split.json", {"validation": result.split.validation.tolist()})
    runfolder.save_json(folder / runfolder.ENVIRONMENT, environment(result))
    runfolder.save_json(folder / "metrics.json", metrics)  # last: its presence marks a finished run
    (folder / CHECKPOINT).unlink(missing_ok=True)  # finished: model.safetensors holds the result
    return result


def environment(result: TrainResult) -> dict:
    """What produced the run's codes: device, its name, torch build, and where the rows were held."""
    placement = result.placement
    return describe_device(result.device) | {
        "dtype": "float32",
        "placement": placement.mode if placement else None,
        "placement_reason": placement.reason if placement else None,
    }


def evaluate_run(embeddings: np.ndarray, result: TrainResult, *, n_queries: int = 500) -> tuple[dict, np.ndarray]:
    """Metrics on both parts plus the sign baseline, and packed codes for every row."""
    config, split = result.config, result.split
    train_vectors = normalized_rows(embeddings, split.train, config.normalize)
    codes = np.zeros((len(embeddings), bytes_per_vector(config.n_bits)), dtype=np.uint8)
    metrics = {}
    for name, rows, vectors in (
        ("train", split.train, train_vectors),
        ("validation", split.validation, normalized_rows(embeddings, split.validation, config.normalize)),
    ):
        if len(rows) == 0:
            continue
        evaluation = evaluate_model(result.model, vectors, split=name, n_queries=n_queries, seed=config.seed)
        codes[rows] = evaluation.packed
        metrics[name] = evaluation.metrics
        if name == "validation" or len(split.validation) == 0:
            metrics |= sign_baselines(vectors, train_vectors, evaluation.metrics, name, n_queries, config.seed)
    return metrics, codes


def sign_baselines(
    vectors: np.ndarray, train_vectors: np.ndarray, model_metrics: dict, split: str, n_queries: int, seed: int
) -> dict:
    """The sign baseline at one bit per dimension, and at the model's storage.

    "Equal storage" keeps as many PCA components as the model's codes take
    bits as a list of active indices (active_mean * ceil(log2 N)), at most D.
    """
    dim = vectors.shape[1]
    budget = int(np.clip(round(model_metrics["bits_index_list"]), 1, dim))
    axes = principal_axes(train_vectors, dim)
    result = {}
    for key, n_bits in ((f"sign_{split}", dim), (f"sign_{split}_equal_storage", budget)):
        codes = sign_codes(vectors, n_bits=n_bits, axes=axes)
        result[key] = code_metrics(codes, n_bits, vectors, split=split, n_queries=n_queries, seed=seed)
    return result
