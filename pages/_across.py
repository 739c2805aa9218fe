"""Question 7's figures for the Compare page, and the Concepts page's "Across terminologies" section."""

import pandas as pd
import streamlit as st

from pages import _shared
from sparsebin.errors import DataError, RunFileError
from sparsebin.interpret.comparison import run_name
from sparsebin.interpret.crossing import COMMON, CrossIndex, shared_bits_text
from sparsebin.interpret.hierarchy import RunHierarchy, run_hierarchy


@st.cache_data(max_entries=64, show_spinner="Comparing each concept's bits with its parent's…")
def _hierarchy(run_id: str, dataset_name: str, with_sign: bool) -> RunHierarchy | None:
    dataset = _shared.dataset(dataset_name)
    try:
        return run_hierarchy(
            _shared.store().run_folder(run_id), dataset.concepts, dataset.embeddings if with_sign else None
        )
    except (DataError, RunFileError):
        return None  # no parents column, or a run whose codes do not match: Question 7 leaves it out


def hierarchies(runs: pd.DataFrame, named_id: str) -> dict[str, RunHierarchy]:
    """Question 7's figures of each picked run, keyed by run name (a repeated name gains its id's end); the
    named run's with its sign baseline. Cached on the page and in each run folder's hierarchy.json."""
    names = [run_name(run) for _, run in runs.iterrows()]
    found = {}
    for name, (_, run) in zip(names, runs.iterrows(), strict=True):
        result = _hierarchy(run["run_id"], run["dataset"], run["run_id"] == named_id)
        if result is not None:
            found[name if names.count(name) == 1 else f"{name} · {run['run_id'][-6:]}"] = result
    return found


@st.cache_resource(max_entries=2)
def _cross_index(run_id: str, dataset_name: str) -> CrossIndex:
    context = _shared.run_context(run_id, dataset_name)
    labels = _shared.bit_table(run_id, dataset_name)["label"].to_numpy()
    return CrossIndex(context.codes, context.n_bits, context.concepts, labels)


def across_section(run: pd.Series, concept_id: str) -> None:
    """A concept's nearest concepts of the other terminologies by code, on a dataset joining more than one."""
    concepts = _shared.run_context(run["run_id"], run["dataset"]).concepts
    if "source" not in concepts or concepts["source"].nunique() < 2:
        return
    st.subheader("Across terminologies")
    view = _cross_index(run["run_id"], run["dataset"]).neighbours(concept_id, k=10, metric="jaccard")
    table = view.neighbours.assign(
        specific=[shared_bits_text(view, bits) for bits in view.neighbours["specific_bits"]],
    ).drop(columns=["shared_bits", "specific_bits"])
    st.dataframe(table, hide_index=True, key="across_neighbours")
    st.caption(
        f"The 10 concepts of {', '.join(view.others)} nearest {view.name} ({view.source}) by Jaccard distance over "
        f"the stored codes of all rows; shared: how many of its {len(view.bits)} active bits each also fires; "
        f"specific: the shared bits firing for at most {COMMON:.0%} of all concepts, with their labels."
    )
