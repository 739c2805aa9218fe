"""Device locks: which process serves a device, decided by the kernel.

A process serving a device holds an exclusive flock on <home>/worker-<device>.lock for
its lifetime, with its pid written inside. The kernel lets go when that process dies,
however it dies, so a crash never leaves a stale claim. A Ray dispatcher holds the lock
of `DISPATCHER_DEVICE`; while it does, the app starts no local worker.
"""

import fcntl
import os
import time
from pathlib import Path

DISPATCHER_DEVICE = "ray"  # the device a Ray dispatcher registers and holds the lock of: it serves every device


def device_lock_path(home: Path, device: str) -> Path:
    return Path(home) / f"worker-{device.replace(':', '-')}.lock"


def take_device_lock(home: Path, device: str, inherited: int | None = None):
    """Hold the device's lock for this process's lifetime and write our pid in it, or None if taken.

    `inherited` is the descriptor `ensure_worker` locked before starting this
    worker: the same open file, so locking it again succeeds at once.
    """
    if inherited is not None:
        handle = os.fdopen(inherited, "a+")
    else:
        handle = open(device_lock_path(home, device), "a+")  # noqa: SIM115 - held until the worker exits
    if not try_lock(handle):
        handle.close()
        return None
    write_holder(handle, os.getpid())
    return handle


def try_lock(handle) -> bool:
    """Take the exclusive lock on an open file without waiting; False when another open file holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_holder(path: Path) -> int | None:
    """The pid holding a device lock, or None when nobody holds it."""
    with open(path, "a+") as handle:
        if try_lock(handle):
            return None  # closing the file lets go again
    return read_holder(path)


def write_holder(handle, pid: int) -> None:
    handle.truncate(0)
    handle.write(str(pid))
    handle.flush()


def read_holder(path: Path, wait: float = 2.0) -> int | None:
    """The pid in a held device lock; a starter writes it just after the start, so wait for it a moment."""
    deadline = time.monotonic() + wait
    while True:
        text = path.read_text().strip()
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.02)
