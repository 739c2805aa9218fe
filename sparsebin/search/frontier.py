"""Recall per byte: the yardsticks and the runs on one frontier, its Pareto front, and its files.

A run's point is its own measurement (metrics.json of the part it is judged
on), at the size its codes are stored at (`bits_elias_fano`, the Elias-Fano
coded list `export` writes, offsets and all), one point per search: Hamming,
Jaccard and asymmetric. The Pareto front is drawn over codes that need no
second stage: a point is on it when no point of no more bytes finds more.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin import runfolder
from sparsebin.errors import DataError, RunFileError
from sparsebin.files import write_atomic
from sparsebin.search.codes import CodeIndex
from sparsebin.search.yardsticks import COLUMNS, Bench, K, Setup, best_at_most, storage_text

RUN_SEARCHES = ("hamming", "jaccard", "asymmetric")
POINT_COLUMNS = ["kind", *COLUMNS]  # kind: "baseline" or "run"
# Question 4 compares like with like: a code searched by a code (Hamming, Jaccard) against the baselines
# searched so, a float query against stored codes (asymmetric) against theirs. Two-stage rows read a second
# store from disk and are left out of "no more bytes".
KINDS_OF_SEARCH = {"code-to-code": ("hamming", "jaccard"), "float-query-to-code": ("asymmetric",)}
LEVEL = 0.005  # recall differences below this read as level


def stored_bytes(run: Mapping) -> tuple[float, str]:
    """(bytes per vector, form) a run's codes are stored at: Elias-Fano coded when measured, else the plain
    index list (runs measured before the Elias-Fano size existed); NaN when neither is known."""
    coded, listed = run.get("bits_elias_fano"), run.get("bits_index_list")
    if coded is not None and pd.notna(coded):
        return float(coded) / 8, "Elias-Fano"
    if listed is not None and pd.notna(listed):
        return float(listed) / 8, "index list"
    return float("nan"), "unknown"


def run_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One frontier row per run and search, from a runs table (`Store.list_runs`; `label` names a run).

    Bytes are the codes as stored (Elias-Fano); a run measured before that
    size existed falls back to its plain index list, and says so in `storage`.
    """
    rows = []
    for _, run in runs.iterrows():
        size, form = stored_bytes(run)
        if np.isnan(size):
            continue
        for search in RUN_SEARCHES:
            recall = run.get(f"recall_at_10_{search}")
            if pd.isna(recall):
                continue
            rows.append(
                {
                    "kind": "run",
                    "code": str(run.get("label") or run.get("run_id")),
                    "setting": f"{run.get('label') or run.get('run_id')} (N={int(run['n_bits'])}, K={int(run['k'])})",
                    "search": search,
                    "bytes": size,
                    "second_stage_bytes": 0.0,
                    "storage": f"{storage_text(round(size, 1), 0)} {form}",
                    "recall_at_10": float(recall),
                    "ms_per_query": float(run.get(f"ms_per_query_{search}", np.nan)),
                    "n_queries": run.get("n_queries", np.nan),
                    "n_index_rows": run.get("n_index_rows", np.nan),
                }
            )
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


@dataclass(frozen=True, eq=False)
class Standing:
    """A run against the strongest yardstick at no more bytes, by one kind of search."""

    kind: str  # a key of KINDS_OF_SEARCH
    search: str  # the run's best search of that kind
    recall: float  # its recall@10
    size: float  # bytes per vector the run's codes are stored at
    form: str  # how they are stored ("Elias-Fano")
    best: pd.Series | None  # the yardstick row (COLUMNS); None when no baseline fits in `size`

    @property
    def margin(self) -> float:
        return float("nan") if self.best is None else self.recall - float(self.best["recall_at_10"])

    @property
    def verdict(self) -> str:
        if self.best is None:
            return "no yardstick fits"
        return "level with" if abs(self.margin) < LEVEL else "beats" if self.margin > 0 else "trails"

    def text(self) -> str:
        """One clause: 'by code-to-code search its recall@10 0.648 (hamming) trails ITQ, 384 bits (48 B, ...)'."""
        mine = f"by {self.kind} search its recall@10 {self.recall:.3f} ({self.search})"
        if self.best is None:
            return f"{mine} has no yardstick of at most {self.size:g} B to meet"
        best = self.best
        return (
            f"{mine} {self.verdict} {best['setting']} ({best['storage']}, {best['search']}: "
            f"{float(best['recall_at_10']):.3f}, {self.margin:+.3f})"
        )


def standings(run: Mapping, baselines: pd.DataFrame | None) -> list[Standing]:
    """For each kind of search the run was measured by, its best recall against the best baseline of that
    kind at no more bytes than the run's codes are stored at (`yardsticks.best_at_most`)."""
    size, form = stored_bytes(run)
    found = []
    for kind, searches in KINDS_OF_SEARCH.items():
        recalls = {s: run.get(f"recall_at_10_{s}") for s in searches}
        recalls = {s: float(r) for s, r in recalls.items() if r is not None and pd.notna(r)}
        if not recalls or np.isnan(size):
            continue
        search = max(recalls, key=recalls.get)
        best = best_at_most(baselines, size, searches) if baselines is not None else None
        found.append(Standing(kind, search, recalls[search], size, form, best))
    return found


def frontier_points(baselines: pd.DataFrame | None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The yardsticks' frontier rows and the runs' points (`run_points`) in one table, `kind` telling them apart."""
    parts = []
    if baselines is not None and len(baselines):
        parts.append(baselines.assign(kind="baseline")[POINT_COLUMNS])
    if runs is not None and len(runs):
        parts.append(runs[POINT_COLUMNS])
    if not parts:
        return pd.DataFrame(columns=[*POINT_COLUMNS, "pareto"])
    points = pd.concat(parts, ignore_index=True)
    return points.assign(pareto=pareto_mask(points))


def pareto_mask(points: pd.DataFrame) -> np.ndarray:
    """True where a one-stage point is on the Pareto front: no point of no more bytes has a higher recall."""
    mask = np.zeros(len(points), dtype=bool)
    one_stage = np.flatnonzero((points["second_stage_bytes"].fillna(0) == 0).to_numpy())
    order = one_stage[
        np.lexsort((-points["recall_at_10"].to_numpy()[one_stage], points["bytes"].to_numpy()[one_stage]))
    ]
    best = -np.inf
    for place in order:
        recall = points["recall_at_10"].iloc[place]
        if recall > best:
            mask[place], best = True, recall
    return mask


def time_run_searches(folder: Path, bench: Bench) -> dict:
    """ms per query of a run's own top-K searches (Hamming, Jaccard, asymmetric) on the bench's queries."""
    from sparsebin.metrics import model_decoding  # torch: only where a run's model is timed

    config = runfolder.load_config(folder)
    codes = runfolder.load_codes(folder, mmap=False)
    if len(codes) != len(bench.vectors):
        raise DataError(f"run {folder.name} coded {len(codes)} rows, this data set has {len(bench.vectors)}.")
    index = CodeIndex(codes, config.n_bits)
    times = {}
    for metric in ("hamming", "jaccard"):
        index.search(codes[bench.queries[:1]], K, metric)  # loads (or compiles) the kernel outside the timing
        start = time.perf_counter()
        index.search(codes[bench.queries], K, metric, exclude=bench.queries)
        times[f"ms_per_query_{metric}"] = 1000 * (time.perf_counter() - start) / len(bench.queries)
    decoding = model_decoding(runfolder.load_model(folder))
    start = time.perf_counter()
    index.search_asymmetric(bench.vectors[bench.queries], decoding, K, exclude=bench.queries)
    times["ms_per_query_asymmetric"] = 1000 * (time.perf_counter() - start) / len(bench.queries)
    return times


def run_setup(folder: Path, budgets=None) -> Setup:
    """The measurement setup a run was scored with: its split seed, validation share and query count."""
    config = runfolder.load_config(folder)
    _, part = runfolder.evaluated_part(runfolder.load_metrics(folder))
    changes = {} if budgets is None else {"budgets": tuple(budgets)}
    return Setup(config.split_seed, config.val_fraction, int(part.get("n_queries") or 500), **changes)


def in_order(points: pd.DataFrame) -> pd.DataFrame:
    """The points by bytes, one-stage codes first, then by recall, highest first: how tables list them."""
    return points.sort_values(["bytes", "second_stage_bytes", "recall_at_10"], ascending=[True, True, False])


def frontier_table(points: pd.DataFrame) -> str:
    """The points as a markdown table, by bytes then recall: what the README and the closing note show."""
    lines = [
        "| code | search | bytes / vector | recall@10 | ms / query | Pareto |",
        "|---|---|---|---|---|---|",
    ]
    for _, point in in_order(points).iterrows():
        speed = "-" if pd.isna(point["ms_per_query"]) else f"{point['ms_per_query']:.2f}"
        lines.append(
            f"| {point['setting']} | {point['search']} | {point['storage']} | {point['recall_at_10']:.3f} | {speed} "
            f"| {'yes' if point.get('pareto') else ''} |"
        )
    return "\n".join(lines)


def write_frontier(points: pd.DataFrame, figure, out: Path) -> tuple[dict[str, Path], str | None]:
    """frontier.csv, frontier.md, frontier.html and, when kaleido is installed, frontier.png under `out`,
    each written whole. Returns the paths and a note when the PNG could not be drawn."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "frontier.csv", "markdown": out / "frontier.md", "html": out / "frontier.html"}
    write_atomic(paths["csv"], points.to_csv(index=False).encode())
    write_atomic(paths["markdown"], (frontier_table(points) + "\n").encode())
    write_atomic(paths["html"], figure.to_html(include_plotlyjs=True, full_html=True).encode())
    try:
        import kaleido  # noqa: F401  (plotly draws PNG through it)
    except ImportError:
        return paths, "no PNG: plotly needs the kaleido package to draw one (not installed); the HTML holds the chart"
    paths["png"] = out / "frontier.png"
    write_atomic(paths["png"], figure.to_image(format="png", width=1100, height=650))
    return paths, None


def measured_like(runs: pd.DataFrame, setup: Setup, run_folder) -> pd.DataFrame:
    """The runs (a runs table) measured with `setup`'s split and query count, which one frontier can draw;
    `run_folder` maps a run id to its folder, and a run whose folder cannot be read is left out."""
    keep = []
    for run_id in runs["run_id"]:
        try:
            keep.append(run_setup(run_folder(run_id)) == setup)
        except (DataError, RunFileError):
            keep.append(False)
    return runs[np.array(keep, dtype=bool)]


def run_yardsticks(folder: Path, dataset):
    """The cached yardsticks measured with the run's split and queries (`Yardsticks`, the newest at any byte
    budgets), None when not measured (or measured on other embeddings); never measures."""
    from sparsebin.search.yardsticks import measured_alike

    return measured_alike(dataset, run_setup(folder))
