"""The job queue: submitting, grids, claiming, cancelling, resuming and reading runs."""

import json
import sqlite3
import threading

import numpy as np
import pytest
from conftest import TINY, make_dataset

from sparsebin import runfolder
from sparsebin.config import expand_grid
from sparsebin.errors import ConfigError, DataError, JobError, RunFileError
from sparsebin.jobs.queue import Status, Store
from sparsebin.jobs.worker import run_worker

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_submit_queues_a_job_with_its_config():
    store = Store()
    job = store.submit(make_dataset(), TINY, label="first")
    assert job.status == Status.QUEUED and job.label == "first" and job.config == TINY
    assert store.jobs() == [job]
    assert (store.home / "sparsebin.db").is_file()
    assert store.run_folder(job.run_id) == store.home / "runs" / job.run_id


def test_submit_refuses_a_bad_config_and_a_missing_dataset():
    store = Store()
    make_dataset()
    with pytest.raises(ConfigError, match="k must be smaller than n_bits"):
        store.submit("tiny", TINY.replace(k=64))
    with pytest.raises(ConfigError, match="batch_size 500 is larger"):
        store.submit("tiny", TINY.replace(batch_size=500))
    with pytest.raises(DataError, match="no dataset 'absent'"):
        store.submit("absent", TINY)
    assert store.jobs() == []


def test_opening_an_existing_store_takes_no_write_lock(tmp_path):
    Store(tmp_path)  # creates the schema
    writer = sqlite3.connect(tmp_path / "sparsebin.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing
    opened = threading.Event()
    try:
        threading.Thread(target=lambda: (Store(tmp_path).close(), opened.set()), daemon=True).start()
        assert opened.wait(5), "Store() waited for the write lock although the schema exists"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_submit_counts_rows_without_reading_the_concept_table(tmp_path):
    name = make_dataset()
    concepts = tmp_path / "data" / name / "concepts.parquet"
    concepts.write_bytes(b"not parquet")  # reading it would fail
    job = Store().submit(name, TINY)
    assert job.dataset == name and job.status == Status.QUEUED


def test_expand_grid_gives_every_combination_once_in_order():
    configs = expand_grid(TINY, {"n_bits": [32, 64], "k": [4, 8, 4], "seed": [0, 1]})
    combos = [(config.n_bits, config.k, config.seed) for config in configs]
    assert combos == [(n, k, s) for n in (32, 64) for k in (4, 8) for s in (0, 1)]
    with pytest.raises(ConfigError, match="unknown setting 'bits'"):
        expand_grid(TINY, {"bits": [1]})


def test_submit_grid_queues_each_combination_with_a_label():
    store = Store()
    grid = {"alpha": [0.5, 1.0], "loss": ["cosine", "mse"], "rounding": ["ste", "hard"], "sparsity": ["align"]}
    jobs = store.submit_grid(make_dataset(), TINY, grid)
    assert len(jobs) == 8
    settings = {(job.config.alpha, job.config.loss, job.config.rounding) for job in jobs}
    assert len(settings) == 8
    assert jobs[0].label == "alpha=0.5 loss=cosine rounding=ste sparsity=align"
    assert len(store.jobs(statuses=[Status.QUEUED])) == 8


def test_a_grid_with_one_bad_combination_queues_nothing():
    store = Store()
    with pytest.raises(ConfigError, match="k must be smaller"):
        store.submit_grid(make_dataset(), TINY, {"k": [4, 32]})
    assert store.jobs() == []


def test_claim_takes_the_oldest_queued_job_once():
    store = Store()
    first, second = (store.submit(make_dataset(), TINY, again=True) for _ in range(2))
    claimed = store.claim("worker-a")
    assert claimed.id == first.id and claimed.status == Status.RUNNING and claimed.attempts == 1
    assert store.claim("worker-b").id == second.id
    assert store.claim("worker-c") is None


def test_cancel_a_queued_job_at_once_and_refuse_a_finished_one():
    store = Store()
    job = store.submit(make_dataset(), TINY)
    cancelled = store.cancel(job.id)
    assert cancelled.status == Status.CANCELLED
    assert store.claim("worker") is None  # the worker never sees it
    with pytest.raises(JobError, match="only queued or running jobs can be cancelled"):
        store.cancel(job.id)


def test_stale_running_jobs_become_interrupted_and_resume_to_queued():
    store = Store()
    job = store.submit(make_dataset(), TINY)
    store.claim("gone")
    assert store.interrupt_stale(stale_after=60) == []  # fresh heartbeat: still running
    assert store.interrupt_stale(stale_after=0) == [job.id]
    interrupted = store.job(job.id)
    assert interrupted.status == Status.INTERRUPTED and "heartbeat" in interrupted.error
    resumed = store.resume(job.id)
    assert resumed.status == Status.QUEUED and resumed.run_id == job.run_id and resumed.error is None
    with pytest.raises(JobError, match="only interrupted, failed or cancelled"):
        store.resume(job.id)


def test_list_runs_shows_settings_and_metrics_of_done_runs_only():
    store = Store()
    make_dataset()
    done = store.submit("tiny", TINY, label="kept")
    queued_config = TINY.replace(k=8)
    run_worker(once=True, max_jobs=1)
    store.submit("tiny", queued_config)
    table = store.list_runs()
    assert list(table["status"]) == ["queued", "done"]
    row = table.set_index("job_id").loc[done.id]
    metrics = runfolder.load_metrics(store.run_folder(done.run_id))["validation"]
    assert row["recon_loss"] == pytest.approx(metrics["recon_loss"])
    assert row["active_mean"] == pytest.approx(metrics["active_mean"])
    assert row["n_bits"] == 32 and row["label"] == "kept"
    assert table.set_index("status").loc["queued", ["recon_loss", "recall_at_10_hamming"]].isna().all()
    assert store.list_runs(dataset="other").empty
    assert row["recall_at_10_asymmetric"] == pytest.approx(metrics["recall_at_10_asymmetric"])
    # A run evaluated before asymmetric recall was a cosine (its summary lacks the mark) shows it as unknown.
    with store.transaction() as connection:
        summary = json.loads(connection.execute("SELECT summary FROM jobs WHERE id = ?", (done.id,)).fetchone()[0])
        del summary["asymmetric_score"]
        connection.execute("UPDATE jobs SET summary = ? WHERE id = ?", (json.dumps(summary), done.id))
    old = store.list_runs().set_index("job_id").loc[done.id]
    assert np.isnan(old["recall_at_10_asymmetric"]) and old["recon_loss"] == pytest.approx(metrics["recon_loss"])


def test_the_runs_table_carries_the_whole_run_facts_and_shows_those_a_run_was_not_measured_by_as_missing():
    store = Store()
    done = store.submit(make_dataset(categories=4), TINY)
    run_worker(once=True)
    metrics = runfolder.load_metrics(store.run_folder(done.run_id))
    row = store.list_runs().set_index("job_id").loc[done.id]
    assert row["alignment_cosine"] == pytest.approx(metrics["validation"]["alignment_cosine"])
    for group, names in (
        ("bit_health", ("silent_held_out", "silent_held_out_expected", "silent_held_out_excess")),
        ("interpretability", ("coherent_share", "coherence_median", "probe_f1", "probe_f1_chance")),
        ("stability", ("code_churn", "grad_norm_mean", "grad_norm_max", "nonfinite_steps")),
    ):
        for name in names:
            assert row[name] == pytest.approx(metrics[group][name]), name
    # A run measured before these existed: its summary lacks them, and the table shows them missing, never 0.
    new = ["alignment_cosine", "silent_held_out_expected", "silent_held_out_excess", "probe_f1", "coherent_share"]
    new += ["root_labelled_share", "code_churn", "loss_roughness", "grad_norm_max", "nonfinite_steps"]
    with store.transaction() as connection:
        summary = json.loads(connection.execute("SELECT summary FROM jobs WHERE id = ?", (done.id,)).fetchone()[0])
        summary = {name: value for name, value in summary.items() if name not in new}
        connection.execute("UPDATE jobs SET summary = ? WHERE id = ?", (json.dumps(summary), done.id))
    old = store.list_runs().set_index("job_id").loc[done.id]
    assert old[new].isna().all() and old["silent_held_out"] == metrics["bit_health"]["silent_held_out"]


def test_a_damaged_run_gives_a_clear_error_and_leaves_others_readable():
    store = Store()
    make_dataset()
    first, second = store.submit("tiny", TINY), store.submit("tiny", TINY.replace(seed=1))
    run_worker(once=True)
    broken, intact = store.run_folder(first.run_id), store.run_folder(second.run_id)
    (broken / "metrics.json").write_text("{not json")
    (broken / "codes.npy").unlink()
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunFileError, match="damaged metrics.json"):
        runfolder.load_metrics(broken)
    with pytest.raises(RunFileError, match="has no codes.npy"):
        runfolder.load_codes(broken)
    with pytest.raises(RunFileError, match="damaged model.safetensors"):
        runfolder.load_model(broken)
    assert runfolder.load_metrics(intact)["validation"]["recon_loss"] >= 0
    assert runfolder.load_codes(intact).shape == (200, 4)
    assert len(store.list_runs()) == 2  # listing reads the database, not the folders


def test_a_version_1_database_gets_the_placement_columns_and_keeps_its_jobs(tmp_path):
    store = Store(tmp_path)
    job = store.submit(make_dataset(), TINY, label="from before")
    store.register_worker("old:1", 1, "old", "cpu")
    connection = store.connection()
    for table, column in (("jobs", "node"), ("jobs", "device"), ("jobs", "runner_pid"), ("workers", "kind")):
        connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    connection.execute("ALTER TABLE workers DROP COLUMN address")
    connection.execute("PRAGMA user_version = 1")  # as sparsebin wrote it before the Ray dispatcher
    store.close()

    reopened = Store(tmp_path)
    assert reopened.connection().execute("PRAGMA user_version").fetchone()[0] == 2
    kept = reopened.job(job.id)
    assert kept.label == "from before" and kept.node is None and kept.device is None
    assert reopened.workers()[0]["kind"] == "worker"
    claimed = reopened.claim("here:2")
    reopened.place(claimed.id, "here:2", "node-a", "cuda:1", 42)
    placed = reopened.job(job.id)
    assert (placed.node, placed.device, placed.runner_pid) == ("node-a", "cuda:1", 42)
    assert reopened.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
