"""Built-in datasets: a small real build of HPO and ICD-10-CM, checked against the ontologies."""

import errno
import json
import shutil

import numpy as np
import pytest
import simple_icd_10_cm as icd

from sparsebin.datasets import (
    BUILTIN_DATASETS,
    build_dataset,
    build_named,
    builtin,
    list_datasets,
    load_dataset,
    store,
)
from sparsebin.datasets.store import file_sha256
from sparsebin.errors import DataError

SAMPLE = 200


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real build of ~200 HPO terms and ~200 ICD codes with the real model."""
    data_dir = tmp_path_factory.mktemp("data")
    calls = {name: [] for name in BUILTIN_DATASETS}
    for name in BUILTIN_DATASETS:
        build_dataset(
            name,
            limit=SAMPLE,
            data_dir=data_dir,
            progress=lambda done, total, name=name: calls[name].append((done, total)),
        )
    return data_dir, calls


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_files_shapes_and_unit_norms(built, name):
    data_dir, _ = built
    dataset = load_dataset(name, data_dir=data_dir)
    assert isinstance(dataset.embeddings, np.memmap)
    assert dataset.embeddings.dtype == np.float32
    assert dataset.embeddings.shape == (SAMPLE, 384)
    assert len(dataset.concepts) == SAMPLE
    np.testing.assert_allclose(np.linalg.norm(dataset.embeddings, axis=1), 1.0, atol=1e-4)
    assert dataset.meta["count"] == SAMPLE and dataset.meta["dimension"] == 384
    assert dataset.meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "sentence-transformers" in dataset.meta["package_versions"]
    checksum = dataset.meta["checksum"]["embeddings.npy"]
    assert checksum == "sha256:" + file_sha256(dataset.path / "embeddings.npy")
    assert dataset.concepts["id"].is_unique


def test_progress_reaches_total(built):
    _, calls = built
    for name in BUILTIN_DATASETS:
        assert calls[name][0] == (0, SAMPLE)
        assert calls[name][-1] == (SAMPLE, SAMPLE)


def test_similar_names_are_close(built):
    """The embeddings mean something: a concept is nearest to itself, and near its kin."""
    data_dir, _ = built
    dataset = load_dataset("hpo", data_dir=data_dir)
    vectors = np.asarray(dataset.embeddings)
    model = builtin.load_model()
    query = model.encode([dataset.concepts["name"][5]], normalize_embeddings=True)[0]
    assert int(np.argmax(vectors @ query)) == 5


def test_hpo_schema_categories_and_depths(built):
    data_dir, _ = built
    concepts = load_dataset("hpo", data_dir=data_dir).concepts
    assert list(concepts.columns[:6]) == [
        "id",
        "name",
        "source",
        "category",
        "depth",
        "parents",
    ]
    assert {"definition", "synonyms"} <= set(concepts.columns)
    assert (concepts["source"] == "HPO").all()
    assert concepts["id"].iloc[0] == "HP:0000001" and concepts["depth"].iloc[0] == 0
    ontology = builtin.load_hpo()
    abnormality = ontology.get_hpo_object("HP:0000118")
    branches = {child.name: child for child in abnormality.children}
    for row in concepts.iloc[1:].itertuples():
        term = ontology.get_hpo_object(row.id)
        assert not term.is_obsolete
        assert row.name == term.name
        assert row.depth == term.shortest_path_to_root()
        assert sorted(row.parents) == sorted(parent.id for parent in term.parents)
        if row.category in branches and row.id != branches[row.category].id:
            assert term.child_of(branches[row.category])
    seizure_like = concepts[concepts["category"] == "Abnormality of the nervous system"]
    assert len(seizure_like) > 0
    assert concepts["category"].nunique() >= 10


def test_hpo_known_term_category():
    concepts = builtin.hpo_concepts()
    seizure = concepts.set_index("id").loc["HP:0001250"]
    assert seizure["category"] == "Abnormality of the nervous system"
    assert seizure["depth"] == 4
    assert "Epilepsy" in list(seizure["synonyms"])
    assert seizure["definition"].startswith("A seizure is")
    inheritance = concepts.set_index("id").loc["HP:0000006"]
    assert inheritance["category"] == "Mode of inheritance"
    assert 18000 < len(concepts) < 21000


def test_icd_schema_chapters_blocks_and_leaves(built):
    data_dir, _ = built
    concepts = load_dataset("icd10cm", data_dir=data_dir).concepts
    assert {"block", "is_leaf", "kind"} <= set(concepts.columns)
    assert (concepts["source"] == "ICD-10-CM").all()
    for row in concepts.itertuples():
        code = row.id.split("-")[0] if row.kind == "block" and len(set(row.id.split("-"))) == 1 else row.id
        as_block = row.kind == "block"
        ancestors = icd.get_ancestors(code, prioritize_blocks=as_block)
        assert row.depth == len(ancestors)
        assert row.name == icd.get_description(code, prioritize_blocks=as_block)
        chapter = ancestors[-1] if ancestors else code
        assert row.category == icd.get_description(chapter)
        assert row.is_leaf == (not icd.get_children(code, prioritize_blocks=as_block))
    assert concepts["kind"].iloc[0] == "chapter" and concepts["depth"].iloc[0] == 0
    assert concepts["category"].nunique() >= 15  # the sample spreads over the chapters
    assert concepts["is_leaf"].any() and not concepts["is_leaf"].all()


def test_icd_single_category_blocks_get_unique_ids():
    concepts = builtin.icd10cm_concepts().set_index("id")
    assert concepts.index.is_unique
    assert concepts.loc["B10-B10", "kind"] == "block"
    assert concepts.loc["B10", "kind"] == "category"
    assert list(concepts.loc["B10", "parents"]) == ["B10-B10"]
    assert concepts.loc["B10.01", "block"] == "B10-B10"
    assert 95000 < len(concepts) < 100000


def test_finished_build_is_not_rebuilt(built, monkeypatch):
    data_dir, _ = built
    before = (data_dir / "hpo" / "meta.json").read_text()
    monkeypatch.setattr(builtin, "encode_batch", _explode)
    assert build_dataset("hpo", limit=SAMPLE, data_dir=data_dir) == data_dir / "hpo"
    assert (data_dir / "hpo" / "meta.json").read_text() == before


def test_list_datasets(built):
    data_dir, _ = built
    listed = {item["name"]: item for item in list_datasets(data_dir)}
    assert set(listed) == {"hpo", "icd10cm"}
    assert listed["hpo"]["count"] == SAMPLE and listed["hpo"]["dim"] == 384
    assert listed["icd10cm"]["source"] == "ICD-10-CM"
    assert listed["hpo"]["path"] == data_dir / "hpo"


def _explode(*args, **kwargs):
    raise RuntimeError("encoder crashed")


def test_interrupted_build_leaves_no_dataset(tmp_path, monkeypatch):
    calls = []
    real_encode = builtin.encode_batch

    def crash_on_third_batch(model, texts, batch_size):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real_encode(model, texts, batch_size)

    monkeypatch.setattr(builtin, "encode_batch", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="power cut"):
        build_dataset("icd10cm", limit=100, batch_size=16, data_dir=tmp_path)
    assert len(calls) == 3
    assert not (tmp_path / "icd10cm").exists()
    assert [path.name for path in tmp_path.iterdir()] == []
    assert list_datasets(tmp_path) == []


def test_interrupted_rebuild_keeps_the_old_dataset(built, monkeypatch):
    data_dir, _ = built
    before = json.loads((data_dir / "icd10cm" / "meta.json").read_text())
    monkeypatch.setattr(builtin, "encode_batch", _explode)
    with pytest.raises(RuntimeError):
        build_dataset("icd10cm", force=True, limit=50, data_dir=data_dir)
    assert load_dataset("icd10cm", data_dir=data_dir).meta == before
    assert not [path for path in data_dir.iterdir() if path.name.startswith(".writing")]


def test_unknown_dataset_names():
    with pytest.raises(DataError, match="unknown built-in dataset 'snomed'"):
        build_dataset("snomed")
    with pytest.raises(DataError, match="no dataset 'nothing'"):
        load_dataset("nothing")


@pytest.fixture
def parts(built, tmp_path):
    """A data folder holding copies of the small hpo and icd10cm builds, for the joined dataset."""
    data_dir, _ = built
    for name in BUILTIN_DATASETS:
        shutil.copytree(data_dir / name, tmp_path / name)
    return tmp_path


def test_joined_dataset_holds_both_terminologies_row_for_row(parts, monkeypatch):
    monkeypatch.setattr(builtin, "encode_batch", _explode)  # nothing is embedded again
    calls = []
    folder = build_named("hpo-icd10cm", limit=SAMPLE, data_dir=parts, progress=lambda *call: calls.append(call))
    joined = load_dataset("hpo-icd10cm", data_dir=parts)
    hpo, icd10cm = (load_dataset(name, data_dir=parts) for name in BUILTIN_DATASETS)
    assert folder == parts / "hpo-icd10cm" and joined.embeddings.shape == (2 * SAMPLE, 384)
    np.testing.assert_array_equal(joined.embeddings, np.concatenate([hpo.embeddings, icd10cm.embeddings]))
    assert joined.concepts["source"].value_counts().to_dict() == {"HPO": SAMPLE, "ICD-10-CM": SAMPLE}
    assert joined.concepts["id"].tolist() == hpo.concepts["id"].tolist() + icd10cm.concepts["id"].tolist()
    assert (
        joined.concepts["parents"].tolist() == hpo.concepts["parents"].tolist() + icd10cm.concepts["parents"].tolist()
    )
    assert joined.meta["source"] == "HPO + ICD-10-CM" and joined.meta["count"] == 2 * SAMPLE
    assert joined.meta["checksum"]["embeddings.npy"] == "sha256:" + file_sha256(folder / "embeddings.npy")
    assert {name: part["rows"] for name, part in joined.meta["parts"].items()} == {"hpo": SAMPLE, "icd10cm": SAMPLE}
    assert calls[0] == (0, 2 * SAMPLE) and calls[-1] == (2 * SAMPLE, 2 * SAMPLE)


def test_a_whole_part_serves_a_sample_join(parts):
    for name in BUILTIN_DATASETS:  # the copies now read as whole builds
        meta = json.loads((parts / name / "meta.json").read_text())
        (parts / name / "meta.json").write_text(json.dumps(meta | {"limit": None}))
    joined = load_dataset(build_named("hpo-icd10cm", limit=20, data_dir=parts))
    hpo = load_dataset("hpo", data_dir=parts)
    expected = builtin.sample_rows(hpo.concepts, 20)["id"].tolist()
    assert joined.concepts["id"].tolist()[:20] == expected and len(joined.concepts) == 40
    row = int(np.flatnonzero(hpo.concepts["id"] == expected[5])[0])
    np.testing.assert_array_equal(joined.embeddings[5], hpo.embeddings[row])


def test_a_part_of_another_sample_is_refused_and_nothing_is_written(parts):
    with pytest.raises(DataError, match=r"holds a sample of 200 concepts, and the join asks for every concept"):
        build_named("hpo-icd10cm", data_dir=parts)
    assert sorted(path.name for path in parts.iterdir()) == ["hpo", "icd10cm"]


def test_a_join_that_fails_while_writing_leaves_no_dataset(parts, monkeypatch):
    def disk_full(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.NpyWriter, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build_named("hpo-icd10cm", limit=SAMPLE, data_dir=parts)
    assert sorted(path.name for path in parts.iterdir()) == ["hpo", "icd10cm"]
    with pytest.raises(DataError, match="unknown built-in dataset 'snomed'; choose one of hpo, icd10cm, hpo-icd10cm"):
        build_named("snomed", data_dir=parts)
