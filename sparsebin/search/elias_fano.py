"""Elias-Fano coding of each code's active indices: how a sparse code is stored compactly.

A plain index list spends ceil(log2 N) bits on each of a code's K active
indices. Elias-Fano coding (the usual format of posting lists) splits each
sorted index v_i into its l = floor(log2(N / K)) low bits, stored as they are,
and its high part v_i >> l, stored in unary: bit (v_i >> l) + i is set in an
upper bit vector of K + ((N - 1) >> l) + 1 bits. A row takes

    K l + K + ((N - 1) >> l) + 1 bits,

at most about K (2 + log2(N / K)): at N=4096, K=32, 288 bits (36 bytes)
against 384 (48 bytes) as a plain list; at K=44, 372 bits (47 bytes).

Rows are byte-aligned, so one row decodes on its own. When every row has the
same count (rigid TopK) the count is stored once for all rows; otherwise each
row leads with its count in ceil(log2(N + 1)) bits. `row_bytes` gives each
row's size without encoding anything; `encode` / `decode` round-trip packed
codes exactly (tests check that the encoded sizes are `row_bytes`).
"""

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsebin.errors import DataError
from sparsebin.files import BIT_CHUNK_ROWS, write_atomic
from sparsebin.search.codes import active_counts, bytes_per_vector, check_packed, pack_bits, unpack_bits

FORMAT = "elias-fano-1"


@dataclass(frozen=True)
class EliasFanoCodes:
    """Each row's active indices, Elias-Fano coded.

    `stream` holds the rows one after another, row i at bytes starts[i]:starts[i + 1];
    `count` is the active count every row has, or None when each row stores its own.
    """

    stream: np.ndarray  # (starts[-1],) uint8
    starts: np.ndarray  # (M + 1,) int64 byte offsets
    n_bits: int
    count: int | None

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def bytes_per_row(self) -> float:
        """The stream's mean bytes per row, without the row offsets (see `stored_bytes_per_row`)."""
        return float(self.starts[-1] / len(self)) if len(self) else 0.0

    @property
    def stored_bytes_per_row(self) -> float:
        """Mean bytes a row takes in the file `save` writes: its stream and its share of the row offsets."""
        return stored_bytes_per_row(np.diff(self.starts), varying=self.count is None)


def count_bits(n_bits: int) -> int:
    """Bits a row spends on its own active count when counts vary (0 to N)."""
    return math.ceil(math.log2(n_bits + 1))


def low_bits(n_bits: int, k: int) -> int:
    """l = floor(log2(N / K)): the low bits of each index stored as they are (0 when K >= N / 2)."""
    return max(0, (n_bits // k).bit_length() - 1) if k > 0 else 0


def row_bytes(counts: np.ndarray, n_bits: int) -> np.ndarray:
    """(M,) bytes each row takes, for codes with these active counts: the count itself adds
    ceil(log2(N + 1)) bits to each row unless every row has the same count."""
    counts = np.asarray(counts, dtype=np.int64)
    bits = _list_bits(counts, n_bits)
    if len(counts) and (counts != counts[0]).any():
        bits = bits + count_bits(n_bits)
    return (bits + 7) // 8


def stored_bytes_per_row(sizes: np.ndarray, varying: bool) -> float:
    """Mean bytes a row takes as `save` stores it, from each row's stream bytes `sizes`: the stream, plus,
    when counts vary, the M + 1 byte offsets that find each row (uint32 while the stream is under 4 GiB,
    else int64); rows of one count are all one size and need no offsets. The file's few fixed fields
    (format, N, row count) are left out: they do not grow with the rows."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(sizes):
        return 0.0
    total = int(sizes.sum())
    if varying:
        total += (len(sizes) + 1) * (4 if total < 2**32 else 8)
    return total / len(sizes)


def stored_row_bytes(counts: np.ndarray, n_bits: int) -> float:
    """Mean bytes a row of codes with these active counts takes in the file `save` writes
    (`stored_bytes_per_row` of their `row_bytes`): the size "equal storage" compares."""
    counts = np.asarray(counts, dtype=np.int64)
    return stored_bytes_per_row(row_bytes(counts, n_bits), varying=bool(len(counts) and (counts != counts[0]).any()))


def largest_count(n_bits: int, n_bytes: float) -> int:
    """The most active bits a code of N bits can have within `n_bytes` a row, every row with that count
    (rigid TopK); 0 when not even one fits."""
    counts = np.arange(1, n_bits + 1, dtype=np.int64)
    fits = counts[(_list_bits(counts, n_bits) + 7) // 8 <= n_bytes]
    return int(fits.max()) if len(fits) else 0


def counts_within(n_bytes: int, sizes: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)) -> list[dict]:
    """For each N in `sizes`, the most active bits a code can have within `n_bytes` a row (every row with
    that count): as a plain list of ceil(log2 N)-bit indices, and Elias-Fano coded."""
    return [
        {
            "N": n_bits,
            "K as a plain index list": 8 * n_bytes // max(1, math.ceil(math.log2(n_bits))),
            "K Elias-Fano coded": largest_count(n_bits, n_bytes),
        }
        for n_bits in sizes
    ]


def _list_bits(counts: np.ndarray, n_bits: int) -> np.ndarray:
    """Bits of each count's coded index list, without a count of its own."""
    values, inverse = np.unique(counts, return_inverse=True)
    low = np.array([low_bits(n_bits, int(k)) for k in values], dtype=np.int64)[inverse.reshape(counts.shape)]
    return np.where(counts > 0, counts * low + counts + ((n_bits - 1) >> low) + 1, 0)


def encode(packed: np.ndarray, n_bits: int) -> EliasFanoCodes:
    """Packed codes (M, ceil(N / 8)) -> their active indices, Elias-Fano coded row by row
    (unpacked a block of rows at a time, so memory stays small whatever M x N)."""
    check_packed(packed, n_bits, "codes to encode")
    counts = active_counts(packed)
    count = int(counts[0]) if len(counts) and (counts == counts[0]).all() else None
    header = 0 if count is not None else count_bits(n_bits)
    rows = []
    for start in range(0, len(packed), BIT_CHUNK_ROWS):
        bits = unpack_bits(np.asarray(packed[start : start + BIT_CHUNK_ROWS]), n_bits)
        rows += [_encode_row(np.flatnonzero(row), n_bits, header) for row in bits]
    sizes = np.array([len(row) for row in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    stream = np.concatenate(rows) if rows else np.zeros(0, dtype=np.uint8)
    return EliasFanoCodes(stream=stream, starts=starts, n_bits=n_bits, count=count)


def decode(codes: EliasFanoCodes) -> np.ndarray:
    """Elias-Fano coded rows -> packed codes (M, ceil(N / 8)), exactly as encoded; DataError naming the
    first row that does not decode to distinct indices below N (a damaged stream)."""
    packed = np.zeros((len(codes), bytes_per_vector(codes.n_bits)), dtype=np.uint8)
    for start in range(0, len(codes), BIT_CHUNK_ROWS):
        stop = min(start + BIT_CHUNK_ROWS, len(codes))
        bits = np.zeros((stop - start, codes.n_bits), dtype=np.uint8)
        for i in range(start, stop):
            row = np.unpackbits(codes.stream[codes.starts[i] : codes.starts[i + 1]])
            indices = _decode_row(row, codes.n_bits, codes.count)
            if indices is None or (len(indices) and (indices[-1] >= codes.n_bits or (np.diff(indices) <= 0).any())):
                raise DataError(f"row {i} of the Elias-Fano codes is damaged: it does not decode to a code.")
            bits[i - start, indices] = 1
        packed[start:stop] = pack_bits(bits)
    return packed


def save(path: Path, codes: EliasFanoCodes) -> None:
    """Write the coded rows as one .npz: stream, n_bits, count (-1: each row leads with its own) and, when
    counts vary, the rows' byte offsets (uint32 while they fit); rows of one count are all one size, so
    their offsets follow from `row_size` and take no room."""
    arrays = {"format": np.array(FORMAT), "stream": codes.stream, "n_bits": codes.n_bits, "rows": len(codes)}
    if codes.count is not None:
        arrays |= {"count": codes.count, "row_size": row_bytes(np.full(1, codes.count), codes.n_bits)[0]}
    else:
        starts = codes.starts.astype(np.uint32) if codes.starts[-1] < 2**32 else codes.starts
        arrays |= {"count": -1, "starts": starts}
    write_atomic(Path(path), _npz_bytes(arrays))


def load(path: Path) -> EliasFanoCodes:
    """Read a file `save` wrote; DataError when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise DataError(f"{path} is not an Elias-Fano code file ({FORMAT}).")
            count, n_bits = int(data["count"]), int(data["n_bits"])
            stream = data["stream"].astype(np.uint8, copy=False)
            if count >= 0:
                starts = int(data["row_size"]) * np.arange(int(data["rows"]) + 1, dtype=np.int64)
            else:
                starts = data["starts"].astype(np.int64)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"cannot read Elias-Fano codes from {path}: {error}") from error
    if n_bits < 1 or not -1 <= count <= n_bits:
        raise DataError(f"{path} is damaged: it names {n_bits} bits a code and {count} active bits a row.")
    if len(starts) == 0 or starts[0] != 0 or starts[-1] != len(stream) or (np.diff(starts) < 0).any():
        raise DataError(f"{path} is damaged: its row offsets do not cover its {len(stream)} bytes.")
    return EliasFanoCodes(stream=stream, starts=starts, n_bits=n_bits, count=None if count < 0 else count)


def _encode_row(indices: np.ndarray, n_bits: int, header: int) -> np.ndarray:
    k = len(indices)
    low = low_bits(n_bits, k)
    parts = [_binary(np.array([k]), header)]
    if k:
        parts.append(_binary(indices & ((1 << low) - 1), low))
        upper = np.zeros(k + ((n_bits - 1) >> low) + 1, dtype=np.uint8)
        upper[(indices >> low) + np.arange(k)] = 1
        parts.append(upper)
    return np.packbits(np.concatenate(parts))


def _decode_row(row: np.ndarray, n_bits: int, count: int | None) -> np.ndarray | None:
    """The row's active indices, ascending; None when the row is too short for its count."""
    at = 0
    if count is None:
        width = count_bits(n_bits)
        count, at = int(_value(row[:width])), width
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    low = low_bits(n_bits, count)
    if count > n_bits or len(row) < at + count * low:
        return None
    lows = row[at : at + count * low].reshape(count, low)
    lows = lows.astype(np.int64) @ (1 << np.arange(low - 1, -1, -1, dtype=np.int64))
    ones = np.flatnonzero(row[at + count * low :])[:count]
    if len(ones) < count:  # cut short: the row holds fewer indices than its count
        return None
    return ((ones - np.arange(count)) << low) | lows


def _binary(values: np.ndarray, width: int) -> np.ndarray:
    """Each value's `width` low bits, high bit first, one row after another."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(values, dtype=np.int64)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def _value(bits: np.ndarray) -> int:
    return int(bits.astype(np.int64) @ (1 << np.arange(len(bits) - 1, -1, -1, dtype=np.int64)))


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
