"""The job commands as a user types them: submit, status, cancel, resume, runs, remeasure, export."""

import argparse
import os

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, make_dataset
from safetensors import safe_open
from safetensors.torch import load_file

from sparsebin import runfolder
from sparsebin.datasets import load_dataset
from sparsebin.errors import ConfigError, DataError, DuplicateRunError, RunFileError
from sparsebin.experiment import remeasure_run
from sparsebin.jobs import cli as jobs_cli
from sparsebin.jobs.queue import Status, Store
from sparsebin.jobs.service import run_summary
from sparsebin.jobs.worker import run_worker
from sparsebin.search import elias_fano

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_FLAGS = ["--epochs", "2", "--batch-size", "32", "--device", "cpu"]


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    jobs_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_submit_a_grid_queues_every_combination(capsys):
    make_dataset()
    assert run_command("submit", "tiny", "--n-bits", "32", "64", "--k", "4", "8", "--alpha", "0.5", *TINY_FLAGS) == 0
    printed = capsys.readouterr().out
    assert printed.count("queued job") == 4 and "n_bits=64 k=8 alpha=0.5" in printed
    jobs = Store().jobs()
    assert sorted((job.config.n_bits, job.config.k) for job in jobs) == [(32, 4), (32, 8), (64, 4), (64, 8)]
    assert all(job.config.epochs == 2 and job.config.alpha == 0.5 for job in jobs)


def test_submit_the_study_and_the_per_term_distances(capsys):
    make_dataset()
    assert run_command("submit", "tiny", "--study", "2", "--n-bits", "32", "--k", "4", *TINY_FLAGS) == 0
    jobs = Store().jobs()
    # 14 settings (the paper's, ten loss forms, three roundings) for each of the two seeds: the whole plan
    assert len(jobs) == 28 and {job.config.seed for job in jobs} == {0, 1}
    assert {job.label for job in jobs if job.config.rec_loss == "mse_sum"} == {
        "reconstruction MSE (scale-fair) seed=0",
        "reconstruction MSE (scale-fair) seed=1",
        "both MSE (scale-fair) seed=0",
        "both MSE (scale-fair) seed=1",
    }
    capsys.readouterr()
    assert run_command("submit", "tiny", "--study", "3", "--n-bits", "32", "--k", "4", *TINY_FLAGS) == 0
    out = capsys.readouterr().out  # a third seed adds only its own 14 runs
    assert "28 of the study's 42 runs are already queued, running or finished on tiny" in out
    assert len(Store().jobs()) == 42 and {job.config.seed for job in Store().jobs(limit=14)} == {2}
    assert run_command("submit", "tiny", "--sparsity-loss", "l1", "--split-seed", "3", *TINY_FLAGS) == 0
    newest = Store().jobs(limit=1)[0].config
    assert (newest.alignment_distance, newest.reconstruction_distance, newest.split_seed) == ("l1", "cosine", 3)
    with pytest.raises(
        ConfigError, match=r"--study sets loss, rounding, sparsity, init and seed itself .* \(got --rounding\)"
    ):
        run_command("submit", "tiny", "--study", "2", "--rounding", "none", *TINY_FLAGS)


def test_submit_one_run_with_a_label_and_refuse_a_bad_one(capsys):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", "--label", "baseline", *TINY_FLAGS)
    (job,) = Store().jobs()
    assert job.label == "baseline" and job.config.n_bits == 32
    with pytest.raises(ConfigError, match="k must be smaller than n_bits"):
        run_command("submit", "tiny", "--n-bits", "32", "--k", "40", *TINY_FLAGS)
    assert len(Store().jobs()) == 1


def test_submit_names_the_grid_run_that_would_be_refused_as_the_train_page_does(capsys):
    make_dataset()
    with pytest.raises(ConfigError) as refused:
        run_command("submit", "tiny", "--n-bits", "8", "64", "--k", "4", "16", *TINY_FLAGS)
    assert str(refused.value) == (
        "the grid's run n_bits=8 k=16 would be refused: k must be smaller than n_bits, got k=16 and n_bits=8."
    )
    assert Store().jobs() == []  # nothing of the grid is queued


def test_submit_refuses_a_run_identical_to_a_queued_or_finished_one_and_again_forces_it(capsys):
    make_dataset()
    tiny = ["--n-bits", "32", "--k", "4", *TINY_FLAGS]
    run_command("submit", "tiny", *tiny)
    (first,) = Store().jobs()
    with pytest.raises(DuplicateRunError) as refused:
        run_command("submit", "tiny", *tiny[:-1], "auto")  # only the device differs: the same run
    assert str(refused.value) == (
        "this run is identical in every setting and seed to a run already queued, running or finished on tiny; "
        f"the first repeats job 1 (run {first.run_id}, queued); pass --again to queue it anyway."
    )
    assert len(Store().jobs()) == 1
    run_command("submit", "tiny", *tiny, "--seed", "1")  # another seed is another replicate
    with pytest.raises(DuplicateRunError, match="2 of these 3 runs are identical"):
        run_command("submit", "tiny", *tiny, "--seed", "0", "1", "2")
    run_worker(once=True)  # finishes job 1: a finished run still counts
    with pytest.raises(DuplicateRunError, match=r"repeats job 1 \(run .*, done\)"):
        run_command("submit", "tiny", *tiny)
    assert run_command("submit", "tiny", *tiny, "--again") == 0
    assert len(Store().jobs()) == 3
    Store().cancel(3)
    assert run_command("submit", "tiny", *tiny, "--seed", "5") == 0  # a cancelled run holds nothing back
    Store().cancel(4)
    assert run_command("submit", "tiny", *tiny, "--seed", "5") == 0


def test_submit_takes_every_setting_train_takes(capsys):
    make_dataset()
    flags = ["--n-bits", "32", "--k", "4", "--val-fraction", "0.2", "--normalize", "false", "--rec-loss", "mse"]
    assert run_command("submit", "tiny", *flags, *TINY_FLAGS) == 0
    (job,) = Store().jobs()
    assert job.config.val_fraction == 0.2 and job.config.normalize is False and job.config.rec_loss == "mse"
    with pytest.raises(SystemExit):  # argparse names the option and the value
        run_command("submit", "tiny", "--normalize", "maybe", *TINY_FLAGS)
    assert "argument --normalize: normalize: 'maybe' is not true or false." in capsys.readouterr().err


def test_status_cancel_and_resume(capsys):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_command("status")
    listing = capsys.readouterr().out
    assert "worker: none running" in listing and "queued" in listing
    run_command("cancel", "1")
    assert "job 1: cancelled" in capsys.readouterr().out
    run_command("status", "1")
    assert "error: cancelled before it started." in capsys.readouterr().out
    run_command("resume", "1")
    assert "job 1: queued" in capsys.readouterr().out
    assert Store().job(1).status == Status.QUEUED


def test_runs_table_and_export_of_a_finished_run(tmp_path, capsys):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_worker(once=True)
    capsys.readouterr()
    run_command("runs")
    table = capsys.readouterr().out
    assert "done" in table and "recon_loss" in table

    store = Store()
    (job,) = store.jobs()
    out = tmp_path / "exported"
    run_command("export", job.run_id, "--out", str(out))
    folder = store.run_folder(job.run_id)
    codes = runfolder.load_codes(folder)
    assert np.array_equal(np.load(out / "codes.npy"), codes)
    coded = elias_fano.load(out / "codes_elias_fano.npz")
    assert np.array_equal(elias_fano.decode(coded), codes)
    active = np.unpackbits(codes, axis=1).sum(axis=1)
    assert coded.bytes_per_row == pytest.approx(elias_fano.row_bytes(active, 32).mean())

    concepts = pd.read_csv(out / "concepts.csv")
    assert list(concepts["id"][:2]) == ["C0", "C1"] and concepts["name"][0] == "concept 0"
    assert (concepts["n_active"] == np.unpackbits(codes, axis=1).sum(axis=1)).all()

    metrics = pd.read_csv(out / "metrics.csv").set_index("split")
    expected = runfolder.load_metrics(folder)["validation"]["recon_loss"]
    assert metrics.loc["validation", "recon_loss"] == pytest.approx(expected)

    # The exported encoder alone reproduces the stored codes.
    encoder = load_file(out / "encoder.safetensors")
    with safe_open(out / "encoder.safetensors", framework="pt") as handle:
        assert '"n_bits": 32' in handle.metadata()["config"]
    embeddings = np.load(tmp_path / "data" / "tiny" / "embeddings.npy")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    logits = unit @ encoder["weight"].numpy().T + encoder["bias"].numpy()
    assert np.array_equal(np.packbits(logits > 0, axis=1), codes)


def test_an_export_that_fails_midway_leaves_the_earlier_files_whole(tmp_path, monkeypatch):
    from sparsebin import export

    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_worker(once=True)
    (job,) = Store().jobs()
    out = tmp_path / "exported"
    run_command("export", job.run_id, "--out", str(out))
    before = (out / "encoder.safetensors").read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half an encod")
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        run_command("export", job.run_id, "--out", str(out))
    assert (out / "encoder.safetensors").read_bytes() == before
    assert not list(out.glob("*.partial"))


def test_export_of_an_unfinished_run_says_what_is_missing(tmp_path):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    (job,) = Store().jobs()
    with pytest.raises(RunFileError, match="has no config.json"):
        run_command("export", job.run_id, "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_worker_options_that_do_not_fit_together_are_refused_with_a_sentence(monkeypatch):
    monkeypatch.setattr(jobs_cli, "visible_cuda_devices", lambda: [])
    with pytest.raises(ValueError, match="--device all starts one worker per CUDA device, but no CUDA device is"):
        run_command("worker", "--device", "all")
    with pytest.raises(ValueError, match="--tasks applies to the Ray dispatcher only; add --ray."):
        run_command("worker", "--tasks", "2")
    with pytest.raises(ValueError, match="--single applies to a local worker, not to the Ray dispatcher."):
        run_command("worker", "--ray", "local", "--single")
    with pytest.raises(ValueError, match="--tasks must be at least 1, got 0."):
        run_command("worker", "--ray", "--tasks", "0")


def test_device_all_runs_one_worker_process_per_device(monkeypatch):
    store = Store()
    jobs = [store.submit(make_dataset(n_rows=1000), TINY.replace(seed=seed)) for seed in range(4)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit this environment
    monkeypatch.setattr(jobs_cli, "visible_cuda_devices", lambda: ["cpu", "cpu"])  # two "devices" here
    assert run_command("worker", "--device", "all", "--once", "--idle-sleep", "0.1") == 0
    done = [store.job(job.id) for job in jobs]
    assert [job.status for job in done] == [Status.DONE] * 4, [job.error for job in done]
    workers = store.connection().execute("SELECT pid, device, stopped_at FROM workers").fetchall()
    assert len({row["pid"] for row in workers}) == 2 and all(row["device"] == "cpu" for row in workers)
    assert all(row["stopped_at"] is not None for row in workers)  # both exited when the queue was empty
    assert {job.runner_pid for job in done} <= {row["pid"] for row in workers}


def test_status_names_the_ray_dispatcher_and_where_a_running_job_trains(capsys):
    store = Store()
    job = store.submit(make_dataset(), TINY, label="remote")
    name = f"head:{os.getpid()}"
    store.register_worker(name, os.getpid(), "head", "ray", kind="ray-dispatcher", address="10.0.0.5:6379")
    store.claim(name)
    store.place(job.id, name, "gpu-node-3", "cuda:1", 4242)
    run_command("status")
    listing = capsys.readouterr().out
    assert f"ray dispatcher: {name} on cluster 10.0.0.5:6379" in listing
    assert "running" in listing and "remote  on gpu-node-3 cuda:1" in listing


def test_submit_with_the_recommended_preset_queues_its_remedies(capsys):
    make_dataset()
    run_command("submit", "tiny", "--preset", "recommended", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", "--revive", "auxk", "reinit", *TINY_FLAGS)
    preset_job, *grid = sorted(Store().jobs(), key=lambda job: job.id)
    assert preset_job.config.sparsity == "hard-topk" and preset_job.config.rate_control == "balance"
    assert preset_job.config.n_bits == 32 and preset_job.config.epochs == 2
    assert sorted(job.config.revive for job in grid) == ["auxk", "reinit"]
    assert all(job.config.sparsity == "align" and job.config.rate_control == "none" for job in grid)  # the paper's
    capsys.readouterr()
    run_command("runs")
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:6] == ["job_id", "run_id", "status", "label", "preset", "n_bits"]
    words = {int(row.split()[0]): row.split() for row in rows[:3]}
    assert "recommended" in words[1] and "none" in words[2] and "none" in words[3]
    table = Store().list_runs("tiny")
    assert dict(zip(table["job_id"], table["preset"], strict=True)) == {1: "recommended", 2: "none", 3: "none"}


def test_remeasure_brings_a_run_measured_by_the_plain_sum_to_the_cosine(capsys):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", "--seed", "1", *TINY_FLAGS)
    run_worker(once=True)
    store = Store()
    old, current = sorted(store.jobs(), key=lambda job: job.id)
    folder = store.run_folder(old.run_id)
    metrics = runfolder.load_metrics(folder)
    cosine = metrics["validation"]["recall_at_10_asymmetric"]
    codes_before = (folder / "codes.npy").read_bytes()
    # As a run measured before the cosine: the plain sum's figure, and no definition marker.
    for part in ("train", "validation"):
        metrics[part].pop("asymmetric_score")
    metrics["validation"]["recall_at_10_asymmetric"] = 0.05
    runfolder.save_json(folder / "metrics.json", metrics)
    summary = run_summary(folder)
    store.set_summary(old.id, summary)
    assert "asymmetric_score" in summary and summary["asymmetric_score"] is None
    assert np.isnan(store.list_runs().set_index("job_id").loc[old.id, "recall_at_10_asymmetric"])  # shown unknown
    capsys.readouterr()

    assert run_command("remeasure") == 0
    assert capsys.readouterr().out.splitlines()[::2] == [
        f"run {old.run_id}: recall@10 asymmetric {cosine:.4f} by the cosine (was 0.0500 by the plain sum); "
        "validation part, 20 queries against all 200 rows."
    ]  # only the outdated run: the other is measured by today's definitions
    remeasured = runfolder.load_metrics(folder)["validation"]
    assert remeasured["recall_at_10_asymmetric"] == cosine and remeasured["asymmetric_score"] == "cosine"
    assert (folder / "codes.npy").read_bytes() == codes_before
    table = store.list_runs().set_index("job_id")
    assert table.loc[old.id, "recall_at_10_asymmetric"] == cosine
    assert run_command("remeasure") == 0
    assert capsys.readouterr().out == "every finished run is measured by today's definitions.\n"
    assert current.status == Status.DONE
    current_folder = store.run_folder(current.run_id)
    metrics = runfolder.load_metrics(current_folder)
    coded = metrics["validation"].pop("bits_elias_fano")  # as a run measured before the Elias-Fano size
    runfolder.save_json(current_folder / "metrics.json", metrics)
    assert run_command("remeasure") == 0
    assert capsys.readouterr().out.startswith(f"run {current.run_id}: recall@10 asymmetric")
    assert runfolder.load_metrics(current_folder)["validation"]["bits_elias_fano"] == coded
    (current_folder / "metrics.json").write_text("{")  # damaged: named, the others go on
    assert run_command("remeasure") == 2
    printed = capsys.readouterr().out
    assert printed.startswith(f"run {current.run_id}: not measured: run {current.run_id} has a damaged metrics.json")


def test_remeasure_fills_the_figures_a_run_was_measured_without_and_keeps_its_stability(capsys):
    make_dataset(categories=4)
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_worker(once=True)
    store = Store()
    (job,) = store.jobs()
    folder = store.run_folder(job.run_id)
    measured = runfolder.load_metrics(folder)
    probes = (folder / "probes.csv").read_bytes()
    # As a run measured before sparsity alignment, silent bits against chance and interpretability existed,
    # with the stability group its training recorded (which no remeasurement can recompute).
    older = runfolder.load_metrics(folder)
    for part in ("train", "validation"):
        del older[part]["alignment_cosine"], older[part]["active_ratio"]
    del older["bit_health"]["silent_held_out_expected"], older["bit_health"]["silent_held_out_excess"]
    del older["interpretability"]
    older["stability"] = {"code_churn": 0.25, "code_churn_curve": [0.5, 0.25], "nonfinite_steps": 0}
    runfolder.save_json(folder / "metrics.json", older)
    (folder / "probes.csv").unlink()
    store.set_summary(job.id, run_summary(folder))
    row = store.list_runs().iloc[0]
    assert row[["alignment_cosine", "silent_held_out_expected", "probe_f1", "coherent_share"]].isna().all()
    assert jobs_cli.is_outdated(folder)
    capsys.readouterr()

    assert run_command("remeasure") == 0
    health, judged = measured["bit_health"], measured["interpretability"]
    assert capsys.readouterr().out.splitlines()[1] == (
        f"  alignment_cosine {measured['validation']['alignment_cosine']:.4f}; {health['silent_held_out']} bits "
        f"silent on held-out rows, {health['silent_held_out_expected']:.1f} expected by chance; probe F1 "
        f"{judged['probe_f1']:.3f} (chance {judged['probe_f1_chance']:.3f})."
    )
    remeasured = runfolder.load_metrics(folder)
    assert remeasured["stability"] == older["stability"]  # kept as training measured it
    assert remeasured["interpretability"] == judged and remeasured["bit_health"] == health
    assert remeasured["validation"]["alignment_cosine"] == measured["validation"]["alignment_cosine"]
    assert (folder / "probes.csv").read_bytes() == probes
    row = store.list_runs().iloc[0]
    assert row["probe_f1"] == judged["probe_f1"] and row["code_churn"] == 0.25
    assert row["silent_held_out_expected"] == health["silent_held_out_expected"]
    assert not jobs_cli.is_outdated(folder)


def test_remeasure_leaves_a_run_whose_model_no_longer_gives_its_codes(capsys):
    make_dataset()
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", *TINY_FLAGS)
    run_worker(once=True)
    run_command("submit", "tiny", "--n-bits", "32", "--k", "4", "--seed", "1", *TINY_FLAGS)  # left queued
    store = Store()
    done, queued = sorted(store.jobs(), key=lambda job: job.id)
    folder = store.run_folder(done.run_id)
    codes = runfolder.load_codes(folder, mmap=False)
    codes[3] ^= 1  # one bit of one row
    np.save(folder / "codes.npy", codes)
    metrics_before = (folder / "metrics.json").read_bytes()
    capsys.readouterr()
    assert run_command("remeasure", done.run_id, queued.run_id) == 2
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"run {done.run_id}: not measured: run {done.run_id}: its model now gives other codes than it stored "
        "(1 of 200 rows differ), so it was left as it was.",
        f"run {queued.run_id}: not measured: job {queued.id} is queued; only a finished run can be measured.",
    ]
    assert (folder / "metrics.json").read_bytes() == metrics_before
    with pytest.raises(DataError, match="coded 200 rows, these embeddings have 10: not the data set it was trained on"):
        remeasure_run(np.zeros((10, 16), dtype=np.float32), folder)
    embeddings = np.asarray(load_dataset("tiny").embeddings)
    (folder / "split.json").write_text('{"validation": [3, 200]}')
    with pytest.raises(RunFileError, match="a validation row lies outside its 200 rows"):
        remeasure_run(embeddings, folder)
    (folder / "split.json").write_text("{")
    with pytest.raises(RunFileError, match=f"run {done.run_id} has a damaged split.json"):
        remeasure_run(embeddings, folder)


def test_submit_sweep_queues_the_paper_n_by_k_sweep_and_leaves_out_runs_already_held(capsys):
    make_dataset(n_rows=200, dim=16)
    tiny = ["--epochs", "2", "--batch-size", "32", "--device", "cpu"]
    assert run_command("submit", "tiny", "--n-bits", "1024", "--k", "16", "--seed", "0", *tiny) == 0  # the study's size
    capsys.readouterr()
    assert run_command("submit", "tiny", "--sweep", *tiny) == 0  # one seed by default
    printed = capsys.readouterr().out
    assert "1 of the sweep's 9 runs are already queued, running or finished on tiny" in printed
    jobs = Store().jobs()
    sweep = [job for job in jobs if job.label.startswith("N x K sweep")]
    assert len(sweep) == 8 and "N x K sweep N=512 K=8 seed=0" in {job.label for job in sweep}
    assert {(job.config.n_bits, job.config.k) for job in jobs} == {
        (n, k) for n in (512, 1024, 2048) for k in (8, 16, 32)
    }
    assert {(job.config.loss, job.config.rounding, job.config.seed, job.config.epochs) for job in sweep} == {
        ("cosine", "ste", 0, 2)
    }
    assert run_command("submit", "tiny", "--sweep", "2", *tiny) == 0  # seed 1 is new, seed 0 is held
    assert "9 of the sweep's 18 runs are already queued" in capsys.readouterr().out
    assert len(Store().jobs()) == 18
    with pytest.raises(ConfigError, match=r"--sweep sets loss, rounding, sparsity, init, n-bits, k and seed .*--k\)"):
        run_command("submit", "tiny", "--sweep", "--k", "4", *tiny)
    with pytest.raises(ConfigError, match="--study and --sweep each queue a plan of their own"):
        run_command("submit", "tiny", "--sweep", "--study", "2", *tiny)


def test_a_reader_that_leaves_early_ends_the_listing_quietly(tmp_path):
    """`python -m sparsebin status | head -1`: once the reader is gone the command stops, exit 0, no traceback."""
    import subprocess
    import sys

    store = Store()
    for seed in range(40):
        store.submit(make_dataset("pipe", n_rows=40), TINY.replace(seed=seed))
    listing = subprocess.Popen(
        [sys.executable, "-m", "sparsebin", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SPARSEBIN_HOME": str(store.home)},
    )
    listing.stdout.close()  # the reader leaves before the first line
    _, said = listing.communicate(timeout=120)
    assert listing.returncode == 0 and b"Traceback" not in said, said.decode()
