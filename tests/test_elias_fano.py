"""Elias-Fano coded index lists: exact round trips, the sizes the storage metric counts, damaged files."""

import numpy as np
import pytest

from sparsebin.errors import DataError
from sparsebin.metrics import storage_metrics
from sparsebin.search import elias_fano
from sparsebin.search.codes import pack_bits


def random_codes(rng, n_rows, n_bits, counts):
    bits = np.zeros((n_rows, n_bits), dtype=np.uint8)
    for row, count in zip(bits, counts, strict=True):
        row[rng.choice(n_bits, count, replace=False)] = 1
    return bits


@pytest.mark.parametrize("n_bits", [1, 2, 7, 64, 1000, 4096])
@pytest.mark.parametrize("varying", [False, True])
def test_codes_round_trip_exactly_in_the_bytes_row_bytes_counts(n_bits, varying):
    rng = np.random.default_rng(n_bits)
    counts = rng.integers(0, n_bits + 1, size=40) if varying else np.full(40, min(n_bits, 5))
    counts[:2] = (0, n_bits) if varying else counts[:2]  # the empty code and the full one
    bits = random_codes(rng, 40, n_bits, counts)
    coded = elias_fano.encode(pack_bits(bits), n_bits)
    assert np.array_equal(elias_fano.decode(coded), pack_bits(bits))
    assert np.array_equal(np.diff(coded.starts), elias_fano.row_bytes(counts, n_bits))
    assert coded.count == (None if varying else min(n_bits, 5))


def test_a_topk_code_takes_36_bytes_at_n_4096_k_32_against_48_as_a_plain_list():
    bits = random_codes(np.random.default_rng(0), 10, 4096, np.full(10, 32))
    coded = elias_fano.encode(pack_bits(bits), 4096)
    assert coded.bytes_per_row == 36.0
    assert len(coded.stream) == 360
    # the 32 highest indices (4064 to 4095): the upper bit vector filled to its last bit
    bits = np.zeros((1, 4096), dtype=np.uint8)
    bits[0, 4064:] = 1
    assert np.array_equal(elias_fano.decode(elias_fano.encode(pack_bits(bits), 4096)), pack_bits(bits))


def test_rows_are_read_in_blocks_without_changing_the_result(monkeypatch):
    bits = random_codes(np.random.default_rng(1), 25, 300, np.random.default_rng(2).integers(0, 40, size=25))
    whole = elias_fano.encode(pack_bits(bits), 300)
    monkeypatch.setattr(elias_fano, "BIT_CHUNK_ROWS", 4)
    blocks = elias_fano.encode(pack_bits(bits), 300)
    assert np.array_equal(blocks.stream, whole.stream) and np.array_equal(blocks.starts, whole.starts)
    assert np.array_equal(elias_fano.decode(blocks), pack_bits(bits))


def test_save_and_load_keep_every_field(tmp_path):
    bits = random_codes(np.random.default_rng(3), 12, 128, np.full(12, 9))
    coded = elias_fano.encode(pack_bits(bits), 128)
    elias_fano.save(tmp_path / "codes.npz", coded)
    again = elias_fano.load(tmp_path / "codes.npz")
    assert (again.n_bits, again.count) == (128, 9)
    assert np.array_equal(elias_fano.decode(again), pack_bits(bits))
    assert not list(tmp_path.glob("*.partial"))
    with np.load(tmp_path / "codes.npz") as data:
        # rows of one count, one size (9 x 3 low bits + 9 + 16 upper bits = 52 bits, 7 bytes): no offsets stored
        assert "starts" not in data and data["stream"].nbytes == 12 * 7
    varying = random_codes(np.random.default_rng(5), 12, 128, np.arange(12))
    elias_fano.save(tmp_path / "varying.npz", elias_fano.encode(pack_bits(varying), 128))
    assert np.array_equal(elias_fano.decode(elias_fano.load(tmp_path / "varying.npz")), pack_bits(varying))
    with np.load(tmp_path / "varying.npz") as data:
        assert data["starts"].dtype == np.uint32 and len(data["starts"]) == 13


def test_codes_with_padding_bits_set_are_refused():
    packed = np.array([[0b10000001]], dtype=np.uint8)  # N = 4: bit 7 lies in the padding
    with pytest.raises(ValueError, match="bits set past bit 4"):
        elias_fano.encode(packed, 4)


def test_a_damaged_or_foreign_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read Elias-Fano codes from .*junk.npz"):
        elias_fano.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", stream=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="cannot read Elias-Fano codes"):
        elias_fano.load(tmp_path / "other.npz")
    coded = elias_fano.encode(pack_bits(np.eye(4, 16, dtype=np.uint8)), 16)
    elias_fano.save(tmp_path / "cut.npz", elias_fano.EliasFanoCodes(coded.stream[:-1], coded.starts, 16, 1))
    with pytest.raises(DataError, match="damaged: its row offsets do not cover its 3 bytes"):
        elias_fano.load(tmp_path / "cut.npz")
    elias_fano.save(tmp_path / "count.npz", elias_fano.EliasFanoCodes(coded.stream, coded.starts, 16, 99))
    with pytest.raises(DataError, match="names 16 bits a code and 99 active bits a row"):
        elias_fano.load(tmp_path / "count.npz")


def test_the_largest_count_within_a_budget_is_the_last_that_fits():
    assert elias_fano.largest_count(4096, 48) == 45
    assert elias_fano.row_bytes(np.full(2, 45), 4096)[0] == 48 and elias_fano.row_bytes(np.full(2, 46), 4096)[0] > 48
    assert elias_fano.largest_count(8192, 48) == 40
    assert elias_fano.largest_count(64, 0) == 0
    table = {row["N"]: row for row in elias_fano.counts_within(48)}
    assert table[4096] == {"N": 4096, "K as a plain index list": 32, "K Elias-Fano coded": 45}
    assert table[1024]["K as a plain index list"] == 38  # 384 bits at 10 bits an index


def test_a_damaged_stream_names_the_row_that_does_not_decode():
    packed = pack_bits(random_codes(np.random.default_rng(4), 6, 64, np.full(6, 5)))
    coded = elias_fano.encode(packed, 64)
    emptied = coded.stream.copy()
    emptied[coded.starts[2] : coded.starts[3]] = 0  # row 2's upper bits lost: fewer indices than its count
    with pytest.raises(DataError, match="row 2 of the Elias-Fano codes is damaged"):
        elias_fano.decode(elias_fano.EliasFanoCodes(emptied, coded.starts, 64, 5))
    too_many = elias_fano.EliasFanoCodes(coded.stream, coded.starts, 64, 40)  # a count the rows do not hold
    with pytest.raises(DataError, match="row 0 of the Elias-Fano codes is damaged"):
        elias_fano.decode(too_many)


@pytest.mark.parametrize("varying", [False, True])
def test_the_size_a_run_reports_is_what_the_exported_file_holds_a_row(tmp_path, varying):
    """Codes whose counts vary store M + 1 row offsets beside the stream (4 bytes a row): the reported
    Elias-Fano size counts them; codes of one count need none. Only the file's few fixed fields differ."""
    rng = np.random.default_rng(1)
    n_rows, n_bits = 4000, 4096
    counts = rng.integers(20, 45, size=n_rows) if varying else np.full(n_rows, 32)
    packed = pack_bits(random_codes(rng, n_rows, n_bits, counts))
    elias_fano.save(tmp_path / "codes.npz", elias_fano.encode(packed, n_bits))
    on_disk = (tmp_path / "codes.npz").stat().st_size
    reported = storage_metrics(n_bits, counts, 384)["bits_elias_fano"] / 8
    assert 0 < on_disk - reported * n_rows < 2048  # the fixed fields and the .npz headers: under 2 KiB in all
    stream_only = elias_fano.row_bytes(counts, n_bits).mean()
    assert reported - stream_only == pytest.approx(4.0 if varying else 0.0, abs=0.01)
