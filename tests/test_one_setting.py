"""A training setting is described in one place: its TrainConfig field.

The test copies the package, adds one field to the copy's config.py and nothing else, and sees the
new setting reach the command line (train and submit, with its help), the ablation grid, the
comparison key and the run folder's config.json.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NEW_FIELD = '    dummy_knob: int = setting(0, "a setting added for this test", grid=True)\n'
CHECKS = """
import json, sys
from sparsebin.config import GRID_SETTINGS, SETTING_HELP, TrainConfig, expand_grid
from sparsebin.interpret.comparison import comparison_key
assert "dummy_knob" in GRID_SETTINGS, GRID_SETTINGS
assert SETTING_HELP["dummy_knob"] == "a setting added for this test"
grid = expand_grid(TrainConfig(), {"dummy_knob": [1, 2]})
assert [config.dummy_knob for config in grid] == [1, 2]
assert "dummy_knob" in comparison_key(), comparison_key()
print("library: ok")
"""


def test_a_new_field_reaches_the_cli_the_grid_the_comparison_key_and_the_run_folder(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "sparsebin", copy / "sparsebin", ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "sparsebin" / "config.py"
    source = config.read_text()
    first_method = source.index("    @property\n")  # the field goes after the last field, before the methods
    config.write_text(source[:first_method] + NEW_FIELD + "\n" + source[first_method:])

    def sparsebin(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, *argv], cwd=copy, capture_output=True, text=True, env=_environment(tmp_path)
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "library: ok" in sparsebin("-c", CHECKS)
    train_help = sparsebin("-m", "sparsebin", "train", "--help")
    assert "--dummy-knob" in train_help and "a setting added for this test" in train_help
    submit_help = " ".join(sparsebin("-m", "sparsebin", "submit", "--help").split())
    assert "--dummy-knob DUMMY_KNOB [DUMMY_KNOB ...]" in submit_help  # a grid setting takes several values

    data = tmp_path / "rows.npy"
    np.save(data, np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32))
    run = tmp_path / "run"
    flags = ["--n-bits", "16", "--k", "2", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    sparsebin("-m", "sparsebin", "train", str(data), *flags, "--dummy-knob", "3", "--queries", "10", "--out", str(run))
    assert json.loads((run / "config.json").read_text())["dummy_knob"] == 3


def _environment(tmp_path: Path) -> dict:
    return os.environ | {"PYTHONPATH": str(tmp_path / "project"), "SPARSEBIN_HOME": str(tmp_path / "home")}
