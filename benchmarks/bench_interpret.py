"""Interpretation and code-search timings on the built-in data, with a short training run.

    python benchmarks/bench_interpret.py                      # hpo + icd10cm, train N=4096 K=32
    python benchmarks/bench_interpret.py --datasets hpo --epochs 1
    python benchmarks/bench_interpret.py --run-folder /tmp/run  # reuse a finished run on the same data
    python benchmarks/bench_interpret.py --synthetic --n-bits 8192  # 117k planted codes, no training

The synthetic codes are random (K bits a row, bits of unequal popularity) on
random embeddings: their timings are the page's and the search's at full
scale, their recall means nothing.

Reports, as JSON: the time for one bit profile, one concept view and the whole
bit table (cold: first call on a fresh RunContext, which builds the inverted
index and the ontology closure; warm: again); Hamming and Jaccard top-10 search
for about 1000 queries over all codes beside exact float32 cosine search on the
same queries (numpy matmul + argpartition, and faiss IndexFlatIP; each code and
faiss search the best of 3 timings, so every one runs with warm caches); faiss
IndexBinaryFlat on the same codes and on ITQ codes, IndexPQ and IndexHNSWFlat on the
same queries, each with its recall@10 beside its time; recall@10
of the codes beside the sign baseline, at the codes' bitmap size and at their
index-list size (the sign baseline gives at most one bit per dimension, so it
cannot reach the bitmap size of N = 4096).
The training is a few epochs only: the run is not converged, and its active
count says how far it got.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from sparsebin.config import TrainConfig  # noqa: E402
from sparsebin.experiment import run_experiment  # noqa: E402
from sparsebin.files import BIT_CHUNK_ROWS  # noqa: E402
from sparsebin.interpret.bits import RunContext, bit_profile, bit_table, concept_view, rank_bits  # noqa: E402
from sparsebin.metrics import sign_codes  # noqa: E402
from sparsebin.model import BinaryAutoencoder, ModelSpec  # noqa: E402
from sparsebin.search.codes import CodeIndex, active_positions, bytes_per_vector, pack_bits, recall_at_k, sample_queries  # noqa: E402

REPEATS = 3  # each code search and faiss search is timed this many times, the best kept
PQ_BYTES = 48  # faiss IndexPQ's sub-quantisers: 48 bytes a vector, the size the README compares codes at
HNSW_M, HNSW_EF_SEARCH = 32, 64  # faiss IndexHNSWFlat: links per node, candidates kept while searching


def timed(function, *args, **kwargs) -> tuple[object, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def best_of(repeats: int, function, *args, **kwargs) -> tuple[object, float]:
    """The result and the shortest time of `repeats` calls: every search is timed alike, caches warm."""
    runs = [timed(function, *args, **kwargs) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def load_combined(names: list[str]) -> SimpleNamespace:
    """The datasets stacked in the given order, as a Dataset-like object."""
    from sparsebin.datasets import load_dataset

    datasets = [load_dataset(name) for name in names]
    embeddings = np.concatenate([np.asarray(dataset.embeddings, dtype=np.float32) for dataset in datasets])
    concepts = pd.concat([dataset.concepts for dataset in datasets], ignore_index=True)
    return SimpleNamespace(name="+".join(names), embeddings=embeddings, concepts=concepts, meta={})


def synthetic_context(n_rows: int, n_bits: int, k: int, dim: int = 384, seed: int = 0) -> RunContext:
    """Planted sparse codes on a random tree of concepts: the interactive-page scale without training."""
    rng = np.random.default_rng(seed)
    parents = [[]] + [[f"c{rng.integers(0, max(1, row // 4))}"] for row in range(1, n_rows)]
    depth = np.zeros(n_rows, dtype=int)
    for row in range(1, n_rows):
        depth[row] = depth[int(parents[row][0][1:])] + 1
    concepts = pd.DataFrame(
        {
            "id": [f"c{row}" for row in range(n_rows)],
            "name": [f"concept {row}" for row in range(n_rows)],
            "source": "synthetic",
            "category": [f"branch {row % 20}" for row in range(n_rows)],
            "depth": depth,
            "parents": parents,
        }
    )
    popularity = rng.dirichlet(np.ones(n_bits))  # bits fire at different rates, as trained ones do
    packed = []
    for start in range(0, n_rows, BIT_CHUNK_ROWS):
        bits = np.zeros((min(BIT_CHUNK_ROWS, n_rows - start), n_bits), dtype=np.uint8)
        np.put_along_axis(bits, rng.choice(n_bits, size=(len(bits), k), p=popularity), 1, axis=1)
        packed.append(pack_bits(bits))
    embeddings = rng.standard_normal((n_rows, dim)).astype(np.float32)
    model = BinaryAutoencoder(ModelSpec(dim, n_bits, k)).eval()
    config = TrainConfig(n_bits=n_bits, k=k)
    return RunContext("synthetic", config, model, np.concatenate(packed), concepts, embeddings, n_bits)


def bench_interpretation(ctx: RunContext) -> dict:
    """Times of the page calls; the cached pieces (inverted index, ontology closure) are timed apart."""
    result = {}
    _, result["cache_build_s"] = timed(lambda: (ctx.by_bit, ctx.categories, ctx.ancestors, ctx.row_norms))
    profile_bit = int(np.argsort(ctx.bit_counts, kind="stable")[len(ctx.bit_counts) // 2])  # a median-firing bit
    concept_id = str(ctx.concepts["id"].iloc[len(ctx.concepts) // 2])
    _, result["bit_profile_s"] = timed(bit_profile, ctx, profile_bit)
    _, result["concept_view_first_s"] = timed(concept_view, ctx, concept_id)  # builds the code index
    _, result["concept_view_s"] = timed(concept_view, ctx, concept_id, metric="hamming")
    table, result["bit_table_s"] = timed(bit_table, ctx)
    _, result["bit_profile_after_table_s"] = timed(bit_profile, ctx, profile_bit)
    alive = table[table["n_active"] > 0]
    ranked = rank_bits(ctx)
    result |= {
        "n_rows": len(ctx.concepts),
        "n_bits": ctx.n_bits,
        "active_mean": float(ctx.active_counts.mean()),
        "alive_bits": int(len(alive)),
        "median_coherence": float(alive["coherence"].median()),
        "cleanest_bits": ranked.head(5)[["bit", "n_active", "label", "ancestor_name", "coherence"]].to_dict("records"),
        "muddled_bits": ranked.tail(3)[["bit", "n_active", "label", "coherence"]].to_dict("records"),
    }
    return result


def dense_search(unit: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Exact cosine top-k with numpy: normalised float32 rows, one matmul + argpartition per query block."""
    found = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        rows = queries[start : start + block]
        sims = unit[rows] @ unit.T  # (B, M)
        sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        found[start : start + len(rows)] = np.take_along_axis(top, order, axis=1)
    return found


def bench_search(ctx: RunContext, unit: np.ndarray, n_queries: int, k: int = 10) -> dict:
    queries = sample_queries(len(ctx.codes), n_queries, seed=0)
    codes = np.asarray(ctx.codes)
    index, build_s = timed(CodeIndex, codes, ctx.n_bits)
    _, postings_s = timed(lambda: index.postings)
    _, first_s = timed(index.search, codes[queries[:1]], k)  # loads (or compiles) the numba kernel
    truth, dense_s = timed(dense_search, unit, queries, k)
    result = {
        "n_queries": int(len(queries)),
        "code_index_build_s": build_s,
        "posting_lists_build_s": postings_s,
        "first_search_s": first_s,
        "postings_per_query": postings_per_query(index, codes[queries]),
        "dense_cosine_search_s": dense_s,
    }
    for metric in ("hamming", "jaccard"):
        (found, _), seconds = best_of(REPEATS, index.search, codes[queries], k, metric=metric, exclude=queries)
        result[f"code_{metric}_search_s"] = seconds
        result[f"speedup_{metric}_vs_dense"] = dense_s / seconds
        result[f"recall_at_{k}_{metric}"] = recall_at_k(found, truth)
    result["bytes_per_vector_bitmap"] = bytes_per_vector(ctx.n_bits)
    index_bits = float(index.sizes.mean()) * math.ceil(math.log2(ctx.n_bits))
    result["bytes_per_vector_index_list"] = index_bits / 8
    result["bytes_per_vector_float32"] = unit.shape[1] * 4
    result |= bench_faiss(codes, unit, queries, ctx.n_bits, k, truth)
    if "faiss_flat_ip_cosine_search_s" in result:
        for metric in ("hamming", "jaccard"):
            faster = result["faiss_flat_ip_cosine_search_s"] / result[f"code_{metric}_search_s"]
            result[f"speedup_{metric}_vs_faiss_flat_ip"] = faster
    for label, n_bits in (("index_list", min(unit.shape[1], round(index_bits))), ("max", unit.shape[1])):
        sign = sign_codes(unit, n_bits=n_bits)
        sign_index = CodeIndex(sign, n_bits)
        sign_index.search(sign[queries[:1]], k)  # loads (or compiles) its kernel outside the timing
        (found, _), seconds = timed(sign_index.search, sign[queries], k, metric="hamming", exclude=queries)
        result[f"sign_{label}_bits"] = n_bits
        result[f"sign_{label}_bytes_per_vector"] = bytes_per_vector(n_bits)
        result[f"sign_{label}_recall_at_{k}"] = recall_at_k(found, truth)
        result[f"sign_{label}_search_s"] = seconds
    return result


def postings_per_query(index: CodeIndex, queries: np.ndarray) -> float:
    """Mean length of the posting lists a query walks, the search's cost."""
    indptr, _, _ = index.postings
    _, bits = active_positions(queries)
    return float(np.diff(indptr)[bits].sum() / len(queries))


def bench_faiss(
    codes: np.ndarray, unit: np.ndarray, queries: np.ndarray, n_bits: int, k: int, truth: np.ndarray
) -> dict:
    """faiss as an outside reference, each search's recall@k beside its time (a speed-up is read at its
    recall): IndexBinaryFlat on the same packed codes, unchanged, and on ITQ codes of the dense rows (one bit
    per dimension, fitted on every row: a speed bench, not a held-out measurement); IndexFlatIP on the same
    normalised float32 vectors (exact cosine through BLAS and a heap); IndexPQ (PQ_BYTES x 8, asymmetric)
    and IndexHNSWFlat (HNSW_M links, efSearch HNSW_EF_SEARCH), their build times apart."""
    try:
        import faiss
    except ImportError:
        return {}
    from sparsebin.search.yardsticks import fit_itq, without_self

    def searched(name: str, index, rows: np.ndarray) -> dict:
        (_, ids), seconds = best_of(REPEATS, index.search, rows, k + 1)
        found = without_self(ids, queries, k)
        return {f"faiss_{name}_search_s": seconds, f"faiss_{name}_recall_at_{k}": recall_at_k(found, truth)}

    result = {}
    binary = faiss.IndexBinaryFlat(n_bits)
    binary.add(codes)
    result |= searched("binary_flat_hamming", binary, codes[queries])
    dim = unit.shape[1]
    itq, itq_fit_s = timed(fit_itq, unit, min(dim, 8 * (dim // 8)))
    itq_codes = itq.codes(unit)
    itq_index = faiss.IndexBinaryFlat(8 * itq_codes.shape[1])
    itq_index.add(itq_codes)
    result |= {"itq_bits": 8 * itq_codes.shape[1], "itq_fit_s": itq_fit_s}
    result |= searched("binary_flat_itq", itq_index, itq_codes[queries])
    flat = faiss.IndexFlatIP(dim)
    flat.add(unit)
    result |= searched("flat_ip_cosine", flat, unit[queries])
    if dim % PQ_BYTES == 0 and len(unit) >= 256:
        pq = faiss.IndexPQ(dim, PQ_BYTES, 8)
        pq.pq.cp.seed = 0
        _, result["faiss_pq_train_s"] = timed(pq.train, unit)
        pq.add(unit)
        result |= {"pq_bytes": PQ_BYTES} | searched("pq_asymmetric", pq, unit[queries])
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    _, result["faiss_hnsw_build_s"] = timed(hnsw.add, unit)
    hnsw.hnsw.efSearch = HNSW_EF_SEARCH
    result |= searched("hnsw_flat", hnsw, unit[queries])
    return result


def normalised(embeddings: np.ndarray) -> np.ndarray:
    vectors = np.asarray(embeddings, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["hpo", "icd10cm"])
    parser.add_argument("--n-bits", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--run-folder", type=Path, help="a finished run on the same datasets; skips training")
    parser.add_argument("--synthetic", action="store_true", help="planted codes on 117k random-tree concepts")
    parser.add_argument("--rows", type=int, default=117_000, help="rows of the synthetic data")
    args = parser.parse_args()

    report: dict = {"args": {key: str(value) for key, value in vars(args).items()}}
    if args.synthetic:
        ctx = synthetic_context(args.rows, args.n_bits, args.k)
        report["interpret"] = bench_interpretation(ctx)
        report["search"] = bench_search(ctx, normalised(ctx.embeddings), args.queries)  # timings only: no recall
        print(json.dumps(report, indent=2, default=str))
        return
    dataset = load_combined(args.datasets)
    folder = args.run_folder or Path(tempfile.mkdtemp(prefix="bench_interpret_"))
    if args.run_folder is None:
        config = TrainConfig(
            n_bits=args.n_bits, k=args.k, epochs=args.epochs, batch_size=args.batch_size, device="cpu", log_every=100
        )
        result, seconds = timed(run_experiment, dataset.embeddings, config, folder, n_queries=200)
        report["training"] = {
            "folder": str(folder),
            "seconds": seconds,
            "epochs": args.epochs,
            "last_event": result.history[-1] if result.history else None,
        }
    ctx = RunContext.load(folder, dataset)
    report["interpret"] = bench_interpretation(ctx)
    report["search"] = bench_search(ctx, normalised(dataset.embeddings), args.queries)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
