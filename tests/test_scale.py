"""Evaluation at scale: a memory-mapped data set is measured in chunks, never read whole into memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np

ROWS, DIM, BLOCK = 200_000, 768, 25_000  # up to a 614 MB float32 file: a whole copy shows plainly

MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    from sparsebin.config import TrainConfig
    from sparsebin.experiment import measure_run
    from sparsebin.model import BinaryAutoencoder, ModelSpec
    from sparsebin.train import Split, TrainResult

    import threading, time

    def status_bytes(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    def anonymous_bytes():
        return status_bytes("RssAnon")

    peak = [0]

    def sample():  # the peak of anonymous memory: the mapped file's pages are the page cache's, not ours
        while True:
            peak[0] = max(peak[0], anonymous_bytes())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()

    torch.manual_seed(0)
    embeddings = np.load(sys.argv[1], mmap_mode="r")
    rows = np.random.default_rng(0).permutation(len(embeddings))
    split = Split(np.sort(rows[len(rows) // 10 :]), np.sort(rows[: len(rows) // 10]))
    config = TrainConfig(n_bits=64, k=4, device="cpu")
    model = BinaryAutoencoder(ModelSpec.from_config(config, embeddings.shape[1]))
    # Nothing of the file is resident yet; the peak so far is the interpreter, torch and the model.
    time.sleep(0.05)
    before, peak_before = peak[0], status_bytes("VmHWM")
    evaluation = measure_run(embeddings, TrainResult(model, config, split), n_queries=50)
    time.sleep(0.05)
    after, peak_after = peak[0], status_bytes("VmHWM")
    print(json.dumps({"before": before, "after": after, "recon": evaluation.metrics["validation"]["recon_loss"],
                      "rows": int(len(evaluation.codes)), "peak_growth": peak_after - peak_before}))
    """
)


def planted_file(path, rows: int) -> int:
    """A float32 (rows, DIM) .npy of eight planted clusters, written a block at a time; returns its size."""
    embeddings = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, DIM))
    rng = np.random.default_rng(0)
    for start in range(0, rows, BLOCK):
        block = rng.standard_normal((min(BLOCK, rows - start), DIM), dtype=np.float32)
        block[np.arange(len(block)), (start + np.arange(len(block))) % 8] += 3.0
        embeddings[start : start + len(block)] = block
    embeddings.flush()
    return path.stat().st_size


def evaluation_growth(path) -> dict:
    """What measuring a run on the file did to the evaluating process's memory: `anonymous`, the bytes by
    which its own allocations' peak rose, and `peak`, the bytes by which its peak resident memory (VmHWM,
    which also counts the pages of the mapped file it holds) rose."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < result["recon"] < 2
    return {"anonymous": result["after"] - result["before"], "peak": result["peak_growth"]}


def test_a_memory_mapped_dataset_is_evaluated_without_reading_it_whole(tmp_path):
    planted_file(tmp_path / "small.npy", ROWS // 2)
    large_bytes = planted_file(tmp_path / "large.npy", ROWS)
    small, large = evaluation_growth(tmp_path / "small.npy"), evaluation_growth(tmp_path / "large.npy")
    grown_small, grown_large = small["anonymous"], large["anonymous"]
    per_row = (grown_large - grown_small) / (ROWS - ROWS // 2)
    # A whole float copy of the rows (what evaluation once made) costs 4 * DIM bytes a row. In chunks a row
    # costs its packed code (8 B), its length (4 B) and its share of the concept table's indexes; the
    # blocks (chunk of rows, distance blocks) are of a fixed size, whatever the row count.
    fixed = grown_large - per_row * ROWS
    said = f"evaluation costs {per_row:.0f} B a row and {fixed / 2**20:.0f} MiB fixed; a {DIM}-float row is {4 * DIM} B"
    assert per_row < 0.5 * 4 * DIM, said
    # Every pass reads the whole file through the map. Its pages are handed back after each block
    # (files.release_pages), so the peak resident memory, mapped pages included, grows by far less than
    # a float row per row: holding the file would add all of its 4 * DIM bytes a row.
    peak_per_row = (large["peak"] - small["peak"]) / (ROWS - ROWS // 2)
    assert peak_per_row < 0.5 * 4 * DIM, (
        f"peak resident memory grows {peak_per_row:.0f} B a row, mapped pages included; a {DIM}-float row is "
        f"{4 * DIM} B (the large file is {large_bytes / 2**20:.0f} MiB)"
    )
