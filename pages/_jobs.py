"""The Train page's job list: redrawn every few seconds while a job runs, only on a change otherwise."""

import streamlit as st

from pages import _shared
from sparsebin import charts
from sparsebin.interpret.comparison import run_name
from sparsebin.jobs.queue import RESUMABLE, Status

LIVE = (Status.QUEUED, Status.RUNNING)


def job_list(limit: int = 20) -> None:
    _shared.live_section(lambda: draw_jobs(limit), "jobs")


def draw_jobs(limit: int) -> None:
    store = _shared.store()
    st.subheader("Jobs")
    jobs = store.jobs(limit=limit)
    if not jobs:
        st.info("No jobs yet.")
    for job in jobs:
        config = job.config
        title = run_name({"label": job.label, **config.to_dict()})
        with st.container(border=True):
            head, actions = st.columns([5, 1])
            head.markdown(f"**#{job.id} {title}** · {job.dataset} · `{job.status.name.lower()}`")
            if job.status in LIVE and actions.button("Cancel", key=f"cancel_{job.id}"):
                store.cancel(job.id)
                st.rerun()
            if job.status in RESUMABLE and actions.button("Resume", key=f"resume_{job.id}"):
                store.resume(job.id)
                st.rerun()
            if job.error:
                head.caption(job.error)
            if job.status == Status.DONE and job.attempts > 1:
                head.caption(f"Finished on attempt {job.attempts}: it was stopped and resumed from its checkpoint.")
            progress = job.progress or {}
            if job.status == Status.RUNNING and progress.get("total_steps"):
                share = min(progress["step"] / progress["total_steps"], 1.0)
                eta = progress.get("eta_s")
                text = f"step {progress['step']} of {progress['total_steps']}, loss {progress.get('loss', 0):.4f}, "
                text += f"{progress.get('active_mean', 0):.1f} active bits" + (
                    f", about {eta:.0f} s left" if eta else ""
                )
                st.progress(share, text=text)
                st.plotly_chart(charts.live_curves(store.history(job.run_id), k=config.k), key=f"curves_{job.id}")
