"""Metrics on hand-made examples whose answers are known."""

import math
from math import comb

import numpy as np
import pytest
import torch

from sparsebin.metrics import code_metrics, evaluate_model, firing_frequency, sign_codes, storage_metrics
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.search.codes import bit_counts, pack_bits, recall_at_k


def test_dead_and_dense_bits_and_activity_of_known_codes():
    bits = np.array(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0, 0],
            [1, 0, 0, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    vectors = np.eye(4, 6, dtype=np.float32)
    metrics = code_metrics(pack_bits(bits), 8, vectors, split="hand", n_queries=4)
    assert metrics["dead_bits"] == 4  # bits 4..7 never fire
    assert metrics["dense_bits"] == 1  # bit 0 fires for all four (> half)
    assert metrics["firing_frequency"][:4] == [1.0, 0.5, 0.5, 0.5]
    assert metrics["active_mean"] == 2.5 and metrics["active_min"] == 2 and metrics["active_max"] == 4
    assert metrics["active_histogram"] == [0, 0, 3, 0, 1]
    assert metrics["active_std"] == pytest.approx(np.std([2, 2, 2, 4]))
    assert sum(metrics["log10_firing_histogram"]["counts"]) == 4  # the four live bits


def test_storage_bits_and_compression():
    storage = storage_metrics(n_bits=1024, active=np.full(5, 16), d_in=384)
    assert storage["bits_bitmap"] == 1024
    assert storage["bits_index_list"] == 16 * 10  # ceil(log2 1024) = 10 bits an index
    assert storage["bits_float32"] == 32 * 384
    assert storage["compression_bitmap"] == 12.0
    assert storage["compression_index_list"] == pytest.approx(12288 / 160)
    # Elias-Fano: 6 low bits an index (log2 of 1024 / 16) and an upper vector of 16 + 16 bits
    assert storage["bits_elias_fano"] == 16 * 6 + 16 + 16
    assert storage["compression_elias_fano"] == pytest.approx(12288 / 128)
    assert storage_metrics(1000, np.array([2, 2]), 10)["bits_index_list"] == 20  # ceil(log2 1000) = 10


def test_elias_fano_storage_counts_each_rows_count_when_counts_vary():
    # N = 4096: K = 32 takes 7 low bits an index and 32 + 32 upper bits: 288 bits, 36 bytes, stored once
    # for every row; K = 44 takes 6 low bits and 44 + 64 upper bits: 372 bits, 47 bytes
    assert storage_metrics(4096, np.full(3, 32), 384)["bits_elias_fano"] == 288
    assert storage_metrics(4096, np.full(3, 44), 384)["bits_elias_fano"] == 376
    # varying counts: each row leads with its count in 13 bits (0..4096), and the file stores M + 1 uint32
    # row offsets to find each row: the size as stored
    mixed = storage_metrics(4096, np.array([32, 44]), 384)["bits_elias_fano"]
    assert mixed == 8 * ((288 + 13 + 7) // 8 + (372 + 13 + 7) // 8 + 3 * 4) / 2


def test_fixed_topk_and_hard_reconstruction_of_a_hand_set_model():
    # Encoder = identity on 4 dims, decoder = identity: the code of x is 1[x > 0].
    model = BinaryAutoencoder(ModelSpec(4, 4, 1)).eval()
    with torch.no_grad():
        model.encoder.weight.copy_(torch.eye(4))
        model.encoder.bias.zero_()
        model.decoder.weight.copy_(torch.eye(4))
        model.decoder.bias.zero_()
    x = np.array([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32)  # hard code [1, 1, 0, 0]; top-1 = bit 1
    metrics = evaluate_model(model, np.repeat(x, 12, axis=0), split="hand", n_queries=2).metrics
    assert metrics["recon_loss"] == pytest.approx(1 - 1.4 / math.sqrt(2), abs=1e-5)
    assert metrics["fixed_topk_recon_loss"] == pytest.approx(1 - 0.8, abs=1e-5)
    assert metrics["topk_overlap"] == 1.0
    assert metrics["active_mean"] == 2.0


def test_recall_counts_shared_neighbours():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_retrieval_recall_is_one_when_codes_copy_the_dense_geometry():
    # Six well separated clusters of identical codes: every code neighbour is a dense neighbour.
    rng = np.random.default_rng(0)
    centres = np.eye(6, 32, dtype=np.float32)
    members = np.repeat(np.arange(6), 11)
    vectors = centres[members] + 0.01 * rng.standard_normal((66, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bits = np.zeros((66, 64), dtype=np.uint8)
    bits[np.arange(66), members * 3] = 1
    bits[np.arange(66), members * 3 + 1] = 1
    metrics = code_metrics(pack_bits(bits), 64, vectors, split="hand", n_queries=30)
    assert metrics["recall_at_10_jaccard"] == 1.0 and metrics["recall_at_10_hamming"] == 1.0


def test_firing_frequency_in_chunks_equals_whole():
    rng = np.random.default_rng(1)
    bits = (rng.random((1000, 24)) < 0.2).astype(np.uint8)
    np.testing.assert_allclose(
        firing_frequency(bit_counts(pack_bits(bits), 24, chunk_rows=77), 1000), bits.mean(axis=0)
    )


def test_sign_baseline_keeps_leading_components_for_equal_storage():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    assert sign_codes(vectors).shape == (300, 2)  # 16 bits, 2 bytes
    assert sign_codes(vectors, n_bits=8).shape == (300, 1)
    plain = sign_codes(vectors, pca=False)
    np.testing.assert_array_equal(plain, pack_bits(vectors > 0))
    with pytest.raises(ValueError, match="n_bits must lie in 1..16, got 17"):
        sign_codes(vectors, n_bits=17)


def test_evaluation_codes_are_the_codes_the_model_encodes():
    # Logits just above 0 (sigmoid rounds them to 0.5) and far above (sigmoid ties at 1.0).
    x = np.random.default_rng(3).standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for sparsity, scale, bias in (("align", 1.0, 1e-8), ("hard-topk", 100.0, 50.0)):
        model = BinaryAutoencoder(ModelSpec(8, 16, 3, sparsity=sparsity)).eval()
        with torch.no_grad():
            model.encoder.weight.mul_(scale)
            model.encoder.bias.fill_(bias)
        evaluation = evaluate_model(model, x, split="hand", n_queries=5)
        with torch.no_grad():
            expected = pack_bits(model.encode(torch.from_numpy(x)).to(torch.uint8).numpy())
        np.testing.assert_array_equal(evaluation.packed, expected)


def test_topk_overlap_and_soft_reconstruction_of_a_hand_set_model():
    # Identity encoder and decoder, K = 2: a row with one positive entry has overlap 1/2.
    model = BinaryAutoencoder(ModelSpec(4, 4, 2)).eval()
    with torch.no_grad():
        for layer in (model.encoder, model.decoder):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    x = np.tile(np.array([[1.0, -0.5, -0.5, -0.5]], dtype=np.float32), (12, 1))
    metrics = evaluate_model(model, x, split="hand", n_queries=2).metrics
    assert metrics["topk_overlap"] == 0.5  # h = [1, 0, 0, 0]; t = bit 0 and one of the others
    soft = 1 / (1 + np.exp(-x[0]))
    assert metrics["soft_recon_loss"] == pytest.approx(1 - x[0] @ soft / (np.linalg.norm(x[0]) * np.linalg.norm(soft)))


def test_recall_truth_is_cosine_even_when_rows_are_not_normalised():
    # Row 0's nearest by dot product is the long row 2, by cosine the parallel short row 1.
    vectors = np.array(
        [[1.0, 0.0], [0.5, 0.01], [10.0, 10.0], [0.0, 1.0]] + [[0.0, -1.0 - i] for i in range(8)], dtype=np.float32
    )
    bits = np.zeros((len(vectors), 8), dtype=np.uint8)
    bits[0, 0] = bits[1, 0] = 1  # codes put rows 0 and 1 together
    index_metrics = code_metrics(pack_bits(bits), 8, vectors, split="hand", n_queries=12)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (
        index_metrics["recall_at_10_jaccard"]
        == code_metrics(pack_bits(bits), 8, unit, split="hand", n_queries=12)["recall_at_10_jaccard"]
    )


def test_every_part_and_baseline_reports_asymmetric_recall_over_every_row():
    from conftest import planted_data

    from sparsebin.config import TrainConfig
    from sparsebin.experiment import evaluate_run
    from sparsebin.train import train

    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    result = train(x, TrainConfig(n_bits=32, k=4, epochs=2, batch_size=64))
    metrics, _ = evaluate_run(x, result, n_queries=20)
    for part in ("train", "validation", "sign_validation", "sign_validation_equal_storage"):
        assert 0.0 <= metrics[part]["recall_at_10_asymmetric"] <= 1.0, part
        assert metrics[part]["n_index_rows"] == 300 and metrics[part]["n_queries"] == 20, part


def test_sign_asymmetric_recall_ranks_rows_by_query_dot_sign_bits():
    from sparsebin.metrics import principal_axes, retrieval_metrics
    from sparsebin.search.codes import (
        CodeIndex,
        dense_neighbours,
        recall_at_k,
        sample_queries,
        sign_decoding,
        unpack_bits,
    )

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((400, 12)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offset, rotation = principal_axes(vectors, 12)
    codes = sign_codes(vectors, n_bits=8, axes=(offset, rotation))
    part = np.arange(100, 400)
    queries = part[sample_queries(len(part), 30, 1)]
    metrics = retrieval_metrics(CodeIndex(codes, 8), vectors, queries, decoding=sign_decoding(rotation[:, :8]))
    signs = 2.0 * unpack_bits(codes, 8) - 1  # (M, 8) of +-1: sign((x - mean) @ R)
    found = []
    for query in queries:
        scores = signs @ (vectors[query] @ rotation[:, :8])  # q . sign(x) in the rotated basis
        scores[query] = -np.inf
        found.append(np.lexsort((np.arange(len(scores)), -scores))[:10])
    expected = recall_at_k(np.array(found), dense_neighbours(vectors, queries, 10)[0])
    assert metrics["recall_at_10_asymmetric"] == pytest.approx(expected)


def test_alignment_is_the_cosine_between_the_soft_code_and_its_topk_mask_and_active_ratio_is_active_over_k():
    # Identity encoder, K = 1: s = sigmoid(x), t = 1 at the largest entry, h = 1[x > 0].
    model = BinaryAutoencoder(ModelSpec(4, 4, 1)).eval()
    with torch.no_grad():
        for layer in (model.encoder, model.decoder):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    x = np.array([[0.6, 0.8, 0.0, 0.0], [-1.0, 0.2, 0.3, 0.5]], dtype=np.float32)
    metrics = evaluate_model(model, np.repeat(x, 6, axis=0), split="hand", n_queries=2, chunk_rows=5).metrics
    soft = 1 / (1 + np.exp(-x))
    distances = [1 - soft[0, 1] / np.linalg.norm(soft[0]), 1 - soft[1, 3] / np.linalg.norm(soft[1])]
    assert metrics["alignment_cosine"] == pytest.approx(np.mean(distances), abs=1e-6)
    assert metrics["active_ratio"] == pytest.approx(2.5)  # 2 and 3 active bits against K = 1


def test_alignment_is_measured_by_the_cosine_whatever_distance_the_run_trained_with_and_in_any_chunks():
    from conftest import planted_data

    from sparsebin.config import TrainConfig
    from sparsebin.losses import cosine_distance, mask_from_indices, topk_indices
    from sparsebin.train import train

    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    model = train(x, TrainConfig(n_bits=32, k=4, epochs=1, batch_size=64, sparsity_loss="mse")).model.eval()
    with torch.no_grad():
        logits = model.encode_logits(torch.from_numpy(x))
        soft = torch.sigmoid(logits)
        expected = cosine_distance(soft, mask_from_indices(topk_indices(logits, 4), 32, soft)).item()
    for chunk_rows in (64, 300):
        metrics = evaluate_model(model, x, split="all", retrieval=False, chunk_rows=chunk_rows).metrics
        assert metrics["alignment_cosine"] == pytest.approx(expected, rel=1e-5)
        assert metrics["active_ratio"] == pytest.approx(metrics["active_mean"] / 4)


def test_silent_on_held_out_by_chance_is_the_exact_hypergeometric_sum_on_a_hand_example():
    from sparsebin.health import bit_health, silent_by_chance

    # 10 rows, rows 7..9 held out; bits firing for 0 (dead), 1, 2, 3 and 8 rows. A bit of 8 rows cannot miss
    # the 3 held-out rows; the others are silent by chance with C(7, c) / C(10, c).
    sizes = [0, 1, 2, 3, 8]
    bits = np.zeros((10, 8), dtype=np.uint8)
    for bit, size in enumerate(sizes):
        bits[:size, bit] = 1  # the first rows: all training rows, except for the 8-row bit
    health = bit_health(pack_bits(bits), 8, np.array([7, 8, 9]))
    expected = 7 / 10 + 21 / 45 + 35 / 120
    assert health["silent_held_out"] == 3  # bits 1..3 fire on training rows only
    assert health["silent_held_out_expected"] == pytest.approx(expected, rel=1e-12)
    assert health["silent_held_out_excess"] == pytest.approx(3 - expected, rel=1e-12)
    assert silent_by_chance(np.array(sizes), 10, 0) == 0.0  # nothing held out: no bit can be silent there
    # at a million rows the sum stays finite and as exact as float64 logs of Gamma allow (about 1e-9 of itself):
    # C(M - V, c) / C(M, c) is (M - V) / M for c = 1, and under 0.9^5000 ~ 1e-229 for c = 5000
    assert silent_by_chance(np.array([1, 5000]), 10**6, 10**5) == pytest.approx(0.9, rel=1e-8)


def test_a_random_code_of_known_bit_sizes_is_silent_on_held_out_about_as_often_as_chance_says():
    from sparsebin.health import bit_health

    rng = np.random.default_rng(4)
    n_rows, n_bits = 4000, 4096
    sizes = np.tile(np.arange(1, 33), n_bits // 32)  # each size 1..32 on 128 bits
    bits = np.zeros((n_rows, n_bits), dtype=np.uint8)
    for bit, size in enumerate(sizes):
        bits[rng.choice(n_rows, size, replace=False), bit] = 1
    held_out = rng.choice(n_rows, n_rows // 10, replace=False)
    health = bit_health(pack_bits(bits), n_bits, held_out)
    chance = np.array([comb(n_rows - len(held_out), c) / comb(n_rows, c) for c in sizes])
    assert health["silent_held_out_expected"] == pytest.approx(chance.sum(), rel=1e-9)  # about 0.9^c each: 1100
    spread = np.sqrt((chance * (1 - chance)).sum())  # a silent count's standard deviation: about 22
    assert abs(health["silent_held_out"] - chance.sum()) < 4 * spread
    assert abs(health["silent_held_out_excess"]) < 4 * spread


def test_the_bit_health_lines_show_silent_on_held_out_beside_its_chance_count():
    from sparsebin.health import health_lines

    health = {"dead_all_rows": 0, "silent_held_out": 12, "silent_held_out_expected": 9.83, "rare_bits": 3}
    lines = health_lines(health | {"dense_all_rows": 1})
    assert lines[1] == "      12  bits silent on held-out rows (fire on training rows only); 9.8 expected by chance"
    assert lines[0] == "       0  dead bits (fire on no row)"
    older = health_lines({"silent_held_out": 12})  # a run measured before the chance count
    assert older[1].endswith("(fire on training rows only); not measured against chance")


PROBE_COLUMNS = [
    "category",
    "id",
    "level",
    "concepts",
    "bit",
    "train_f1",
    "heldout_f1",
    "chance_f1",
    "dense_dimension",
    "dense_direction",
    "dense_heldout_f1",
]


def test_a_run_folder_holds_its_interpretability_against_the_dense_embedding_and_its_probe_table(tmp_path):
    from conftest import planted_data, tree_concepts

    from sparsebin import runfolder
    from sparsebin.config import TrainConfig
    from sparsebin.experiment import run_experiment
    from sparsebin.interpret.scores import dense_probe, interpretability

    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    concepts = tree_concepts(x)
    config = TrainConfig(n_bits=32, k=4, epochs=2, batch_size=64, device="cpu")
    folder = tmp_path / "run"
    run_experiment(x, config, folder, n_queries=20, concepts=concepts)
    group = runfolder.load_metrics(folder)["interpretability"]
    train_rows, validation_rows = runfolder.load_split_rows(folder, len(x))
    codes = runfolder.load_codes(folder, mmap=False)
    assert group == interpretability(codes, 32, concepts, train_rows, validation_rows).metrics() | {
        "dense_probe_f1": dense_probe(x, concepts, train_rows, validation_rows).probe_f1
    }
    assert group["interpretability_note"] is None and group["probe_categories"] == 4
    assert group["probe_f1"] > group["probe_f1_chance"] and group["dense_probe_f1"] > 0.4  # a category's own axis
    probes = runfolder.load_probes(folder)
    assert list(probes.columns) == PROBE_COLUMNS
    assert probes["category"].tolist() == [f"category {value}" for value in range(4)]
    assert probes["heldout_f1"].mean() == pytest.approx(group["probe_f1"])
    assert probes["dense_heldout_f1"].mean() == pytest.approx(group["dense_probe_f1"])
    assert sorted(probes["dense_dimension"]) == [0, 1, 2, 3]  # each category found on its own axis


def test_a_bare_embeddings_file_gives_no_interpretability_figures_with_the_reason_and_a_probe_table_header(tmp_path):
    from conftest import planted_data

    from sparsebin import runfolder
    from sparsebin.config import TrainConfig
    from sparsebin.experiment import run_experiment

    x, _ = planted_data(n_rows=200, dim=16, n_bits=32, k=4)
    run_experiment(x, TrainConfig(n_bits=32, k=4, epochs=1, batch_size=64, device="cpu"), tmp_path, n_queries=10)
    group = runfolder.load_metrics(tmp_path)["interpretability"]
    for name in ("coherent_share", "coherence_median", "root_labelled_share", "probe_f1", "dense_probe_f1"):
        assert group[name] is None, name
    assert group["probe_categories"] == 0
    assert group["interpretability_note"].startswith("Every concept is in one category")
    assert (tmp_path / "probes.csv").read_text().strip() == ",".join(PROBE_COLUMNS)
