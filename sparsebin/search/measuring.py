"""The yardsticks measured in the background, so a page can start a measurement that takes minutes.

`start_measuring` runs `python -m sparsebin frontier DATA --runs RUN --no-timing` as a detached process
(its own session, low priority) that writes the cache `yardsticks.dataset_yardsticks` reads; its state
is a small JSON file beside the cache, `<dataset>/yardsticks/measuring.json`, and its output a log.
"""

import json
import os
import sys
import time
from pathlib import Path

from sparsebin.files import write_atomic
from sparsebin.processes import pid_alive, start_detached
from sparsebin.search.yardsticks import FOLDER

NICENESS = 10  # yields the CPU to training


def status_path(dataset_folder: Path) -> Path:
    return Path(dataset_folder) / FOLDER / "measuring.json"


def measuring_status(dataset_folder: Path) -> dict | None:
    """{state: running | finished | failed, run_id, started_at, pid, log}; None when none was started. A
    measurement marked running whose process is gone reads as finished when it exited 0, else failed."""
    path = status_path(dataset_folder)
    try:
        status = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if status.get("state") == "running" and not pid_alive(int(status.get("pid", -1))):
        log = Path(status.get("log", ""))
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        done = "pareto:" in tail or "csv:" in tail
        status["state"] = "finished" if done else "failed"
        if not done:
            last = [line for line in tail.splitlines() if line.strip()]
            status["error"] = last[-1] if last else "the measuring process stopped"
    return status


def start_measuring(dataset_name: str, dataset_folder: Path, run_id: str) -> dict:
    """Start measuring the yardsticks of a data set at `run_id`'s split and queries, unless a measurement is
    running already; returns the status."""
    current = measuring_status(dataset_folder)
    if current is not None and current.get("state") == "running":
        return current
    path = status_path(dataset_folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_path = path.with_suffix(".log")
    out = path.parent / "last-frontier"
    environment = dict(os.environ)
    if (os.cpu_count() or 1) <= 2:  # faiss's OpenMP threads ran ~10x slower on 2 shared cores than one thread
        environment.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "sparsebin", "frontier", dataset_name, "--runs", run_id, "--no-timing"]
    command += ["--out", str(out), "--nice", str(NICENESS)]
    pid = start_detached(command, log_path, environment, append=False)
    status = {"state": "running", "run_id": run_id, "started_at": time.time(), "pid": pid}
    status["log"] = str(log_path)
    write_atomic(path, json.dumps(status).encode())
    return status
