"""The newcomer's journeys through the real app, in headless Chromium driven by Playwright.

Each test starts `streamlit run app.py` on a free localhost port with its own
empty SPARSEBIN_HOME and a small built-in subset (300 HPO terms embedded with
the packaged MiniLM; the first-start journey builds its own), and walks one
journey as a user would: clicking, typing and reading what the page says.
Playwright's own browser download is not available here: the launch uses the
Debian `chromium` on PATH (`.ci/run` installs it). Every failed step leaves a
screenshot in test-results/ (ignored by git), named after the test and step.
"""

import os
import re
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from appserver import AppServer
from playwright.sync_api import Page, expect

from sparsebin.config import TrainConfig
from sparsebin.datasets import build_dataset
from sparsebin.datasets.status import build_status
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker

SUBSET = 300  # HPO terms in the built-in subset the journeys use
RESULTS = Path(__file__).resolve().parent.parent / "test-results"
TIMEOUT_MS = 90_000  # the longest any page may take to show what it should (2 shared cores in CI)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: install Debian's chromium package (.ci/run does)"
    return {**browser_type_launch_args, "executable_path": chromium, "args": ["--no-sandbox"]}


@pytest.fixture(autouse=True)
def loaded_machine_timeouts(page: Page):
    """Every click, fill and expectation waits as long as the explicit waits do: on 2 busy cores a page can take
    many seconds to show what it should, and a check without its own timeout must not fail at Playwright's 5 s."""
    page.set_default_timeout(TIMEOUT_MS)
    page.set_default_navigation_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=5_000)


@pytest.fixture(scope="session")
def hpo_subset(tmp_path_factory) -> Path:
    """A data folder holding `hpo` built from 300 evenly spread terms; copied into each test's own folder."""
    data = tmp_path_factory.mktemp("hpo-subset")
    build_dataset("hpo", limit=SUBSET, data_dir=data)
    return data


@pytest.fixture
def folders(tmp_path, monkeypatch) -> dict:
    home, data = tmp_path / "home", tmp_path / "data"
    monkeypatch.setenv("SPARSEBIN_HOME", str(home))
    monkeypatch.setenv("SPARSEBIN_DATA", str(data))
    return {"home": home, "data": data, "root": tmp_path}


@contextmanager
def running_app(folders: dict, **environment: str):
    """The app serving these folders; on exit it stops, with the worker and builds it started."""
    env = {
        "SPARSEBIN_HOME": str(folders["home"]),
        "SPARSEBIN_DATA": str(folders["data"]),
        "SPARSEBIN_BUILD_LIMIT": str(SUBSET),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **environment,
    }
    server = AppServer(env, folders["root"] / "app.log")
    try:
        server.wait_until_healthy(timeout=TIMEOUT_MS / 1000)
        yield server
    finally:
        server.stop()
        stop_started_processes(folders)


def stop_started_processes(folders: dict) -> None:
    """The worker and builds run in their own sessions (they outlive the app by design); end them here."""
    pids = []
    if (folders["home"] / "sparsebin.db").exists():
        pids += [worker["pid"] for worker in Store(folders["home"]).workers()]
    for name in ("hpo", "icd10cm"):
        status = build_status(name, folders["data"])
        if status and status.get("state") == "running":
            pids.append(int(status["pid"]))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue


@contextmanager
def step(page: Page, request, name: str):
    """One step of a journey; a failure keeps a screenshot of the page as it was."""
    try:
        yield
    except BaseException:
        RESULTS.mkdir(exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{request.node.name}-{name}")
        page.screenshot(path=str(RESULTS / f"{slug}.png"), full_page=True)
        raise


def finished_run(folders: dict, hpo_subset: Path) -> str:
    """The HPO subset and one finished 64-bit run on it, trained in this process before the app starts."""
    shutil.copytree(hpo_subset, folders["data"])
    store = Store()
    config = TrainConfig(n_bits=64, k=4, sparsity="hard-topk", epochs=30, batch_size=16, lr=3e-3, device="cpu")
    job = store.submit("hpo", config, label="browser run")
    assert run_worker(once=True, device="cpu") == 1
    return job.run_id


def build_priority(pid: int, timeout: float = 30.0) -> int | None:
    """The nice value of a running build process, once it has lowered it (it does so right after its imports)."""
    deadline, nice = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        except FileNotFoundError:
            return None
        if nice:
            return nice
        time.sleep(0.1)
    return nice


def open_page(page: Page, app: AppServer, title: str) -> None:
    """Open the app at its root, as a user does, then its page by the navigation link."""
    open_home(page, app)
    page.get_by_role("link", name=title, exact=True).click()


def open_home(page: Page, app: AppServer) -> None:
    """The root page, once app.py has drawn its own navigation (not the page list Streamlit shows first)."""
    page.goto(app.url)
    expect(page.get_by_role("link", name="Compare", exact=True)).to_be_visible(timeout=TIMEOUT_MS)


def main_text(page: Page):
    return page.get_by_test_id("stMain")


def test_first_start_builds_the_data_with_visible_progress_and_opens_the_train_form(page, request, folders):
    started = time.monotonic()
    with running_app(folders, SPARSEBIN_NO_WORKER="1") as app:
        with step(page, request, "home-starts-the-build"):
            open_home(page, app)  # a first visit runs app.py, which starts the build
            expect(main_text(page).get_by_text(re.compile(r"Building hpo: "))).to_be_visible(timeout=TIMEOUT_MS)
        with step(page, request, "train-shows-the-build"):
            page.get_by_role("link", name="Train", exact=True).click()
            expect(main_text(page).get_by_text(re.compile(r"Building hpo: "))).to_be_visible(timeout=TIMEOUT_MS)
            expect(main_text(page).get_by_text("this form opens as soon as it is ready")).to_be_visible()
            expect(main_text(page).get_by_text("This first build runs at full priority")).to_be_visible()
        with step(page, request, "the-first-build-runs-at-full-priority"):
            # nothing can train before a dataset exists, so the first build does not lower its priority
            assert build_status("hpo")["niceness"] == 0
            own = os.nice(0)  # the app and its build inherit this process's niceness (the tests may run under nice)
            assert build_priority(build_status("hpo")["pid"], timeout=2.0) == own
        with step(page, request, "compare-shows-the-build"):
            page.get_by_role("link", name="Compare", exact=True).click()
            expect(main_text(page).get_by_text("Compare fills in once a run has finished.")).to_be_visible(
                timeout=TIMEOUT_MS
            )
        with step(page, request, "the-train-form-opens-when-hpo-is-ready"):
            page.get_by_role("link", name="Train", exact=True).click()
            expect(page.get_by_role("button", name="Queue run")).to_be_visible(timeout=TIMEOUT_MS)
            assert build_status("hpo")["state"] == "done" and build_status("hpo")["done"] == SUBSET
    print(f"first-start journey: {time.monotonic() - started:.1f} s")


def test_queue_a_run_watch_its_progress_and_see_it_on_compare(page, request, folders, hpo_subset):
    started = time.monotonic()
    shutil.copytree(hpo_subset, folders["data"])
    with running_app(folders) as app:
        with step(page, request, "a-bookmarked-page-opens-inside-the-app"):
            page.goto(f"{app.url}/train")  # the server's first session, straight at a page's address
            expect(page.get_by_role("button", name="Queue run")).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.get_by_role("link", name="Compare", exact=True)).to_be_visible()  # app.py's navigation
            expect(page.get_by_role("link", name="shared", exact=True)).to_have_count(0)  # not a file list
        with step(page, request, "enter-in-a-number-field-does-not-queue"):
            n_bits = page.get_by_label("N (bits)", exact=True)
            n_bits.fill("64")
            expect(main_text(page).get_by_text("Press Enter to submit form")).to_have_count(0)  # no such promise
            n_bits.press("Enter")
            expect(n_bits).to_have_value("64")
            expect(main_text(page).get_by_text(re.compile("Queued job"))).to_have_count(0)
            assert Store(folders["home"]).jobs() == []
        with step(page, request, "queue-a-run"):
            for label, value in (("K (target active bits)", "4"), ("epochs", "400")):
                page.get_by_label(label, exact=True).fill(value)
            page.get_by_label("batch", exact=True).fill("8")
            page.get_by_label("label (optional)").fill("first browser run")
            page.get_by_role("button", name="Queue run").click()
            # Job 1: had Enter queued a run, the button's would be job 2, or refused as identical to it.
            expect(main_text(page).get_by_text(re.compile(r"Queued job 1 \(run "))).to_be_visible(timeout=TIMEOUT_MS)
            (job,) = Store(folders["home"]).jobs()
            assert (job.config.n_bits, job.config.k, job.label) == (64, 4, "first browser run")
        with step(page, request, "watch-live-progress"):
            expect(main_text(page).get_by_text(re.compile(r"step \d+ of \d+, loss"))).to_be_visible(timeout=TIMEOUT_MS)
        with step(page, request, "the-run-finishes"):
            expect(main_text(page).get_by_text("done", exact=True)).to_be_visible(timeout=3 * TIMEOUT_MS)
        with step(page, request, "see-it-on-compare"):
            page.get_by_role("link", name="Compare", exact=True).click()
            expect(
                main_text(page).get_by_text(re.compile(r"What the picked runs say about the method's \w+ questions"))
            ).to_be_visible(timeout=TIMEOUT_MS)
            expect(main_text(page).get_by_text(re.compile("first browser run")).first).to_be_visible()
        with step(page, request, "a-quiet-server-log"):
            assert "missing ScriptRunContext" not in app.log_path.read_text()  # the warm-up thread's warning
    print(f"queue-and-compare journey: {time.monotonic() - started:.1f} s")


def test_open_a_bit_then_a_concept_from_the_bit(page, request, folders, hpo_subset):
    started = time.monotonic()
    run_id = finished_run(folders, hpo_subset)
    with running_app(folders, SPARSEBIN_NO_WORKER="1") as app:
        with step(page, request, "open-a-bit"):
            page.goto(f"{app.url}/bits?run={run_id}&bit=3")  # a shared link, the server's first session
            expect(main_text(page).get_by_text(re.compile(r"^Bit 3: "))).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.get_by_role("link", name="Compare", exact=True)).to_be_visible()  # inside app.py's navigation
            expect(main_text(page).get_by_text(re.compile(r"Fires for [\d,]+ concepts"))).to_be_visible()
        with step(page, request, "open-a-concept-from-the-bit"):
            link = main_text(page).get_by_text(re.compile(r"^Open .+ \(HP:\d{7}\) on the Concepts page$"))
            expect(link).to_be_visible(timeout=TIMEOUT_MS)
            concept = re.search(r"\((HP:\d{7})\)", link.inner_text()).group(1)
            link.click()
            expect(main_text(page).get_by_text(re.compile(rf"\({concept}\)$")).first).to_be_visible(timeout=TIMEOUT_MS)
            expect(main_text(page).get_by_text("The two neighbour lists share")).to_be_visible(timeout=TIMEOUT_MS)
    print(f"bit-to-concept journey: {time.monotonic() - started:.1f} s")


def test_search_by_phrase(page, request, folders, hpo_subset):
    started = time.monotonic()
    run_id = finished_run(folders, hpo_subset)
    with running_app(folders, SPARSEBIN_NO_WORKER="1") as app:
        with step(page, request, "type-a-phrase"):
            open_home(page, app)
            page.goto(f"{app.url}/concepts?run={run_id}")
            main_text(page).get_by_text("any phrase").click()
            box = page.get_by_role("textbox", name="Phrase")
            expect(box).to_be_visible(timeout=TIMEOUT_MS)
            box.fill("recurrent febrile seizures in infancy")
            box.press("Enter")
        with step(page, request, "read-its-bits-and-neighbours"):
            expect(main_text(page).get_by_text(re.compile(r"^\d+ active bits for 'recurrent febrile"))).to_be_visible(
                timeout=TIMEOUT_MS
            )
            expect(main_text(page).get_by_text("Nearest concepts by dense embedding")).to_be_visible()
            expect(
                main_text(page).get_by_text(re.compile(r"The two lists share \d+ of their 10 concepts"))
            ).to_be_visible()
        with step(page, request, "an-empty-phrase"):
            box.fill("")
            box.press("Enter")
            expect(main_text(page).get_by_text("Type any phrase")).to_be_visible(timeout=TIMEOUT_MS)
    print(f"phrase journey: {time.monotonic() - started:.1f} s")


def test_upload_a_bad_file_and_read_its_sentence(page, request, folders, hpo_subset):
    started = time.monotonic()
    shutil.copytree(hpo_subset, folders["data"])
    with running_app(folders, SPARSEBIN_NO_WORKER="1") as app:
        with step(page, request, "upload-an-empty-npy"):
            open_page(page, app, "Data")
            expect(page.get_by_role("button", name="Import")).to_be_visible(timeout=TIMEOUT_MS)
            page.get_by_label("Dataset name").fill("mine")
            uploader = page.get_by_test_id("stFileUploader").first.locator("input[type=file]")
            uploader.set_input_files({"name": "empty.npy", "mimeType": "application/octet-stream", "buffer": b""})
            expect(main_text(page).get_by_text("empty.npy")).to_be_visible(timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Import").click()
        with step(page, request, "read-its-sentence"):
            error = main_text(page).get_by_text("empty.npy: the file is empty (0 bytes)")
            expect(error).to_be_visible(timeout=TIMEOUT_MS)
            text = main_text(page).inner_text()
            assert "Traceback" not in text and str(folders["root"]) not in text
            assert sorted(path.name for path in folders["data"].iterdir()) == [".builds", "hpo"] or sorted(
                path.name for path in folders["data"].iterdir()
            ) == ["hpo"]
        with step(page, request, "a-truncated-npy"):
            np.save(folders["root"] / "cut.npy", np.ones((10, 4), np.float32))
            data = (folders["root"] / "cut.npy").read_bytes()[:-8]
            uploader.set_input_files({"name": "cut.npy", "mimeType": "application/octet-stream", "buffer": data})
            expect(main_text(page).get_by_text("cut.npy", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Import").click()
            expect(
                main_text(page).get_by_text(re.compile(r"cut\.npy: the header announces 10 x 4 float32"))
            ).to_be_visible(timeout=TIMEOUT_MS)
    print(f"bad-upload journey: {time.monotonic() - started:.1f} s")
