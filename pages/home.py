"""Home: what the app is, the datasets, the worker and the latest runs."""

import streamlit as st

from pages import _shared
from sparsebin.jobs.worker import worker_status

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
        st.subheader("Worker")
        worker = worker_status(store=_shared.store())
        if worker is None:
            st.warning("No worker is running; queued runs wait until one starts (`python -m sparsebin worker`).")
        else:
            job = f"training job {worker.job_id}" if worker.job_id else "idle"
            st.success(f"Alive (pid {worker.pid}) on **{worker.device}**, {job}.")
    st.subheader("Latest runs")
    latest = _shared.runs(done_only=False).head(10)
    if len(latest):
        columns = ["label", "dataset", "status", "n_bits", "k", "loss", "rounding", "sparsity"]
        columns += ["recon_loss", "active_mean"]
        st.dataframe(latest[columns], hide_index=True, key="home_runs")
    else:
        st.info("No runs yet. Queue one on the Train page.")


_shared.live_section(status_panel, "home")
