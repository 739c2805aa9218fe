"""What runs on a Ray node: a trainer process that trains the jobs a dispatcher hands it.

The trainer sees no queue and no run store. It trains into a temporary folder
of its own node with `run_experiment`, exactly as the local worker does, and
hands everything back as bytes: progress events and the newest checkpoint
when the dispatcher drains it (every fraction of a second), the run folder's
files when the run ends. So nodes share nothing with the queue's machine but
the Ray cluster.

The dispatcher wraps `Trainer` with `ray.remote` as a threaded actor, so
`drain` and `stop` are answered while `run` trains in another thread.
"""

import os
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sparsebin.config import TrainConfig
from sparsebin.experiment import CHECKPOINT, run_experiment


class Trainer:
    """Trains one job at a time; reused for the next job of the same resource shape."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, no more
        self._lock = threading.Lock()  # guards the fields below, shared by run and drain
        self._job_id: int | None = None
        self._events: list[dict] = []
        self._checkpoint: Path | None = None
        self._sent: tuple[int, int] | None = None  # (mtime_ns, size) of the checkpoint last handed back
        self._stop = threading.Event()

    def where(self) -> dict:
        """The node, device and process this trainer runs on."""
        import ray

        gpus = ray.get_gpu_ids()
        threads = torch.get_num_threads()
        device = f"cuda:{gpus[0]}" if gpus else f"cpu ({threads} thread{'s' if threads > 1 else ''})"
        return {"node": socket.gethostname(), "device": device, "pid": os.getpid()}

    def run(
        self,
        job_id: int,
        embeddings: np.ndarray,
        config_json: str,
        checkpoint: bytes | None,
        concepts: pd.DataFrame | None = None,
    ) -> dict:
        """Train `config_json` on `embeddings`, resuming from `checkpoint` when given; `concepts` is the data
        set's concept table, for the interpretability figures.

        Returns {"cancelled": bool, "files": {name: bytes}}: every file of the
        run folder, the checkpoint included while the run is unfinished.
        """
        config = TrainConfig.from_json(config_json)
        with tempfile.TemporaryDirectory(prefix="sparsebin-run-") as scratch:
            folder = Path(scratch) / "run"
            folder.mkdir()
            sent = None
            if checkpoint is not None:
                (folder / CHECKPOINT).write_bytes(checkpoint)
                stat = (folder / CHECKPOINT).stat()
                sent = (stat.st_mtime_ns, stat.st_size)  # the dispatcher has this one already
            with self._lock:
                self._job_id, self._events, self._checkpoint, self._sent = job_id, [], folder / CHECKPOINT, sent
                self._stop.clear()
            try:
                stop = self._stop.is_set
                result = run_experiment(
                    embeddings, config, folder, progress=self._record, should_stop=stop, concepts=concepts
                )
            finally:
                with self._lock:
                    self._job_id, self._checkpoint = None, None
            files = {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}
        return {"cancelled": result.cancelled, "files": files}

    def _record(self, event: dict) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self, job_id: int) -> dict:
        """Progress events since the last drain, and the checkpoint if a newer one was written."""
        with self._lock:
            if job_id != self._job_id:
                return {"events": [], "checkpoint": None}
            events, self._events = self._events, []
            path, sent = self._checkpoint, self._sent
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {"events": events, "checkpoint": None}
        if (stat.st_mtime_ns, stat.st_size) == sent:
            return {"events": events, "checkpoint": None}
        # The training loop replaces the file by renaming, so an open handle reads one whole version.
        data = path.read_bytes()
        with self._lock:
            if job_id == self._job_id:
                self._sent = (stat.st_mtime_ns, stat.st_size)
        return {"events": events, "checkpoint": data}

    def stop(self, job_id: int) -> None:
        """Stop the job at its next step, if it is still the one training."""
        with self._lock:
            if job_id == self._job_id:
                self._stop.set()
