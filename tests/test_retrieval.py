"""Code search gives exactly the brute-force neighbours, and packed codes are what faiss expects."""

import numpy as np
import pytest

from sparsebin.retrieval import (
    CodeIndex,
    bytes_per_vector,
    codes_by_bit,
    pack_bits,
    recall_at_k,
    unpack_bits,
)


def brute_force(bits: np.ndarray, queries: np.ndarray, k: int, metric: str, exclude=None):
    """Reference: every distance in float64 from 0/1 arrays, ties by the lower row."""
    bits, queries = bits.astype(np.int64), queries.astype(np.int64)
    inter = queries @ bits.T
    union = queries.sum(1)[:, None] + bits.sum(1)[None, :] - inter
    if metric == "hamming":
        dist = (union - inter).astype(np.float64)
    else:
        dist = np.where(union > 0, 1 - inter / np.maximum(union, 1), 1.0)
    if exclude is not None:
        dist[np.arange(len(dist)), exclude] = np.inf
    order = np.array([np.lexsort((np.arange(len(row)), row))[:k] for row in dist])
    return order, np.take_along_axis(dist, order, axis=1)


def random_codes(rows: int, n_bits: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    firing = rng.random(n_bits) * 2 * density  # bits fire at different rates, as trained ones do
    bits = (rng.random((rows, n_bits)) < firing).astype(np.uint8)
    bits[:3] = 0  # empty codes exist in practice (a concept with no active bit)
    return bits


@pytest.mark.parametrize("density", [0.03, 0.4], ids=["sparse", "dense"])
@pytest.mark.parametrize("metric", ["hamming", "jaccard"])
def test_search_equals_brute_force(density, metric):
    bits = random_codes(400, 70, density, seed=1)  # 70 bits: the last byte is partly padding
    index = CodeIndex(pack_bits(bits), 70)
    assert index.sparse == (density < 0.05)
    queries = np.arange(0, 400, 7)
    found, distances = index.search(pack_bits(bits[queries]), 10, metric=metric, exclude=queries)
    expected, expected_distances = brute_force(bits, bits[queries], 10, metric, exclude=queries)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)
    assert (found != queries[:, None]).all()  # a query is never its own neighbour


def test_hamming_search_is_exact_with_always_on_bits():
    """An unconverged run: a few bits fire for (almost) every concept; they are flipped, not searched."""
    bits = random_codes(500, 96, 0.03, seed=5)
    bits[:, [7, 50]] = 1  # always on
    bits[::3, 60] = 1  # on for a third: left as it is
    bits[::3, 61] = 0  # on for the other two thirds: flipped
    bits[1::3, 61] = bits[2::3, 61] = 1
    index = CodeIndex(pack_bits(bits), 96)
    assert not index.sparse and index.flipped.sparse
    np.testing.assert_array_equal(np.flatnonzero(unpack_bits(index.flip_mask[None], 96)[0]), [7, 50, 61])
    queries = np.concatenate([np.arange(0, 500, 9), [1, 2]])  # rows 0-2 have only the always-on bits
    found, distances = index.search(pack_bits(bits[queries]), 10, exclude=queries)
    expected, expected_distances = brute_force(bits, bits[queries], 10, "hamming", exclude=queries)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(distances, expected_distances)


def test_sparse_search_keeps_rows_that_share_no_bit_when_they_are_nearest():
    """A query whose only close rows share none of its bits: the empty and tiny codes must still win."""
    bits = np.zeros((50, 40), np.uint8)
    bits[10:, :] = (np.random.default_rng(0).random((40, 40)) < 0.04).astype(np.uint8)
    bits[5, 39] = 1  # a one-bit row sharing nothing with the query
    query = np.zeros((1, 40), np.uint8)
    query[0, [0, 1]] = 1
    index = CodeIndex(pack_bits(bits), 40)
    for metric in ("hamming", "jaccard"):
        found, distances = index.search(pack_bits(query), 8, metric=metric)
        expected, expected_distances = brute_force(bits, query, 8, metric)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)


def test_codes_round_trip_through_faiss_binary_index():
    faiss = pytest.importorskip("faiss")
    bits = random_codes(300, 64, 0.05, seed=2)
    packed = pack_bits(bits)
    faiss_index = faiss.IndexBinaryFlat(64)
    faiss_index.add(packed)  # the packed rows go in unchanged
    queries = np.arange(0, 300, 11)
    faiss_distances, faiss_found = faiss_index.search(packed[queries], 10)
    found, distances = CodeIndex(packed, 64).search(packed[queries], 10, metric="hamming")
    np.testing.assert_array_equal(distances, faiss_distances)  # same distances, so the same bit layout
    full = CodeIndex(packed, 64).distances(packed[queries], "hamming")
    np.testing.assert_array_equal(np.take_along_axis(full, faiss_found, axis=1), faiss_distances)
    no_tie_at_cut = np.sort(full, axis=1)[:, 10] > distances[:, -1]  # there the top-10 set is unique
    assert no_tie_at_cut.any()
    np.testing.assert_array_equal(np.sort(found[no_tie_at_cut]), np.sort(faiss_found[no_tie_at_cut]))


def test_packing_round_trips_and_counts_bytes():
    bits = random_codes(20, 13, 0.3, seed=3)
    packed = pack_bits(bits)
    assert packed.shape == (20, 2) and bytes_per_vector(13) == 2 and bytes_per_vector(4096) == 512
    np.testing.assert_array_equal(unpack_bits(packed, 13), bits)
    assert np.packbits([1, 0, 0, 0, 0, 0, 0, 1])[0] == 0b10000001  # bit 0 is the high bit of byte 0


def test_recall_counts_shared_neighbours():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(2 / 6)


def test_inverted_index_lists_the_rows_of_each_bit():
    bits = random_codes(130, 70, 0.1, seed=4)
    by_bit = codes_by_bit(pack_bits(bits), 70, chunk_rows=50)  # chunks must join in order
    np.testing.assert_array_equal(by_bit.toarray(), bits.T)
