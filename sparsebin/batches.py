"""Where the training rows live, and how each batch reaches the device.

- resident: the training part is copied once, normalised on the host in place,
  and moved to the device; a batch is an index into it. The fastest path when
  the rows fit.
- mapped: the rows stay in the (memory-mapped) array; each batch is read in
  the permutation's order, normalised on the host and copied to the device by
  a background thread a few batches ahead (from pinned memory on CUDA). Pages
  read from a memory map are handed back after each batch, so the process
  never holds more than a few batches of the file.

Both paths normalise the same rows with the same host function, so they give
the same batches bit for bit: a run is the same on either path for a seed,
and a checkpoint taken on one resumes on the other.
"""

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sparsebin.devices import device_kind, free_memory
from sparsebin.files import CHUNK_ROWS, release_pages

PLACEMENTS = ("auto", "resident", "mapped")
# The training rows may take at most this share of the free memory; the rest is
# left to the model, its Adam moments and a batch's (B, N) activations.
RESIDENT_SHARE = 0.5
PREFETCH_DEPTH = 3  # batches read ahead on the mapped path
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowPlacement:
    """Where the training rows were held, and why."""

    mode: str  # resident or mapped
    reason: str  # one sentence a log or a run folder can show


def choose_placement(requested: str, n_rows: int, dim: int, device: str, free_bytes: int | None) -> RowPlacement:
    """Resident when asked, or when the rows take at most RESIDENT_SHARE of the free memory; else mapped."""
    if requested not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}.")
    size = n_rows * dim * 4  # float32
    if requested == "mapped":
        return RowPlacement("mapped", "batches are read from the data as they are needed, as asked.")
    if requested == "resident":
        return RowPlacement("resident", f"the {_gib(size)} of training rows are held on {device}, as asked.")
    if free_bytes is None or size <= RESIDENT_SHARE * free_bytes:
        free = "" if free_bytes is None else f" ({_gib(free_bytes)} free)"
        return RowPlacement("resident", f"the {_gib(size)} of training rows fit on {device}{free} and are held there.")
    return RowPlacement(
        "mapped",
        f"the training rows take {_gib(size)} but {device} has {_gib(free_bytes)} free, so batches are read "
        "from the data as they are needed instead of holding every row on the device.",
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def normalize_rows_(x: np.ndarray) -> np.ndarray:
    """Scale each row of a float32 array to length 1 in place (on the host); returns x.

    Row by row, so a batch normalised alone equals the same rows normalised with
    the whole training part. Evaluation normalises its copy with `metrics.unit_rows`
    (numpy); the two agree to float32 rounding, not bit for bit (about a quarter of
    the entries differ in the last bit at D = 384), and each stays as it is: one
    helper for both would change every seed's weights, or the codes a stored model
    gives back, which `remeasure` checks bit for bit.
    """
    for start in range(0, len(x), CHUNK_ROWS):  # normalised on the host a chunk at a time
        block = torch.from_numpy(x[start : start + CHUNK_ROWS])
        block.div_(block.norm(dim=1, keepdim=True).clamp_min_(1e-12))
    return x


def read_rows(embeddings: np.ndarray, rows: np.ndarray, normalize: bool) -> np.ndarray:
    """(len(rows), D) float32 copy of the chosen rows, in the order given, normalised if asked.

    Copied a chunk at a time, handing a memory map's pages back after each, so
    the process holds the copy and one chunk of the file, not the copy and the file.
    """
    rows = np.asarray(rows)
    x = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), CHUNK_ROWS):
        x[start : start + CHUNK_ROWS] = embeddings[rows[start : start + CHUNK_ROWS]]
        release_pages(embeddings)
    return normalize_rows_(x) if normalize else x


class ResidentRows:
    """The training rows normalised once and held on the device."""

    mode = "resident"

    def __init__(self, embeddings: np.ndarray, rows: np.ndarray, normalize: bool, device: str):
        x = read_rows(embeddings, rows, normalize)  # one host copy, normalised in place
        self.x = torch.from_numpy(x).to(device)  # (M_train, D); on a CPU the same memory
        self.device = device

    def __len__(self) -> int:
        return len(self.x)

    def epoch(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches of (B, D) rows in the order of `order` (a permutation of range(len(self)))."""
        order = order.to(self.device)
        for begin in range(0, len(self.x), batch_size):
            yield self.x[order[begin : begin + batch_size]]


class MappedRows:
    """The training rows read from the data batch by batch, a few batches ahead."""

    mode = "mapped"

    def __init__(self, embeddings: np.ndarray, rows: np.ndarray, normalize: bool, device: str):
        self.embeddings, self.rows, self.normalize, self.device = embeddings, np.asarray(rows), normalize, device
        self.pin = device_kind(device) == "cuda"

    def __len__(self) -> int:
        return len(self.rows)

    def epoch(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        rows = self.rows[order.cpu().numpy()]  # data rows in the permutation's order
        count = -(-len(rows) // batch_size)
        prefetcher = Prefetcher(lambda i: self._batch(rows[i * batch_size : (i + 1) * batch_size]), count)
        try:
            for _ in range(count):
                yield prefetcher.get()
        finally:
            prefetcher.close()

    def _batch(self, rows: np.ndarray) -> torch.Tensor:
        # Sorted reads touch each page of the map once and in file order; the
        # batch is then put back in the permutation's order.
        ordered = np.argsort(rows, kind="stable")
        x = np.empty((len(rows), self.embeddings.shape[1]), dtype=np.float32)
        x[ordered] = self.embeddings[rows[ordered]]
        release_pages(self.embeddings)
        if self.normalize:
            normalize_rows_(x)
        batch = torch.from_numpy(x)
        if self.pin:
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Runs make(0), make(1), ... make(count - 1) on a thread, at most `depth` results ahead.

    Reading and normalising release the GIL, so a batch is read while the
    previous one trains. An error in `make` is raised by `get`.
    """

    def __init__(self, make: Callable[[int], object], count: int, depth: int = PREFETCH_DEPTH):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(make, count), daemon=True, name="prefetch")
        self._thread.start()

    def _work(self, make: Callable[[int], object], count: int) -> None:
        for index in range(count):
            try:
                item = make(index)
            except BaseException as error:  # handed to the consumer, who raises it
                item = _Failed(error)
            if not self._put(item) or isinstance(item, _Failed):
                return

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.05)
                return True
        return False

    def get(self):
        item = self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def place_rows(
    requested: str, embeddings: np.ndarray, rows: np.ndarray, normalize: bool, device: str, free_bytes: int | None
) -> tuple[ResidentRows | MappedRows, RowPlacement]:
    """The training `rows` of `embeddings` held where `requested` (auto, resident, mapped) says, and that choice.

    auto measures the device's free memory unless `free_bytes` is given, and
    logs the reason when the rows do not fit and are read batch by batch.
    """
    free = free_memory(device) if free_bytes is None and requested == "auto" else free_bytes
    placement = choose_placement(requested, len(rows), embeddings.shape[1], device, free)
    if requested == "auto" and placement.mode == "mapped":
        log.warning(placement.reason)
    source = ResidentRows if placement.mode == "resident" else MappedRows
    return source(embeddings, rows, normalize, device), placement
