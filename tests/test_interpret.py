"""Bit labels, profiles and concept views on a hand-built ontology where the right answers are known.

The ontology (parents in brackets; C1 has two parents, X an ancestor outside the table):

    R (no category)
    +- A Heart  +- A1 [A] +- A1a [A1]     Heart: A, A1, A2, A3, A1a
    |           +- A2, A3 [A]
    +- B Lung   +- B1, B2, B3 [B]         Lung: B, B1, B2, B3
    +- C Skin   +- C1 [C, B], C2 [C]      Skin: C, C1, C2, X
    X Skin [EXT]

The model's logits are planted exactly (the encoder solves X w = u), so the
stored codes are the planted firing sets below.
"""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sparsebin import runfolder
from sparsebin.config import TrainConfig
from sparsebin.errors import RunFileError
from sparsebin.interpret import bits as interpret
from sparsebin.interpret.bits import (
    Concept,
    RunContext,
    bit_profile,
    bit_table,
    concept_view,
    depth_analysis,
    find_concepts,
    rank_bits,
)
from sparsebin.interpret.ontology import ancestor_index, best_ancestors, best_labels, category_index
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.search.codes import pack_bits

CONCEPTS = [  # id, name, category, depth, parents
    ("R", "All", "", 0, []),
    ("A", "Heart anomaly", "Heart", 1, ["R"]),
    ("A1", "Septal defect", "Heart", 2, ["A"]),
    ("A2", "Valve defect", "Heart", 2, ["A"]),
    ("A3", "Arrhythmia", "Heart", 2, ["A"]),
    ("A1a", "Atrial septal defect", "Heart", 3, ["A1"]),
    ("B", "Lung anomaly", "Lung", 1, ["R"]),
    ("B1", "Asthma", "Lung", 2, ["B"]),
    ("B2", "Emphysema", "Lung", 2, ["B"]),
    ("B3", "Fibrosis", "Lung", 2, ["B"]),
    ("C", "Skin anomaly", "Skin", 1, ["R"]),
    ("C1", "Cyanosis", "Skin", 2, ["C", "B"]),
    ("C2", "Eczema", "Skin", 2, ["C"]),
    ("X", "Rash", "Skin", -1, ["EXT"]),
]
FIRING = {  # bit -> {concept: planted logit}; every other logit is -2
    0: {"A1": 3, "A2": 2, "A3": 1},
    1: {"A1": 1, "A2": 1, "B1": 1},
    2: {"B1": 2, "B2": 2, "B3": 2},
    3: {"B1": 1, "B2": 1},
    4: {"A1a": 1},
    5: {"A1": 0.5, "A1a": 2},
    7: {"B1": 1, "C1": 1},
    8: {"R": 1, "A2": 1, "B3": 1, "C2": 1, "X": 1},
}
N_BITS = 16


def make_concepts() -> pd.DataFrame:
    table = pd.DataFrame(CONCEPTS, columns=["id", "name", "category", "depth", "parents"])
    table["source"] = np.where(table["id"] == "X", "user", "HPO")
    return table


def make_run() -> tuple[BinaryAutoencoder, np.ndarray, np.ndarray, TrainConfig]:
    concepts = make_concepts()
    rows = {concept_id: row for row, concept_id in enumerate(concepts["id"])}
    logits = np.full((len(concepts), N_BITS), -2.0)
    for bit, fires in FIRING.items():
        for concept_id, value in fires.items():
            logits[rows[concept_id], bit] = value
    embeddings = np.random.default_rng(0).standard_normal((len(concepts), len(concepts))).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    model = BinaryAutoencoder(ModelSpec(d_in=len(concepts), n_bits=N_BITS, k=2)).eval()
    with torch.no_grad():
        model.encoder.weight.copy_(torch.from_numpy(np.linalg.solve(unit, logits).T.astype(np.float32)))
        model.encoder.bias.zero_()
        model.decoder.weight[:, 2] = torch.from_numpy(embeddings[rows["B2"]])  # bit 2 writes "Emphysema"
    codes = pack_bits(logits > 0)
    return model, codes, embeddings, TrainConfig(n_bits=N_BITS, k=2, normalize=True)


@pytest.fixture(scope="module")
def ctx() -> RunContext:
    model, codes, embeddings, config = make_run()
    return RunContext("hand", config, model, codes, make_concepts(), embeddings, N_BITS)


def test_bit_table_labels_each_bit_with_its_category_and_best_matching_node(ctx):
    table = bit_table(ctx).set_index("bit")
    assert list(table.index) == list(range(N_BITS))
    # The label is the node whose descendants match the bit's concepts best by F1, with both shares (it was
    # "Heart anomaly, 100 % of 3", the most specific ancestor covering half, before labels were chosen by F1).
    assert table.loc[0, "label"] == "Heart anomaly, 100 % of 3, 60 % of its 5"
    assert table.loc[0, ["category", "precision", "recall", "ancestor_id", "ancestor_share", "coherence"]].tolist() == [
        "Heart",
        1.0,
        3 / 5,
        "A",
        1.0,
        1.0,
    ]
    assert table.loc[0, ["ancestor_recall", "ancestor_f1", "ancestor_size"]].tolist() == [3 / 5, 0.75, 5]
    assert table.loc[0, "firing_rate"] == pytest.approx(3 / 14)
    assert (table.loc[1, "category"], table.loc[1, "ancestor_id"]) == ("Heart", "A")  # A1, A2 of A1, A2, B1
    assert table.loc[1, "precision"] == pytest.approx(2 / 3)
    assert table.loc[1, "coherence"] == pytest.approx((2 / 3 - 5 / 14) / (1 - 5 / 14))
    # A (2 of 3, F1 0.5) ties with the single concepts A2 and B1 (1 of 3, F1 0.5): the node covering more wins.
    assert table.loc[1, "ancestor_share"] == pytest.approx(2 / 3)
    assert table.loc[5, "ancestor_id"] == "A1"  # fires on A1 and its child: A1 is exactly its set, F1 1
    assert table.loc[4, "ancestor_id"] == "A1a"  # one concept, a leaf: itself
    # B1 and C1 (C1's second parent is B): by F1, B1 alone (2/3) matches better than B (4 of its 5: 4/7),
    # so the label is now "Asthma", not "Lung anomaly" as the most specific covering ancestor gave.
    assert table.loc[7, "ancestor_name"] == "Asthma"
    assert table.loc[6, "n_active"] == 0 and pd.isna(table.loc[6, "label"]) and np.isnan(table.loc[6, "coherence"])
    assert table.loc[6, "ancestor_level"] == 0  # a dead bit has no node


def test_two_threads_asking_for_the_bit_table_at_once_build_it_once(monkeypatch):
    model, codes, embeddings, config = make_run()
    fresh = RunContext("fresh", config, model, codes, make_concepts(), embeddings, N_BITS)
    builds, real = [], interpret.label_bits

    def slow_label_bits(*arguments):
        builds.append(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the second thread to arrive mid-build
        return real(*arguments)

    monkeypatch.setattr(interpret, "label_bits", slow_label_bits)
    tables = {}
    threads = [threading.Thread(target=lambda n=n: tables.update({n: bit_table(fresh)})) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_one_category_leaves_coherence_undefined_not_zero():
    concepts = pd.DataFrame({"category": ["eye"] * 4})
    members = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    labels = best_labels(members, category_index(concepts))
    assert labels.loc[0, "category"] == "eye" and labels.loc[0, "precision"] == 1.0
    assert labels["coherence"].isna().all()


def test_a_bit_at_chance_in_every_category_gets_no_label():
    concepts = pd.DataFrame({"category": ["eye", "eye", "limb", "limb"]})
    members = sp.csr_matrix(np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.float32))
    labels = best_labels(members, category_index(concepts))
    assert pd.isna(labels.loc[0, "category"]) and labels.loc[0, "coherence"] == 0.0  # fires for everything
    assert labels.loc[1, "category"] == "eye" and labels.loc[1, "coherence"] == pytest.approx(1 / 3)


def test_the_best_matching_node_is_no_broader_than_the_bit_and_follows_every_parent():
    concepts = make_concepts()
    rows = {concept_id: row for row, concept_id in enumerate(concepts["id"])}
    sets = [
        ["A", "A1", "A2", "A3", "A1a", "B1"],  # A's branch and one stray: A (F1 10/11), not R covering all six
        ["B1", "B2", "B3", "C1"],  # all under B only through C1's second parent
        ["R", "A", "A1", "A2", "A3", "A1a", "B", "B1", "B2", "B3", "C", "C1", "C2"],  # the whole tree: its root
    ]
    members = sp.csr_matrix(
        (
            np.ones(sum(map(len, sets)), np.float32),
            ([i for i, s in enumerate(sets) for _ in s], [rows[c] for s in sets for c in s]),
        ),
        shape=(len(sets), len(concepts)),
    )
    labels = best_ancestors(members, ancestor_index(concepts))
    assert labels["ancestor_id"].tolist() == ["A", "B", "R"]
    assert labels["ancestor_share"].tolist() == [5 / 6, 1.0, 1.0]
    assert labels["ancestor_f1"].tolist() == pytest.approx([10 / 11, 8 / 9, 1.0])


def test_levels_mark_roots_and_category_heads_top_level(ctx):
    levels = dict(zip(ctx.ancestors.ids, ctx.ancestors.levels, strict=True))
    # R is the root; A, B, C head their categories; X's only parent lies outside the table, which makes
    # both X (the head of its category here) and EXT (a root) top-level.
    assert {node for node, level in levels.items() if level == 1} == {"R", "A", "B", "C", "X", "EXT"}
    assert {node for node, level in levels.items() if level == 2} == {"A1", "A2", "A3", "B1", "B2", "B3", "C1", "C2"}
    assert levels["A1a"] == 3
    table = bit_table(ctx).set_index("bit")
    assert table.loc[8, "label"] == "All, 80 % of 5, 31 % of its 13"  # across every branch: the root
    assert table.loc[[8, 0, 5, 4], "ancestor_level"].tolist() == [1, 1, 2, 3]


def test_ranking_puts_clean_bits_first_and_the_mixed_bit_last(ctx):
    ranked = rank_bits(ctx, min_active=2)
    assert set(ranked["bit"]) == {0, 1, 2, 3, 5, 7, 8}
    assert set(ranked["bit"][:4]) == {0, 2, 3, 5}  # each fires inside one category
    # Last: bit 7, two concepts in two categories (raw coherence 0.3, below what two random concepts
    # score on average), then bit 8, five concepts across all four categories.
    assert ranked["bit"].tolist()[-2:] == [8, 7]
    assert (ranked["corrected_coherence"].iloc[-2:] < 0).all() and ranked["corrected_coherence"].iloc[0] > 0.5


def test_bit_profile_shows_strongest_concepts_quantiles_histogram_and_enrichment(ctx):
    profile = bit_profile(ctx, 0, top=3, quantiles=3, per_quantile=1)
    assert profile.n_active == 3 and profile.label.category == "Heart" and profile.label.category_size == 5
    assert profile.label.label == "Heart anomaly, 100 % of 3, 60 % of its 5"  # the best-F1 label with both shares
    assert profile.top_concepts["id"].tolist() == ["A1", "A2", "A3"]
    np.testing.assert_allclose(profile.top_concepts["logit"], [3, 2, 1], atol=1e-4)
    assert profile.quantile_concepts[["quantile", "id"]].values.tolist() == [[1, "A1"], [2, "A2"], [3, "A3"]]
    assert len(profile.sigmoid_edges) == len(profile.sigmoid_counts) + 1 and sum(profile.sigmoid_counts) == 14
    assert profile.sigmoid_counts[2] == 11  # sigmoid(-2) = 0.12: the concepts where it is off
    enrichment = profile.enrichment
    assert enrichment["category"].tolist() == ["Heart"]
    assert enrichment.iloc[0][["n_active_in_category", "precision", "recall"]].tolist() == [3, 1.0, 0.6]
    assert enrichment.iloc[0]["lift"] == pytest.approx(14 / 5)


def test_cofiring_and_decoder_neighbours(ctx):
    profile = bit_profile(ctx, 2)
    cofiring = profile.cofiring
    assert cofiring["bit"].tolist() == [3, 7, 1, 8]
    np.testing.assert_allclose(cofiring["jaccard"], [2 / 3, 1 / 4, 1 / 5, 1 / 7])
    # Bit 3 fires on B1 and B2: by F1 one of them (2/3) beats their parent B (4/7), so its label is no
    # longer "Lung anomaly, 100 % of 2" (the most specific covering ancestor); ties go to the first node.
    assert cofiring["label"].iloc[0] == "Asthma, 50 % of 2, 100 % of its 1"
    assert profile.decoder_neighbours["id"].iloc[0] == "B2"
    assert profile.decoder_neighbours["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_concept_view_lists_labelled_bits_and_both_neighbour_lists(ctx):
    view = concept_view(ctx, "A1", k=2, metric="jaccard")
    assert view.concept == Concept(id="A1", name="Septal defect", category="Heart", depth=2, definition=None)
    assert view.active_bits["bit"].tolist() == [0, 1, 5]  # strongest logit first, ties by bit
    assert view.active_bits["label"].tolist() == [  # best-F1 labels, with the node's side shown too
        "Heart anomaly, 100 % of 3, 60 % of its 5",
        "Heart anomaly, 67 % of 3, 40 % of its 5",
        "Septal defect, 100 % of 2, 100 % of its 2",
    ]
    np.testing.assert_allclose(view.active_bits["firing_rate"], [3 / 14, 3 / 14, 2 / 14])
    table = bit_table(ctx).set_index("bit").loc[[0, 1, 5]]  # what the Bits page shows for the same bits
    np.testing.assert_array_equal(view.active_bits["corrected_coherence"], table["corrected_coherence"])
    np.testing.assert_array_equal(view.active_bits["q_value"], table["q_value"])
    assert "coherence" not in view.active_bits  # raw coherence favours small bits; the page shows the corrected
    assert view.code_neighbours["id"].tolist() == ["A2", "A3"]
    jaccard = [1 - 2 / 4, 1 - 1 / 3]  # A1 {0,1,5} against A2 {0,1,8} and A3 {0}
    np.testing.assert_allclose(view.code_neighbours["distance"], jaccard, rtol=1e-6)
    unit = ctx.embeddings / np.linalg.norm(ctx.embeddings, axis=1, keepdims=True)
    cosines = unit @ unit[2]
    cosines[2] = -np.inf
    expected = np.argsort(-cosines)[:2]
    assert view.dense_neighbours["id"].tolist() == make_concepts()["id"].iloc[expected].tolist()
    shared = set(view.dense_neighbours["id"]) & set(view.code_neighbours["id"])
    assert view.overlap == len(shared) / 2


def test_concept_view_of_a_concept_without_active_bits(ctx):
    view = concept_view(ctx, "A", k=3)  # "Heart anomaly" has no bit of its own
    assert view.active_bits.empty and list(view.active_bits.columns) == [
        "bit",
        "label",
        "corrected_coherence",
        "q_value",
        "firing_rate",
        "logit",
    ]
    assert len(view.code_neighbours) == 3 and len(view.dense_neighbours) == 3


def test_concept_view_names_an_unknown_id(ctx):
    with pytest.raises(LookupError, match="no concept with id 'ZZ'"):
        concept_view(ctx, "ZZ")


def test_find_concepts_puts_the_exact_id_first():
    concepts = make_concepts()
    assert find_concepts(concepts, "a1")["id"].tolist() == ["A1", "A1a"]
    assert find_concepts(concepts, "SEPTAL")["id"].tolist() == ["A1", "A1a"]  # name starts with it first
    assert find_concepts(concepts, "anomaly", limit=2)["id"].tolist() == ["A", "B"]
    assert find_concepts(concepts, "  ").empty


def test_depth_analysis_reports_means_and_rank_correlation_per_source():
    concepts = pd.DataFrame(
        {
            "source": ["HPO"] * 4 + ["ICD-10-CM"] * 3 + ["user"],
            "depth": [1, 2, 3, 3, 0, 0, 0, -1],
        }
    )
    result = depth_analysis(SimpleNamespace(concepts=concepts, active_counts=np.array([4, 6, 8, 10, 5, 6, 7, 9])))
    per_depth = result.per_depth
    hpo = per_depth[per_depth["source"] == "HPO"]
    assert hpo[["depth", "mean_active", "n"]].values.tolist() == [[1, 4, 1], [2, 6, 1], [3, 9, 2]]
    assert result.spearman["HPO"] == pytest.approx(3 / np.sqrt(10))  # rises with depth; the tie at 3 costs a little
    assert np.isnan(result.spearman["ICD-10-CM"])  # a single depth says nothing
    assert "user" not in result.spearman  # unknown depth (-1) is left out


def test_run_context_loads_a_run_folder_and_refuses_another_dataset(tmp_path):
    model, codes, embeddings, config = make_run()
    runfolder.save_model(tmp_path / "model.safetensors", model, config)
    runfolder.save_codes(tmp_path / "codes.npy", codes)
    runfolder.save_json(tmp_path / "config.json", config.to_dict())
    dataset = SimpleNamespace(name="hand", embeddings=embeddings, concepts=make_concepts())
    ctx = RunContext.load(tmp_path, dataset)
    assert (ctx.run_id, ctx.n_bits, len(ctx.concepts)) == (tmp_path.name, N_BITS, 14)
    assert bit_table(ctx).loc[0, "category"] == "Heart"
    smaller = SimpleNamespace(name="other", embeddings=embeddings[:5], concepts=make_concepts()[:5])
    with pytest.raises(RunFileError, match="trained on another dataset"):
        RunContext.load(tmp_path, smaller)
