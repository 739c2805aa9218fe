"""A newcomer is not shown a broken run as the answer: collapsed codes and unconverged runs are named,
and the one-run pages open on the newest run whose codes did not collapse."""

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from sparsebin import paths
from sparsebin.config import TrainConfig
from sparsebin.datasets import import_dataset
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.soundness import collapse_reason, default_run_position, run_warnings

# Figures of three 40-epoch HPO runs of the study (N=1024, K=16), as the runs table holds them.
HARD = {"n_bits": 1024, "dead_all_rows": 1008, "dead_bits": 1008, "dense_bits": 16, "active_std": 0.0,
        "active_mean": 16.0, "converged": False}  # fmt: skip
NONE = {"n_bits": 1024, "dead_all_rows": 826, "dead_bits": 1007, "dense_bits": 16, "active_std": 0.023,
        "active_mean": 16.0, "converged": False}  # fmt: skip
PAPER = {"n_bits": 1024, "dead_all_rows": 15, "dead_bits": 57, "dense_bits": 16, "active_std": 10.4,
         "active_mean": 27.2, "converged": True}  # fmt: skip
RIGID = {"n_bits": 1024, "dead_all_rows": 0, "dead_bits": 2, "dense_bits": 0, "active_std": 0.0,
         "active_mean": 16.0, "converged": True}  # fmt: skip


def test_collapsed_codes_are_named_and_sound_ones_are_not():
    assert collapse_reason(HARD) == (
        "its codes collapsed: every concept fires (nearly) the same 16 bits, so its bits tell no concepts apart"
    )
    assert collapse_reason(NONE) == "its codes collapsed: 826 of its 1024 bits never fire (81%)"
    assert collapse_reason(PAPER) is None
    assert collapse_reason(RIGID) is None  # a fixed count of varied bits is not a collapse
    assert collapse_reason({**PAPER, "active_mean": 0.0}) == "its codes collapsed: no concept fires any bit"
    assert collapse_reason({"n_bits": None}) is None  # an old run without the figures is not judged


def test_warnings_say_collapse_and_convergence_with_the_reason():
    warnings = run_warnings(HARD, {"converged": False, "reason": "loss moved +0.0100 (limit 0.0050)"})
    assert len(warnings) == 2
    assert warnings[0].startswith("This run is broken as an answer: its codes collapsed")
    assert warnings[1] == (
        "This run did not converge (loss moved +0.0100 (limit 0.0050)): its figures may still move with more epochs."
    )
    assert run_warnings(PAPER, {"converged": True}) == []


def test_the_opening_run_is_the_newest_that_did_not_collapse():
    assert default_run_position(pd.DataFrame([HARD, NONE, PAPER, RIGID])) == 2
    assert default_run_position(pd.DataFrame([HARD, NONE])) == 0  # all collapsed: the newest


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A tiny dataset with two finished runs; the newer one's runs-table figures read as collapsed."""
    root = tmp_path_factory.mktemp("soundness")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSEBIN_HOME", str(root / "home"))
        patch.setenv("SPARSEBIN_DATA", str(root / "data"))
        rng = np.random.default_rng(0)
        np.save(root / "tiny.npy", rng.standard_normal((200, 16)).astype(np.float32))
        import_dataset(root / "tiny.npy", name="tiny")
        store = Store()
        base = TrainConfig(n_bits=32, k=4, epochs=2, batch_size=64, lr=1e-2, device="cpu", log_every=2)
        store.submit("tiny", base, label="sound run")
        store.submit("tiny", base.replace(seed=1), label="collapsed run")
        run_worker(once=True, device="cpu")
        newest = store.list_runs()["run_id"].iloc[0]
        with sqlite3.connect(paths.home_dir() / "sparsebin.db") as connection:  # as a collapsed training leaves it
            summary = json.loads(
                connection.execute("SELECT summary FROM jobs WHERE run_id = ?", (newest,)).fetchone()[0]
            )
            summary |= {"dead_all_rows": 28, "dead_bits": 28, "dense_bits": 4, "active_std": 0.0}
            connection.execute("UPDATE jobs SET summary = ? WHERE run_id = ?", (json.dumps(summary), newest))
    return root


@pytest.mark.parametrize(("page", "box"), [("bits", "bits_run"), ("concepts", "concepts_run")])
def test_pages_open_on_the_sound_run_and_warn_on_the_collapsed_one(two_runs, monkeypatch, page, box):
    monkeypatch.setenv("SPARSEBIN_HOME", str(two_runs / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(two_runs / "data"))
    monkeypatch.setenv("SPARSEBIN_NO_WORKER", "1")
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    picker = at.selectbox(key=box)
    runs = Store().list_runs().set_index("label")["run_id"]
    assert "collapsed run" in picker.options[0] and "sound run" in picker.options[1]  # newest first
    assert picker.value == runs["sound run"]  # opens on the newest run whose codes did not collapse
    assert not [w.value for w in at.warning if "broken as an answer" in w.value]
    picker.set_value(runs["collapsed run"]).run()
    warned = [w.value for w in at.warning if "broken as an answer" in w.value]
    assert warned == [
        "This run is broken as an answer: its codes collapsed: every concept fires (nearly) the same 4 bits, "
        "so its bits tell no concepts apart. Read it as a failed setting."
    ]
