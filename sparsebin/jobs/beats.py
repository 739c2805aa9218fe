"""Signs of life: heartbeats, progress, and what becomes of a job when they stop.

A `Heartbeat` thread (with its own database connection) refreshes a worker's and its
job's heartbeat and picks up cancel requests, so the training loop's `should_stop` only
reads a flag; a `ProgressWriter` writes the loop's progress events every few seconds.
A worker silent for longer than ALIVE_WITHIN counts as gone (`live_workers`). A job
silent for longer than `stale_after` is marked interrupted by the next worker or
dispatcher to start or go idle (`recover_interrupted`), and resumes from the checkpoint
of its last finished epoch.
"""

import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sparsebin.jobs.queue import Job, Store
from sparsebin.processes import pid_alive
from sparsebin.progress import ProgressEvent

ALIVE_WITHIN = 10.0  # a worker whose last heartbeat is older than this counts as gone

log = logging.getLogger("sparsebin.jobs.beats")


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


def recover_interrupted(store: Store, stale_after: float, auto_resume: bool) -> None:
    """Mark jobs whose worker went silent as interrupted and, with `auto_resume`, queue every interrupted job again."""
    for job_id in store.interrupt_stale(stale_after):
        log.warning("job %d lost its worker and is now interrupted", job_id)
    if auto_resume:
        for job_id in store.resume_interrupted():
            log.info("job %d was interrupted; queued again to resume from its checkpoint", job_id)


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


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker as its last heartbeat left it."""

    pid: int
    host: str
    device: str  # what it trains on: cpu, cuda:0, mps
    job_id: int | None  # the job it runs; None while idle
    heartbeat_at: float  # time.time() of its last heartbeat


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
