"""Packed binary codes, exact Hamming / Jaccard search, and recall against dense.

Codes are stored as `np.packbits(bits, axis=1)`: one row per concept, N/8 bytes,
bit 0 the high bit of byte 0: the layout faiss `IndexBinaryFlat` takes
unchanged. Search counts shared active bits (the intersection), then

    hamming(a, b) = |a| + |b| - 2 |a AND b|
    jaccard(a, b) = 1 - |a AND b| / |a OR b|      (two empty codes: distance 1)

Sparse codes (at most 5 % of bits active) are searched through an inverted
index (`by_bit`, one row of concepts per bit): a query costs the postings of
its active bits, and rows sharing no bit are filled in exactly from their
sizes, so no (Q, M) array is formed. For Hamming, bits that fire for more than
half the rows are first flipped in codes and queries alike (distances do not
change), which makes unconverged runs with always-on bits sparse again. Dense
codes (the sign baseline) use a float32 matrix product over unpacked chunks:
on 2 CPU cores it measured faster than popcount over uint64 words
(np.bitwise_count), 0.43 s against 0.84 s for 200 x 117k 384-bit codes.
All paths are exact (counts stay far below 2^24); ties go to the lower row.
"""

import numpy as np
import scipy.sparse as sp

METRICS = ("hamming", "jaccard")
SPARSE_DENSITY = 0.05  # above this share of active bits a dense product is faster


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(M, N) 0/1 array -> (M, ceil(N / 8)) uint8."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=1)


def unpack_bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """(M, ceil(N / 8)) uint8 -> (M, N) uint8 0/1."""
    return np.unpackbits(np.asarray(packed), axis=1, count=n_bits)


def bytes_per_vector(n_bits: int) -> int:
    return -(-n_bits // 8)


class CodeIndex:
    """Exact nearest-neighbour search over packed binary codes.

    Sparse codes are held as an inverted index, `by_bit`: an (N, M) float32 CSR
    with one row per bit listing the rows where it fires (8 bytes per active
    bit). A caller that already built it (`interpret.RunContext`) passes it in,
    so it is not built twice.
    """

    def __init__(self, packed: np.ndarray, n_bits: int, chunk_rows: int = 65536, by_bit: sp.csr_matrix | None = None):
        self.packed = packed
        self.n_bits = n_bits
        self.chunk_rows = chunk_rows
        self.sizes = active_counts(packed, chunk_rows).astype(np.float32)  # (M,) active bits per row
        density = self.sizes.mean() / n_bits if len(packed) else 0.0
        self.sparse = density <= SPARSE_DENSITY
        self._by_bit = by_bit if self.sparse else None
        self._by_size = None
        self._flipped = None
        self._flip_mask = None

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def by_size(self) -> np.ndarray:
        """Row indices ordered by active bits, ties by row: the Hamming order of rows sharing no bit."""
        if self._by_size is None:
            self._by_size = np.argsort(self.sizes, kind="stable")
        return self._by_size

    def _intersections(self, query_bits: np.ndarray) -> np.ndarray:
        """(Q, N) 0/1 queries -> (Q, M) float32 counts of shared active bits."""
        if self.sparse:
            return (sp.csr_matrix(query_bits, dtype=np.float32) @ self.by_bit).toarray()
        query = query_bits.astype(np.float32)
        out = np.empty((len(query), len(self)), dtype=np.float32)
        for i in range(0, len(self), self.chunk_rows):
            block = unpack_bits(self.packed[i : i + self.chunk_rows], self.n_bits).astype(np.float32)
            out[:, i : i + len(block)] = query @ block.T
        return out

    def distances(self, query_packed: np.ndarray, metric: str = "hamming") -> np.ndarray:
        """(Q, M) float32 distances from each packed query to every indexed row."""
        check_metric(metric)
        query_bits = unpack_bits(np.atleast_2d(query_packed), self.n_bits)
        inter = self._intersections(query_bits)
        query_sizes = query_bits.sum(axis=1, dtype=np.float32)[:, None]
        return pair_distances(inter, query_sizes, self.sizes[None, :], metric)

    def search(
        self, query_packed: np.ndarray, k: int, metric: str = "hamming", exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances), each (Q, k), nearest first, ties by the lower row index.

        `exclude` gives, per query, one indexed row to leave out (the query itself).
        Sparse codes are searched without a (Q, M) matrix (see `_search_sparse`).
        """
        check_metric(metric)
        query_packed = np.atleast_2d(query_packed)
        if metric == "hamming" and k < len(self) - 1 and self.flip_mask.any() and self.flipped.sparse:
            flipped_queries = np.bitwise_xor(query_packed, self.flip_mask)
            return self.flipped._search_sparse(flipped_queries, k, metric, exclude)
        if self.sparse and k < len(self) - 1:
            return self._search_sparse(query_packed, k, metric, exclude)
        block = max(1, 2**25 // max(len(self), 1))  # keep each (block, M) distance matrix ~128 MB
        indices, distances = [], []
        for i in range(0, len(query_packed), block):
            dist = self.distances(query_packed[i : i + block], metric)
            if exclude is not None:
                dist[np.arange(len(dist)), exclude[i : i + block]] = np.inf
            top, top_dist = smallest_k(dist, k)
            indices.append(top)
            distances.append(top_dist)
        return np.concatenate(indices), np.concatenate(distances)

    @property
    def flip_mask(self) -> np.ndarray:
        """(N/8,) packed mask of the bits that fire for more than half the rows."""
        if self._flip_mask is None:
            counts = np.diff(self.by_bit.indptr) if self.sparse else np.zeros(self.n_bits, dtype=np.int64)
            for start in range(0, 0 if self.sparse else len(self.packed), self.chunk_rows):
                chunk = unpack_bits(self.packed[start : start + self.chunk_rows], self.n_bits)
                counts += chunk.sum(axis=0, dtype=np.int64)
            self._flip_mask = pack_bits((counts > len(self.packed) / 2)[None, :])[0]
        return self._flip_mask

    @property
    def flipped(self) -> "CodeIndex":
        """An index of the codes with the `flip_mask` bits flipped, for Hamming search.

        Flipping a bit in every code and query leaves every Hamming distance as
        it was, and unconverged runs have bits that fire for nearly every
        concept: flipped, those codes are sparse again and searched through the
        inverted index instead of a (Q, M) product.
        """
        if self._flipped is None:
            self._flipped = CodeIndex(np.bitwise_xor(self.packed, self.flip_mask), self.n_bits, self.chunk_rows)
        return self._flipped

    @property
    def by_bit(self) -> sp.csr_matrix:
        """(N, M) CSR of the sparse codes, one row per bit: the inverted index of each bit's rows."""
        if self._by_bit is None:
            self._by_bit = codes_by_bit(self.packed, self.n_bits, self.chunk_rows)
        return self._by_bit

    def _search_sparse(
        self, query_packed: np.ndarray, k: int, metric: str, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k from the rows sharing a bit with the query, plus k fillers.

        A row sharing no bit with the query is at Hamming distance |q| + |r| and
        Jaccard distance 1, so among those only the k smallest rows (Hamming) or
        the k lowest-numbered rows (Jaccard) can ever make the top k. The
        candidates are therefore the non-zeros of the sparse product with the
        inverted index plus those k, and no (Q, M) array is formed: a query costs
        the postings of its active bits, not M.
        """
        indices = np.empty((len(query_packed), k), dtype=np.int64)
        distances = np.empty((len(query_packed), k), dtype=np.float32)
        filler_order = self.by_size if metric == "hamming" else np.arange(len(self))
        shared = np.zeros(len(self), dtype=bool)  # scratch mask, reset after each query
        block = 256  # queries per sparse product, bounding its non-zeros
        for start in range(0, len(query_packed), block):
            query_bits = unpack_bits(query_packed[start : start + block], self.n_bits)
            query_sizes = query_bits.sum(axis=1, dtype=np.float32)
            product = sp.csr_matrix(query_bits, dtype=np.float32) @ self.by_bit  # (B, M) shared-bit counts
            row_of = np.repeat(np.arange(len(query_bits)), np.diff(product.indptr))
            all_dist = pair_distances(product.data, query_sizes[row_of], self.sizes[product.indices], metric)
            for row in range(len(query_bits)):
                segment = slice(product.indptr[row], product.indptr[row + 1])
                cols, dist = product.indices[segment], all_dist[segment]
                own = -1 if exclude is None else int(exclude[start + row])
                shared[cols] = True
                if own >= 0:
                    shared[own] = True
                fillers = filler_order[: k + len(cols) + 1]
                fillers = fillers[~shared[fillers]][:k]
                shared[cols] = False
                if own >= 0:
                    shared[own] = False
                keep = cols != own
                cand = np.concatenate([cols[keep], fillers]).astype(np.int64)
                filler_dist = pair_distances(np.float32(0), query_sizes[row], self.sizes[fillers], metric)
                cand_dist = np.concatenate([dist[keep], filler_dist])
                top = smallest_k_labelled(cand_dist, cand, k)
                indices[start + row] = cand[top]
                distances[start + row] = cand_dist[top]
        return indices, distances


def smallest_k_labelled(dist: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest of `dist` (1-D), ties broken by the lower label (row index)."""
    if k < len(dist):
        kth = np.partition(dist, k - 1)[k - 1]
        within = np.flatnonzero(dist <= kth)  # may hold more than k when the k-th value ties
    else:
        within = np.arange(len(dist))
    return within[np.lexsort((labels[within], dist[within]))[:k]]


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


def active_counts(packed: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """(M,) int64 active bits per packed row, by popcount over the bytes."""
    counts = [
        np.bitwise_count(np.asarray(packed[i : i + chunk_rows])).sum(axis=1, dtype=np.int64)
        for i in range(0, len(packed), chunk_rows)
    ]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)  # (256, 8) bits of a byte


def active_positions(packed: np.ndarray, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
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


def codes_by_bit(packed: np.ndarray, n_bits: int, chunk_rows: int = 65536) -> sp.csr_matrix:
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
    vectors: np.ndarray, query_rows: np.ndarray, k: int, chunk_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k among `vectors` for the given rows, the row itself left out.

    `vectors` must be L2-normalised (M, D) float32; returns (indices, similarities).
    """
    queries = np.asarray(vectors[query_rows], dtype=np.float32)  # (Q, D)
    best_idx = np.empty((len(queries), 0), dtype=np.int64)
    best_sim = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk_rows):
        block = np.asarray(vectors[start : start + chunk_rows], dtype=np.float32)
        sims = queries @ block.T  # (Q, chunk)
        own = (query_rows >= start) & (query_rows < start + len(block))
        sims[np.nonzero(own)[0], query_rows[own] - start] = -np.inf
        cand_idx = np.concatenate([best_idx, np.broadcast_to(np.arange(start, start + len(block)), sims.shape)], axis=1)
        cand_sim = np.concatenate([best_sim, sims], axis=1)
        top, neg = smallest_k(-cand_sim, k)
        best_idx = np.take_along_axis(cand_idx, top, axis=1)
        best_sim = -neg
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
