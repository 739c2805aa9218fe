"""Exact Hamming / Jaccard top-k search over binary codes, compiled with numba.

Two kernels, both without the GIL (threads each take a share of the queries):

`search_words` compares a query with every row by popcount over 64-bit words:
cost M * N / 64 per query, the right choice for dense codes (the sign baseline).

`search_postings` walks an inverted index instead. The index holds, per bit,
the rows that differ from the bit's usual value: the rows where it fires for a
bit that fires in at most half the rows, and the rows where it is off for a bit
that fires in more (`frequent`). Every posting list is then at most M / 2 long,
however unconverged the codes (trained runs have bits that fire for every
concept). For a query q with B frequent active bits, each row r shares

    |q AND r| = B + (hits in the rare bits' lists) - (hits in the frequent bits' lists)

bits, so a query touches only the postings of its own active bits. Rows that
no list touches share exactly B bits; their distance depends only on their own
size and never falls as the size grows. They are taken size group by size
group, up to k from a group (its lowest untouched rows: they tie), until a
group's distance exceeds the k-th best found; with Jaccard and B = 0 they all
sit at distance 1 and the lowest untouched rows are taken. A whole group is
kept because float32 Jaccard distances of different sizes can tie (from unions
of ~4100 bits on).

When every row has one size (rigid TopK) and the query has no frequent bit, a
row's distance falls as the bits it shares rise, so the walk keeps a threshold
(a count k other rows have reached) and lists only rows that reach it; the
offer then reads a few thousand rows instead of every touched one. On HPO +
ICD-10-CM (117,539 rows, N=4096, K=32, 29,700 postings a query) one thread took
59 ms per 1000 queries against 107 ms for the general walk. (Jaccard takes this
path only while |q| + K < 4096, where float32 distances of different counts
cannot tie.)

Distances are float32 and equal numpy's `codes.pair_distances` bit for bit:
each float32 division or subtraction is done in float64 and rounded once, which
gives the correctly rounded float32 result. Ties go to the lower row.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

SHIFT = 1 << 20  # count offset: a row's shared bits change by at most N < 2^20 per query
FLAG = 1 << 24  # marks a row listed by the candidate walk; its counts stay below SHIFT < FLAG
# Float32 Jaccard distances of different fractions with unions below this are distinct (see the module notes).
EXACT_UNION = 4096


@intrinsic
def _popcount(typingctx, word):
    """Set bits of a 64-bit word as an int64, one instruction (LLVM's ctpop); int64 keeps sums integer."""
    if not isinstance(word, types.Integer) or word.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(word), codegen


@numba.njit(cache=True, inline="always")
def _distance(inter, query_size, row_size, jaccard):
    if not jaccard:
        return np.float32(query_size + row_size - 2 * inter)
    union = query_size + row_size - inter
    if union <= 0:
        return np.float32(1.0)
    share = np.float32(np.float64(inter) / np.float64(union))
    return np.float32(1.0 - np.float64(share))


@numba.njit(cache=True, inline="always")
def _offer(top_dist, top_rows, filled, dist, row):
    """Insert (dist, row) into the sorted top arrays if it beats their last entry; returns the new fill."""
    k = len(top_dist)
    if filled == k:
        last = k - 1
        if dist > top_dist[last] or (dist == top_dist[last] and row > top_rows[last]):
            return filled
        at = last
    else:
        at = filled
        filled += 1
    while at > 0 and (dist < top_dist[at - 1] or (dist == top_dist[at - 1] and row < top_rows[at - 1])):
        top_dist[at] = top_dist[at - 1]
        top_rows[at] = top_rows[at - 1]
        at -= 1
    top_dist[at] = dist
    top_rows[at] = row
    return filled


@numba.njit(cache=True, inline="always")
def _walk_postings(bits, query_size, indptr, rows, frequent, count, touched):
    """Walk the posting lists of the query's active `bits`; returns how many rows they touched.

    Each row a list touches gets count = SHIFT + the change in the bits it shares
    with the query, and is appended to `touched`.
    """
    n_touched = 0
    for j in range(query_size):
        bit = bits[j]
        step = -1 if frequent[bit] else 1
        for entry in range(indptr[bit], indptr[bit + 1]):
            row = rows[entry]
            if count[row] == 0:
                count[row] = SHIFT
                touched[n_touched] = row
                n_touched += 1
            count[row] += step
    return n_touched


@numba.njit(cache=True, inline="always")
def _walk_candidates(bits, query_size, indptr, rows, count, listed, at_least, k):
    """The walk for codes of one size and a query without frequent bits; returns how many rows it listed.

    count[row] becomes the bits the row shares with the query. A row is listed (and marked with FLAG) once
    its count reaches t, where t rises whenever k + 1 rows (one may be the query's own) have reached t + 1:
    then k other rows share at least t + 1 bits, and with one size a row sharing fewer is farther than all
    of them, so the rows never listed cannot be among the k nearest. `at_least[c]` counts the rows that
    reached c while c >= t, which is all of them for every c the threshold can still rise past.
    """
    threshold = 1
    n_listed = 0
    for j in range(query_size):
        bit = bits[j]
        for entry in range(indptr[bit], indptr[bit + 1]):
            row = rows[entry]
            value = count[row] + 1
            count[row] = value
            shared = value & (FLAG - 1)
            if shared >= threshold:  # rare once the threshold has risen: the branch is predicted
                if value < FLAG:
                    count[row] = value | FLAG
                    listed[n_listed] = row
                    n_listed += 1
                at_least[shared] += 1
                while at_least[threshold + 1] > k:
                    threshold += 1
    for shared in range(query_size + 2):
        at_least[shared] = 0
    return n_listed


@numba.njit(cache=True, inline="always")
def _clear_walk(bits, query_size, indptr, rows, count):
    """Set the count of every row the query's lists hold back to 0."""
    for j in range(query_size):
        bit = bits[j]
        for entry in range(indptr[bit], indptr[bit + 1]):
            count[rows[entry]] = 0


@numba.njit(cache=True, inline="always")
def _query_bits(query, frequent, bits):
    """The query's active bits into `bits`; returns (query size, B: how many of them are frequent)."""
    n_bits = len(frequent)
    query_size = base = 0
    for byte_index in range(len(query)):
        byte = query[byte_index]
        if byte == 0:
            continue
        for offset in range(8):  # np.packbits order: bit 0 is the high bit of byte 0
            bit = byte_index * 8 + offset
            if byte & (128 >> offset) == 0 or bit >= n_bits:
                continue
            bits[query_size] = bit
            query_size += 1
            base += frequent[bit]
    return query_size, base


@numba.njit(cache=True, inline="always")
def _offer_touched(touched, n_touched, count, offset, sizes, own, base, query_size, jaccard, top_dist, top_rows):
    """Offer every touched row but `own` (sharing base + count - offset bits) to the empty top k; returns the fill."""
    k = len(top_dist)
    filled = 0
    for position in range(n_touched):
        row = touched[position]
        if row == own:
            continue
        dist = _distance(base + count[row] - offset, query_size, sizes[row], jaccard)
        if filled < k or dist <= top_dist[k - 1]:  # the call is the costly part: most rows fail this
            filled = _offer(top_dist, top_rows, filled, dist, row)
    return filled


@numba.njit(cache=True, inline="always")
def _fill_untouched(
    count, sizes, by_size, group_sizes, group_starts, base, query_size, jaccard, top_dist, top_rows, filled
):
    """Offer the rows no list touched (count 0), each sharing exactly B bits, by size; returns the fill."""
    k = len(top_dist)
    if jaccard and base == 0:  # every untouched row is at distance 1: the lowest rows win
        taken = 0
        for row in range(len(sizes)):
            if taken == k:
                break
            if count[row] == 0:
                taken += 1
                filled = _offer(top_dist, top_rows, filled, _distance(0, query_size, sizes[row], jaccard), row)
        return filled
    for group in range(len(group_sizes)):  # distance grows with size: stop once a group cannot enter
        dist = _distance(base, query_size, group_sizes[group], jaccard)
        if filled == k and dist > top_dist[k - 1]:
            break
        taken = 0  # a group's rows tie: its k lowest untouched rows are all it can give
        for position in range(group_starts[group], group_starts[group + 1]):
            if taken == k:
                break
            row = by_size[position]
            if count[row] == 0:
                taken += 1
                filled = _offer(top_dist, top_rows, filled, dist, row)
    return filled


@numba.njit(cache=True, nogil=True)
def search_postings(indptr, rows, frequent, sizes, by_size, group_sizes, group_starts, queries, exclude, k, jaccard):
    """(Q, k) int64 rows and float32 distances, nearest first.

    indptr, rows: the (N + 1,) and (nnz,) CSR of the posting lists, one per bit.
    frequent: (N,) bool, the bits whose list holds the rows where they are off.
    sizes: (M,) int32 active bits per row; by_size: rows ordered by (size, row), in groups of one size:
    group_sizes (G,) ascending, group g at by_size[group_starts[g] : group_starts[g + 1]].
    queries: (Q, ceil(N / 8)) uint8 packed query codes.
    exclude: (Q,) the row to leave out per query, or -1. Needs k <= M - 1.
    Runs without the GIL, so threads can each take a share of the queries.
    """
    n_queries = len(queries)
    out_rows = np.empty((n_queries, k), dtype=np.int64)
    out_dist = np.empty((n_queries, k), dtype=np.float32)
    # count[row]: 0 while no list of this query has touched the row, then SHIFT + the
    # change in its shared bits. One int32 array keeps the random accesses to one cache line.
    count = np.zeros(len(sizes), dtype=np.int32)
    touched = np.empty(len(sizes) + 1, dtype=np.int32)
    bits = np.empty(len(frequent), dtype=np.int64)
    at_least = np.zeros(len(frequent) + 2, dtype=np.int64)
    top_dist = np.empty(k, dtype=np.float32)
    top_rows = np.empty(k, dtype=np.int64)
    one_size = group_sizes[0] if len(group_sizes) == 1 else -1  # every row the same size (rigid TopK)
    for query in range(n_queries):
        own = exclude[query]
        query_size, base = _query_bits(queries[query], frequent, bits)
        if one_size >= 0 and base == 0 and (not jaccard or query_size + one_size < EXACT_UNION):
            n_listed = _walk_candidates(bits, query_size, indptr, rows, count, touched, at_least, k)
            filled = _offer_touched(
                touched, n_listed, count, FLAG, sizes, own, 0, query_size, jaccard, top_dist, top_rows
            )
            if own >= 0 and count[own] == 0:  # marked, so it is not offered as an untouched row either
                count[own] = FLAG
            filled = _fill_untouched(
                count, sizes, by_size, group_sizes, group_starts, 0, query_size, jaccard, top_dist, top_rows, filled
            )
            _clear_walk(bits, query_size, indptr, rows, count)
            if own >= 0:
                count[own] = 0
            out_rows[query] = top_rows
            out_dist[query] = top_dist
            continue
        n_touched = _walk_postings(bits, query_size, indptr, rows, frequent, count, touched)
        filled = _offer_touched(
            touched, n_touched, count, SHIFT, sizes, own, base, query_size, jaccard, top_dist, top_rows
        )
        if own >= 0 and count[own] == 0:  # marked touched, so it is not offered as an untouched row either
            count[own] = SHIFT
            touched[n_touched] = own
            n_touched += 1
        filled = _fill_untouched(
            count, sizes, by_size, group_sizes, group_starts, base, query_size, jaccard, top_dist, top_rows, filled
        )
        for position in range(n_touched):
            count[touched[position]] = 0
        out_rows[query] = top_rows
        out_dist[query] = top_dist
    return out_rows, out_dist


@numba.njit(cache=True, nogil=True)
def search_words(words, sizes, query_words, query_sizes, exclude, k, jaccard):
    """(Q, k) int64 rows and float32 distances, nearest first, by popcount over every row.

    words: (M, W) uint64 codes; query_words: (Q, W) uint64; sizes, query_sizes:
    active bits per row and per query. exclude: (Q,) the row to leave out per
    query, or -1. Needs k <= M - 1.
    """
    n_queries, n_words = query_words.shape
    n_rows = len(words)
    out_rows = np.empty((n_queries, k), dtype=np.int64)
    out_dist = np.empty((n_queries, k), dtype=np.float32)
    top_dist = np.empty(k, dtype=np.float32)
    top_rows = np.empty(k, dtype=np.int64)
    for query in range(n_queries):
        own = exclude[query]
        query_size = query_sizes[query]
        filled = 0
        for row in range(n_rows):
            if row == own:
                continue
            inter = 0
            for word in range(n_words):
                inter += _popcount(words[row, word] & query_words[query, word])
            dist = _distance(inter, query_size, sizes[row], jaccard)
            if filled < k or dist < top_dist[k - 1]:  # rows come in order: a tie never displaces
                filled = _offer(top_dist, top_rows, filled, dist, row)
        out_rows[query] = top_rows
        out_dist[query] = top_dist
    return out_rows, out_dist
