"""Code search gives exactly the brute-force neighbours, and packed codes are what faiss expects."""

import itertools

import numpy as np
import pytest

from sparsebin.search.codes import (
    SEARCH_METHODS,
    CodeIndex,
    LinearDecoding,
    bit_column,
    bytes_per_vector,
    codes_by_bit,
    pack_bits,
    recall_at_k,
    search_threads,
    sign_decoding,
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


def reference_float32(bits: np.ndarray, queries: np.ndarray, k: int, metric: str, exclude=None):
    """Reference for exact ties: float32 distances as a float32 pipeline computes them, ties by the lower row."""
    inter = (queries.astype(np.int64) @ bits.astype(np.int64).T).astype(np.float32)
    union = (queries.sum(1)[:, None] + bits.sum(1)[None, :]).astype(np.float32) - inter
    if metric == "hamming":
        dist = union - inter
    else:
        share = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        dist = np.where(union > 0, np.float32(1) - share, np.float32(1)).astype(np.float32)
    if exclude is not None:
        own = np.asarray(exclude)
        dist[np.flatnonzero(own >= 0), own[own >= 0]] = np.inf
    order = np.array([np.lexsort((np.arange(len(row)), row))[:k] for row in dist])
    return order, np.take_along_axis(dist, order, axis=1)


def both_methods(bits: np.ndarray) -> dict[str, CodeIndex]:
    """The same codes indexed for each search kernel: they must answer alike."""
    return {method: CodeIndex(pack_bits(bits), bits.shape[1], method=method) for method in SEARCH_METHODS}


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
    assert index.method == ("postings" if density < 0.05 else "popcount")
    queries = np.arange(0, 400, 7)
    expected, expected_distances = brute_force(bits, bits[queries], 10, metric, exclude=queries)
    for index in both_methods(bits).values():  # either kernel gives the same answer, the chosen one faster
        found, distances = index.search(pack_bits(bits[queries]), 10, metric=metric, exclude=queries)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)
        assert (found != queries[:, None]).all()  # a query is never its own neighbour


@pytest.mark.parametrize("metric", ["hamming", "jaccard"])
def test_search_is_exact_with_always_on_bits(metric):
    """An unconverged run: a few bits fire for (almost) every concept; their lists hold the rows where they are off."""
    bits = random_codes(500, 96, 0.03, seed=5)
    bits[:, [7, 50]] = 1  # always on
    bits[::3, 60] = 1  # on for a third: listed where it fires
    bits[::3, 61] = 0  # on for the other two thirds: listed where it is off
    bits[1::3, 61] = bits[2::3, 61] = 1
    index = CodeIndex(pack_bits(bits), 96)
    assert index.method == "postings"  # 6 % of the bits fire, but the lists hold 2.5 %
    indptr, rows, frequent = index.postings
    np.testing.assert_array_equal(np.flatnonzero(frequent), [7, 50, 61])
    np.testing.assert_array_equal(rows[indptr[61] : indptr[62]], np.arange(0, 500, 3))
    assert indptr[8] == indptr[7]  # an always-on bit lists no row at all
    queries = np.concatenate([np.arange(0, 500, 9), [1, 2]])  # rows 0-2 have only the always-on bits
    found, distances = index.search(pack_bits(bits[queries]), 10, metric=metric, exclude=queries)
    expected, expected_distances = brute_force(bits, bits[queries], 10, metric, exclude=queries)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_both_kernels_match_a_float32_reference_bit_for_bit(seed):
    """Random sizes, frequent and empty bits, outside queries, many ties, k up to M: same rows, same float32."""
    rng = np.random.default_rng(seed)
    rows, n_bits = int(rng.integers(30, 300)), int(rng.choice([8, 40, 64, 203]))
    bits = random_codes(rows, n_bits, 0.02 + 0.03 * rng.random(), seed=seed)
    on = rng.choice(n_bits, size=int(rng.integers(0, 4)), replace=False)
    bits[:, on] = rng.random((rows, len(on))) < 0.9  # frequent bits, off in ~10 % of rows
    inside = rng.choice(rows, size=min(rows, 40), replace=False)
    outside = (rng.random((15, n_bits)) < 0.05).astype(np.uint8)
    outside[:3] = 0
    queries = np.concatenate([bits[inside], outside])
    exclude = np.concatenate([inside, np.full(len(outside), -1)])
    for (metric, k), index in itertools.product(
        itertools.product(("hamming", "jaccard"), (1, 7, rows - 2, rows - 1)), both_methods(bits).values()
    ):
        found, distances = index.search(pack_bits(queries), k, metric, exclude)
        expected, expected_distances = reference_float32(bits, queries, k, metric, exclude)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(distances, expected_distances)
        if k == rows - 1:  # without an excluded row, every row is a candidate, the last one included
            found, distances = index.search(pack_bits(outside), rows, metric)
            np.testing.assert_array_equal(found, reference_float32(bits, outside, rows, metric)[0])


@pytest.mark.parametrize("seed", range(6))
def test_codes_of_one_size_take_the_candidate_walk_and_stay_exact(seed):
    """Rigid TopK codes (every row K bits): the walk lists only rows that can still make the top k."""
    rng = np.random.default_rng(seed)
    rows, n_bits, size = int(rng.integers(60, 400)), int(rng.choice([16, 64, 203])), int(rng.integers(2, 6))
    pool = rng.choice(n_bits, size=min(n_bits, 3 * size), replace=False)  # few bits: many shared, many ties
    bits = np.zeros((rows, n_bits), dtype=np.uint8)
    for row in range(rows):
        bits[row, rng.choice(pool, size=size, replace=False)] = 1
    if seed % 2:  # a bit every row has: queries holding it take the general walk, the others the candidate one
        bits[:] = 0
        bits[:, pool[0]] = 1
        for row in range(rows):
            bits[row, rng.choice(pool[1:], size=size - 1, replace=False)] = 1
    index = CodeIndex(pack_bits(bits), n_bits, method="postings")
    assert len(index.size_groups[0]) == 1  # one size
    inside = rng.choice(rows, size=min(rows, 30), replace=False)
    outside = (rng.random((12, n_bits)) < 0.03).astype(np.uint8)
    outside[:4, pool[-4:]] = 1  # outside queries of other sizes, sharing bits with the rows
    outside[5] = 0
    queries = np.concatenate([bits[inside], outside])
    exclude = np.concatenate([inside, np.full(len(outside), -1)])
    for metric, k in itertools.product(("hamming", "jaccard"), (1, 10, rows - 2, rows - 1)):
        found, distances = index.search(pack_bits(queries), k, metric, exclude)
        expected, expected_distances = reference_float32(bits, queries, k, metric, exclude)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(distances, expected_distances)


def test_jaccard_ties_between_rows_of_different_sizes_go_to_the_lower_row():
    """From unions of ~4100 bits on, float32 Jaccard distances of sizes s and s + 1 are equal."""
    size = 4141
    bits = np.zeros((3, size + 8), np.uint8)
    bits[:, 0] = 1  # fires everywhere: rows sharing only it are untouched by the posting lists
    bits[0, 1 : size + 1] = 1
    bits[1, 1:size] = 1
    bits[2, 1 : size + 3] = 1
    query = np.zeros((1, size + 8), np.uint8)
    query[0, 0] = 1
    expected, expected_distances = reference_float32(bits, query, 1, "jaccard")
    assert expected_distances[0, 0] == reference_float32(bits, query, 3, "jaccard")[1][0, 1]  # a real tie
    for index in both_methods(bits).values():
        found, distances = index.search(pack_bits(query), 1, metric="jaccard")
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(distances, expected_distances)


def test_a_large_batch_split_over_threads_gives_what_one_query_at_a_time_gives(monkeypatch):
    monkeypatch.setattr("sparsebin.search.codes.search_threads", lambda n_queries: 3)  # threads even on one core
    bits = random_codes(3000, 256, 0.02, seed=9)
    bits[:, 3] = 1
    queries = np.arange(0, 3000, 5)
    for metric, index in itertools.product(("hamming", "jaccard"), both_methods(bits).values()):
        together = index.search(pack_bits(bits[queries]), 10, metric=metric, exclude=queries)
        one_by_one = [index.search(pack_bits(bits[[row]]), 10, metric=metric, exclude=[row]) for row in queries]
        np.testing.assert_array_equal(together[0], np.concatenate([found for found, _ in one_by_one]))
        np.testing.assert_array_equal(together[1], np.concatenate([dist for _, dist in one_by_one]))
        expected, _ = brute_force(bits, bits[queries[:50]], 10, metric, exclude=queries[:50])
        np.testing.assert_array_equal(together[0][:50], expected)


def test_threads_go_to_large_batches_only():
    assert search_threads(10) == 1  # a handful of queries is not worth a thread each
    assert 1 <= search_threads(600) <= 600 // 32


def test_sparse_search_keeps_rows_that_share_no_bit_when_they_are_nearest():
    """A query whose only close rows share none of its bits: the empty and tiny codes must still win."""
    bits = np.zeros((50, 40), np.uint8)
    bits[10:, :] = (np.random.default_rng(0).random((40, 40)) < 0.04).astype(np.uint8)
    bits[5, 39] = 1  # a one-bit row sharing nothing with the query
    query = np.zeros((1, 40), np.uint8)
    query[0, [0, 1]] = 1
    assert CodeIndex(pack_bits(bits), 40).method == "postings"
    for metric, index in itertools.product(("hamming", "jaccard"), both_methods(bits).values()):
        found, distances = index.search(pack_bits(query), 8, metric=metric)
        expected, expected_distances = brute_force(bits, query, 8, metric)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)


SIXTY_FOUR = random_codes(50, 64, 0.05, seed=3)


@pytest.mark.parametrize(
    ("queries", "k", "exclude", "message"),
    [
        (
            np.zeros((1, 16), np.uint8),
            5,
            None,
            "packed 64-bit codes: uint8 rows of 8 bytes .*got uint8 of shape \\(1, 16\\)",
        ),
        (pack_bits(SIXTY_FOUR[:1]).view(np.int8), 5, None, "uint8 rows of 8 bytes \\(np.packbits\\), got int8"),
        (pack_bits(SIXTY_FOUR[:1]), 0, None, "k must be a positive whole number of neighbours, got 0"),
        (pack_bits(SIXTY_FOUR[:1]), 2.5, None, "got 2.5"),
        (pack_bits(SIXTY_FOUR[:1]), True, None, "got True"),
        (pack_bits(SIXTY_FOUR[:1]), 5, [50], "exclude rows must be -1 \\(none\\) or below 50, the indexed rows"),
        (pack_bits(SIXTY_FOUR[:1]), 5, [-2], "or below 50"),
        (pack_bits(SIXTY_FOUR[:1]), 5, [0, 1], "exclude must give one row number per query \\(1\\)"),
        (pack_bits(SIXTY_FOUR[:1]), 5, [1.7], "one row number per query"),
    ],
)
def test_bad_queries_k_or_exclude_are_refused_with_a_sentence(queries, k, exclude, message):
    for index in both_methods(SIXTY_FOUR).values():
        with pytest.raises(ValueError, match=message):
            index.search(queries, k, exclude=exclude)


def test_bits_set_in_the_padding_are_refused_in_codes_and_queries():
    bits = random_codes(40, 70, 0.05, seed=4)
    index = CodeIndex(pack_bits(bits), 70)
    query = pack_bits(bits[:1])
    query[0, -1] |= 0b1  # bit 79 of a 70-bit code
    with pytest.raises(ValueError, match="queries have bits set past bit 70"):
        index.search(query, 3)
    with pytest.raises(ValueError, match="codes have bits set past bit 70"):
        CodeIndex(np.concatenate([pack_bits(bits), query]), 70)


def test_an_index_refuses_codes_or_an_inverted_index_that_do_not_fit():
    packed = pack_bits(SIXTY_FOUR)
    with pytest.raises(ValueError, match="codes must be packed 128-bit codes: uint8 rows of 16 bytes"):
        CodeIndex(packed, 128)
    with pytest.raises(ValueError, match="by_bit must be the \\(64, 20\\) inverted index of these codes"):
        CodeIndex(packed[:20], 64, by_bit=codes_by_bit(packed, 64))
    with pytest.raises(ValueError, match="method must be one of postings, popcount, got 'faiss'"):
        CodeIndex(packed, 64, method="faiss")


def test_k_shrinks_to_the_rows_there_are_and_empty_inputs_give_empty_answers():
    for index in both_methods(SIXTY_FOUR).values():
        queries = pack_bits(SIXTY_FOUR[:2])
        found, distances = index.search(queries, 100, exclude=[0, 1])
        assert found.shape == distances.shape == (2, 49) and np.isfinite(distances).all()
        assert (found != np.array([[0], [1]])).all()
        assert index.search(queries, 100)[0].shape == (2, 50)
        assert index.search(queries, 100, exclude=[-1, -1])[0].shape == (2, 50)  # -1 leaves nothing out
        np.testing.assert_array_equal(index.search(queries, 5, exclude=[-1, -1])[0], index.search(queries, 5)[0])
        assert index.search(queries[:0], 5)[0].shape == (0, 5)
    empty = CodeIndex(np.zeros((0, 8), np.uint8), 64)
    found, distances = empty.search(pack_bits(SIXTY_FOUR[:1]), 5)
    assert found.shape == distances.shape == (1, 0)


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


def test_one_bit_column_of_packed_codes_is_that_column_of_the_bits():
    bits = random_codes(40, 13, 0.4, seed=5)
    packed = pack_bits(bits)
    for bit in range(13):
        np.testing.assert_array_equal(bit_column(packed, 13, bit), bits[:, bit])
    with pytest.raises(ValueError, match=r"bit must be a whole number in 0\.\.12, got 13\."):
        bit_column(packed, 13, 13)


def _brute_force_asymmetric(bits: np.ndarray, decoding, queries: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Top-k rows by cos(q, x_hat), ties to the lower row, one query at a time in float64 numpy."""
    decoded = bits.astype(np.float64) @ decoding.weight.T.astype(np.float64) + decoding.bias  # (M, D) r
    if decoding.length > 0:
        decoded *= decoding.length / np.linalg.norm(decoded, axis=1, keepdims=True)
    decoded += decoding.centre
    decoded /= np.linalg.norm(decoded, axis=1, keepdims=True)
    found = []
    for q, query in enumerate(queries):
        scores = decoded @ query.astype(np.float64)
        if exclude is not None and exclude[q] >= 0:
            scores[exclude[q]] = -np.inf
        found.append(np.lexsort((np.arange(len(scores)), -scores))[:k])
    return np.array(found)


@pytest.mark.parametrize("density", [0.05, 0.5])
def test_asymmetric_search_equals_brute_force_cosine_with_ties(density):
    rng = np.random.default_rng(3)
    patterns = (rng.random((60, 40)) < density).astype(np.uint8)
    patterns[:, 0] = 1  # no empty code
    bits = patterns[rng.integers(0, 60, size=700)]  # repeated codes: exact ties, to go to the lower row
    index = CodeIndex(pack_bits(bits), 40, chunk_rows=128)  # several blocks on the dense path
    # Small integers: sums are exact in float32, so repeated codes score exactly alike on every path.
    decoding = LinearDecoding(rng.integers(-3, 4, size=(12, 40)), rng.integers(-3, 4, size=12))
    queries = rng.integers(-3, 4, size=(37, 12)).astype(np.float32)
    exclude = rng.integers(-1, 700, size=37)
    found, scores = index.search_asymmetric(queries, decoding, 10, exclude=exclude, block=8)
    np.testing.assert_array_equal(found, _brute_force_asymmetric(bits, decoding, queries, 10, exclude))
    decoded = bits @ decoding.weight.T + decoding.bias  # (M, D)
    cosines = (queries @ decoded.T) / np.linalg.norm(decoded, axis=1)  # |q| is the same for a query's rows
    np.testing.assert_allclose(scores, np.take_along_axis(cosines, found, axis=1), rtol=1e-5)


@pytest.mark.parametrize("density", [0.06, 0.5])  # the inverted-index path and the dense one
@pytest.mark.parametrize("length", [0.0, 0.9])
def test_asymmetric_search_through_a_centred_decoding_equals_brute_force(length, density):
    rng = np.random.default_rng(5)
    bits = (rng.random((500, 64)) < density).astype(np.uint8)
    bits[:, 0] = 1
    decoding = LinearDecoding(
        rng.standard_normal((12, 64)), rng.standard_normal(12), centre=rng.standard_normal(12), length=length
    )
    queries = rng.standard_normal((25, 12)).astype(np.float32)
    found, _ = CodeIndex(pack_bits(bits), 64).search_asymmetric(queries, decoding, 10)
    np.testing.assert_array_equal(found, _brute_force_asymmetric(bits, decoding, queries, 10))


def test_asymmetric_search_ranks_by_direction_not_by_decoded_length():
    # Row 1 decodes to the query's own direction; row 0 points 45 degrees off but is ten times longer.
    bits = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.uint8)
    decoding = LinearDecoding(np.array([[10.0, 1.0], [10.0, 0.0]]), np.zeros(2))
    index = CodeIndex(pack_bits(bits), 2)
    found, scores = index.search_asymmetric(np.array([[1.0, 0.0]]), decoding, 2)
    assert found.tolist() == [[1, 0]]
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5)]], rtol=1e-6)


def test_sign_decoding_reads_bits_back_as_the_rotated_signs():
    rng = np.random.default_rng(4)
    axes = np.linalg.qr(rng.standard_normal((6, 6)))[0][:, :4].astype(np.float32)
    bits = (rng.random((5, 4)) < 0.5).astype(np.float32)
    decoding = sign_decoding(axes)
    np.testing.assert_allclose(bits @ decoding.weight.T + decoding.bias, (2 * bits - 1) @ axes.T, atol=1e-6)


def test_asymmetric_search_refuses_queries_of_another_width():
    index = CodeIndex(pack_bits(np.eye(16, dtype=np.uint8)), 16)
    decoding = LinearDecoding(np.ones((8, 16)), np.zeros(8))
    with pytest.raises(ValueError, match=r"dense vectors of the decoding's 8 dimensions, got shape \(2, 16\)"):
        index.search_asymmetric(np.zeros((2, 16)), decoding, 3)
    with pytest.raises(ValueError, match=r"must map 16 bits, got a weight of shape \(8, 12\)"):
        index.search_asymmetric(np.zeros((2, 8)), LinearDecoding(np.ones((8, 12)), np.zeros(8)), 3)
