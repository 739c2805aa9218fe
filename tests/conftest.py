"""Shared fixtures: every test gets its own SPARSEBIN_HOME and SPARSEBIN_DATA; Ray tests share one local Ray."""

import logging
import shutil
import tempfile

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def planted_data(n_rows=3000, dim=64, n_bits=128, k=8, noise=0.05, seed=0):
    """Rows built from planted sparse binary codes whose active count varies around k.

    x = normalise(codes @ dictionary + noise); returns (x, codes).
    """
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((n_bits, dim)).astype(np.float32)
    counts = np.clip(rng.poisson(k, size=n_rows), 2, n_bits)
    codes = np.zeros((n_rows, n_bits), dtype=np.float32)
    for row, count in enumerate(counts):
        codes[row, rng.choice(n_bits, count, replace=False)] = 1
    x = codes @ dictionary + noise * rng.standard_normal((n_rows, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), codes


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance of 2 CPUs for the whole session (it takes seconds to start).

    Its own short temp folder (Ray's socket paths must stay short) keeps its
    files and logs apart from other Ray instances on the machine and goes away
    after; Ray picks free ports itself, so test sessions run side by side.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="sbray-")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _temp_dir=temp_dir,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
