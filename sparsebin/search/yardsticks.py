"""Yardsticks: the baselines with no training seed that every run is read beside.

Each is fitted on the training part of a data set's split and searched with
the runs' own measurement (`sparsebin.experiment.measure_run`): the rows L2
normalised, the queries the validation rows `sample_queries(len(rows),
n_queries, split_seed)` picks, each searched against every row but itself, the
truth its dense cosine top 10, recall@10 the share of it found (Hamming and
Jaccard tie-aware, `metrics.tie_aware_recall`). Byte budgets are
`BYTE_BUDGETS` where a code can spend them.

Binary codes, b = 8 x bytes bits, searched by Hamming and Jaccard (`CodeIndex`) and
asymmetrically (the float query against the bits read back, `sign_decoding`):
- sign-PCA: 1[(x - mean) V_b > 0], V_b the leading b principal axes
  (`metrics.sign_codes`, at most D bits);
- ITQ (Gong & Lazebnik 2011): V = (x - mean) V_b, then the rotation R minimising
  the quantisation loss |B - V R|^2 / n over B in {-1, 1}, alternating B = sgn(V R)
  and R = U W^T from the SVD U S W^T of V^T B (each step can only lower the
  loss), `ITQ_ITERATIONS` times from a seeded random rotation; bits 1[V R > 0];
- LSH (Charikar's SimHash): 1[x H > 0] for b seeded Gaussian hyperplanes H
  through the origin, so the bits estimate the angle between the rows themselves.

Float-query codes (faiss, asymmetric distance: the float query against each stored code read back):
- PQ m x 8 (`IndexPQ`, m bytes) and OPQ (`OPQm,PQmx8`, a learned rotation first), for m dividing D;
- scalar quantisation int8 and fp16 (`IndexScalarQuantizer`, D and 2 D bytes); float32 (exact) for scale.

Two stages, as embedding libraries ship them: the top R (`RERANK_DEPTHS`) of a
binary code by Hamming, rescored by the float query's dot product with the
int8 (decoded) or float32 rows; the first stage's bytes are held in memory, the
second's are read from disk only for the R candidates and named apart.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from sparsebin.errors import DataError
from sparsebin.files import write_atomic
from sparsebin.health import bit_health
from sparsebin.interpret.scores import interpretability, ontology_indexes
from sparsebin.metrics import normalized_rows, principal_axes, sign_codes, tie_aware_recall, unit_rows
from sparsebin.search.codes import (
    CodeIndex,
    LinearDecoding,
    dense_neighbours,
    pack_bits,
    recall_at_k,
    sample_queries,
    sign_decoding,
)
from sparsebin.train import split_rows

BYTE_BUDGETS = (16, 24, 32, 48, 64, 96)
RERANK_DEPTHS = (40, 100)
ITQ_ITERATIONS = 50  # Gong & Lazebnik report the loss flat after ~50
K = 10  # recall@10, as the runs
FOLDER = "yardsticks"  # beside the data set: data/<name>/yardsticks/<setup key>/
SEARCHES = ("hamming", "jaccard", "asymmetric", "two-stage")
# The frontier's columns: one row per code and search.
COLUMNS = [
    "code",  # the family: sign-PCA, ITQ, LSH, PQ, OPQ, SQ int8, SQ fp16, float32, two-stage, or a run's name
    "setting",  # what a reader needs to rebuild it ("ITQ, 256 bits")
    "search",  # hamming, jaccard, asymmetric (float query to code) or two-stage
    "bytes",  # bytes per vector held in memory and searched
    "second_stage_bytes",  # bytes per vector read only to rescore the candidates (0: none)
    "storage",  # the two as a reader sees them: "48 B" or "48 B in memory + 384 B on disk"
    "recall_at_10",  # held-out queries against every row, dense cosine top 10 as truth
    "ms_per_query",  # wall time of the search of all queries over their count (one timing)
    "n_queries",
    "n_index_rows",
]


@dataclass(frozen=True)
class Setup:
    """What makes a measurement the runs' own: their split, their query sample, and the baselines' seed."""

    split_seed: int = 0  # the runs' split seed: held-out rows and queries
    val_fraction: float = 0.1  # share of rows held out, as the runs'
    n_queries: int = 500  # queries sampled from the held-out part, as the runs'
    seed: int = 0  # the baselines' own: ITQ's first rotation, LSH's hyperplanes, faiss's k-means
    budgets: tuple[int, ...] = BYTE_BUDGETS  # bytes per vector to measure each code at
    rerank_depths: tuple[int, ...] = RERANK_DEPTHS

    @property
    def key(self) -> str:
        """The cache folder's name: one measurement per split, query count and budgets."""
        budgets = "-".join(map(str, self.budgets))
        depths = "-".join(map(str, self.rerank_depths))
        return (
            f"split{self.split_seed}-val{self.val_fraction:g}-q{self.n_queries}-seed{self.seed}"
            f"-bytes{budgets}-rerank{depths}"
        )


@dataclass(frozen=True, eq=False)
class Yardsticks:
    """The measured baselines of one data set and setup."""

    frontier: pd.DataFrame  # COLUMNS, one row per code and search
    bits: pd.DataFrame  # one row per binary code: setting, bit health and interpretability figures
    itq_losses: dict[int, list[float]]  # ITQ bits -> quantisation loss per iteration, the first before any
    meta: dict = field(default_factory=dict)  # what it was measured on (checksum, setup, when)


@dataclass(frozen=True, eq=False)
class Bench:
    """The runs' measurement of one data set: unit rows, split, queries and their true neighbours."""

    vectors: np.ndarray  # (M, D) float32, L2-normalised
    train: np.ndarray  # row numbers of the training part (what the baselines are fitted on)
    validation: np.ndarray
    queries: np.ndarray  # (Q,) row numbers, from the validation part
    truth: np.ndarray  # (Q, K) dense cosine top-K of each query, itself left out


def make_bench(embeddings: np.ndarray, setup: Setup) -> Bench:
    """The split, queries and truth `measure_run` gives a run with `setup`'s split seed and query count."""
    split = split_rows(len(embeddings), setup.val_fraction, setup.split_seed)
    vectors = normalized_rows(embeddings, np.arange(len(embeddings)), True)
    rows = split.validation if len(split.validation) else split.train
    queries = rows[sample_queries(len(rows), setup.n_queries, setup.split_seed)].astype(np.int64)
    truth, _ = dense_neighbours(unit_rows(vectors), queries, K)
    return Bench(vectors, split.train, split.validation, queries, truth)


@dataclass(frozen=True, eq=False)
class ITQ:
    """A fitted ITQ code: x -> 1[(x - mean) axes rotation > 0]."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (D, b) leading principal axes of the training rows
    rotation: np.ndarray  # (b, b) orthogonal
    losses: list[float]  # |B - V R|^2 / n per iteration, the first for the starting rotation

    @property
    def projection(self) -> np.ndarray:
        """(D, b): the rows' map to the rotated components."""
        return (self.axes @ self.rotation).astype(np.float32)

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """(M, b / 8) packed bits."""
        return pack_bits((vectors - self.mean) @ self.projection > 0)


def fit_itq(train_vectors: np.ndarray, n_bits: int, iterations: int = ITQ_ITERATIONS, seed: int = 0) -> ITQ:
    """ITQ on `train_vectors` (n, D): PCA to `n_bits` dimensions, then `iterations` alternating steps."""
    if not 1 <= n_bits <= train_vectors.shape[1]:
        raise ValueError(f"ITQ keeps at most one bit per dimension: n_bits must lie in 1..{train_vectors.shape[1]}.")
    mean, axes = principal_axes(train_vectors, n_bits)
    projected = ((train_vectors - mean) @ axes).astype(np.float64)  # V, (n, b)
    gaussian = np.random.default_rng(seed).standard_normal((n_bits, n_bits))
    rotation, _ = np.linalg.qr(gaussian)  # a random orthogonal start
    losses = []
    for _ in range(iterations + 1):
        rotated = projected @ rotation
        signs = np.where(rotated > 0, 1.0, -1.0)  # B = sgn(V R)
        losses.append(float(((signs - rotated) ** 2).sum() / len(projected)))
        if len(losses) > iterations:
            break
        left, _, right = np.linalg.svd(projected.T @ signs)  # V^T B = U S W^T
        rotation = left @ right  # argmin over orthogonal R of |B - V R|
    return ITQ(mean, axes, rotation.astype(np.float32), losses)


def lsh_planes(dim: int, n_bits: int, seed: int = 0) -> np.ndarray:
    """(D, b) Gaussian hyperplanes through the origin, seeded."""
    return np.random.default_rng(seed).standard_normal((dim, n_bits)).astype(np.float32)


def binary_budgets(dim: int, budgets: tuple[int, ...]) -> list[int]:
    """The byte budgets a code of at most one bit per dimension can spend."""
    return [size for size in budgets if 8 * size <= dim]


def pq_budgets(dim: int, budgets: tuple[int, ...]) -> list[int]:
    """The byte budgets PQ can spend: m sub-vectors of one byte each, m dividing D."""
    return [size for size in budgets if size <= dim and dim % size == 0]


def storage_text(memory: float, disk: float) -> str:
    return f"{memory:g} B" if not disk else f"{memory:g} B in memory + {disk:g} B on disk"


def row(code, setting, search, memory, recall, seconds, bench: Bench, disk: float = 0.0) -> dict:
    return {
        "code": code,
        "setting": setting,
        "search": search,
        "bytes": float(memory),
        "second_stage_bytes": float(disk),
        "storage": storage_text(memory, disk),
        "recall_at_10": float(recall),
        "ms_per_query": 1000 * seconds / max(len(bench.queries), 1),
        "n_queries": len(bench.queries),
        "n_index_rows": len(bench.vectors),
    }


def binary_rows(code: str, setting: str, packed: np.ndarray, n_bits: int, decoding: LinearDecoding, bench: Bench):
    """Hamming, Jaccard (tie-aware) and asymmetric recall of one binary code, each timed as a top-K search."""
    index = CodeIndex(packed, n_bits)
    rows = []
    for metric in ("hamming", "jaccard"):
        index.search(packed[bench.queries[:1]], K, metric)  # loads (or compiles) the kernel outside the timing
        start = time.perf_counter()
        index.search(packed[bench.queries], K, metric, exclude=bench.queries)
        seconds = time.perf_counter() - start
        recall = tie_aware_recall(index, bench.queries, bench.truth, K, metric)
        rows.append(row(code, setting, metric, n_bits / 8, recall, seconds, bench))
    start = time.perf_counter()
    found, _ = index.search_asymmetric(bench.vectors[bench.queries], decoding, K, exclude=bench.queries)
    seconds = time.perf_counter() - start
    rows.append(row(code, setting, "asymmetric", n_bits / 8, recall_at_k(found, bench.truth), seconds, bench))
    return rows


def faiss_found(index, bench: Bench, k: int = K) -> tuple[np.ndarray, float]:
    """(found (Q, k), seconds): each query's k nearest rows but itself, by the index's own search."""
    start = time.perf_counter()
    _, ids = index.search(np.ascontiguousarray(bench.vectors[bench.queries]), k + 1)
    seconds = time.perf_counter() - start
    return without_self(ids, bench.queries, k), seconds


def without_self(ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) of (Q, k + 1) neighbour lists: the query's own row left out (else the last one)."""
    own = ids == queries[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), k)


PQ_CENTROIDS = 2**8  # m x 8 codes: each sub-quantiser's k-means needs at least this many training rows


def faiss_rows(bench: Bench, setup: Setup, say=lambda text: None) -> list[dict]:
    """PQ and OPQ at every budget they can spend, SQ int8 and fp16, and float32, searched by faiss. PQ and
    OPQ are left out (and `say` tells why) when the training part has fewer rows than a codebook's centroids."""
    dim = bench.vectors.shape[1]
    train = np.ascontiguousarray(bench.vectors[bench.train])
    indexes = []
    budgets = pq_budgets(dim, setup.budgets)
    if budgets and len(train) < PQ_CENTROIDS:
        say(
            f"PQ and OPQ left out: their 8-bit codebooks need at least {PQ_CENTROIDS} training rows, "
            f"this data set's training part has {len(train)}"
        )
        budgets = []
    for size in budgets:
        indexes.append(("PQ", f"PQ {size}x8", size, faiss.IndexPQ(dim, size, 8)))
        indexes.append(("OPQ", f"OPQ {size}x8", size, faiss.index_factory(dim, f"OPQ{size},PQ{size}x8")))
    indexes.append(
        ("SQ int8", "scalar quantiser int8", dim, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit))
    )
    indexes.append(
        ("SQ fp16", "scalar quantiser fp16", 2 * dim, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16))
    )
    indexes.append(("float32", "float32, exact", 4 * dim, faiss.IndexFlatIP(dim)))
    rows = []
    for code, setting, size, index in indexes:
        seed_faiss(index, setup.seed)
        index.train(train)
        index.add(np.ascontiguousarray(bench.vectors))
        found, seconds = faiss_found(index, bench)
        rows.append(row(code, setting, "asymmetric", size, recall_at_k(found, bench.truth), seconds, bench))
    return rows


def seed_faiss(index, seed: int) -> None:
    """Seed the k-means of a PQ (alone or after OPQ's rotation), so a measurement repeats exactly."""
    for part in faiss_parts(index):
        if isinstance(part, faiss.IndexPQ):
            part.pq.cp.seed = seed


def faiss_parts(index) -> list:
    """The index and, for an index_factory chain, its transform and inner index."""
    if isinstance(index, faiss.IndexPreTransform):
        return [faiss.downcast_VectorTransform(index.chain.at(0)), faiss.downcast_index(index.index)]
    return [index]


def int8_rows(bench: Bench) -> np.ndarray:
    """(M, D) the rows as int8 scalar quantisation stores them, read back (trained on the training part)."""
    dim = bench.vectors.shape[1]
    quantiser = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
    quantiser.train(np.ascontiguousarray(bench.vectors[bench.train]))
    return quantiser.sa_decode(quantiser.sa_encode(np.ascontiguousarray(bench.vectors)))


def two_stage_found(
    index: CodeIndex, packed: np.ndarray, rescore: np.ndarray, bench: Bench, depth: int
) -> tuple[np.ndarray, float]:
    """(found (Q, K), seconds): the top `depth` rows by Hamming, reordered by q . rescore[row]."""
    start = time.perf_counter()
    candidates, _ = index.search(packed[bench.queries], depth, "hamming", exclude=bench.queries)  # (Q, R)
    scores = np.einsum("qd,qrd->qr", bench.vectors[bench.queries], rescore[candidates])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    found = np.take_along_axis(candidates, order, axis=1)
    return found, time.perf_counter() - start


def two_stage_rows(codes: list[tuple[str, np.ndarray, int]], bench: Bench, setup: Setup) -> list[dict]:
    """Each first-stage code (setting, packed, bits) at each depth, rescored with int8 and float32 rows."""
    dim = bench.vectors.shape[1]
    rescorers = (("int8", int8_rows(bench), dim), ("float32", bench.vectors, 4 * dim))
    rows = []
    for setting, packed, n_bits in codes:
        index = CodeIndex(packed, n_bits)
        for depth in setup.rerank_depths:
            for name, rescore, disk in rescorers:
                found, seconds = two_stage_found(index, packed, rescore, bench, depth)
                described = f"{setting}, top {depth} by Hamming rescored with {name}"
                rows.append(
                    row(
                        "two-stage",
                        described,
                        "two-stage",
                        n_bits / 8,
                        recall_at_k(found, bench.truth),
                        seconds,
                        bench,
                        disk,
                    )
                )
    return rows


def bit_figures(setting: str, packed: np.ndarray, n_bits: int, bench: Bench, concepts, indexes) -> dict:
    """A binary baseline's bit health and interpretability, by the runs' own functions."""
    figures = {"setting": setting, "n_bits": n_bits} | bit_health(packed, n_bits, bench.validation)
    if concepts is not None:
        judged = interpretability(packed, n_bits, concepts, bench.train, bench.validation, indexes)
        figures |= judged.metrics()
    return figures


def measure_yardsticks(
    embeddings: np.ndarray, setup: Setup = Setup(), concepts: pd.DataFrame | None = None, say=lambda text: None
) -> Yardsticks:
    """Every baseline of the module docstring on `embeddings` (M, D), with the runs' split and queries.

    `concepts` (the data set's table, row for row) adds the interpretability
    figures of each binary code; without it only bit health is measured.
    """
    bench = make_bench(embeddings, setup)
    dim = bench.vectors.shape[1]
    train = bench.vectors[bench.train]
    indexes = ontology_indexes(concepts) if concepts is not None else None
    rows, bits, losses, first_stages = [], [], {}, []
    axes = principal_axes(train, dim)
    for size in binary_budgets(dim, setup.budgets):
        n_bits = 8 * size
        say(f"sign-PCA and ITQ at {size} B")
        packed = sign_codes(bench.vectors, n_bits=n_bits, axes=axes)
        setting = f"sign-PCA, {n_bits} bits"
        rows += binary_rows("sign-PCA", setting, packed, n_bits, sign_decoding(axes[1][:, :n_bits]), bench)
        bits.append(bit_figures(setting, packed, n_bits, bench, concepts, indexes))
        if size == max(binary_budgets(dim, setup.budgets)):
            first_stages.append((setting, packed, n_bits))
        itq = fit_itq(train, n_bits, seed=setup.seed)
        losses[n_bits] = itq.losses
        packed = itq.codes(bench.vectors)
        setting = f"ITQ, {n_bits} bits"
        rows += binary_rows("ITQ", setting, packed, n_bits, sign_decoding(itq.projection), bench)
        bits.append(bit_figures(setting, packed, n_bits, bench, concepts, indexes))
        first_stages.append((setting, packed, n_bits))
    for size in setup.budgets:
        n_bits = 8 * size
        say(f"LSH at {size} B")
        planes = lsh_planes(dim, n_bits, setup.seed)
        packed = pack_bits(bench.vectors @ planes > 0)
        setting = f"LSH, {n_bits} hyperplanes"
        rows += binary_rows(
            "LSH", setting, packed, n_bits, sign_decoding(planes / np.linalg.norm(planes, axis=0)), bench
        )
        bits.append(bit_figures(setting, packed, n_bits, bench, concepts, indexes))
    say("PQ, OPQ and scalar quantisation")
    rows += faiss_rows(bench, setup, say)
    say("two-stage search")
    rows += two_stage_rows(first_stages, bench, setup)
    return Yardsticks(pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(bits), losses)


# The cache: data/<name>/yardsticks/<Setup.key>/ holds frontier.csv, bits.csv and itq_losses.json, then
# meta.json, written last, so its presence marks a whole measurement.
FILES = ("frontier.csv", "bits.csv", "itq_losses.json", "meta.json")


def cache_folder(dataset_folder: Path, setup: Setup) -> Path:
    return Path(dataset_folder) / FOLDER / setup.key


def save_yardsticks(folder: Path, yardsticks: Yardsticks) -> None:
    """Each file written whole (atomically), meta.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "frontier.csv", yardsticks.frontier.to_csv(index=False).encode())
    write_atomic(folder / "bits.csv", yardsticks.bits.to_csv(index=False).encode())
    losses = {str(bits): values for bits, values in yardsticks.itq_losses.items()}
    write_atomic(folder / "itq_losses.json", json.dumps(losses).encode())
    write_atomic(folder / "meta.json", (json.dumps(yardsticks.meta, indent=2, sort_keys=True) + "\n").encode())


def load_yardsticks(folder: Path, checksum: str | None = None) -> Yardsticks | None:
    """The cached measurement in `folder`; None when there is none, or when it was measured on embeddings
    of another checksum (stale). A damaged one is refused with a DataError naming the file."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        return None
    meta = read_json(folder / "meta.json", folder)
    if not isinstance(meta, dict) or "checksum" not in meta:
        raise damaged(folder, "meta.json", "it holds no embeddings checksum")
    if checksum is not None and meta["checksum"] != checksum:
        return None
    frontier = read_csv(folder / "frontier.csv", folder)
    missing = [column for column in COLUMNS if column not in frontier.columns]
    if missing:
        raise damaged(folder, "frontier.csv", f"it lacks the column(s) {', '.join(missing)}")
    if frontier[["bytes", "recall_at_10"]].isna().any().any():
        raise damaged(folder, "frontier.csv", "a row has no bytes or no recall")
    bits = read_csv(folder / "bits.csv", folder)
    losses = read_json(folder / "itq_losses.json", folder)
    if not isinstance(losses, dict):
        raise damaged(folder, "itq_losses.json", "it is not a map of bit counts to losses")
    return Yardsticks(frontier, bits, {int(key): list(value) for key, value in losses.items()}, meta)


def damaged(folder: Path, name: str, why: str) -> DataError:
    return DataError(
        f"the yardsticks cached in {folder} are damaged ({name}: {why}); "
        "measure them again with `python -m sparsebin frontier DATA --rebuild`."
    )


def read_json(path: Path, folder: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise damaged(folder, path.name, "the file is missing") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise damaged(folder, path.name, "it is not readable JSON") from None


def read_csv(path: Path, folder: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise damaged(folder, path.name, "the file is missing") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
        raise damaged(folder, path.name, "it is not a readable CSV") from None


def embeddings_checksum(dataset) -> str:
    """The data set's embeddings checksum as its meta.json records it, else the file's own sha256."""
    from sparsebin.datasets.store import EMBEDDINGS_FILE, file_sha256

    recorded = (dataset.meta.get("checksum") or {}).get(EMBEDDINGS_FILE)
    return recorded or f"sha256:{file_sha256(Path(dataset.path) / EMBEDDINGS_FILE)}"


def dataset_yardsticks(dataset, setup: Setup = Setup(), *, rebuild: bool = False, say=lambda text: None) -> Yardsticks:
    """The yardsticks of a loaded data set (`datasets.store.load_dataset`): from its cache when that was
    measured on these embeddings with this setup, else measured now and cached (`rebuild` measures anew)."""
    folder = cache_folder(dataset.path, setup)
    checksum = embeddings_checksum(dataset)
    cached = None if rebuild else load_yardsticks(folder, checksum)
    if cached is not None:
        return cached
    say(f"measuring the yardsticks of {dataset.name} ({len(dataset.embeddings):,} rows)")
    start = time.perf_counter()
    measured = measure_yardsticks(dataset.embeddings, setup, dataset.concepts, say)
    meta = {
        "dataset": dataset.name,
        "checksum": checksum,
        "setup": asdict(setup),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - start, 1),
        "faiss": faiss.__version__,
    }
    result = Yardsticks(measured.frontier, measured.bits, measured.itq_losses, meta)
    save_yardsticks(folder, result)
    return result


def cached_yardsticks(dataset, setup: Setup = Setup()) -> Yardsticks | None:
    """The cached yardsticks of a data set for `setup`, None when not measured (or stale): never measures."""
    return load_yardsticks(cache_folder(dataset.path, setup), embeddings_checksum(dataset))


def measured_alike(dataset, setup: Setup = Setup()) -> Yardsticks | None:
    """The newest cached yardsticks of a data set measured with `setup`'s split, queries and seed, at any byte
    budgets and re-ranking depths (`frontier --budgets` measures others); None when there are none."""
    exact = cached_yardsticks(dataset, setup)
    if exact is not None:
        return exact
    checksum, wanted = embeddings_checksum(dataset), asdict(setup)
    same = ("split_seed", "val_fraction", "n_queries", "seed")
    found = []
    for meta_path in sorted((Path(dataset.path) / FOLDER).glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged cache of another setup: refused when it is asked for by its own setup
        measured = meta.get("setup") if isinstance(meta, dict) else None
        if isinstance(measured, dict) and meta.get("checksum") == checksum:
            if all(measured.get(name) == wanted[name] for name in same):
                found.append((str(meta.get("measured_at", "")), meta_path.parent))
    return load_yardsticks(max(found)[1], checksum) if found else None


def best_at_most(frontier: pd.DataFrame, size: float, searches: tuple[str, ...]) -> pd.Series | None:
    """The baseline row of highest recall among `searches` at no more than `size` bytes, None if none."""
    if frontier is None or not len(frontier) or not math.isfinite(size):
        return None
    fits = frontier[frontier["search"].isin(searches) & (frontier["bytes"] <= size + 1e-9)]
    if not len(fits):
        return None
    return fits.sort_values(["recall_at_10", "bytes"], ascending=[False, True]).iloc[0]
