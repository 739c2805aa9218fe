"""The Compare page's recall-per-byte section: the picked runs beside the yardsticks of their data set."""

import time

import pandas as pd
import streamlit as st

from pages import _shared
from sparsebin import charts
from sparsebin.errors import DataError, RunFileError
from sparsebin.search import frontier
from sparsebin.search.measuring import measuring_status, start_measuring

SECTION = "Recall per byte: the picked runs beside the yardsticks (Question 4)"


def baselines(named: pd.Series) -> pd.DataFrame | None:
    """The frontier of the named run's yardsticks (its split and queries), None when not measured."""
    try:
        found = frontier.run_yardsticks(_shared.store().run_folder(named["run_id"]), _shared.dataset(named["dataset"]))
    except (DataError, RunFileError, StopIteration):  # StopIteration: the data set is gone
        return None
    return None if found is None else found.frontier


def section(runs: pd.DataFrame, named: pd.Series, measured: pd.DataFrame | None) -> None:
    """The chart and table, or how to measure the yardsticks (a button that does it in the background)."""
    st.subheader(SECTION)
    name = named["dataset"]
    if measured is None:
        _measure(named)
        return
    same = runs[runs["dataset"] == name]
    setup = frontier.run_setup(_shared.store().run_folder(named["run_id"]))
    alike = frontier.measured_like(same, setup, _shared.store().run_folder)
    points = frontier.frontier_points(measured, frontier.run_points(alike))
    title = f"Recall per byte on {name} ({setup.n_queries} held-out queries against every row)"
    st.plotly_chart(charts.frontier_chart(points, title), key="frontier_chart")
    left_out = len(same) - len(alike)
    other = f" {len(runs) - len(same)} picked run(s) on other data sets are not drawn." if len(runs) > len(same) else ""
    split = f" {left_out} picked run(s) of another split or query count are not drawn." if left_out else ""
    st.caption(
        f"Each point: recall@10 of one code and search on the named run's held-out queries, against the bytes per "
        f"vector held in memory (runs: their codes as stored, Elias-Fano coded). Runs are drawn large; the "
        f"dotted line is the Pareto front of one-stage codes. Two-stage rows also read the second store named in "
        f"their storage.{other}{split}"
    )
    with st.expander("Every point of the chart"):
        st.dataframe(
            frontier.in_order(points)[["setting", "search", "storage", "recall_at_10", "ms_per_query", "pareto"]],
            hide_index=True,
            key="frontier_table",
        )


def _measure(named: pd.Series) -> None:
    try:
        folder = _shared.dataset(named["dataset"]).path
    except (DataError, StopIteration):
        st.info(f"The data set {named['dataset']} is not here, so its yardsticks cannot be measured.")
        return
    command = f"python -m sparsebin frontier {named['dataset']} --runs {named['run_id']}"

    def progress() -> None:
        status = measuring_status(folder)
        if status is not None and status["state"] == "finished" and baselines(named) is not None:
            st.rerun()  # the whole page: Question 4 and the chart read the new measurement
        if status is not None and status["state"] == "running":
            started = _shared.duration(time.time() - status["started_at"])
            st.info(f"Measuring the yardsticks of {named['dataset']} in the background (started {started} ago).")
            return
        if status is not None and status["state"] == "failed":
            st.error(f"The last measurement of the yardsticks failed: {status.get('error')}")
        st.info(
            f"The yardsticks of {named['dataset']} (sign-PCA, ITQ, LSH, PQ, OPQ, scalar quantisation, two-stage) "
            f"are not measured at this run's split and queries. Measure them here, or with `{command}`; on HPO "
            "they took 51 minutes on two shared cores, most of it OPQ's training, once per data set and split."
        )
        if st.button("Measure the yardsticks in the background", key="measure_yardsticks"):
            start_measuring(named["dataset"], folder, named["run_id"])
            st.rerun()

    st.fragment(run_every=5)(progress)()
