"""What makes runs comparable: the split seed, recall over every row with fair ties, bit health, convergence,
and the scale-fair distances of the per-term loss ablation."""

import numpy as np
import pytest
import torch
from conftest import planted_data

from sparsebin.config import TrainConfig
from sparsebin.experiment import evaluate_run
from sparsebin.health import bit_health, convergence, convergence_word
from sparsebin.losses import cosine_distance, distance
from sparsebin.metrics import tie_aware_recall
from sparsebin.search.codes import CodeIndex, pack_bits
from sparsebin.train import train

SMALL = {"n_bits": 32, "k": 4, "lr": 3e-2, "batch_size": 100, "epochs": 2, "log_every": 1000}


def test_seeds_share_the_held_out_rows_and_queries_while_the_split_seed_moves_them():
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    first = train(x, TrainConfig(**SMALL, seed=0))
    second = train(x, TrainConfig(**SMALL, seed=1))
    moved = train(x, TrainConfig(**SMALL, seed=0, split_seed=5))
    assert np.array_equal(first.split.validation, second.split.validation)  # seeds vary the training only
    assert not np.array_equal(first.split.validation, moved.split.validation)
    assert not torch.equal(first.model.encoder.weight, second.model.encoder.weight)


def test_a_config_saved_before_the_split_seed_reads_back_with_the_split_it_used():
    old = TrainConfig(seed=7).to_dict()
    del old["split_seed"]
    assert TrainConfig.from_dict(old).split_seed == 7  # those runs split their rows by the training seed
    assert TrainConfig(seed=7).split_seed == 0


def test_tied_rows_at_the_kth_distance_count_by_their_chance():
    # Query row 0 = 1100; rows 1..4 each at Hamming distance 2 from it (all tied), row 5 identical.
    bits = np.array(
        [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]],
        dtype=np.uint8,
    )
    index = CodeIndex(pack_bits(bits), 4)
    # k = 2: row 5 (distance 0) is sure; one of the four tied rows 1..4 takes the second place.
    truth = np.array([[5, 4]])  # row 4 is the last tied row: row order would always drop it
    assert tie_aware_recall(index, np.array([0]), truth, 2, "hamming") == pytest.approx((1 + 1 / 4) / 2)
    assert tie_aware_recall(index, np.array([0]), np.array([[5, 6]]), 2, "hamming") == pytest.approx(0.5)


def test_recall_searches_held_out_queries_against_every_row():
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    result = train(x, TrainConfig(**SMALL))
    metrics, _ = evaluate_run(x, result, n_queries=30)
    validation = metrics["validation"]
    assert validation["n_rows"] == 40 and validation["n_index_rows"] == 400
    assert validation["n_queries"] == 30 and "tie-aware" in validation["recall_ties"]
    sign = metrics["sign_validation_equal_storage"]
    assert sign["n_index_rows"] == 400 and sign["capped_at_d"] == (sign["model_bits"] > 16)


def test_bit_health_counts_over_all_rows_on_held_out_rows_and_rare_bits():
    # 8 rows, rows 6 and 7 held out. bit 0: every row; bit 1: training rows only; bit 2: two rows;
    # bit 3: never; bit 4: one held-out row.
    bits = np.zeros((8, 8), dtype=np.uint8)
    bits[:, 0] = 1
    bits[:6, 1] = 1
    bits[[0, 6], 2] = 1
    bits[7, 4] = 1
    health = bit_health(pack_bits(bits), 8, np.array([6, 7]), rare_below=3)
    assert health["dead_all_rows"] == 4  # bits 3, 5, 6, 7
    assert health["silent_held_out"] == 1  # bit 1 fires on 6 training rows, on no held-out one
    assert health["rare_bits"] == 2  # bits 2 (2 rows) and 4 (1 row)
    assert health["dense_all_rows"] == 2  # bits 0 and 1 fire for more than half of the 8 rows


def _history(active, loss, total=1000):
    return [
        {"step": step, "total_steps": total, "active_mean": a, "loss": value}
        for step, a, value in zip(range(100, total + 1, 100), active, loss, strict=False)
    ]


def test_a_run_still_moving_in_its_last_tenth_is_not_converged():
    flat = _history([40, 30, 25, 20, 18, 17, 16.5, 16.2, 16.1, 16.0], [1.0] * 10, total=1000)
    flat += [{"step": 950, "total_steps": 1000, "active_mean": 16.05, "loss": 1.0}]
    flat.sort(key=lambda event: event["step"])
    assert convergence(flat, k=16)["converged"] is True
    falling = [
        {"step": step, "total_steps": 1000, "active_mean": 60 - step / 20, "loss": 1.0} for step in range(900, 1001, 25)
    ]
    state = convergence(falling, k=16)
    assert state["converged"] is False and "active mean moved -5.00 bits" in state["reason"]
    assert convergence(falling[:2], k=16)["converged"] is None
    assert [convergence_word(value) for value in (True, False, None, float("nan"))] == [
        "converged",
        "NOT converged",
        "unknown",
        "unknown",
    ]


def test_scale_fair_distances_sit_on_the_cosine_scale_for_unit_rows():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(64, 384), dim=1)
    y = torch.nn.functional.normalize(x + 0.3 * torch.randn(64, 384), dim=1)
    cosine = cosine_distance(x, y).item()
    assert distance("mse_sum", x, y).item() == pytest.approx(2 * cosine, rel=1e-4)  # |x - y|^2 = 2 - 2 cos
    assert distance("mse", x, y).item() == pytest.approx(2 * cosine / 384, rel=1e-4)  # the per-entry mean: 1/D
    assert distance("l1_sum", x, y).item() == pytest.approx(384 * distance("l1", x, y).item(), rel=1e-5)
