"""Training stability, measured from the training itself: the probe sample, and the figures a run's history gives.

While it trains, the loop (`sparsebin.train.Stability`) puts on its progress events:
- `code_churn`, at each epoch end: the share of the stored bits of a fixed probe sample (P rows x N bits) that
  differ from the previous epoch end's; the first epoch's compares with the codes before training.
- `grad_norm`, at every logged step: the encoder gradient norm |(dL/dW_e, dL/db_e)| of that step.
- `nonfinite_steps`, at every logged step: the steps so far whose loss or gradient was not finite (each was
  skipped, never applied to the weights; see `sparsebin.train.train_step`).

`stability_metrics(history)` turns them into the "stability" group of a run's metrics. Torch-free, so a page
can read it from a history without loading torch.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from sparsebin.search.codes import sample_queries

PROBE_ROWS = 2048  # the churn probe's rows at most: 2048 x N bits is a share read to 1 / (2048 N) exactly


def probe_rows(train_rows: np.ndarray, validation_rows: np.ndarray, split_seed: int) -> np.ndarray:
    """The churn probe: at most PROBE_ROWS held-out rows, drawn by the split seed, sorted.

    By the split seed, so every run of a data set probes the same rows, as it is scored on the same held-out
    rows. Held-out rows, so the churn is that of codes the model was not fitted to; when nothing is held out
    (val_fraction 0) the probe is drawn from the training rows instead.
    """
    rows = validation_rows if len(validation_rows) else train_rows
    return rows[sample_queries(len(rows), PROBE_ROWS, split_seed)]


def churn_curve(history: Sequence[Mapping]) -> list[float]:
    """The code churn of each epoch, in epoch order, from the epoch-end records that carry it (empty if none)."""
    churn = {event["epoch"]: event["code_churn"] for event in history if event.get("code_churn") is not None}
    return [float(churn[epoch]) for epoch in sorted(churn)]


def loss_roughness(history: Sequence[Mapping]) -> float | None:
    """median |change of the total loss between consecutive logged steps| / median loss, over the second half.

    The second half is the logged steps after half the steps trained (of the whole run when it finished). Only
    finite losses count. None with fewer than 3 such steps, or a median loss of 0.
    """
    if not history:
        return None
    half = history[-1]["step"] / 2
    losses = np.array([event["loss"] for event in history if event["step"] > half], dtype=np.float64)
    losses = losses[np.isfinite(losses)]
    if len(losses) < 3 or np.median(losses) <= 0:
        return None
    return float(np.median(np.abs(np.diff(losses))) / np.median(losses))


def stability_metrics(history: Sequence[Mapping]) -> dict:
    """The "stability" group of a run's metrics (notes/contract.md), from its history alone.

    code_churn (the last epoch's) and code_churn_curve (one value per epoch); loss_roughness (see
    `loss_roughness`); grad_norm_mean and grad_norm_max over the logged steps whose norm was finite;
    nonfinite_steps, the steps whose loss or gradient was not finite. A figure the history does not hold is
    None: a run trained before it was logged ("not measured": it cannot be recomputed), or, for the
    roughness, too few logged steps. The roughness needs only the logged losses, so an older run has it too.
    """
    curve = churn_curve(history)
    norms = [event["grad_norm"] for event in history if event.get("grad_norm") is not None]
    norms = [norm for norm in norms if math.isfinite(norm)]
    counts = [event["nonfinite_steps"] for event in history if event.get("nonfinite_steps") is not None]
    return {
        "code_churn": curve[-1] if curve else None,
        "code_churn_curve": curve or None,
        "loss_roughness": loss_roughness(history),
        "grad_norm_mean": float(np.mean(norms)) if norms else None,
        "grad_norm_max": float(np.max(norms)) if norms else None,
        "nonfinite_steps": int(counts[-1]) if counts else None,
    }
