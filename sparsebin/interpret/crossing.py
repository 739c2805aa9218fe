"""Across terminologies: a concept's nearest concepts of the other terminologies by shared bits.

On a data set that joins terminologies (the built-in `hpo-icd10cm`: the
concept table's `source` says "HPO" or "ICD-10-CM"), the rows of every other
source are searched with the concept's stored code (`CodeIndex`, Jaccard or
Hamming over the codes), and each neighbour comes with the bits it shares
with the concept. Nothing dense is read: this is what the codes alone link.
Bits firing for more than half of all concepts (`COMMON`, the always-on bits
of an unconverged run) are shared by most pairs, so each neighbour's shared
bits are also given without them (`specific_bits`).

`CrossIndex` builds one index per source, over the rows of every other
source, on first use and keeps it, so a page or a command asking for many
concepts of one terminology searches the same index.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sparsebin.errors import DataError
from sparsebin.search.codes import CodeIndex, bit_counts, check_metric, unpack_bits

SHOWN_COLUMNS = ["id", "name", "source", "category"]
COMMON = 0.5  # a bit firing for more than this share of all concepts is common: shared by most pairs anyway


@dataclass(frozen=True, eq=False)
class AcrossView:
    """`CrossIndex.neighbours`: one concept and its nearest concepts of the other terminologies."""

    concept_id: str
    name: str
    source: str  # the concept's terminology
    others: tuple[str, ...]  # the terminologies searched
    bits: pd.DataFrame  # the concept's active bits: bit, label, firing_rate (share of all concepts where it fires)
    # id, name, source, category, distance, shared (count), shared_bits and specific_bits (tuples of bits; specific:
    # firing for at most COMMON of all concepts)
    neighbours: pd.DataFrame
    metric: str


class CrossIndex:
    """Nearest concepts of other terminologies by code, for one run's packed codes (M, N/8) and concept table."""

    def __init__(self, packed: np.ndarray, n_bits: int, concepts: pd.DataFrame, labels: np.ndarray | None = None):
        """`labels` gives each bit's label (N,), as the Bits page shows it; None reads as no label."""
        if len(packed) != len(concepts):
            raise DataError(f"the codes have {len(packed)} rows but the concept table {len(concepts)}.")
        self.packed, self.n_bits = packed, n_bits
        self.concepts = concepts.reset_index(drop=True)
        self.sources = self.concepts["source"].fillna("").astype(str).to_numpy() if "source" in concepts else None
        self.labels = labels
        self.firing_rate = bit_counts(packed, n_bits) / max(len(packed), 1)  # (N,) share of all concepts
        self.rows_by_id = pd.Index(self.concepts["id"].astype(str))
        self._indexes: dict[str, tuple[np.ndarray, CodeIndex]] = {}

    @property
    def terminologies(self) -> tuple[str, ...]:
        return () if self.sources is None else tuple(sorted(set(self.sources)))

    def index_for(self, source: str) -> tuple[np.ndarray, CodeIndex]:
        """(rows, index) over every row of another source than `source`, built once."""
        if source not in self._indexes:
            rows = np.flatnonzero(self.sources != source)
            self._indexes[source] = rows, CodeIndex(np.asarray(self.packed[rows]), self.n_bits)
        return self._indexes[source]

    def neighbours(self, concept_id: str, k: int = 10, metric: str = "jaccard") -> AcrossView:
        """The `k` concepts of the other terminologies nearest `concept_id` by code, each with the bits it shares.

        A data set of one terminology, or an unknown concept, raises a DataError sentence.
        """
        check_metric(metric)
        if len(self.terminologies) < 2:
            held = self.terminologies[0] if self.terminologies else "no named terminology"
            raise DataError(
                f"this data set holds one terminology ({held}); nearest concepts across terminologies need a data "
                "set that joins two, such as hpo-icd10cm."
            )
        try:
            row = int(self.rows_by_id.get_loc(str(concept_id)))
        except KeyError:
            raise DataError(f"no concept with id {concept_id!r} in this run's dataset.") from None
        source = self.sources[row]
        rows, index = self.index_for(source)
        query = np.asarray(self.packed[row : row + 1])
        found, distances = index.search(query, k, metric=metric)
        neighbour_rows = rows[found[0]]
        own = np.flatnonzero(unpack_bits(query, self.n_bits)[0])
        theirs = unpack_bits(np.asarray(self.packed[neighbour_rows]), self.n_bits)[:, own].astype(bool)  # (k, |own|)
        table = self.concepts.iloc[neighbour_rows][[c for c in SHOWN_COLUMNS if c in self.concepts]]
        table = table.reset_index(drop=True).assign(
            distance=distances[0],
            shared=theirs.sum(axis=1),
            shared_bits=[tuple(int(bit) for bit in own[hit]) for hit in theirs],
            specific_bits=[tuple(int(b) for b in own[hit] if self.firing_rate[b] <= COMMON) for hit in theirs],
        )
        return AcrossView(
            concept_id=str(concept_id),
            name=str(self.concepts["name"].iloc[row]),
            source=source,
            others=tuple(s for s in self.terminologies if s != source),
            bits=pd.DataFrame(
                {"bit": own, "label": [self.label_of(bit) for bit in own], "firing_rate": self.firing_rate[own]}
            ),
            neighbours=table,
            metric=metric,
        )

    def label_of(self, bit: int) -> str:
        if self.labels is None:
            return ""
        label = self.labels[int(bit)]
        return label if isinstance(label, str) else ""


def shared_bits_text(view: AcrossView, shared_bits: tuple[int, ...]) -> str:
    """ "405 (Seizure, ...), 561 (...)": shared bits with their labels, as a table cell reads them."""
    labels = dict(zip(view.bits["bit"], view.bits["label"], strict=True))
    return ", ".join(f"{bit} ({labels[bit]})" if labels.get(bit) else str(bit) for bit in shared_bits)


def describe_across(view: AcrossView) -> str:
    """The command line's listing: the concept's bits, then each neighbour with its shared bits and labels."""
    others = ", ".join(view.others)
    lines = [f"{view.name} ({view.concept_id}, {view.source}): {len(view.bits)} active bits"]
    lines += [
        f"  bit {row.bit:>5}  {row.label or 'no clear label'}  (fires for {row.firing_rate:.1%} of concepts)"
        for row in view.bits.itertuples()
    ]
    lines.append(
        f"  nearest {len(view.neighbours)} concepts of {others} by code ({view.metric} distance); shared bits "
        f"firing for at most {COMMON:.0%} of all concepts listed with their labels:"
    )
    for row in view.neighbours.itertuples():
        common = row.shared - len(row.specific_bits)
        lines.append(
            f"    {row.id}  {row.name}  {row.distance:.3f}  shares {row.shared} of {len(view.bits)} bits: "
            + (shared_bits_text(view, row.specific_bits) or "no specific bit")
            + (f"; and {common} common bit(s)" if common else "")
        )
    return "\n".join(lines)
