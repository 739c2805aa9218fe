"""Which concepts make a bit fire, what they share in the ontology, and what a concept's bits say.

Pure functions over one run (its codes and model) and its dataset's concept
table; no language model, the ontology is the source of meaning. Everything
heavy is computed once per run and cached on the `RunContext` (the app keeps
one context per run id), and nothing forms an (M, N) float matrix: codes are
held as a sparse inverted index (`by_bit`, one row per bit), logits are one
matrix-vector product per bit, and labels are sparse products
(see `sparsebin.interpret.ontology`).
"""

import threading
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats
import torch

from sparsebin.config import TrainConfig
from sparsebin.errors import RunFileError
from sparsebin.files import CHUNK_ROWS, release_pages
from sparsebin.interpret.ontology import (
    Ancestors,
    Categories,
    ancestor_index,
    category_index,
    enrichment_table,
    judge_labels,
    label_members,
)
from sparsebin.metrics import unit_rows
from sparsebin.model import BinaryAutoencoder
from sparsebin.runfolder import evaluation_device, load_codes, load_config, load_model
from sparsebin.search.codes import CodeIndex, active_counts, codes_by_bit, smallest_k_labelled, unpack_bits

LABEL_BLOCK_BITS = 1024  # bits labelled per sparse product, bounding its memory
HISTOGRAM_BINS = 20  # sigmoid histogram bins over [0, 1]
CONCEPT_COLUMNS = ["id", "name", "category"]


@dataclass(frozen=True)
class BitLabel:
    """What a bit means in the ontology (one row of `bit_table`): None and NaN for a dead bit."""

    label: str | None  # the best-F1 node with both shares: "Abnormal social development, 94 % of 17, 70 % of its 23"
    category: str | None  # the top-level category most enriched among the concepts where it fires
    precision: float  # share of its concepts in that category
    recall: float  # share of that category where it fires
    category_size: int  # concepts in that category, over all rows
    ancestor_id: str | None  # the node whose descendants best match its concepts by F1 (`best_ancestors`)
    ancestor_name: str | None
    ancestor_share: float  # share of its concepts under that node
    ancestor_recall: float  # share of that node's concepts where it fires
    ancestor_f1: float
    ancestor_size: int  # concepts under that node, over all rows
    ancestor_level: int  # 1 a root or a category's head, 2 the level below, 3 deeper; 0 no node
    coherence: float  # raw: precision above chance (favours small bits)
    corrected_coherence: float  # raw minus its mean for random sets of the same size (about 0 at random)
    q_value: float  # Benjamini-Hochberg across bits of the category's hypergeometric p-value


# Results holding tables compare by identity (eq=False): equality of data frames has no single truth value.
@dataclass(frozen=True, eq=False)
class BitProfile:
    """`bit_profile`: what makes one bit fire, what it means, what it writes (tables hold one row per concept)."""

    bit: int
    firing_rate: float  # share of all concepts where it fires
    n_active: int  # concepts where it fires
    label: BitLabel
    top_concepts: pd.DataFrame  # id, name, category, logit: the highest pre-activations
    quantile_concepts: pd.DataFrame  # quantile, id, name, category, logit: seeded picks per logit quantile
    sigmoid_edges: list[float]  # HISTOGRAM_BINS + 1 edges over [0, 1]
    sigmoid_counts: list[int]  # concepts per sigmoid(u) bin, over all concepts
    enrichment: pd.DataFrame  # categories among its concepts against base rates
    cofiring: pd.DataFrame  # bit, jaccard, label: bits whose firing sets overlap most
    decoder_neighbours: pd.DataFrame  # id, name, category, cosine: concepts nearest its decoder column


@dataclass(frozen=True)
class Concept:
    """One concept of the dataset's concept table."""

    id: str
    name: str
    category: str | None
    depth: int  # in the ontology; -1 when unknown
    definition: str | None  # only some datasets (HPO) define their concepts


@dataclass(frozen=True, eq=False)
class ConceptView:
    """`concept_view`: a concept's active bits and its neighbours by code and by dense embedding."""

    concept: Concept
    active_bits: pd.DataFrame  # `active_bit_table`: bit, label, corrected_coherence, q_value, firing_rate, logit
    code_neighbours: pd.DataFrame  # id, name, category, distance (the search metric)
    dense_neighbours: pd.DataFrame  # id, name, category, cosine
    overlap: float  # share of the dense neighbours that are also code neighbours


@dataclass(frozen=True, eq=False)
class DepthAnalysis:
    """`depth_analysis`: active bits per concept against ontology depth, per source."""

    per_depth: pd.DataFrame  # source, depth, mean_active, n
    spearman: dict[str, float]  # source -> Spearman's rho of depth against active bits (NaN: too few depths)
    p_value: dict[str, float]  # source -> its p-value


@dataclass
class RunContext:
    """Everything a page needs about one run; heavy pieces are computed on first use and kept."""

    run_id: str
    config: TrainConfig
    model: BinaryAutoencoder
    codes: np.ndarray  # (M, N/8) uint8 packed, memory-mapped
    concepts: pd.DataFrame  # M rows, same order as the codes
    embeddings: np.ndarray  # (M, D) float32, memory-mapped
    n_bits: int
    labels: pd.DataFrame | None = field(default=None, repr=False)  # the bit table, once built
    # One heavy build at a time: the app's warm-up thread and a page may ask for the same table at once.
    building: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, run_folder: Path, dataset) -> "RunContext":
        folder = Path(run_folder)
        model = load_model(folder, device=evaluation_device(folder))
        codes = load_codes(folder)
        concepts = dataset.concepts.reset_index(drop=True)
        if not len(codes) == len(concepts) == len(dataset.embeddings):
            raise RunFileError(
                f"run {folder.name} has codes for {len(codes)} concepts but dataset {dataset.name} has "
                f"{len(concepts)}; the run was trained on another dataset."
            )
        return cls(folder.name, load_config(folder), model, codes, concepts, dataset.embeddings, model.n_bits)

    @cached_property
    def by_bit(self) -> sp.csr_matrix:
        """(N, M) inverted index: row b lists the concepts where bit b fires."""
        return codes_by_bit(self.codes, self.n_bits)

    @cached_property
    def bit_counts(self) -> np.ndarray:
        """(N,) concepts where each bit fires."""
        return np.diff(self.by_bit.indptr)

    @cached_property
    def active_counts(self) -> np.ndarray:
        """(M,) active bits per concept."""
        return active_counts(self.codes)

    @cached_property
    def code_index(self) -> CodeIndex:
        return CodeIndex(self.codes, self.n_bits, by_bit=self.by_bit)

    @cached_property
    def categories(self) -> Categories:
        return category_index(self.concepts)

    @cached_property
    def ancestors(self) -> Ancestors:
        return ancestor_index(self.concepts)

    @cached_property
    def row_norms(self) -> np.ndarray:
        """(M,) L2 norms of the embeddings, so normalised products need no normalised copy."""
        norms = []
        for i in range(0, len(self.embeddings), CHUNK_ROWS):
            norms.append(np.linalg.norm(self.embeddings[i : i + CHUNK_ROWS], axis=1))
            release_pages(self.embeddings)
        return np.maximum(np.concatenate(norms), 1e-12).astype(np.float32)

    @cached_property
    def rows_by_id(self) -> pd.Index:
        return pd.Index(self.concepts["id"].astype(str))

    def row_of(self, concept_id: str) -> int:
        """The row of a concept id; a clear LookupError when the dataset has no such concept."""
        try:
            return int(self.rows_by_id.get_loc(str(concept_id)))
        except KeyError:
            raise LookupError(f"no concept with id {concept_id!r} in this run's dataset.") from None

    def bit_logits(self, bit: int) -> np.ndarray:
        """(M,) pre-activation u of one bit for every concept, agreeing with the stored codes.

        The inputs are normalised as evaluation normalised them before storing
        the codes (`unit_rows`, float32) and the bit's encoder row is applied in
        float32. See `agree_with_codes` for the rows at the boundary.
        """
        check_bit(self, bit)
        weight = self.model.encoder.weight[bit].detach().cpu().numpy()  # (D,)
        bias = np.float32(self.model.encoder_offset()[bit].detach().cpu())  # b_e - W_e c with a centre
        logits = np.concatenate(
            [self._inputs(slice(i, i + CHUNK_ROWS)) @ weight + bias for i in range(0, len(self.embeddings), CHUNK_ROWS)]
        )
        firing = np.zeros(len(logits), dtype=bool)
        firing[self.by_bit.indices[self.by_bit.indptr[bit] : self.by_bit.indptr[bit + 1]]] = True
        return self.agree_with_codes(logits, firing)

    @torch.no_grad()
    def concept_logits(self, row: int) -> np.ndarray:
        """(N,) pre-activations of every bit for one concept, agreeing with its stored code."""
        x = torch.from_numpy(self._inputs(slice(row, row + 1)))
        device = next(self.model.parameters()).device
        logits = self.model.encode_logits(x.to(device))[0].cpu().numpy()
        return self.agree_with_codes(logits, unpack_bits(self.codes[row : row + 1], self.n_bits)[0].astype(bool))

    def _inputs(self, rows: slice) -> np.ndarray:
        x = np.array(self.embeddings[rows], dtype=np.float32)
        release_pages(self.embeddings)
        return unit_rows(x) if self.config.normalize else x

    def agree_with_codes(self, logits: np.ndarray, firing: np.ndarray) -> np.ndarray:
        """Logits put on the stored code's side of zero where float rounding left them on the other.

        The codes came from a matrix product summed in another order (perhaps
        on another device), so where |u| is within float32 rounding of zero
        the recomputed sign can differ from the stored bit. The stored bit is
        what the run computed, so such a value is shown as the boundary on its
        side (the smallest positive float32 for a firing bit, 0 for a silent
        one) and a view never shows a bit firing beside u <= 0. A rigid TopK
        model's code is its TopK mask, not the sign, so its logits are left as
        they are.
        """
        if self.config.sparsity == "hard-topk":
            return logits
        logits = np.asarray(logits, dtype=np.float32).copy()
        tolerance = 1e-4 * max(float(np.abs(logits).max(initial=0.0)), 1.0)
        wrong_firing = firing & (logits <= 0) & (logits > -tolerance)
        wrong_silent = ~firing & (logits > 0) & (logits < tolerance)
        logits[wrong_firing] = np.float32(np.finfo(np.float32).tiny)
        logits[wrong_silent] = np.float32(0.0)
        return logits

    def cosine_to(self, vector: np.ndarray) -> np.ndarray:
        """(M,) cosine between every embedding and a D-vector."""
        products = np.empty(len(self.embeddings), dtype=np.float32)
        for i in range(0, len(self.embeddings), CHUNK_ROWS):  # a chunk at a time: a mapped file is not held whole
            products[i : i + CHUNK_ROWS] = self.embeddings[i : i + CHUNK_ROWS] @ vector
            release_pages(self.embeddings)
        return products / (self.row_norms * max(float(np.linalg.norm(vector)), 1e-12))

    def concept_rows(self, rows: np.ndarray) -> pd.DataFrame:
        return self.concepts.iloc[np.asarray(rows, dtype=np.int64)][CONCEPT_COLUMNS].reset_index(drop=True)


def check_bit(ctx: RunContext, bit: int) -> None:
    if not 0 <= int(bit) < ctx.n_bits:
        raise ValueError(f"bit must lie in 0..{ctx.n_bits - 1}, got {bit}.")


def label_bits(ctx: RunContext, bits: np.ndarray) -> pd.DataFrame:
    """Label, category enrichment, best-matching node and chance-corrected coherence for the given
    bits (one row each, in order). The q-values correct for testing every bit given: pass all bits."""
    bits = np.asarray(bits, dtype=np.int64)
    parts = [  # once even for no bits, to keep the columns
        label_members(ctx.by_bit[bits[start : start + LABEL_BLOCK_BITS]], ctx.categories, ctx.ancestors)
        for start in range(0, max(len(bits), 1), LABEL_BLOCK_BITS)
    ]
    table = judge_labels(pd.concat(parts, ignore_index=True), ctx.categories)
    table.insert(0, "bit", bits)
    table.insert(1, "firing_rate", table["n_active"] / max(len(ctx.concepts), 1))
    return table


def bit_table(ctx: RunContext) -> pd.DataFrame:
    """One row per bit, sorted by bit: firing, best category label, best-matching node, coherence.

    Cached on the context (a copy is returned, so callers may change theirs);
    dead bits have no label and NaN scores.
    """
    with ctx.building:  # a second caller waits for the first build instead of repeating it
        if ctx.labels is None:
            ctx.labels = label_bits(ctx, np.arange(ctx.n_bits))
    return ctx.labels.copy()


def rank_bits(ctx: RunContext, min_active: int = 5) -> pd.DataFrame:
    """Bits firing for at least `min_active` concepts, cleanest (highest chance-corrected coherence) first.

    The tail of the ranking holds the muddled bits. Bits firing for very few
    concepts are left out because one or two concepts always look coherent.
    """
    table = bit_table(ctx)
    ranked = table[table["n_active"] >= min_active].sort_values(
        ["corrected_coherence", "n_active", "bit"], ascending=[False, False, True], kind="stable"
    )
    return ranked.reset_index(drop=True)


def labels_for(ctx: RunContext, bits: np.ndarray) -> pd.DataFrame:
    """Labels for a few bits, read from the whole bit table (its q-values correct across all bits)."""
    return bit_table(ctx).iloc[np.asarray(bits, dtype=np.int64)].reset_index(drop=True)


def bit_profile(
    ctx: RunContext, bit: int, top: int = 20, quantiles: int = 5, per_quantile: int = 5, neighbours: int = 10
) -> BitProfile:
    """What makes one bit fire, what it means in the ontology, and what it writes.

    - top_concepts: the `top` highest pre-activation logits over all concepts
    - quantile_concepts: `per_quantile` seeded picks from each of `quantiles`
      logit groups of the concepts where it fires (1 = strongest)
    - sigmoid_counts: sigmoid(u) over all concepts; two clean spikes near 0
      and 1 mean the bit binarises cleanly, mass near 0.5 means it hesitates
    - enrichment: categories among the concepts where it fires, against base rates
    - cofiring: the `neighbours` bits whose firing sets overlap most (Jaccard)
    - decoder_neighbours: concepts nearest (cosine) to its decoder column
    """
    check_bit(ctx, bit)
    logits = ctx.bit_logits(bit)  # (M,)
    firing = ctx.by_bit[bit].indices  # rows where the stored code has this bit
    label = labels_for(ctx, [bit]).iloc[0]
    counts, edges = np.histogram(1 / (1 + np.exp(-logits.astype(np.float64))), bins=HISTOGRAM_BINS, range=(0, 1))
    decoder_column = ctx.model.decoder.weight[:, bit].detach().cpu().numpy()  # (D,) the bit's direction in r
    return BitProfile(
        bit=int(bit),
        firing_rate=float(len(firing) / max(len(ctx.concepts), 1)),
        n_active=int(len(firing)),
        label=BitLabel(**{item.name: _plain(label[item.name]) for item in fields(BitLabel)}),
        top_concepts=top_table(ctx, logits, top, "logit"),
        quantile_concepts=quantile_sample(ctx, bit, logits, firing, quantiles, per_quantile),
        sigmoid_edges=edges.tolist(),
        sigmoid_counts=counts.tolist(),
        enrichment=enrichment_table(ctx.by_bit[bit], ctx.categories),
        cofiring=cofiring_bits(ctx, bit, neighbours),
        decoder_neighbours=top_table(ctx, ctx.cosine_to(decoder_column), neighbours, "cosine"),
    )


def top_rows(scores: np.ndarray, count: int, exclude: int | None = None) -> np.ndarray:
    """Rows of the `count` highest scores, ties by the lower row."""
    scores = np.asarray(scores, dtype=np.float32).copy()
    if exclude is not None:
        scores[exclude] = -np.inf
    return smallest_k_labelled(-scores, np.arange(len(scores)), min(count, len(scores)))


def top_table(ctx: RunContext, scores: np.ndarray, count: int, name: str, exclude: int | None = None) -> pd.DataFrame:
    """The concepts of the `count` highest scores, with the score in column `name`."""
    return _with_score(ctx, top_rows(scores, count, exclude), scores, name)


def _with_score(ctx: RunContext, rows: np.ndarray, scores: np.ndarray, name: str) -> pd.DataFrame:
    table = ctx.concept_rows(rows)
    table[name] = np.asarray(scores)[rows]
    return table


def quantile_sample(
    ctx: RunContext, bit: int, logits: np.ndarray, firing: np.ndarray, quantiles: int, per_quantile: int
) -> pd.DataFrame:
    """A seeded sample from each logit quantile of the firing concepts; quantile 1 is the strongest.

    Like the quantile groups of feature dashboards: the top concepts show what
    the bit means at its clearest, the lower groups whether it holds up.
    """
    order = firing[np.lexsort((firing, -logits[firing]))]  # strongest first, ties by row
    rng = np.random.default_rng(bit)
    parts = []
    for number, group in enumerate(np.array_split(order, max(quantiles, 1)), start=1):
        if len(group) == 0:
            continue
        picked = np.sort(rng.choice(len(group), size=min(per_quantile, len(group)), replace=False))
        part = _with_score(ctx, group[picked], logits, "logit")
        part.insert(0, "quantile", number)
        parts.append(part)
    columns = ["quantile", *CONCEPT_COLUMNS, "logit"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def cofiring_bits(ctx: RunContext, bit: int, count: int = 10) -> pd.DataFrame:
    """Bits whose firing sets overlap this one's most (Jaccard of the concept sets)."""
    shared = np.asarray((ctx.by_bit @ ctx.by_bit[bit].T).toarray()).ravel()  # (N,) concepts firing both
    union = ctx.bit_counts + ctx.bit_counts[bit] - shared
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union > 0, shared / union, 0.0)
    jaccard[bit] = 0.0
    bits = top_rows(jaccard, count)
    bits = bits[jaccard[bits] > 0]
    labels = labels_for(ctx, bits)
    return pd.DataFrame({"bit": bits, "jaccard": jaccard[bits], "label": labels["label"].to_numpy()})


def concept_view(ctx: RunContext, concept_id: str, k: int = 10, metric: str = "jaccard") -> ConceptView:
    """A concept's active bits with their labels, and its code neighbours beside its dense ones."""
    row = ctx.row_of(concept_id)
    bits = np.flatnonzero(unpack_bits(ctx.codes[row : row + 1], ctx.n_bits)[0])
    logits = ctx.concept_logits(row)
    found, distances = ctx.code_index.search(ctx.codes[row : row + 1], k, metric=metric, exclude=np.array([row]))
    code_neighbours = ctx.concept_rows(found[0])
    code_neighbours["distance"] = distances[0]
    cosines = ctx.cosine_to(np.asarray(ctx.embeddings[row], dtype=np.float32))
    dense_rows = top_rows(cosines, k, exclude=row)
    overlap = len(np.intersect1d(found[0], dense_rows)) / max(len(dense_rows), 1)
    return ConceptView(
        concept=concept_at(ctx.concepts, row),
        active_bits=active_bit_table(ctx, bits, logits),
        code_neighbours=code_neighbours,
        dense_neighbours=_with_score(ctx, dense_rows, cosines, "cosine"),
        overlap=float(overlap),
    )


def active_bit_table(ctx: RunContext, bits: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """A code's active bits, strongest logit first (ties by bit): bit, label, corrected_coherence, q_value,
    firing_rate, logit. The label and scores are the bit table's, so a bit reads here as on the Bits page.

    `logits` is the (N,) pre-activation of every bit for the concept or phrase.
    """
    labels = labels_for(ctx, bits)
    active = pd.DataFrame(
        {
            "bit": bits,
            "label": labels["label"].to_numpy(),
            "corrected_coherence": labels["corrected_coherence"].to_numpy(),
            "q_value": labels["q_value"].to_numpy(),
            # How common each bit is: a bit firing for most concepts says little about this one.
            "firing_rate": ctx.bit_counts[bits] / max(len(ctx.concepts), 1),
            "logit": logits[bits],
        }
    )
    return active.sort_values(["logit", "bit"], ascending=[False, True], kind="stable").reset_index(drop=True)


def concept_at(concepts: pd.DataFrame, row: int) -> Concept:
    """The concept in `row`; a missing category or definition (NaN in the table) is None."""
    values = concepts.iloc[row]
    category, depth, definition = (values.get(name) for name in ("category", "depth", "definition"))
    return Concept(
        id=str(values["id"]),
        name=str(values["name"]),
        category=None if pd.isna(category) else str(category),
        depth=-1 if pd.isna(depth) else int(depth),
        definition=None if pd.isna(definition) else str(definition),
    )


def find_concepts(concepts: pd.DataFrame, query: str, limit: int = 20) -> pd.DataFrame:
    """Concepts whose id or name contains `query` (any case): exact id first, then names that start with it."""
    query = str(query).strip().lower()
    if not query:
        return concepts.iloc[:0]
    ids = concepts["id"].astype(str).str.lower()
    names = concepts["name"].astype(str).str.lower()
    hit = ids.str.contains(query, regex=False) | names.str.contains(query, regex=False)
    rank = np.where(ids == query, 0, np.where(names.str.startswith(query) | ids.str.startswith(query), 1, 2))
    order = np.lexsort((np.arange(len(concepts)), rank))
    order = order[hit.to_numpy()[order]]
    return concepts.iloc[order[:limit]]


def depth_analysis(ctx: RunContext) -> DepthAnalysis:
    """Active bits per concept against ontology depth, per source: do deeper concepts use more bits?

    Concepts of unknown depth (-1) are left out. Spearman's rank correlation
    (with its p-value) is NaN for a source with fewer than three known depths
    or a single depth.
    """
    table = pd.DataFrame(
        {
            "source": ctx.concepts["source"].astype(str).to_numpy(),
            "depth": ctx.concepts["depth"].astype(int).to_numpy(),
            "active": ctx.active_counts,
        }
    )
    table = table[table["depth"] >= 0]
    per_depth = table.groupby(["source", "depth"], sort=True)["active"].agg(mean_active="mean", n="size").reset_index()
    spearman, p_value = {}, {}
    for source, part in table.groupby("source", sort=True):
        if len(part) < 3 or part["depth"].nunique() < 2 or part["active"].nunique() < 2:
            spearman[source], p_value[source] = float("nan"), float("nan")
            continue
        result = scipy.stats.spearmanr(part["depth"], part["active"])
        spearman[source], p_value[source] = float(result.statistic), float(result.pvalue)
    return DepthAnalysis(per_depth, spearman, p_value)


def _plain(value):
    """numpy scalars as Python ones, so a result compares plainly and is JSON-ready."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
