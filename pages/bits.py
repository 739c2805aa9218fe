"""Bits: every bit of a run in a sortable table, and one bit's dashboard."""

import math

import pandas as pd
import streamlit as st

from pages import _shared
from sparsebin import charts
from sparsebin.interpret import interventions
from sparsebin.interpret.ontology import format_q, readable_q

st.title("Bits")
run = _shared.pick_run("bits_run")
if run is None:
    st.stop()
table = _shared.bit_table(run["run_id"], run["dataset"])
live = int((table["n_active"] > 0).sum())
st.caption(
    f"{live} of {len(table)} bits fire for at least one concept (over all rows); sort by any column. label: the "
    "ontology node whose concepts best match the bit's (F1, ancestor_f1), with the share of the bit's concepts "
    "under it and the share of its own concepts where the bit fires; corrected coherence: precision above "
    "chance minus its mean for random sets of the bit's size (about 0 at random); q: the category's enrichment "
    "p-value, false-discovery corrected across bits."
)
columns = ["bit", "label", "ancestor_f1", "category", "corrected_coherence", "q_value", "precision", "category_size"]
shown = readable_q(table[[*columns, "n_active", "coherence", "firing_rate"]])
with pd.option_context("styler.render.max_elements", shown.data.size):  # pandas stops a Styler at 262,144 cells
    st.dataframe(shown, hide_index=True, height=260, placeholder="—", key="bit_table")

ranked = _shared.ranked_bits(run["run_id"], run["dataset"])  # cleanest bits firing for 5+ concepts first
wanted = st.query_params.get("bit")
first = int(ranked["bit"].iloc[0]) if len(ranked) else 0
first = int(wanted) if wanted is not None and wanted.isdigit() and int(wanted) < len(table) else first


@st.cache_data(max_entries=64)
def bit_effect(run_id: str, dataset_name: str, bit: int) -> interventions.BitEffect:
    return interventions.bit_effect(_shared.run_context(run_id, dataset_name), bit)


def effect_section(run_id: str, dataset_name: str, bit: int) -> None:
    """What switching the bit off does where it fires, beside its label by firing."""
    st.markdown("**What switching this bit off does**")
    effect = bit_effect(run_id, dataset_name, bit)
    if effect.n_sampled == 0:
        st.caption("It fires for no concept, so switching it off changes nothing.")
        return
    n_rows = len(_shared.run_context(run_id, dataset_name).concepts)
    agree = {True: "agree", False: "differ", None: "cannot be compared"}[effect.agree]
    st.caption(
        f"Switched off in {effect.n_sampled:,} of the {effect.n_active:,} concepts where it fires (a seeded sample of "
        f"at most {interventions.effect_sample_size(n_rows):,} on these {n_rows:,} rows), each code decoded by the "
        f"run's decoder: the decoded vector turns by a mean 1 - cosine of {effect.mean_movement:.4f}, and of its "
        f"{interventions.NEIGHBOURS} nearest concepts by cosine, {effect.n_lost:,} are lost over the sampled concepts."
    )
    st.markdown(
        f"Label by firing: {effect.firing_label or 'none'} (category {effect.firing_category or '-'})  \n"
        f"Label by intervention: {effect.intervention_label or 'none'} (category lost most often: "
        f"{effect.intervention_category or '-'})  \nThe two categories **{agree}**."
    )
    st.dataframe(effect.lost_categories, hide_index=True, key="lost_categories")


@st.fragment  # opening another bit reruns only the dashboard, not the table above
def bit_dashboard(run_id: str, dataset_name: str, n_bits: int, first: int) -> None:
    bit = int(st.number_input("Open bit", 0, n_bits - 1, first, key="bit"))
    st.query_params["bit"] = str(bit)
    profile = _shared.bit_profile(run_id, dataset_name, bit)
    label = profile.label
    corrected = "n/a" if math.isnan(label.corrected_coherence) else f"{label.corrected_coherence:.2f}"  # dead bit
    fit = "" if math.isnan(label.ancestor_f1) else f"; its label matches its concepts with F1 {label.ancestor_f1:.2f}"
    st.subheader(f"Bit {bit}: {label.label or 'no clear label'}")
    st.caption(
        f"Fires for {profile.n_active:,} concepts ({profile.firing_rate:.3%} of all rows); category "
        f"{label.category or '-'} ({label.precision:.0%} of its concepts, category of {label.category_size:,}); "
        f"coherence corrected for chance and size {corrected} (q-value {format_q(label.q_value)}){fit}."
    )
    left, right = st.columns(2)
    left.markdown("**Top concepts** (largest logit)")
    left.dataframe(profile.top_concepts, hide_index=True, key="top_concepts")
    left.markdown("**Concepts at quantiles of the logit**")
    left.dataframe(profile.quantile_concepts, hide_index=True, key="quantile_concepts")
    top = profile.top_concepts
    if len(top):
        with left:
            _shared.concept_link(str(top["id"].iloc[0]), str(top["name"].iloc[0]), run_id)
    if len(profile.enrichment):
        right.plotly_chart(charts.enrichment_chart(profile.enrichment), key="enrichment_chart")
    right.plotly_chart(charts.sigmoid_histogram(profile.sigmoid_edges, profile.sigmoid_counts), key="sigmoid_chart")
    cofiring, decoder = st.columns(2)
    cofiring.markdown("**Bits that fire with it** (Jaccard)")
    cofiring.dataframe(profile.cofiring, hide_index=True, key="cofiring")
    decoder.markdown("**Concepts nearest its decoder direction**")
    decoder.dataframe(profile.decoder_neighbours, hide_index=True, key="decoder_neighbours")
    effect_section(run_id, dataset_name, bit)


bit_dashboard(run["run_id"], run["dataset"], len(table), first)
