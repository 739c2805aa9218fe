"""Dataset benchmarks: full built-in builds against raw `model.encode`, and large-import memory.

    python benchmarks/bench_datasets.py build hpo icd10cm   # rebuilds into the default data dir
    python benchmarks/bench_datasets.py rss --rows 1000000 --dim 768

`build` measures, in one process, the raw rate of `model.encode` on every name of the
dataset (one call, the library's own batching) and then a full forced build of the same
names; the build rate over the raw rate is the cost of our batching, progress and writes.
`rss` writes a float32 .npy under /tmp, imports and then loads it in a fresh process, and
reports that process's peak resident memory (VmHWM) beside the file's size.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def bench_build(name: str, raw_sample: int | None = None) -> dict:
    """Raw encode rate and full build rate on the same names, in this process.

    raw_sample times the raw rate on an evenly spread sample of the names instead of
    all of them (the build itself always embeds all), to save time on a busy machine.
    """
    from sparsebin.datasets import build_dataset, load_dataset
    from sparsebin.datasets.builtin import CONCEPT_READERS, load_model

    started = time.perf_counter()
    names = CONCEPT_READERS[name]()["name"].tolist()
    model = load_model()
    setup_seconds = time.perf_counter() - started
    model.encode(names[:512], batch_size=256)  # warm up threads and allocator

    raw_names = names
    if raw_sample is not None and raw_sample < len(names):
        raw_names = [names[index] for index in np.linspace(0, len(names) - 1, raw_sample).astype(int)]
    started = time.perf_counter()
    model.encode(raw_names, batch_size=256, normalize_embeddings=True, show_progress_bar=False)
    raw_seconds = time.perf_counter() - started
    raw_rate = len(raw_names) / raw_seconds

    started = time.perf_counter()
    folder = build_dataset(name, force=True)
    build_seconds = time.perf_counter() - started
    meta = load_dataset(folder).meta
    return {
        "dataset": name,
        "count": len(names),
        "setup_seconds (ontology + model load, cached for the build)": round(setup_seconds, 1),
        "raw_names_timed": len(raw_names),
        "raw_encode_seconds": round(raw_seconds, 1),
        "raw_names_per_second": round(raw_rate, 1),
        "build_seconds": round(build_seconds, 1),
        "build_names_per_second": round(len(names) / build_seconds, 1),
        "build_encode_names_per_second": meta["names_per_second"],
        "ratio_build_over_raw": round(len(names) / build_seconds / raw_rate, 3),
        "ratio_build_encode_over_raw": round(meta["names_per_second"] / raw_rate, 3),
        "folder": str(folder),
    }


def write_random_npy(path: Path, rows: int, dim: int) -> None:
    """A (rows, dim) float32 .npy written in chunks, so the writer stays small too."""
    from sparsebin.files import CHUNK_ROWS

    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        target[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    target.flush()
    del target


def import_then_load(source: Path, data_dir: Path) -> dict:
    """Run inside a fresh process: import, then load and read every row once."""
    from sparsebin.datasets import import_dataset, load_dataset

    baseline = peak_rss_bytes()
    started = time.perf_counter()
    import_dataset(source, name="large", data_dir=data_dir, max_bytes=2**40)
    import_seconds = time.perf_counter() - started
    after_import = peak_rss_bytes()
    dataset = load_dataset("large", data_dir=data_dir)
    after_load = peak_rss_bytes()
    first_row_norm = float(np.linalg.norm(dataset.embeddings[0]))
    return {
        "baseline_peak_rss_bytes": baseline,
        "import_seconds": round(import_seconds, 1),
        "peak_rss_after_import_bytes": after_import,
        "peak_rss_after_load_bytes": after_load,
        "first_row_norm": round(first_row_norm, 3),
        "shape": list(dataset.embeddings.shape),
    }


def bench_rss(rows: int, dim: int) -> dict:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sparsebin-bench-") as folder:
        source = Path(folder) / "large.npy"
        write_random_npy(source, rows, dim)
        code = (
            "import json, sys; from pathlib import Path;"
            f"sys.path.insert(0, {str(PROJECT_DIR)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r});"
            "from bench_datasets import import_then_load;"
            f"print(json.dumps(import_then_load(Path({str(source)!r}), Path({folder!r}) / 'data')))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        measured["file_bytes"] = source.stat().st_size
    gib = 2**30
    measured.update(
        {
            "file_gib": round(measured["file_bytes"] / gib, 2),
            "peak_rss_import_gib": round(measured["peak_rss_after_import_bytes"] / gib, 3),
            "peak_rss_load_gib": round(measured["peak_rss_after_load_bytes"] / gib, 3),
            "baseline_gib": round(measured["baseline_peak_rss_bytes"] / gib, 3),
        }
    )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("names", nargs="+", choices=["hpo", "icd10cm"])
    build.add_argument("--raw-sample", type=int, default=None, help="time raw encode on N names")
    rss = commands.add_parser("rss")
    rss.add_argument("--rows", type=int, default=1_000_000)
    rss.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    if args.command == "build":
        for name in args.names:
            print(json.dumps(bench_build(name, args.raw_sample)), flush=True)
    else:
        print(json.dumps(bench_rss(args.rows, args.dim)), flush=True)


if __name__ == "__main__":
    main()
