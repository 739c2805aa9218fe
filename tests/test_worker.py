"""The worker: runs jobs to done, survives bad jobs, cancels, kills and concurrency."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ARTIFACTS, TINY, make_dataset, wait_for

import sparsebin.train
from sparsebin import runfolder
from sparsebin.datasets import load_dataset
from sparsebin.experiment import run_experiment
from sparsebin.jobs.beats import Heartbeat, worker_status
from sparsebin.jobs.launch import WorkerStart, ensure_worker
from sparsebin.jobs.locks import DISPATCHER_DEVICE, take_device_lock
from sparsebin.jobs.queue import Status, Store
from sparsebin.jobs.worker import run_worker
from sparsebin.processes import pid_alive

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent
WORKER_COMMAND = [sys.executable, "-m", "sparsebin", "worker"]


def subprocess_environment() -> dict:
    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = "1"  # the test machine's few cores are shared
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), environment.get("PYTHONPATH"))))
    return environment


def start_worker(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*WORKER_COMMAND, *arguments],
        env=subprocess_environment(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_in_process_worker_runs_a_job_to_done_with_every_artifact():
    store = Store()
    job = store.submit(make_dataset(categories=4), TINY.replace(epochs=3))
    assert run_worker(once=True) == 1
    done = store.job(job.id)
    assert done.status == Status.DONE and done.error is None and done.finished_at >= done.started_at
    folder = store.run_folder(job.run_id)
    assert all((folder / name).is_file() for name in ARTIFACTS)
    metrics = runfolder.load_metrics(folder)
    assert set(metrics) == {
        "train",
        "validation",
        "sign_validation",
        "sign_validation_equal_storage",
        "bit_health",
        "convergence",
        "interpretability",
        "stability",
    }
    listed = store.list_runs().iloc[0]
    assert listed["dead_all_rows"] == metrics["bit_health"]["dead_all_rows"] and listed["n_rows"] == 200
    # the worker measured the codes against the data set's ontology: its four categories are probed
    interpretability = metrics["interpretability"]
    assert interpretability["probe_categories"] == 4 and interpretability["interpretability_note"] is None
    assert len(runfolder.load_probes(folder)) == 4
    for name in ("probe_f1", "probe_f1_chance", "coherent_share"):
        assert listed[name] == pytest.approx(interpretability[name]), name
    assert listed["alignment_cosine"] == pytest.approx(metrics["validation"]["alignment_cosine"])
    assert listed["silent_held_out_expected"] == pytest.approx(metrics["bit_health"]["silent_held_out_expected"])
    stability = metrics["stability"]
    assert len(stability["code_churn_curve"]) == 3 and listed["code_churn"] == stability["code_churn_curve"][-1]
    assert listed["nonfinite_steps"] == 0 and listed["grad_norm_max"] == pytest.approx(stability["grad_norm_max"])
    assert runfolder.load_codes(folder).shape == (200, 4)  # 32 bits packed into 4 bytes
    assert runfolder.load_model(folder).n_bits == 32
    history = store.history(job.run_id)
    assert [event["epoch"] for event in history if event["epoch_end"]] == [1, 2, 3]
    assert history == runfolder.load_history(folder)
    assert done.progress["step"] == done.progress["total_steps"] and done.progress["eta_s"] == 0


def test_a_bad_job_fails_with_its_reason_and_the_worker_carries_on(tmp_path):
    store = Store()
    make_dataset("doomed")
    doomed = store.submit("doomed", TINY)
    fine = store.submit(make_dataset("fine"), TINY)
    (tmp_path / "data" / "doomed" / "embeddings.npy").unlink()
    assert run_worker(once=True) == 2
    failed = store.job(doomed.id)
    assert failed.status == Status.FAILED
    assert failed.error.startswith("DataError: no dataset 'doomed'")
    assert "Traceback" in failed.traceback and "load_dataset" in failed.traceback
    assert store.job(fine.id).status == Status.DONE


def test_cancel_stops_a_running_job_at_its_next_step():
    store = Store()
    job = store.submit(make_dataset(n_rows=2000), TINY.replace(epochs=500))
    worker = threading.Thread(target=run_worker, kwargs={"once": True, "heartbeat_every": 0.1, "progress_every": 0.1})
    worker.start()
    wait_for(lambda: store.job(job.id).progress)
    requested = store.cancel(job.id)
    assert requested.status == Status.RUNNING and requested.cancel_requested
    worker.join(timeout=30)
    cancelled = store.job(job.id)
    assert cancelled.status == Status.CANCELLED and not cancelled.cancel_requested
    assert cancelled.progress["epoch"] < 500
    assert not (store.run_folder(job.run_id) / "metrics.json").exists()
    assert store.resume(job.id).status == Status.QUEUED  # a cancelled run can be taken up again


def test_worker_status_uses_the_callers_store(monkeypatch):
    store = Store()
    store.register_worker("here:1", os.getpid(), "elsewhere", "cpu")
    monkeypatch.setattr("sparsebin.jobs.beats.Store", None)  # opening another store would fail
    status = worker_status(store=store)
    assert status is not None and status.pid == os.getpid() and status.device == "cpu"


class CancellingStore:
    """A store whose every job has a cancel asked for; `during_beat` runs while a beat is in the database."""

    def __init__(self):
        self.during_beat = lambda: None

    def beat_worker(self, name, job_id):
        pass

    def beat(self, job_id, worker):
        self.during_beat()
        return True


def test_a_cancel_answer_for_a_finished_job_does_not_stop_the_next_job():
    store = CancellingStore()
    heartbeat = Heartbeat(store, "test-worker", every=1.0)
    heartbeat.watch(1)
    heartbeat.beat()
    assert heartbeat.stop_requested.is_set()  # job 1's cancel reaches it
    heartbeat.watch(1)
    store.during_beat = lambda: heartbeat.watch(2)  # job 1 ends and job 2 starts while the beat is out
    heartbeat.beat()
    assert heartbeat.job_id == 2 and not heartbeat.stop_requested.is_set()
    store.during_beat = lambda: None
    heartbeat.beat()
    assert heartbeat.stop_requested.is_set()  # job 2's own cancel still stops it


def stop_processes(*pids: int) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid))


def test_a_real_worker_process_started_by_ensure_worker_runs_the_queue_and_a_dead_one_is_replaced(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the detached worker inherits this environment
    monkeypatch.setattr("sparsebin.jobs.launch.LOG_LIMIT_BYTES", 1000)
    store = Store()
    (store.home / "worker.log").write_text("an old worker's line\n" * 100)  # over the limit: moved aside
    job = store.submit(make_dataset(), TINY)
    started = ensure_worker()
    assert started.started
    pids = [started.pid]
    try:
        assert ensure_worker() == WorkerStart(started.pid, started=False)  # still starting: not a second one
        wait_for(lambda: store.job(job.id).status == Status.DONE)
        again = ensure_worker()
        assert not again.started and again.pid == started.pid
        status = worker_status()
        assert status is not None and status.pid == started.pid and status.device == "cpu"
        assert runfolder.load_metrics(store.run_folder(job.run_id))["validation"]["recon_loss"] >= 0

        os.kill(started.pid, signal.SIGKILL)  # a crash: nothing of the worker's runs, nothing is cleaned up
        wait_for(lambda: not pid_alive(started.pid))
        replacement = ensure_worker()
        pids.append(replacement.pid)
        assert replacement.started and replacement.pid != started.pid
        assert ensure_worker() == WorkerStart(replacement.pid, started=False)
        second = store.submit(job.dataset, TINY, again=True)
        wait_for(lambda: store.job(second.id).status == Status.DONE)  # the replacement runs the queue
        assert worker_status().pid == replacement.pid
    finally:
        stop_processes(*pids)
    assert worker_status() is None
    log = (store.home / "worker.log").read_text()
    assert "job 1 done" in log and "job 2 done" in log and "an old worker's line" not in log
    assert (store.home / "worker.log.1").read_text() == "an old worker's line\n" * 100


def test_while_a_worker_holds_the_device_lock_a_single_worker_exits_and_none_is_started():
    store = Store()
    job = store.submit(make_dataset(), TINY)
    held = take_device_lock(store.home, "cpu")  # as a worker started by hand holds it
    try:
        assert ensure_worker(device="cpu") == WorkerStart(os.getpid(), started=False)
        assert run_worker(once=True, device="cpu", single=True) == 0
        assert store.job(job.id).status == Status.QUEUED and store.workers() == []
    finally:
        held.close()
    assert run_worker(once=True, device="cpu", single=True) == 1  # the lock is free again


def test_no_local_worker_is_started_while_a_ray_dispatcher_holds_its_lock():
    store = Store()
    held = take_device_lock(store.home, DISPATCHER_DEVICE)  # as a running `worker --ray` holds it
    try:
        assert ensure_worker(device="cpu") == WorkerStart(os.getpid(), started=False)
    finally:
        held.close()


def test_concurrent_ensure_worker_calls_start_one_worker(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = Store()
    callers = 4
    together = threading.Barrier(callers)
    results = []

    def call() -> None:
        together.wait()
        results.append(ensure_worker())

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts = [result for result in results if result.started]
    try:
        assert len(starts) == 1 and len(results) == callers
        assert {result.pid for result in results} == {starts[0].pid}  # the others name the one started
        wait_for(lambda: worker_status() is not None)
        assert [worker["pid"] for worker in store.workers()] == [starts[0].pid]
    finally:
        stop_processes(*(result.pid for result in starts))


def test_two_worker_processes_run_twenty_jobs_each_exactly_once():
    store = Store()
    dataset = make_dataset(n_rows=100)
    workers = [start_worker("--idle-sleep", "0.05") for _ in range(2)]
    try:
        wait_for(lambda: len(store.workers()) == 2)  # both are polling before any job exists
        jobs = store.submit_grid(dataset, TINY.replace(epochs=1), {"seed": list(range(20))})
        wait_for(lambda: all(store.job(job.id).status == Status.DONE for job in jobs), timeout=120)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    logs = [worker.communicate(timeout=60)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), logs
    assert all(store.job(job.id).attempts == 1 for job in jobs)
    reported = [line.split()[-2] for log in logs for line in log.splitlines() if line.endswith(" done")]
    assert sorted(int(job_id) for job_id in reported) == sorted(job.id for job in jobs)


def test_a_killed_worker_leaves_an_interrupted_job_that_resumes_without_losing_epochs(tmp_path):
    store = Store()
    dataset = make_dataset(n_rows=300)
    config = TINY.replace(epochs=40, log_every=3)  # long enough that a loaded machine cannot finish it before the kill
    job = store.submit(dataset, config)
    worker = start_worker("--once", "--progress-every", "0.05")
    checkpoint = store.run_folder(job.run_id) / "checkpoint.safetensors"
    wait_for(lambda: checkpoint.exists() and any(event["epoch_end"] for event in store.history(job.run_id)))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert store.job(job.id).status == Status.RUNNING  # nobody knows yet

    time.sleep(0.3)
    # With resuming turned off, a new worker only marks it, and has nothing to run.
    assert run_worker(once=True, stale_after=0.2, auto_resume=False) == 0
    interrupted = store.job(job.id)
    assert interrupted.status == Status.INTERRUPTED and "heartbeat" in interrupted.error
    assert not (store.run_folder(job.run_id) / "metrics.json").exists()

    resumed_from = []
    original_load = sparsebin.train.load_checkpoint

    def spy_load(*arguments):
        epoch, history = original_load(*arguments)
        resumed_from.append(epoch)
        return epoch, history

    with pytest.MonkeyPatch.context() as patch:  # a worker starting with the setting on resumes it by itself
        patch.setattr(sparsebin.train, "load_checkpoint", spy_load)
        assert run_worker(once=True) == 1
    done = store.job(job.id)
    assert done.status == Status.DONE and done.attempts == 2
    assert 1 <= resumed_from[0] < 40  # continued from the checkpoint, not from scratch
    epochs = [event["epoch"] for event in store.history(job.run_id) if event["epoch_end"]]
    assert epochs == list(range(1, 41))

    uninterrupted = tmp_path / "uninterrupted"
    run_experiment(load_dataset(dataset).embeddings, config, uninterrupted)
    folder = store.run_folder(job.run_id)
    assert np.array_equal(runfolder.load_codes(folder), runfolder.load_codes(uninterrupted))
    resumed_metrics = runfolder.load_metrics(folder)["validation"]
    expected_metrics = runfolder.load_metrics(uninterrupted)["validation"]
    assert resumed_metrics["recon_loss"] == pytest.approx(expected_metrics["recon_loss"], rel=1e-5)
    with sqlite3.connect(store.home / "sparsebin.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_worker_stopped_with_sigterm_leaves_its_job_interrupted_and_resumable():
    store = Store()
    job = store.submit(make_dataset(n_rows=2000), TINY.replace(epochs=500))
    worker = start_worker("--progress-every", "0.05")
    wait_for(lambda: store.job(job.id).progress)
    worker.send_signal(signal.SIGTERM)
    log = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, log
    stopped = store.job(job.id)
    assert stopped.status == Status.INTERRUPTED and stopped.error == "the worker was stopped; resume it to continue."
    assert store.resume(job.id).status == Status.QUEUED


def interrupted_job(store: Store, dataset: str, *, checkpoint: bool) -> int:
    """A job a worker claimed and then lost (its heartbeat stopped), as after a kill or a reboot."""
    job = store.submit(dataset, TINY)
    store.claim("elsewhere:1")
    if checkpoint:
        folder = store.run_folder(job.run_id)
        folder.mkdir(parents=True)
        (folder / "checkpoint.safetensors").write_bytes(b"")
    time.sleep(0.05)
    assert store.interrupt_stale(0.01) == [job.id]
    return job.id


def test_interrupted_jobs_are_queued_again_with_a_note_saying_what_happened():
    store = Store()
    dataset = make_dataset(n_rows=300)
    saved = interrupted_job(store, dataset, checkpoint=True)
    fresh = interrupted_job(store, dataset, checkpoint=False)
    assert store.resume_interrupted() == [saved, fresh]
    notes = {job.id: job.error for job in store.jobs()}
    assert all(store.job(job_id).status == Status.QUEUED for job_id in (saved, fresh))
    assert notes[saved].startswith("interrupted (its worker stopped sending heartbeats for over 0.01 s); resumed")
    assert notes[saved].endswith(", from its last finished epoch.")
    assert notes[fresh].endswith(", from the start (no epoch had finished).")
    assert "resume it to continue" not in notes[saved]


def test_a_job_interrupted_three_times_waits_for_the_user():
    store = Store()
    job_id = interrupted_job(store, make_dataset(n_rows=300), checkpoint=False)
    for _ in range(2):
        store.resume_interrupted()
        store.claim("elsewhere:2")
        time.sleep(0.05)
        store.interrupt_stale(0.01)
    assert store.job(job_id).attempts == 3
    assert store.resume_interrupted() == []
    job = store.job(job_id)
    assert job.status == Status.INTERRUPTED
    assert job.error.endswith("not resumed automatically after 3 attempts: resume it by hand.")


def test_the_setting_turns_resuming_off(monkeypatch):
    store = Store()
    job_id = interrupted_job(store, make_dataset(n_rows=300), checkpoint=False)
    monkeypatch.setenv("SPARSEBIN_AUTO_RESUME", "0")
    assert run_worker(once=True) == 0
    assert store.job(job_id).status == Status.INTERRUPTED
    monkeypatch.setenv("SPARSEBIN_AUTO_RESUME", "1")
    assert run_worker(once=True) == 1
    assert store.job(job_id).status == Status.DONE and store.job(job_id).attempts == 2
