"""The job queue and run registry: one SQLite file in WAL mode plus a folder per run.

    <home>/sparsebin.db        jobs (one per run), training progress, live workers
    <home>/runs/<run_id>/      what run_experiment writes, plus the checkpoint

Pages only enqueue; a worker claims a job with an atomic `UPDATE ... RETURNING`
inside `BEGIN IMMEDIATE`, so two workers never take the same job. Every thread
gets its own connection, because a SQLite connection must not cross threads.
"""

import enum
import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin import paths
from sparsebin.config import NEUTRAL_SETTINGS, TrainConfig, plan_grid, preset_of
from sparsebin.datasets.store import EMBEDDINGS_FILE, dataset_folder
from sparsebin.devices import claimable_devices
from sparsebin.errors import DuplicateRunError, JobError
from sparsebin.experiment import CHECKPOINT
from sparsebin.metrics import ASYMMETRIC_SCORE, HEADLINE_METRICS
from sparsebin.progress import read_record

DATABASE = "sparsebin.db"
SCHEMA_VERSION = 2  # PRAGMA user_version once the schema exists; raise it when SCHEMA changes
RUNS = "runs"

# list_runs shows a finished run's validation part's HEADLINE_METRICS, and beside them these whole-run facts
# (metrics.json's groups: bit health over all rows, convergence from the history, interpretability over all
# rows, training stability); both are copied into the database when a job ends (`service.run_summary`), so
# listing runs never opens a run folder. A run measured before a fact existed shows it as NaN.
RUN_FACTS = (
    "dead_all_rows",
    "silent_held_out",
    "silent_held_out_expected",
    "silent_held_out_excess",
    "rare_bits",
    "dense_all_rows",
    "n_rows",
    "converged",
    "coherent_share",
    "coherence_median",
    "probe_f1",
    "probe_f1_chance",
    "root_labelled_share",
    "code_churn",
    "loss_roughness",
    "grad_norm_mean",
    "grad_norm_max",
    "nonfinite_steps",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    config TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    status INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    progress TEXT,
    error TEXT,
    traceback TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    summary TEXT,
    node TEXT,
    device TEXT,
    runner_pid INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
CREATE TABLE IF NOT EXISTS progress (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    device TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    job_id INTEGER,
    stopped_at REAL,
    kind TEXT NOT NULL DEFAULT 'worker',
    address TEXT
);
"""
# Columns added after version 1, as (table, column, declaration): a database
# written by an older sparsebin gets them on its first open, its rows kept.
ADDED_COLUMNS = (
    ("jobs", "node", "TEXT"),  # the machine training the job's current or last attempt
    ("jobs", "device", "TEXT"),  # the device it trains on there, as that machine names it
    ("jobs", "runner_pid", "INTEGER"),  # the process training it there
    ("workers", "kind", "TEXT NOT NULL DEFAULT 'worker'"),  # worker or ray-dispatcher
    ("workers", "address", "TEXT"),  # a dispatcher's Ray cluster address
)


class Status(enum.IntEnum):
    QUEUED = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3
    CANCELLED = 4
    INTERRUPTED = 5


AUTO_RESUME_ATTEMPTS = 3  # a job interrupted this many times (a crash it causes, say) waits for the user

FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)
RESUMABLE = (Status.INTERRUPTED, Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: int
    run_id: str
    dataset: str
    config: TrainConfig
    status: Status
    label: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    progress: dict | None  # the last progress event, plus "eta_s"
    error: str | None  # one-line reason of a failure or interruption
    traceback: str | None
    worker: str | None  # "host:pid" of the worker that claimed it last
    cancel_requested: bool
    attempts: int = 0  # times a worker has claimed it; 1 for a run never resumed
    node: str | None = None  # where its current or last attempt trains; None until it has started there
    device: str | None = None
    runner_pid: int | None = None


class Store:
    """Jobs, runs and their training history under one home folder."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else paths.home_dir()
        self.runs_dir = self.home / RUNS
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.home / DATABASE
        self._local = threading.local()
        if self.connection().execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self.create_schema()

    def create_schema(self) -> None:
        """Create the tables, or add the columns an older version lacks, once.

        Later opens skip this write (and its write lock) via user_version.
        """
        with self.transaction() as connection:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            for table, column, declaration in ADDED_COLUMNS:
                present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections ---------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout = 60000")
            connection.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode loses at most the last commits on power loss, never consistency.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close this thread's connection (others close their own)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (BEGIN IMMEDIATE)."""
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # -- submitting ----------------------------------------------------------

    def submit(self, dataset: str, config: TrainConfig, label: str = "", again: bool = False) -> Job:
        """Queue one training run, after checking the config against the dataset."""
        return self.submit_many(dataset, [config], [label], again)[0]

    def submit_grid(self, dataset: str, base: TrainConfig, grid: dict[str, list], again: bool = False) -> list[Job]:
        """Queue one run per combination of the grid; all are checked before any is queued."""
        planned = plan_grid(base, grid, count_rows(dataset))
        return self.submit_many(dataset, [config for _, config in planned], [label for label, _ in planned], again)

    def submit_many(
        self, dataset: str, configs: list[TrainConfig], labels: list[str], again: bool = False
    ) -> list[Job]:
        """Queue the runs, all checked before any is queued. A run identical to a queued, running or finished
        one (see `replicate_of`) is refused with a DuplicateRunError naming it, unless `again`: it would only
        repeat that run, and pooled as another seed it would count one replicate twice."""
        n_rows = count_rows(dataset)
        for config in configs:
            config.validate(n_rows=n_rows)
        if not again:
            self.refuse_repeats(dataset, configs)
        now = time.time()
        ids = []
        with self.transaction() as connection:
            for config, label in zip(configs, labels, strict=True):
                cursor = connection.execute(
                    "INSERT INTO jobs (run_id, dataset, config, label, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (new_run_id(), str(dataset), config.to_json(), label, Status.QUEUED, now),
                )
                ids.append(cursor.lastrowid)
        return [self.job(job_id) for job_id in ids]

    def held_runs(self, dataset: str) -> dict[tuple, Job]:
        """The queued, running and finished runs of a dataset by `replicate_of` their config (the oldest
        job of each): what a new run must not repeat."""
        held = {}
        for job in reversed(self.jobs([Status.QUEUED, Status.RUNNING, Status.DONE])):  # oldest first
            if job.dataset == str(dataset):
                held.setdefault(replicate_of(job.config), job)
        return held

    def missing(self, dataset: str, planned: list[tuple[str, TrainConfig]]) -> list[tuple[str, TrainConfig]]:
        """The planned (label, config) runs that no queued, running or finished run of the dataset already is:
        what a plan (the study, the sweep) still lacks."""
        held = self.held_runs(dataset)
        return [(label, config) for label, config in planned if replicate_of(config) not in held]

    def refuse_repeats(self, dataset: str, configs: list[TrainConfig]) -> None:
        """DuplicateRunError when a config repeats a queued, running or finished run of the dataset, or
        another config of the same submission."""
        held: dict[tuple, Job | None] = dict(self.held_runs(dataset))
        repeats, first = 0, None
        for config in configs:
            key = replicate_of(config)
            if key in held:
                repeats += 1
                first = first or held[key]
            held.setdefault(key, None)
        if repeats:
            what = "this run is" if len(configs) == 1 else f"{repeats} of these {len(configs)} runs are"
            named = (
                f"job {first.id} (run {first.run_id}, {first.status.name.lower()})"
                if first
                else "another run of this submission"
            )
            raise DuplicateRunError(
                f"{what} identical in every setting and seed to a run already queued, running or finished "
                f"on {dataset}; the first repeats {named}"
            )

    # -- reading -------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        row = self.connection().execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"there is no job {job_id}.")
        return job_from_row(row)

    def job_for_run(self, run_id: str) -> Job:
        row = self.connection().execute("SELECT * FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise JobError(f"there is no run {run_id!r}.")
        return job_from_row(row)

    def jobs(self, statuses: Iterable[Status] | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first, optionally only those in the given statuses."""
        query, values = "SELECT * FROM jobs", []
        if statuses is not None:
            statuses = [int(status) for status in statuses]
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            values += statuses
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            values.append(int(limit))
        return [job_from_row(row) for row in self.connection().execute(query, values)]

    def run_folder(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            raise JobError(f"{run_id!r} is not a run id.")
        return self.runs_dir / run_id

    def history(self, run_id: str) -> list[dict]:
        """The progress records so far, in step order (live while running), under today's names."""
        rows = self.connection().execute("SELECT event FROM progress WHERE run_id = ? ORDER BY step", (run_id,))
        return [read_record(json.loads(row["event"])) for row in rows]

    def list_runs(self, dataset: str | None = None) -> pd.DataFrame:
        """One row per job with every setting and, once done, its key validation metrics and run facts.

        The settings are every TrainConfig field plus the two distances each
        term used (`reconstruction_distance`, `alignment_distance`), so
        comparisons can tell runs apart by anything that changes a result, and
        `preset`: the preset whose settings the run has (paper, recommended) or none.
        """
        query, values = "SELECT * FROM jobs", []
        if dataset is not None:
            query, values = query + " WHERE dataset = ?", [str(dataset)]
        rows = []
        for record in self.connection().execute(query + " ORDER BY id DESC", values).fetchall():
            job = job_from_row(record)
            row = {
                "run_id": job.run_id,
                "job_id": job.id,
                "dataset": job.dataset,
                "status": job.status.name.lower(),
                "label": job.label,
                "created_at": job.created_at,
            }
            row.update(job.config.to_dict())
            row["reconstruction_distance"] = job.config.reconstruction_distance
            row["alignment_distance"] = job.config.alignment_distance
            row["preset"] = preset_of(job.config) or "none"
            summary = json.loads(record["summary"]) if job.status == Status.DONE and record["summary"] else {}
            if summary.get("asymmetric_score") != ASYMMETRIC_SCORE:  # measured by the old plain sum, or not at all
                summary.pop("recall_at_10_asymmetric", None)
            row.update({name: _summary_value(summary.get(name)) for name in (*HEADLINE_METRICS, *RUN_FACTS)})
            rows.append(row)
        settings = [field.name for field in fields(TrainConfig)] + ["reconstruction_distance", "alignment_distance"]
        columns = ["run_id", "job_id", "dataset", "status", "label", "created_at", *settings, "preset"]
        return pd.DataFrame(rows, columns=columns + [*HEADLINE_METRICS, *RUN_FACTS])

    # -- user actions --------------------------------------------------------

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one stops at its next step."""
        with self.transaction() as connection:
            job = self._locked_job(connection, job_id)
            if job.status == Status.QUEUED:
                connection.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                    (Status.CANCELLED, time.time(), "cancelled before it started.", job.id),
                )
            elif job.status == Status.RUNNING:
                connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job.id,))
            else:
                raise JobError(
                    f"job {job.id} is {job.status.name.lower()}; only queued or running jobs can be cancelled."
                )
        return self.job(job_id)

    def resume(self, job_id: int) -> Job:
        """Queue an interrupted, failed or cancelled job again; it continues from its checkpoint."""
        with self.transaction() as connection:
            job = self._locked_job(connection, job_id)
            if job.status not in RESUMABLE:
                raise JobError(
                    f"job {job.id} is {job.status.name.lower()}; "
                    "only interrupted, failed or cancelled jobs can be resumed."
                )
            connection.execute(
                "UPDATE jobs SET status = ?, cancel_requested = 0, error = NULL, traceback = NULL, "
                "started_at = NULL, finished_at = NULL WHERE id = ?",
                (Status.QUEUED, job.id),
            )
        return self.job(job_id)

    def resume_interrupted(self, max_attempts: int = AUTO_RESUME_ATTEMPTS) -> list[int]:
        """Queue every interrupted job again, as a worker starting does; return their ids.

        The job's error becomes a note saying what happened (shown in the job
        list while it waits and runs). A job already claimed `max_attempts`
        times is left interrupted, with a note asking the user to resume it,
        so a job that brings its worker down is not retried forever.
        """
        resumed = []
        at = time.strftime("%H:%M:%S")
        with self.transaction() as connection:
            rows = connection.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id", (Status.INTERRUPTED,))
            for job in [job_from_row(row) for row in rows.fetchall()]:
                reason = (job.error or "interrupted").split("; resume it")[0].rstrip(".")
                if job.attempts >= max_attempts:
                    if "not resumed automatically" not in (job.error or ""):
                        note = f"{reason}; not resumed automatically after {job.attempts} attempts: resume it by hand."
                        connection.execute("UPDATE jobs SET error = ? WHERE id = ?", (note, job.id))
                    continue
                saved = (self.run_folder(job.run_id) / CHECKPOINT).is_file()
                start = "from its last finished epoch" if saved else "from the start (no epoch had finished)"
                note = f"interrupted ({reason}); resumed automatically at {at}, {start}."
                connection.execute(
                    "UPDATE jobs SET status = ?, cancel_requested = 0, error = ?, traceback = NULL, "
                    "started_at = NULL, finished_at = NULL WHERE id = ?",
                    (Status.QUEUED, note, job.id),
                )
                resumed.append(job.id)
        return resumed

    def _locked_job(self, connection: sqlite3.Connection, job_id: int) -> Job:
        row = connection.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"there is no job {job_id}.")
        return job_from_row(row)

    # -- worker side ---------------------------------------------------------

    def claim(self, worker: str, device: str | None = None) -> Job | None:
        """Atomically take the oldest queued job for `worker`, or None if none is queued.

        A worker serving `device` takes only jobs asking for that device (under
        any of its names: `cuda` is `cuda:0`) or for `auto`; without a device,
        any job.
        """
        now = time.time()
        names = claimable_devices(device) if device is not None else ()
        which = f"AND json_extract(config, '$.device') IN ({', '.join('?' * len(names))}) " if names else ""
        with self.transaction() as connection:
            row = connection.execute(
                "UPDATE jobs SET status = ?, started_at = ?, heartbeat_at = ?, worker = ?, attempts = attempts + 1, "
                "node = NULL, device = NULL, runner_pid = NULL "
                f"WHERE id = (SELECT id FROM jobs WHERE status = ? {which}ORDER BY id LIMIT 1) RETURNING *",
                (Status.RUNNING, now, now, worker, Status.QUEUED, *names),
            ).fetchone()
        return job_from_row(row) if row is not None else None

    def place(self, job_id: int, worker: str, node: str, device: str, pid: int) -> None:
        """Record where a claimed job trains: the machine, its device there and the training process."""
        self.connection().execute(
            "UPDATE jobs SET node = ?, device = ?, runner_pid = ? WHERE id = ? AND worker = ? AND status = ?",
            (node, device, pid, job_id, worker, Status.RUNNING),
        )

    def beat(self, job_id: int, worker: str) -> bool:
        """Refresh a running job's heartbeat; return whether a cancel was asked for."""
        statement = (
            "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status = ? RETURNING cancel_requested"
        )
        row = self.connection().execute(statement, (time.time(), job_id, worker, Status.RUNNING)).fetchone()
        # A job no longer ours (marked interrupted meanwhile) must stop too.
        return row is None or bool(row["cancel_requested"])

    def record_progress(self, job_id: int, run_id: str, events: list[dict], latest: dict | None) -> None:
        """Store progress events (a redone step replaces its earlier record) and the latest summary."""
        with self.transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO progress (run_id, step, event) VALUES (?, ?, ?)",
                [(run_id, event["step"], json.dumps(event)) for event in events],
            )
            if latest is not None:
                connection.execute(
                    "UPDATE jobs SET progress = ?, heartbeat_at = ? WHERE id = ?",
                    (json.dumps(latest), time.time(), job_id),
                )

    def finish(
        self,
        job_id: int,
        worker: str,
        status: Status,
        *,
        error: str | None = None,
        traceback: str | None = None,
        summary: dict | None = None,
    ) -> bool:
        """End a job this worker holds; False when it was taken from the worker meanwhile."""
        with self.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, traceback = ?, summary = ?, "
                "cancel_requested = 0 WHERE id = ? AND worker = ? AND status = ?",
                (
                    status,
                    time.time(),
                    error,
                    traceback,
                    json.dumps(summary) if summary is not None else None,
                    job_id,
                    worker,
                    Status.RUNNING,
                ),
            )
        return cursor.rowcount == 1

    def set_summary(self, job_id: int, summary: dict) -> None:
        """Replace a finished job's summary (after its run was measured again)."""
        with self.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET summary = ? WHERE id = ? AND status = ?", (json.dumps(summary), job_id, Status.DONE)
            )
        if cursor.rowcount != 1:
            raise JobError(f"job {job_id} is not a finished job; only a finished run has a summary.")

    def interrupt_stale(self, stale_after: float) -> list[int]:
        """Mark running jobs whose heartbeat is older than `stale_after` seconds as interrupted."""
        now = time.time()
        with self.transaction() as connection:
            rows = connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? "
                "WHERE status = ? AND (heartbeat_at IS NULL OR heartbeat_at < ?) RETURNING id",
                (
                    Status.INTERRUPTED,
                    now,
                    f"its worker stopped sending heartbeats for over {stale_after:g} s; resume it to continue.",
                    Status.RUNNING,
                    now - stale_after,
                ),
            ).fetchall()
        return [row["id"] for row in rows]

    # -- the worker registry -------------------------------------------------

    def register_worker(
        self, name: str, pid: int, host: str, device: str, kind: str = "worker", address: str | None = None
    ) -> None:
        now = time.time()
        with self.transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO workers (name, pid, host, device, started_at, heartbeat_at, kind, address) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, pid, host, device, now, now, kind, address),
            )

    def beat_worker(self, name: str, job_id: int | None) -> None:
        self.connection().execute(
            "UPDATE workers SET heartbeat_at = ?, job_id = ? WHERE name = ?", (time.time(), job_id, name)
        )

    def unregister_worker(self, name: str) -> None:
        self.connection().execute(
            "UPDATE workers SET stopped_at = ?, job_id = NULL WHERE name = ?", (time.time(), name)
        )

    def workers(self) -> list[dict]:
        """Workers that have not said they stopped, most recent heartbeat first."""
        rows = self.connection().execute("SELECT * FROM workers WHERE stopped_at IS NULL ORDER BY heartbeat_at DESC")
        return [dict(row) for row in rows]


def _summary_value(value):
    """A summary entry as a table cell: a missing one (an older run, a queued one) is NaN."""
    return math.nan if value is None else value


def count_rows(dataset: str) -> int:
    """A dataset's row count from its embeddings' .npy header, without reading its concept table.

    A missing dataset raises the DataError that names what is there.
    """
    return np.load(dataset_folder(dataset) / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False).shape[0]


def new_run_id() -> str:
    """A sortable, unique folder name: creation time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def replicate_of(config: TrainConfig) -> tuple:
    """What makes two runs of one dataset the same replicate: every setting but the neutral ones
    (where it trains, how often it reports), seed included."""
    return tuple((name, value) for name, value in config.to_dict().items() if name not in NEUTRAL_SETTINGS)


def job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        run_id=row["run_id"],
        dataset=row["dataset"],
        config=TrainConfig.from_json(row["config"]),
        status=Status(row["status"]),
        label=row["label"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"],
        progress=read_record(json.loads(row["progress"])) if row["progress"] else None,
        error=row["error"],
        traceback=row["traceback"],
        worker=row["worker"],
        cancel_requested=bool(row["cancel_requested"]),
        attempts=row["attempts"],
        node=row["node"],
        device=row["device"],
        runner_pid=row["runner_pid"],
    )
