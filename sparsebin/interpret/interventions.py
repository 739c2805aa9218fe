"""What a bit does, not only where it fires: switch bits of a code and decode it, query codes by bits.

- `edit_code`: a concept's code with bits switched off and on, decoded as the
  run decodes (`BinaryAutoencoder.decode`: W_d b + b_d, or c + L r / |r| for a
  centred model), and its nearest concepts before and after, by cosine of the
  decoded vector to the dense embeddings and by Hamming distance among the
  stored codes, with the concepts gained and lost.
- `bit_effect`: over a seeded sample of the concepts where a bit fires,
  switching it off: how far the decoded vector turns (1 - cosine) and which
  categories the dense neighbours lose most often, the bit's label by
  intervention, beside its label by firing (`bits.labels_for`).
- `query_codes`: concepts whose code satisfies a bit expression such as
  `405 & 561 & ~12` or `"Seizure" & ~12` (`parse_query`: & binds tighter
  than |, ~ tightest; a quoted label stands for the bits it names).
- `contrast`: the bits two concepts share and the bits each has alone.

Dense neighbours are scored a chunk of rows at a time with a running top k, so
no (Q, M) array is formed.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sparsebin.errors import QueryError
from sparsebin.files import CHUNK_ROWS, release_pages
from sparsebin.interpret.bits import Concept, RunContext, bit_table, concept_at, find_concepts, labels_for
from sparsebin.interpret.ontology import category_labels, label_members
from sparsebin.search.codes import bit_column, pack_bits, smallest_k, unpack_bits

NEIGHBOURS = 10  # nearest concepts listed before and after an edit
EFFECT_SAMPLE = 500  # firing concepts a bit's effect is measured on, at most
# Cosines (sampled concepts x rows) a bit's effect computes on each side of the switch, at most: 500
# concepts on data sets up to 200k rows, 100 at a million, so the Bits page answers in seconds.
EFFECT_COMPARISONS = 100_000_000
QUERY_LIST = 50  # matching concepts a query lists (all are counted)


@dataclass(frozen=True, eq=False)
class Edit:
    """`edit_code`: one concept's code before and after switching bits, and what its neighbours do."""

    concept: Concept
    bits_before: list[int]  # active bits of the stored code
    bits_after: list[int]  # active bits of the edited code
    switched_off: list[int]
    switched_on: list[int]
    cosine: float  # between the decoded vectors before and after (1: the edit changed nothing)
    dense_before: pd.DataFrame  # id, name, category, cosine: nearest embeddings to the decoded code
    dense_after: pd.DataFrame
    code_before: pd.DataFrame  # id, name, category, hamming: nearest stored codes
    code_after: pd.DataFrame
    changes: pd.DataFrame  # list (dense / code), change (gained / lost), id, name, category


@dataclass(frozen=True, eq=False)
class BitEffect:
    """`bit_effect`: switching one bit off wherever it fires (a seeded sample), against its label by firing."""

    bit: int
    n_active: int  # concepts where the bit fires
    n_sampled: int  # of those, the concepts measured
    mean_movement: float  # mean 1 - cosine between the decoded vector with and without the bit
    n_lost: int  # dense neighbours lost, summed over the sampled concepts (NEIGHBOURS each at most)
    lost_categories: pd.DataFrame  # category, lost, share (of n_lost): most often lost first
    intervention_category: str | None  # the category lost most often
    intervention_label: str | None  # the ontology node best matching the lost concepts (as a firing label)
    firing_category: str | None  # the bit table's category for the bit
    firing_label: str | None
    agree: bool | None  # the two categories are the same; None when either is missing


@dataclass(frozen=True, eq=False)
class QueryResult:
    """`query_codes`: how many concepts satisfy a bit expression, and the first of them."""

    expression: str  # as parsed, fully bracketed
    count: int  # concepts whose code satisfies it, over all rows
    n_rows: int
    concepts: pd.DataFrame  # id, name, category, active: the first QUERY_LIST matches by row


@dataclass(frozen=True, eq=False)
class Contrast:
    """`contrast`: two concepts' bits side by side, each bit with its label by firing."""

    first: Concept
    second: Concept
    shared: pd.DataFrame  # bit, label, category, firing_rate
    first_only: pd.DataFrame
    second_only: pd.DataFrame


def check_bits(ctx: RunContext, bits, what: str) -> list[int]:
    """The bits as sorted unique ints; a QueryError naming the first outside 0..N-1."""
    checked = sorted({int(bit) for bit in bits})
    outside = [bit for bit in checked if not 0 <= bit < ctx.n_bits]
    if outside:
        raise QueryError(f"bit {outside[0]} to switch {what} does not exist: this run's bits are 0..{ctx.n_bits - 1}.")
    return checked


@torch.no_grad()
def decode_bits(ctx: RunContext, bits: np.ndarray) -> np.ndarray:
    """(Q, N) 0/1 codes -> (Q, D) float32 decoded vectors, through the run's own decoder."""
    device = next(ctx.model.parameters()).device
    code = torch.as_tensor(np.asarray(bits, dtype=np.float32), device=device)
    return ctx.model.decode(code).cpu().numpy().astype(np.float32)


def nearest_by_cosine(
    ctx: RunContext, queries: np.ndarray, k: int, exclude: np.ndarray, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines), each (Q, k): the embeddings nearest each query vector, row `exclude[q]` left out."""
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    best_sims = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(ctx.embeddings), chunk_rows):
        block = np.array(ctx.embeddings[start : start + chunk_rows], dtype=np.float32)
        release_pages(ctx.embeddings)
        sims = (queries @ block.T) / ctx.row_norms[start : start + len(block)]  # (Q, chunk)
        own = (exclude >= start) & (exclude < start + len(block))
        sims[np.flatnonzero(own), exclude[own] - start] = -np.inf
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(block)), sims.shape)], axis=1)
        scores = np.concatenate([best_sims, sims], axis=1)
        top, negative = smallest_k(-scores, k)
        best_rows, best_sims = np.take_along_axis(rows, top, axis=1), -negative
    return best_rows, best_sims


def find_row(ctx: RunContext, concept: str) -> int:
    """The row of a concept given by id or by its whole name (any case); a QueryError when there is none."""
    concept = str(concept).strip()
    if concept in ctx.rows_by_id:
        return ctx.row_of(concept)
    names = ctx.concepts["name"].astype(str).str.lower()
    exact = np.flatnonzero(names.to_numpy() == concept.lower())
    if len(exact):
        return int(exact[0])
    close = find_concepts(ctx.concepts, concept, limit=3)
    hint = "; close: " + ", ".join(f"{row.name} ({row.id})" for row in close.itertuples()) if len(close) else ""
    raise QueryError(f"no concept has the id or name {concept!r} in this run's dataset{hint}.")


def edit_code(ctx: RunContext, concept_id: str, off=(), on=(), k: int = NEIGHBOURS) -> Edit:
    """The concept's code with bits `off` switched off and `on` switched on, and its neighbours before and after."""
    row = find_row(ctx, concept_id)
    off, on = check_bits(ctx, off, "off"), check_bits(ctx, on, "on")
    before = unpack_bits(ctx.codes[row : row + 1], ctx.n_bits)[0].astype(bool)
    inactive = [bit for bit in off if not before[bit]]
    if inactive:
        raise QueryError(
            f"bit {inactive[0]} is not active in the code of {_named(ctx, row)}, so it cannot be switched off."
        )
    both = sorted(set(off) & set(on))
    if both:
        raise QueryError(f"bit {both[0]} is asked to be switched both off and on; pick one.")
    after = before.copy()
    after[off], after[on] = False, True
    codes = np.stack([before, after])  # (2, N)
    decoded = decode_bits(ctx, codes)
    exclude = np.array([row, row])
    dense_rows, dense_sims = nearest_by_cosine(ctx, decoded, k, exclude)
    code_rows, code_dist = ctx.code_index.search(pack_bits(codes), k, metric="hamming", exclude=exclude)
    dense = [_scored(ctx, dense_rows[i], dense_sims[i], "cosine") for i in range(2)]
    code = [_scored(ctx, code_rows[i], code_dist[i], "hamming") for i in range(2)]
    norms = np.maximum(np.linalg.norm(decoded, axis=1), 1e-12)
    changes = pd.concat(
        [_changes(ctx, "dense", dense_rows), _changes(ctx, "code", code_rows)], ignore_index=True
    ).reset_index(drop=True)
    return Edit(
        concept=concept_at(ctx.concepts, row),
        bits_before=np.flatnonzero(before).tolist(),
        bits_after=np.flatnonzero(after).tolist(),
        switched_off=off,
        switched_on=[bit for bit in on if not before[bit]],
        cosine=float(decoded[0] @ decoded[1] / (norms[0] * norms[1])),
        dense_before=dense[0],
        dense_after=dense[1],
        code_before=code[0],
        code_after=code[1],
        changes=changes,
    )


def _named(ctx: RunContext, row: int) -> str:
    return f"{ctx.concepts['name'].iloc[row]} ({ctx.concepts['id'].iloc[row]})"


def _scored(ctx: RunContext, rows: np.ndarray, scores: np.ndarray, name: str) -> pd.DataFrame:
    table = ctx.concept_rows(rows)
    table[name] = scores
    return table


def _changes(ctx: RunContext, which: str, rows: np.ndarray) -> pd.DataFrame:
    """The concepts a neighbour list gained and lost, in list order."""
    gained = [row for row in rows[1] if row not in set(rows[0])]
    lost = [row for row in rows[0] if row not in set(rows[1])]
    parts = []
    for change, picked in (("gained", gained), ("lost", lost)):
        table = ctx.concept_rows(np.array(picked, dtype=np.int64))
        table.insert(0, "change", change)
        table.insert(0, "list", which)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def effect_sample_size(n_rows: int) -> int:
    """Concepts a bit's effect is measured on at most, on a data set of `n_rows`: EFFECT_SAMPLE, or fewer
    where that many times the rows would pass EFFECT_COMPARISONS cosines; never under 50."""
    return int(min(EFFECT_SAMPLE, max(50, EFFECT_COMPARISONS // max(int(n_rows), 1))))


def bit_effect(ctx: RunContext, bit: int, sample: int | None = None, k: int = NEIGHBOURS, seed: int = 0) -> BitEffect:
    """Switch `bit` off in a seeded sample of the concepts where it fires (`effect_sample_size` of them at
    most, unless `sample` says); what the dense neighbours lose."""
    (bit,) = check_bits(ctx, [bit], "off")
    sample = effect_sample_size(len(ctx.concepts)) if sample is None else int(sample)
    firing = ctx.by_bit[bit].indices
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(firing, size=min(sample, len(firing)), replace=False)) if len(firing) else firing
    firing_label = labels_for(ctx, [bit]).iloc[0]
    firing_category = _text(firing_label["category"])
    if len(rows) == 0:
        return BitEffect(bit, 0, 0, float("nan"), 0, _lost_table([]), None, None, firing_category, None, None)
    before = unpack_bits(ctx.codes[rows], ctx.n_bits)  # (S, N)
    after = before.copy()
    after[:, bit] = 0
    decoded_before, decoded_after = decode_bits(ctx, before), decode_bits(ctx, after)
    cosines = (decoded_before * decoded_after).sum(axis=1) / np.maximum(
        np.linalg.norm(decoded_before, axis=1) * np.linalg.norm(decoded_after, axis=1), 1e-12
    )
    both, _ = nearest_by_cosine(ctx, np.vstack([decoded_before, decoded_after]), k, np.concatenate([rows, rows]))
    near_before, near_after = both[: len(rows)], both[len(rows) :]  # one pass over the rows for both sides
    lost = np.concatenate([np.setdiff1d(b, a) for b, a in zip(near_before, near_after, strict=True)])
    lost_table = _lost_table(category_labels(ctx.concepts)[lost])
    node = None
    if len(lost):
        unique = np.unique(lost)
        members = sp.csr_matrix(
            (np.ones(len(unique), np.float32), (np.zeros(len(unique)), unique)), (1, len(ctx.concepts))
        )
        node = _text(label_members(members, ctx.categories, ctx.ancestors)["label"].iloc[0])
    top = lost_table["category"].iloc[0] if len(lost_table) else None
    return BitEffect(
        bit=bit,
        n_active=int(len(firing)),
        n_sampled=int(len(rows)),
        mean_movement=float(np.mean(1 - cosines)),
        n_lost=int(len(lost)),
        lost_categories=lost_table,
        intervention_category=top,
        intervention_label=node,
        firing_category=firing_category,
        firing_label=_text(firing_label["label"]),
        agree=None if top is None or firing_category is None else top == firing_category,
    )


def _lost_table(categories) -> pd.DataFrame:
    counts = pd.Series(categories, dtype=object).value_counts(sort=False)
    table = pd.DataFrame({"category": counts.index.astype(str), "lost": counts.to_numpy(dtype=np.int64)})
    table = table.sort_values(["lost", "category"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["share"] = table["lost"] / max(int(table["lost"].sum()), 1)
    return table


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" else str(value)


# Query by bits: a small recursive-descent parser, never eval.
#   expression := term ("|" term)*
#   term       := factor ("&" factor)*
#   factor     := "~" factor | "(" expression ")" | bit number


def tokenize(text: str) -> list[tuple[str, int]]:
    """(token, position) pairs: bit numbers, quoted labels, & | ~ ( ); a QueryError at the first other character."""
    tokens, position = [], 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char.isdigit():
            end = position
            while end < len(text) and text[end].isdigit():
                end += 1
            tokens.append((text[position:end], position))
            position = end
        elif char in "\"'":
            end = text.find(char, position + 1)
            if end < 0:
                raise QueryError(f"the quote opened at position {position + 1} of the bit expression is not closed.")
            tokens.append((text[position : end + 1], position))
            position = end + 1
        elif char in "&|~()":
            tokens.append((char, position))
            position += 1
        else:
            raise QueryError(
                f"the bit expression has {char!r} at position {position + 1}; "
                "use bit numbers or quoted bit labels with &, |, ~ and brackets."
            )
    return tokens


class _Parser:
    def __init__(self, text: str, n_bits: int, labels=None):
        self.text, self.n_bits = text, n_bits
        self.labels = labels  # per bit, the names a quoted label may give it (lower case), or None
        self.tokens = tokenize(text)
        self.at = 0

    def parse(self):
        if not self.tokens:
            raise QueryError(
                "the bit expression is empty; write bit numbers with &, |, ~ and brackets, e.g. 405 & ~12."
            )
        tree = self.expression()
        if self.at < len(self.tokens):
            token, position = self.tokens[self.at]
            raise QueryError(f"the bit expression has an unexpected {token!r} at position {position + 1}.")
        return tree

    def peek(self) -> str | None:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else None

    def expression(self):
        tree = self.term()
        while self.peek() == "|":
            self.at += 1
            tree = ("|", tree, self.term())
        return tree

    def term(self):
        tree = self.factor()
        while self.peek() == "&":
            self.at += 1
            tree = ("&", tree, self.factor())
        return tree

    def factor(self):
        if self.at >= len(self.tokens):
            raise QueryError("the bit expression ends too early: a bit number or '(' is missing at its end.")
        token, position = self.tokens[self.at]
        self.at += 1
        if token == "~":
            return ("~", self.factor())
        if token == "(":
            tree = self.expression()
            if self.peek() != ")":
                raise QueryError(f"the bracket opened at position {position + 1} of the bit expression is not closed.")
            self.at += 1
            return tree
        if token.isdigit():
            bit = int(token)
            if bit >= self.n_bits:
                raise QueryError(
                    f"bit {bit} in the bit expression does not exist: this run's bits are 0..{self.n_bits - 1}."
                )
            return ("bit", bit)
        if token[0] in "\"'":
            return self.label(token[1:-1].strip())
        raise QueryError(f"the bit expression has an unexpected {token!r} at position {position + 1}.")

    def label(self, name: str):
        """A quoted label: the bits whose label by firing (node or category) is that name, any of them."""
        if not name:
            raise QueryError("the bit expression has an empty quoted label; write a bit's label between the quotes.")
        if self.labels is None:
            raise QueryError(f"the label {name!r} cannot be looked up here: give bit numbers instead.")
        bits = tuple(bit for bit, names in enumerate(self.labels) if name.lower() in names)
        if not bits:
            raise QueryError(
                f"no bit of this run has the label {name!r} (by firing, node or category); "
                "see the Bits page or `report` for the labels."
            )
        return ("label", name, bits)


def bit_names(table: pd.DataFrame) -> list[set[str]]:
    """Per bit of a `bit_table`, the lower-case names a quoted label in a bit expression may give it."""
    return [
        {str(value).lower() for value in (label, category) if _text(value) is not None}
        for label, category in zip(table["label"], table["category"], strict=True)
    ]


def parse_query(text: str, n_bits: int, labels=None):
    """A bit expression as a tree of tuples: ("bit", b), ("label", name, bits), ("~", t), ("&", a, b), ("|", a, b).

    Bit numbers and quoted labels (`"Seizure"`, matched without case to each
    bit's label by firing or its category, from `bit_names`), joined by & (and),
    | (or), ~ (not) and brackets; & binds tighter than |, ~ tightest. A label
    stands for every bit it names, any of them. Never evaluated as Python.
    """
    return _Parser(str(text), n_bits, labels).parse()


def show_query(tree) -> str:
    """The tree written back, fully bracketed, so a user sees how it was read."""
    if tree[0] == "bit":
        return str(tree[1])
    if tree[0] == "label":
        bits = ", ".join(map(str, tree[2]))
        return f'"{tree[1]}"' + f" (bit {bits})" if len(tree[2]) == 1 else f'"{tree[1]}" (any of bits {bits})'
    if tree[0] == "~":
        return f"~{show_query(tree[1])}"
    return f"({show_query(tree[1])} {tree[0]} {show_query(tree[2])})"


def evaluate_query(tree, packed: np.ndarray) -> np.ndarray:
    """(C,) bool: which rows of the packed codes (C, N/8) satisfy the tree."""
    kind = tree[0]
    n_bits = packed.shape[1] * 8
    if kind == "bit":
        return bit_column(packed, n_bits, tree[1]).astype(bool)
    if kind == "label":
        return np.logical_or.reduce([bit_column(packed, n_bits, bit).astype(bool) for bit in tree[2]])
    if kind == "~":
        return ~evaluate_query(tree[1], packed)
    left, right = evaluate_query(tree[1], packed), evaluate_query(tree[2], packed)
    return left & right if kind == "&" else left | right


def matching_rows(tree, packed: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Rows of the packed codes satisfying the tree, read a chunk at a time."""
    parts = [
        start + np.flatnonzero(evaluate_query(tree, np.asarray(packed[start : start + chunk_rows])))
        for start in range(0, len(packed), chunk_rows)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def query_codes(ctx: RunContext, text: str, limit: int = QUERY_LIST) -> QueryResult:
    """Concepts whose code satisfies the bit expression: all counted, the first `limit` (by row) listed."""
    tree = parse_query(text, ctx.n_bits, bit_names(bit_table(ctx)) if _has_label(text) else None)
    rows = matching_rows(tree, ctx.codes)
    listed = ctx.concept_rows(rows[:limit])
    listed["active"] = ctx.active_counts[rows[:limit]]
    return QueryResult(show_query(tree), int(len(rows)), len(ctx.concepts), listed)


def _has_label(text: str) -> bool:
    return '"' in str(text) or "'" in str(text)


def contrast(ctx: RunContext, first_id: str, second_id: str) -> Contrast:
    """The bits two concepts share and the bits each has alone, each with its label by firing."""
    first, second = find_row(ctx, first_id), find_row(ctx, second_id)
    bits = unpack_bits(ctx.codes[[first, second]], ctx.n_bits).astype(bool)
    return Contrast(
        first=concept_at(ctx.concepts, first),
        second=concept_at(ctx.concepts, second),
        shared=_bit_rows(ctx, np.flatnonzero(bits[0] & bits[1])),
        first_only=_bit_rows(ctx, np.flatnonzero(bits[0] & ~bits[1])),
        second_only=_bit_rows(ctx, np.flatnonzero(~bits[0] & bits[1])),
    )


def _bit_rows(ctx: RunContext, bits: np.ndarray) -> pd.DataFrame:
    labels = labels_for(ctx, bits)
    return pd.DataFrame(
        {
            "bit": bits,
            "label": labels["label"].to_numpy(),
            "category": labels["category"].to_numpy(),
            "firing_rate": ctx.bit_counts[bits] / max(len(ctx.concepts), 1),
        }
    )
