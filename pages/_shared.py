"""What the pages share: cached handles on library objects, and the widgets more than one page shows.

Everything heavy is cached per dataset name or run id, so a page's rerun
only renders. Nothing here trains, queries SQL or touches torch directly;
the server's start-up (worker, warm-up, first builds) lives in app.py.
"""

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from sparsebin import paths, runfolder, soundness
from sparsebin.datasets import BUILTIN_DATASETS, build_status, list_datasets, load_dataset
from sparsebin.datasets.status import BUILD_NICENESS, seconds_left
from sparsebin.errors import RunFileError
from sparsebin.interpret import bits as interpret
from sparsebin.interpret import phrases
from sparsebin.interpret.comparison import run_name
from sparsebin.jobs import activity
from sparsebin.jobs.queue import Store
from sparsebin.search import codes


def _run_through_app() -> None:
    """Send a server's very first script run through app.py.

    Until app.py has called st.navigation once, Streamlit treats the `pages/`
    folder as its older multipage layout: a first visit to, say, /train on a
    fresh server runs pages/train.py alone, under a list of every file in
    pages/, and never starts the worker. Leaving that mode and rerunning the
    same URL runs app.py, whose navigation then opens the page asked for.
    Every page imports this module, so the check runs in that first run.
    """
    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


_run_through_app()


@st.cache_resource
def _store(home: str) -> Store:
    return Store(home)


def store() -> Store:
    return _store(str(paths.home_dir()))


def datasets() -> list[dict]:
    return list_datasets()


@st.cache_resource(max_entries=4)
def _dataset(folder: str, built_at: str | None):
    return load_dataset(folder)


def dataset(name: str):
    """The loaded dataset (embeddings memory-mapped), reloaded only when it is rebuilt."""
    summary = next(item for item in list_datasets() if item["name"] == name)
    return _dataset(str(summary["path"]), summary.get("built_at"))


@st.cache_resource(max_entries=4)
def run_context(run_id: str, dataset_name: str):
    return interpret.RunContext.load(store().run_folder(run_id), dataset(dataset_name))


def bit_table(run_id: str, dataset_name: str) -> pd.DataFrame:
    """Every bit's label and scores; computed once and kept on the cached run context."""
    return interpret.bit_table(run_context(run_id, dataset_name))


def ranked_bits(run_id: str, dataset_name: str) -> pd.DataFrame:
    return interpret.rank_bits(run_context(run_id, dataset_name))


def runs(dataset_name: str | None = None, done_only: bool = True) -> pd.DataFrame:
    table = store().list_runs(dataset_name)
    return table[table["status"] == "done"] if done_only else table


def run_title(run: pd.Series) -> str:
    """The run's name (label or settings), its dataset and the end of its id, which tells repeats apart."""
    return f"{run_name(run)} · {run['dataset']} · {run['run_id'][-6:]}"


def pick_run(key: str = "run", table: pd.DataFrame | None = None) -> pd.Series | None:
    """A select box of finished runs (newest first) and the picked run's warnings (`warn_run`).

    The `run` query parameter preselects one; without it the box opens on the
    newest run whose codes did not collapse (`soundness.default_run_position`).
    """
    table = runs() if table is None else table
    if not len(table):
        st.info("No finished run yet. Queue one on the Train page.")
        return None
    ids = table["run_id"].tolist()
    wanted = st.query_params.get("run")
    index = ids.index(wanted) if wanted in ids else soundness.default_run_position(table)
    titles = dict(zip(ids, (run_title(row) for _, row in table.iterrows()), strict=True))
    run_id = st.selectbox("Run", ids, index=index, format_func=titles.get, key=key)
    st.query_params["run"] = run_id
    run = table[table["run_id"] == run_id].iloc[0]
    warn_run(run)
    return run


def warn_run(run: pd.Series) -> None:
    """A warning above a run whose codes collapsed or whose training did not converge."""
    try:
        convergence = run_metrics(run["run_id"]).get("convergence")
    except RunFileError:
        convergence = None
    for sentence in soundness.run_warnings(run, convergence):
        st.warning(sentence, icon="⚠️")


def pick_dataset(key: str = "dataset") -> str | None:
    names = [item["name"] for item in datasets()]
    if not names:
        building = [name for name in BUILTIN_DATASETS if (build_status(name) or {}).get("state") == "running"]
        if building:
            st.info(f"No dataset yet: {building[0]} is being built (above); this form opens as soon as it is ready.")
        else:
            st.info("No dataset yet. Build one on the Data page.")
        return None
    return st.selectbox("Dataset", names, key=key)


LIVE_EVERY = 2.0  # seconds between redraws of a live section while a job or a build runs
IDLE_EVERY = 10.0  # seconds between looks at the change marker while nothing runs


def live_section(body, key: str) -> None:
    """Draw `body()`, and keep it current without redrawing it while nothing happens.

    While a job or a build runs, the section is a fragment redrawn every
    LIVE_EVERY seconds. Otherwise it is drawn once, and a fragment that draws
    nothing looks at the cheap change marker (`sparsebin.jobs.activity`) every
    IDLE_EVERY seconds and reruns the page only when something changed. A live
    section whose job or build ends, or whose datasets change, reruns the page
    too, so the page switches between the two modes by itself.
    """
    seen = activity.current(store())
    if seen.live:

        def live() -> None:
            body()
            if activity.current(store()).shape != seen.shape:
                st.rerun()

        live.__qualname__ = f"live_{key}"  # one fragment per section, whatever the page
        st.fragment(run_every=LIVE_EVERY)(live)()
        return
    body()

    def watch() -> None:
        if activity.current(store()).marker != seen.marker:
            st.rerun()

    watch.__qualname__ = f"watch_{key}"
    st.fragment(run_every=IDLE_EVERY)(watch)()


def build_progress(name: str) -> bool:
    """Show a build's progress bar with its estimate; True while it runs."""
    status = build_status(name)
    if status is None:
        return False
    if status["state"] == "running":
        total = status.get("total") or 0
        if not total:
            st.progress(0.0, text=f"Building {name}: reading the ontology and loading the language model")
            return True
        left = seconds_left(status)
        estimate = f", about {duration(left)} left" if left is not None else ""
        text = f"Building {name}: {status['done']:,} of {total:,} concepts embedded{estimate}"
        st.progress(min(status["done"] / total, 1.0), text=text)
        return True
    if status["state"] == "failed":
        st.error(f"The build of {name} failed: {status.get('error')}")
    return False


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def build_banner(waiting_for: str = "") -> bool:
    """The progress of running built-in builds, saying they yield to training; True while one runs.

    `waiting_for` adds what the page offers once the first dataset is ready.
    """
    running = [name for name in BUILTIN_DATASETS if build_progress(name)]
    if running:
        priorities = {(build_status(name) or {}).get("niceness", BUILD_NICENESS) for name in running}
        if priorities == {0}:
            note = "This first build runs at full priority: nothing can train before a dataset exists."
        else:
            note = "Builds run at low priority (nice 10): a run you queue trains at full speed meanwhile."
        st.caption(f"{waiting_for} {note}".strip())
    return bool(running)


def run_metrics(run_id: str) -> dict:
    """A finished run's metrics.json; read again when `remeasure` has rewritten it."""
    path = store().run_folder(run_id) / "metrics.json"
    return _run_metrics(run_id, path.stat().st_mtime_ns if path.exists() else 0)  # 0: load_metrics says why


@st.cache_data(max_entries=64)
def _run_metrics(run_id: str, written_ns: int) -> dict:
    return runfolder.load_metrics(store().run_folder(run_id))


def evaluated_metrics(run_id: str) -> tuple[str, dict]:
    """The split a run was judged on and its metrics: validation, or train when nothing was held out."""
    return runfolder.evaluated_part(run_metrics(run_id))


@st.cache_data(max_entries=64)
def run_history(run_id: str) -> list[dict]:
    return store().history(run_id)


@st.cache_data(max_entries=8)
def depth_analysis(run_id: str, dataset_name: str) -> interpret.DepthAnalysis:
    return interpret.depth_analysis(run_context(run_id, dataset_name))


@st.cache_data(max_entries=64)
def concept_view(run_id: str, dataset_name: str, concept_id: str, metric: str) -> interpret.ConceptView:
    """A concept's bits and neighbours, so a rerun of the Concepts page only renders."""
    return interpret.concept_view(run_context(run_id, dataset_name), concept_id, k=10, metric=metric)


@st.cache_data(max_entries=64)
def phrase_view(run_id: str, dataset_name: str, phrase: str, metric: str) -> phrases.PhraseView:
    """Any phrase's bits and neighbours, embedded with the dataset's own model (a PhraseError when it has none)."""
    context = run_context(run_id, dataset_name)
    (vector,) = phrases.embed_phrases([phrase], context_meta(dataset_name))
    return phrases.phrase_view(context, phrases.check_phrase(phrase), vector, k=10, metric=metric)


def context_meta(dataset_name: str) -> dict:
    return dataset(dataset_name).meta


@st.cache_data(max_entries=256)
def bit_profile(run_id: str, dataset_name: str, bit: int) -> interpret.BitProfile:
    return interpret.bit_profile(run_context(run_id, dataset_name), bit)


def concept_link(concept_id: str, name: str, run_id: str) -> None:
    """A link to the Concepts page, opened on this concept under this run."""
    st.page_link(
        "pages/concepts.py",
        label=f"Open {name} ({concept_id}) on the Concepts page",
        icon=":material/search:",
        query_params={"concept": concept_id, "run": run_id},
    )


@st.cache_data(max_entries=8)
def active_counts(run_id: str) -> np.ndarray:
    """(M,) active bits per concept of a finished run."""
    return codes.active_counts(runfolder.load_codes(store().run_folder(run_id)))


@st.cache_data(max_entries=32)
def bit_column(run_id: str, n_bits: int, bit: int) -> np.ndarray:
    """(M,) 0/1: whether `bit` fires for each concept of a finished run."""
    return codes.bit_column(runfolder.load_codes(store().run_folder(run_id)), n_bits, bit)
