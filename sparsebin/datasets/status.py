"""Background builds: a detached build process and the small JSON file it reports through.

The app cannot hold a build in its own process (a page reload would lose it), so it
starts `build-data` as a separate session and polls `<data_dir>/.builds/<name>.json`.
"""

import json
import os
import sys
import time
from pathlib import Path

from sparsebin.datasets.store import check_name, resolve_data_dir
from sparsebin.files import write_atomic
from sparsebin.processes import pid_alive, start_detached

STATUS_FOLDER = ".builds"
BUILD_NICENESS = 10  # background builds yield the CPU to training (and to everything at normal priority)
_MIN_WRITE_INTERVAL = 0.5  # seconds between progress writes; the app polls about once a second


def status_path(name: str, data_dir: Path | None = None) -> Path:
    return resolve_data_dir(data_dir) / STATUS_FOLDER / f"{check_name(name)}.json"


def write_status(name: str, data_dir: Path | None = None, **fields) -> None:
    """Merge fields into the build's status file, replacing it atomically."""
    path = status_path(name, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    status = _read(path) or {"name": name, "done": 0, "total": 0, "error": None}
    status.update(fields, updated=time.time())
    write_atomic(path, json.dumps(status).encode())


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_status(name: str, data_dir: Path | None = None) -> dict | None:
    """The last reported state of a build, or None when none was ever started.

    A build marked running whose process has died (killed, machine restarted) reads
    as failed, so the app can offer to start it again.
    """
    status = _read(status_path(name, data_dir))
    if status is None:
        return None
    if status.get("state") == "running" and not pid_alive(int(status.get("pid", -1))):
        status.update(state="failed", error=status.get("error") or "the build process stopped")
    return status


def progress_writer(name: str, data_dir: Path | None = None):
    """A (done, total) callback that records progress, at most twice a second."""
    last_write = 0.0
    started = None  # when the first count arrived: the ontology is read, the embedding begins

    def report(done: int, total: int) -> None:
        nonlocal last_write, started
        started = started or time.time()
        if 0 < done < total and time.monotonic() - last_write < _MIN_WRITE_INTERVAL:
            return
        last_write = time.monotonic()
        write_status(name, data_dir, state="running", done=done, total=total, pid=os.getpid(), started_at=started)

    return report


def start_build(name: str, data_dir: Path | None = None, niceness: int = BUILD_NICENESS) -> None:
    """Start `build-data name` as a detached process at low priority, unless one is already running.

    niceness 0 lets a first start's build (nothing trains yet: there is no dataset) embed at the model's full rate.

    The process outlives the caller (its own session), logs to .builds/<name>.log and
    reports through the status file read by `build_status`.
    """
    current = build_status(name, data_dir)
    if current is not None and current.get("state") == "running":
        return
    root = resolve_data_dir(data_dir)
    limit = os.environ.get("SPARSEBIN_BUILD_LIMIT", "").strip()  # a quick sample, for tests and first looks
    log_path = status_path(name, data_dir).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "SPARSEBIN_DATA": str(root), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sparsebin.datasets.cli", "build-data", name, "--nice", str(niceness)]
    pid = start_detached(command + (["--limit", limit] if limit else []), log_path, environment)
    write_status(name, data_dir, state="running", done=0, total=0, error=None, pid=pid, niceness=niceness)


def seconds_left(status: dict, now: float | None = None) -> float | None:
    """The build's remaining time at its rate so far, or None before the first embedded batch."""
    done, total, started = status.get("done") or 0, status.get("total") or 0, status.get("started_at")
    if not started or done <= 0 or total <= 0:
        return None
    elapsed = (now or time.time()) - started
    return max(elapsed / done * (total - done), 0.0)
