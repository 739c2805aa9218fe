"""A run's interpretability figures (METHOD.md, "Interpretability"): coherence, sparse probing, label quality.

`interpretability(codes, n_bits, concepts, train_rows, validation_rows)` reads
the packed codes of every row (a run folder's codes.npy) and the data set's
concept table. Over all rows, of the bits firing for at least MIN_ACTIVE (5)
concepts (`n_bits_judged`):
- `coherent_share`: the share whose best category (the `category` column,
  `best_labels`) is enriched beyond chance: one-sided hypergeometric p-value,
  Bonferroni over categories, Benjamini-Hochberg q < SIGNIFICANT (0.05)
  across every live bit. These are question 6's numbers, computed by the same
  functions as the bit table (`label_members`, `judge_labels`);
- `coherence_median`: their median chance-corrected coherence (about 0 at random);
- `root_labelled_share`: the share whose label, the node matching the bit's
  concepts best by F1 (`best_ancestors`), is top-level: a root or the head of
  a category (`Ancestors.levels`).
And sparse probing, on the split's rows: for each probe category, the one bit
whose firing best predicts membership by F1 on training rows, and that bit's
F1 on held-out rows; `probe_f1` is the mean over categories, and
`probe_f1_chance` what random sets of the chosen bits' held-out sizes score.

`dense_probe(embeddings, concepts, train_rows, validation_rows)` is the same
probe for a dense embedding: the best single dimension with its best threshold
on training rows. A binary baseline (sign bits) is judged, probe included, by
`interpretability` on its own packed codes.

Choices (METHOD.md leaves them open):
- Probe categories. The top level is the `category` column (one per concept).
  The level below is the concepts under each node of `LEVEL_BELOW`, a child of
  a category's head in that category (an HPO branch's children, an ICD-10-CM
  chapter's blocks), found through the `parents` links; a concept under two
  such nodes is a member of both. A category is probed when it holds at least
  MIN_CONCEPTS (20) concepts over all rows but not every row, and has members
  among both the training and the held-out rows; "(no category)" is none.
- F1 of a bit for a category on some rows: 2 TP / (rows where it fires +
  members), TP the members where it fires. The chosen bit has the highest
  training F1, ties to the lower bit. A bit that fires on no training row
  scores 0 there. When no bit fires for any training member, no bit is chosen
  and the probe predicts no concept: held-out F1 0.
- `probe_f1_chance`: a random set of n of the M held-out rows holds on average
  n m / M of a category's m held-out members, so it scores 2 n m / (M (n + m));
  the mean of that over categories, n the chosen bit's held-out firing count.
- Dense: a dimension predicts membership at or above a threshold, or at or
  below it (an embedding axis's sign means nothing, a bit's firing does);
  thresholds are training members' values, which is where F1 can peak. Ties:
  the lower dimension, then "above". The rows are read as given: pass them as
  the model saw them (normalised, when it normalises).
- Memory: the codes are read a block of bits at a time (whole bytes, at most
  BLOCK_BITS bits and about PAIR_BUDGET (bit, concept) pairs), each block an
  inverted index (`codes_by_bit`); the products are (block x categories) and
  (block x nodes) sparse, so nothing forms an (M, N) array. The dense probe
  reads DIMENSIONS_PER_READ dimensions of the training rows at a time.
- A data set without ontology labels (imported vectors: no categories, no
  parents) gives None figures and a `reason`, not an error.
"""

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sparsebin.files import CHUNK_ROWS
from sparsebin.health import RARE_BELOW
from sparsebin.interpret.ontology import (
    LEVEL_BELOW,
    NO_CATEGORY,
    SIGNIFICANT,
    TOP_LEVEL,
    Ancestors,
    Categories,
    ancestor_index,
    category_index,
    judge_labels,
    label_members,
)
from sparsebin.search.codes import bytes_per_vector, codes_by_bit

MIN_ACTIVE = RARE_BELOW  # bits firing for fewer concepts are rare and not judged: a few concepts always look coherent
MIN_CONCEPTS = 20  # a category is probed when it holds at least this many concepts over all rows
BLOCK_BITS = 1024  # bits read per block at most
PAIR_BUDGET = 1 << 22  # (bit, concept) pairs per block at most (one byte of bits at least), bounding its products
DIMENSIONS_PER_READ = 64  # dense probe: dimensions of the training rows held at a time


@dataclass(frozen=True)
class ProbeTargets:
    """The categories sparse probing predicts (module docstring)."""

    names: np.ndarray  # (K,) category or node name
    ids: np.ndarray  # (K,) the node's id at the level below; None at the top level
    levels: np.ndarray  # (K,) TOP_LEVEL or LEVEL_BELOW
    membership: sp.csr_matrix  # (M, K) float32, 1 where the concept belongs to the category
    sizes: np.ndarray  # (K,) concepts over all rows


# Results holding tables compare by identity (eq=False): equality of data frames has no single truth value.
@dataclass(frozen=True, eq=False)
class Probe:
    """Sparse probing: one feature (bit or dimension) per category, chosen on training rows, scored on held-out."""

    probe_f1: float | None  # mean held-out F1 over the probed categories; None with a reason
    probe_f1_chance: float | None  # mean held-out F1 of random sets of the chosen features' held-out sizes
    probe_categories: int  # categories probed
    probes: pd.DataFrame  # one row per category: category, id, level, concepts, the feature, train_f1, heldout_f1, ...
    reason: str | None  # why probe_f1 is None

    def metrics(self, prefix: str = "") -> dict:
        """The figures, JSON-ready, each name after `prefix` ("dense_" for the dense embedding's)."""
        figures = {"probe_f1": self.probe_f1, "probe_f1_chance": self.probe_f1_chance}
        return {f"{prefix}{name}": value for name, value in figures.items()} | {
            f"{prefix}probe_categories": self.probe_categories
        }


@dataclass(frozen=True, eq=False)
class Interpretability:
    """`interpretability`: a run's figures over all rows (the probe on the split's), and the tables behind them."""

    coherent_share: float | None  # of the judged bits, the share enriched in one category (q < SIGNIFICANT)
    coherence_median: float | None  # the judged bits' median chance-corrected coherence
    n_bits_judged: int  # bits firing for MIN_ACTIVE or more concepts
    root_labelled_share: float | None  # of the judged bits, the share labelled by a root or a category's head
    probe: Probe
    labels: pd.DataFrame  # one row per bit: bit, `label_members`' and `judge_labels`' columns
    reason: str | None  # why a figure is None, a clause per cause; None when every figure is there

    def metrics(self) -> dict:
        """The figures, JSON-ready, for metrics.json (the tables are not in it)."""
        return {
            "coherent_share": self.coherent_share,
            "coherence_median": self.coherence_median,
            "n_bits_judged": self.n_bits_judged,
            "root_labelled_share": self.root_labelled_share,
            **self.probe.metrics(),
            "interpretability_note": self.reason,
        }


def ontology_indexes(concepts: pd.DataFrame) -> tuple[Categories, Ancestors]:
    """The concept table's category and ancestor indexes, which `interpretability` and `dense_probe` read;
    a caller scoring one data set twice builds them once and passes them to both."""
    concepts = concepts.reset_index(drop=True)
    return category_index(concepts), ancestor_index(concepts)


def interpretability(
    codes: np.ndarray,
    n_bits: int,
    concepts: pd.DataFrame,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    indexes: tuple[Categories, Ancestors] | None = None,
) -> Interpretability:
    """Coherence, label quality and sparse probing of packed codes (M, ceil(N / 8)) over the concept table's M rows.

    `train_rows` and `validation_rows` are the run's split (`runfolder.load_split_rows`, or a TrainResult's
    `split.train` and `split.validation`); only the probe reads them. `indexes` are the table's
    `ontology_indexes`, built here when not given.
    """
    concepts = concepts.reset_index(drop=True)
    if codes.ndim != 2 or codes.shape != (len(concepts), bytes_per_vector(n_bits)):
        raise ValueError(
            f"codes of shape {codes.shape} are not {len(concepts)} rows of {n_bits} packed bits "
            f"({bytes_per_vector(n_bits)} bytes), one per concept."
        )
    train_rows, validation_rows = split_rows(len(concepts), train_rows, validation_rows)
    categories, ancestors = indexes or ontology_indexes(concepts)
    targets = probe_targets(categories, ancestors, train_rows, validation_rows)
    masks = np.stack([row_mask(len(concepts), train_rows), row_mask(len(concepts), validation_rows)], axis=1)  # (M, 2)
    train_members, validation_members = membership_on(targets, masks[:, 0]), membership_on(targets, masks[:, 1])
    parts, chosen, first_bit = [], BitChoice.none(len(targets.names)), 0
    for members in bit_blocks(codes, n_bits):
        parts.append(label_members(members, categories, ancestors))
        chosen = chosen.better(probe_block(members, first_bit, masks, train_members, validation_members))
        first_bit += members.shape[0]
    labels = judge_labels(pd.concat(parts, ignore_index=True), categories)
    labels.insert(0, "bit", np.arange(n_bits))
    judged = labels[labels["n_active"] >= MIN_ACTIVE]
    reasons = []
    if len(categories.names) < 2:
        reasons.append("every concept is in one category, so no bit can be enriched in one")
    if not ancestors.has_links:
        reasons.append("no concept has a parent, so no node lies above another")
    if not len(judged):
        reasons.append(f"no bit fires for {MIN_ACTIVE} concepts or more")
    coherent = len(judged) > 0 and len(categories.names) >= 2
    probe = bit_probe(targets, chosen, validation_members, len(validation_rows))
    if probe.reason:
        reasons.append(probe.reason)
    return Interpretability(
        coherent_share=float((judged["q_value"] < SIGNIFICANT).mean()) if coherent else None,
        coherence_median=float(judged["corrected_coherence"].median()) if coherent else None,
        n_bits_judged=len(judged),
        root_labelled_share=(
            float((judged["ancestor_level"] == TOP_LEVEL).mean()) if len(judged) and ancestors.has_links else None
        ),
        probe=probe,
        labels=labels,
        reason=sentence(reasons),
    )


def sentence(clauses: list[str]) -> str | None:
    """Clauses as one sentence ("A; b."), None for none."""
    text = "; ".join(clauses)
    return text[:1].upper() + text[1:] + "." if text else None


def split_rows(n_rows: int, train_rows: np.ndarray, validation_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The split's row indices as int64 arrays, refused with a sentence when one lies outside the table."""
    rows = []
    for name, part in (("training", train_rows), ("held-out", validation_rows)):
        part = np.asarray(part, dtype=np.int64).ravel()
        if len(part) and (part.min() < 0 or part.max() >= n_rows):
            raise ValueError(f"a {name} row lies outside the {n_rows} rows of the concept table.")
        rows.append(part)
    return rows[0], rows[1]


def probe_targets(
    categories: Categories, ancestors: Ancestors, train_rows: np.ndarray, validation_rows: np.ndarray
) -> ProbeTargets:
    """The top-level categories and the level-below nodes worth probing (module docstring)."""
    n_rows = categories.onehot.shape[0]
    top = np.flatnonzero(categories.names != NO_CATEGORY)
    below = np.flatnonzero(ancestors.levels[:n_rows] == LEVEL_BELOW)  # nodes of the table only: ids outside have none
    membership = sp.hstack([categories.onehot[:, top], ancestors.incidence[:, below]], format="csr")
    sizes = np.concatenate([categories.sizes[top], ancestors.sizes[below]])
    in_train = np.asarray(membership[train_rows].sum(axis=0)).ravel()
    in_validation = np.asarray(membership[validation_rows].sum(axis=0)).ravel()
    keep = np.flatnonzero((sizes >= MIN_CONCEPTS) & (sizes < n_rows) & (in_train > 0) & (in_validation > 0))
    return ProbeTargets(
        names=np.concatenate([categories.names[top], ancestors.names[below]]).astype(object)[keep],
        ids=np.concatenate([np.full(len(top), None, dtype=object), ancestors.ids[below]])[keep],
        levels=np.concatenate([np.full(len(top), TOP_LEVEL), np.full(len(below), LEVEL_BELOW)])[keep],
        membership=sp.csr_matrix(membership[:, keep]),
        sizes=sizes[keep],
    )


def row_mask(n_rows: int, rows: np.ndarray) -> np.ndarray:
    """(M,) float32, 1 at `rows`: a product with it counts those rows only."""
    mask = np.zeros(n_rows, dtype=np.float32)
    mask[rows] = 1
    return mask


def membership_on(targets: ProbeTargets, mask: np.ndarray) -> sp.csr_matrix:
    """(M, K) the membership of the rows of `mask` (`row_mask`) only, every other row zero."""
    return sp.csr_matrix(sp.diags(mask) @ targets.membership)


def bit_blocks(codes: np.ndarray, n_bits: int) -> Iterator[sp.csr_matrix]:
    """The codes' inverted index a block of bits at a time: (B, M) float32 CSR, the bits in order (module docstring)."""
    pairs = np.zeros(codes.shape[1], dtype=np.int64)  # (bytes,) active bits per byte column
    for start in range(0, len(codes), CHUNK_ROWS):
        pairs += np.bitwise_count(np.asarray(codes[start : start + CHUNK_ROWS])).sum(axis=0, dtype=np.int64)
    start = 0
    while start < codes.shape[1]:
        stop, held = start + 1, pairs[start]
        while stop < codes.shape[1] and (stop + 1 - start) * 8 <= BLOCK_BITS and held + pairs[stop] <= PAIR_BUDGET:
            held += pairs[stop]
            stop += 1
        width = min(stop * 8, n_bits) - start * 8
        yield codes_by_bit(np.ascontiguousarray(codes[:, start:stop]), width)
        start = stop


@dataclass(frozen=True)
class Choice:
    """Per probe category, the best feature so far by training F1."""

    train_f1: np.ndarray  # (K,)

    def better(self, other: "Choice") -> "Choice":
        """Each category's better choice of the two, every field; a tie keeps this one (features come in order)."""
        take = other.train_f1 > self.train_f1
        return type(self)(
            *(np.where(take, getattr(other, item.name), getattr(self, item.name)) for item in fields(self))
        )


@dataclass(frozen=True)
class BitChoice(Choice):
    """The best bit so far (train_f1 0 where no bit fires for a training member), with its held-out firing."""

    bit: np.ndarray  # (K,) -1 where none is chosen
    heldout_hits: np.ndarray  # (K,) held-out members where the chosen bit fires
    heldout_fires: np.ndarray  # (K,) held-out rows where it fires

    @classmethod
    def none(cls, n_targets: int) -> "BitChoice":
        return cls(np.zeros(n_targets), np.full(n_targets, -1), np.zeros(n_targets), np.zeros(n_targets))


def probe_block(
    members: sp.csr_matrix,
    first_bit: int,
    masks: np.ndarray,
    train_members: sp.csr_matrix,
    validation_members: sp.csr_matrix,
) -> BitChoice:
    """The best bit of one block (B, M) for each category of `train_members` (M, K), by training F1;
    `masks` (M, 2) marks the training and the held-out rows."""
    fires = members @ masks  # (B, 2) training and held-out rows where each bit fires
    hits = (members @ train_members).toarray()  # (B, K) training members where each bit fires
    category_size = np.asarray(train_members.sum(axis=0)).ravel()  # (K,) at least 1 (`probe_targets`)
    f1 = 2 * hits / (fires[:, :1] + category_size)
    best = np.argmax(f1, axis=0)  # (K,) ties to the lower bit; a block holds one bit at least
    columns = np.arange(f1.shape[1])
    heldout_hits = (members @ validation_members).toarray()[best, columns]
    train_f1 = f1[best, columns]
    return BitChoice(train_f1, np.where(train_f1 > 0, first_bit + best, -1), heldout_hits, fires[best, 1])


def bit_probe(targets: ProbeTargets, chosen: BitChoice, validation_members: sp.csr_matrix, n_heldout: int) -> Probe:
    """The probe's table and figures from each category's chosen bit; a bit is predicted by its firing.

    A category none of whose training members any bit fires for keeps `BitChoice.none`: no bit (<NA>), and
    held-out counts of 0, the probe predicting no concept."""
    feature = {"bit": pd.array(np.where(chosen.bit < 0, None, chosen.bit), dtype="Int64")}
    hits, fires = chosen.heldout_hits, chosen.heldout_fires
    return probe_result(targets, feature, chosen.train_f1, hits, fires, validation_members, n_heldout)


def probe_result(
    targets: ProbeTargets,
    feature: dict,
    train_f1: np.ndarray,
    heldout_hits: np.ndarray,
    heldout_fires: np.ndarray,
    validation_members: sp.csr_matrix,
    n_heldout: int,
) -> Probe:
    """The per-category table (the chosen feature's columns, F1 on both parts, chance) and its means."""
    members = np.asarray(validation_members.sum(axis=0)).ravel()  # (K,) at least 1 (`probe_targets`)
    table = pd.DataFrame(
        {
            "category": targets.names,
            "id": targets.ids,
            "level": targets.levels,
            "concepts": targets.sizes,
            **feature,
            "train_f1": train_f1,
            "heldout_f1": 2 * heldout_hits / (heldout_fires + members),
            "chance_f1": 2 * heldout_fires * members / max(n_heldout, 1) / (heldout_fires + members),
        }
    )
    if not len(table):
        reason = (
            "no held-out rows to probe on"
            if n_heldout == 0
            else f"no category holds {MIN_CONCEPTS} concepts or more (short of every row) on both sides of the split"
        )
        return Probe(None, None, 0, table, reason)
    return Probe(float(table["heldout_f1"].mean()), float(table["chance_f1"].mean()), len(table), table, None)


def dense_probe(
    embeddings: np.ndarray,
    concepts: pd.DataFrame,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    indexes: tuple[Categories, Ancestors] | None = None,
) -> Probe:
    """Sparse probing of a dense embedding (M, D): per category the one dimension and threshold, above or below,
    with the best training F1, scored on held-out rows (module docstring); `indexes` as for `interpretability`."""
    concepts = concepts.reset_index(drop=True)
    if embeddings.ndim != 2 or len(embeddings) != len(concepts):
        raise ValueError(f"embeddings of shape {embeddings.shape} are not one row per concept of {len(concepts)}.")
    train_rows, validation_rows = split_rows(len(concepts), train_rows, validation_rows)
    targets = probe_targets(*(indexes or ontology_indexes(concepts)), train_rows, validation_rows)
    validation_members = membership_on(targets, row_mask(len(concepts), validation_rows))
    choice = DimensionChoice.none(len(targets.names))
    if len(targets.names):
        train_members = sp.csr_matrix(targets.membership[train_rows])  # (Mt, K) in training-row order
        for start in range(0, embeddings.shape[1], DIMENSIONS_PER_READ):
            block = np.asarray(embeddings[train_rows, start : start + DIMENSIONS_PER_READ], dtype=np.float32)
            for offset in range(block.shape[1]):
                choice = choice.better(best_thresholds(block[:, offset], start + offset, train_members))
    hits, fired = np.zeros(len(targets.names)), np.zeros(len(targets.names), dtype=np.int64)
    for start in range(0, len(validation_rows), CHUNK_ROWS):  # held-out rows a chunk at a time: (C, K) at most
        rows = validation_rows[start : start + CHUNK_ROWS]
        values = np.asarray(embeddings[rows], dtype=np.float32)[:, choice.dimension]  # (C, K)
        predicted = np.where(choice.above, values >= choice.threshold, values <= choice.threshold)
        hits += np.asarray(targets.membership[rows].multiply(predicted).sum(axis=0)).ravel()
        fired += predicted.sum(axis=0)
    feature = {
        "dimension": choice.dimension,
        "threshold": choice.threshold,
        "direction": np.where(choice.above, "above", "below"),
    }
    return probe_result(targets, feature, choice.train_f1, hits, fired, validation_members, len(validation_rows))


@dataclass(frozen=True)
class DimensionChoice(Choice):
    """The best dimension and threshold so far."""

    dimension: np.ndarray  # (K,)
    threshold: np.ndarray  # (K,) float32
    above: np.ndarray  # (K,) bool: a member is predicted at or above the threshold, else at or below

    @classmethod
    def none(cls, n_targets: int) -> "DimensionChoice":
        zeros = np.zeros(n_targets)
        return cls(zeros, zeros.astype(np.int64), zeros.astype(np.float32), np.ones(n_targets, dtype=bool))


def best_thresholds(values: np.ndarray, dimension: int, members: sp.csr_matrix) -> DimensionChoice:
    """For one dimension's training values (Mt,), each category's best threshold by F1, above or below.

    Thresholds sit at the members' values. In the rows sorted by value, column k
    of the re-ordered membership lists its members' ranks in order, so the
    members at or above the p-th of them number m - p, and the rows at or above
    its value are those from the first row of its value on (ties taken whole).
    """
    order = np.argsort(values)
    ranked = values[order]  # (Mt,) ascending
    by_rank = sp.csr_matrix(members[order]).tocsc()  # (Mt, K); column k: its members' ranks, ascending
    by_rank.sort_indices()
    sizes = np.diff(by_rank.indptr)  # (K,) training members, at least 1 (`probe_targets`)
    category = np.repeat(np.arange(len(sizes)), sizes)  # (nnz,)
    position = np.arange(by_rank.nnz) - by_rank.indptr[category]  # 0-based among the category's members
    ranks = np.arange(len(ranked))
    new_value = np.r_[True, ranked[1:] != ranked[:-1]]  # (Mt,) where a run of equal values starts
    first_of_value = np.maximum.accumulate(np.where(new_value, ranks, 0))
    last_of_value = np.minimum.accumulate(np.where(np.r_[new_value[1:], True], ranks, len(ranked))[::-1])[::-1]
    size, rank = sizes[category], by_rank.indices
    above = 2 * (size - position) / (size + len(ranked) - first_of_value[rank])
    below = 2 * (position + 1) / (size + last_of_value[rank] + 1)
    member_values = ranked[rank]
    best = DimensionChoice.none(len(sizes))
    for f1, is_above in ((above, True), (below, False)):
        peak = np.maximum.reduceat(f1, by_rank.indptr[:-1])  # (K,)
        at_peak = np.flatnonzero(f1 == peak[category])
        first = at_peak[np.unique(category[at_peak], return_index=True)[1]]  # (K,) the lowest threshold at the peak
        found = DimensionChoice(
            peak, np.full(len(sizes), dimension), member_values[first], np.full(len(sizes), is_above)
        )
        best = best.better(found)
    return best
