"""What the app's server does when it starts: the built-in builds on a first start, and the background worker.

`streamlit run app.py` imports app.py once as a module when the server starts
(it finds the `st.App` there) and `server_lifespan` runs then, before any page
is opened: a newcomer's first build is under way while the browser is still
connecting. Every page view also calls `start_first_builds`, which continues
the chain (icd10cm once hpo is ready) and covers a script run without the
server's start-up (AppTest).
"""

import os
import threading
from contextlib import asynccontextmanager

from sparsebin.datasets import BUILTIN_DATASETS, build_status, list_datasets, start_build

_chain = {"started": False}  # True once this process began the first built-in build itself
_lock = threading.Lock()


def start_first_builds() -> None:
    """With no dataset at all, build `hpo` in the background, then `icd10cm` after it.

    The first build runs at full priority (nothing can train before a dataset
    exists), icd10cm after it at the background builds' low priority. Only a
    chain this process began continues to icd10cm, so a user who built hpo
    alone (or removed icd10cm) is not handed a 98k-concept build unasked.
    """
    with _lock:
        present = {item["name"] for item in list_datasets()}
        statuses = {name: build_status(name) for name in BUILTIN_DATASETS}
        first, second = BUILTIN_DATASETS
        if not present and all(status is None for status in statuses.values()):
            start_build(first, niceness=0)
            _chain["started"] = True
        elif _chain["started"] and first in present and statuses[second] is None:
            start_build(second)
            _chain["started"] = False


def worker_wanted() -> bool:
    """False when SPARSEBIN_NO_WORKER=1 (the tests): no background worker, no warm-up."""
    return os.environ.get("SPARSEBIN_NO_WORKER") != "1"


def start_worker() -> None:
    """Start the background worker unless one serves this home (`ensure_worker`)."""
    from sparsebin.jobs.launch import ensure_worker  # imports torch to pick the device: seconds

    ensure_worker()


@asynccontextmanager
async def server_lifespan(app):
    """The server's start-up: the first build at once, the worker in a thread so the server is not held up."""
    start_first_builds()
    if worker_wanted():
        threading.Thread(target=start_worker, name="sparsebin-worker-start", daemon=True).start()
    yield
