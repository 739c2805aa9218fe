"""The yardsticks: ITQ's learning, the binary baselines' recall against a brute-force reference, the cache."""

import json

import numpy as np
import pytest

from sparsebin.errors import DataError
from sparsebin.metrics import tie_aware_recall
from sparsebin.search import yardsticks
from sparsebin.search.codes import CodeIndex, recall_at_k, unpack_bits


def dominant_direction(n_rows=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32)
    x[:, 0] += 6.0  # every row leans one way: uncentred sign bits would all agree on it
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_itq_loss_decreases_and_its_bits_are_balanced():
    x = dominant_direction()
    itq = yardsticks.fit_itq(x, 8, iterations=50, seed=0)
    assert len(itq.losses) == 51
    assert all(later <= earlier + 1e-9 for earlier, later in zip(itq.losses, itq.losses[1:], strict=False))
    assert itq.losses[-1] < itq.losses[0]
    firing = unpack_bits(itq.codes(x), 8).mean(axis=0)
    assert firing.min() > 0.3 and firing.max() < 0.7, firing


def test_two_stage_with_every_row_rescored_is_exact_search():
    bench = yardsticks.make_bench(dominant_direction(200, 16, 1), yardsticks.Setup(n_queries=20))
    itq = yardsticks.fit_itq(bench.vectors[bench.train], 16)
    packed = itq.codes(bench.vectors)
    found, _ = yardsticks.two_stage_found(CodeIndex(packed, 16), packed, bench.vectors, bench, len(bench.vectors))
    assert recall_at_k(found, bench.truth) == 1.0


def test_binary_recall_equals_brute_force():
    bench = yardsticks.make_bench(dominant_direction(300, 16, 2), yardsticks.Setup(n_queries=30))
    planes = yardsticks.lsh_planes(16, 16, seed=0)
    bits = (bench.vectors @ planes > 0).astype(np.int64)
    packed = np.packbits(bits.astype(np.uint8), axis=1)
    measured = tie_aware_recall(CodeIndex(packed, 16), bench.queries, bench.truth, 10, "hamming")
    shares = []
    for query, truth in zip(bench.queries, bench.truth, strict=True):
        dist = (bits != bits[query]).sum(axis=1).astype(float)
        dist[query] = np.inf
        kth = np.sort(dist)[9]
        nearer, tied = (dist < kth).sum(), (dist == kth).sum()
        shares.append(((dist[truth] < kth).sum() + (dist[truth] == kth).sum() * (10 - nearer) / tied) / 10)
    assert measured == pytest.approx(float(np.mean(shares)), abs=1e-12)


def test_a_damaged_cache_is_refused_in_a_sentence(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"checksum": "sha256:abc"}))
    (folder / "frontier.csv").write_text("not,a,frontier\n1,2,3\n")
    with pytest.raises(DataError, match="damaged .*frontier.csv"):
        yardsticks.load_yardsticks(folder, "sha256:abc")
    assert yardsticks.load_yardsticks(folder, "sha256:other") is None  # other embeddings: measured anew
