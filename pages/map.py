"""Map: a 2-D UMAP of a dataset (computed once, cached on disk), coloured by category, active bits or one bit."""

import streamlit as st

from pages import _shared
from sparsebin import charts, soundness
from sparsebin.projection import SAMPLE_ROWS, load_projection, projection_status, start_projection

st.title("Map")
name = _shared.pick_dataset("map_dataset")
if name is None:
    st.stop()
data = _shared.dataset(name)
coordinates = load_projection(data.path)
if coordinates is None:
    start_projection(data.embeddings, data.path)

    @st.fragment(run_every=2)
    def wait_for_map() -> None:
        status = projection_status(data.path) or {}
        if status.get("state") == "failed":
            st.error(f"The map could not be computed: {status['error']}")
        elif status.get("state") == "done":
            st.rerun()
        else:
            stage, elapsed = status.get("stage", "starting"), status.get("elapsed_s", 0)
            text = f"Computing the UMAP map of {name} (once per dataset): {stage}, {elapsed:.0f} s"
            st.progress(status.get("done", 0) / status.get("total", 1), text=text)

    wait_for_map()
    st.stop()

if len(coordinates) > SAMPLE_ROWS:
    st.caption(
        f"UMAP was fitted on a seeded sample of {SAMPLE_ROWS:,} of the {len(coordinates):,} concepts; "
        "every other concept is drawn at the place of its nearest sampled concept by cosine."
    )
else:
    st.caption(f"UMAP was fitted on all {len(coordinates):,} concepts.")
runs = _shared.runs(name)
modes = ["category", "active bits", "one bit"] if len(runs) else ["category"]
mode = st.radio("Colour by", modes, horizontal=True, key="map_colour")
colour = "category"
points = data.concepts[["id", "name", "category"]].assign(x=coordinates[:, 0], y=coordinates[:, 1])
points["category"] = points["category"].fillna("(none)").astype(str)
if mode != "category":
    titles = dict(zip(runs["run_id"], (_shared.run_title(row) for _, row in runs.iterrows()), strict=True))
    opening = soundness.default_run_position(runs)  # the newest run whose codes did not collapse
    run_id = st.selectbox("Run", list(titles), index=opening, format_func=titles.get, key="map_run")
    _shared.warn_run(runs[runs["run_id"] == run_id].iloc[0])
    if mode == "active bits":
        colour = "active bits"
        points[colour] = _shared.active_counts(run_id)
    else:
        n_bits = int(runs.loc[runs["run_id"] == run_id, "n_bits"].iloc[0])
        bit = int(st.number_input("Bit", 0, n_bits - 1, 0, key="map_bit"))
        colour = f"bit {bit} fires"
        points[colour] = _shared.bit_column(run_id, n_bits, bit)
st.plotly_chart(charts.concept_map(points, colour, continuous=colour != "category"), key="map_chart")
