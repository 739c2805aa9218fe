"""Every way a file or value arrives broken gets one specific sentence, and nothing is half-written.

Each case names what a user would hand in by mistake: an empty or truncated file,
a file in another format under a supported extension, a header that lies about
its shape, text in another encoding, a folder where a file belongs, a name that
is taken. The sentence is checked word for word where it carries the fault.
"""

import json

import numpy as np
import pandas as pd
import pytest

from sparsebin import runfolder
from sparsebin.cli import main
from sparsebin.datasets import import_dataset, list_datasets, load_dataset
from sparsebin.datasets.importing import import_uploaded
from sparsebin.errors import DataError, RunFileError
from sparsebin.jobs.queue import Store


def refused(data_dir, source, sentence, **kwargs):
    """The import raises exactly this sentence (as a substring) and leaves the data folder as it was."""
    before = sorted(path.name for path in data_dir.iterdir()) if data_dir.exists() else []
    kwargs.setdefault("name", "mine")
    with pytest.raises(DataError) as caught:
        import_dataset(source, data_dir=data_dir, **kwargs)
    assert sentence in str(caught.value), str(caught.value)
    after = sorted(path.name for path in data_dir.iterdir()) if data_dir.exists() else []
    assert after == before
    return str(caught.value)


# -- embeddings files


def test_empty_npy(tmp_path, data_dir):
    (tmp_path / "empty.npy").write_bytes(b"")
    refused(data_dir, tmp_path / "empty.npy", "empty.npy: the file is empty (0 bytes)")


def test_truncated_npy_names_both_sizes(tmp_path, data_dir, vectors):
    np.save(tmp_path / "cut.npy", vectors)
    whole = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-10])
    refused(
        data_dir,
        tmp_path / "cut.npy",
        "cut.npy: the header announces 6 x 4 float32 values (96 bytes) but only 86 bytes follow; the file is truncated",
    )


def test_header_that_understates_the_data(tmp_path, data_dir, vectors):
    np.save(tmp_path / "lies.npy", vectors)
    (tmp_path / "lies.npy").write_bytes((tmp_path / "lies.npy").read_bytes() + b"\0" * 16)
    refused(data_dir, tmp_path / "lies.npy", "but 112 bytes follow; the header does not match the data")


def test_header_only_npy_is_truncated(tmp_path, data_dir, vectors):
    np.save(tmp_path / "head.npy", vectors)
    data = (tmp_path / "head.npy").read_bytes()
    (tmp_path / "head.npy").write_bytes(data[: len(data) - vectors.nbytes])
    refused(data_dir, tmp_path / "head.npy", "but only 0 bytes follow; the file is truncated")


def test_csv_renamed_to_npy(tmp_path, data_dir, vectors):
    pd.DataFrame(vectors).to_csv(tmp_path / "table.npy", index=False)
    refused(data_dir, tmp_path / "table.npy", "table.npy: not a NumPy .npy file (it does not begin with the .npy")


def test_damaged_npy_header(tmp_path, data_dir):
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4, }    \n")
    refused(data_dir, tmp_path / "broken.npy", "broken.npy: the .npy header is damaged")


def test_empty_and_truncated_npz(tmp_path, data_dir, vectors):
    (tmp_path / "empty.npz").write_bytes(b"")
    refused(data_dir, tmp_path / "empty.npz", "empty.npz: the file is empty (0 bytes)")
    np.savez(tmp_path / "cut.npz", embeddings=vectors)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:100])
    refused(data_dir, tmp_path / "cut.npz", "cut.npz: not a readable .npz archive (no zip directory at its end")


def test_truncated_or_renamed_parquet(tmp_path, data_dir, vectors):
    pd.DataFrame(vectors, columns=list("abcd")).to_parquet(tmp_path / "cut.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "cut.parquet").read_bytes()[:50])
    refused(data_dir, tmp_path / "cut.parquet", "cut.parquet: not a readable Parquet file (its footer is missing")
    pd.DataFrame(vectors).to_csv(tmp_path / "table.parquet", index=False)
    refused(data_dir, tmp_path / "table.parquet", "table.parquet: not a readable Parquet file")


def test_csv_in_latin1_names_the_byte(tmp_path, data_dir):
    (tmp_path / "latin.csv").write_bytes("caf\u00e9,b\n1,2\n3,4\n".encode("latin-1"))
    refused(data_dir, tmp_path / "latin.csv", "latin.csv: not UTF-8 text (byte 0xe9 at byte 3); save it as UTF-8")


def test_csv_of_only_a_header_line_is_refused_in_one_sentence(tmp_path, data_dir):
    (tmp_path / "header.csv").write_text("a,b,c\n")
    refused(data_dir, tmp_path / "header.csv", "header.csv: fewer than 2 rows (a header line, a, b, c, and no data)")


def test_csv_in_utf16(tmp_path, data_dir):
    (tmp_path / "wide.csv").write_text("a,b\n1,2\n3,4\n", encoding="utf-16")
    refused(data_dir, tmp_path / "wide.csv", "wide.csv: the text is UTF-16; save it as UTF-8")


def test_binary_file_renamed_to_csv(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "binary.csv").write_bytes((tmp_path / "x.npy").read_bytes())
    refused(data_dir, tmp_path / "binary.csv", "binary.csv: not a text file (a NUL byte at byte")


def test_csv_with_a_byte_order_mark_imports(tmp_path, data_dir, vectors):
    text = pd.DataFrame(vectors, columns=list("abcd")).to_csv(index=False)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    np.testing.assert_allclose(
        load_dataset(import_dataset(tmp_path / "bom.csv", name="bom", data_dir=data_dir)).embeddings, vectors, rtol=1e-6
    )


def test_folder_named_like_a_file(tmp_path, data_dir):
    (tmp_path / "vectors.npy").mkdir()
    refused(data_dir, tmp_path / "vectors.npy", "vectors.npy: is a folder, not a file")


# -- labels files


def test_empty_labels(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "labels.csv").write_bytes(b"")
    refused(
        data_dir, tmp_path / "x.npy", "labels.csv: the file is empty (0 bytes)", labels_file=tmp_path / "labels.csv"
    )


def test_labels_header_without_rows(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "labels.csv").write_text("id,name\n")
    refused(
        data_dir,
        tmp_path / "x.npy",
        "labels.csv: 0 label rows but the embeddings have 6 rows",
        labels_file=tmp_path / "labels.csv",
    )


def test_labels_in_latin1(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    rows = "id,name\n" + "".join(f"{i},caf\u00e9 {i}\n" for i in range(6))
    (tmp_path / "labels.csv").write_bytes(rows.encode("latin-1"))
    refused(data_dir, tmp_path / "x.npy", "labels.csv: not UTF-8 text (byte 0xe9", labels_file=tmp_path / "labels.csv")


def test_embeddings_given_as_labels(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    pd.DataFrame(vectors).to_csv(tmp_path / "numbers.csv", index=False)
    refused(
        data_dir,
        tmp_path / "x.npy",
        "numbers.csv: labels need columns 'id' and 'name'; missing id, name",
        labels_file=tmp_path / "numbers.csv",
    )


def test_csv_renamed_to_parquet_labels(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    pd.DataFrame({"id": range(6), "name": list("abcdef")}).to_csv(tmp_path / "labels.parquet", index=False)
    refused(
        data_dir,
        tmp_path / "x.npy",
        "labels.parquet: not a readable Parquet file",
        labels_file=tmp_path / "labels.parquet",
    )


def test_labels_folder(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "labels.csv").mkdir()
    refused(data_dir, tmp_path / "x.npy", "labels.csv: is a folder, not a file", labels_file=tmp_path / "labels.csv")


# -- names


def test_a_taken_name_is_never_replaced_without_force(tmp_path, data_dir, vectors, capsys):
    np.save(tmp_path / "first.npy", vectors)
    np.save(tmp_path / "second.npy", vectors * 2)
    assert main(["import-data", str(tmp_path / "first.npy"), "--name", "mine"]) == 0
    capsys.readouterr()
    assert main(["import-data", str(tmp_path / "second.npy"), "--name", "mine"]) == 2
    assert "a dataset named 'mine' already exists; choose another name, or ask to replace it (--force" in (
        capsys.readouterr().err
    )
    np.testing.assert_array_equal(load_dataset("mine").embeddings, vectors)
    assert main(["import-data", str(tmp_path / "second.npy"), "--name", "mine", "--force"]) == 0
    np.testing.assert_array_equal(load_dataset("mine").embeddings, vectors * 2)


def test_import_data_of_an_empty_npy_prints_a_sentence_not_a_traceback(tmp_path, capsys):
    (tmp_path / "empty.npy").write_bytes(b"")
    assert main(["import-data", str(tmp_path / "empty.npy"), "--name", "mine"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: empty.npy: the file is empty (0 bytes)"


# -- uploads


def test_uploaded_embeddings_and_labels_with_the_same_file_name(tmp_path, data_dir, vectors):
    """Two files called data.csv (an embeddings table and a labels table) are both read, each as itself."""
    embeddings = pd.DataFrame(vectors, columns=list("abcd")).to_csv(index=False).encode()
    labels = pd.DataFrame({"id": [f"C{i}" for i in range(6)], "name": list("uvwxyz")}).to_csv(index=False).encode()
    folder = import_uploaded(("data.csv", embeddings), labels=("data.csv", labels), name="same", data_dir=data_dir)
    dataset = load_dataset(folder)
    np.testing.assert_allclose(dataset.embeddings, vectors, rtol=1e-6)
    assert dataset.concepts["id"].tolist() == [f"C{i}" for i in range(6)]
    assert [path.name for path in data_dir.iterdir()] == ["same"]  # the staging folder is gone


def test_a_refused_upload_leaves_nothing_in_the_data_folder(data_dir):
    with pytest.raises(DataError, match="empty.npy: the file is empty"):
        import_uploaded(("empty.npy", b""), name="mine", data_dir=data_dir)
    assert list(data_dir.iterdir()) == []


def test_an_upload_name_with_folders_stays_in_the_data_folder(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    import_uploaded(("../../escape.npy", (tmp_path / "x.npy").read_bytes()), name="mine", data_dir=data_dir)
    assert not (tmp_path / "escape.npy").exists()
    assert [item["name"] for item in list_datasets(data_dir)] == ["mine"]


# -- submit and train given files, and config files


def test_submit_imports_an_npy_path_under_a_derived_name_once(tmp_path, vectors, capsys):
    rows = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "my vectors.npy", rows)
    assert main(["submit", str(tmp_path / "my vectors.npy"), "--n-bits", "16", "--k", "2", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "imported my vectors.npy as dataset 'my-vectors' (40 rows)" in out
    assert "folder name" not in out
    again = ["--again"]  # the same run on the same data: queued again on purpose
    assert (
        main(["submit", str(tmp_path / "my vectors.npy"), "--n-bits", "16", "--k", "2", "--batch-size", "8", *again])
        == 0
    )
    assert "using dataset 'my-vectors', imported from my vectors.npy before (40 rows)" in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "my vectors.npy", rows[:30])  # same file name, another file: a new name, the first kept
    assert main(["submit", str(other / "my vectors.npy"), "--n-bits", "16", "--k", "2", "--batch-size", "8"]) == 0
    assert "imported my vectors.npy as dataset 'my-vectors-2' (30 rows)" in capsys.readouterr().out
    assert [job.dataset for job in Store().jobs()] == ["my-vectors-2", "my-vectors", "my-vectors"]
    assert load_dataset("my-vectors").embeddings.shape == (40, 8)


def test_submit_of_a_missing_path_says_what_was_expected(tmp_path, capsys):
    assert main(["submit", str(tmp_path / "nowhere" / "x"), "--n-bits", "16", "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "is neither a dataset name nor a dataset folder" in err and "folder name" not in err
    assert main(["submit", str(tmp_path / "missing.npy")]) == 2
    assert f"error: {tmp_path / 'missing.npy'}: no such file" in capsys.readouterr().err


def test_train_reads_a_csv_path_and_says_so(tmp_path, capsys):
    rows = np.random.default_rng(2).normal(size=(60, 8)).astype(np.float32)
    pd.DataFrame(rows).to_csv(tmp_path / "rows.csv", index=False)
    args = ["train", str(tmp_path / "rows.csv"), "--n-bits", "16", "--k", "2", "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "run"), "--queries", "10"]) == 0
    assert "read rows.csv as it is (60 rows x 8 dims; not stored as a dataset)" in capsys.readouterr().out
    assert np.load(tmp_path / "run" / "codes.npy").shape == (60, 2)


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (None, "--config config.json: is a folder, not a config.json file."),
        ("", "--config config.json: the file is empty; a config is a JSON object of settings."),
        ('{"n_bits": 64,', "--config config.json: not valid JSON (Expecting property name enclosed in double quotes"),
        ("[64, 4]", "--config config.json: holds a JSON list, not an object of settings"),
        ('{"bits": 64}', "unknown setting 'bits'; known settings are"),
        ('{"n_bits": "many"}', "n_bits must be a positive integer, got 'many'."),
        (b"\xff\xfe{}", "--config config.json: not UTF-8 text; a config is a JSON file."),
    ],
)
def test_bad_config_files(tmp_path, vectors, capsys, content, sentence):
    import_dataset_for_submit(tmp_path, vectors)
    path = tmp_path / "config.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["submit", "mine", "--config", str(path)]) == 2
    assert sentence in capsys.readouterr().err
    assert Store().jobs() == []


def import_dataset_for_submit(tmp_path, vectors):
    np.save(tmp_path / "x.npy", np.tile(vectors, (10, 1)))
    import_dataset(tmp_path / "x.npy", name="mine")


# -- run folders on disk


@pytest.mark.parametrize(
    ("file", "damage", "reader", "sentence"),
    [
        ("codes.npy", b"", runfolder.load_codes, "has an empty or truncated codes.npy."),
        ("codes.npy", b"not numpy", runfolder.load_codes, "has a damaged codes.npy"),
        ("config.json", b"", runfolder.load_config, "has a damaged config.json"),
        ("config.json", b"[1, 2]", runfolder.load_config, "has a damaged config.json"),
        ("metrics.json", b'{"train": ', runfolder.load_metrics, "has a damaged metrics.json"),
        ("model.safetensors", b"\x00" * 12, runfolder.load_model, "has a damaged model.safetensors"),
    ],
)
def test_damaged_run_files(tmp_path, file, damage, reader, sentence):
    folder = tmp_path / "20260101-000000-abcdef"
    folder.mkdir()
    (folder / file).write_bytes(damage)
    with pytest.raises(RunFileError) as caught:
        reader(folder)
    assert f"run {folder.name} {sentence}" in str(caught.value)


def test_a_run_file_that_is_a_folder(tmp_path):
    folder = tmp_path / "run"
    (folder / "metrics.json").mkdir(parents=True)
    with pytest.raises(RunFileError, match="run run has no metrics.json"):
        runfolder.load_metrics(folder)


def test_meta_json_is_written_by_every_import(tmp_path, data_dir, vectors):
    np.save(tmp_path / "x.npy", vectors)
    folder = import_dataset(tmp_path / "x.npy", name="mine", data_dir=data_dir)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source_stat"]["size"] == (tmp_path / "x.npy").stat().st_size


# -- dataset folders on disk


@pytest.mark.parametrize(
    ("file", "damage"),
    [("embeddings.npy", b""), ("embeddings.npy", b"junk"), ("concepts.parquet", b"junk"), ("meta.json", b"{")],
)
def test_a_damaged_dataset_folder_is_named_not_a_traceback(tmp_path, data_dir, vectors, file, damage):
    np.save(tmp_path / "x.npy", vectors)
    folder = import_dataset(tmp_path / "x.npy", name="mine", data_dir=data_dir)
    (folder / file).write_bytes(damage)
    with pytest.raises(DataError) as caught:
        load_dataset("mine", data_dir=data_dir)
    assert str(caught.value) == f"dataset mine has a damaged {file}; rebuild or re-import it"
    listed = [item["name"] for item in list_datasets(data_dir)]
    assert listed == ([] if file == "meta.json" else ["mine"])
