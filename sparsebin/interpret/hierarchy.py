"""Do a concept's bits extend its parent's? Every parent-child link of the ontology against chance.

For each link of the concept table (a child row and one of its parents, both
rows in the data set), with bits(x) the set of active bits of x's code:

    kept(p, c) = |bits(p) & bits(c)| / |bits(p)|    share of the parent's bits the child keeps
    more(p, c) = 1[|bits(c)| > |bits(p)|]            the child fires more bits than its parent

A link whose parent fires no bit has no kept share and is left out of that
figure (`Contrast.links` counts the links a figure is over).

Chance: for every link, `draws` random pairs (seeded) of a concept of the
parent's source and depth and a concept of the child's source and depth, the
same two functions on them, averaged per link. A code that ignores the
ontology scores the same on links as on these pairs; one whose child codes
extend their parent's keeps far more than chance. Matching the depths matters:
a parent one level up fires a different number of bits on average, and the
share kept depends on it.

Each figure is summarised per source (the child's terminology) as the mean
over links, real and chance, their difference and ratio, and a 95 % paired
bootstrap interval of the difference (links resampled with replacement,
seeded). Links of one branch share ancestors, so links are not independent
and the interval is optimistic.

Everything reads packed codes (M, N/8) in chunks of links: no (M, N) bit
matrix and no M x M matrix. `code_hierarchy` scores any packed code (a run's,
the sign baseline's); `run_hierarchy` a run's codes and its sign baseline,
cached in the run folder as `hierarchy.json` (written atomically, recomputed
when the concept table, the codes or this measure change).
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin.errors import DataError, RunFileError
from sparsebin.files import CHUNK_ROWS
from sparsebin.metrics import RowView, principal_axes, sign_codes
from sparsebin.runfolder import load_codes, load_config, load_split_rows, save_json
from sparsebin.search.codes import active_counts

HIERARCHY_FILE = "hierarchy.json"
VERSION = 1  # bump when a figure's definition changes, so cached files are recomputed
DRAWS = 4  # random pairs per link: on HPO's ~22k links the chance means then move by < 0.002 between seeds
RESAMPLES = 1000  # bootstrap resamples of the links for the 95 % interval
LEVEL = 0.95


@dataclass(frozen=True)
class Links:
    """The ontology's parent-child links as row numbers of the concept table (both rows present)."""

    parent: np.ndarray  # (L,) int64 parent rows
    child: np.ndarray  # (L,) int64 child rows
    missing: int  # links named in `parents` whose parent id is not a row of the table


@dataclass(frozen=True)
class Contrast:
    """One figure over the links against its chance level: means, their difference and its interval."""

    real: float  # mean over the links
    chance: float  # mean over the links' random stand-ins at the same depths
    difference: float  # real - chance
    low: float  # 95 % paired bootstrap interval of the difference
    high: float
    links: int  # links the figure is computed over
    level: float = LEVEL  # the interval's coverage

    @property
    def ratio(self) -> float:
        """real / chance; NaN when chance is 0."""
        return self.real / self.chance if self.chance > 0 else math.nan

    @property
    def beyond_chance(self) -> bool:
        """The interval of the difference lies above zero."""
        return self.low > 0


@dataclass(frozen=True)
class HierarchySummary:
    """`code_hierarchy` for the links of one source (the child's terminology)."""

    source: str
    links: int  # links of this source with both concepts in the data set
    kept: Contrast  # share of the parent's bits the child keeps (links whose parent fires a bit)
    more: Contrast  # share of links whose child fires more bits than its parent
    same: float  # share of links whose child fires exactly as many bits as its parent


@dataclass(frozen=True)
class RunHierarchy:
    """`run_hierarchy`: a run's codes and its sign baseline on the same links, one summary per source."""

    codes: tuple[HierarchySummary, ...]
    sign: tuple[HierarchySummary, ...] | None  # None when not asked for
    sign_bits: int  # bits of the sign baseline (one per dimension), 0 without it


def ontology_links(concepts: pd.DataFrame) -> Links:
    """Every (parent, child) link of the `parents` column whose two ids are rows of the table, in table order."""
    if "parents" not in concepts:
        raise DataError("the concept table has no parents column, so it has no hierarchy to test.")
    row_of = {concept_id: row for row, concept_id in enumerate(concepts["id"].astype(str))}
    parents, children, missing = [], [], 0
    for child, named in enumerate(concepts["parents"]):
        for parent_id in [] if named is None else list(named):
            parent = row_of.get(str(parent_id))
            if parent is None:
                missing += 1
            elif parent != child:
                parents.append(parent)
                children.append(child)
    return Links(np.asarray(parents, np.int64), np.asarray(children, np.int64), missing)


def code_hierarchy(
    packed: np.ndarray,
    concepts: pd.DataFrame,
    *,
    draws: int = DRAWS,
    seed: int = 0,
    resamples: int = RESAMPLES,
    links: Links | None = None,
) -> tuple[HierarchySummary, ...]:
    """Kept share and "child fires more" over every link, against random pairs at the same depths, per source.

    `packed` is (M, N/8) uint8 with one row per concept-table row (any binary
    code: a run's, the sign baseline's); the random pairs and the bootstrap
    are seeded by `seed`. A source without links is left out.
    """
    if len(packed) != len(concepts):
        raise DataError(f"the codes have {len(packed)} rows but the concept table {len(concepts)}.")
    links = ontology_links(concepts) if links is None else links
    rng = np.random.default_rng(seed)
    sizes = active_counts(packed)  # (M,)
    sources = concepts["source"].astype(str).to_numpy() if "source" in concepts else np.full(len(concepts), "")
    depths = concepts["depth"].fillna(-1).astype(np.int64).to_numpy() if "depth" in concepts else np.zeros(len(packed))
    real_kept, real_more = _link_figures(packed, sizes, links.parent, links.child)
    chance_parent = _same_depth(links.parent, sources, depths, draws, rng)  # (L, draws)
    chance_child = _same_depth(links.child, sources, depths, draws, rng)
    clash = chance_parent == chance_child  # a concept paired with itself keeps all its bits: take its neighbour
    chance_child[clash] = _next_in_group(chance_child[clash], sources, depths)
    kept, more = _link_figures(packed, sizes, chance_parent.ravel(), chance_child.ravel())
    with np.errstate(invalid="ignore"):
        chance_kept = np.nanmean(kept.reshape(-1, draws), axis=1) if len(links.parent) else np.zeros(0)
    chance_more = more.reshape(-1, draws).mean(axis=1) if len(links.parent) else np.zeros(0)
    same = sizes[links.child] == sizes[links.parent]
    summaries = []
    for source in sorted(set(sources[links.child])):
        mine = sources[links.child] == source
        summaries.append(
            HierarchySummary(
                source=source,
                links=int(mine.sum()),
                kept=_contrast(real_kept[mine], chance_kept[mine], resamples, rng),
                more=_contrast(real_more[mine].astype(float), chance_more[mine], resamples, rng),
                same=float(same[mine].mean()),
            )
        )
    return tuple(summaries)


def _link_figures(packed: np.ndarray, sizes: np.ndarray, parent: np.ndarray, child: np.ndarray):
    """(kept share, child fires more) per pair of rows; kept is NaN where the parent fires no bit."""
    shared = np.zeros(len(parent), np.int64)
    for start in range(0, len(parent), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        both = np.asarray(packed[parent[rows]]) & np.asarray(packed[child[rows]])  # (chunk, N/8)
        shared[rows] = np.bitwise_count(both).sum(axis=1, dtype=np.int64)
    parent_sizes = sizes[parent]
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = np.where(parent_sizes > 0, shared / np.maximum(parent_sizes, 1), np.nan)
    return kept, sizes[child] > parent_sizes


def _groups(sources: np.ndarray, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group of each row, rows ordered by group, start of each group in that order plus the end)."""
    keys = pd.MultiIndex.from_arrays([sources, depths])
    group, _ = pd.factorize(keys)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(group.max() + 2 if len(group) else 1))
    return group, order, starts


def _same_depth(rows: np.ndarray, sources, depths, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(len(rows), draws) random rows of the same source and depth as each of `rows`."""
    group, order, starts = _groups(sources, depths)
    mine = group[rows]
    size = (starts[mine + 1] - starts[mine])[:, None]  # (L, 1), at least 1: the row itself
    offset = (rng.random((len(rows), draws)) * size).astype(np.int64)
    return order[starts[mine][:, None] + np.minimum(offset, size - 1)]


def _next_in_group(rows: np.ndarray, sources, depths) -> np.ndarray:
    """Each row's successor within its source and depth (cyclic; a group of one gives the row back)."""
    group, order, starts = _groups(sources, depths)
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    mine = group[rows]
    begin, size = starts[mine], starts[mine + 1] - starts[mine]
    return order[begin + (place[rows] - begin + 1) % size]


def _contrast(real: np.ndarray, chance: np.ndarray, resamples: int, rng: np.random.Generator) -> Contrast:
    """Means over the links where both values are defined, and the paired bootstrap interval of the difference."""
    both = ~(np.isnan(real) | np.isnan(chance))
    real, chance = real[both], chance[both]
    if not len(real):
        return Contrast(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    difference = real - chance  # (L,) per link
    means = np.empty(resamples)
    block = max(1, 2**22 // len(difference))  # resamples drawn at once, bounding the index array
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        means[start : start + count] = difference[rng.integers(0, len(difference), (count, len(difference)))].mean(1)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Contrast(
        float(real.mean()), float(chance.mean()), float(difference.mean()), float(low), float(high), len(real)
    )


# -- a run: its codes and its sign baseline, cached in the run folder -----------------------------------


def run_hierarchy(
    folder: Path, concepts: pd.DataFrame, embeddings: np.ndarray | None = None, *, cache: bool = True
) -> RunHierarchy:
    """`code_hierarchy` of a finished run's codes and, given the data set's `embeddings`, of its sign baseline.

    The sign baseline is the run's own (`sparsebin.metrics.sign_codes`): rows
    normalised as the run trained, PCA fitted on the run's training part, one
    bit per dimension. Results are kept in the run folder's hierarchy.json
    (atomically written) and read back while the concept table, the codes and
    this measure are unchanged; a folder that cannot be written is only read.
    """
    folder = Path(folder)
    codes = load_codes(folder)
    if len(codes) != len(concepts):
        raise RunFileError(
            f"run {folder.name} has codes for {len(codes)} concepts but the concept table has {len(concepts)}; "
            "the run was trained on another dataset."
        )
    key = _fingerprint(folder, concepts)
    cached = _read_cache(folder / HIERARCHY_FILE, key) if cache else {}
    links = None
    if "codes" not in cached:
        links = ontology_links(concepts)
        cached["codes"] = [asdict(s) for s in code_hierarchy(codes, concepts, links=links)]
    if embeddings is not None and "sign" not in cached:
        links = ontology_links(concepts) if links is None else links
        sign = run_sign_codes(folder, embeddings)
        cached["sign"] = [asdict(s) for s in code_hierarchy(sign, concepts, links=links)]
        cached["sign_bits"] = int(embeddings.shape[1])
    if cache and links is not None:
        try:
            save_json(folder / HIERARCHY_FILE, {"key": key, **cached})
        except OSError:
            pass  # a read-only run folder: the figures are still returned, only not kept
    sign = cached.get("sign") if embeddings is not None else None
    return RunHierarchy(
        codes=_summaries(cached["codes"]),
        sign=None if sign is None else _summaries(sign),
        sign_bits=int(cached.get("sign_bits", 0)) if sign is not None else 0,
    )


def run_sign_codes(folder: Path, embeddings: np.ndarray) -> np.ndarray:
    """(M, ceil(D/8)) the run's sign baseline: rows as trained, PCA on its training part, one bit per dimension."""
    config = load_config(folder)
    vectors = RowView(embeddings, config.normalize)  # read in chunks, as measure_run's sign baseline is
    train, _ = load_split_rows(folder, len(embeddings))
    return sign_codes(vectors, axes=principal_axes(vectors.subset(train), vectors.shape[1]))


def _fingerprint(folder: Path, concepts: pd.DataFrame) -> str:
    digest = hashlib.sha256(f"v{VERSION} {DRAWS} {RESAMPLES}".encode())
    stat = (folder / "codes.npy").stat()
    digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
    columns = [concepts[name].astype(str) for name in ("id", "source", "depth") if name in concepts]
    parents = concepts["parents"].map(lambda named: ",".join(map(str, [] if named is None else list(named))))
    for column in [*columns, parents]:
        digest.update("\n".join(column.tolist()).encode())
    return digest.hexdigest()


def _read_cache(path: Path, key: str) -> dict:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict) or stored.get("key") != key:
        return {}
    return {name: stored[name] for name in ("codes", "sign", "sign_bits") if name in stored}


def _summaries(stored: list[dict]) -> tuple[HierarchySummary, ...]:
    return tuple(
        HierarchySummary(**{**s, "kept": Contrast(**s["kept"]), "more": Contrast(**s["more"])}) for s in stored
    )
