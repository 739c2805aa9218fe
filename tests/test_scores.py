"""Interpretability figures on a planted ontology where the answers are known.

The tree: a root R over four top-level categories T0..T3 (each the head of its
category), each over four nodes of the level below (T0.0 ...), each over 30
leaves: 501 concepts. Bits built to match its nodes are judged against random
bits of the same sizes; a fifth of the rows is held out.
"""

import numpy as np
import pandas as pd
import pytest

from sparsebin.datasets.importing import index_labels
from sparsebin.interpret import scores
from sparsebin.interpret.questions import answer_bit_meaning
from sparsebin.interpret.scores import dense_probe, interpretability
from sparsebin.search.codes import pack_bits

N_TOP, N_BELOW, N_LEAVES = 4, 4, 30
TOP = [f"T{top}" for top in range(N_TOP)]
BELOW = [f"T{top}.{below}" for top in range(N_TOP) for below in range(N_BELOW)]


def make_tree() -> pd.DataFrame:
    rows = [("R", "root", "", [])]
    for top in range(N_TOP):
        rows.append((f"T{top}", f"top {top}", f"top {top}", ["R"]))
        for below in range(N_BELOW):
            node = f"T{top}.{below}"
            rows.append((node, f"below {top}.{below}", f"top {top}", [f"T{top}"]))
            rows += [(f"{node}.{leaf}", f"leaf {node}.{leaf}", f"top {top}", [node]) for leaf in range(N_LEAVES)]
    concepts = pd.DataFrame(rows, columns=["id", "name", "category", "parents"])
    concepts["source"], concepts["depth"] = "test", concepts["id"].str.count(r"\.") + (concepts["id"] != "R")
    return concepts


CONCEPTS = make_tree()
M = len(CONCEPTS)
VALIDATION = np.sort(np.random.default_rng(0).choice(M, M // 5, replace=False))
TRAIN = np.setdiff1d(np.arange(M), VALIDATION)


def under(node: str) -> np.ndarray:
    """Rows of the node and everything below it."""
    ids = CONCEPTS["id"]
    return np.flatnonzero((ids == node) | ids.str.startswith(node + "."))


def planted(nodes: list[str], rng, missed: float = 0.1, strays: int = 3, n_bits: int = 32) -> np.ndarray:
    """(M, n_bits) 0/1: bit i fires on node i's concepts but a `missed` share of them, and on `strays` others."""
    bits = np.zeros((M, n_bits), dtype=np.uint8)
    for bit, node in enumerate(nodes):
        rows = under(node)
        bits[rng.choice(rows, round(len(rows) * (1 - missed)), replace=False), bit] = 1
        bits[rng.choice(np.setdiff1d(np.arange(M), rows), strays, replace=False), bit] = 1
    return bits


def random_like(bits: np.ndarray, rng, copies: int = 1) -> np.ndarray:
    """`copies` random bits of each bit's size."""
    sizes = np.repeat(bits.sum(axis=0), copies)
    random = np.zeros((M, len(sizes)), dtype=np.uint8)
    for bit, size in enumerate(sizes):
        random[rng.choice(M, size, replace=False), bit] = 1
    return random


def judge(bits: np.ndarray, concepts: pd.DataFrame = CONCEPTS) -> scores.Interpretability:
    return interpretability(pack_bits(bits), bits.shape[1], concepts, TRAIN, VALIDATION)


def test_bits_built_on_categories_are_coherent_and_probe_well():
    result = judge(planted(BELOW + TOP, np.random.default_rng(1)))
    assert result.n_bits_judged == 20 and result.reason is None  # the 12 other bits are dead
    assert result.coherent_share == 1.0 and result.coherence_median > 0.7
    assert result.probe.probe_categories == 20  # 4 top-level categories and the 16 nodes below them
    assert result.probe.probe_f1 > 0.8 and result.probe.probe_f1_chance < 0.15  # 0.90: each bit misses a tenth
    probes = result.probe.probes
    assert probes["bit"].tolist() == [*range(16, 20), *range(16)]  # each category's own bit
    assert probes["level"].tolist() == [1] * 4 + [2] * 16 and probes["concepts"].tolist() == [125] * 4 + [31] * 16
    assert result.metrics()["probe_f1"] == result.probe.probe_f1


def test_random_bits_of_the_same_sizes_score_about_chance():
    rng = np.random.default_rng(2)
    bits = random_like(planted(BELOW + TOP, rng, n_bits=20), rng, copies=5)
    result = judge(bits)
    assert result.n_bits_judged == 100
    assert result.coherent_share <= 0.05 and abs(result.coherence_median) < 0.05
    # Chosen on training rows among 100 random bits, the best bit of each category scores on held-out rows what
    # a random set of its size scores there.
    assert result.probe.probe_f1 == pytest.approx(result.probe.probe_f1_chance, abs=0.04)  # 0.09 against 0.10
    assert result.probe.probe_f1 < 0.25
    for row in result.probe.probes.itertuples():  # each category's bit: the first of the best by training F1
        members = np.zeros(M, bool)
        members[under(row.id) if row.level == 2 else np.flatnonzero(CONCEPTS["category"] == row.category)] = True
        fires = bits[TRAIN].astype(bool)
        f1 = 2 * (fires & members[TRAIN, None]).sum(axis=0) / (fires.sum(axis=0) + members[TRAIN].sum())
        assert (row.bit, row.train_f1) == (np.argmax(f1), pytest.approx(f1.max()))


def test_the_probe_chooses_on_training_rows_scores_on_held_out_rows_and_ties_go_to_the_lower_bit():
    bits = planted(["T0.0", "T0.0", "T1"], np.random.default_rng(3), n_bits=3)
    bits[:, 1] = bits[:, 0]  # an exact copy of bit 0
    probes = judge(bits).probe.probes.set_index("id", drop=False)
    row = probes.loc["T0.0"]
    members, fires = np.zeros(M, bool), bits[:, 0].astype(bool)
    members[under("T0.0")] = True
    for rows, column in ((TRAIN, "train_f1"), (VALIDATION, "heldout_f1")):
        hits = (members[rows] & fires[rows]).sum()
        assert row[column] == pytest.approx(2 * hits / (members[rows].sum() + fires[rows].sum()))
    assert row["bit"] == 0  # not its copy, bit 1
    n, m = fires[VALIDATION].sum(), members[VALIDATION].sum()
    assert row["chance_f1"] == pytest.approx(2 * n * m / len(VALIDATION) / (n + m))
    nothing = probes.loc["T2.3"]  # no bit fires for any of its concepts: the probe predicts none
    assert pd.isna(nothing["bit"]) and nothing["train_f1"] == 0 and nothing["heldout_f1"] == 0


def test_root_labelled_share_is_high_for_bits_on_top_nodes_and_low_for_bits_on_leaves():
    rng = np.random.default_rng(4)
    assert judge(planted(TOP, rng, missed=0, strays=0, n_bits=4)).root_labelled_share == 1.0
    leaves = np.zeros((M, len(BELOW)), dtype=np.uint8)
    for bit, node in enumerate(BELOW):  # six leaves of one node: labelled by that node, a level below the top
        leaves[under(node)[1:7], bit] = 1
    result = judge(leaves)
    assert result.root_labelled_share == 0.0
    assert set(result.labels["ancestor_id"]) == set(BELOW) and (result.labels["ancestor_level"] == 2).all()
    assert result.labels["label"].iloc[0] == "below 0.0, 100 % of 6, 19 % of its 31"


def test_blocks_of_any_size_give_the_same_figures(monkeypatch):
    bits = np.concatenate([planted(BELOW + TOP, np.random.default_rng(5), n_bits=21)] * 2, axis=1)  # 42 bits
    whole = judge(bits)
    monkeypatch.setattr(scores, "BLOCK_BITS", 16)
    monkeypatch.setattr(scores, "PAIR_BUDGET", 100)  # about one byte of bits a block
    blocks = judge(bits)
    pd.testing.assert_frame_equal(whole.labels, blocks.labels)
    pd.testing.assert_frame_equal(whole.probe.probes, blocks.probe.probes)
    assert whole.metrics() == blocks.metrics()
    assert whole.probe.probes["bit"].max() < 21  # a copy's tie goes to the first of the two


def test_question_six_reads_the_same_numbers_from_the_labels():
    result = judge(np.concatenate([planted(BELOW, np.random.default_rng(6), n_bits=16)] * 2, axis=1)[:, :24])
    text = answer_bit_meaning(result.labels)
    assert f"{result.n_bits_judged} fire for at least 5 concepts" in text
    assert f"({result.coherent_share:.0%})" in text and f"median {result.coherence_median:.2f}" in text


def test_dense_probe_finds_a_planted_dimension_above_or_below():
    rng = np.random.default_rng(7)
    embeddings = rng.standard_normal((M, 8)).astype(np.float32)
    embeddings[under("T1"), 2] += 4  # members of T1 lie high on dimension 2
    embeddings[under("T2.1"), 5] -= 4  # members of T2.1 low on dimension 5
    probe = dense_probe(embeddings, CONCEPTS, TRAIN, VALIDATION)
    probes = probe.probes.set_index("category")
    assert probes.loc["top 1", ["dimension", "direction"]].tolist() == [2, "above"]
    assert probes.loc["below 2.1", ["dimension", "direction"]].tolist() == [5, "below"]
    assert (probes.loc[["top 1", "below 2.1"], "heldout_f1"] > 0.9).all()
    assert probe.probe_categories == 20 and probe.reason is None
    assert probe.metrics("dense_")["dense_probe_f1"] == probe.probe_f1
    # Categories apart from both are noise to every dimension: about what a random set of the chosen size scores.
    others = probes[~probes["id"].str.startswith("T1", na=False) & ~probes.index.isin(["top 1", "top 2", "below 2.1"])]
    assert len(others) == 13
    assert others["heldout_f1"].mean() == pytest.approx(others["chance_f1"].mean(), abs=0.05)


def test_each_dense_threshold_is_the_best_of_all_with_ties_taken_whole():
    rng = np.random.default_rng(11)
    embeddings = np.round(rng.standard_normal((M, 3)), 1).astype(np.float32)  # one decimal: many equal values
    embeddings[:, 2] = 0
    embeddings[under("T3"), 2] = 1  # the membership of top 3 itself: all its members tie at 1
    probes = dense_probe(embeddings, CONCEPTS, TRAIN, VALIDATION).probes
    by_category = probes.set_index("category")
    columns = ["dimension", "threshold", "direction", "train_f1", "heldout_f1"]
    assert by_category.loc["top 3", columns].tolist() == [2, 1.0, "above", 1.0, 1.0]
    train = embeddings[TRAIN]
    for row in probes.itertuples():
        members = np.zeros(M, bool)
        members[under(row.id) if row.level == 2 else np.flatnonzero(CONCEPTS["category"] == row.category)] = True
        members = members[TRAIN]
        best = 0.0
        for dimension in range(3):
            for threshold in np.unique(train[:, dimension]):
                for predicted in (train[:, dimension] >= threshold, train[:, dimension] <= threshold):
                    best = max(best, 2 * (predicted & members).sum() / (predicted.sum() + members.sum()))
        assert row.train_f1 == pytest.approx(best), row.category


def test_a_data_set_without_ontology_labels_gives_none_with_a_reason():
    unlabelled = index_labels(M)  # what importing vectors without a labels file gives: no categories, no parents
    result = judge(planted(BELOW + TOP, np.random.default_rng(8)), unlabelled)
    figures = ["coherent_share", "coherence_median", "root_labelled_share", "probe_f1", "probe_f1_chance"]
    assert [result.metrics()[name] for name in figures] == [None] * 5
    assert result.n_bits_judged == 20 and result.probe.probe_categories == 0
    assert result.reason == (
        "Every concept is in one category, so no bit can be enriched in one; no concept has a parent, so no "
        "node lies above another; no category holds 20 concepts or more (short of every row) on both sides "
        "of the split."
    )
    probe = dense_probe(np.ones((M, 3), np.float32), unlabelled, TRAIN, VALIDATION)
    assert probe.probe_f1 is None and "no category holds 20 concepts" in probe.reason


def test_categories_without_parents_are_probed_at_the_top_level_only():
    flat = CONCEPTS.assign(parents=[[] for _ in range(M)])
    result = judge(planted(BELOW + TOP, np.random.default_rng(9)), flat)
    assert result.coherent_share == 1.0 and result.probe.probe_categories == N_TOP
    assert (
        result.root_labelled_share is None
        and result.reason == "No concept has a parent, so no node lies above another."
    )


def test_codes_of_another_shape_or_rows_outside_the_table_are_refused():
    bits = planted(TOP, np.random.default_rng(10), n_bits=8)
    with pytest.raises(ValueError, match="not 501 rows of 16 packed bits"):
        interpretability(pack_bits(bits), 16, CONCEPTS, TRAIN, VALIDATION)
    with pytest.raises(ValueError, match="a held-out row lies outside the 501 rows"):
        interpretability(pack_bits(bits), 8, CONCEPTS, TRAIN, [M])
