"""Comparing runs: which runs may be compared, how seeds pool, and when two settings differ.

The input is a runs table as `Store.list_runs` gives it (one row per run: every
setting, the validation metrics, bit health over all rows, convergence).

- The comparison key (`comparison_key`) is every column that can change a result:
  the data (dataset, row count) and every training setting but the replicate (the
  training seed) and the neutral ones (`NEUTRAL_SETTINGS`: where it trains, how
  often it reports), with `loss` and its two overrides read as the two distances
  the loss terms trained with.
- A factor's effect is read only from a controlled group (`controlled_groups`):
  runs equal in the key but for that factor and the seed.
- Runs that differ only in seed pool into mean ± sd and n over distinct seeds
  (`pool`): runs identical in every setting and seed (one queued again) are one
  replicate, averaged first. Two settings differ only when both have two seeds or
  more and their mean ± sd ranges do not overlap (`differs`).
- A comparison that lacks runs is completed by planning them (`plan_variants`):
  each reference run's config with the missing setting's changes, unless any run
  held (queued, running or finished, picked or not) already has that config.
- A heatmap over two settings pools only the runs of one controlled group
  (`grid_groups`); curves per epoch pool the seeds of one setting (`epoch_curves`).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sparsebin.config import DISTANCE_NAMES, FIELDS, NEUTRAL_SETTINGS, TrainConfig, preset_of, remedy_changes
from sparsebin.health import HEALTH_COLUMNS
from sparsebin.jobs.queue import RUN_FACTS
from sparsebin.metrics import HEADLINE_METRICS

REPLICATE = "seed"  # runs that differ only in it are replicates of one setting, pooled over
# Each loss term's distance as trained (TrainConfig's properties): `loss`, or the term's override when set.
# The key holds these instead of the three settings they resolve, so a run with loss=mse and one with
# rec_loss=sparsity_loss=mse compare as the same setting.
DISTANCE_COLUMNS = {"reconstruction_distance": "rec_loss", "alignment_distance": "sparsity_loss"}
RESOLVED = frozenset({"loss", *DISTANCE_COLUMNS.values()})


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that have metrics (a queued or failed run has NaN in recon_loss)."""
    return runs[runs["recon_loss"].notna()] if len(runs) else runs


def with_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """The table with every column the comparison key needs; older tables get the defaults' values."""
    runs = runs.copy()
    defaults = TrainConfig().to_dict()
    for name, value in defaults.items():
        if name not in runs.columns:
            runs[name] = value
    for column, override in DISTANCE_COLUMNS.items():
        if column not in runs.columns:
            runs[column] = [_distance(row, override) for _, row in runs.iterrows()]
    # A figure measured since the run was (or a table built before it existed) shows as not measured (NaN).
    for column in ("dataset", "n_rows", "converged", *HEALTH_COLUMNS, *HEADLINE_METRICS, *RUN_FACTS):
        if column not in runs.columns:
            runs[column] = "" if column == "dataset" else math.nan
    return runs


def _distance(row: pd.Series, override: str) -> str:
    value = row[override]
    return value if isinstance(value, str) and value else row["loss"]


def comparison_key() -> list[str]:
    """Every column that can change a run's result: the dataset and its row count, and every
    training setting but the seed and the neutral ones, with the two loss terms' distances
    resolved (`loss` with its overrides)."""
    left_out = NEUTRAL_SETTINGS | {REPLICATE} | RESOLVED
    settings = [field.name for field in FIELDS if field.name not in left_out]
    return ["dataset", "n_rows", *settings, *DISTANCE_COLUMNS]


def controlled_groups(runs: pd.DataFrame, factor: list[str]) -> list[pd.DataFrame]:
    """Groups of runs identical in every key setting but `factor` (and the seed), with at least
    two values of the factor: the only sets a factor's effect may be read from."""
    if not len(runs):
        return []
    shared = [column for column in comparison_key() if column not in factor]
    keyed = runs.assign(**{column: runs[column].map(_hashable) for column in shared})
    groups = []
    for _, group in keyed.groupby(shared, dropna=False, sort=False):
        if len(group[factor].drop_duplicates()) >= 2:
            groups.append(runs.loc[group.index])
    return groups


UNKNOWN = "(unknown)"


def _hashable(value):
    """NaN and None as one value, so runs lacking a fact (older runs) still group together."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    return value


# -- runs and settings in words -------------------------------------------------


def run_name(run: Mapping) -> str:
    """A run's label, or its settings when it has none: the one title every page uses.

    Unlabelled, a run of the recommended preset is called so; any other run is
    named by its loss, rounding and sparsity and each remedy setting it changed,
    so that rigid TopK alone and the preset, or a run with and without a
    centre, never share a title. `run` is a runs-table row or any mapping with
    label, loss, rounding, sparsity, n_bits and k (a remedy setting it lacks
    counts as off).
    """
    label = run.get("label")
    if isinstance(label, str) and label:
        return label
    size = f"N={int(run['n_bits'])} K={int(run['k'])}"
    if preset_of(run) == "recommended":
        return f"recommended {size}"
    changed = "".join(f" {name}={value}" for name, value in remedy_changes(run).items())
    return f"{run['loss']}/{run['rounding']}/{run['sparsity']}{changed} {size}"


def describe_setting(run: pd.Series, skip: tuple[str, ...] = ()) -> str:
    """What a group of runs shares, in words: the key settings, non-default ones spelled out."""
    parts = [f"{run['dataset']}" if run["dataset"] else ""]
    parts += [f"{symbol}={int(run[name])}" for name, symbol in (("n_bits", "N"), ("k", "K")) if name not in skip]
    shown = {"n_bits", "k", "dataset", "n_rows", "rounding", "sparsity", *skip}
    always = ("alpha", "epochs", "lr", "batch_size")
    if "alignment_distance" not in skip and "reconstruction_distance" not in skip:
        parts.append(f"loss {distances_text(run)}")
    for name in ("rounding", "sparsity"):
        if name not in skip:
            parts.append(f"{name} {run[name]}")
    key = comparison_key()
    defaults = TrainConfig().to_dict()
    for name in [*always, *(name for name in defaults if name not in always)]:
        if name in shown or name not in key:
            continue
        if name in always or run[name] != defaults[name]:
            parts.append(f"{name} {run[name]:g}" if isinstance(run[name], float) else f"{name} {run[name]}")
    return " ".join(part for part in parts if part)


def distances_text(run: Mapping) -> str:
    """The two terms' distances, named with their form: "alignment X, reconstruction Y"."""
    alignment, reconstruction = run["alignment_distance"], run["reconstruction_distance"]
    if alignment == reconstruction:
        return f"{DISTANCE_NAMES.get(alignment, alignment)} (both terms)"
    return (
        f"alignment {DISTANCE_NAMES.get(alignment, alignment)}, "
        f"reconstruction {DISTANCE_NAMES.get(reconstruction, reconstruction)}"
    )


# -- seeds pooled ----------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """One metric over the seeds of one setting."""

    mean: float
    sd: float
    n: int

    def text(self, digits: int = 3) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "not measured"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} (n={self.n})"


def spread(values: pd.Series) -> Spread:
    """Mean, sample sd and count of the known values (NaN left out)."""
    known = pd.to_numeric(values, errors="coerce").dropna()
    if not len(known):
        return Spread(math.nan, math.nan, 0)
    return Spread(float(known.mean()), float(known.std(ddof=1)) if len(known) > 1 else 0.0, len(known))


def pool(runs: pd.DataFrame, metric: str) -> Spread:
    """`metric` over the distinct training seeds of `runs` (runs of one setting): runs that share a seed
    are one replicate (identical in every setting and seed), so their values are averaged first and n
    counts seeds, not runs. A figure the table lacks (runs measured before it existed) is not measured."""
    if metric not in runs.columns:
        return Spread(math.nan, math.nan, 0)
    if REPLICATE not in runs.columns:
        return spread(runs[metric])
    values = pd.to_numeric(runs[metric], errors="coerce")
    return spread(values.groupby(runs[REPLICATE].map(_hashable), sort=True).mean())


def seeds_of(runs: pd.DataFrame) -> list[int]:
    """The distinct training seeds of `runs`, in order: the replicates a pooled figure counts."""
    return sorted({int(seed) for seed in runs[REPLICATE]})


def differs(a: Spread, b: Spread) -> bool | None:
    """True when both have two or more seeds and their mean ± sd ranges do not overlap, False when
    they overlap (no difference beyond the seed spread), None when a spread is unknown."""
    if a.n < 2 or b.n < 2:
        return None
    return abs(a.mean - b.mean) > a.sd + b.sd


def contrast(a: Spread, b: Spread, what: str, digits: int = 3) -> str:
    """A clause comparing a setting (a) with the reference (b) on one metric."""
    verdict = differs(a, b)
    delta = a.mean - b.mean
    if not a.n or not b.n:
        return f"{what} {a.text(digits)} against {b.text(digits)} (no verdict)"
    if verdict is None:
        return f"{what} {a.text(digits)} against {b.text(digits)} (spread unknown with one seed, no verdict)"
    if not verdict:
        return f"{what} {a.text(digits)} against {b.text(digits)}, no difference beyond the seed spread"
    direction = "higher" if delta > 0 else "lower"
    return f"{what} {a.text(digits)} against {b.text(digits)}, {direction} by {abs(delta):.{digits}f}"


# -- the runs a comparison lacks -------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A run a comparison needs and the selection lacks."""

    dataset: str
    config: TrainConfig
    label: str


def config_of(run: pd.Series) -> TrainConfig:
    """The TrainConfig a runs-table row was trained with (numpy scalars and NaN turned back)."""
    values = {}
    for field in FIELDS:
        value = run.get(field.name, field.default)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = None if field.default is None else field.default
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(field.default, bool):
            value = bool(value)
        elif isinstance(field.default, int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[field.name] = value
    return TrainConfig(**values)


def plan_variants(references: pd.DataFrame, variants: dict[str, dict], present: pd.DataFrame) -> tuple[Planned, ...]:
    """Runs to queue: each reference run's config with each variant's changes, unless a run with that
    exact config (seed included) on the same data is already among `present` (every run held, picked or
    not: queued and running runs too, whose row count is not yet known and matches any)."""
    have: dict[tuple, set] = {}
    for _, row in present.iterrows():
        have.setdefault((row["dataset"], config_of(row)), set()).add(_hashable(row.get("n_rows")))
    planned, seen = [], set()
    for _, reference in references.iterrows():
        base = config_of(reference)
        rows = _hashable(reference.get("n_rows"))
        for name, changes in variants.items():
            config = base.replace(**changes)
            key = (reference["dataset"], config)
            held = have.get(key, set())
            if key in seen or rows in held or UNKNOWN in held or (held and rows == UNKNOWN):
                continue
            seen.add(key)
            planned.append(Planned(str(reference["dataset"]), config, f"{name} seed={config.seed}"))
    return tuple(planned)


# -- grids and curves -------------------------------------------------------------


@dataclass(frozen=True)
class GridGroup:
    """The runs a heatmap over two settings may pool: equal in every other key setting."""

    runs: pd.DataFrame  # the group's runs; a cell pools its distinct seeds
    setting: str  # what the runs share, in words


def grid_groups(runs: pd.DataFrame, x: str, y: str) -> list[GridGroup]:
    """The controlled groups over the settings `x` and `y` (largest first): a heatmap of one of them pools,
    in each cell, only runs that differ in the seed, never runs that differ in another setting."""
    factor = list(dict.fromkeys([x, y]))
    groups = sorted(controlled_groups(runs, factor), key=len, reverse=True)
    return [GridGroup(group, describe_setting(group.iloc[0], skip=tuple(factor))) for group in groups]


def epoch_values(history: list[dict], metric: str) -> dict[int, float]:
    """The mean of `metric` over each epoch's logged records that carry it (code_churn: the epoch's end)."""
    by_epoch: dict[int, list[float]] = {}
    for record in history:
        value = record.get(metric)
        if value is not None and "epoch" in record:
            by_epoch.setdefault(int(record["epoch"]), []).append(float(value))
    return {epoch: float(np.mean(values)) for epoch, values in sorted(by_epoch.items())}


def epoch_curves(runs: pd.DataFrame, histories: Mapping[str, list[dict]], metric: str) -> dict[str, list[dict]]:
    """Per setting (runs equal in the comparison key, named by `setting_title`), one {epoch: value} curve
    per distinct seed; `histories` is keyed by run id. Runs sharing a seed are one replicate: the first kept."""
    curves: dict[str, list[dict]] = {}
    for group in setting_groups(runs):
        name = setting_title(group)
        for _, run in group.drop_duplicates(REPLICATE).iterrows():
            values = epoch_values(histories.get(run["run_id"], []), metric)
            if values:
                curves.setdefault(name, []).append(values)
    return curves


def setting_groups(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs equal in the comparison key (they differ at most in seed), in the order they come."""
    if not len(runs):
        return []
    key = comparison_key()
    keyed = runs.assign(**{column: runs[column].map(_hashable).astype(str) for column in key})
    return [runs.loc[group.index] for _, group in keyed.groupby(key, sort=False, dropna=False)]


def setting_title(group: pd.DataFrame) -> str:
    """A setting's name: the label its runs share without the seed ("alignment MSE"), else the first run's
    name (its settings)."""
    labels = {str(label).rsplit(" seed=", 1)[0] for label in group.get("label", pd.Series([""] * len(group)))}
    if len(labels) == 1 and (name := labels.pop()):
        return name
    return run_name(group.iloc[0])
