"""What a set of concepts has in common in the ontology: category enrichment and covering ancestors.

Both are sparse products, so a label for every bit of an 8192-bit code over
117k concepts costs about one multiply per (active bit, ancestor) pair:

    counts   = members @ categories    (B, M) @ (M, C) -> concepts per category, per bit
    coverage = members @ ancestors     (B, M) @ (M, A) -> concepts under each ancestor, per bit

`members` has one row per bit (1 where the bit fires). `ancestors` is the
reflexive transitive closure of the concept table's `parents` links: a concept
is covered by itself and by every concept above it. Parent ids missing from
the table still count as ancestors (named by their id).

Choices (METHOD.md leaves them open):
- The label is the category with the highest precision above chance,
  `(precision - base_rate) / (1 - base_rate)`; that value is the bit's
  coherence: 1 when every concept it fires on is in one category, about 0 for
  a bit that fires at random, and undefined (NaN) when the whole table is
  one category. Plain precision would crown the largest category of any
  noisy bit. Ties go to the higher precision.
- The ancestor is the most specific node covering at least `min_share` of the
  concepts where the bit fires, and at least two of them when it fires for two
  or more: otherwise a concept would be "the common ancestor" of a set by
  covering only itself. A bit firing for one concept is labelled with that
  concept. "Most specific" is the node covering the fewest concepts of the
  whole table (works without depths and on a DAG); ties go to the higher
  coverage, then to the lower node number.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

NO_CATEGORY = "(no category)"


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


def category_index(concepts: pd.DataFrame) -> Categories:
    labels = concepts["category"].fillna("").astype(str).replace("", NO_CATEGORY).to_numpy()
    names, codes = np.unique(labels, return_inverse=True)
    onehot = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (np.arange(len(codes)), codes)), shape=(len(codes), len(names))
    )
    return Categories(names, onehot, np.bincount(codes, minlength=len(names)))


def ancestor_index(concepts: pd.DataFrame) -> Ancestors:
    """The reflexive closure over `parents`, built in an order where parents come first.

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
    return Ancestors(np.array(ids, dtype=object), names, incidence, sizes)


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
    """Per row of `members`: label, precision, recall, base_rate, lift, coherence.

    Scores are NaN for an empty row; coherence is NaN too when there is one category.
    A row whose best category is at chance (coherence 0, e.g. a bit firing for
    every concept) gets no label rather than the largest category's name.
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
    return pd.DataFrame(
        {
            "label": np.where(unlabelled, None, categories.names[best]) if len(categories.names) else None,
            "precision": np.where(empty, np.nan, precision[rows, best]),
            "recall": np.where(empty, np.nan, counts[rows, best] / categories.sizes[best]),
            "base_rate": base_rate[best],
            "lift": np.where(empty, np.nan, precision[rows, best] / base_rate[best]),
            "coherence": np.where(empty, np.nan, above_chance[rows, best]),
        }
    )


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


def covering_ancestors(members: sp.csr_matrix, ancestors: Ancestors, min_share: float = 0.5) -> pd.DataFrame:
    """Per row of `members`: ancestor_id, ancestor_name, ancestor_share (see the module docstring)."""
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must lie in (0, 1], got {min_share!r}.")
    n_active = np.diff(members.indptr)
    coverage = (members @ ancestors.incidence).tocoo()  # (B, A) concepts under each node
    rows, nodes, counts = coverage.row, coverage.col, coverage.data
    need = np.maximum(np.ceil(min_share * n_active - 1e-9), np.minimum(2, n_active))
    keep = counts >= need[rows]
    rows, nodes, counts = rows[keep], nodes[keep], counts[keep]
    order = np.lexsort((nodes, -counts, ancestors.sizes[nodes], rows))
    first = order[np.unique(rows[order], return_index=True)[1]]
    result = pd.DataFrame(
        {
            "ancestor_id": np.full(len(n_active), None, dtype=object),
            "ancestor_name": np.full(len(n_active), None, dtype=object),
            "ancestor_share": np.full(len(n_active), np.nan),
        }
    )
    result.loc[rows[first], "ancestor_id"] = ancestors.ids[nodes[first]]
    result.loc[rows[first], "ancestor_name"] = ancestors.names[nodes[first]]
    result.loc[rows[first], "ancestor_share"] = counts[first] / n_active[rows[first]]
    return result
