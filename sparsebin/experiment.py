"""Train, evaluate and write one run folder: what the CLI and the worker both do."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin import runfolder
from sparsebin.checkpoint import check_checkpoint
from sparsebin.config import TrainConfig
from sparsebin.datasets.importing import index_labels
from sparsebin.devices import describe_device
from sparsebin.errors import DataError, RunFileError
from sparsebin.health import bit_health, convergence
from sparsebin.interpret.scores import dense_probe, interpretability, ontology_indexes
from sparsebin.metrics import (
    RowView,
    count_metrics,
    evaluate_model,
    model_decoding,
    principal_axes,
    retrieval_metrics,
    sign_codes,
)
from sparsebin.search.codes import (
    CodeIndex,
    active_counts,
    bit_counts,
    bytes_per_vector,
    sample_queries,
    sign_decoding,
)
from sparsebin.train import ProgressCallback, Split, TrainResult, train

CHECKPOINT = "checkpoint.safetensors"


def run_experiment(
    embeddings: np.ndarray,
    config: TrainConfig,
    folder: Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop=None,
    n_queries: int = 500,
    concepts: pd.DataFrame | None = None,
) -> TrainResult:
    """Train with `config` and write every artifact of a run into `folder`.

    `concepts` is the data set's concept table, row for row (`Dataset.concepts`),
    for the interpretability figures; None for a bare embeddings file.

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
    evaluation = measure_run(embeddings, result, n_queries=n_queries, concepts=concepts)
    runfolder.save_model(folder / "model.safetensors", result.model, config)
    runfolder.save_codes(folder / "codes.npy", evaluation.codes)
    runfolder.save_json(folder / "split.json", {"validation": result.split.validation.tolist()})
    runfolder.save_json(folder / runfolder.ENVIRONMENT, environment(result))
    runfolder.save_probes(folder / runfolder.PROBES, evaluation.probes)
    runfolder.save_json(folder / "metrics.json", evaluation.metrics)  # last: its presence marks a finished run
    (folder / CHECKPOINT).unlink(missing_ok=True)  # finished: model.safetensors holds the result
    return result


def remeasure_run(embeddings: np.ndarray, folder: Path, *, concepts: pd.DataFrame | None = None) -> dict:
    """Measure a finished run again by today's metric definitions, and rewrite its metrics.json and probes.csv.

    For runs measured before a definition changed (asymmetric recall was once
    a plain sum through the decoder) or before a figure existed (sparsity
    alignment, silent bits against chance, interpretability). Everything else
    is the run's own and is left as it is: its model, its held-out rows
    (split.json), its history and its codes; the retrieval queries are as many
    as it was measured with, drawn by its split seed as always. The stability
    group it has is kept: it was measured while training and cannot be again
    (a run without one gets what its history holds, None for what it lacks).
    `embeddings` must be the run's data set, `concepts` its concept table.
    Refused, with nothing written, when they have another row count
    (DataError) or when the model no longer gives the stored codes
    (RunFileError): the new figures would describe codes the run does not hold.
    """
    folder = Path(folder)
    config = runfolder.load_config(folder)
    previous = runfolder.load_metrics(folder)
    _, before = runfolder.evaluated_part(previous)
    stored = runfolder.load_codes(folder, mmap=False)
    if len(embeddings) != len(stored):
        raise DataError(
            f"run {folder.name} coded {len(stored)} rows, these embeddings have {len(embeddings)}: "
            "not the data set it was trained on."
        )
    split = Split(*runfolder.load_split_rows(folder, len(stored)))
    device = runfolder.evaluation_device(folder)
    model = runfolder.load_model(folder, device=device)
    result = TrainResult(model, config, split, runfolder.load_history(folder), device=device)
    evaluation = measure_run(embeddings, result, n_queries=int(before.get("n_queries") or 500), concepts=concepts)
    differing = int((evaluation.codes != stored).any(axis=1).sum())
    if differing:
        raise RunFileError(
            f"run {folder.name}: its model now gives other codes than it stored "
            f"({differing} of {len(stored)} rows differ), so it was left as it was."
        )
    metrics = evaluation.metrics
    if previous.get("stability") is not None:
        metrics["stability"] = previous["stability"]
    runfolder.save_probes(folder / runfolder.PROBES, evaluation.probes)
    runfolder.save_json(folder / "metrics.json", metrics)
    return metrics


def environment(result: TrainResult) -> dict:
    """What produced the run's codes: device, its name, torch build, and where the rows were held."""
    placement = result.placement
    return describe_device(result.device) | {
        "dtype": "float32",
        "placement": placement.mode if placement else None,
        "placement_reason": placement.reason if placement else None,
    }


@dataclass(frozen=True, eq=False)
class RunEvaluation:
    """`measure_run`: what a finished run folder holds of its measurement."""

    metrics: dict  # metrics.json
    codes: np.ndarray  # (M, N/8) uint8 packed hard codes of every row (codes.npy)
    probes: pd.DataFrame  # the per-category probe table (probes.csv)


def evaluate_run(
    embeddings: np.ndarray, result: TrainResult, *, n_queries: int = 500, concepts: pd.DataFrame | None = None
) -> tuple[dict, np.ndarray]:
    """`measure_run`'s metrics and packed codes, for callers that keep no probe table."""
    evaluation = measure_run(embeddings, result, n_queries=n_queries, concepts=concepts)
    return evaluation.metrics, evaluation.codes


def measure_run(
    embeddings: np.ndarray, result: TrainResult, *, n_queries: int = 500, concepts: pd.DataFrame | None = None
) -> RunEvaluation:
    """Metrics on both parts, bit health, convergence, interpretability, stability and the sign baseline;
    packed codes for every row, and the probe table.

    `embeddings` may be a memory map: every step reads it in chunks (`metrics.RowView`), so the
    evaluation holds no float copy of a part, only the packed codes and per-row counts.

    Retrieval: a sample of each part's rows (seeded by the split seed, so every
    run of a dataset uses the same queries) is searched against every row of
    the data set, the realistic index. Bit health and interpretability count
    over all rows (the probe chooses on the training part, scores on the
    held-out one); stability is read from the training history (a figure it
    does not hold is None). `concepts` is the data set's concept table, row
    for row; None (a bare embeddings file) reads as a table without labels.
    """
    config, split = result.config, result.split
    if concepts is not None and len(concepts) != len(embeddings):
        raise DataError(f"the concept table has {len(concepts)} rows, the embeddings {len(embeddings)}.")
    vectors = RowView(embeddings, config.normalize)  # (M, D) as trained, read in chunks: no whole copy
    codes = np.zeros((len(embeddings), bytes_per_vector(config.n_bits)), dtype=np.uint8)
    parts = [(name, rows) for name, rows in (("train", split.train), ("validation", split.validation)) if len(rows)]
    metrics = {}
    for name, rows in parts:
        part = vectors.subset(rows)
        evaluation = evaluate_model(result.model, part, split=name, retrieval=False, into=(codes, part.rows))
        metrics[name] = evaluation.metrics
    index, decoding = CodeIndex(codes, config.n_bits), model_decoding(result.model)
    for name, rows in parts:
        queries = rows[sample_queries(len(rows), n_queries, config.split_seed)]
        metrics[name] |= retrieval_metrics(index, vectors, queries, decoding=decoding)
    metrics["bit_health"] = bit_health(codes, config.n_bits, split.validation)
    metrics["convergence"] = convergence(result.history, config.k)
    metrics["interpretability"], probes = interpretability_group(codes, config.n_bits, vectors, concepts, split)
    metrics["stability"] = result.stability  # from the history training logged (sparsebin.stability)
    name, rows = parts[-1]  # the sign baseline on the part the run is judged on
    queries = rows[sample_queries(len(rows), n_queries, config.split_seed)]
    metrics |= sign_baselines(vectors, vectors.subset(split.train), metrics[name], name, queries, rows)
    return RunEvaluation(metrics, codes, probes)


def interpretability_group(
    codes: np.ndarray, n_bits: int, vectors: np.ndarray, concepts: pd.DataFrame | None, split: Split
) -> tuple[dict, pd.DataFrame]:
    """The "interpretability" group of metrics.json and the probe table of probes.csv.

    The group is `interpretability(...).metrics()` of the codes (M, N/8) and
    `dense_probe_f1`, the same probe on the dense rows (M, D) as the model saw
    them. The table is the bits' probe table with the dense probe's choice and
    held-out F1 beside each category (both probe the same categories, in the
    same order). A data set without ontology labels gives None figures with
    `interpretability_note` and a table of no rows.
    """
    concepts = index_labels(len(codes)) if concepts is None else concepts
    indexes = ontology_indexes(concepts)  # built once for both probes
    judged = interpretability(codes, n_bits, concepts, split.train, split.validation, indexes)
    dense = dense_probe(vectors, concepts, split.train, split.validation, indexes)
    probes = judged.probe.probes.assign(
        dense_dimension=dense.probes["dimension"].to_numpy(),
        dense_direction=dense.probes["direction"].to_numpy(),
        dense_heldout_f1=dense.probes["heldout_f1"].to_numpy(),
    )
    return judged.metrics() | {"dense_probe_f1": dense.probe_f1}, probes


def sign_baselines(
    vectors: np.ndarray,
    train_vectors: np.ndarray,
    model_metrics: dict,
    split: str,
    queries: np.ndarray,
    rows: np.ndarray,
) -> dict:
    """The sign baseline at one bit per dimension, and at the model's storage.

    "Equal storage" keeps as many PCA components as the model's codes take
    bits as a list of active indices (active_mean * ceil(log2 N)), at most D:
    sign bits cannot spend more bits than D, so a model storing more is
    compared at D (`capped_at_d` says so). Activity metrics are on `rows` (the
    part); retrieval searches `queries` against every row, as for the model.
    """
    dim = vectors.shape[1]
    wanted = int(round(model_metrics["bits_index_list"]))
    budget = int(np.clip(wanted, 1, dim))
    axes = principal_axes(train_vectors, dim)
    result = {}
    for key, n_bits in ((f"sign_{split}", dim), (f"sign_{split}_equal_storage", budget)):
        codes = sign_codes(vectors, n_bits=n_bits, axes=axes)
        part = codes[rows]  # the part's packed codes: N/8 bytes a row, no floats
        result[key] = count_metrics(active_counts(part), bit_counts(part, n_bits), n_bits, dim, split=split)
        # Asymmetric: cos(q, R sign(.)), the query against the bits read back in the rotated basis.
        decoding = sign_decoding(axes[1][:, :n_bits])
        result[key] |= retrieval_metrics(CodeIndex(codes, n_bits), vectors, queries, decoding=decoding)
    result[f"sign_{split}_equal_storage"] |= {"model_bits": wanted, "capped_at_d": wanted > dim}
    return result
