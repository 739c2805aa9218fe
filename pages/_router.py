"""The app's script body: the page settings, the worker kept alive, the newest runs preloaded, the pages.

app.py runs `run_app` on every page view, after its first-start check; kept
here so that the module app.py is imported as at the server's start stays light.
"""

import logging
import threading

import streamlit as st

from pages import _shared
from sparsebin import paths, startup
from sparsebin.jobs.launch import WorkerStart, ensure_worker


@st.cache_resource(ttl=60)
def keep_worker_alive() -> WorkerStart:
    """Start a worker when none is alive; re-checked at most once a minute."""
    return ensure_worker()


WARM_UP_THREAD = "sparsebin-warm-up"


class QuietWarmUp(logging.Filter):
    """Drops Streamlit's "missing ScriptRunContext" warning for the warm-up thread: it fills the caches
    outside any session on purpose, and the line would greet every server start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != WARM_UP_THREAD


@st.cache_resource
def warm_up(home: str, limit: int = 3) -> threading.Thread:
    """Load the newest finished runs' contexts and bit tables in a thread, so the first Bits or
    Compare page does not wait for them (about 2 s for N=4096 on HPO)."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(QuietWarmUp())

    def work() -> None:
        for _, run in _shared.runs().head(limit).iterrows():
            try:
                _shared.bit_table(run["run_id"], run["dataset"])
            except Exception:  # a damaged run shows its error when a page opens it
                continue

    thread = threading.Thread(target=work, name=WARM_UP_THREAD, daemon=True)
    thread.start()
    return thread


def run_app() -> None:
    st.set_page_config(page_title="sparsebin", page_icon=":material/grid_on:", layout="wide")
    if startup.worker_wanted():
        keep_worker_alive()
        warm_up(str(paths.home_dir()))

    page = st.navigation(
        [
            st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("pages/bits.py", title="Bits", icon=":material/memory:"),
            st.Page("pages/concepts.py", title="Concepts", icon=":material/search:"),
            st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
            st.Page("pages/data.py", title="Data", icon=":material/database:"),
        ]
    )
    page.run()
