"""Concepts: find a concept by name or id, or type any phrase; its active bits and its neighbours by code and by
embedding."""

import streamlit as st

from pages import _shared
from sparsebin.errors import PhraseError, SparsebinError
from sparsebin.interpret import interventions
from sparsebin.interpret.bits import find_concepts
from sparsebin.interpret.ontology import readable_q

st.title("Concepts")
run = _shared.pick_run("concepts_run")
if run is None:
    st.stop()
context = _shared.run_context(run["run_id"], run["dataset"])
mode = st.radio("Look up", ["a concept", "any phrase"], horizontal=True, key="lookup_mode")
metric = st.radio("Code distance", ["jaccard", "hamming"], horizontal=True, key="concept_metric")
SCORES = (  # the Bits page's figures, from the same bit table
    "Each bit's label and scores as on the Bits page: corrected coherence is precision above chance minus its mean "
    "for random sets of the bit's size (about 0 at random); q the category's enrichment, corrected across bits."
)


def neighbours(view) -> None:
    code, dense = st.columns(2)
    code.markdown(f"**Nearest concepts by code** ({metric} distance)")
    code.dataframe(view.code_neighbours, hide_index=True, key="code_neighbours")
    dense.markdown("**Nearest concepts by dense embedding** (cosine)")
    dense.dataframe(view.dense_neighbours, hide_index=True, key="dense_neighbours")


if mode == "any phrase":
    phrase = st.text_input("Phrase", key="phrase", placeholder="e.g. recurrent febrile seizures in infancy")
    if not phrase.strip():
        st.info("Type any phrase; it is embedded with the dataset's own model, on this machine.")
        st.stop()
    try:
        view = _shared.phrase_view(run["run_id"], run["dataset"], phrase, metric)
    except PhraseError as error:
        st.error(str(error))
        st.stop()
    st.markdown(f"**{len(view.active_bits)} active bits** for {view.phrase!r}")
    st.dataframe(readable_q(view.active_bits), hide_index=True, placeholder="—", key="phrase_bits")
    st.caption(SCORES)
    neighbours(view)
    count = len(view.dense_neighbours)
    st.caption(f"The two lists share {view.shared} of their {count} concepts ({view.overlap:.0%}).")
    st.stop()

query = st.text_input("Search by name or id", value=st.query_params.get("concept", ""), key="concept_query")
if not query.strip():
    st.info("Type part of a concept's name (e.g. 'seizure') or its id.")
    st.stop()
found = find_concepts(context.concepts, query, limit=20)
if not len(found):
    st.warning(f"No concept matches {query!r}.")
    st.stop()
names = dict(zip(found["id"].astype(str), found["name"], strict=True))
concept_id = st.selectbox("Concept", list(names), format_func=lambda key: f"{names[key]} ({key})", key="concept_pick")
view = _shared.concept_view(run["run_id"], run["dataset"], concept_id, metric)
concept = view.concept
st.subheader(f"{concept.name} ({concept.id})")
st.caption(f"{concept.category or ''} · depth {concept.depth if concept.depth >= 0 else '-'}")
if concept.definition:
    st.write(concept.definition)
st.markdown(f"**{len(view.active_bits)} active bits**")
st.dataframe(readable_q(view.active_bits), hide_index=True, placeholder="—", key="active_bits")
st.caption(SCORES)
if len(view.active_bits):
    strongest = view.active_bits.iloc[0]
    link = {"run": run["run_id"], "bit": str(int(strongest["bit"]))}
    st.page_link(
        "pages/bits.py",
        label=f"Open its strongest bit, {int(strongest['bit'])}, on the Bits page",
        icon=":material/memory:",
        query_params=link,
    )
neighbours(view)
st.caption(f"The two neighbour lists share {view.overlap:.0%} of their concepts.")


@st.cache_data(max_entries=64)
def edit(run_id: str, dataset_name: str, concept_id: str, off: tuple, on: tuple) -> interventions.Edit:
    return interventions.edit_code(_shared.run_context(run_id, dataset_name), concept_id, off=off, on=on)


@st.cache_data(max_entries=64)
def bit_query(run_id: str, dataset_name: str, text: str) -> interventions.QueryResult:
    return interventions.query_codes(_shared.run_context(run_id, dataset_name), text)


st.markdown("**Switch bits**: untick an active bit to switch it off, add any other bit to switch it on")
active = [int(bit) for bit in sorted(view.active_bits["bit"])]
kept = st.multiselect("Active bits kept on", active, default=active, key="kept_bits")
added = st.multiselect("Bits switched on", [b for b in range(context.n_bits) if b not in active], key="added_bits")
off = tuple(bit for bit in active if bit not in kept)
if off or added:
    changed = edit(run["run_id"], run["dataset"], concept_id, off, tuple(added))
    st.caption(
        f"Decoded by the run's decoder: {len(changed.bits_before)} active bits before, {len(changed.bits_after)} "
        f"after; cosine between the decoded vectors {changed.cosine:.3f}. Nearest {len(changed.dense_before)} "
        "concepts by cosine of the decoded vector to the dense embeddings, before and after."
    )
    before, after = st.columns(2)
    before.dataframe(changed.dense_before, hide_index=True, key="edit_before")
    after.dataframe(changed.dense_after, hide_index=True, key="edit_after")
    st.markdown("**Gained and lost** (dense: by cosine; code: nearest stored codes by Hamming distance)")
    st.dataframe(changed.changes, hide_index=True, key="edit_changes")

expression = st.text_input("Query by bits", key="bit_query", placeholder="e.g. 405 & 561 & ~12, or (3 | 7) & ~12")
if expression.strip():
    try:
        found_codes = bit_query(run["run_id"], run["dataset"], expression)
    except SparsebinError as error:
        st.error(str(error))
    else:
        st.caption(
            f"{expression!r} read as {found_codes.expression}: {found_codes.count:,} of {found_codes.n_rows:,} "
            f"concepts; the first {len(found_codes.concepts)} by row listed."
        )
        st.dataframe(found_codes.concepts, hide_index=True, key="query_result")

other = st.text_input("Contrast with (id or whole name)", key="contrast_with")
if other.strip():
    try:
        pair = interventions.contrast(context, concept_id, other)
    except SparsebinError as error:
        st.error(str(error))
    else:
        shared, first, second = st.columns(3)
        shared.markdown(f"**{len(pair.shared)} bits both share**")
        shared.dataframe(pair.shared, hide_index=True, key="contrast_shared")
        first.markdown(f"**{len(pair.first_only)} only {pair.first.name} has**")
        first.dataframe(pair.first_only, hide_index=True, key="contrast_first")
        second.markdown(f"**{len(pair.second_only)} only {pair.second.name} has**")
        second.dataframe(pair.second_only, hide_index=True, key="contrast_second")
from pages import _across  # noqa: E402 (the section closes the page)

_across.across_section(run, concept_id)
