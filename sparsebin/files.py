"""How sparsebin writes files and reads big arrays.

A file is written under a temporary name beside it and renamed into place
(`atomic_path`, `write_atomic`), so a reader, or a writer killed midway, never
leaves half a file under the real name. Arrays that may be memory-mapped files
of any size are read `CHUNK_ROWS` rows at a time, and a read-only memory
map's pages are let go once a block is copied out (`release_pages`), so a
pass over a file does not keep the file in the process's memory.
"""

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Rows of embeddings or packed codes read at a time: 65536 rows of 384 float32 dimensions are 96 MiB.
CHUNK_ROWS = 65536
# Rows at a time where each row is expanded to one value per bit (unpacked codes, a model's (rows, N)
# outputs): eight times the bytes of a packed row, so an eighth of the rows.
BIT_CHUNK_ROWS = CHUNK_ROWS // 8
# Bytes of one block of float rows where a step copies, divides or widens them (a part's rows gathered,
# normalised, made float64): with 65536 rows a 768-d block was 200 MiB a copy and ~800 MiB a step.
FLOAT_BLOCK_BYTES = 2**25


def float_rows(dim: int, itemsize: int = 4) -> int:
    """Rows of `dim` floats of `itemsize` bytes in one FLOAT_BLOCK_BYTES block (at most CHUNK_ROWS)."""
    return int(min(CHUNK_ROWS, max(1, FLOAT_BLOCK_BYTES // (max(int(dim), 1) * itemsize))))


def release_pages(array) -> None:
    """Hand a memory map's resident pages back to the kernel; they stay in the page cache, and reading them
    again maps them back.

    Without this every page a pass reads stays counted in the process's memory (RSS) until the map is
    closed: 1.4 GiB for one pass over a million 384-d rows. A no-op for arrays that are not mapped, and
    for copy-on-write maps (mode "c"), whose changed pages would be lost.
    """
    mapping = _mapping_of(array)
    if mapping is None or getattr(array, "mode", None) == "c":
        return
    if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def is_mapped(array) -> bool:
    """Whether `array` reads a memory-mapped file (a `np.load(..., mmap_mode=...)` array or a view of one)."""
    return _mapping_of(array) is not None


def _mapping_of(array) -> mmap.mmap | None:
    for _ in range(8):  # a view of a view of a map
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            return mapping
        array = getattr(array, "base", None)
        if isinstance(array, mmap.mmap):
            return array
        if array is None:
            return None
    return None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block ends, removed if it fails.

    The name is hidden and carries the process and thread, so two writers of
    one file never write into each other's temporary file; the last rename wins whole.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of one."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
