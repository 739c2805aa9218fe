"""A 2-D UMAP map of a dataset, computed once and cached next to it as `umap.npy`.

UMAP's first fit takes tens of seconds (numba compiles, then the neighbour
graph and the layout), so `start_projection` runs it in a background thread
of the calling process and `projection_status` reports its stage; the caller
polls. The cache file is written atomically, so a reader sees all or nothing.
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsebin.files import atomic_path

CACHE_FILE = "umap.npy"
STAGES = ("loading embeddings", "finding neighbours and laying out", "saving")
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


def compute_projection(
    embeddings: np.ndarray, dataset_folder: Path, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Fit UMAP on all rows (cosine metric, seeded), save and return (M, 2) float32 coordinates."""
    import umap  # imported here: it compiles with numba on import, seconds the app need not pay at start

    report = progress or (lambda done, total, stage: None)
    report(0, len(STAGES), STAGES[0])
    vectors = np.asarray(embeddings, dtype=np.float32)
    report(1, len(STAGES), STAGES[1])
    reducer = umap.UMAP(n_components=2, low_memory=True, n_jobs=1, **UMAP_SETTINGS)
    coordinates = reducer.fit_transform(vectors).astype(np.float32)  # (M, 2)
    report(2, len(STAGES), STAGES[2])
    path = projection_path(dataset_folder)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, coordinates)
    report(3, len(STAGES), "done")
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
