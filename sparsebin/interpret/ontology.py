"""What a set of concepts has in common in the ontology: category enrichment and the best-matching node.

Both are sparse products, so a label for every bit of an 8192-bit code over
117k concepts costs about one multiply per (active bit, ancestor) pair:

    counts   = members @ categories    (B, M) @ (M, C) -> concepts per category, per bit
    coverage = members @ ancestors     (B, M) @ (M, A) -> concepts under each node, per bit

`members` has one row per bit (1 where the bit fires). `ancestors` is the
reflexive transitive closure of the concept table's `parents` links: a concept
is covered by itself and by every concept above it. Parent ids missing from
the table still count as ancestors (named by their id).

Choices (METHOD.md leaves them open):
- The bit's category is the one with the highest precision above chance,
  `(precision - base_rate) / (1 - base_rate)`; that value is the bit's raw
  coherence: 1 when every concept it fires on is in one category, and
  undefined (NaN) when the whole table is one category. Plain precision would
  crown the largest category of any noisy bit. Ties go to the higher precision.
- Raw coherence still favours small bits (5 random HPO concepts score about
  0.3), so two chance corrections sit beside it: the corrected coherence
  (raw minus its mean for random sets of the same size, `chance_coherence`:
  about 0 at random) and a one-sided hypergeometric p-value of the category,
  Bonferroni-adjusted for picking the best of C categories, which the bit
  table turns into Benjamini-Hochberg q-values across bits.
- A bit's label is the ontology node whose concepts best match the bit's:
  the node maximising F1 = 2 |S & D| / (|S| + |D|) between the set S of
  concepts where the bit fires and the node's descendants D (itself
  included). "The most specific node covering half of S" crowned the top of
  the tree for any broad bit ("Phenotypic abnormality, 97 % of 258"); F1
  also costs a node each of its concepts the bit misses. The label shows both
  sides: the share of S under the node, and the share of D where the bit
  fires. A bit firing for one concept that is a leaf is labelled with that
  concept. Ties go to the node covering more of S (the broader reading of an
  equal fit), then to the node covering fewer concepts of the whole table,
  then to the lower node number.
- Levels (`Ancestors.levels`): a node is top-level (1) when it is a root (no
  parents; an id missing from the table is a root) or the head of its
  category (a concept none of whose parents in the table shares its
  category: an HPO branch such as "Abnormality of the eye", "Phenotypic
  abnormality" itself, an ICD-10-CM chapter). The level below (2) is a
  concept, not top-level, with a parent that heads the concept's own category
  (an HPO branch's children, an ICD-10-CM chapter's blocks); every other node
  is deeper (3). A bit labelled by a top-level node says little more than its
  category.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

NO_CATEGORY = "(no category)"
SIGNIFICANT = 0.05  # a bit's best category is enriched beyond chance when its Benjamini-Hochberg q is below this
Q_FLOOR = 1e-10  # smaller q-values print as "< 1e-10": further digits change no reading, and float64 underflows to 0
TOP_LEVEL, LEVEL_BELOW, DEEPER = 1, 2, 3  # `Ancestors.levels` (module docstring); 0 in a label: no node


@dataclass(frozen=True)
class Categories:
    names: np.ndarray  # (C,) category names
    onehot: sp.csr_matrix  # (M, C) float32, one 1 per concept
    sizes: np.ndarray  # (C,) concepts per category


@dataclass(frozen=True)
class Ancestors:
    ids: np.ndarray  # (A,) node ids: every concept, then parent ids missing from the table
    names: np.ndarray  # (A,) node names (the id where the table has none)
    incidence: sp.csr_matrix  # (M, A) float32, 1 where the node is the concept or above it
    sizes: np.ndarray  # (A,) concepts covered by each node in the whole table
    levels: np.ndarray  # (A,) int8: TOP_LEVEL (a root or a category's head), LEVEL_BELOW or DEEPER
    has_links: bool  # whether any concept has a parent: without links every node is a root


def category_labels(concepts: pd.DataFrame) -> np.ndarray:
    """(M,) each concept's category name, NO_CATEGORY where it has none."""
    return concepts["category"].fillna("").astype(str).replace("", NO_CATEGORY).to_numpy()


def category_index(concepts: pd.DataFrame) -> Categories:
    names, codes = np.unique(category_labels(concepts), return_inverse=True)
    onehot = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (np.arange(len(codes)), codes)), shape=(len(codes), len(names))
    )
    return Categories(names, onehot, np.bincount(codes, minlength=len(names)))


def ancestor_index(concepts: pd.DataFrame) -> Ancestors:
    """The reflexive closure over `parents`, built in an order where parents come first, and each node's level.

    Links that close a cycle are ignored rather than looping forever.
    """
    ids = concepts["id"].astype(str).tolist()
    node_of = {concept_id: node for node, concept_id in enumerate(ids)}
    parents_of = []
    for parents in concepts["parents"]:
        nodes = []
        for parent in [] if parents is None else list(parents):
            parent = str(parent)
            if parent not in node_of:
                node_of[parent] = len(ids)
                ids.append(parent)
            nodes.append(node_of[parent])
        parents_of.append(nodes)
    parents_of += [[] for _ in range(len(ids) - len(concepts))]  # external ids are roots
    closure: list[frozenset | None] = [None] * len(ids)
    for node in range(len(ids)):
        _close(node, parents_of, closure)
    rows = np.repeat(np.arange(len(concepts)), [len(closure[i]) for i in range(len(concepts))])
    cols = np.fromiter((a for i in range(len(concepts)) for a in closure[i]), dtype=np.int64, count=len(rows))
    incidence = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(concepts), len(ids)))
    names = np.array(concepts["name"].astype(str).tolist() + ids[len(concepts) :], dtype=object)
    sizes = np.asarray(incidence.sum(axis=0)).ravel().astype(np.int64)
    levels = node_levels(parents_of, category_labels(concepts))
    has_links = any(parents_of[: len(concepts)])
    return Ancestors(np.array(ids, dtype=object), names, incidence, sizes, levels, has_links)


def node_levels(parents_of: list[list[int]], labels: np.ndarray) -> np.ndarray:
    """(A,) TOP_LEVEL, LEVEL_BELOW or DEEPER per node (module docstring); `labels` are the M table
    concepts' categories, nodes past them are ids missing from the table (roots)."""
    inside = [[parent for parent in parents if parent < len(labels)] for parents in parents_of[: len(labels)]]
    head = [all(labels[parent] != labels[node] for parent in parents) for node, parents in enumerate(inside)]
    levels = np.full(len(parents_of), DEEPER, dtype=np.int8)
    for node, parents in enumerate(inside):
        if head[node]:
            levels[node] = TOP_LEVEL
        elif any(head[parent] and labels[parent] == labels[node] for parent in parents):
            levels[node] = LEVEL_BELOW
    levels[[node for node, parents in enumerate(parents_of) if not parents]] = TOP_LEVEL  # roots
    return levels


def _close(start: int, parents_of: list[list[int]], closure: list) -> None:
    """Fill closure[start] with an explicit stack (ontologies are deep enough to hit recursion limits)."""
    stack, on_path = [start], {start}
    while stack:
        node = stack[-1]
        pending = next((p for p in parents_of[node] if closure[p] is None and p not in on_path), None)
        if pending is not None:  # one at a time, so the stack is exactly the path walked
            stack.append(pending)
            on_path.add(pending)
            continue
        stack.pop()
        on_path.discard(node)
        if closure[node] is None:
            done = [closure[p] for p in parents_of[node] if closure[p] is not None]
            closure[node] = frozenset({node}).union(*done)


def enrichment_counts(members: sp.csr_matrix, categories: Categories) -> np.ndarray:
    """(B, C) concepts of each category among each row's members."""
    return np.asarray((members @ categories.onehot).toarray(), dtype=np.int64)


def best_labels(members: sp.csr_matrix, categories: Categories) -> pd.DataFrame:
    """Per row of `members`: category, precision, recall, base_rate, lift, coherence, category_size, p_value.

    Scores are NaN for an empty row; coherence is NaN too when there is one category.
    A row whose best category is at chance (coherence 0, e.g. a bit firing for
    every concept) gets no category rather than the largest category's name.
    `p_value` is that category's enrichment test (`hypergeometric_p`).
    """
    counts = enrichment_counts(members, categories)  # (B, C)
    n_active = counts.sum(axis=1)
    base_rate = categories.sizes / max(categories.sizes.sum(), 1)  # (C,)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = counts / n_active[:, None]
        # With one category (base rate 1) there is no chance to beat: coherence is undefined, not 0.
        above_chance = np.where(base_rate < 1, (precision - base_rate) / (1 - base_rate), np.nan)
    scores = np.nan_to_num(above_chance, nan=-np.inf)
    # Ties (an always-on bit is at chance everywhere) go to the higher precision, then the first name.
    tied = scores >= scores.max(axis=1, keepdims=True, initial=-np.inf) - 1e-12
    best = np.argmax(np.where(tied, np.nan_to_num(precision, nan=0.0), -1.0), axis=1)
    rows = np.arange(len(counts))
    empty = n_active == 0
    # A bit no more common in its best category than overall (an always-on bit) has no label.
    unlabelled = empty | (np.nan_to_num(above_chance[rows, best], nan=1.0) <= 1e-9)
    sizes = categories.sizes[best] if len(categories.names) else np.zeros(len(rows), np.int64)
    p_value = hypergeometric_p(
        counts[rows, best] if len(categories.names) else np.zeros(len(rows)),
        n_active,
        sizes,
        int(categories.sizes.sum()),
        len(categories.names),
    )
    return pd.DataFrame(
        {
            "category": np.where(unlabelled, None, categories.names[best]) if len(categories.names) else None,
            "precision": np.where(empty, np.nan, precision[rows, best]),
            "recall": np.where(empty, np.nan, counts[rows, best] / categories.sizes[best]),
            "base_rate": base_rate[best],
            "lift": np.where(empty, np.nan, precision[rows, best] / base_rate[best]),
            "coherence": np.where(empty, np.nan, above_chance[rows, best]),
            "category_size": sizes,
            "p_value": np.where(empty | (len(categories.names) < 2), np.nan, p_value),
        }
    )


def hypergeometric_p(
    counts: np.ndarray, n_active: np.ndarray, category_size: np.ndarray, total: int, n_categories: int
) -> np.ndarray:
    """Chance of a random set of `n_active` concepts holding at least `counts` of a category of
    `category_size` (one-sided hypergeometric test), times the number of categories: the label is
    the best of them, so the test pays for the choice (Bonferroni), capped at 1."""
    with np.errstate(invalid="ignore"):
        p = scipy.stats.hypergeom.sf(counts - 1, total, category_size, n_active)
    return np.minimum(1.0, p * max(n_categories, 1))


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """False-discovery-rate q-values over the finite p-values (NaN stays NaN)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    q = np.full(len(p_values), np.nan)
    tested = np.flatnonzero(np.isfinite(p_values))
    if not len(tested):
        return q
    order = tested[np.argsort(p_values[tested], kind="stable")]
    ranked = p_values[order] * len(order) / np.arange(1, len(order) + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def format_q(value: float | None) -> str:
    """A q- or p-value as a person reads it: "< 1e-10" below Q_FLOOR, else two significant figures
    ("0.003", "0.031", "3e-05", "1"), and "—" where there is none (a dead bit, a table of one category)."""
    if value is None or np.isnan(value):
        return "—"
    return f"< {Q_FLOOR:g}" if value < Q_FLOOR else f"{value:.2g}"


def readable_q(table: pd.DataFrame) -> "Styler":
    """The table as a pandas Styler whose q_value column reads through `format_q`.

    st.dataframe shows a Styler's text but sorts a column by the numbers beneath, so sorting by q
    still orders bits by significance, where a column of strings would sort "3e-05" after "0.5".
    A missing value shows st.dataframe's placeholder instead, whatever the Styler says.
    """
    return table.style.format(format_q, subset=[name for name in table if name == "q_value"])


def chance_coherence(n_active: np.ndarray, categories: Categories, draws: int = 200, seed: int = 0) -> np.ndarray:
    """Expected coherence of a random set of each size: the mean, over `draws` seeded random
    sets of concepts, of the best category's precision above chance (what `best_labels` scores).

    Small sets score high by luck (5 HPO concepts: about 0.3), so the corrected coherence
    subtracts this. Sizes above 64 share a value per 2 % size step (it changes slowly there).
    """
    n_active = np.asarray(n_active, dtype=np.int64)
    result = np.full(len(n_active), np.nan)
    sizes = categories.sizes.astype(np.int64)
    total = int(sizes.sum())
    base_rate = sizes / max(total, 1)
    if len(sizes) < 2 or total == 0:
        return result
    steps = np.where(n_active > 64, np.round(np.log(np.maximum(n_active, 1)) / np.log(1.02)), -n_active)
    rng = np.random.default_rng(seed)
    for step in np.unique(steps[n_active > 0]):
        members = steps == step
        size = int(min(round(1.02**step), total)) if step >= 0 else int(-step)
        counts = rng.multivariate_hypergeometric(sizes, size, size=draws)  # (draws, C)
        scores = (counts / size - base_rate) / (1 - base_rate)
        result[members] = scores.max(axis=1).mean()
    return result


def enrichment_table(members: sp.csr_matrix, categories: Categories) -> pd.DataFrame:
    """For one row of members: every category it touches, most enriched first."""
    counts = enrichment_counts(members[:1], categories)[0]
    n_active = max(counts.sum(), 1)
    base_rate = categories.sizes / max(categories.sizes.sum(), 1)
    table = pd.DataFrame(
        {
            "category": categories.names,
            "n_active_in_category": counts,
            "precision": counts / n_active,
            "recall": counts / np.maximum(categories.sizes, 1),
            "base_rate": base_rate,
        }
    )
    table["lift"] = table["precision"] / table["base_rate"]
    table = table[table["n_active_in_category"] > 0]
    return table.sort_values(["lift", "n_active_in_category"], ascending=False, kind="stable").reset_index(drop=True)


def best_ancestors(members: sp.csr_matrix, ancestors: Ancestors) -> pd.DataFrame:
    """Per row of `members`, the node whose descendants best match its concepts by F1 (module docstring):
    ancestor_id, ancestor_name, ancestor_share (of the row's concepts under the node), ancestor_recall (of
    the node's concepts in the row), ancestor_f1, ancestor_size (the node's concepts) and ancestor_level
    (0 for an empty row, which has no node)."""
    n_active = np.diff(members.indptr)
    coverage = sp.csr_matrix(members @ ancestors.incidence)  # (B, A) concepts under each node
    per_row = np.diff(coverage.indptr)
    rows, nodes, counts = np.repeat(np.arange(len(per_row)), per_row), coverage.indices, coverage.data
    sizes = ancestors.sizes[nodes]
    f1 = 2 * counts / (n_active[rows] + sizes)  # equal fractions give equal floats: ties are exact
    peak = np.zeros(len(per_row))  # (B,) each row's best F1
    if len(f1):
        peak[per_row > 0] = np.maximum.reduceat(f1, coverage.indptr[:-1][per_row > 0])
    tied = np.flatnonzero(f1 == peak[rows])  # only the few nodes at each row's peak are sorted
    order = tied[np.lexsort((nodes[tied], sizes[tied], -counts[tied], rows[tied]))]
    first = order[np.unique(rows[order], return_index=True)[1]]
    picked = rows[first]
    result = pd.DataFrame(
        {
            "ancestor_id": np.full(len(n_active), None, dtype=object),
            "ancestor_name": np.full(len(n_active), None, dtype=object),
            "ancestor_share": np.full(len(n_active), np.nan),
            "ancestor_recall": np.full(len(n_active), np.nan),
            "ancestor_f1": np.full(len(n_active), np.nan),
            "ancestor_size": np.zeros(len(n_active), dtype=np.int64),
            "ancestor_level": np.zeros(len(n_active), dtype=np.int8),
        }
    )
    result.loc[picked, "ancestor_id"] = ancestors.ids[nodes[first]]
    result.loc[picked, "ancestor_name"] = ancestors.names[nodes[first]]
    result.loc[picked, "ancestor_share"] = counts[first] / n_active[picked]
    result.loc[picked, "ancestor_recall"] = counts[first] / sizes[first]
    result.loc[picked, "ancestor_f1"] = f1[first]
    result.loc[picked, "ancestor_size"] = sizes[first]
    result.loc[picked, "ancestor_level"] = ancestors.levels[nodes[first]]
    return result


def label_members(members: sp.csr_matrix, categories: Categories, ancestors: Ancestors) -> pd.DataFrame:
    """Per row of `members` (one block of bits): n_active, label (`node_label`), `best_labels`' columns and
    `best_ancestors`' columns. `judge_labels` adds the scores that compare across rows once every block is in."""
    table = pd.concat([best_labels(members, categories), best_ancestors(members, ancestors)], axis=1)
    table.insert(0, "n_active", np.diff(members.indptr))
    table.insert(1, "label", [node_label(row) for row in table.itertuples()])
    return table


def node_label(row) -> str | None:
    """ "Abnormal social development, 94 % of 17, 70 % of its 23": the best-F1 node, the share of the bit's
    17 concepts under it and the share of the node's 23 concepts where the bit fires; else the category."""
    if isinstance(row.ancestor_name, str) and row.ancestor_name:
        bit_side = f"{row.ancestor_share:.0%} of {int(row.n_active)}"
        node_side = f"{row.ancestor_recall:.0%} of its {int(row.ancestor_size)}"
        return f"{row.ancestor_name}, {bit_side}, {node_side}".replace("%", " %")
    return row.category


def judge_labels(table: pd.DataFrame, categories: Categories) -> pd.DataFrame:
    """`label_members`' table of every bit, with corrected_coherence (raw minus its mean for random sets of
    the bit's size) and q_value (Benjamini-Hochberg across the table's bits) added."""
    table = table.copy()
    table["corrected_coherence"] = table["coherence"] - chance_coherence(table["n_active"].to_numpy(), categories)
    table["q_value"] = benjamini_hochberg(table["p_value"].to_numpy())
    return table
