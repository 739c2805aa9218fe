"""Shared fixtures and helpers: each test gets its own SPARSEBIN_HOME and SPARSEBIN_DATA; Ray tests share one Ray.

Test modules take the helpers here with `from conftest import ...`, never from one another.
"""

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sparsebin.config import TrainConfig
from sparsebin.datasets.store import EMBEDDINGS_FILE, write_concepts, write_meta

# A config that trains in well under a second on make_dataset's rows.
TINY = TrainConfig(n_bits=32, k=4, epochs=2, batch_size=32, log_every=2, device="cpu")
# Every file a finished run folder holds.
ARTIFACTS = (
    "config.json",
    "model.safetensors",
    "metrics.json",
    "history.jsonl",
    "codes.npy",
    "split.json",
    "probes.csv",
)


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def data_dir():
    """The test's SPARSEBIN_DATA folder (not created until something writes there)."""
    return Path(os.environ["SPARSEBIN_DATA"])


@pytest.fixture
def vectors():
    """Six random 4-d float32 rows, for imports."""
    return np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


@pytest.fixture
def one_torch_thread():
    """Tiny models train fastest on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_dataset(name: str = "tiny", n_rows: int = 200, dim: int = 16, seed: int = 0, categories: int = 0) -> str:
    """Write a small dataset folder under SPARSEBIN_DATA and return its name.

    Its concepts have no ontology (one category, no parents), or with `categories` an ontology of that many
    categories (`tree_concepts` of the rows).
    """
    folder = Path(os.environ["SPARSEBIN_DATA"]) / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n_rows, dim)).astype(np.float32)
    np.save(folder / EMBEDDINGS_FILE, embeddings)
    concepts = pd.DataFrame(
        {
            "id": [f"C{row}" for row in range(n_rows)],
            "name": [f"concept {row}" for row in range(n_rows)],
            "source": "test",
            "category": "none",
            "depth": 1,
            "parents": [[] for _ in range(n_rows)],
        }
    )
    write_concepts(folder, tree_concepts(embeddings, categories) if categories else concepts)
    write_meta(folder, {"name": name, "count": n_rows, "dim": dim})
    return name


def tree_concepts(x: np.ndarray, n_categories: int = 4) -> pd.DataFrame:
    """A concept table for rows `x` with a two-level ontology: a row's category is the dimension, of the first
    `n_categories`, it is largest in (so one embedding axis tells it); the first n_categories rows head one
    category each, every other row is a child of its category's head."""
    category = np.argmax(x[:, :n_categories], axis=1)
    category[:n_categories] = np.arange(n_categories)
    return pd.DataFrame(
        {
            "id": [f"C{row}" for row in range(len(x))],
            "name": [f"concept {row}" for row in range(len(x))],
            "source": "test",
            "category": [f"category {value}" for value in category],
            "depth": np.where(np.arange(len(x)) < n_categories, 1, 2),
            "parents": [[] if row < n_categories else [f"C{category[row]}"] for row in range(len(x))],
        }
    )


def wait_for(condition, timeout: float = 60.0, every: float = 0.05):
    """Poll `condition` until it returns something true, and return that; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout} s waiting for {condition}")


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
