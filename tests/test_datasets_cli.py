"""The build-data and import-data commands, and the status file behind background builds."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sparsebin import processes
from sparsebin.cli import main
from sparsebin.datasets import build_status, list_datasets, load_dataset, start_build
from sparsebin.datasets.status import write_status


def run(*argv: str) -> int:
    return main(list(argv))


def test_import_data_command(tmp_path, data_dir, capsys):
    np.save(tmp_path / "vectors.npy", np.eye(3, dtype=np.float32))
    assert run("import-data", str(tmp_path / "vectors.npy"), "--name", "eye") == 0
    assert load_dataset("eye").embeddings.shape == (3, 3)
    assert "eye" in capsys.readouterr().out


def test_import_data_fault_prints_error_and_returns_2(tmp_path, data_dir, capsys):
    np.save(tmp_path / "vectors.npy", np.zeros((3, 3), dtype=np.float32))
    assert run("import-data", str(tmp_path / "vectors.npy"), "--name", "zeros") == 2
    assert capsys.readouterr().err.startswith("error: vectors.npy: row 0 is all zeros")
    assert list_datasets() == []


def test_import_data_size_limit_option(tmp_path, data_dir, capsys):
    np.save(tmp_path / "vectors.npy", np.eye(3, dtype=np.float32))
    code = run("import-data", str(tmp_path / "vectors.npy"), "--name", "x", "--max-bytes", "10")
    assert code == 2
    assert "above the import size limit" in capsys.readouterr().err


def test_build_data_command_writes_status(data_dir, capsys):
    assert build_status("icd10cm") is None
    assert run("build-data", "icd10cm", "--limit", "40") == 0
    status = build_status("icd10cm")
    assert status["state"] == "done" and status["error"] is None
    assert status["done"] == status["total"] == 40
    assert load_dataset("icd10cm").embeddings.shape == (40, 384)
    assert "icd10cm: 40 concepts" in capsys.readouterr().out


def test_build_data_rejects_unknown_name(data_dir):
    with pytest.raises(SystemExit):
        run("build-data", "snomed")


def test_running_build_with_dead_process_reads_failed(data_dir):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    write_status("hpo", state="running", done=5, total=10, pid=int(finished.stdout))
    status = build_status("hpo")
    assert status["state"] == "failed"
    assert status["error"] == "the build process stopped"
    assert status["done"] == 5


def test_start_build_launches_one_detached_process(data_dir, monkeypatch):
    launched = []

    class FakeProcess:
        pid = os.getpid()  # alive for as long as the test runs

    def fake_popen(command, **options):
        launched.append((command, options))
        return FakeProcess()

    monkeypatch.setattr(processes.subprocess, "Popen", fake_popen)  # start_detached starts every detached process
    start_build("hpo")
    start_build("hpo")  # already running: nothing new starts
    assert len(launched) == 1
    command, options = launched[0]
    assert command[1:] == ["-m", "sparsebin.datasets.cli", "build-data", "hpo", "--nice", "10"]  # below training
    assert options["start_new_session"] is True
    assert options["env"]["SPARSEBIN_DATA"] == str(data_dir)
    status = build_status("hpo")
    assert status["state"] == "running" and status["pid"] == os.getpid()
    assert json.loads((data_dir / ".builds" / "hpo.json").read_text())["name"] == "hpo"


def test_module_entry_point_used_by_start_build(data_dir):
    """`python -m sparsebin.datasets.cli` (what start_build runs) works on its own."""
    result = subprocess.run(
        [sys.executable, "-m", "sparsebin.datasets.cli", "import-data", "missing.npy", "--name", "m"],
        capture_output=True,
        text=True,
        env={**os.environ, "SPARSEBIN_DATA": str(data_dir)},
    )
    assert result.returncode == 2
    assert "error: missing.npy: no such file" in result.stderr


def test_terminated_build_leaves_nothing_and_reads_failed(data_dir):
    """Killing a background build (SIGTERM) removes its temporary folder."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsebin.datasets.cli", "build-data", "icd10cm", "--limit", "5000"],
        env={**os.environ, "SPARSEBIN_DATA": str(data_dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = build_status("icd10cm") or {}
            if status.get("done", 0) > 0:
                break
            time.sleep(0.2)
        assert any(path.name.startswith(".writing-icd10cm") for path in data_dir.iterdir())
        process.terminate()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert sorted(path.name for path in data_dir.iterdir()) == [".builds"]
    status = build_status("icd10cm")
    assert status["state"] == "failed" and status["error"] == "the build was stopped"
