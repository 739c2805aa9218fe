"""Datasets on disk: one folder per dataset, written atomically, read memory-mapped.

A dataset folder holds `embeddings.npy` (float32, shape (M, D)), `concepts.parquet`
(one row per embedding row, same order) and `meta.json`. Folders are first written
under a hidden temporary name in the same data folder and renamed into place, so a
reader never sees half a dataset and an interrupted write leaves only a hidden
folder that listing ignores and the next write of that name removes.
"""

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from sparsebin import paths
from sparsebin.errors import DataError
from sparsebin.files import atomic_path, write_atomic
from sparsebin.processes import pid_alive

EMBEDDINGS_FILE = "embeddings.npy"
CONCEPTS_FILE = "concepts.parquet"
META_FILE = "meta.json"
CONCEPT_COLUMNS = ("id", "name", "source", "category", "depth", "parents")

# Folder names users may choose: no separators, no leading dot (hidden, temporary).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HASH_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: embeddings memory-mapped, concepts in the same row order."""

    name: str
    path: Path
    embeddings: np.ndarray  # (M, D) float32, memory-mapped read-only
    concepts: pd.DataFrame  # M rows
    meta: dict


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The given data folder, or the project default (env SPARSEBIN_DATA)."""
    return Path(data_dir) if data_dir is not None else paths.data_dir()


def check_name(name: str) -> str:
    """Refuse dataset names that could escape the data folder or hide from listing."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise DataError(
            f"dataset name {name!r} is not a safe folder name: use 1-64 letters, digits, "
            "'_', '-' or '.', starting with a letter or digit, without '..' or path separators"
        )
    return name


def file_sha256(path: Path) -> str:
    """Hash a file in fixed chunks, so even a multi-GiB file costs little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages a dataset depends on, for its meta."""
    versions = {}
    for package in ("numpy", "pandas", "pyarrow", *packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class NpyWriter:
    """Write a float32 (rows, dim) .npy file chunk by chunk with ordinary file writes.

    Plain writes (not a memory map) keep the writer's resident memory at one chunk,
    and the file's sha256 is computed on the way, so a 3 GiB import is read once.
    """

    def __init__(self, path: Path, rows: int, dim: int):
        self.path = path
        self.rows = rows
        self.written = 0
        self._digest = hashlib.sha256()
        # Held open across write() calls and closed by close() or abort().
        self._handle = open(path, "wb")  # noqa: SIM115
        header = {
            "descr": np.dtype(np.float32).str,
            "fortran_order": False,
            "shape": (rows, dim),
        }
        np.lib.format.write_array_header_2_0(_HashingFile(self._handle, self._digest), header)

    def write(self, chunk: np.ndarray) -> None:
        # A memoryview writes the array's own buffer: no bytes copy of the chunk.
        data = memoryview(np.ascontiguousarray(chunk, dtype=np.float32)).cast("B")
        self._digest.update(data)
        self._handle.write(data)
        self.written += len(chunk)

    def abort(self) -> None:
        """Close the file after a failure; the caller discards the folder it is in."""
        self._handle.close()

    def close(self) -> str:
        """Close the file and return its sha256; refuse a file with missing rows."""
        self._handle.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path} received {self.written} rows, expected {self.rows}")
        return self._digest.hexdigest()


class _HashingFile:
    """A write-only file wrapper that feeds everything written into a digest."""

    def __init__(self, handle, digest):
        self._handle = handle
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._handle.write(data)


def _remove_stale_temporaries(root: Path, name: str) -> None:
    """Delete hidden folders left by writes of this name whose process has died."""
    for folder in root.glob(f".writing-{name}-*"):
        pid_text = folder.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit() or not pid_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


def _publish(temporary: Path, target: Path) -> None:
    """Rename a finished folder to target, retiring any dataset already there.

    Two writers may finish together (the app's background build and a command-line
    one); each retry renames whatever is in place aside, so the last one wins whole.
    """
    for attempt in range(10):
        try:
            os.replace(temporary, target)
            return
        except OSError:
            if not target.exists() or attempt == 9:
                raise
        retired = target.parent / f".retired-{target.name}-{uuid.uuid4().hex}"
        try:
            os.replace(target, retired)
        except FileNotFoundError:
            continue
        shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def atomic_dataset_folder(name: str, data_dir: Path | None = None) -> Iterator[Path]:
    """Yield a hidden temporary folder; on success rename it to data_dir/name.

    Any exception removes the temporary folder, and the data folder too when this
    write created it and it is still empty, so a failed write leaves nothing behind.
    An existing dataset of that name is replaced only once the new one is complete.
    """
    root = resolve_data_dir(data_dir)
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, name)
    temporary = root / f".writing-{name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        _publish(temporary, root / name)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if created_root and not any(root.iterdir()):
            root.rmdir()
        raise


def write_meta(folder: Path, meta: dict) -> None:
    write_atomic(folder / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def write_concepts(folder: Path, concepts: pd.DataFrame) -> None:
    with atomic_path(folder / CONCEPTS_FILE) as partial:
        concepts.reset_index(drop=True).to_parquet(partial, index=False)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def is_dataset(folder: Path) -> bool:
    return all((folder / file).is_file() for file in (EMBEDDINGS_FILE, CONCEPTS_FILE, META_FILE))


def dataset_folder(name_or_path: str | Path, data_dir: Path | None = None) -> Path:
    """Where a dataset lives: an existing folder path as given, else data_dir/name."""
    candidate = Path(name_or_path)
    if candidate.is_dir() and is_dataset(candidate):
        return candidate
    if not _SAFE_NAME.fullmatch(str(name_or_path)) or ".." in str(name_or_path):
        known = ", ".join(item["name"] for item in list_datasets(data_dir)) or "none"
        what = "a folder that is not a dataset" if candidate.is_dir() else "neither a dataset name nor a dataset folder"
        raise DataError(
            f"{str(name_or_path)!r} is {what} (datasets: {known}); an embeddings file "
            "(.npy, .npz, .parquet or .csv) is imported first with `import-data`, or given to `submit` or `train`"
        )
    name = str(name_or_path)
    folder = resolve_data_dir(data_dir) / name
    if not is_dataset(folder):
        known = ", ".join(item["name"] for item in list_datasets(data_dir)) or "none"
        raise DataError(
            f"no dataset {name!r} in {folder.parent} (available: {known}); build one with "
            f"`python -m sparsebin build-data {name}` or import one with `import-data`"
        )
    return folder


def load_dataset(name_or_path: str | Path, data_dir: Path | None = None) -> Dataset:
    """Open a dataset by name (under data_dir) or by folder path.

    The embeddings are memory-mapped read-only, so opening a multi-GiB dataset costs
    almost no memory until rows are read.
    """
    folder = dataset_folder(name_or_path, data_dir)
    meta = read_meta(folder)
    if meta is None:
        raise DataError(f"dataset {folder.name} has a damaged {META_FILE}; rebuild or re-import it")
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError):
        raise DataError(f"dataset {folder.name} has a damaged {EMBEDDINGS_FILE}; rebuild or re-import it") from None
    try:
        concepts = pd.read_parquet(folder / CONCEPTS_FILE)
    except (ValueError, OSError):
        raise DataError(f"dataset {folder.name} has a damaged {CONCEPTS_FILE}; rebuild or re-import it") from None
    if len(concepts) != embeddings.shape[0]:
        raise DataError(
            f"{folder / CONCEPTS_FILE} has {len(concepts)} rows but "
            f"{folder / EMBEDDINGS_FILE} has {embeddings.shape[0]}; rebuild or re-import it"
        )
    concepts["parents"] = concepts["parents"].map(list)
    if "synonyms" in concepts:
        concepts["synonyms"] = concepts["synonyms"].map(list)
    return Dataset(
        name=meta.get("name", folder.name),
        path=folder,
        embeddings=embeddings,
        concepts=concepts,
        meta=meta,
    )


def read_meta(folder: Path) -> dict | None:
    """A dataset's meta.json as a dict, or None when it is unreadable or not a JSON object."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def list_datasets(data_dir: Path | None = None) -> list[dict]:
    """One summary per complete dataset folder, sorted by name; hidden folders are skipped."""
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        return []
    summaries = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or not is_dataset(folder):
            continue
        meta = read_meta(folder)
        if meta is None:  # a damaged dataset is not offered; loading it by name says what is wrong
            continue
        summaries.append(
            {
                "name": folder.name,
                "count": meta.get("count"),
                "dim": meta.get("dimension"),
                "source": meta.get("source"),
                "kind": meta.get("kind"),
                "built_at": meta.get("built_at"),
                "path": folder,
            }
        )
    return summaries
