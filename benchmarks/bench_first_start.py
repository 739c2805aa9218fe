"""Time to a usable Train page on a first start: empty data and home folders, the real app, a real browser.

    python benchmarks/bench_first_start.py [--limit N]

Starts `streamlit run app.py` on empty temporary SPARSEBIN_HOME / SPARSEBIN_DATA
folders (so it builds `hpo` in the background, whole unless --limit is given),
opens the app in headless Chromium, goes to the Train page and waits until the
form's "Queue run" button is there. Prints the seconds from the server's start
to the Train page showing the build, and to the form being usable. Stops the
icd10cm build that follows, and the worker.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))

from appserver import AppServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="build a sample of this many concepts instead of all")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from sparsebin.datasets.status import build_status
    from sparsebin.jobs.queue import Store

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as folder:
        root = Path(folder)
        environment = {"SPARSEBIN_HOME": str(root / "home"), "SPARSEBIN_DATA": str(root / "data")}
        if args.limit:
            environment["SPARSEBIN_BUILD_LIMIT"] = str(args.limit)
        started = time.monotonic()
        server = AppServer(environment, root / "app.log")
        try:
            server.wait_until_healthy()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page()
                page.goto(server.url)
                page.get_by_role("link", name="Train", exact=True).click()
                main_area = page.get_by_test_id("stMain")
                expect(main_area.get_by_text(re.compile("Building hpo"))).to_be_visible(timeout=120_000)
                shown = time.monotonic() - started
                expect(page.get_by_role("button", name="Queue run")).to_be_visible(timeout=args.timeout * 1000)
                usable = time.monotonic() - started
                browser.close()
            status = build_status("hpo", root / "data")
            print(f"Train page shows the hpo build {shown:.1f} s after the server started")
            print(f"Train form usable {usable:.1f} s after the server started ({status['done']:,} HPO concepts)")
        finally:
            server.stop()
            pids = [worker["pid"] for worker in Store(root / "home").workers()]
            pids += [
                int(status["pid"])
                for name in ("hpo", "icd10cm")
                if (status := build_status(name, root / "data")) and status.get("state") == "running"
            ]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30  # let them exit before their folders go (a build writes its log)
            while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
                time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
