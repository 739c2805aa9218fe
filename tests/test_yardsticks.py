"""The yardsticks: ITQ's fit, every baseline's recall against a brute-force reference, two-stage search,
and the per-dataset cache."""

import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset

from sparsebin.datasets import load_dataset
from sparsebin.errors import DataError
from sparsebin.search import yardsticks
from sparsebin.search.codes import unpack_bits
from sparsebin.search.yardsticks import Setup, dataset_yardsticks, fit_itq, make_bench, measure_yardsticks

SMALL = Setup(n_queries=40, budgets=(2, 4), rerank_depths=(20,))


def planted(n_rows=600, dim=16, seed=0):
    """Rows with one dominant direction (first dimension scaled 6x) around a shared offset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32)
    x[:, 0] *= 6.0
    return x + 2.0


def test_itq_lowers_its_quantisation_loss_and_balances_its_bits():
    x = planted()
    itq = fit_itq(x, 8, iterations=50, seed=0)
    losses = np.array(itq.losses)
    assert len(losses) == 51
    assert np.all(np.diff(losses) <= 1e-6 * losses[0])  # each alternating step can only lower the loss
    assert losses[-1] < 0.9 * losses[0]
    firing = unpack_bits(itq.codes(x), 8).mean(axis=0)
    assert np.all((firing > 0.3) & (firing < 0.7)), firing  # centred first: no bit fires for (nearly) all
    plain = (x[:, 1:] > 0).mean(axis=0)  # the offset makes raw sign bits of the other dimensions fire for most rows
    assert plain.min() > 0.9


def hamming_reference(bits: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Tie-aware recall@k from unpacked bits, one query at a time."""
    shares = []
    for query, true in zip(queries, truth, strict=True):
        dist = (bits != bits[query]).sum(axis=1).astype(float)
        dist[query] = np.inf
        kth = np.sort(dist)[k - 1]
        nearer, tied = (dist < kth).sum(), (dist == kth).sum()
        shares.append(((dist[true] < kth).sum() + (dist[true] == kth).sum() * (k - nearer) / tied) / k)
    return float(np.mean(shares))


def test_every_baseline_recall_equals_a_brute_force_reference():
    x = planted(seed=1)
    bench = make_bench(x, SMALL)
    measured = measure_yardsticks(x, SMALL).frontier.set_index(["setting", "search"])["recall_at_10"]
    vectors = bench.vectors
    # Dense truth: the brute-force cosine top 10 of each query, itself left out.
    sims = vectors[bench.queries] @ vectors.T
    sims[np.arange(len(bench.queries)), bench.queries] = -np.inf
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(np.sort(truth, axis=1), np.sort(bench.truth, axis=1))
    assert measured[("float32, exact", "asymmetric")] == 1.0
    # Binary codes, rebuilt here from their definitions.
    train = vectors[bench.train]
    mean = train.mean(axis=0)
    centred = (train - mean).astype(np.float64)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred / len(train))
    axes = eigenvectors[:, ::-1][:, :16]
    sign = ((vectors - mean) @ axes[:, :16]) > 0
    lsh = vectors @ yardsticks.lsh_planes(16, 32, 0) > 0
    itq = unpack_bits(fit_itq(train, 16, seed=0).codes(vectors), 16).astype(bool)
    for setting, bits in (("sign-PCA, 16 bits", sign), ("LSH, 32 hyperplanes", lsh), ("ITQ, 16 bits", itq)):
        reference = hamming_reference(bits, bench.queries, bench.truth)
        assert measured[(setting, "hamming")] == pytest.approx(reference, abs=1e-9), setting
    # PQ: the codes read back, the float query's squared distance to each (faiss's asymmetric L2), top 10.
    index = faiss.IndexPQ(16, 4, 8)
    index.pq.cp.seed = 0
    index.train(np.ascontiguousarray(train))
    decoded = index.sa_decode(index.sa_encode(np.ascontiguousarray(vectors)))
    distances = ((vectors[bench.queries][:, None, :] - decoded[None]) ** 2).sum(axis=2)
    distances[np.arange(len(bench.queries)), bench.queries] = np.inf
    found = np.argsort(distances, axis=1, kind="stable")[:, :10]
    reference = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, bench.truth, strict=True)])
    assert measured[("PQ 4x8", "asymmetric")] == pytest.approx(reference, abs=0.02)  # float ties aside


def test_two_stage_equals_exact_search_when_its_first_stage_keeps_every_row():
    x = planted(n_rows=300, seed=2)
    every = Setup(n_queries=30, budgets=(2,), rerank_depths=(299,))
    frontier = measure_yardsticks(x, every).frontier
    two_stage = frontier[frontier["search"] == "two-stage"]
    rescored = two_stage[two_stage["setting"].str.endswith("rescored with float32")]
    assert len(rescored) and (rescored["recall_at_10"] == 1.0).all()
    assert (two_stage["second_stage_bytes"].isin([16.0, 64.0])).all()  # int8 and float32 rows, named apart
    assert set(rescored["storage"]) == {"2 B in memory + 64 B on disk"}


def test_the_cache_is_rebuilt_when_the_embeddings_change_and_refused_when_damaged():
    name = make_dataset("yard", n_rows=300, dim=16, seed=0)
    dataset = load_dataset(name)
    said = []
    first = dataset_yardsticks(dataset, SMALL, say=said.append)
    assert said and len(first.frontier) > 10
    said.clear()
    again = dataset_yardsticks(load_dataset(name), SMALL, say=said.append)
    assert said == [] and again.meta["measured_at"] == first.meta["measured_at"]  # read from the cache
    make_dataset("yard", n_rows=300, dim=16, seed=5)  # other embeddings, same name
    changed = load_dataset(name)
    changed.meta["checksum"] = {"embeddings.npy": "sha256:other"}
    rebuilt = dataset_yardsticks(changed, SMALL, say=said.append)
    assert said and rebuilt.meta["checksum"] == "sha256:other"
    folder = yardsticks.cache_folder(changed.path, SMALL)
    (folder / "frontier.csv").write_text("not,a\nfrontier")
    with pytest.raises(DataError, match=r"yardsticks cached in .* are damaged \(frontier.csv: it lacks the column"):
        dataset_yardsticks(changed, SMALL)


@pytest.fixture
def one_faiss_thread():
    """faiss on one OpenMP thread (its threads spin against a busy machine's other processes), restored after."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def test_the_frontier_command_writes_every_baseline_and_the_runs_searches(tmp_path, capsys, one_faiss_thread):
    from sparsebin.cli import main
    from sparsebin.config import TrainConfig
    from sparsebin.jobs.queue import Store
    from sparsebin.jobs.worker import run_worker

    name = make_dataset("front", n_rows=400, dim=128, seed=0)
    store = Store()
    store.submit(name, TrainConfig(n_bits=64, k=4, epochs=2, batch_size=64, device="cpu"), label="tiny run")
    run_worker(once=True, device="cpu")
    assert main(["frontier", name, "--out", str(tmp_path / "out"), "--budgets", "8"]) == 0
    points = pd.read_csv(tmp_path / "out" / "frontier.csv")
    baselines = points[points["kind"] == "baseline"]
    assert set(baselines["code"]) == {
        "sign-PCA",
        "ITQ",
        "LSH",
        "PQ",
        "OPQ",
        "SQ int8",
        "SQ fp16",
        "float32",
        "two-stage",
    }
    run = points[points["kind"] == "run"]
    assert list(run["search"]) == ["hamming", "jaccard", "asymmetric"] and set(run["code"]) == {"tiny run"}
    assert run["storage"].str.endswith("Elias-Fano").all() and run["ms_per_query"].gt(0).all()
    assert points.loc[points["pareto"], "second_stage_bytes"].eq(0).all() and points["pareto"].any()
    # The front rises with bytes: no point of no more bytes finds more than a point on it.
    for _, point in points[points["pareto"]].iterrows():
        cheaper = points[(points["bytes"] <= point["bytes"]) & (points["second_stage_bytes"] == 0)]
        assert cheaper["recall_at_10"].max() == point["recall_at_10"]
    assert (tmp_path / "out" / "frontier.html").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| code | search | bytes / vector | recall@10 | ms / query | Pareto |" in printed
    assert main(["frontier", name, "--runs", "no-such-run"]) != 0
    assert "no finished run no-such-run on dataset front; see `runs`." in capsys.readouterr().err


def test_a_background_measurement_that_died_reads_as_failed_with_its_last_line(tmp_path):
    import json
    import subprocess
    import sys

    from sparsebin.search.measuring import measuring_status, status_path

    assert measuring_status(tmp_path) is None  # none started
    log = tmp_path / "measuring.log"
    log.write_text("measuring the yardsticks of tiny (240 rows)\nError: the disk is full\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = status_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"state": "running", "pid": dead.pid, "started_at": 0, "log": str(log)}))
    status = measuring_status(tmp_path)
    assert status["state"] == "failed" and status["error"] == "Error: the disk is full"
    log.write_text("| code | search |\ncsv: out/frontier.csv\n")
    assert measuring_status(tmp_path)["state"] == "finished"
