"""python -m sparsebin train / eval, as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, planted_data

from sparsebin import training_cli
from sparsebin.cli import main
from sparsebin.config import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def test_train_writes_a_complete_run_folder_and_eval_reads_it(tmp_path, capsys):
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    data = tmp_path / "x.npy"
    np.save(data, x)
    run = tmp_path / "run"
    code = main(
        ["train", str(data), "--n-bits", "32", "--k", "4", "--epochs", "2", "--batch-size", "50", "--out", str(run)]
    )
    assert code == 0
    for name in ("config.json", "model.safetensors", "metrics.json", "history.jsonl", "codes.npy"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["n_bits"] == 32 and config["k"] == 4 and config["epochs"] == 2
    codes = np.load(run / "codes.npy")
    assert codes.shape == (300, 4) and codes.dtype == np.uint8  # 32 bits packed in 4 bytes per concept
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 2
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["recon_loss"].endswith("(validation part, 30 rows)")  # every count names its part
    assert lines["dead_bits"].endswith("(validation part, 30 rows)")
    assert lines["recall_at_10_hamming"].endswith("(30 queries of the validation part against 300 rows)")
    assert "bit health over all 300 rows:" in out

    assert main(["eval", str(run), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_rows"] == 300 and metrics["split"] == f"all of {data}"


def test_invalid_option_is_refused_with_its_sentence(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, planted_data(n_rows=100, dim=8, n_bits=8, k=2)[0])
    assert main(["train", str(data), "--n-bits", "8", "--k", "8", "--out", str(tmp_path / "run")]) == 2
    assert "error: k must be smaller than n_bits, got k=8 and n_bits=8." in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_explains_each_option():
    result = subprocess.run(
        [sys.executable, "-m", "sparsebin", "train", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for phrase in ("code length N", "target number of active bits", "pass-through", "the paper's"):
        assert phrase in " ".join(result.stdout.split())


def test_a_fault_is_one_sentence_but_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    data = tmp_path / "x.npy"
    np.save(data, planted_data(n_rows=100, dim=8, n_bits=8, k=2)[0])
    assert main(["eval", str(tmp_path / "no-run"), str(data)]) == 2
    assert (
        capsys.readouterr().err
        == "error: run no-run has no model.safetensors; it may not have finished, or was damaged.\n"
    )

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(training_cli, "run_experiment", broken)
    with pytest.raises(ValueError, match="operands could not be broadcast together"):
        main(["train", str(data), "--n-bits", "8", "--k", "2", "--batch-size", "10", "--out", str(tmp_path / "run")])


def test_train_preset_recommended_trains_with_its_remedies_and_options_still_apply(tmp_path, capsys):
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    data = tmp_path / "x.npy"
    np.save(data, x)
    run = tmp_path / "run"
    argv = ["train", str(data), "--preset", "recommended", "--n-bits", "32", "--k", "4", "--epochs", "1"]
    assert main([*argv, "--batch-size", "50", "--rate-weight", "0.5", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["sparsity"] == "hard-topk" and config["rate_control"] == "balance"  # the preset's settings
    assert config["rate_weight"] == 0.5 and PRESETS["recommended"]["rate_weight"] != 0.5  # the option wins
    assert "recall_at_10_asymmetric" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", str(data), "--preset", "best", "--out", str(tmp_path / "other")])
    assert "invalid choice: 'best' (choose from 'paper', 'recommended')" in capsys.readouterr().err


def test_train_and_eval_show_silent_bits_beside_chance_and_the_interpretability_of_a_dataset(tmp_path, capsys):
    make_dataset(categories=4)
    run = tmp_path / "run"
    argv = ["train", "tiny", "--n-bits", "32", "--k", "4", "--epochs", "2", "--batch-size", "32", "--out", str(run)]
    assert main([*argv, "--queries", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    metrics = json.loads((run / "metrics.json").read_text())
    health, judged = metrics["bit_health"], metrics["interpretability"]
    assert (
        f"{health['silent_held_out']:>8}  bits silent on held-out rows (fire on training rows only); "
        f"{health['silent_held_out_expected']:.1f} expected by chance"
    ) in out
    sentence = next(line for line in out if line.startswith("interpretability over all rows:"))
    assert f"probe F1 {judged['probe_f1']:.3f} on held-out rows (chance {judged['probe_f1_chance']:.3f}" in sentence
    assert f"the dense embedding {judged['dense_probe_f1']:.3f}) over 4 categories." in sentence
    assert next(line for line in out if line.split()[0] == "alignment_cosine").endswith("(validation part, 20 rows)")

    assert main(["eval", str(run), "tiny", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["interpretability"] == judged  # all rows, probed on the run's own split: the same figures
