"""Compare: pick finished runs, see their metrics, curves and histograms side by side."""

import streamlit as st

from pages import _shared
from sparsebin import charts
from sparsebin.interpret.questions import answer_questions
from sparsebin.jobs.queue import CONFIG_COLUMNS, SUMMARY_METRICS

METRICS = list(SUMMARY_METRICS)
SETTINGS = list(CONFIG_COLUMNS)

st.title("Compare")
table = _shared.runs()
if not len(table):

    def waiting() -> None:
        _shared.build_banner("Compare fills in once a run has finished.")
        st.info("No finished run yet. Queue some on the Train page.")

    _shared.live_section(waiting, "compare_waiting")  # reruns the page when a run finishes
    st.stop()
filters = st.columns(4)
for column, setting in zip(filters, ["dataset", "loss", "rounding", "sparsity"], strict=True):
    chosen = column.multiselect(setting, sorted(table[setting].unique()), key=f"filter_{setting}")
    table = table[table[setting].isin(chosen)] if chosen else table
titles = dict(zip(table["run_id"], (_shared.run_title(row) for _, row in table.iterrows()), strict=True))
picked = st.multiselect("Runs", list(titles), default=list(titles)[:4], format_func=titles.get, key="compare_runs")
if not picked:
    st.stop()
runs = table[table["run_id"].isin(picked)].assign(label=lambda frame: frame["run_id"].map(titles))
metrics = {titles[run_id]: _shared.evaluated_metrics(run_id)[1] for run_id in picked}

shown = runs.set_index("label")[SETTINGS + METRICS].T
st.dataframe(shown.map(lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)), key="compare_table")
left, right = st.columns(2)
metric = left.selectbox("Curve", ["loss", "rec_loss", "sp_loss", "active_mean", "dead_bits"], key="curve_metric")
histories = {titles[run_id]: _shared.run_history(run_id) for run_id in picked}
left.plotly_chart(charts.training_curves(histories, metric), key="curves_chart")
k = runs["k"].iloc[0] if runs["k"].nunique() == 1 else None
histograms = {label: values["active_histogram"] for label, values in metrics.items()}
right.plotly_chart(charts.active_histograms(histograms, k=k), key="active_chart")
firing = {label: values["log10_firing_histogram"] for label, values in metrics.items()}
left.plotly_chart(charts.firing_histograms(firing), key="firing_chart")
right.plotly_chart(charts.dead_dense_bars(runs), key="dead_chart")
left.plotly_chart(charts.recon_vs_active(runs), key="trade_chart")
with right:
    axes = charts.grid_axes(runs, SETTINGS)
    if len(axes) < 2:
        st.info("The picked runs vary in fewer than two settings; pick the runs of a grid (e.g. N x K) for a heatmap.")
    else:
        x, y, value = st.columns(3)
        x_axis = x.selectbox("x", axes, key="grid_x")
        y_axis = y.selectbox("y", [axis for axis in axes if axis != x_axis], key="grid_y")
        colour = value.selectbox("colour", METRICS, key="grid_metric")
        st.plotly_chart(charts.grid_heatmap(runs, x_axis, y_axis, colour), key="grid_chart")

st.subheader("What the picked runs say about the method's six questions")
first = runs.iloc[0]
st.caption(f"Questions 4 (sign baseline), 5 and 6 use the first picked run: {first['label']}.")
depth = _shared.depth_analysis(first["run_id"], first["dataset"])
bits = _shared.bit_table(first["run_id"], first["dataset"])
split, _ = _shared.evaluated_metrics(first["run_id"])
first_metrics = _shared.run_metrics(first["run_id"])
sign, sign_equal = first_metrics.get(f"sign_{split}"), first_metrics.get(f"sign_{split}_equal_storage")
text, chart = st.columns([3, 2])
for answer in answer_questions(runs, sign=sign, sign_equal=sign_equal, depth=depth, bits=bits, sign_run=first["label"]):
    text.markdown(f"**{answer.number}. {answer.question}**  \n{answer.answer}")
chart.plotly_chart(charts.depth_chart(depth.per_depth), key="depth_chart")
