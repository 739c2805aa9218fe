"""Concepts: find a concept by name or id, or type any phrase; its active bits and its neighbours by code and by
embedding."""

import streamlit as st

from pages import _shared
from sparsebin.errors import PhraseError
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
from pages import _across  # noqa: E402 (the section closes the page)

_across.across_section(run, concept_id)
