"""Bring-your-own embeddings: every format, every validation fault, and nothing left behind."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsebin.datasets import import_dataset, list_datasets, load_dataset
from sparsebin.errors import DataError


def assert_rejected(data_dir, source, match, **kwargs):
    """The import fails with the message, and no dataset (or data folder) appears."""
    kwargs.setdefault("name", "mine")
    with pytest.raises(DataError, match=match):
        import_dataset(source, data_dir=data_dir, **kwargs)
    assert not data_dir.exists() or list(data_dir.iterdir()) == []
    assert list_datasets(data_dir) == []


# Formats that import


def test_npy_is_stored_memory_mapped_and_named_by_index(tmp_path, data_dir, vectors):
    source = tmp_path / "vectors.npy"
    np.save(source, vectors)
    folder = import_dataset(source, name="mine", data_dir=data_dir)
    dataset = load_dataset("mine", data_dir=data_dir)
    assert folder == data_dir / "mine" == dataset.path
    assert isinstance(dataset.embeddings, np.memmap)
    np.testing.assert_array_equal(dataset.embeddings, vectors)
    assert dataset.concepts["id"].tolist() == [str(row) for row in range(6)]
    assert dataset.concepts["name"].tolist()[:2] == ["row 0", "row 1"]
    assert (dataset.concepts["source"] == "user").all()
    assert (dataset.concepts["depth"] == -1).all()
    assert dataset.meta["kind"] == "user" and dataset.meta["count"] == 6
    assert dataset.meta["dimension"] == 4
    assert list_datasets(data_dir)[0]["name"] == "mine"


def test_float64_npy_is_stored_as_float32(tmp_path, data_dir, vectors):
    source = tmp_path / "vectors.npy"
    np.save(source, vectors.astype(np.float64))
    dataset = load_dataset(import_dataset(source, name="mine", data_dir=data_dir))
    assert dataset.embeddings.dtype == np.float32
    np.testing.assert_allclose(dataset.embeddings, vectors)


def test_npz_single_or_named_array(tmp_path, data_dir, vectors):
    np.savez(tmp_path / "one.npz", anything=vectors)
    np.savez_compressed(tmp_path / "named.npz", ids=np.arange(6), embeddings=vectors)
    for stem in ("one", "named"):
        folder = import_dataset(tmp_path / f"{stem}.npz", name=stem, data_dir=data_dir)
        np.testing.assert_array_equal(load_dataset(folder).embeddings, vectors)


def test_parquet_list_column_and_numeric_columns(tmp_path, data_dir, vectors):
    pq.write_table(
        pa.table({"key": list("abcdef"), "embedding": [list(row) for row in vectors]}),
        tmp_path / "lists.parquet",
    )
    pd.DataFrame(vectors, columns=list("wxyz")).to_parquet(tmp_path / "columns.parquet")
    for stem in ("lists", "columns"):
        folder = import_dataset(tmp_path / f"{stem}.parquet", name=stem, data_dir=data_dir)
        np.testing.assert_allclose(load_dataset(folder).embeddings, vectors)


def test_csv_with_and_without_header(tmp_path, data_dir, vectors):
    pd.DataFrame(vectors, columns=list("wxyz")).to_csv(tmp_path / "header.csv", index=False)
    pd.DataFrame(vectors).to_csv(tmp_path / "counted.csv", index=False)  # header "0,1,2,3"
    pd.DataFrame(vectors).to_csv(tmp_path / "bare.csv", index=False, header=False)
    for stem in ("header", "counted", "bare"):
        folder = import_dataset(tmp_path / f"{stem}.csv", name=stem, data_dir=data_dir)
        dataset = load_dataset(folder)
        assert dataset.embeddings.shape == (6, 4)
        np.testing.assert_allclose(dataset.embeddings, vectors, rtol=1e-6)


def test_labels_give_ids_names_categories_and_parents(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    labels = pd.DataFrame(
        {
            "id": [f"C{row}" for row in range(6)],
            "name": [f"concept {row}" for row in range(6)],
            "category": ["a", "a", "b", "b", "c", None],
            "parents": ["", "C0", "C0;C1", "C1 | C2", "", ""],
            "depth": [0, 1, 2, 2, None, 1],
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    folder = import_dataset(
        tmp_path / "vectors.npy",
        name="mine",
        labels_file=tmp_path / "labels.csv",
        data_dir=data_dir,
    )
    concepts = load_dataset(folder).concepts
    assert concepts["id"].tolist()[:2] == ["C0", "C1"]
    assert concepts["name"].iloc[3] == "concept 3"
    assert concepts["category"].tolist() == ["a", "a", "b", "b", "c", ""]
    assert concepts["parents"].tolist()[:4] == [[], ["C0"], ["C0", "C1"], ["C1", "C2"]]
    assert concepts["depth"].tolist() == [0, 1, 2, 2, -1, 1]


def test_parquet_labels_with_list_parents(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    pd.DataFrame({"id": list("abcdef"), "name": list("ABCDEF"), "parents": [[], ["a"], ["a"], [], [], []]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    folder = import_dataset(
        tmp_path / "vectors.npy",
        name="mine",
        labels_file=tmp_path / "labels.parquet",
        data_dir=data_dir,
    )
    concepts = load_dataset(folder).concepts
    assert concepts["parents"].tolist()[1] == ["a"]
    assert (concepts["category"] == "").all()


def test_large_npy_is_read_through_a_memory_map(tmp_path, data_dir, monkeypatch):
    """The source is opened with mmap_mode and streamed in chunks, never loaded whole."""
    from sparsebin.datasets import importing

    monkeypatch.setattr(importing, "_CHUNK_BYTES", 4096)  # many chunks from a small file
    rows = 3 * importing.chunk_rows_for(8) // 2
    source = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(source, mode="w+", dtype=np.float32, shape=(rows, 8))
    big[:] = 1.0
    big[-1, 0] = 2.0
    del big
    opened = []
    real_load = np.load

    def spying_load(path, *args, **kwargs):
        opened.append(kwargs.get("mmap_mode"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(importing.np, "load", spying_load)
    dataset = load_dataset(import_dataset(source, name="big", data_dir=data_dir))
    assert opened[0] == "r"
    assert isinstance(dataset.embeddings, np.memmap)
    assert dataset.embeddings.shape == (rows, 8)
    assert dataset.embeddings[-1, 0] == 2.0


# One test per validation fault


def test_unsupported_format(tmp_path, data_dir):
    source = tmp_path / "vectors.txt"
    source.write_text("1 2\n3 4\n")
    assert_rejected(data_dir, source, r"vectors\.txt: not a supported format '\.txt'")


def test_pickled_object_array_is_not_numeric(tmp_path, data_dir):
    source = tmp_path / "objects.npy"
    np.save(source, np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    assert_rejected(data_dir, source, r"objects\.npy: embeddings are not numeric")


def test_string_array_is_not_numeric(tmp_path, data_dir):
    source = tmp_path / "strings.npy"
    np.save(source, np.array([["1", "2"], ["3", "4"]]))
    assert_rejected(data_dir, source, r"strings\.npy: embeddings are not numeric \(dtype <U1\)")


def test_csv_text_column_is_not_numeric(tmp_path, data_dir):
    source = tmp_path / "text.csv"
    source.write_text("a,b,c\n1,2,3\n4,oops,6\n7,8,9\n")
    assert_rejected(data_dir, source, r"text\.csv: column 'b' is not numeric \(line 3: 'oops'\)")


def test_parquet_text_column_is_not_numeric(tmp_path, data_dir):
    source = tmp_path / "text.parquet"
    pd.DataFrame({"x": [1.0, 2.0], "label": ["a", "b"]}).to_parquet(source)
    assert_rejected(data_dir, source, r"text\.parquet: column 'label' is not numeric")


def test_ragged_csv_rows(tmp_path, data_dir):
    source = tmp_path / "ragged.csv"
    source.write_text("1,2,3\n4,5,6\n7,8\n1,1,1\n")
    assert_rejected(data_dir, source, r"ragged\.csv: ragged rows: line 3 has 2 values, expected 3")


def test_ragged_csv_long_row(tmp_path, data_dir):
    source = tmp_path / "long.csv"
    source.write_text("1,2,3\n4,5,6\n7,8,9,10\n")
    assert_rejected(data_dir, source, r"long\.csv: ragged rows .*line 3")


def test_ragged_parquet_list_rows(tmp_path, data_dir):
    source = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"embedding": [[1.0, 2.0], [3.0, 4.0], [5.0]]}), source)
    assert_rejected(
        data_dir,
        source,
        r"ragged\.parquet: ragged rows in column 'embedding': row 0 has 2 values but row 2 has 1",
    )


def test_too_few_rows(tmp_path, data_dir):
    source = tmp_path / "one.npy"
    np.save(source, np.ones((1, 4), np.float32))
    assert_rejected(data_dir, source, r"one\.npy: need at least 2 rows and 2 dims, got 1 rows")


def test_too_few_dims(tmp_path, data_dir):
    source = tmp_path / "narrow.npy"
    np.save(source, np.ones((5, 1), np.float32))
    assert_rejected(data_dir, source, r"narrow\.npy: need at least 2 rows and 2 dims.* x 1 dims")


def test_not_a_table(tmp_path, data_dir):
    source = tmp_path / "flat.npy"
    np.save(source, np.ones(5, np.float32))
    assert_rejected(data_dir, source, r"flat\.npy: embeddings must be a 2-d table")


def test_nan_names_first_bad_row(tmp_path, data_dir, vectors):
    vectors[4, 1] = np.nan
    vectors[5, 0] = np.inf
    source = tmp_path / "nan.npy"
    np.save(source, vectors)
    assert_rejected(data_dir, source, r"nan\.npy: row 4 contains NaN or inf")


def test_inf_names_first_bad_row(tmp_path, data_dir, vectors):
    vectors[2, 3] = -np.inf
    source = tmp_path / "inf.npy"
    np.save(source, vectors)
    assert_rejected(data_dir, source, r"inf\.npy: row 2 contains NaN or inf")


def test_empty_csv_cell_is_a_missing_value(tmp_path, data_dir):
    source = tmp_path / "hole.csv"
    source.write_text("1,2,3\n4,,6\n7,8,9\n")
    assert_rejected(data_dir, source, r"hole\.csv: row 1 contains NaN or inf")


def test_all_zero_row(tmp_path, data_dir, vectors):
    vectors[3] = 0.0
    source = tmp_path / "zero.npy"
    np.save(source, vectors)
    assert_rejected(data_dir, source, r"zero\.npy: row 3 is all zeros")


def test_label_count_differs(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    pd.DataFrame({"id": ["a", "b"], "name": ["A", "B"]}).to_csv(tmp_path / "labels.csv")
    assert_rejected(
        data_dir,
        tmp_path / "vectors.npy",
        r"labels\.csv: 2 label rows but the embeddings have 6 rows",
        labels_file=tmp_path / "labels.csv",
    )


def test_duplicate_ids(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    ids = ["a", "b", "c", "b", "e", "f"]
    pd.DataFrame({"id": ids, "name": ids}).to_csv(tmp_path / "labels.csv", index=False)
    assert_rejected(
        data_dir,
        tmp_path / "vectors.npy",
        r"labels\.csv: duplicate id 'b' in column 'id' \(rows \[1, 3\]\)",
        labels_file=tmp_path / "labels.csv",
    )


def test_labels_without_name_column(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    pd.DataFrame({"id": list("abcdef")}).to_csv(tmp_path / "labels.csv", index=False)
    assert_rejected(
        data_dir,
        tmp_path / "vectors.npy",
        r"labels\.csv: labels need columns 'id' and 'name'; missing name",
        labels_file=tmp_path / "labels.csv",
    )


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "a\\b", "x" * 65])
def test_unsafe_dataset_names(tmp_path, data_dir, vectors, name):
    np.save(tmp_path / "vectors.npy", vectors)
    assert_rejected(data_dir, tmp_path / "vectors.npy", "is not a safe folder name", name=name)
    assert list(tmp_path.iterdir()) == [tmp_path / "vectors.npy"]


def test_file_above_size_limit(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    assert_rejected(
        data_dir,
        tmp_path / "vectors.npy",
        r"vectors\.npy: the file is 0\.00 GiB, above the import size limit .*max_bytes=100\)",
        max_bytes=100,
    )


def test_existing_name_is_kept_unless_overwritten(tmp_path, data_dir, vectors):
    np.save(tmp_path / "vectors.npy", vectors)
    import_dataset(tmp_path / "vectors.npy", name="mine", data_dir=data_dir)
    with pytest.raises(DataError, match="a dataset named 'mine' already exists"):
        import_dataset(tmp_path / "vectors.npy", name="mine", data_dir=data_dir)
    np.save(tmp_path / "vectors.npy", vectors * 2)
    import_dataset(tmp_path / "vectors.npy", name="mine", data_dir=data_dir, overwrite=True)
    np.testing.assert_allclose(load_dataset("mine", data_dir=data_dir).embeddings, vectors * 2)


def test_fault_late_in_a_large_file_writes_nothing(tmp_path, data_dir, monkeypatch):
    """A bad row found after chunks were already written still leaves no folder behind."""
    from sparsebin.datasets import importing

    monkeypatch.setattr(importing, "_CHUNK_BYTES", 4096)
    rows = 5 * importing.chunk_rows_for(3) + 10
    values = np.ones((rows, 3), np.float32)
    values[rows - 2] = np.nan
    np.save(tmp_path / "late.npy", values)
    assert_rejected(data_dir, tmp_path / "late.npy", rf"late\.npy: row {rows - 2} contains NaN")


# The large-file import's failures while it runs: a file that changes under it, a disk that fills


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A 2000 x 8 .npy imported 100 rows a chunk, so there are many chunks to interfere with."""
    import sparsebin.datasets.importing as importing

    monkeypatch.setattr(importing, "_CHUNK_BYTES", 100 * 4 * 8)
    source = tmp_path / "big.npy"
    np.save(source, np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32))
    return source


def interfere_at_chunk(monkeypatch, number, action):
    """Run action once, just after the import checks its chunk `number` (counting from 0)."""
    import sparsebin.datasets.importing as importing

    real, seen = importing.check_chunk, []

    def check(chunk, first_row, path):
        real(chunk, first_row, path)
        seen.append(first_row)
        if len(seen) == number + 1:
            action()

    monkeypatch.setattr(importing, "check_chunk", check)
    return seen


def test_a_file_cut_short_while_it_is_read_stops_with_a_sentence_and_keeps_nothing(planted, data_dir, monkeypatch):
    def cut():
        with open(planted, "r+b") as handle:
            handle.truncate(planted.stat().st_size // 2)

    seen = interfere_at_chunk(monkeypatch, 3, cut)
    assert_rejected(data_dir, planted, r"big\.npy: the file changed while it was read \([\d,]+ bytes at the start")
    assert seen == [0, 100, 200, 300]  # it stopped at the next chunk, in this process (no SIGBUS from the map)


def test_a_file_that_grows_while_it_is_read_stops_with_a_sentence_and_keeps_nothing(planted, data_dir, monkeypatch):
    def grow():
        with open(planted, "ab") as handle:
            handle.write(b"\0" * 4096)

    interfere_at_chunk(monkeypatch, 19, grow)  # the last chunk: only the final check can see it
    assert_rejected(data_dir, planted, r"big\.npy: the file changed while it was read .* import it again")


@pytest.mark.parametrize("where", ["embeddings", "concepts"])
def test_a_full_disk_stops_the_import_with_a_sentence_and_keeps_nothing(planted, data_dir, monkeypatch, where):
    import errno

    import sparsebin.datasets.importing as importing
    from sparsebin.datasets.store import NpyWriter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "embeddings":
        real, calls = NpyWriter.write, []

        def write(self, chunk):  # the disk fills after five chunks were written
            calls.append(len(chunk))
            if len(calls) > 5:
                full()
            real(self, chunk)

        monkeypatch.setattr(NpyWriter, "write", write)
    else:
        monkeypatch.setattr(importing, "write_concepts", full)
    assert_rejected(
        data_dir, planted, r"the disk holding .* is full: dataset 'mine' was not imported \(nothing was kept\)"
    )
    monkeypatch.undo()  # space again: the same import now works, nothing of the failed one in its way
    import_dataset(planted, name="mine", data_dir=data_dir)
    assert list_datasets(data_dir)[0]["count"] == 2000
