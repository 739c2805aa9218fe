"""benchmarks/gpu_check.py on the CPU at its tiny size: what a GPU session will run, tested where there is none.

The script's `main` runs here with `--device cpu --size tiny` on a small synthetic dataset (conftest's
SPARSEBIN_DATA), on one torch thread, as are the workers it starts: tiny models train fastest so on
shared cores. The Ray section is selected off with `--skip ray`: a local Ray instance and its trainer
actor take longer to start on this machine than the rest of the check together; tests/test_dispatcher.py
covers the dispatcher, and the GPU session runs the section.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import make_dataset

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
NUMBER = r"-?\d+(?:\.\d+)?"


@pytest.fixture
def gpu_check(one_torch_thread, monkeypatch):
    """The script as a module, its worker processes held to one thread too."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_section_but_ray_passes_on_the_cpu_with_its_tables_and_figures(gpu_check, tmp_path, capsys):
    make_dataset("tiny", n_rows=600, dim=16)
    code = gpu_check.main(
        ["--device", "cpu", "--size", "tiny", "--data", "tiny", "--skip", "ray", "--out", str(tmp_path)]
    )
    output = capsys.readouterr().out
    assert code == 0, output[-4000:]
    assert "gpu_check: all 5 sections passed (environment, data, agreement, timing, worker)" in output
    assert re.search(r"device\s+cpu\n", output) and re.search(r"torch\s+\d", output)

    # Agreement: every metric of both presets, the device run beside three CPU seeds, and a verdict.
    for preset in ("paper", "recommended"):
        for metric in ("recon_loss", "active_mean", "recall_at_10_hamming", "recall_at_10_asymmetric"):
            found = rf"{preset}\s+{metric}(\s+{NUMBER}){{4}}\s+{NUMBER} \+- {NUMBER}\s+[-+]{NUMBER}\s+\[.*\]\s+yes"
            assert re.search(found, output)
    assert re.search(r"recommended\s+active_mean\s+8\.0000\s+8\.0000", output)  # rigid TopK: exactly K = 8
    # Timing: both sizes, both decoder paths, each rate with its share of the bound, and an autocast verdict.
    for n_bits, k in ((256, 8), (512, 16)):
        for path in ("dense", "sparse"):
            rates = rf"(\s+{NUMBER} \({NUMBER}\)){{3}}"  # samples/s (share of the bound): train(), fp32, bf16
            assert re.search(
                rf"\n  {n_bits}\s+{k}\s+{path}\s+{NUMBER}{rates}(\s+{NUMBER}){{3}}\s+[-+]{NUMBER}%", output
            )
    assert re.search(rf"N=256 K=8 D=16 batch 128: fp32 matmul {NUMBER} GFLOP/s, bound {NUMBER} samples/s", output)

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert {name: entry["status"] for name, entry in sections.items()} == {
        "environment": "ok",
        "data": "ok",
        "agreement": "ok",
        "timing": "ok",
        "worker": "ok",
        "ray": "skipped",
    }
    assert sections["environment"]["figures"]["device"] == "cpu"
    data = sections["data"]["figures"]
    assert (data["built_here"], data["dataset"], data["rows"], data["dim"]) == (False, "tiny", 600, 16)
    assert len(sections["agreement"]["figures"]["runs"]) == 8  # 2 presets x (the device run + 3 CPU seeds)
    cells = sections["timing"]["figures"]["cells"]
    assert len(cells) == 4 and all(cell["bound"] > 0 and cell["train_rate_share"] > 0 for cell in cells)
    assert all(isinstance(cell["keep_autocast"], bool) for cell in cells)

    worker = sections["worker"]["figures"]
    assert [(job["status"], job["device"], job["epochs"]) for job in worker["jobs"]] == [("done", "cpu", 10)] * 2
    killed = worker["killed"]
    assert 1 <= killed["epoch_at_kill"] < 10
    assert killed["resumed_at_epoch"] == killed["epoch_at_kill"] + 1 and killed["history_kept"]
    assert [job["attempts"] for job in worker["jobs"] if job["job"] == killed["job"]] == [2]
    assert re.search(rf"job {killed['job']}: killed after its epoch {killed['epoch_at_kill']}, resumed at", output)
    assert (tmp_path / "worker-worker-2.log").read_text().count(" done") == 2  # the workers' logs come back too


def test_a_failing_section_is_reported_and_the_others_still_run(gpu_check, tmp_path, capsys):
    skip = ["--skip", "timing", "worker", "ray"]
    code = gpu_check.main(["--device", "cpu", "--size", "tiny", "--data", "nowhere", *skip, "--out", str(tmp_path)])
    output = capsys.readouterr().out
    assert code == 1
    assert "Traceback" in output and "DataError" in output  # the data section's traceback
    assert "-- environment: ok" in output
    assert "agreement (CheckFailed: needs the data section, which did not load a dataset)" in output
    assert "gpu_check: 2 section(s) failed: data (DataError:" in output
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"][0].startswith("data (DataError:") and len(report["failed"]) == 2
