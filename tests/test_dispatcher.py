"""The Ray dispatcher on a local Ray instance: a grid to the end, cancel, a lost trainer and its resume."""

import json
import os
import signal
import socket
import sqlite3
import threading

import numpy as np
import pytest
from conftest import ARTIFACTS, TINY, make_dataset, wait_for
from safetensors import safe_open

from sparsebin import runfolder
from sparsebin.cli import main
from sparsebin.errors import ConfigError
from sparsebin.experiment import CHECKPOINT
from sparsebin.jobs.dispatcher import connect, run_dispatcher
from sparsebin.jobs.queue import Status, Store
from sparsebin.jobs.worker import run_worker
from sparsebin.processes import pid_alive

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def integrity(store: Store) -> str:
    connection = sqlite3.connect(store.path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def start_dispatcher(**options) -> threading.Thread:
    """A dispatcher in a thread of this process (the Ray driver), returning when the queue is empty."""
    options = {"once": True, "heartbeat_every": 0.1, "progress_every": 0.1, "poll_every": 0.05, **options}
    thread = threading.Thread(target=run_dispatcher, kwargs=options, daemon=True)
    thread.start()
    return thread


def checkpoint_epoch(path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["epoch"])


def test_a_grid_runs_to_the_end_on_ray_with_the_files_a_local_worker_writes(ray_cluster):
    store = Store()
    dataset = make_dataset()
    jobs = store.submit_grid(dataset, TINY.replace(epochs=3), {"k": [2, 4], "loss": ["cosine", "mse"]})
    assert run_dispatcher(once=True, progress_every=0.1) == 4
    done = [store.job(job.id) for job in jobs]
    assert [job.status for job in done] == [Status.DONE] * 4, [job.error for job in done]
    for job in done:
        folder = store.run_folder(job.run_id)
        names = {path.name for path in folder.iterdir()}
        assert set(ARTIFACTS) <= names and CHECKPOINT not in names
        assert runfolder.load_config(folder) == job.config
        history = store.history(job.run_id)
        assert [event["epoch"] for event in history if event["epoch_end"]] == [1, 2, 3]
        assert history == runfolder.load_history(folder)
        assert job.progress["step"] == job.progress["total_steps"] and job.progress["eta_s"] == 0
        assert job.node == socket.gethostname() and job.device.startswith("cpu")
        assert job.runner_pid != os.getpid()  # trained in a Ray worker process
    assert len({job.runner_pid for job in done}) == 2  # two trainers at once on the 2 CPUs
    assert integrity(store) == "ok"

    # The same config through the local worker: the same files, in the same format, with the same numbers.
    local = store.submit(dataset, done[0].config, again=True)  # the same run, by a local worker
    assert run_worker(once=True) == 1
    remote_folder, local_folder = store.run_folder(done[0].run_id), store.run_folder(local.run_id)
    assert sorted(path.name for path in local_folder.iterdir()) == sorted(path.name for path in remote_folder.iterdir())
    remote_codes, local_codes = runfolder.load_codes(remote_folder), runfolder.load_codes(local_folder)
    assert remote_codes.dtype == local_codes.dtype == np.uint8 and remote_codes.shape == local_codes.shape == (200, 4)
    np.testing.assert_array_equal(remote_codes, local_codes)
    remote_metrics, local_metrics = runfolder.load_metrics(remote_folder), runfolder.load_metrics(local_folder)
    assert remote_metrics == local_metrics
    remote_model, local_model = runfolder.load_model(remote_folder), runfolder.load_model(local_folder)
    for name, value in local_model.state_dict().items():
        assert np.array_equal(remote_model.state_dict()[name].numpy(), value.numpy()), name
    remote_history, local_history = runfolder.load_history(remote_folder), runfolder.load_history(local_folder)
    assert [event.keys() for event in remote_history] == [event.keys() for event in local_history]
    assert [event["loss"] for event in remote_history] == [event["loss"] for event in local_history]
    assert (remote_folder / "split.json").read_bytes() == (local_folder / "split.json").read_bytes()
    remote_env, local_env = runfolder.load_environment(remote_folder), runfolder.load_environment(local_folder)
    assert remote_env.keys() == local_env.keys() and remote_env["device"] == local_env["device"] == "cpu"
    assert (
        store.list_runs().set_index("run_id").loc[done[0].run_id, "recon_loss"]
        == local_metrics["validation"]["recon_loss"]
    )


def test_cancel_stops_a_running_remote_job_and_frees_its_cpu(ray_cluster):
    store = Store()
    job = store.submit(make_dataset(n_rows=2000), TINY.replace(epochs=500))
    dispatcher = start_dispatcher()
    running = wait_for(lambda: (current := store.job(job.id)).progress and current.runner_pid and current)
    assert running.status == Status.RUNNING and running.node == socket.gethostname()
    assert store.cancel(job.id).cancel_requested
    dispatcher.join(timeout=60)
    assert not dispatcher.is_alive()
    cancelled = store.job(job.id)
    assert cancelled.status == Status.CANCELLED and cancelled.error == "cancelled while running."
    assert not cancelled.cancel_requested and cancelled.progress["epoch"] < 500
    folder = store.run_folder(job.run_id)
    assert (folder / "config.json").is_file() and not (folder / "metrics.json").exists()
    assert store.history(job.run_id) == runfolder.load_history(folder)
    assert (folder / CHECKPOINT).is_file()  # a cancelled run can be resumed from its last epoch
    wait_for(lambda: not pid_alive(running.runner_pid), timeout=30)  # the trainer ended with the dispatcher
    wait_for(lambda: ray_cluster.available_resources().get("CPU") == 2, timeout=30)
    assert integrity(store) == "ok"


def test_a_trainer_killed_mid_run_leaves_the_job_interrupted_and_resume_loses_no_epoch(ray_cluster):
    store = Store()
    job = store.submit(make_dataset(n_rows=2000), TINY.replace(epochs=30))
    folder = store.run_folder(job.run_id)
    dispatcher = start_dispatcher(auto_resume=False)
    wait_for(lambda: (folder / CHECKPOINT).exists() and checkpoint_epoch(folder / CHECKPOINT) >= 2)
    killed = store.job(job.id)
    os.kill(killed.runner_pid, signal.SIGKILL)
    dispatcher.join(timeout=60)
    assert not dispatcher.is_alive()
    interrupted = store.job(job.id)
    assert interrupted.status == Status.INTERRUPTED and "trainer was lost" in interrupted.error
    shipped = checkpoint_epoch(folder / CHECKPOINT)  # the newest checkpoint that came back before the kill
    assert 2 <= shipped < 30
    before = [event for event in store.history(job.run_id) if event["epoch"] <= shipped]
    assert [event["epoch"] for event in before if event["epoch_end"]] == list(range(1, shipped + 1))
    assert integrity(store) == "ok"

    assert store.resume(job.id).status == Status.QUEUED
    assert run_dispatcher(once=True, progress_every=0.1, auto_resume=False) == 1
    resumed = store.job(job.id)
    assert resumed.status == Status.DONE and resumed.attempts == 2, resumed.error
    assert resumed.runner_pid != killed.runner_pid
    history = runfolder.load_history(folder)
    assert [event["epoch"] for event in history if event["epoch_end"]] == list(range(1, 31))
    # The epochs finished before the kill were not trained again: their events (timings included) are the first run's.
    assert [event for event in history if event["epoch"] <= shipped] == before
    assert store.history(job.run_id) == history
    assert all((folder / name).is_file() for name in ARTIFACTS) and not (folder / CHECKPOINT).exists()
    assert integrity(store) == "ok"


def test_worker_ray_on_the_command_line_runs_the_queue(ray_cluster, capsys):
    store = Store()
    job = store.submit(make_dataset(), TINY)
    assert main(["worker", "--ray", "--once", "--tasks", "1", "--idle-sleep", "0.1"]) == 0
    done = store.job(job.id)
    assert done.status == Status.DONE and done.node == socket.gethostname()
    assert store.workers() == []  # the dispatcher said it stopped
    registered = store.connection().execute("SELECT kind, device, address FROM workers").fetchone()
    assert registered["kind"] == "ray-dispatcher" and registered["device"] == "ray"
    assert registered["address"] == ray_cluster.get_runtime_context().gcs_address


def test_with_auto_resume_a_job_whose_trainer_is_lost_is_taken_up_again_at_once(ray_cluster):
    store = Store()
    job = store.submit(make_dataset(n_rows=2000), TINY.replace(epochs=30))
    dispatcher = start_dispatcher(auto_resume=True)
    placed = wait_for(lambda: (current := store.job(job.id)).runner_pid and current)
    os.kill(placed.runner_pid, signal.SIGKILL)
    dispatcher.join(timeout=120)
    assert not dispatcher.is_alive()
    done = store.job(job.id)
    assert done.status == Status.DONE and done.attempts == 2, done.error
    assert done.runner_pid != placed.runner_pid
    history = runfolder.load_history(store.run_folder(job.run_id))
    assert [event["epoch"] for event in history if event["epoch_end"]] == list(range(1, 31))
    assert integrity(store) == "ok"


def test_a_cluster_that_cannot_be_joined_is_named_in_one_sentence(monkeypatch):
    def refuse(**options):
        raise ConnectionError(f"Failed to connect to Ray cluster at {options['address']}")

    monkeypatch.setattr("ray.is_initialized", lambda: False)
    monkeypatch.setattr("ray.init", refuse)
    with pytest.raises(ConfigError, match=r"could not join the Ray cluster at 10.1.2.3:6379 \(ConnectionError: Failed"):
        connect("10.1.2.3:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token"):
        connect(None)  # RAY_ADDRESS honoured


def test_bad_jobs_fail_with_their_reason_and_the_dispatcher_carries_on(ray_cluster, tmp_path):
    store = Store()
    make_dataset("doomed")
    missing = store.submit("doomed", TINY)
    damaged = store.submit(make_dataset(), TINY)
    fine = store.submit("tiny", TINY.replace(seed=1))
    (tmp_path / "data" / "doomed" / "embeddings.npy").unlink()
    folder = store.run_folder(damaged.run_id)
    folder.mkdir(parents=True)
    (folder / CHECKPOINT).write_bytes(b"not a checkpoint")  # fails on the Ray node, where it is read
    assert run_dispatcher(once=True, auto_resume=False) == 3
    failed = store.job(missing.id)
    assert failed.status == Status.FAILED and failed.error.startswith("DataError: no dataset 'doomed'")
    broken = store.job(damaged.id)
    assert broken.status == Status.FAILED and "Traceback" in broken.traceback
    assert "run_experiment" in broken.traceback and "\x1b[" not in broken.traceback
    assert broken.error.startswith("SafetensorError") and broken.node == socket.gethostname()
    assert store.job(fine.id).status == Status.DONE
    assert integrity(store) == "ok"
