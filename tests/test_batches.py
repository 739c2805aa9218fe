"""Training rows held on the device or read from a memory map: the same run either way."""

import threading

import numpy as np
import pytest
import torch
from conftest import planted_data

import sparsebin.batches
from sparsebin.batches import Prefetcher, choose_placement, read_rows
from sparsebin.config import TrainConfig
from sparsebin.train import train


@pytest.fixture
def mapped_file(tmp_path):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    x = x * np.random.default_rng(1).uniform(0.5, 3, size=(400, 1)).astype(np.float32)  # normalising matters
    np.save(tmp_path / "embeddings.npy", x)
    return np.load(tmp_path / "embeddings.npy", mmap_mode="r")


def assert_same_model(first, second):
    for name, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=0)
    assert [event["loss"] for event in first.history] == [event["loss"] for event in second.history]


@pytest.mark.parametrize("rounding", ["ste", "stochastic"])
def test_the_mapped_path_trains_the_same_model_as_the_resident_path(mapped_file, rounding):
    config = TrainConfig(n_bits=32, k=4, epochs=3, batch_size=64, rounding=rounding, device="cpu", log_every=2)
    resident = train(mapped_file, config, placement="resident")
    mapped = train(mapped_file, config, placement="mapped")
    assert (resident.placement.mode, mapped.placement.mode) == ("resident", "mapped")
    assert_same_model(resident, mapped)
    assert not any(thread.name == "prefetch" for thread in threading.enumerate())  # the reader has stopped


@pytest.mark.parametrize(("first", "then"), [("resident", "mapped"), ("mapped", "resident")])
def test_a_checkpoint_taken_on_one_path_resumes_on_the_other(mapped_file, tmp_path, first, then):
    config = TrainConfig(n_bits=32, k=4, epochs=4, batch_size=64, device="cpu")
    whole = train(mapped_file, config, placement=first)
    checkpoint = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def stop_in_epoch_three():
        calls["n"] += 1
        return calls["n"] > 2 * 6 + 3  # 360 training rows / 64 = 6 steps an epoch

    stop = stop_in_epoch_three
    interrupted = train(mapped_file, config, should_stop=stop, checkpoint_path=checkpoint, placement=first)
    assert interrupted.cancelled and interrupted.epochs_done == 2
    resumed = train(mapped_file, config, checkpoint_path=checkpoint, placement=then)
    assert resumed.epochs_done == 4
    assert_same_model(whole, resumed)


def test_an_unknown_placement_is_refused_by_name():
    with pytest.raises(ValueError, match="placement must be one of auto, resident, mapped, got 'disk'"):
        choose_placement("disk", 10, 4, "cpu", None)


def test_a_read_error_reaches_the_training_loop():
    def read(index):
        if index == 2:
            raise OSError("the data file went away")
        return index

    prefetcher = Prefetcher(read, 5)
    assert [prefetcher.get(), prefetcher.get()] == [0, 1]
    with pytest.raises(OSError, match="went away"):
        prefetcher.get()
    prefetcher.close()


def test_rows_read_a_chunk_at_a_time_equal_rows_read_at_once(mapped_file, monkeypatch):
    rows = np.random.default_rng(2).permutation(400)[:300]
    whole = read_rows(mapped_file, rows, normalize=True)
    monkeypatch.setattr(sparsebin.batches, "CHUNK_ROWS", 64)
    np.testing.assert_array_equal(read_rows(mapped_file, rows, normalize=True), whole)
    expected = np.asarray(mapped_file[rows])
    np.testing.assert_allclose(whole, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert not np.shares_memory(whole, mapped_file)
