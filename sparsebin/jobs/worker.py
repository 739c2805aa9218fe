"""The background trainer: claim a job, train it, record the outcome, repeat.

`python -m sparsebin worker` runs `run_worker`; the app calls `ensure_worker`
to start one, detached, when none serves the device. A heartbeat thread (with its own
database connection) refreshes the worker's and the job's heartbeat and picks
up cancel requests, so the training loop's `should_stop` only reads a flag.
A job whose worker stops beating is marked interrupted by the next worker to
start or go idle, and resumes from the checkpoint of its last finished epoch.
"""

import fcntl
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsebin import paths, runfolder
from sparsebin.datasets import load_dataset
from sparsebin.devices import resolve_device
from sparsebin.errors import ConfigError
from sparsebin.experiment import run_experiment
from sparsebin.jobs.queue import RUN_FACTS, SUMMARY_METRICS, Job, Status, Store
from sparsebin.processes import pid_alive
from sparsebin.progress import ProgressEvent

HEARTBEAT_EVERY = 1.0  # seconds between heartbeats and cancel checks
PROGRESS_EVERY = 2.0  # seconds between progress writes to the database
ALIVE_WITHIN = 10.0  # a worker whose last heartbeat is older than this counts as gone
DISPATCHER_DEVICE = "ray"  # the device a Ray dispatcher registers and holds the lock of: it serves every device
LOG_FILE = "worker.log"
LOG_LIMIT_BYTES = 10 * 2**20  # a worker starting on a larger log moves it to worker.log.1 (one old log kept)

log = logging.getLogger("sparsebin.jobs.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Beats for the worker and its current job; sets `stop_requested` on a cancel."""

    def __init__(self, store: Store, name: str, every: float):
        super().__init__(name="sparsebin-heartbeat", daemon=True)
        self.store, self.worker, self.every = store, name, every
        self.job_id: int | None = None
        self.stop_requested = threading.Event()
        self._finished = threading.Event()
        self._watching = threading.Lock()  # makes "still the same job?" and setting the flag one step

    def watch(self, job_id: int | None) -> None:
        with self._watching:
            self.job_id = job_id
            self.stop_requested.clear()

    def run(self) -> None:
        while not self._finished.wait(self.every):
            self.beat()
        self.store.close()

    def beat(self) -> None:
        """Beat for the watched job; a cancel answer stops it only if it is still the watched job.

        The database calls run outside the lock (they may wait on a busy
        database), so the job can change meanwhile: a cancel of the job just
        finished must not stop the next one at its first step.
        """
        job_id = self.job_id
        try:
            self.store.beat_worker(self.worker, job_id)
            stop = job_id is not None and self.store.beat(job_id, self.worker)
        except Exception as error:  # a busy database must not kill the heartbeat
            log.warning("heartbeat failed: %s", error)
            return
        with self._watching:
            if stop and self.job_id == job_id:
                self.stop_requested.set()

    def finish(self) -> None:
        self._finished.set()
        self.join()


class ProgressWriter:
    """The training loop's progress callback: buffers events, writes them every few seconds."""

    def __init__(self, store: Store, job: Job, every: float):
        self.store, self.job, self.every = store, job, every
        self.pending: list[dict] = []
        self.latest: dict | None = None
        self.written_at = -math.inf  # the first event is written at once, so a page shows progress early

    def __call__(self, event: ProgressEvent) -> None:
        record = event.to_record()
        self.pending.append(record)
        self.latest = with_eta(record, self.job.config.batch_size)
        if time.monotonic() - self.written_at >= self.every:
            self.write(self.pending)

    def write(self, events: list[dict]) -> None:
        self.store.record_progress(self.job.id, self.job.run_id, events, self.latest)
        self.pending = []
        self.written_at = time.monotonic()


def with_eta(event: dict, batch_size: int) -> dict:
    """The event's record plus `eta_s`, from the steps left and the measured throughput."""
    rate = event.get("samples_per_second") or 0.0
    steps_left = event["total_steps"] - event["step"]
    return {**event, "eta_s": steps_left * batch_size / rate if rate > 0 else None}


def run_worker(
    home: Path | None = None,
    *,
    device: str | None = None,
    once: bool = False,
    idle_sleep: float = 1.0,
    stale_after: float = 30.0,
    max_jobs: int | None = None,
    progress_every: float = PROGRESS_EVERY,
    heartbeat_every: float = HEARTBEAT_EVERY,
    single: bool = False,
    auto_resume: bool | None = None,
    lock_fd: int | None = None,
    shutdown: threading.Event | None = None,
) -> int:
    """Run queued jobs until stopped (or `shutdown` is set); return how many jobs this worker ran.

    Jobs left interrupted (a worker killed, a machine rebooted) are queued again
    when the worker starts, and whenever it finds a stale job while idle, unless
    `auto_resume` is False (default: on, unless SPARSEBIN_AUTO_RESUME=0).

    `once` returns when the queue is empty instead of waiting for more. The
    worker holds its device's lock while it runs when no other process does
    (see `ensure_worker`); `single` exits at once when another does, and
    `lock_fd` is the lock `ensure_worker` took and handed over. SIGTERM or
    SIGINT stop the current job at its next step and leave it interrupted,
    ready to resume.
    """
    store = Store(home)
    name = worker_name()
    worker_device = resolve_device(device or "auto")
    lock = take_device_lock(store.home, worker_device, lock_fd)
    if lock is None and single:
        log.info("another worker already serves %s; exiting", worker_device)
        store.close()
        return 0
    store.register_worker(name, os.getpid(), socket.gethostname(), worker_device)
    heartbeat = Heartbeat(store, name, heartbeat_every)
    heartbeat.start()
    shutdown = shutdown or threading.Event()
    restore_signals = stop_on_signals(shutdown)
    log.info("worker %s started on %s", name, worker_device)
    jobs_run, idle_rounds = 0, 0
    if auto_resume is None:
        auto_resume = auto_resume_enabled()

    def look_for_interrupted() -> None:
        recover_interrupted(store, stale_after, auto_resume)

    try:
        look_for_interrupted()
        while not shutdown.is_set() and (max_jobs is None or jobs_run < max_jobs):
            job = store.claim(name, worker_device)
            if job is None:
                if once:
                    break
                shutdown.wait(min(idle_sleep * 2**idle_rounds, idle_sleep * 4))  # back off when idle
                idle_rounds += 1
                look_for_interrupted()
                continue
            idle_rounds = 0
            run_job(store, job, name, heartbeat, shutdown, device=worker_device, progress_every=progress_every)
            release_device_memory()  # after run_job returned, so its model is no longer referenced
            jobs_run += 1
    finally:
        restore_signals()
        heartbeat.finish()
        store.unregister_worker(name)
        store.close()
        if lock is not None:
            lock.close()
        log.info("worker %s stopped after %d job(s)", name, jobs_run)
    return jobs_run


def run_job(
    store: Store,
    job: Job,
    name: str,
    heartbeat: Heartbeat,
    shutdown: threading.Event,
    *,
    device: str | None = None,
    progress_every: float = PROGRESS_EVERY,
) -> Status | None:
    """Train one claimed job and record how it ended; never raises for a bad job."""
    log.info("job %d (run %s) started", job.id, job.run_id)
    heartbeat.watch(job.id)
    writer = ProgressWriter(store, job, progress_every)
    config = job.config
    if device is not None and config.device == "auto":
        config = config.replace(device=device)
    folder = store.run_folder(job.run_id)
    try:
        store.place(job.id, name, socket.gethostname(), resolve_device(config.device), os.getpid())
        dataset = load_dataset(job.dataset)
        result = run_experiment(
            dataset.embeddings,
            config,
            folder,
            progress=writer,
            should_stop=lambda: heartbeat.stop_requested.is_set() or shutdown.is_set(),
        )
        writer.write(result.history)  # the whole history, including epochs done before a resume
        status, error, summary = Status.DONE, None, None
        if result.cancelled:
            cancelled = heartbeat.stop_requested.is_set() and store.job(job.id).cancel_requested
            status = Status.CANCELLED if cancelled else Status.INTERRUPTED
            error = "cancelled while running." if cancelled else "the worker was stopped; resume it to continue."
        else:
            summary = run_summary(folder)
        trace = None
    except Exception as failure:
        status, error, summary, trace = Status.FAILED, one_line(failure), None, traceback.format_exc()
    finally:
        heartbeat.watch(None)
    if store.finish(job.id, name, status, error=error, traceback=trace, summary=summary):
        log.info("job %d %s%s", job.id, status.name.lower(), f": {error}" if error else "")
        return status
    log.warning("job %d was taken from this worker while it ran; its outcome is not recorded", job.id)
    return None


def recover_interrupted(store: Store, stale_after: float, auto_resume: bool) -> None:
    """Mark jobs whose worker went silent as interrupted and, with `auto_resume`, queue every interrupted job again."""
    report_interrupted(store.interrupt_stale(stale_after))
    if auto_resume:
        for job_id in store.resume_interrupted():
            log.info("job %d was interrupted; queued again to resume from its checkpoint", job_id)


def auto_resume_enabled() -> bool:
    """The setting: SPARSEBIN_AUTO_RESUME=0 leaves interrupted jobs for the user to resume."""
    return os.environ.get("SPARSEBIN_AUTO_RESUME", "1").strip().lower() not in ("0", "false", "no", "off")


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
    environment = dict(os.environ, SPARSEBIN_HOME=str(home))
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(paths.PROJECT_DIR), environment.get("PYTHONPATH", "")) if part
    )
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


def release_device_memory() -> None:
    """Hand cached GPU memory back between jobs, so other programs on the GPU can use it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_summary(folder: Path) -> dict:
    """The key validation metrics (train metrics when nothing was held out), bit health and convergence."""
    metrics = runfolder.load_metrics(folder)
    _, part = runfolder.evaluated_part(metrics)
    facts = metrics.get("bit_health", {}) | {"converged": metrics.get("convergence", {}).get("converged")}
    summary = {name: part.get(name) for name in SUMMARY_METRICS} | {name: facts.get(name) for name in RUN_FACTS}
    return summary | {"asymmetric_score": part.get("asymmetric_score")}


def one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def report_interrupted(job_ids: list[int]) -> None:
    for job_id in job_ids:
        log.warning("job %d lost its worker and is now interrupted", job_id)


def stop_on_signals(shutdown: threading.Event):
    """Turn SIGTERM and SIGINT into a graceful stop; return a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in previous:
        signal.signal(number, lambda *_: shutdown.set())

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore


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


def live_workers(store: Store) -> list[dict]:
    """Registered workers that beat recently and, on this host, whose process exists."""
    now, host = time.time(), socket.gethostname()
    alive = []
    for worker in store.workers():
        if now - worker["heartbeat_at"] > ALIVE_WITHIN:
            continue
        if worker["host"] == host and not pid_alive(worker["pid"]):
            continue
        alive.append(worker)
    return alive


@contextmanager
def opened_store(home: Path | None, store: Store | None) -> Iterator[Store]:
    """The caller's store, or one opened for this call and closed after it."""
    if store is not None:
        yield store
        return
    opened = Store(home)
    try:
        yield opened
    finally:
        opened.close()


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker as its last heartbeat left it."""

    pid: int
    host: str
    device: str  # what it trains on: cpu, cuda:0, mps
    job_id: int | None  # the job it runs; None while idle
    heartbeat_at: float  # time.time() of its last heartbeat


@dataclass(frozen=True)
class WorkerStart:
    """What `ensure_worker` did: started a worker (`started`), or found one serving the device."""

    pid: int | None  # None only when a worker being started has not written its pid within 2 s
    started: bool


def worker_status(home: Path | None = None, store: Store | None = None) -> WorkerStatus | None:
    """The live worker most recently heard from, or None when none is alive.

    A page that asks every few seconds passes its long-lived `store`, so no
    database is opened per call.
    """
    with opened_store(home, store) as store:
        workers = live_workers(store)
    if not workers:
        return None
    worker = workers[0]
    return WorkerStatus(worker["pid"], worker["host"], worker["device"], worker["job_id"], worker["heartbeat_at"])


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


def rotate_log(path: Path, limit_bytes: int) -> None:
    """Move a log over `limit_bytes` to <name>.1, replacing the one kept there, so logs stay bounded.

    A worker still writing to the moved file goes on writing there (POSIX keeps the open file).
    """
    try:
        if path.stat().st_size > limit_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def spawn_worker(home: Path, device: str, lock_fd: int) -> int:
    """Start `python -m sparsebin worker` in its own session, holding the device lock `lock_fd`,
    logging to <home>/worker.log."""
    environment = dict(os.environ, SPARSEBIN_HOME=str(home))
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(paths.PROJECT_DIR), environment.get("PYTHONPATH", "")) if part
    )
    log_path = Path(home) / LOG_FILE
    rotate_log(log_path, LOG_LIMIT_BYTES)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sparsebin", "worker", "--device", device, "--single", "--lock-fd", str(lock_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=paths.PROJECT_DIR,
            env=environment,
            start_new_session=True,  # outlives the app and its terminal
            pass_fds=(lock_fd,),
        )
    return process.pid
