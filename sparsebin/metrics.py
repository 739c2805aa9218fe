"""The evaluation metrics of METHOD.md, computed in chunks.

All metrics use the hard bits h = 1[u > 0] unless the name says otherwise, and
every reconstruction metric is the cosine distance whatever the training loss,
so runs compare. No (M, N) float matrix is ever held: the model is applied to
`chunk_rows` rows at a time and the codes are kept packed (N / 8 bytes a row).
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sparsebin.devices import free_memory
from sparsebin.files import CHUNK_ROWS, float_rows, is_mapped, release_pages
from sparsebin.losses import cosine_distance, mask_from_indices, topk_indices
from sparsebin.model import BinaryAutoencoder
from sparsebin.search import elias_fano
from sparsebin.search.codes import (
    CodeIndex,
    LinearDecoding,
    bytes_per_vector,
    dense_neighbours,
    pack_bits,
    recall_at_k,
    sample_queries,
)

LOG10_BINS = np.arange(-7.0, 0.25, 0.25)  # firing-frequency histogram edges, 1e-7 .. 1
EVALUATION_BUDGET = 256 * 2**20  # bytes one evaluation chunk may hold alive at once
# Marks recall_at_10_asymmetric as measured by cosine with the decoded code; runs evaluated before the
# cosine (by the plain sum q . W_d b) lack it, and their asymmetric recall is not compared with new ones.
ASYMMETRIC_SCORE = "cosine"
TIES = "tie-aware: rows tied at the k-th code distance count by their chance under a random order"
# A part's headline metrics, in the order they are shown: the `train` and `eval` summaries print them,
# and the runs table keeps each finished run's values of them.
HEADLINE_METRICS = (
    "recon_loss",
    "fixed_topk_recon_loss",
    "soft_recon_loss",
    "active_mean",
    "active_std",
    "active_min",
    "active_max",
    "topk_overlap",
    "alignment_cosine",
    "dead_bits",
    "dense_bits",
    "bits_index_list",
    "compression_index_list",
    "bits_elias_fano",
    "recall_at_10_hamming",
    "recall_at_10_jaccard",
    "recall_at_10_asymmetric",
)


@dataclass
class Evaluation:
    metrics: dict  # JSON-ready
    packed: np.ndarray  # (M, N/8) uint8 hard codes of the evaluated rows, in their order


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def normalized_rows(embeddings: np.ndarray, rows: np.ndarray, normalize: bool) -> np.ndarray:
    """The chosen rows as float32, L2-normalised when the run was trained so."""
    x = np.asarray(embeddings[rows], dtype=np.float32)
    return unit_rows(x) if normalize else x


class RowView:
    """Rows of an (M, D) array (a memory map, say) as float32, L2-normalised when `normalize`, read on demand.

    Indexing it (`view[a:b]`, `view[rows]`, `view[rows, a:b]`) reads only those
    rows and gives exactly what `unit_rows` gives for them (each row divided by
    its own float32 length), so evaluation can walk a data set in chunks
    without a whole float copy. `rows` restricts the view to those rows, in
    their order (a part of the split). The rows' lengths are computed once, in
    chunks: M floats.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, embeddings, normalize: bool, rows: np.ndarray | None = None, *, lengths=None, chunk_rows=None):
        self.embeddings = embeddings
        self.normalize = bool(normalize)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.chunk_rows = float_rows(embeddings.shape[1]) if chunk_rows is None else chunk_rows
        if self.normalize and lengths is None:
            lengths = np.empty(len(embeddings), dtype=np.float32)
            for start in range(0, len(embeddings), self.chunk_rows):
                block = np.asarray(embeddings[start : start + self.chunk_rows], dtype=np.float32)
                lengths[start : start + len(block)] = np.maximum(np.linalg.norm(block, axis=1), 1e-12)
                release_pages(embeddings)
        self.lengths = lengths  # (M,) float32 of every row of `embeddings`, or None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), int(self.embeddings.shape[1]))

    def __len__(self) -> int:
        return len(self.embeddings) if self.rows is None else len(self.rows)

    def subset(self, rows: np.ndarray) -> "RowView":
        """The view of these of its rows, sharing the lengths."""
        rows = np.asarray(rows, dtype=np.int64)
        chosen = rows if self.rows is None else self.rows[rows]
        return RowView(self.embeddings, self.normalize, chosen, lengths=self.lengths, chunk_rows=self.chunk_rows)

    def __getitem__(self, key) -> np.ndarray:
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows]), columns][0]
        if self.rows is not None:
            rows = self.rows[rows]
        elif isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self.embeddings)))
        rows = np.asarray(rows, dtype=np.int64)
        whole = isinstance(columns, slice) and columns == slice(None)
        width = self.embeddings.shape[1] if whole else len(np.arange(self.embeddings.shape[1])[columns])
        x = np.empty((len(rows), width), dtype=np.float32)
        for places, chosen in file_blocks(rows, self.chunk_rows, mapped=is_mapped(self.embeddings)):
            x[places] = self.embeddings[chosen] if whole else self.embeddings[chosen, columns]
            release_pages(self.embeddings)  # copied out: the map's pages it came from need not stay resident
        if self.normalize:
            x /= self.lengths[rows][:, None]
        return x

    def __array__(self, dtype=None, copy=None):  # a whole copy, for callers that need one
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def file_blocks(rows: np.ndarray, block_rows: int, mapped: bool) -> Iterator[tuple[np.ndarray | slice, np.ndarray]]:
    """(places, rows) pairs that read `rows` a block at a time: `rows` at `places` of the result.

    From a memory map, each block is the wanted rows inside one span of `block_rows` consecutive rows of
    the file, in file order: scattered rows read together would fault in (and read around) pages all over
    the file, and a million-row pass held the whole file resident. From memory, `block_rows` of the rows
    at a time, in their order.
    """
    if not mapped:
        for start in range(0, len(rows), block_rows):
            yield slice(start, start + block_rows), rows[start : start + block_rows]
        return
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    if not len(ordered):
        return
    edges = np.arange(int(ordered[0]) // block_rows * block_rows, int(ordered[-1]) + block_rows + 1, block_rows)
    bounds = np.searchsorted(ordered, edges)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop > start:
            yield order[start:stop], ordered[start:stop]


def evaluation_chunk_rows(n_bits: int, d_in: int, free_bytes: int | None = None) -> int:
    """Rows per evaluation chunk: what fits EVALUATION_BUDGET, and a quarter of the free memory.

    A chunk holds about five (C, N) float32 tensors (logits, soft code, mask,
    hard bits, their uint8 copy) and six (C, D) ones (inputs and three
    reconstructions with their products), so the rows shrink as N grows.
    """
    per_row = (5 * n_bits + 6 * d_in) * 4
    budget = EVALUATION_BUDGET if free_bytes is None else min(EVALUATION_BUDGET, free_bytes // 4)
    return int(np.clip(budget // per_row, 64, CHUNK_ROWS))


@torch.no_grad()
def evaluate_model(
    model: BinaryAutoencoder,
    vectors: np.ndarray,
    *,
    split: str,
    n_queries: int = 500,
    seed: int = 0,
    chunk_rows: int | None = None,
    retrieval: bool = True,
    into: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evaluation:
    """Every metric of METHOD.md for `vectors` (M, D), already normalised as trained.

    `split` names the part evaluated ("train", "validation", ...) and is stored
    in the result, so every reported number says where it came from. Chunks
    are sized by N and the device's free memory unless `chunk_rows` is given. With
    `retrieval=False` the recall metrics are left to the caller, which can
    search a part's queries against every row (see `retrieval_metrics`).

    Sparsity alignment (METHOD.md): `alignment_cosine` is the mean over rows of
    the cosine distance d(s, t) between the soft code and its TopK mask,
    whatever distance the run trained its alignment with, so runs compare;
    `active_ratio` is active_mean / K.

    `vectors` may be a `RowView` (a memory map read chunk by chunk). With
    `into` = (codes, rows) each chunk's packed codes are written to
    codes[rows[chunk]] instead of being gathered, and `Evaluation.packed` is
    None: no second copy of the part's codes (needs `retrieval=False`).
    """
    if into is not None and retrieval:
        raise ValueError("evaluate_model writes its codes `into` an array only without retrieval.")
    model.eval()
    device = next(model.parameters()).device
    if chunk_rows is None:
        chunk_rows = evaluation_chunk_rows(model.n_bits, model.d_in, free_memory(str(device)))
    sums = {"recon": 0.0, "fixed_topk_recon": 0.0, "soft_recon": 0.0, "topk_overlap": 0.0, "alignment": 0.0}
    packed, active, fired = [], [], np.zeros(model.n_bits, dtype=np.int64)
    for start in range(0, len(vectors), chunk_rows):
        x = torch.from_numpy(np.ascontiguousarray(vectors[start : start + chunk_rows])).to(device)  # (C, D)
        logits = model.encode_logits(x)  # (C, N)
        soft = torch.sigmoid(logits)
        # Bits and TopK from the logits, as model.encode does: sigmoid rounds to
        # exactly 0.5 near u = 0 and ties at 1.0 for large u.
        topk = topk_indices(logits, model.k)
        mask = mask_from_indices(topk, model.n_bits, soft)
        hard = model.stored_code((logits > 0).to(soft.dtype), topk)  # u > 0, or t for hard-topk
        rows = len(x)
        sums["recon"] += cosine_distance(x, model.decode(hard)).item() * rows
        sums["fixed_topk_recon"] += cosine_distance(x, model.decode(mask)).item() * rows
        sums["soft_recon"] += cosine_distance(x, model.decode(soft)).item() * rows
        sums["topk_overlap"] += ((hard * mask).sum(dim=1) / model.k).sum().item()
        sums["alignment"] += cosine_distance(soft, mask).item() * rows
        bits = hard.to(torch.uint8).cpu().numpy()
        if into is None:
            packed.append(pack_bits(bits))
        else:
            codes, rows_out = into
            codes[rows_out[start : start + rows]] = pack_bits(bits)
            active.append(bits.sum(axis=1, dtype=np.int64))
            fired += bits.sum(axis=0, dtype=np.int64)
    if into is None:
        packed = np.concatenate(packed) if packed else np.zeros((0, bytes_per_vector(model.n_bits)), np.uint8)
    n = max(len(vectors), 1)
    metrics = {
        "split": split,
        "recon_loss": sums["recon"] / n,
        "fixed_topk_recon_loss": sums["fixed_topk_recon"] / n,
        "soft_recon_loss": sums["soft_recon"] / n,
        "topk_overlap": sums["topk_overlap"] / n,
        "alignment_cosine": sums["alignment"] / n,
        "k": model.k,
    }
    if into is None:
        metrics |= code_metrics(
            packed,
            model.n_bits,
            vectors,
            split=split,
            n_queries=n_queries,
            seed=seed,
            decoding=model_decoding(model),
            retrieval=retrieval,
        )
    else:
        active = np.concatenate(active) if active else np.zeros(0, np.int64)
        metrics |= count_metrics(active, fired, model.n_bits, vectors.shape[1], split=split)
        packed = None
    metrics["active_ratio"] = metrics["active_mean"] / model.k
    return Evaluation(metrics, packed)


def model_decoding(model: BinaryAutoencoder) -> LinearDecoding:
    """The model's decoder as asymmetric search reads it: x_hat = W_d b + b_d, or `model.uncentre` of it."""
    weight, bias = (tensor.detach().cpu().numpy() for tensor in (model.decoder.weight, model.decoder.bias))
    if model.centre is None:
        return LinearDecoding(weight, bias)
    centre = model.centre.detach().cpu().numpy()
    return LinearDecoding(weight, bias, centre=centre, length=float(model.centre_length))


def code_metrics(
    packed: np.ndarray,
    n_bits: int,
    vectors: np.ndarray,
    *,
    split: str,
    n_queries: int = 500,
    seed: int = 0,
    decoding: LinearDecoding | None = None,
    retrieval: bool = True,
) -> dict:
    """Metrics any binary code has: activity, firing, storage and (unless `retrieval` is False) retrieval
    with queries from these rows searched among them.

    Shared by trained models and the `sign` baseline, so both are measured alike.
    With a `decoding` reading each code back as a dense vector, the asymmetric
    recall is measured too.
    """
    index = CodeIndex(packed, n_bits)
    metrics = count_metrics(index.sizes.astype(np.int64), index.bit_counts, n_bits, vectors.shape[1], split=split)
    if retrieval:
        queries = sample_queries(len(packed), n_queries, seed)
        metrics |= retrieval_metrics(index, vectors, queries, decoding=decoding)
    return metrics


def count_metrics(active: np.ndarray, fired: np.ndarray, n_bits: int, d_in: int, *, split: str) -> dict:
    """`code_metrics` without retrieval, from the counts alone: `active` (M,) active bits per row and
    `fired` (N,) rows where each bit fires, so codes written chunk by chunk need not be read back."""
    firing = firing_frequency(np.asarray(fired), len(active))
    metrics = {"split": split, "n_rows": int(len(active)), "n_bits": n_bits, "d_in": int(d_in)}
    metrics |= activity_metrics(active)
    metrics |= firing_metrics(firing)
    metrics |= storage_metrics(n_bits, active, d_in)
    return metrics


def activity_metrics(active: np.ndarray) -> dict:
    """Active bits per concept: mean, std, extremes and the histogram (count per value)."""
    if len(active) == 0:
        return {"active_mean": 0.0, "active_std": 0.0, "active_min": 0, "active_max": 0, "active_histogram": []}
    return {
        "active_mean": float(active.mean()),
        "active_std": float(active.std()),
        "active_min": int(active.min()),
        "active_max": int(active.max()),
        "active_histogram": np.bincount(active).tolist(),  # [i] = concepts with i active bits
    }


def firing_frequency(bit_counts: np.ndarray, n_rows: int) -> np.ndarray:
    """(N,) share of the `n_rows` rows in which each bit is 1, from the (N,) counts `search.codes.bit_counts` gives."""
    return bit_counts / max(n_rows, 1)


def firing_metrics(firing: np.ndarray) -> dict:
    """Dead bits (never fire), dense bits (fire for over half), log10 frequency histogram."""
    alive = firing[firing > 0]
    counts, edges = (
        np.histogram(np.log10(alive), bins=LOG10_BINS) if len(alive) else (np.zeros(len(LOG10_BINS) - 1), LOG10_BINS)
    )
    return {
        "dead_bits": int((firing == 0).sum()),
        "dense_bits": int((firing > 0.5).sum()),
        "firing_frequency": firing.tolist(),
        "log10_firing_histogram": {"edges": edges.tolist(), "counts": np.asarray(counts, dtype=int).tolist()},
    }


def storage_metrics(n_bits: int, active: np.ndarray, d_in: int) -> dict:
    """Bits per vector as a bitmap, as a plain list of active indices (ceil(log2 N) bits each) and as an
    Elias-Fano coded list as `export` stores it (`sparsebin.search.elias_fano`: the stream and, when counts
    vary, the row offsets), against float32; `active` holds each row's active count."""
    active = np.asarray(active)
    active_mean = float(active.mean()) if len(active) else 0.0
    float_bits = 32 * d_in
    index_bits = active_mean * math.ceil(math.log2(n_bits)) if n_bits > 1 else active_mean
    coded_bits = 8 * elias_fano.stored_row_bytes(active, n_bits)  # as the file stores it, offsets and all
    return {
        "bits_bitmap": n_bits,
        "bits_index_list": index_bits,
        "bits_elias_fano": coded_bits,
        "bits_float32": float_bits,
        "compression_bitmap": float_bits / n_bits,
        "compression_index_list": float_bits / index_bits if index_bits > 0 else float("inf"),
        "compression_elias_fano": float_bits / coded_bits if coded_bits > 0 else float("inf"),
    }


def retrieval_metrics(
    index: CodeIndex, vectors: np.ndarray, queries: np.ndarray, *, decoding: LinearDecoding | None = None, k: int = 10
) -> dict:
    """Recall@k of code neighbours (Hamming, Jaccard, asymmetric) against dense cosine neighbours.

    Asymmetric search (with a `decoding`) scores each dense query by its
    cosine with every stored code read back as a dense vector (see
    `CodeIndex.search_asymmetric`); its float scores rarely tie, and ties go to
    the lower row.

    `queries` are row numbers of `index` / `vectors` (M, D); each is searched
    against every indexed row but itself. Rows tied with the k-th nearest code
    distance are counted fairly: each tied row counts by its chance of making
    the list under a uniformly random order of the tied rows (the expected
    recall of random tie-breaking), instead of by its row number. The dense
    neighbours are by cosine whether or not the run normalised its inputs
    (exact ties among float cosines are left to the row order).
    """
    nan = {"recall_at_10_hamming": float("nan"), "recall_at_10_jaccard": float("nan"), "n_queries": 0}
    if decoding is not None:
        nan["recall_at_10_asymmetric"] = float("nan")
    if len(index) <= k or len(queries) == 0:
        return nan | {"n_index_rows": int(len(index)), "recall_ties": TIES}
    queries = np.asarray(queries, dtype=np.int64)
    norms = np.linalg.norm(vectors[: min(len(vectors), 1000)], axis=1)
    unit = vectors if np.allclose(norms, 1.0, atol=1e-4) else RowView(vectors, True)  # read in chunks
    truth, _ = dense_neighbours(unit, queries, k)
    result = {"n_queries": int(len(queries)), "n_index_rows": int(len(index)), "recall_ties": TIES}
    for metric in ("hamming", "jaccard"):
        result[f"recall_at_10_{metric}"] = tie_aware_recall(index, queries, truth, k, metric)
    if decoding is not None:
        found, _ = index.search_asymmetric(vectors[queries], decoding, k, exclude=queries)
        result["recall_at_10_asymmetric"] = recall_at_k(found, truth)
        result["asymmetric_score"] = ASYMMETRIC_SCORE
    return result


def tie_aware_recall(index: CodeIndex, queries: np.ndarray, truth: np.ndarray, k: int, metric: str) -> float:
    """Mean over queries of the expected share of `truth` (Q, k) among the k code neighbours.

    With d_k the k-th smallest code distance, L the rows nearer than d_k and T
    the rows at exactly d_k, a true neighbour nearer than d_k counts 1, one at
    d_k counts (k - L) / T, one farther 0. Float32 distances of equal fractions
    are equal (division is correctly rounded), so Jaccard ties are exact.
    """
    block = max(1, 2**24 // max(len(index), 1))  # each (block, M) distance matrix ~64 MB
    shares = []
    for start in range(0, len(queries), block):
        rows = queries[start : start + block]
        dist = index.distances(index.packed[rows], metric)  # (b, M)
        dist[np.arange(len(rows)), rows] = np.inf  # a query is not its own neighbour
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]  # (b, 1)
        nearer = (dist < kth).sum(axis=1)
        tied = (dist == kth).sum(axis=1)
        truth_dist = np.take_along_axis(dist, truth[start : start + block], axis=1)  # (b, k)
        expected = (truth_dist < kth).sum(axis=1) + (truth_dist == kth).sum(axis=1) * (k - nearer) / tied
        shares.append(expected / truth.shape[1])
    return float(np.concatenate(shares).mean())


def sign_codes(
    vectors: np.ndarray,
    fit_vectors: np.ndarray | None = None,
    n_bits: int | None = None,
    pca: bool = True,
    axes: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The `sign` baseline: 1[x_j > 0] per dimension, after an optional PCA rotation.

    The rotation (centre and principal axes) is fitted on `fit_vectors` (the
    training part; default `vectors`), or given as `axes` from `principal_axes`
    so several budgets share one fit. `n_bits` keeps the leading components
    (at most D), for comparisons at equal storage. Returns packed codes.
    """
    fit_vectors = vectors if fit_vectors is None else fit_vectors
    d_in = vectors.shape[1]
    n_bits = d_in if n_bits is None else n_bits
    if not 1 <= n_bits <= d_in:
        raise ValueError(
            f"the sign baseline gives at most one bit per dimension: n_bits must lie in 1..{d_in}, got {n_bits}."
        )
    if pca:
        offset, rotation = axes if axes is not None else principal_axes(fit_vectors, d_in)
        rotation = rotation[:, :n_bits]
    else:
        rotation, offset = np.eye(d_in, n_bits, dtype=np.float32), np.zeros(d_in, np.float32)
    step = float_rows(d_in)
    packed = [
        pack_bits((np.asarray(vectors[i : i + step]) - offset) @ rotation > 0) for i in range(0, len(vectors), step)
    ]
    return np.concatenate(packed)


def principal_axes(
    vectors: np.ndarray, n_components: int, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), axes (D, n_components)) from the covariance, accumulated in float64 chunks of
    `float_rows(D, 8)` rows unless `chunk_rows` is given."""
    d_in = vectors.shape[1]
    chunk_rows = float_rows(d_in, 8) if chunk_rows is None else chunk_rows
    total = np.zeros(d_in, dtype=np.float64)
    gram = np.zeros((d_in, d_in), dtype=np.float64)
    for start in range(0, len(vectors), chunk_rows):
        block = np.asarray(vectors[start : start + chunk_rows], dtype=np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
    mean = total / len(vectors)
    covariance = gram / len(vectors) - np.outer(mean, mean)
    _, eigenvectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    axes = eigenvectors[:, ::-1][:, :n_components]
    return mean.astype(np.float32), axes.astype(np.float32)
