"""Scale benchmark: wall time and peak memory of each step at several row counts.

    nice -n 10 python benchmarks/bench_scale.py --sizes 10000 100000 [1000000] [--dim 384]

For each size a float32 file of synthetic rows with planted structure is written (64 cluster
centres in a 16-dimensional subspace plus noise, so a trained code has something to find), then
each step runs in its own subprocess under temporary SPARSEBIN_HOME / SPARSEBIN_DATA folders in
/tmp: `import-data`; `submit --preset recommended --n-bits 4096 --k 32 --epochs 1` trained by
`worker --once` (the epoch and the evaluation that follows it; rigid TopK, so each code has exactly K
bits, as a trained code of that size has); `eval` (evaluation alone); exact top-10 search of 100
queries taken from the codes (CodeIndex Hamming and Jaccard beside faiss IndexBinaryFlat on the same
packed codes, and IndexFlatIP on the normalised floats); `export`; the Map page's cache (UMAP of a
seeded sample of at most 50k rows, every other row placed at its nearest sampled row); and each page
opened twice in AppTest, the first time filling its caches, the second with them built. The figures
are also written to benchmarks/last_scale.json. Two peaks are given per step: peak RSS (the child's
ru_maxrss, the same as its VmHWM: it counts the pages of memory-mapped files it touched) and peak
anonymous memory (RssAnon sampled every 10 ms: the process's own allocations, without the mapped
file). The
growth columns are the ratio of a step's cost to the same step's at the previous size, per 10x rows.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_BITS, K, QUERIES = 4096, 32, 100

SEARCH = """
import json, sys, time
import numpy as np, faiss
from sparsebin.search.codes import CodeIndex
codes = np.load(sys.argv[1])
floats = np.load(sys.argv[2], mmap_mode="r")
q = np.random.default_rng(1).choice(len(codes), {queries}, replace=False)
out = {{}}
t = time.perf_counter(); index = CodeIndex(codes, {n_bits}); out["codeindex_build_s"] = time.perf_counter() - t
out["method"] = index.method
index.search(codes[q[:2]], 10)  # compile the kernels before timing
for metric in ("hamming", "jaccard"):
    t = time.perf_counter(); index.search(codes[q], 10, metric=metric)
    out[metric + "_ms_per_query"] = 1000 * (time.perf_counter() - t) / len(q)
flat = faiss.IndexBinaryFlat({n_bits}); flat.add(np.ascontiguousarray(codes))
t = time.perf_counter(); flat.search(np.ascontiguousarray(codes[q]), 10)
out["faiss_binary_ms_per_query"] = 1000 * (time.perf_counter() - t) / len(q)
ip = faiss.IndexFlatIP(floats.shape[1])
for s in range(0, len(floats), 100000):
    block = np.array(floats[s : s + 100000], dtype=np.float32); faiss.normalize_L2(block); ip.add(block)
query = np.array(floats[np.sort(q)], dtype=np.float32); faiss.normalize_L2(query)
t = time.perf_counter(); ip.search(query, 10)
out["faiss_ip_ms_per_query"] = 1000 * (time.perf_counter() - t) / len(q)
print(json.dumps(out))
"""


PROJECTION = """
from sparsebin.datasets import load_dataset
from sparsebin.projection import compute_projection
data = load_dataset("scale")
compute_projection(data.embeddings, data.path)
"""

# Each page opened as a newcomer would: the first render fills the page's caches (the run's context and bit
# table, the search index); the second is the render once they are built, which the 5 s target is about.
PAGES = """
import json, time
from streamlit.testing.v1 import AppTest

def timed(at):
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].message}")
    return seconds

out = {}
for page in ("home", "train", "compare", "bits", "concepts", "map", "data"):
    at = AppTest.from_file("app.py", default_timeout=3600)
    if page != "home":  # each AppTest opens on Home; the page is then opened from there
        at.run()
        at.switch_page(f"pages/{page}.py")
    out[page] = [timed(at), timed(at)]  # Home's first render is the process's first: app.py's imports too
    if page == "concepts":  # a concept found by name and its view, then the same search again
        at.text_input(key="concept_query").set_value("row 12")
        out["concepts: a concept by name"] = [timed(at), timed(at)]
    if page == "bits":  # another bit's profile
        at.number_input(key="bit").set_value(7)
        out["bits: another bit's profile"] = [timed(at), timed(at)]
    if page == "map":
        out["map: caption"] = at.caption[0].value if len(at.caption) else ""
print(json.dumps(out))
"""


def planted_rows(path: Path, rows: int, dim: int, block: int = 50_000) -> int:
    """Write (rows, dim) float32 rows: a cluster centre in a 16-d subspace, a sub-centre, and noise."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((dim, 16)))[0].T.astype(np.float32)  # (16, dim)
    centres = rng.standard_normal((64, 16)).astype(np.float32) @ basis * 2.0  # (64, dim)
    subs = rng.standard_normal((64, 8, dim)).astype(np.float32) * 0.6  # (64, 8, dim)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for s in range(0, rows, block):
        n = min(block, rows - s)
        c, sub = rng.integers(0, 64, n), rng.integers(0, 8, n)
        out[s : s + n] = centres[c] + subs[c, sub] + rng.standard_normal((n, dim), dtype=np.float32) * 0.5
    out.flush()
    del out
    return path.stat().st_size


def measured(command: list[str], env: dict) -> dict:
    """Run one step in its own process: wall seconds, peak RSS (ru_maxrss) and sampled peak RssAnon."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=err, text=True)
        peak_anon = [0]
        finished = threading.Event()

        def sample():
            while not finished.is_set():
                try:
                    for line in open(f"/proc/{child.pid}/status"):
                        if line.startswith("RssAnon:"):
                            peak_anon[0] = max(peak_anon[0], int(line.split()[1]) * 1024)
                except OSError:
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: ru_maxrss is its VmHWM
        finished.set()
        wall = time.perf_counter() - start
        watcher.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"step failed ({' '.join(command[:4])} ...):\n{stderr[-3000:]}")
    rss = usage.ru_maxrss * 1024
    return {"wall_s": wall, "rss": rss, "anon": peak_anon[0], "stdout": stdout}


def one_size(rows: int, dim: int, skip_train: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"sparsebin-scale-{rows}-"))
    env = dict(os.environ, SPARSEBIN_HOME=str(work / "home"), SPARSEBIN_DATA=str(work / "data"))
    py = [sys.executable, "-m", "sparsebin"]
    try:
        file_bytes = planted_rows(work / "rows.npy", rows, dim)
        steps = {"import": measured([*py, "import-data", str(work / "rows.npy"), "--name", "scale"], env)}
        data = work / "data" / "scale"
        if skip_train:
            return {"rows": rows, "file_bytes": file_bytes, "steps": steps}
        # Queued and trained by the worker, as the app does, so the pages and `export` find the run.
        settings = ["--preset", "recommended", "--n-bits", str(N_BITS), "--k", str(K), "--epochs", "1"]
        measured([*py, "submit", "scale", *settings, "--device", "cpu"], env)
        steps["train (1 epoch + evaluation, worker)"] = measured([*py, "worker", "--once", "--device", "cpu"], env)
        run = next((work / "home" / "runs").iterdir())
        if not (run / "codes.npy").is_file():
            raise SystemExit(f"the worker left no codes in {run}: {measured([*py, 'status'], env)['stdout']}")
        steps["evaluation (eval)"] = measured([*py, "eval", str(run), "scale", "--json"], env)
        search = SEARCH.format(queries=QUERIES, n_bits=N_BITS)
        steps["search"] = measured(
            [sys.executable, "-c", search, str(run / "codes.npy"), str(data / "embeddings.npy")], env
        )
        steps["export"] = measured([*py, "export", run.name, "--out", str(work / "export")], env)
        steps["map cache (UMAP of a sample, the rest placed)"] = measured([sys.executable, "-c", PROJECTION], env)
        steps["pages (AppTest)"] = measured([sys.executable, "-c", PAGES], dict(env, SPARSEBIN_NO_WORKER="1"))
        codes_bytes = (run / "codes.npy").stat().st_size
        search_figures = json.loads(steps["search"]["stdout"].strip().splitlines()[-1])
        pages = json.loads(steps["pages (AppTest)"]["stdout"].strip().splitlines()[-1])
        return {
            "rows": rows,
            "file_bytes": file_bytes,
            "codes_bytes": codes_bytes,
            "steps": steps,
            "search": search_figures,
            "pages": pages,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mib(value) -> str:
    return "?" if value is None else f"{value / 2**20:.0f}"


def table(results: list[dict]) -> str:
    lines = [
        "| rows | step | wall s | peak RSS MiB | peak RssAnon MiB | growth per 10x (wall, RssAnon) |",
        "|---|---|---|---|---|---|",
    ]
    previous = {}
    for result in results:
        for name, step in result["steps"].items():
            growth = ""
            if name in previous:
                old = previous[name]
                factor = np.log10(result["rows"] / old[0])
                growth = f"{(step['wall_s'] / old[1]['wall_s']) ** (1 / factor):.1f}x, "
                growth += f"{(step['anon'] / old[1]['anon']) ** (1 / factor):.1f}x"
            lines.append(
                f"| {result['rows']:,} | {name} | {step['wall_s']:.1f} | {mib(step['rss'])} | "
                f"{mib(step['anon'])} | {growth} |"
            )
            previous[name] = (result["rows"], step)
    lines += [
        "",
        "| rows | CodeIndex method | Hamming ms/query | Jaccard ms/query | faiss IndexBinaryFlat ms/query |"
        " faiss IndexFlatIP ms/query | Hamming speed-up over IndexBinaryFlat |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if "search" in result:
            s = result["search"]
            lines.append(
                f"| {result['rows']:,} | {s['method']} | {s['hamming_ms_per_query']:.2f} | "
                f"{s['jaccard_ms_per_query']:.2f} | "
                f"{s['faiss_binary_ms_per_query']:.2f} | {s['faiss_ip_ms_per_query']:.2f} | "
                f"{s['faiss_binary_ms_per_query'] / s['hamming_ms_per_query']:.1f}x |"
            )
    lines += [
        "",
        "| rows | page (AppTest) | first render s (fills its caches) | render s, caches built | within 5 s |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        for page, times in result.get("pages", {}).items():
            if isinstance(times, list):
                ok = "yes" if times[1] <= 5 else "no"
                lines.append(f"| {result['rows']:,} | {page} | {times[0]:.2f} | {times[1]:.2f} | {ok} |")
    lines += [
        "",
        "| rows | embeddings file MiB | codes MiB | evaluation peak RSS MiB | target 1.5 x (file + codes) MiB |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        if "codes_bytes" in result:
            ev = result["steps"]["evaluation (eval)"]
            limit = 1.5 * (result["file_bytes"] + result["codes_bytes"])
            lines.append(
                f"| {result['rows']:,} | {mib(result['file_bytes'])} | {mib(result['codes_bytes'])} | "
                f"{mib(ev['rss'])} (RssAnon {mib(ev['anon'])}) | {mib(limit)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--skip-train-above",
        type=int,
        default=None,
        help="for sizes above this, run the import only (say so in the table)",
    )
    args = parser.parse_args()
    results = []
    for rows in args.sizes:
        skip = args.skip_train_above is not None and rows > args.skip_train_above
        results.append(one_size(rows, args.dim, skip))
        print(f"{rows:,} rows done", file=sys.stderr, flush=True)
    print(f"{args.dim}-d float32 rows, preset recommended at N={N_BITS}, K={K}, {QUERIES} queries, top 10\n")
    print(table(results))
    for result in results:
        if result.get("pages", {}).get("map: caption"):
            print(f"\nMap at {result['rows']:,} rows says: {result['pages']['map: caption']}")
    (ROOT / "benchmarks" / "last_scale.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
