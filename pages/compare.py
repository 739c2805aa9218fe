"""Compare: pick finished runs, see every setting and metric side by side, the seven answers and the report."""

import time

import streamlit as st

from pages import _across, _shared, _yardsticks
from sparsebin import charts
from sparsebin.interpret.comparison import REPLICATE, comparison_key, epoch_curves, grid_groups, with_settings
from sparsebin.interpret.questions import answer_questions, default_run
from sparsebin.interpret.report import EPOCH_CURVES, report_for_store
from sparsebin.interpret.tables import EVERY_GROUP, ablation_tables, runs_shown, shown, with_figures
from sparsebin.progress import CURVES

ALWAYS = ["dataset", "n_bits", "k", "epochs", "seed"]  # shown even where the picked runs agree
COLOURS = {column.metric: column.header for group in EVERY_GROUP for column in group.columns if not column.over_seeds}


def pick_submission(ids_of) -> None:
    """Set the run picker to every run of the chosen submission (runs queued together share created_at)."""
    st.session_state["compare_runs"] = ids_of[st.session_state["compare_submission"]]


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
submissions = {
    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))} · {len(group)} runs · jobs "
    f"{group['job_id'].min()}-{group['job_id'].max()}": list(group["run_id"])
    for created, group in table.groupby("created_at", sort=False)
}
left, right = st.columns([3, 1])
left.selectbox("Submission (runs queued together, e.g. a grid or a study)", list(submissions), key="compare_submission")
right.button("Pick all its runs", key="pick_submission", on_click=pick_submission, args=(submissions,))
picked = st.multiselect("Runs", list(titles), default=list(titles)[:4], format_func=titles.get, key="compare_runs")
picked = [run_id for run_id in picked if run_id in titles]
if not picked:
    st.stop()
labelled = with_settings(table[table["run_id"].isin(picked)])  # the runs' own labels name their settings
runs = labelled.assign(label=labelled["run_id"].map(titles))
metrics = {titles[run_id]: _shared.evaluated_metrics(run_id)[1] for run_id in picked}

settings = ALWAYS + [c for c in comparison_key() if c not in ALWAYS and runs[c].astype(str).nunique() > 1]
st.dataframe(runs_shown(runs, settings), key="compare_table")
st.caption(
    "Settings: those that tell the picked runs apart (the comparison key), plus dataset, N, K, epochs and seed. "
    "val = the held-out validation part; bit health counts over all rows (silent: on held-out rows, beside the "
    "count expected by chance for bits of the same sizes); recall: held-out queries searched against every row, "
    "ties counted fairly; asymmetric: the dense query against each stored code read back through the decoder, by "
    "cosine; not measured: the run was measured before the figure existed."
)
with st.expander("The picked runs in the report's tables (settings pooled over training seeds)"):
    for ablation_table in ablation_tables(labelled):
        st.markdown(f"**{ablation_table.ablation.title}**")
        if not ablation_table.blocks:
            st.caption(ablation_table.ablation.missing)
        for number, block in enumerate(ablation_table.blocks):
            if block.setting:
                st.caption(f"At {block.setting}:")
            frame = shown(block, ablation_table.ablation)
            st.dataframe(frame, hide_index=True, key=f"table_{ablation_table.ablation.title}_{number}")
measured = runs["recall_at_10_hamming"].notna()
outdated = int((runs["recall_at_10_asymmetric"].isna() & measured).sum())
uncoded = int((runs["bits_elias_fano"].isna() & measured).sum())
missing = []
if outdated:
    missing.append(
        f"{outdated} show no asymmetric recall: they were measured before it was the cosine (as a plain sum "
        "through the decoder, or not at all)"
    )
if uncoded:
    missing.append(f"{uncoded} show no Elias-Fano size: they were measured before it existed")
if missing:
    st.caption(
        f"Of the {len(runs)} picked runs, {'; '.join(missing)}. `python -m sparsebin remeasure` measures them "
        "again by today's definitions, keeping their model, codes and split."
    )
left, right = st.columns(2)
metric = left.selectbox("Curve", list(CURVES), format_func=CURVES.get, key="curve_metric")
by_id = {run_id: _shared.run_history(run_id) for run_id in picked}
histories = {titles[run_id]: history for run_id, history in by_id.items()}
left.plotly_chart(charts.training_curves(histories, metric), key="curves_chart")
for column, (curve, name) in zip((right, left), EPOCH_CURVES.items(), strict=True):
    bands = epoch_curves(labelled, by_id, curve)
    if bands:
        column.plotly_chart(charts.seed_bands(bands, CURVES.get(curve, curve)), key=f"band_{curve}")
    else:
        column.caption(f"No {name} per epoch in the picked runs' history (runs trained before it was logged).")
k = runs["k"].iloc[0] if runs["k"].nunique() == 1 else None
histograms = {label: values["active_histogram"] for label, values in metrics.items()}
right.plotly_chart(charts.active_histograms(histograms, k=k), key="active_chart")
firing = {label: values["log10_firing_histogram"] for label, values in metrics.items()}
left.plotly_chart(charts.firing_histograms(firing), key="firing_chart")
right.plotly_chart(charts.bit_health_bars(runs), key="dead_chart")
left.plotly_chart(charts.recon_vs_active(runs), key="trade_chart")
with right:
    axes = [axis for axis in charts.grid_axes(runs, settings) if axis != REPLICATE]
    if len(axes) < 2:
        st.info("The picked runs vary in fewer than two settings; pick the runs of a grid (e.g. N x K) for a heatmap.")
    else:
        x, y, value = st.columns(3)
        x_axis = x.selectbox("x", axes, key="grid_x")
        y_axis = y.selectbox("y", [axis for axis in axes if axis != x_axis], key="grid_y")
        colour = value.selectbox("colour", list(COLOURS), format_func=COLOURS.get, key="grid_metric")
        groups = grid_groups(with_figures(runs), x_axis, y_axis)
        if not groups:
            st.info(f"No picked runs differ only in {x_axis} and {y_axis} (and the seed), so no heatmap pools them.")
        else:
            chosen = st.selectbox(
                "Runs equal in every other setting",
                range(len(groups)),
                format_func=lambda place: f"{groups[place].setting} ({len(groups[place].runs)} runs)",
                key="grid_group",
            )
            group = groups[chosen]
            st.plotly_chart(
                charts.grid_heatmap(group.runs, x_axis, y_axis, colour, replicate=REPLICATE), key="grid_chart"
            )
            st.caption(
                f"Each cell: the mean over training seeds of runs equal in every other setting ({group.setting}); "
                f"{len(groups) - 1} other group(s) of the picked runs are not pooled with them."
            )

st.subheader("What the picked runs say about the method's seven questions")
default, why = default_run(runs)
named_id = st.selectbox(
    f"Questions 4-6 describe (default: {why})",
    picked,
    index=picked.index(default["run_id"]),
    format_func=titles.get,
    key="named_run",
)
named = runs[runs["run_id"] == named_id].iloc[0]
depth = _shared.depth_analysis(named_id, named["dataset"])
bits = _shared.bit_table(named_id, named["dataset"])
split, _ = _shared.evaluated_metrics(named_id)
named_metrics = _shared.run_metrics(named_id)
sign, sign_equal = named_metrics.get(f"sign_{split}"), named_metrics.get(f"sign_{split}_equal_storage")
known = _shared.runs(done_only=False)  # every run held, picked or not: nothing to queue repeats one
hierarchy = _across.hierarchies(runs, named_id)  # Question 7, every picked run
yardsticks = _yardsticks.baselines(named)  # Question 4's strongest baselines, None until measured
answers = answer_questions(
    runs,
    named=named,
    sign=sign,
    sign_equal=sign_equal,
    depth=depth,
    bits=bits,
    known=known,
    hierarchy=hierarchy,
    baselines=yardsticks,
)
text, chart = st.columns([3, 2])
for answer in answers:
    text.markdown(f"**{answer.number}. {answer.question}**  \n{answer.answer}")
chart.plotly_chart(charts.depth_chart(depth.per_depth), key="depth_chart")
needed = list({(plan.dataset, plan.config): plan for answer in answers for plan in answer.to_queue}.values())
if needed and st.button(f"Queue the {len(needed)} runs these answers need", key="queue_needed"):
    for dataset in sorted({plan.dataset for plan in needed}):
        mine = [plan for plan in needed if plan.dataset == dataset]
        _shared.store().submit_many(dataset, [plan.config for plan in mine], [plan.label for plan in mine])
    st.success(f"Queued {len(needed)} runs; they appear here once finished.")

_yardsticks.section(runs, named, yardsticks)

st.subheader("Report")
wanted = (tuple(sorted(picked)), named_id)  # a report is offered only for the runs it was built from
if st.button("Build the report of the picked runs", key="build_report"):
    st.session_state["report"] = (wanted, report_for_store(_shared.store(), runs, named_id))
built, report = st.session_state.get("report", (None, None))
if report is not None and built == wanted:
    st.download_button("report.html (self-contained)", report.html, "report.html", "text/html", key="report_html")
    st.download_button("report.md", report.markdown, "report.md", "text/markdown", key="report_md")
    st.download_button("table.csv", report.table.to_csv(index=False), "table.csv", "text/csv", key="report_csv")
