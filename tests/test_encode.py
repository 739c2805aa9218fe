"""Any phrase to bits: `encode` and the phrase view, on a small dataset embedded with the packaged MiniLM."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsebin.cli import main
from sparsebin.config import TrainConfig
from sparsebin.datasets import import_dataset, load_dataset
from sparsebin.datasets.builtin import MODEL_NAME, encode_batch, load_model
from sparsebin.datasets.store import EMBEDDINGS_FILE, write_concepts, write_meta
from sparsebin.errors import PhraseError
from sparsebin.interpret.bits import RunContext, bit_table
from sparsebin.interpret.ontology import format_q
from sparsebin.interpret.phrases import embed_phrases, phrase_view
from sparsebin.jobs.queue import Store
from sparsebin.jobs.worker import run_worker
from sparsebin.search.codes import unpack_bits

ORGANS = ["heart", "lung", "liver", "kidney", "brain", "eye", "skin", "bone", "muscle", "ear", "stomach", "blood"]
PATTERNS = ["Abnormality of the {}", "Enlarged {}", "Inflammation of the {}", "Tumour of the {}", "Pain in the {}"]
SEIZURES = ["Febrile seizures", "Absence seizures", "Focal seizures", "Tonic seizures", "Myoclonic seizures"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """65 medical-sounding names embedded with MiniLM (meta names the model), and one finished 64-bit run."""
    root = tmp_path_factory.mktemp("encode")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSEBIN_HOME", str(root / "home"))
        patch.setenv("SPARSEBIN_DATA", str(root / "data"))
        names = [pattern.format(organ) for organ in ORGANS for pattern in PATTERNS] + SEIZURES
        categories = [organ for organ in ORGANS for _ in PATTERNS] + ["brain"] * len(SEIZURES)
        folder = Path(os.environ["SPARSEBIN_DATA"]) / "minilm"
        folder.mkdir(parents=True)
        np.save(folder / EMBEDDINGS_FILE, encode_batch(load_model(), names, batch_size=64))
        concepts = pd.DataFrame(
            {
                "id": [f"M:{row:03d}" for row in range(len(names))],
                "name": names,
                "source": "test",
                "category": categories,
                "depth": 1,
                "parents": [[] for _ in names],
            }
        )
        write_concepts(folder, concepts)
        write_meta(folder, {"name": "minilm", "model": MODEL_NAME, "count": len(names), "dimension": 384})
        store = Store()
        # Rigid TopK: on 65 rows the aligned run keeps a few always-on bits, which would tie every code distance.
        config = TrainConfig(
            n_bits=64, k=6, sparsity="hard-topk", epochs=60, batch_size=16, lr=3e-3, val_fraction=0.0, device="cpu"
        )
        job = store.submit("minilm", config)
        assert run_worker(once=True, device="cpu") == 1
        assert store.job(job.id).status.name == "DONE", store.job(job.id).error
        context = RunContext.load(store.run_folder(job.run_id), load_dataset("minilm"))
    return {"root": root, "run_id": job.run_id, "context": context, "names": names}


@pytest.fixture
def in_world(world, monkeypatch):
    monkeypatch.setenv("SPARSEBIN_HOME", str(world["root"] / "home"))
    monkeypatch.setenv("SPARSEBIN_DATA", str(world["root"] / "data"))
    return world


def concept_bits(context: RunContext, name: str) -> set[int]:
    row = int(np.flatnonzero(context.concepts["name"] == name)[0])
    return set(np.flatnonzero(unpack_bits(context.codes[row : row + 1], context.n_bits)[0]).tolist())


def test_a_phrase_close_to_a_concept_shares_most_of_its_bits(in_world):
    context = in_world["context"]
    (vector,) = embed_phrases(["a febrile seizure"], context_meta(in_world))
    view = phrase_view(context, "a febrile seizure", vector, k=5)
    known = concept_bits(context, "Febrile seizures")
    phrase = set(view.bits.tolist())
    assert len(phrase & known) > len(known) / 2, (phrase, known)
    assert view.dense_neighbours["name"].iloc[0] == "Febrile seizures"
    assert view.code_neighbours["name"].iloc[0] == "Febrile seizures"
    assert list(view.active_bits["bit"].sort_values()) == sorted(phrase)
    table = bit_table(context).set_index("bit").loc[view.active_bits["bit"]]  # the Bits page's figures
    np.testing.assert_array_equal(view.active_bits["corrected_coherence"], table["corrected_coherence"])
    np.testing.assert_array_equal(view.active_bits["q_value"], table["q_value"])
    assert 0 <= view.shared <= 5 and view.overlap == view.shared / 5
    far = concept_bits(context, "Pain in the ear")
    assert len(phrase & far) < len(phrase & known)  # an unrelated concept shares fewer


def context_meta(world) -> dict:
    return load_dataset("minilm").meta


def test_an_empty_phrase_is_refused(in_world):
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(PhraseError, match="type a phrase: an empty phrase has no embedding and no bits."):
            embed_phrases([empty], context_meta(in_world))


def test_encode_command_prints_bits_labels_and_both_neighbour_lists(in_world, capsys):
    assert main(["encode", in_world["run_id"], "febrile seizure", "enlarged heart", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "'febrile seizure':" in out and "'enlarged heart':" in out
    assert "nearest 3 concepts by code (jaccard distance):" in out
    assert "nearest 3 concepts by dense embedding (cosine):" in out
    assert "the two lists share" in out
    assert main(["encode", in_world["run_id"], "febrile seizure", "--json"]) == 0
    (view,) = json.loads(capsys.readouterr().out)
    assert view["dense_neighbours"][0]["name"] == "Febrile seizures"
    assert len(view["bits"]) == len(view["active_bits"]) and all(0 <= bit < 64 for bit in view["bits"])


def test_encode_command_prints_each_bits_corrected_coherence_and_a_readable_q_value(in_world, capsys):
    assert main(["encode", in_world["run_id"], "febrile seizure"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  bit ")]
    table = bit_table(in_world["context"]).set_index("bit")
    assert lines
    for line in lines:
        bit = int(line.split()[1])
        corrected, q_value = table.loc[bit, ["corrected_coherence", "q_value"]]
        assert line.endswith(f"corrected coherence {corrected:.2f}, q-value {format_q(q_value)})"), line
        assert "0.000000" not in line


def test_encode_command_refuses_an_empty_phrase(in_world, capsys):
    assert main(["encode", in_world["run_id"], " "]) == 2
    assert capsys.readouterr().err.strip() == "error: type a phrase: an empty phrase has no embedding and no bits."


def test_a_dataset_imported_without_a_model_says_so(tmp_path, capsys):
    rows = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "own.npy", rows)
    import_dataset(tmp_path / "own.npy", name="own")
    store = Store()
    job = store.submit("own", TrainConfig(n_bits=16, k=2, epochs=1, batch_size=8, device="cpu"))
    run_worker(once=True, device="cpu")
    assert main(["encode", job.run_id, "anything"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: dataset own was imported without a model, so a phrase cannot be placed among its concepts; "
        "look up its own concepts by name or id instead."
    )
