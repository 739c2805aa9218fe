"""A cheap look at whether anything a page shows has changed, so an idle page need not redraw.

A page that refreshes on a timer would otherwise rebuild its whole job list or
status panel every few seconds while nothing happens. `current` answers in well
under a millisecond from one small SQL aggregate, the workers table and a few
`stat` calls: `marker` changes whenever something shown may have changed,
`shape` only when what runs or what exists changes (not with progress), and
`live` says whether something is running, so a page can poll quickly then and
slowly otherwise.
"""

import os
import time
from dataclasses import dataclass

from sparsebin import paths
from sparsebin.datasets.joined import BUILDABLE_DATASETS
from sparsebin.datasets.status import build_status
from sparsebin.jobs.beats import ALIVE_WITHIN
from sparsebin.jobs.queue import Status, Store


@dataclass(frozen=True)
class Activity:
    marker: tuple  # changes whenever anything a page shows may have changed
    shape: tuple  # changes when jobs start, end or are added, builds start or end, datasets or workers come and go
    live: bool  # a job runs, a queued job has a worker to run it, or a build runs


def current(store: Store) -> Activity:
    connection = store.connection()
    jobs = connection.execute(
        "SELECT COUNT(*), COALESCE(MAX(id), 0), TOTAL(status), TOTAL(cancel_requested), TOTAL(attempts), "
        "TOTAL(status = ?), TOTAL(status = ?), COALESCE(MAX(finished_at), 0), COALESCE(MAX(heartbeat_at), 0) "
        "FROM jobs",
        (Status.QUEUED, Status.RUNNING),
    ).fetchone()
    workers = tuple(
        row[0]
        for row in connection.execute(
            "SELECT name FROM workers WHERE stopped_at IS NULL AND heartbeat_at > ? ORDER BY name",
            (time.time() - ALIVE_WITHIN,),
        )
    )
    builds = []
    for name in BUILDABLE_DATASETS:
        status = build_status(name) or {}
        builds.append((name, status.get("state"), status.get("done"), status.get("error")))
    datasets = _dataset_names()
    queued, running = jobs[5], jobs[6]
    building = any(state == "running" for _, state, _, _ in builds)
    shape = (tuple(jobs[:6]), jobs[7], workers, tuple(build[:2] for build in builds), datasets)
    return Activity(
        marker=(tuple(jobs), workers, tuple(builds), datasets),
        shape=shape,
        live=bool(running or (queued and workers) or building),
    )


def _dataset_names() -> tuple[str, ...]:
    root = paths.data_dir()
    try:
        return tuple(sorted(entry.name for entry in os.scandir(root) if not entry.name.startswith(".")))
    except FileNotFoundError:
        return ()
