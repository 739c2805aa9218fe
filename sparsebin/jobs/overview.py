"""Who serves the queue and where each running job trains, as the Home page shows it."""

import time
from dataclasses import dataclass

from sparsebin.jobs.beats import live_workers
from sparsebin.jobs.queue import Status, Store


@dataclass(frozen=True)
class Service:
    """A live local worker or Ray dispatcher."""

    kind: str  # "worker" or "ray-dispatcher"
    name: str  # host:pid
    host: str
    pid: int
    device: str  # a worker's device; "ray" for a dispatcher
    address: str | None  # a dispatcher's Ray cluster address
    heartbeat_age_s: float  # seconds since its last heartbeat
    job_id: int | None  # a worker's current job (a dispatcher runs several: see RunningJob)


@dataclass(frozen=True)
class RunningJob:
    job_id: int
    label: str
    run_id: str
    served_by: str  # host:pid of the worker or dispatcher that claimed it
    node: str | None  # the machine training it; None while it waits for room on the cluster
    device: str | None
    epoch: int | None  # the epoch in progress, from its latest progress event
    epochs: int


@dataclass(frozen=True)
class Overview:
    services: list[Service]
    running: list[RunningJob]


def overview(store: Store) -> Overview:
    now = time.time()
    services = [
        Service(
            kind=worker["kind"],
            name=worker["name"],
            host=worker["host"],
            pid=worker["pid"],
            device=worker["device"],
            address=worker["address"],
            heartbeat_age_s=max(0.0, now - worker["heartbeat_at"]),
            job_id=worker["job_id"],
        )
        for worker in live_workers(store)
    ]
    running = [
        RunningJob(
            job_id=job.id,
            label=job.label,
            run_id=job.run_id,
            served_by=job.worker or "",
            node=job.node,
            device=job.device,
            epoch=job.progress["epoch"] if job.progress else None,
            epochs=job.config.epochs,
        )
        for job in sorted(store.jobs([Status.RUNNING]), key=lambda job: job.id)
    ]
    return Overview(services, running)
