"""The Ray dispatcher: the queue's jobs trained as Ray actors across a cluster.

`python -m sparsebin worker --ray [ADDRESS]` runs `run_dispatcher` on the
machine that holds the queue. It claims jobs as the local worker does (same
claim, heartbeats, cancel flag, progress table), and hands each to a `Trainer`
actor (sparsebin.jobs.remote) asking for one GPU when the job trains on CUDA,
for CPUs otherwise; as many run at once as the cluster has room for.

Every fraction of a second the dispatcher drains each trainer: progress events
go to the queue (so the app's live curves work unchanged) and each new
checkpoint is written into the run folder here. When a run ends, its files
come back as bytes and are written into the run folder here, metrics.json
last, as the local worker's run_experiment writes them. Nothing is shared
with the nodes but the Ray cluster: the dataset goes out through Ray's
object store. A trainer lost with its process or node leaves its job
interrupted; resumed, the job continues from the last checkpoint shipped back,
on whichever node has room.
"""

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from sparsebin import runfolder
from sparsebin.datasets import load_dataset
from sparsebin.datasets.store import EMBEDDINGS_FILE, dataset_folder
from sparsebin.errors import ConfigError
from sparsebin.experiment import CHECKPOINT
from sparsebin.jobs.beats import ProgressWriter, recover_interrupted, with_eta
from sparsebin.jobs.locks import DISPATCHER_DEVICE, take_device_lock
from sparsebin.jobs.queue import Job, Status, Store
from sparsebin.jobs.remote import Trainer
from sparsebin.jobs.service import ServiceSettings, one_line, run_summary, serve, service_settings, worker_name

DRAIN_EVERY = 0.5  # seconds between asking a trainer for progress and a newer checkpoint
STOP_GRACE = 20.0  # seconds a trainer asked to stop may take before its actor is killed
IDLE_KEEP = 30.0  # seconds an idle trainer keeps its reserved CPUs or GPU before it is ended
KIND = "ray-dispatcher"  # the workers table's kind for a dispatcher
STOPPED = "the dispatcher was stopped; resume it to continue."

log = logging.getLogger("sparsebin.jobs.dispatcher")


@dataclass
class TrainerActor:
    """A trainer actor, the resources it holds and where it runs."""

    actor: "ray.actor.ActorHandle"
    gpu: bool
    where: dict | None = None  # node, device, pid, once the actor has answered
    where_ref: "ray.ObjectRef | None" = None
    idle_since: float = 0.0


@dataclass
class Running:
    """A claimed job and its trainer, as the dispatcher follows it."""

    job: Job
    trainer: TrainerActor
    run_ref: "ray.ObjectRef"
    writer: ProgressWriter
    drain_ref: "ray.ObjectRef | None" = None
    drained_at: float = 0.0
    stop_asked_at: float | None = None
    stop_reason: str | None = None  # "cancel" or "shutdown"
    placed: bool = False


class Dispatcher:
    """Claims jobs while the cluster has room and follows each to its end, as `serve` steps it.

    Made, it registers on the queue as a dispatcher at `cluster`; `close` stops
    what runs, leaves the queue and lets go of the dispatcher's lock.
    """

    def __init__(
        self,
        store: Store,
        settings: ServiceSettings,
        *,
        cluster: str,
        lock,
        device: str | None,
        max_tasks: int | None,
        cpus_per_task: int,
        poll_every: float,
    ):
        self.store, self.settings, self.lock = store, settings, lock
        self.device = device  # for jobs whose config says auto; None: cuda when the cluster has GPUs
        self.max_tasks, self.cpus_per_task = max_tasks, cpus_per_task
        self.poll_every = poll_every  # seconds to wait for a trainer's answer while jobs run
        self.name = worker_name()
        self.running: dict[int, Running] = {}
        self.idle_trainers: list[TrainerActor] = []
        # name -> (embeddings mtime, embeddings object, concept table object)
        self.datasets: dict[str, tuple[float, ray.ObjectRef, ray.ObjectRef]] = {}
        self.beaten_at = 0.0
        self.jobs_run = 0
        self.lost = False  # a trainer was lost since the dispatcher last looked for interrupted jobs
        store.register_worker(
            self.name, os.getpid(), socket.gethostname(), DISPATCHER_DEVICE, kind=KIND, address=cluster
        )

    # -- as `serve` steps it ------------------------------------------------

    def step(self) -> bool:
        """Claim jobs while there is room and follow the running ones; False when nothing runs."""
        self.fill()
        if not self.running:
            return False
        self.poll(self.poll_every)
        if self.lost:  # resume it now, not when the whole grid is done
            self.lost = False
            recover_interrupted(self.store, self.settings.stale_after, self.settings.auto_resume)
        return True

    def idle(self) -> None:
        self.beat()
        self.release_idle(IDLE_KEEP)

    def close(self) -> None:
        self.stop_all(STOP_GRACE)
        self.store.unregister_worker(self.name)
        self.store.close()
        if self.lock is not None:
            self.lock.close()
        log.info("dispatcher %s stopped after %d job(s)", self.name, self.jobs_run)

    # -- capacity and claiming -------------------------------------------

    def capacity(self) -> int:
        """How many jobs may run at once: --max-tasks, else as many as the cluster's CPUs allow."""
        if self.max_tasks is not None:
            return self.max_tasks
        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_task))

    def fill(self) -> None:
        """Claim and start jobs while there is room."""
        while len(self.running) < self.capacity():
            job = self.store.claim(self.name)
            if job is None:
                break
            self.start(job)

    def start(self, job: Job) -> None:
        """Hand a claimed job to a trainer; a job that cannot start fails with its reason."""
        try:
            config, gpu = self.placed_config(job)
            folder = self.store.run_folder(job.run_id)
            runfolder.refuse_finished(folder)
            checkpoint = folder / CHECKPOINT
            data = checkpoint.read_bytes() if checkpoint.exists() else None
            embeddings, concepts = self.dataset_objects(job.dataset)
        except Exception as failure:
            self.finish(job, Status.FAILED, error=one_line(failure), trace=traceback.format_exc())
            return
        trainer = self.trainer_for(gpu)
        run_ref = trainer.actor.run.remote(job.id, embeddings, config.to_json(), data, concepts)
        writer = ProgressWriter(self.store, job, self.settings.progress_every)
        self.running[job.id] = Running(job, trainer, run_ref, writer, drained_at=time.monotonic())
        log.info("job %d (run %s) sent to Ray (%s)", job.id, job.run_id, "GPU" if gpu else "CPU")

    def placed_config(self, job: Job):
        """The config as the trainer runs it, and whether it needs a GPU.

        Ray shows a GPU actor only its own GPU, as cuda:0, so any CUDA device becomes "cuda".
        """
        config = job.config
        device = config.device
        if device == "auto":
            device = self.device or ("cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu")
        gpu = device.startswith("cuda")
        if gpu and ray.cluster_resources().get("GPU", 0) < 1:
            raise ConfigError(f"the job trains on {device}, but the Ray cluster has no GPU; resume it once one joins.")
        return config.replace(device="cuda" if gpu else device), gpu

    def dataset_objects(self, name: str) -> tuple["ray.ObjectRef", "ray.ObjectRef"]:
        """The dataset's embeddings and concept table in Ray's object store, put there once per version."""
        mtime = (dataset_folder(name) / EMBEDDINGS_FILE).stat().st_mtime
        cached = self.datasets.get(name)
        if cached is None or cached[0] != mtime:
            dataset = load_dataset(name)
            embeddings = np.ascontiguousarray(dataset.embeddings)
            self.datasets[name] = (mtime, ray.put(embeddings), ray.put(dataset.concepts))
        return self.datasets[name][1:]

    def trainer_for(self, gpu: bool) -> TrainerActor:
        """An idle trainer of this shape, or a new one (its process start is paid once).

        Idle trainers of the other shape are ended first: they hold CPUs the new one may need.
        """
        for trainer in self.idle_trainers:
            if trainer.gpu == gpu:
                self.idle_trainers.remove(trainer)
                return trainer
        self.release_idle(0.0)
        options = {"num_cpus": self.cpus_per_task, "num_gpus": 1 if gpu else 0, "max_concurrency": 4}
        actor = ray.remote(Trainer).options(**options).remote(self.cpus_per_task)
        return TrainerActor(actor, gpu, where_ref=actor.where.remote())

    def release_idle(self, older_than: float) -> None:
        """End trainers idle for longer than `older_than` seconds, so their CPUs or GPU go back to the cluster."""
        now = time.monotonic()
        for trainer in [t for t in self.idle_trainers if now - t.idle_since >= older_than]:
            self.idle_trainers.remove(trainer)
            ray.kill(trainer.actor)

    # -- following running jobs ------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for any trainer to answer, then deal with every answer."""
        pending = []
        for item in self.running.values():
            pending += [ref for ref in (item.run_ref, item.drain_ref, item.trainer.where_ref) if ref is not None]
        if pending:
            ray.wait(pending, num_returns=1, timeout=timeout)
        now = time.monotonic()
        for item in list(self.running.values()):
            self.follow(item, now)
        if now - self.beaten_at >= self.settings.heartbeat_every:
            self.beat()
            self.beaten_at = now

    def follow(self, item: Running, now: float) -> None:
        trainer = item.trainer
        if trainer.where_ref is not None and ready(trainer.where_ref):
            try:
                trainer.where = ray.get(trainer.where_ref)
            except RayActorError:
                pass  # the run's answer says the trainer is gone
            trainer.where_ref = None
        if trainer.where is not None and not item.placed:
            where = trainer.where
            self.store.place(item.job.id, self.name, where["node"], where["device"], where["pid"])
            item.placed = True
            log.info("job %d trains on %s, %s (pid %d)", item.job.id, where["node"], where["device"], where["pid"])
        if item.drain_ref is not None and ready(item.drain_ref):
            try:
                self.take_drained(item, ray.get(item.drain_ref))
            except RayActorError:
                pass
            item.drain_ref = None
        if ready(item.run_ref):
            self.end(item)
            return
        if item.drain_ref is None and now - item.drained_at >= DRAIN_EVERY:
            item.drain_ref = trainer.actor.drain.remote(item.job.id)
            item.drained_at = now
        if item.stop_asked_at is not None and now - item.stop_asked_at > STOP_GRACE:
            log.warning("job %d: its trainer did not stop within %g s; ending its actor", item.job.id, STOP_GRACE)
            ray.kill(trainer.actor)
            item.stop_asked_at = now  # its run now answers with the actor's end

    def take_drained(self, item: Running, drained: dict) -> None:
        for event in drained["events"]:
            item.writer(event)
        if drained["checkpoint"] is not None:
            folder = self.store.run_folder(item.job.run_id)
            folder.mkdir(parents=True, exist_ok=True)
            runfolder.write_atomic(folder / CHECKPOINT, drained["checkpoint"])

    def beat(self) -> None:
        """Heartbeats for the dispatcher and each running job; a cancel asked for stops its trainer."""
        self.store.beat_worker(self.name, None)
        for item in self.running.values():
            if self.store.beat(item.job.id, self.name) and item.stop_asked_at is None:
                self.ask_stop(item, "cancel")

    def ask_stop(self, item: Running, reason: str) -> None:
        item.trainer.actor.stop.remote(item.job.id)
        item.stop_asked_at, item.stop_reason = time.monotonic(), reason

    def end(self, item: Running) -> None:
        """Record how a job whose run answered ended, with its files written into the run folder."""
        del self.running[item.job.id]
        job, folder = item.job, self.store.run_folder(item.job.run_id)
        error = trace = summary = None
        try:
            outcome = ray.get(item.run_ref)
        except RayActorError:
            item.writer.write(item.writer.pending)  # what was drained before the trainer was lost
            status = Status.CANCELLED if self.cancel_asked(item) else Status.INTERRUPTED
            self.lost = self.lost or status == Status.INTERRUPTED
            error = (
                "cancelled while running; its trainer was ended."
                if status == Status.CANCELLED
                else "its Ray trainer was lost (its process or node ended); resume it to continue "
                "from the last checkpoint shipped back."
            )
        except RayTaskError as failure:
            cause = failure.cause if isinstance(failure.cause, BaseException) else failure
            status, error, trace = Status.FAILED, one_line(cause), remote_traceback(failure)
            self.keep_idle(item.trainer)
        except RayError as failure:  # the run's result itself was lost, or the node ran out of memory
            status, error = Status.INTERRUPTED, f"{one_line(failure)}; resume it to continue."
            ray.kill(item.trainer.actor)
        else:
            self.keep_idle(item.trainer)
            try:
                status, error, summary = self.store_outcome(item, folder, outcome)
            except Exception as failure:  # e.g. a full disk here: the job fails, the dispatcher goes on
                status, error, trace = Status.FAILED, one_line(failure), traceback.format_exc()
        self.finish(job, status, error=error, trace=trace, summary=summary)

    def store_outcome(self, item: Running, folder: Path, outcome: dict) -> tuple[Status, str | None, dict | None]:
        """Write a run's files and whole history here; return its status, error and summary."""
        write_run_files(folder, outcome["files"])
        history = runfolder.load_history(folder) if (folder / "history.jsonl").exists() else []
        if history:  # the run may end before its last events were drained
            item.writer.latest = with_eta(history[-1], item.job.config.batch_size)
        item.writer.write(history)  # the whole history, epochs before a resume included
        if not outcome["cancelled"]:
            return Status.DONE, None, run_summary(folder)
        if self.cancel_asked(item):
            return Status.CANCELLED, "cancelled while running.", None
        return Status.INTERRUPTED, STOPPED, None

    def cancel_asked(self, item: Running) -> bool:
        return item.stop_reason == "cancel" and self.store.job(item.job.id).cancel_requested

    def keep_idle(self, trainer: TrainerActor) -> None:
        trainer.idle_since = time.monotonic()
        self.idle_trainers.append(trainer)

    def finish(self, job: Job, status: Status, *, error=None, trace=None, summary=None) -> None:
        self.jobs_run += 1
        if self.store.finish(job.id, self.name, status, error=error, traceback=trace, summary=summary):
            log.info("job %d %s%s", job.id, status.name.lower(), f": {error}" if error else "")
        else:
            log.warning("job %d was taken from this dispatcher while it ran; its outcome is not recorded", job.id)

    def stop_all(self, grace: float) -> None:
        """Stop every running job at its next step and record it interrupted, its last checkpoint kept."""
        for item in self.running.values():
            if item.stop_asked_at is None:
                self.ask_stop(item, "shutdown")
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            self.poll(0.2)
        for item in list(self.running.values()):  # trainers that would not stop
            ray.kill(item.trainer.actor)
            del self.running[item.job.id]
            self.finish(item.job, Status.INTERRUPTED, error=STOPPED)
        self.release_idle(0.0)


def remote_traceback(failure: RayTaskError) -> str:
    """The traceback Ray brought back from the node, without its terminal colours."""
    return "Traceback (on the Ray node):\n" + re.sub(r"\x1b\[[0-9;]*m", "", str(failure))


def ready(ref: "ray.ObjectRef") -> bool:
    return bool(ray.wait([ref], timeout=0)[0])


def write_run_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write a run's files as they came back, each atomically, metrics.json last (it marks a finished run)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"a trainer sent back a file named {name!r}, which is not a run file name.")
    for name in sorted(files, key=lambda name: name == "metrics.json"):
        runfolder.write_atomic(folder / name, files[name])
    if "metrics.json" in files:
        (folder / CHECKPOINT).unlink(missing_ok=True)  # finished: model.safetensors holds the result


# -- connecting and the loop ---------------------------------------------------


def connect(address: str | None, num_cpus: int | None = None) -> str | None:
    """Join the cluster at `address` or start a local one; return the temp folder to remove after, if any.

    No address means RAY_ADDRESS, else a local instance. A remote cluster gets
    the sparsebin package shipped with the job (runtime_env py_modules), so its
    nodes need only the requirements installed.
    """
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address == "local":
        # A short private folder: Ray's socket paths must stay short, and its logs go away with it.
        temp_dir = tempfile.mkdtemp(prefix="sparsebin-ray-")
        ray.init(address="local", num_cpus=num_cpus, _temp_dir=temp_dir, **common)
        return temp_dir
    package = Path(__file__).resolve().parent.parent
    try:
        ray.init(address=address, runtime_env={"py_modules": [str(package)]}, **common)
    except ConnectionError as error:
        raise ConfigError(
            f"could not join the Ray cluster at {address} ({one_line(error)}); check that it runs there. "
            "A cluster with token authentication also needs RAY_AUTH_MODE=token and its token "
            "(RAY_AUTH_TOKEN, or the file `ray get-auth-token` reads) where the dispatcher runs."
        ) from error
    return None


def cluster_address(given: str | None) -> str:
    """The cluster's address as the Home page shows it; through Ray Client (ray://) the one given."""
    if ray.util.client.ray.is_connected():
        return given or os.environ.get("RAY_ADDRESS", "")
    return ray.get_runtime_context().gcs_address


def run_dispatcher(
    home: Path | None = None,
    *,
    settings: ServiceSettings | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    device: str | None = None,
    max_tasks: int | None = None,
    cpus_per_task: int = 1,
    poll_every: float = 0.2,
    shutdown: threading.Event | None = None,
    **changes: Any,
) -> int:
    """Dispatch queued jobs to Ray until stopped; return how many jobs ended under this dispatcher.

    `settings`, with any of its fields given by keyword (`once=True`), say how
    it serves the queue (see ServiceSettings); `once` returns when the queue is
    empty and nothing runs. An existing Ray connection in this process is used
    as it is (and left open). SIGTERM or SIGINT stop the running jobs at their
    next step and leave them interrupted, their last checkpoint in the run
    folder. As the local worker does, it queues interrupted jobs again when it
    starts and when it goes idle, and also as soon as one of its trainers is
    lost (the job then resumes on whichever node has room), unless
    `auto_resume` is off.
    """
    settings = service_settings(settings, **changes)
    store = Store(home)
    temp_dir = connect(address, num_cpus)
    try:
        cluster = cluster_address(address)
        lock = take_device_lock(store.home, DISPATCHER_DEVICE)  # while held, the app starts no local worker
        dispatcher = Dispatcher(
            store,
            settings,
            cluster=cluster,
            lock=lock,
            device=device,
            max_tasks=max_tasks,
            cpus_per_task=cpus_per_task,
            poll_every=poll_every,
        )
        resources = ray.cluster_resources()
        log.info(
            "dispatcher %s on Ray at %s: %g CPUs, %g GPUs",
            dispatcher.name,
            cluster,
            resources.get("CPU", 0),
            resources.get("GPU", 0),
        )
        return serve(dispatcher, shutdown or threading.Event())
    finally:
        if temp_dir is not None:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
