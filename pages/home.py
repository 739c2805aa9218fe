"""Home: what the app is, the datasets, who trains the queue and where, and the latest runs."""

import streamlit as st

from pages import _shared
from sparsebin.health import HEALTH_COLUMNS, convergence_word
from sparsebin.jobs.launch import held_worker_locks
from sparsebin.jobs.overview import overview

st.title("sparsebin")
st.markdown(
    "Train **sparse binary codes** from dense biomedical concept embeddings with Binary Sparsity Alignment, "
    "compare runs against their ablations and baselines, and read what each bit means."
)


def status_panel() -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Datasets")
        present = _shared.datasets()
        for item in present:
            st.markdown(f"**{item['name']}**: {item['count']:,} concepts x {item['dim']} dimensions")
        building = _shared.build_banner()
        if not present and building:
            st.info("First start: building the built-in datasets (hpo, then icd10cm) in the background.")
        elif not present:
            st.info("No dataset yet. Build or upload one on the Data page.")
    with right:
        st.subheader("Workers")
        served = overview(_shared.store())
        if not served.services and held_worker_locks(_shared.store().home):
            st.info("A worker is starting; it takes the queued runs once it is up.")
        elif not served.services:
            st.warning("No worker is running; queued runs wait until one starts (`python -m sparsebin worker`).")
        for service in served.services:
            if service.kind == "ray-dispatcher":
                st.success(f"Ray dispatcher alive ({service.name}) on cluster **{service.address}**.")
            else:
                job = f"training job {service.job_id}" if service.job_id else "idle"
                st.success(f"Worker alive ({service.name}) on **{service.device}**, {job}.")
        if served.running:
            st.caption("Running jobs: where each trains (node, device), and the epoch in progress of all epochs.")
            st.dataframe(
                [
                    {
                        "job": job.job_id,
                        "label": job.label,
                        "node": job.node or "waiting for room",
                        "device": job.device or "",
                        "epoch": f"{job.epoch or 0}/{job.epochs}",
                        "served by": job.served_by,
                    }
                    for job in served.running
                ],
                hide_index=True,
                key="home_running",
            )
    st.subheader("Latest runs")
    latest = _shared.runs(done_only=False).head(10)
    if len(latest):
        columns = ["label", "dataset", "status", "n_bits", "k", "loss", "rounding", "sparsity"]
        columns += ["recon_loss", "active_mean", "dead_all_rows", "silent_held_out"]
        shown = latest[columns].rename(columns={"recon_loss": "recon (val)", "active_mean": "active mean (val)"})
        shown = shown.rename(columns=HEALTH_COLUMNS).assign(convergence=latest["converged"].map(convergence_word))
        st.dataframe(shown, hide_index=True, key="home_runs")
    else:
        st.info("No runs yet. Queue one on the Train page.")


_shared.live_section(status_panel, "home")
