"""sparsebin's Streamlit app: `streamlit run app.py`.

Registers the pages and does the server's start-up, once per server process:
the background worker and a thread that preloads the newest runs (set
SPARSEBIN_NO_WORKER=1 to skip both, as the tests do) and, on a first start
with no dataset, the built-in dataset builds.
"""

import logging
import os
import threading

import streamlit as st

from sparsebin.datasets import BUILTIN_DATASETS, build_status, list_datasets, start_build


@st.cache_resource
def first_start() -> dict:
    return {"chain": False}  # True once this server process started the first built-in build itself


def build_builtins_on_first_start() -> None:
    """With no dataset at all, build `hpo` in the background, then `icd10cm` after it.

    Runs first of all, before the pages' imports and the worker's start, so the
    first build begins within a second or two of the first page view; it runs at
    full priority (nothing can train before a dataset exists), icd10cm after it at
    the background builds' low priority. Only a chain this server began continues
    to icd10cm, so a user who built hpo alone (or removed icd10cm) is not handed a
    98k-concept build unasked.
    """
    present = {item["name"] for item in list_datasets()}
    statuses = {name: build_status(name) for name in BUILTIN_DATASETS}
    first, second = BUILTIN_DATASETS
    if not present and all(status is None for status in statuses.values()):
        start_build(first, niceness=0)
        first_start()["chain"] = True
    elif first_start()["chain"] and first in present and statuses[second] is None:
        start_build(second)
        first_start()["chain"] = False


build_builtins_on_first_start()

from pages import _shared  # noqa: E402  (after the build's start: these imports take seconds on a first view)
from sparsebin import paths  # noqa: E402
from sparsebin.jobs.launch import WorkerStart, ensure_worker  # noqa: E402

st.set_page_config(page_title="sparsebin", page_icon=":material/grid_on:", layout="wide")


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


if os.environ.get("SPARSEBIN_NO_WORKER") != "1":
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
