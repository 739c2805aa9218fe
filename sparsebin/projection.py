"""A 2-D UMAP map of a dataset, computed once and cached next to it as `umap.npy`.

UMAP's first fit takes tens of seconds (numba compiles, then the neighbour
graph and the layout), so `start_projection` runs it in a background thread
of the calling process and `projection_status` reports its stage; the caller
polls. The cache file is written atomically, so a reader sees all or nothing.

A dataset of more than `SAMPLE_ROWS` rows is fitted on a seeded sample of that many
rows (`sample_rows`); every other row is placed at its nearest sampled row by cosine,
found a block of rows at a time, so no (M, M) matrix and no whole float copy is made.
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsebin.files import atomic_path

CACHE_FILE = "umap.npy"
STAGES = ("loading embeddings", "finding neighbours and laying out", "placing the other rows", "saving")
SAMPLE_ROWS = 50_000  # rows UMAP is fitted on; the rest take their nearest sampled row's place
SAMPLE_SEED = 0
PLACE_BLOCK = 8192  # rows placed at a time: a (block, sample) float32 score matrix
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "random_state": 0}

ProgressCallback = Callable[[int, int, str], None]  # (done, total, stage)

_lock = threading.Lock()
_running: dict[str, dict] = {}  # dataset folder -> {"state", "done", "total", "stage", "error", "started"}


def projection_path(dataset_folder: Path) -> Path:
    return Path(dataset_folder) / CACHE_FILE


def load_projection(dataset_folder: Path) -> np.ndarray | None:
    """The cached (M, 2) coordinates, or None when the map has not been computed."""
    path = projection_path(dataset_folder)
    return np.load(path, allow_pickle=False) if path.is_file() else None


def sample_rows(n_rows: int, limit: int | None = None) -> np.ndarray:
    """The sorted rows the map is fitted on: all of them up to `limit` (SAMPLE_ROWS), else a seeded sample."""
    limit = SAMPLE_ROWS if limit is None else limit
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n_rows, limit, replace=False))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def nearest_sampled(embeddings: np.ndarray, sampled: np.ndarray, block: int = PLACE_BLOCK) -> np.ndarray:
    """(M,) position in `sampled` of each row's nearest sampled row by cosine (a sampled row: itself)."""
    basis = _unit(embeddings[sampled])  # (S, D)
    nearest = np.empty(len(embeddings), dtype=np.int64)
    for start in range(0, len(embeddings), block):
        scores = _unit(embeddings[start : start + block]) @ basis.T  # (block, S)
        nearest[start : start + len(scores)] = scores.argmax(axis=1)
    nearest[sampled] = np.arange(len(sampled))
    return nearest


def compute_projection(
    embeddings: np.ndarray,
    dataset_folder: Path,
    progress: ProgressCallback | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """Fit UMAP on `sample_rows` (cosine metric, seeded), place the other rows at their nearest sampled
    row, save and return (M, 2) float32 coordinates."""
    import umap  # imported here: it compiles with numba on import, seconds the app need not pay at start

    report = progress or (lambda done, total, stage: None)
    report(0, len(STAGES), STAGES[0])
    sampled = sample_rows(len(embeddings), limit)
    vectors = np.asarray(embeddings[sampled], dtype=np.float32)  # (S, D), S <= limit
    report(1, len(STAGES), STAGES[1])
    reducer = umap.UMAP(n_components=2, low_memory=True, n_jobs=1, **UMAP_SETTINGS)
    fitted = reducer.fit_transform(vectors).astype(np.float32)  # (S, 2)
    report(2, len(STAGES), STAGES[2])
    coordinates = fitted if len(sampled) == len(embeddings) else fitted[nearest_sampled(embeddings, sampled)]
    report(3, len(STAGES), STAGES[3])
    path = projection_path(dataset_folder)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, coordinates)
    report(len(STAGES), len(STAGES), "done")
    return coordinates


def start_projection(embeddings: np.ndarray, dataset_folder: Path) -> None:
    """Compute the map in a background thread unless it is cached or already being computed."""
    key = str(Path(dataset_folder).resolve())
    with _lock:
        if projection_path(dataset_folder).is_file() or _running.get(key, {}).get("state") == "running":
            return
        _running[key] = {"state": "running", "done": 0, "total": len(STAGES), "stage": STAGES[0], "error": None}
        _running[key]["started"] = time.time()

    def report(done: int, total: int, stage: str) -> None:
        with _lock:
            _running[key].update(done=done, total=total, stage=stage)

    def work() -> None:
        try:
            compute_projection(embeddings, dataset_folder, report)
            state, error = "done", None
        except Exception as exception:  # shown to the user; the thread must not die silently
            state, error = "failed", f"{type(exception).__name__}: {exception}"
        with _lock:
            _running[key].update(state=state, error=error)

    threading.Thread(target=work, name=f"umap-{Path(dataset_folder).name}", daemon=True).start()


def projection_status(dataset_folder: Path) -> dict | None:
    """{"state": running|done|failed, "done", "total", "stage", "error", "elapsed_s"}, or None if never started.

    A cached map reads as done even when this process did not compute it.
    """
    key = str(Path(dataset_folder).resolve())
    with _lock:
        status = dict(_running[key]) if key in _running else None
    if status is None:
        if projection_path(dataset_folder).is_file():
            return {"state": "done", "done": len(STAGES), "total": len(STAGES), "stage": "done", "error": None}
        return None
    status["elapsed_s"] = time.time() - status.pop("started")
    return status
