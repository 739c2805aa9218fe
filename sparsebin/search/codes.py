"""Packed binary codes, exact Hamming / Jaccard search, and recall against dense.

Codes are stored as `np.packbits(bits, axis=1)`: one row per concept, N/8 bytes,
bit 0 the high bit of byte 0: the layout faiss `IndexBinaryFlat` takes
unchanged. Search counts shared active bits (the intersection), then

    hamming(a, b) = |a| + |b| - 2 |a AND b|
    jaccard(a, b) = 1 - |a AND b| / |a OR b|      (two empty codes: distance 1)

Search is compiled with numba (`sparsebin.search._kernels`), exact, and never forms a
(Q, M) array. Sparse codes are searched through posting lists, one per bit: a
bit that fires in more than half the rows lists the rows where it is off, any
other the rows where it fires, so the always-on bits of unconverged runs cost
nothing and a query costs the postings of its active bits. Dense codes (the
sign baseline) are compared with every row by popcount over 64-bit words.
`CodeIndex` picks whichever costs less for its codes. Ties go to the lower row.

Asymmetric search scores a dense query q against the stored codes instead,
through a decoding of each code, x_hat = c + s (W b + d) (`LinearDecoding`; for
a model its decoder, s = 1 or, when centring, the length putting x_hat at the
data's distance from the centre c; for sign bits the rotated basis times
2b - 1): a code scores cos(q, x_hat) = (q . c + s (v . b + q . d)) / |x_hat|,
up to |q|, with v = q W one N-vector per query (so a code costs a gather of v
over its active bits) and s, |x_hat| two numbers per stored code, computed once
from the code itself. The top k scores
win (ties to the lower row). Without the division the sum v . b ranks codes by
their decoded length as much as by their direction: on HPO (N=4096, K=32, 40
epochs, the paper's setting) recall@10 was 0.077 with the plain sum and 0.703
with the cosine.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from sparsebin.files import BIT_CHUNK_ROWS, CHUNK_ROWS, float_rows
from sparsebin.search._kernels import SHIFT, search_postings, search_words

METRICS = ("hamming", "jaccard")
SEARCH_METHODS = ("postings", "popcount")
# Search costs measured on 2 CPU cores (trained runs and sign codes, 19k-117k rows, N 272-4096), in ns:
# a posting walked ~2.5; popcount against one row ~1.5 + 0.035 per 64-bit word.
POSTING_NS, ROW_NS, WORD_NS = 2.5, 1.5, 0.035


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(M, N) 0/1 array -> (M, ceil(N / 8)) uint8."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=1)


UNPACKED_BLOCK_BYTES = 2**26  # a block of rows unpacked to float32 bits for a product: 64 MiB


def unpacked_rows(n_bits: int) -> int:
    """Rows per block when codes of `n_bits` are unpacked to float32 (UNPACKED_BLOCK_BYTES a block); also
    rows per block of any (rows, `n_bits`) float32 product."""
    return max(1, UNPACKED_BLOCK_BYTES // (4 * max(int(n_bits), 1)))


def unpack_bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """(M, ceil(N / 8)) uint8 -> (M, N) uint8 0/1."""
    return np.unpackbits(np.asarray(packed), axis=1, count=n_bits)


def bit_column(packed: np.ndarray, n_bits: int, bit: int) -> np.ndarray:
    """(M, ceil(N / 8)) uint8 -> (M,) uint8 0/1: whether `bit` is set in each row.

    Reads one byte column only, so a memory-mapped code file is not read whole.
    """
    if isinstance(bit, bool) or not isinstance(bit, (int, np.integer)) or not 0 <= bit < n_bits:
        raise ValueError(f"bit must be a whole number in 0..{n_bits - 1}, got {bit!r}.")
    byte = np.asarray(packed[:, bit // 8])  # (M,)
    return (byte >> (7 - bit % 8)) & 1  # bit 0 is the high bit of byte 0 (np.packbits)


def bytes_per_vector(n_bits: int) -> int:
    return -(-n_bits // 8)


@dataclass(frozen=True, eq=False)
class LinearDecoding:
    """How asymmetric search reads a stored code b as a dense vector x_hat.

    r = weight @ b + bias, weight (D, N) and bias (D,), float32; then x_hat = r,
    or with a `centre` c (D,), x_hat = r + c, or with a `length` L > 0 too,
    x_hat = c + L r / |r| (a centred model's decoding, see `sparsebin.model`).
    For sign bits, `sign_decoding`.
    """

    weight: np.ndarray
    bias: np.ndarray
    centre: np.ndarray | None = None
    length: float = 0.0

    def __post_init__(self):
        # Own copies: a model's tensors share memory with .numpy() and may train on, and an index
        # keeps the rows it decoded for this decoding (`CodeIndex.decoded_rows`).
        object.__setattr__(self, "weight", np.array(self.weight, dtype=np.float32, order="C"))
        object.__setattr__(self, "bias", np.array(self.bias, dtype=np.float32))
        centre = np.zeros_like(self.bias) if self.centre is None else self.centre
        object.__setattr__(self, "centre", np.array(centre, dtype=np.float32))
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],) or self.centre.shape != self.bias.shape:
            raise ValueError(
                f"a decoding needs a (D, N) weight and a (D,) bias and centre, got {self.weight.shape}, "
                f"{self.bias.shape} and {self.centre.shape}."
            )

    def rows(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scale, norm), each (C,), for rows whose r = `products` (C, D): x_hat = c + scale * r, norm = |x_hat|."""
        if self.length > 0:
            scale = self.length / np.maximum(np.linalg.norm(products, axis=1), np.float32(1e-12))
        else:
            scale = np.ones(len(products), dtype=np.float32)
        return scale.astype(np.float32), np.linalg.norm(self.centre + scale[:, None] * products, axis=1)


def sign_decoding(axes: np.ndarray) -> LinearDecoding:
    """Sign bits b = 1[(x - mean) R > 0] read back as R (2 b - 1) = R sign(.): the rotated basis `axes` (D, n)."""
    return LinearDecoding(2 * axes, -axes.sum(axis=1))


class CodeIndex:
    """Exact nearest-neighbour search over packed binary codes.

    `method` says how: "postings" (walk the posting lists of a query's bits,
    `postings`) or "popcount" (compare with every row, `words`), whichever is
    cheaper for these codes: a query from the codes is expected to walk
    `expected_postings`, against M rows of N / 64 words for popcount. The plain
    inverted index, `by_bit`, an (N, M) float32 CSR with one row per bit
    listing the rows where it fires, serves full distance matrices; a caller
    that already built it (`interpret.bits.RunContext`) passes it in, so it is not
    built twice.
    """

    def __init__(
        self,
        packed: np.ndarray,
        n_bits: int,
        chunk_rows: int = CHUNK_ROWS,
        by_bit: sp.csr_matrix | None = None,
        method: str | None = None,
    ):
        check_packed(packed, n_bits, "codes")
        if by_bit is not None and (
            by_bit.shape != (n_bits, len(packed)) or by_bit.nnz and by_bit.indices.max() >= len(packed)
        ):
            raise ValueError(f"by_bit must be the ({n_bits}, {len(packed)}) inverted index of these codes.")
        self.packed = packed
        self.n_bits = n_bits
        self.chunk_rows = chunk_rows
        self.sizes = active_counts(packed, chunk_rows).astype(np.float32)  # (M,) active bits per row
        if by_bit is not None:
            self.by_bit = by_bit  # fills the cached property below
        self._decoded: tuple[LinearDecoding, tuple[np.ndarray, np.ndarray]] | None = None  # the last decoding's rows
        self.bit_counts = np.diff(by_bit.indptr) if by_bit is not None else bit_counts(packed, n_bits)
        rows = max(len(packed), 1)
        # Each posting list holds the rows where its bit differs from its usual value (see `postings`);
        # a query from these codes walks the list of each of its bits, bit b with chance count_b / M.
        list_lengths = np.minimum(self.bit_counts, len(packed) - self.bit_counts)
        self.expected_postings = float((self.bit_counts / rows * list_lengths).sum())
        if method is None:
            popcount_ns = len(packed) * (ROW_NS + WORD_NS * words_per_vector(n_bits))
            method = "postings" if self.expected_postings * POSTING_NS < popcount_ns else "popcount"
        if method not in SEARCH_METHODS:
            raise ValueError(f"method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}.")
        self._method = "popcount" if n_bits >= SHIFT else method  # SHIFT bounds the bits of a posting query

    @property
    def method(self) -> str:
        """How `search` runs: "postings" or "popcount" (see the class docstring)."""
        return self._method

    def __len__(self) -> int:
        return len(self.packed)

    @cached_property
    def by_size(self) -> np.ndarray:
        """Row indices ordered by active bits, ties by row: the Hamming order of rows sharing no bit."""
        return np.argsort(self.sizes, kind="stable").astype(np.int64)

    @cached_property
    def size_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, starts): the distinct row sizes, ascending, and where each begins in `by_size` (plus the end)."""
        ordered = self.sizes[self.by_size].astype(np.int32)
        starts = np.flatnonzero(np.diff(ordered, prepend=-1)) if len(ordered) else np.zeros(0, np.int64)
        return ordered[starts], np.append(starts, len(ordered)).astype(np.int64)

    @cached_property
    def by_bit(self) -> sp.csr_matrix:
        """(N, M) CSR of the codes, one row per bit: the inverted index of each bit's rows."""
        return codes_by_bit(self.packed, self.n_bits, self.chunk_rows)

    @cached_property
    def postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, rows, frequent): per bit, the rows where it differs from its usual value.

        A bit that fires in more than half the rows (`frequent`) lists the rows
        where it is off, any other bit the rows where it fires, so no list is
        longer than M / 2 and the always-on bits of unconverged runs cost
        nothing. `sparsebin.search._kernels` explains how the search uses them.
        """
        frequent = self.bit_counts > len(self) / 2
        lists = []
        for bit in range(self.n_bits):
            fired = self.by_bit.indices[self.by_bit.indptr[bit] : self.by_bit.indptr[bit + 1]]
            if frequent[bit]:
                off = np.ones(len(self), dtype=bool)
                off[fired] = False
                fired = np.flatnonzero(off)
            lists.append(fired.astype(np.int32))
        indptr = np.zeros(self.n_bits + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(rows) for rows in lists])
        rows = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int32)
        return indptr, rows, frequent

    @cached_property
    def words(self) -> np.ndarray:
        """(M, ceil(N / 64)) uint64: the packed rows, zero-padded to whole words, for popcount."""
        return as_words(self.packed, self.chunk_rows)

    def _intersections(self, query_bits: np.ndarray) -> np.ndarray:
        """(Q, N) 0/1 queries -> (Q, M) float32 counts of shared active bits."""
        if self.method == "postings":
            return (sp.csr_matrix(query_bits, dtype=np.float32) @ self.by_bit).toarray()
        return self._unpacked_products(query_bits.astype(np.float32))

    def distances(self, query_packed: np.ndarray, metric: str = "hamming") -> np.ndarray:
        """(Q, M) float32 distances from each packed query to every indexed row."""
        check_metric(metric)
        query_packed = np.atleast_2d(query_packed)
        check_packed(query_packed, self.n_bits, "queries")
        query_bits = unpack_bits(query_packed, self.n_bits)
        inter = self._intersections(query_bits)
        query_sizes = query_bits.sum(axis=1, dtype=np.float32)[:, None]
        return pair_distances(inter, query_sizes, self.sizes[None, :], metric)

    def search(
        self, query_packed: np.ndarray, k: int, metric: str = "hamming", exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances), each (Q, k), nearest first, ties by the lower row index.

        `exclude` gives, per query, one indexed row to leave out (the query
        itself), or -1 for none. When fewer rows than k are left, k shrinks to
        them. Below k = M - 1 the compiled kernels search without a (Q, M) matrix.
        """
        check_metric(metric)
        query_packed = np.atleast_2d(query_packed)
        check_packed(query_packed, self.n_bits, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive whole number of neighbours, got {k!r}.")
        if exclude is not None:
            exclude = np.asarray(exclude)
            if exclude.shape != (len(query_packed),) or not np.issubdtype(exclude.dtype, np.integer):
                raise ValueError(f"exclude must give one row number per query ({len(query_packed)}), or -1 for none.")
            exclude = exclude.astype(np.int64)
            if ((exclude < -1) | (exclude >= len(self))).any():
                raise ValueError(f"exclude rows must be -1 (none) or below {len(self)}, the indexed rows.")
        k = int(min(k, len(self) - (exclude is not None and bool((exclude >= 0).any()))))  # the rows there are
        if len(query_packed) == 0 or k == 0:
            return np.zeros((len(query_packed), k), dtype=np.int64), np.zeros((len(query_packed), k), dtype=np.float32)
        if k < len(self) - 1:  # the kernels check no bounds: all was checked above
            return self._search_compiled(query_packed, k, metric, exclude)
        block = max(1, 2**25 // max(len(self), 1))  # keep each (block, M) distance matrix ~128 MB
        indices, distances = [], []
        for i in range(0, len(query_packed), block):
            dist = self.distances(query_packed[i : i + block], metric)
            if exclude is not None:
                own = exclude[i : i + block]
                dist[np.flatnonzero(own >= 0), own[own >= 0]] = np.inf
            top, top_dist = smallest_k(dist, k)
            indices.append(top)
            distances.append(top_dist)
        return np.concatenate(indices), np.concatenate(distances)

    def search_asymmetric(
        self,
        queries: np.ndarray,
        decoding: LinearDecoding,
        k: int,
        exclude: np.ndarray | None = None,
        block: int = 128,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores), each (Q, k): the rows whose decoded code is nearest each dense query by cosine.

        `queries` (Q, D) dense vectors, scored q . x_hat / |x_hat| against every
        row's `decoding` (see the module docstring), highest first, ties to
        the lower row. Exact: every row is scored, through the inverted index
        for sparse codes and by a product with unpacked blocks for dense ones,
        `block` queries at a time (fewer on large indexes, so a block's scores
        stay ~64 MB).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if decoding.weight.shape[1] != self.n_bits:
            raise ValueError(
                f"the decoding must map {self.n_bits} bits, got a weight of shape {decoding.weight.shape}."
            )
        if queries.ndim != 2 or queries.shape[1] != decoding.weight.shape[0]:
            raise ValueError(
                f"asymmetric queries must be dense vectors of the decoding's {decoding.weight.shape[0]} dimensions, "
                f"got shape {queries.shape}."
            )
        k = int(min(k, len(self) - (exclude is not None and bool((np.asarray(exclude) >= 0).any()))))
        block = max(1, min(block, 2**24 // max(len(self), 1)))  # each (block, M) score matrix ~64 MB at most
        scale, norm = self.decoded_rows(decoding)
        inverse_norm = 1.0 / np.maximum(norm, np.float32(1e-12))  # (M,)
        indices, scores = [], []
        for start in range(0, len(queries), block):
            part = queries[start : start + block]  # (q, D)
            score = self._bit_sums(part @ decoding.weight)  # (q, M) v . b
            score += (part @ decoding.bias)[:, None]  # q . r
            score *= scale[None, :]
            score += (part @ decoding.centre)[:, None]  # q . x_hat
            score *= inverse_norm[None, :]
            if exclude is not None:
                own = np.asarray(exclude[start : start + block])
                score[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
            top, negative = smallest_k(-score, k)
            indices.append(top)
            scores.append(-negative)
        if not indices:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(indices), np.concatenate(scores)

    def decoded_rows(self, decoding: LinearDecoding) -> tuple[np.ndarray, np.ndarray]:
        """(scale, norm), each (M,) float32, of every row's decoded code (see `LinearDecoding.rows`),
        `chunk_rows` rows at a time; kept for the last decoding, so each part's queries reuse them."""
        if self._decoded is not None and self._decoded[0] is decoding:
            return self._decoded[1]
        scale, norm = np.empty(len(self), np.float32), np.empty(len(self), np.float32)
        by_row = self.by_bit.T.tocsr() if self._is_sparse() else None  # (M, N)
        # A block's float products are (rows, D), its unpacked bits (rows, N): 64 MiB each at most.
        step = unpacked_rows(max(self.n_bits, decoding.weight.shape[0]))
        for i in range(0, len(self), step):
            if by_row is not None:
                products = np.asarray(by_row[i : i + step] @ decoding.weight.T)  # (c, D)
            else:
                bits = unpack_bits(self.packed[i : i + step], self.n_bits).astype(np.float32)
                products = bits @ decoding.weight.T
            scale[i : i + len(products)], norm[i : i + len(products)] = decoding.rows(products + decoding.bias)
        self._decoded = (decoding, (scale, norm))
        return scale, norm

    def _is_sparse(self) -> bool:
        return self.sizes.mean() <= self.n_bits / 8

    def _bit_sums(self, query_weights: np.ndarray) -> np.ndarray:
        """(Q, M) float32 v . b: each query's weights summed over every row's active bits."""
        if self._is_sparse():  # sparse codes: sum v over each row's listed bits
            return np.asarray(self.by_bit.T @ query_weights.T, dtype=np.float32).T
        return self._unpacked_products(query_weights)

    def _unpacked_products(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) float32 -> (Q, M) float32 queries @ bits.T, the rows unpacked `unpacked_rows(N)` at a time
        (an unpacked float block of 64 MiB, not `chunk_rows` rows: 65,536 rows of 4096 bits would be 1 GiB)."""
        out = np.empty((len(queries), len(self)), dtype=np.float32)
        step = unpacked_rows(self.n_bits)
        for i in range(0, len(self), step):
            block = unpack_bits(self.packed[i : i + step], self.n_bits).astype(np.float32)
            out[:, i : i + len(block)] = queries @ block.T
        return out

    def _search_compiled(
        self, query_packed: np.ndarray, k: int, metric: str, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The compiled search, its queries dealt out over the CPU cores (the kernels run without the GIL).

        Queries are dealt round-robin, not in blocks: neighbouring rows often come from the
        same source and cost alike, so blocks leave one thread with most of the work.
        """
        exclude = np.full(len(query_packed), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        jaccard = metric == "jaccard"
        if self.method == "postings":
            indptr, rows, frequent = self.postings
            index = (indptr, rows, frequent, self.sizes.astype(np.int32), self.by_size, *self.size_groups)

            def part(which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                queries = np.ascontiguousarray(query_packed[which])
                return search_postings(*index, queries, exclude[which], k, jaccard)

        else:
            words, sizes = self.words, self.sizes.astype(np.int64)

            def part(which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                queries = query_packed[which]
                query_sizes = active_counts(queries, self.chunk_rows)
                return search_words(words, sizes, as_words(queries), query_sizes, exclude[which], k, jaccard)

        threads = search_threads(len(query_packed))
        if threads == 1:
            return part(np.arange(len(query_packed)))
        shares = [np.arange(start, len(query_packed), threads) for start in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(part, shares))
        found = np.empty((len(query_packed), k), dtype=np.int64)
        distances = np.empty((len(query_packed), k), dtype=np.float32)
        for share, (share_found, share_distances) in zip(shares, parts, strict=True):
            found[share], distances[share] = share_found, share_distances
        return found, distances


def search_threads(n_queries: int, queries_per_thread: int = 32) -> int:
    """Threads for a batch of queries: one per CPU core, none idle on a handful of queries."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, n_queries // queries_per_thread))


def smallest_k_labelled(dist: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest of `dist` (1-D), ties broken by the lower label (row index)."""
    if k < len(dist):
        kth = np.partition(dist, k - 1)[k - 1]
        within = np.flatnonzero(dist <= kth)  # may hold more than k when the k-th value ties
    else:
        within = np.arange(len(dist))
    return within[np.lexsort((labels[within], dist[within]))[:k]]


def check_packed(packed: np.ndarray, n_bits: int, what: str) -> None:
    """Refuse anything but (rows, ceil(N / 8)) uint8 rows from np.packbits, their padding bits zero."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or n_bits < 1:
        raise ValueError(f"n_bits must be a positive whole number, got {n_bits!r}.")
    width = bytes_per_vector(n_bits)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != width:
        raise ValueError(
            f"{what} must be packed {n_bits}-bit codes: uint8 rows of {width} bytes (np.packbits), "
            f"got {packed.dtype} of shape {packed.shape}."
        )
    padding = np.uint8(0xFF >> (n_bits % 8)) if n_bits % 8 else np.uint8(0)
    if padding and len(packed) and np.any(np.asarray(packed[:, -1]) & padding):
        raise ValueError(f"{what} have bits set past bit {n_bits} (the padding of the last byte).")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}.")


def pair_distances(inter: np.ndarray, query_sizes, row_sizes, metric: str) -> np.ndarray:
    """Hamming or Jaccard distance from intersection counts and code sizes (float32, broadcast)."""
    if metric == "hamming":
        return (query_sizes + row_sizes - 2 * inter).astype(np.float32)
    union = query_sizes + row_sizes - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, 1 - inter / union, 1.0).astype(np.float32)


def active_counts(packed: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """(M,) int64 active bits per packed row, by popcount over the bytes."""
    counts = [
        np.bitwise_count(np.asarray(packed[i : i + chunk_rows])).sum(axis=1, dtype=np.int64)
        for i in range(0, len(packed), chunk_rows)
    ]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def words_per_vector(n_bits: int) -> int:
    return -(-n_bits // 64)


def as_words(packed: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """(M, B) uint8 packed rows -> (M, ceil(B / 8)) uint64, zero-padded (bit order does not matter to popcount).
    Rows of whole words (N a multiple of 64), contiguous and aligned, are viewed as words, not copied."""
    if (
        isinstance(packed, np.ndarray)
        and packed.dtype == np.uint8
        and packed.ndim == 2
        and packed.shape[1] % 8 == 0
        and packed.flags.c_contiguous
        and packed.ctypes.data % 8 == 0
    ):
        return packed.view(np.uint64)
    n_words = -(-packed.shape[1] // 8)
    padded = np.zeros((len(packed), n_words * 8), dtype=np.uint8)
    for start in range(0, len(packed), chunk_rows):
        padded[start : start + chunk_rows, : packed.shape[1]] = packed[start : start + chunk_rows]
    return padded.view(np.uint64)


def bit_counts(packed: np.ndarray, n_bits: int, chunk_rows: int = BIT_CHUNK_ROWS) -> np.ndarray:
    """(N,) int64 rows where each bit fires, summed over unpacked chunks (fastest of the ways tried)."""
    counts = np.zeros(n_bits, dtype=np.int64)
    for start in range(0, len(packed), chunk_rows):
        counts += unpack_bits(packed[start : start + chunk_rows], n_bits).sum(axis=0, dtype=np.int64)
    return counts


BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)  # (256, 8) bits of a byte


def active_positions(packed: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(rows, bits) int32 of every active bit, row-major, read from the packed bytes.

    Works on the non-zero bytes only (a byte -> bits lookup), so sparse codes
    are never unpacked into an (M, N) array.
    """
    rows, bits = [], []
    for start in range(0, len(packed), chunk_rows):
        chunk = np.asarray(packed[start : start + chunk_rows])
        byte_rows, byte_cols = np.nonzero(chunk)
        which, offset = np.nonzero(BYTE_BITS[chunk[byte_rows, byte_cols]])  # (nnz,) into the non-zero bytes
        rows.append((byte_rows[which] + start).astype(np.int32))
        bits.append((byte_cols[which] * 8 + offset).astype(np.int32))
    if not rows:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(rows), np.concatenate(bits)


def codes_by_bit(packed: np.ndarray, n_bits: int, chunk_rows: int = CHUNK_ROWS) -> sp.csr_matrix:
    """(N, M) float32 CSR of packed codes, one row per bit (the rows where it fires, ascending)."""
    rows, bits = active_positions(packed, chunk_rows)
    keep = bits < n_bits  # padding bits of the last byte are zero in codes from pack_bits; be safe
    data = np.ones(int(keep.sum()), dtype=np.float32)
    matrix = sp.csr_matrix((data, (bits[keep], rows[keep])), shape=(n_bits, len(packed)))
    matrix.sort_indices()
    return matrix


def smallest_k(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k smallest entries, ties broken by the lower column index."""
    k = min(k, dist.shape[1])
    if k < dist.shape[1]:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(dist.shape[1]), (len(dist), 1))
    # Entries equal to the k-th value may sit outside the partition; take them all, then order.
    kth = np.take_along_axis(dist, part, axis=1).max(axis=1, keepdims=True)
    rows, cols = np.nonzero(dist <= kth)
    order = np.lexsort((cols, dist[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(len(dist)))
    picks = starts[:, None] + np.arange(k)[None, :]
    top = cols[picks]
    return top, np.take_along_axis(dist, top, axis=1)


def dense_neighbours(
    vectors: np.ndarray, query_rows: np.ndarray, k: int, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k among `vectors` for the given rows, the row itself left out.

    `vectors` must be L2-normalised (M, D) float32 (or read so in chunks, `metrics.RowView`); returns
    (indices, similarities). The rows are read once, `chunk_rows` at a time, each chunk scored against
    the queries in blocks with a running top k, so no (Q, M) array is formed and a block's scores stay
    ~16 MB whatever M and Q.
    """
    query_rows = np.asarray(query_rows, dtype=np.int64)
    chunk_rows = float_rows(vectors.shape[1]) if chunk_rows is None else chunk_rows
    queries = np.asarray(vectors[query_rows], dtype=np.float32)  # (Q, D)
    best_idx = np.empty((len(queries), 0), dtype=np.int64)
    best_sim = np.empty((len(queries), 0), dtype=np.float32)
    step = max(1, 2**22 // max(chunk_rows, 1))  # queries scored at once
    for start in range(0, len(vectors), chunk_rows):
        block = np.asarray(vectors[start : start + chunk_rows], dtype=np.float32)
        columns = np.arange(start, start + len(block))
        merged_idx, merged_sim = [], []
        for first in range(0, len(queries), step):
            rows = query_rows[first : first + step]
            sims = queries[first : first + step] @ block.T  # (q, chunk)
            own = (rows >= start) & (rows < start + len(block))
            sims[np.nonzero(own)[0], rows[own] - start] = -np.inf
            cand_idx = np.concatenate([best_idx[first : first + step], np.broadcast_to(columns, sims.shape)], axis=1)
            cand_sim = np.concatenate([best_sim[first : first + step], sims], axis=1)
            top, neg = smallest_k(-cand_sim, k)
            merged_idx.append(np.take_along_axis(cand_idx, top, axis=1))
            merged_sim.append(-neg)
        if merged_idx:
            best_idx, best_sim = np.concatenate(merged_idx), np.concatenate(merged_sim)
    return best_idx, best_sim


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` that appears in the same row of `found`."""
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1]) if len(hits) else float("nan")


def sample_queries(n_rows: int, n_queries: int, seed: int) -> np.ndarray:
    """A seeded sample of row indices, sorted; all rows when there are fewer."""
    if n_rows <= n_queries:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n_queries, replace=False))
