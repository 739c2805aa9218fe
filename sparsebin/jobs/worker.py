"""The local worker: claim a job, train it in this process, record how it ended, repeat.

`python -m sparsebin worker` runs `run_worker`, a `LocalWorker` that the shared loop
(`serve`, sparsebin.jobs.service) steps until stopped; the app starts one, detached,
with `ensure_worker` (sparsebin.jobs.launch). While a job trains, a `Heartbeat`
(sparsebin.jobs.beats) keeps it alive in the queue and picks up cancel requests, so the
training loop's `should_stop` only reads a flag, and a `ProgressWriter` writes its
progress.
"""

import logging
import os
import socket
import threading
import traceback
from pathlib import Path
from typing import Any

import torch

from sparsebin.datasets import load_dataset
from sparsebin.devices import resolve_device
from sparsebin.experiment import run_experiment
from sparsebin.jobs.beats import Heartbeat, ProgressWriter
from sparsebin.jobs.locks import take_device_lock
from sparsebin.jobs.queue import Job, Status, Store
from sparsebin.jobs.service import ServiceSettings, one_line, run_summary, serve, service_settings, worker_name

log = logging.getLogger("sparsebin.jobs.worker")


def run_worker(
    home: Path | None = None,
    *,
    settings: ServiceSettings | None = None,
    device: str | None = None,
    max_jobs: int | None = None,
    single: bool = False,
    lock_fd: int | None = None,
    shutdown: threading.Event | None = None,
    **changes: Any,
) -> int:
    """Run queued jobs until stopped (or `shutdown` is set); return how many jobs this worker ran.

    `settings`, with any of its fields given by keyword (`once=True`), say how
    the worker serves the queue (see ServiceSettings): `once` returns when the
    queue is empty, and jobs left interrupted (a worker killed, a machine
    rebooted) are queued again at start and whenever the queue is found empty,
    unless `auto_resume` is off.

    The worker holds its device's lock while it runs when no other process does
    (see `ensure_worker`); `single` exits at once when another does, and
    `lock_fd` is the lock `ensure_worker` took and handed over. SIGTERM or
    SIGINT stop the current job at its next step and leave it interrupted,
    ready to resume.
    """
    settings = service_settings(settings, **changes)
    store = Store(home)
    worker_device = resolve_device(device or "auto")
    lock = take_device_lock(store.home, worker_device, lock_fd)
    if lock is None and single:
        log.info("another worker already serves %s; exiting", worker_device)
        store.close()
        return 0
    shutdown = shutdown or threading.Event()
    return serve(LocalWorker(store, settings, worker_device, lock, shutdown), shutdown, max_jobs)


class LocalWorker:
    """A worker as `serve` steps it: one job at a time, trained in this process on `device`.

    Made, it registers on the queue and starts its heartbeat; `close` stops the
    heartbeat, leaves the queue and lets go of the device lock.
    """

    def __init__(self, store: Store, settings: ServiceSettings, device: str, lock, shutdown: threading.Event):
        self.store, self.settings, self.device, self.lock, self.shutdown = store, settings, device, lock, shutdown
        self.name = worker_name()
        self.jobs_run = 0
        store.register_worker(self.name, os.getpid(), socket.gethostname(), device)
        self.heartbeat = Heartbeat(store, self.name, settings.heartbeat_every)
        self.heartbeat.start()
        log.info("worker %s started on %s", self.name, device)

    def step(self) -> bool:
        """Claim a job for this device and train it to its end; False when the queue had none."""
        job = self.store.claim(self.name, self.device)
        if job is None:
            return False
        self.run_job(job)
        release_device_memory()  # after run_job returned, so its model is no longer referenced
        self.jobs_run += 1
        return True

    def idle(self) -> None:
        pass  # the heartbeat thread beats for the worker while it is idle too

    def close(self) -> None:
        self.heartbeat.finish()
        self.store.unregister_worker(self.name)
        self.store.close()
        if self.lock is not None:
            self.lock.close()
        log.info("worker %s stopped after %d job(s)", self.name, self.jobs_run)

    def run_job(self, job: Job) -> Status | None:
        """Train one claimed job and record how it ended; never raises for a bad job."""
        store, heartbeat = self.store, self.heartbeat
        log.info("job %d (run %s) started", job.id, job.run_id)
        heartbeat.watch(job.id)
        writer = ProgressWriter(store, job, self.settings.progress_every)
        config = job.config
        if config.device == "auto":
            config = config.replace(device=self.device)
        folder = store.run_folder(job.run_id)
        try:
            store.place(job.id, self.name, socket.gethostname(), resolve_device(config.device), os.getpid())
            dataset = load_dataset(job.dataset)
            result = run_experiment(
                dataset.embeddings,
                config,
                folder,
                progress=writer,
                should_stop=lambda: heartbeat.stop_requested.is_set() or self.shutdown.is_set(),
                concepts=dataset.concepts,
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
        if store.finish(job.id, self.name, status, error=error, traceback=trace, summary=summary):
            log.info("job %d %s%s", job.id, status.name.lower(), f": {error}" if error else "")
            return status
        log.warning("job %d was taken from this worker while it ran; its outcome is not recorded", job.id)
        return None


def release_device_memory() -> None:
    """Hand cached GPU memory back between jobs, so other programs on the GPU can use it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
