"""The loop the local worker and the Ray dispatcher share: claim -> run -> done or failed, until stopped.

Each is a `Service`: its `step` claims jobs and trains them here (the worker) or follows
them on Ray (the dispatcher). `serve` drives both the same way: jobs left interrupted are
recovered at start and each time the queue is found empty, looks at an empty queue back
off, SIGTERM and SIGINT stop the running jobs at their next step (left interrupted, ready
to resume), and the service is closed however the loop ends. `ServiceSettings` holds the
knobs both take, once.
"""

import dataclasses
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sparsebin import runfolder
from sparsebin.jobs.beats import recover_interrupted
from sparsebin.jobs.queue import RUN_FACTS, Store
from sparsebin.metrics import HEADLINE_METRICS


def auto_resume_enabled() -> bool:
    """The setting: SPARSEBIN_AUTO_RESUME=0 leaves interrupted jobs for the user to resume."""
    return os.environ.get("SPARSEBIN_AUTO_RESUME", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class ServiceSettings:
    """How a worker or a dispatcher serves the queue (the `worker` command's options)."""

    once: bool = False  # return when the queue is empty (and nothing runs) instead of waiting for more
    idle_sleep: float = 1.0  # seconds between looks at an empty queue, doubling to at most 4x while it stays empty
    stale_after: float = 30.0  # seconds without a heartbeat before a running job counts as interrupted
    progress_every: float = 2.0  # seconds between progress writes to the database
    heartbeat_every: float = 1.0  # seconds between heartbeats and cancel checks
    # Queue interrupted jobs again (at start and when idle); default on, unless SPARSEBIN_AUTO_RESUME=0 when made.
    auto_resume: bool = field(default_factory=auto_resume_enabled)


def service_settings(settings: ServiceSettings | None = None, **changes: Any) -> ServiceSettings:
    """`settings` (by default the defaults, made now) with `changes`; a change given as None keeps the value.

    So `run_worker(once=True)` and the command line's options left out (None) both read as meant.
    """
    base = settings if settings is not None else ServiceSettings()
    return dataclasses.replace(base, **{name: value for name, value in changes.items() if value is not None})


class Service(Protocol):
    """What `serve` drives: the local worker or the Ray dispatcher, registered on the queue."""

    store: Store
    settings: ServiceSettings
    jobs_run: int

    def step(self) -> bool:
        """Claim jobs and run or follow them; False when none was in hand (the queue was empty)."""

    def idle(self) -> None:
        """What to do before each sleep on an empty queue."""

    def close(self) -> None:
        """Stop what still runs, leave the queue and let go of the device lock."""


def serve(service: Service, shutdown: threading.Event, max_jobs: int | None = None) -> int:
    """Step `service` until `shutdown` is set, `max_jobs` have run or (with `once`) the queue is empty.

    Returns how many jobs ran. SIGTERM and SIGINT set `shutdown` while it serves (from the main thread).
    """
    settings = service.settings
    restore_signals = stop_on_signals(shutdown)
    idle_rounds = 0
    try:
        recover_interrupted(service.store, settings.stale_after, settings.auto_resume)
        while not shutdown.is_set() and (max_jobs is None or service.jobs_run < max_jobs):
            if service.step():
                idle_rounds = 0
                continue
            if settings.once:
                break
            service.idle()
            shutdown.wait(min(settings.idle_sleep * 2**idle_rounds, settings.idle_sleep * 4))  # back off when idle
            idle_rounds += 1
            recover_interrupted(service.store, settings.stale_after, settings.auto_resume)
    finally:
        restore_signals()
        service.close()
    return service.jobs_run


def stop_on_signals(shutdown: threading.Event) -> Callable[[], None]:
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


def worker_name() -> str:
    """How the workers table and a running job name this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_summary(folder: Path) -> dict:
    """The headline validation metrics (train metrics when nothing was held out) and the whole-run facts
    (RUN_FACTS) from metrics.json's groups; a fact the run was not measured by is None."""
    metrics = runfolder.load_metrics(folder)
    _, part = runfolder.evaluated_part(metrics)
    facts = {"converged": (metrics.get("convergence") or {}).get("converged")}
    for group in ("bit_health", "interpretability", "stability"):
        facts |= metrics.get(group) or {}
    summary = {name: part.get(name) for name in HEADLINE_METRICS} | {name: facts.get(name) for name in RUN_FACTS}
    return summary | {"asymmetric_score": part.get("asymmetric_score")}


def one_line(error: BaseException) -> str:
    """An error as a failed job records it: its type and its message's first line."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
