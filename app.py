"""sparsebin's Streamlit app: `streamlit run app.py`.

Registers the pages and, once per server process, starts the background
worker and a thread that preloads the newest runs (set SPARSEBIN_NO_WORKER=1
to skip both, as the tests do) and, on a first start with no dataset, the
built-in dataset builds.
"""

import os

import streamlit as st

from pages import _shared
from sparsebin import paths
from sparsebin.jobs.worker import ensure_worker

st.set_page_config(page_title="sparsebin", page_icon=":material/grid_on:", layout="wide")


@st.cache_resource(ttl=60)
def keep_worker_alive() -> dict:
    """Start a worker when none is alive; re-checked at most once a minute."""
    return ensure_worker(store=_shared.store())


if os.environ.get("SPARSEBIN_NO_WORKER") != "1":
    keep_worker_alive()
    _shared.warm_up(str(paths.home_dir()))
_shared.build_builtins_on_first_start()

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
