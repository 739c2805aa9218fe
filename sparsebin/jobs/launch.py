"""Starting workers: one detached for the app, or one per GPU for `worker --device all`.

`ensure_worker` (the app calls it on each start) starts a detached `python -m sparsebin
worker` for a device unless a process holds that device's lock or a Ray dispatcher holds
its own (sparsebin.jobs.locks), and hands the lock it took to the worker it starts; that
worker logs to <home>/worker.log, rotated when it grows large. `run_device_workers` holds
each device's lock and supervises one worker process per device.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsebin import paths
from sparsebin.devices import resolve_device
from sparsebin.errors import ConfigError
from sparsebin.jobs.locks import (
    DISPATCHER_DEVICE,
    device_lock_path,
    lock_holder,
    read_holder,
    take_device_lock,
    try_lock,
    write_holder,
)
from sparsebin.jobs.service import stop_on_signals

LOG_FILE = "worker.log"
LOG_LIMIT_BYTES = 10 * 2**20  # a worker starting on a larger log moves it to worker.log.1 (one old log kept)

log = logging.getLogger("sparsebin.jobs.launch")


@dataclass(frozen=True)
class WorkerStart:
    """What `ensure_worker` did: started a worker (`started`), or found one serving the device."""

    pid: int | None  # None only when a worker being started has not written its pid within 2 s
    started: bool


def ensure_worker(home: Path | None = None, device: str = "auto") -> WorkerStart:
    """Start a detached worker for `device` unless one serves it; its log goes to <home>/worker.log.

    One kernel lock decides (flock on <home>/worker-<device>.lock): taken here and handed to the worker started,
    it is dropped by the kernel when that worker dies however it dies, so a crash never leaves a stale claim.
    """
    resolved = resolve_device(device)
    home = Path(home) if home is not None else paths.home_dir()
    home.mkdir(parents=True, exist_ok=True)
    dispatcher = lock_holder(device_lock_path(home, DISPATCHER_DEVICE))  # a Ray dispatcher serves every device
    if dispatcher is not None:
        return WorkerStart(dispatcher, started=False)
    path = device_lock_path(home, resolved)
    with open(path, "a+") as handle:  # our copy closes here; the worker keeps the lock on its own
        if not try_lock(handle):
            return WorkerStart(read_holder(path), started=False)
        pid = spawn_worker(home, resolved, handle.fileno())
        write_holder(handle, pid)
    return WorkerStart(pid, started=True)


def held_worker_locks(home: Path | None = None) -> list[int]:
    """The pids holding a worker's device lock in `home`: workers alive, including one just started
    that has not registered with the queue yet (Home says it is starting rather than that none runs)."""
    home = Path(home) if home is not None else paths.home_dir()
    pids = []
    for path in sorted(home.glob("worker-*.lock")):
        pid = lock_holder(path)
        if pid is not None:
            pids.append(pid)
    return pids


def spawn_worker(home: Path, device: str, lock_fd: int) -> int:
    """Start `python -m sparsebin worker` in its own session, holding the device lock `lock_fd`,
    logging to <home>/worker.log."""
    log_path = Path(home) / LOG_FILE
    rotate_log(log_path, LOG_LIMIT_BYTES)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sparsebin", "worker", "--device", device, "--single", "--lock-fd", str(lock_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=paths.PROJECT_DIR,
            env=child_environment(home),
            start_new_session=True,  # outlives the app and its terminal
            pass_fds=(lock_fd,),
        )
    return process.pid


def child_environment(home: Path) -> dict[str, str]:
    """This process's environment for a worker it starts: the same home, and this project importable."""
    environment = dict(os.environ, SPARSEBIN_HOME=str(home))
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(paths.PROJECT_DIR), environment.get("PYTHONPATH", "")) if part
    )
    return environment


def rotate_log(path: Path, limit_bytes: int) -> None:
    """Move a log over `limit_bytes` to <name>.1, replacing the one kept there, so logs stay bounded.

    A worker still writing to the moved file goes on writing there (POSIX keeps the open file).
    """
    try:
        if path.stat().st_size > limit_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def visible_cuda_devices() -> list[str]:
    """cuda:0, cuda:1, ... for each CUDA device this process can see (CUDA_VISIBLE_DEVICES honoured)."""
    return [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def run_device_workers(
    devices: list[str], arguments: list[str], home: Path | None = None, poll_every: float = 0.5
) -> int:
    """`worker --device all`: one `worker --device D` process per device, until all have exited.

    This process holds each device's lock for them, so no second `--device all`
    (nor a `--single` worker) serves the same devices. SIGTERM or SIGINT is
    passed on to each worker, which leaves its job interrupted, ready to resume.
    Returns the highest exit code among them (0 when all ended well).
    """
    home = Path(home) if home is not None else paths.home_dir()
    home.mkdir(parents=True, exist_ok=True)
    locks = []
    try:
        for device in dict.fromkeys(devices):
            lock = take_device_lock(home, device)
            if lock is None:
                holder = lock_holder(device_lock_path(home, device))
                raise ConfigError(f"another worker already serves {device} (pid {holder}).")
            locks.append(lock)
        return supervise(devices, arguments, home, poll_every)
    finally:
        for lock in locks:
            lock.close()


def supervise(devices: list[str], arguments: list[str], home: Path, poll_every: float) -> int:
    """Run one worker process per device until all have exited or a signal stops them; return the highest code."""
    environment = child_environment(home)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "sparsebin", "worker", "--device", device, *arguments],
            stdin=subprocess.DEVNULL,
            env=environment,
        )
        for device in devices
    ]
    log.info("started %s", ", ".join(f"pid {p.pid} on {d}" for p, d in zip(processes, devices, strict=True)))
    shutdown = threading.Event()
    restore_signals = stop_on_signals(shutdown)
    try:
        while any(process.poll() is None for process in processes) and not shutdown.wait(poll_every):
            pass
    finally:
        restore_signals()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait() for process in processes]
    return max(codes)
