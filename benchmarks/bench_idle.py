"""What an idle browser tab costs the app server: CPU seconds per minute with one tab open on a page.

    python benchmarks/bench_idle.py [--seconds 60] [--pages home train data compare bits]

Writes a tiny dataset and three finished tiny runs into temporary SPARSEBIN_HOME /
SPARSEBIN_DATA folders, starts `streamlit run app.py` (no background worker),
opens one headless Chromium tab (through Playwright, on the `chromium` found on
PATH) on each page in turn, waits until it has rendered, and reads the server
process's CPU time (/proc, user + system) over the next `--seconds` with nothing
happening. Prints the share of one core each idle tab costs.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))

from appserver import AppServer  # noqa: E402

PAGES = {
    "none": None,
    "home": "",
    "train": "train",
    "data": "data",
    "compare": "compare",
    "bits": "bits",
    "concepts": "concepts",
}


def prepare(root: Path) -> dict[str, str]:
    """A 300 x 16 dataset with three finished 32-bit runs, as a user's folders after a first session."""
    environment = {"SPARSEBIN_HOME": str(root / "home"), "SPARSEBIN_DATA": str(root / "data")}
    os.environ.update(environment)
    from sparsebin.config import TrainConfig
    from sparsebin.datasets import import_dataset
    from sparsebin.jobs.queue import Store
    from sparsebin.jobs.worker import run_worker

    rng = np.random.default_rng(0)
    np.save(root / "tiny.npy", rng.standard_normal((300, 16)).astype(np.float32))
    import_dataset(root / "tiny.npy", name="tiny")
    store = Store()
    base = TrainConfig(n_bits=32, k=4, epochs=2, batch_size=64, device="cpu")
    for seed in range(3):
        store.submit("tiny", base.replace(seed=seed), label=f"run {seed}")
    run_worker(once=True, device="cpu")
    return {**environment, "SPARSEBIN_NO_WORKER": "1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pages", nargs="+", default=["home", "train", "data"], choices=list(PAGES))
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the page renders before measuring")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        environment = prepare(root)
        server = AppServer(environment, root / "app.log")
        try:
            server.wait_until_healthy()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                for page_name in args.pages:
                    page = browser.new_page()
                    if PAGES[page_name] is not None:  # "none": the server with no tab open, for reference
                        page.goto(f"{server.url}/{PAGES[page_name]}")
                        page.get_by_test_id("stMainBlockContainer").wait_for()
                    time.sleep(args.settle)
                    before, started = server.cpu_seconds(), time.monotonic()
                    time.sleep(args.seconds)
                    used, elapsed = server.cpu_seconds() - before, time.monotonic() - started
                    share = 100 * used / elapsed
                    print(f"{page_name:9s} idle tab: {used:6.2f} CPU s over {elapsed:.0f} s = {share:5.2f} % of a core")
                    page.close()
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
