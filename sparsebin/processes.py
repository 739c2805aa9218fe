"""Whether a process still runs, and starting one detached: shared by the worker registry, background
builds and background yardstick measurements."""

import os
import subprocess
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; our own child that has exited is reaped, not left a zombie."""
    if pid <= 0:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def start_detached(command: list[str], log_path: Path, environment: dict, *, append: bool = True) -> int:
    """Start `command` in its own session (it outlives the caller), from the project folder, with `environment`,
    no input, and its output and errors to `log_path` (appended, or replaced); returns its pid."""
    from sparsebin import paths

    with open(log_path, "ab" if append else "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=paths.PROJECT_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid
