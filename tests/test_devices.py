"""GPU readiness, checked on a CPU: device names, the `auto` probe, free memory, clocks, random states."""

import json
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset, planted_data
from safetensors import safe_open

import sparsebin.train
from sparsebin import devices, runfolder
from sparsebin.batches import RESIDENT_SHARE, choose_placement
from sparsebin.config import TrainConfig
from sparsebin.experiment import run_experiment
from sparsebin.interpret.bits import RunContext
from sparsebin.jobs.locks import device_lock_path
from sparsebin.jobs.queue import Store
from sparsebin.metrics import EVALUATION_BUDGET, evaluate_model, evaluation_chunk_rows
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.search.codes import unpack_bits
from sparsebin.train import train

SMALL = dict(n_bits=32, k=4, epochs=2, batch_size=64, device="cpu")


def test_one_card_has_one_name_and_one_worker_lock(tmp_path):
    assert devices.resolve_device("cuda") == devices.resolve_device("cuda:0") == "cuda:0"
    assert device_lock_path(tmp_path, devices.resolve_device("cuda")) == device_lock_path(tmp_path, "cuda:0")
    assert devices.resolve_device("cuda:1") == "cuda:1" and devices.resolve_device("cpu") == "cpu"


def test_auto_skips_a_gpu_whose_test_kernel_fails_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    tried = []

    def broken(device):
        tried.append(device)
        raise RuntimeError("no kernel image is available for execution on the device")

    with pytest.warns(RuntimeWarning, match="cuda:0 is present but a test kernel failed"):
        assert devices.resolve_device("auto", probe=broken) == "cpu"
    assert tried == ["cuda:0"]
    assert devices.resolve_device("auto", probe=lambda device: None) == "cuda:0"


def test_a_worker_claims_only_jobs_for_its_device_under_any_of_its_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # so cuda jobs can be queued here
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    store = Store()
    name = make_dataset()
    jobs = {
        device: store.submit(name, TINY.replace(device=device), again=True)
        for device in ("cuda", "cpu", "cuda:0", "auto")
    }
    assert store.claim("cpu-worker", "cpu").id == jobs["cpu"].id
    assert store.claim("gpu-worker", "cuda:0").id == jobs["cuda"].id  # "cuda" is card 0
    assert store.claim("gpu-worker", "cuda:0").id == jobs["cuda:0"].id
    assert store.claim("cpu-worker", "cpu").id == jobs["auto"].id  # auto is anyone's
    assert store.claim("cpu-worker", "cpu") is None


def test_training_rows_fall_back_to_the_mapped_path_when_free_memory_is_short(caplog):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    size = 360 * 16 * 4  # the training part in float32
    assert choose_placement("auto", 360, 16, "cuda:0", int(size / RESIDENT_SHARE)).mode == "resident"
    short = choose_placement("auto", 360, 16, "cuda:0", size)
    assert short.mode == "mapped"
    assert "but cuda:0 has 0.00 GiB free" in short.reason and "read from the data" in short.reason
    config = TrainConfig(**SMALL)
    with caplog.at_level(logging.WARNING, logger="sparsebin.train"):
        mapped = train(x, config, free_bytes=size)
    assert mapped.placement.mode == "mapped" and "batches are read from the data" in caplog.text
    resident = train(x, config)  # this machine's free memory holds 23 KB
    assert resident.placement.mode == "resident"
    for name, value in resident.model.state_dict().items():
        torch.testing.assert_close(mapped.model.state_dict()[name], value, rtol=0, atol=0)


def test_evaluation_chunks_shrink_as_the_code_grows_and_as_free_memory_shrinks():
    small = evaluation_chunk_rows(1024, 384)
    large = evaluation_chunk_rows(65536, 384)
    assert large < small // 32
    assert large * (5 * 65536 + 6 * 384) * 4 <= EVALUATION_BUDGET  # at N=65536 a chunk stays in the budget
    assert evaluation_chunk_rows(65536, 384, free_bytes=32 * 2**20) < large  # a nearly full card
    model = BinaryAutoencoder(ModelSpec(16, 64, 4)).eval()
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    whole = evaluate_model(model, x, split="train", n_queries=10, chunk_rows=300)
    chunked = evaluate_model(model, x, split="train", n_queries=10, chunk_rows=64)
    np.testing.assert_array_equal(whole.packed, chunked.packed)
    assert chunked.metrics["recon_loss"] == pytest.approx(whole.metrics["recon_loss"], rel=1e-6)


def forbid_cuda(monkeypatch):
    def refuse(*arguments, **keywords):
        raise AssertionError("a CPU job touched CUDA")

    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "init", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, refuse)


def test_a_cpu_checkpoint_holds_one_device_state_and_resumes_without_touching_cuda(tmp_path, monkeypatch):
    forbid_cuda(monkeypatch)
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    config = TrainConfig(**(SMALL | {"epochs": 3, "rounding": "stochastic"}))
    whole = train(x, config)
    checkpoint = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def stop_in_epoch_two():
        calls["n"] += 1
        return calls["n"] > 6 + 2  # 360 rows / 64 = 6 steps an epoch

    train(x, config, should_stop=stop_in_epoch_two, checkpoint_path=checkpoint)
    with safe_open(str(checkpoint), framework="pt") as handle:
        names = [name for name in handle.keys() if name.startswith("rng.")]
        assert handle.metadata()["rng_device"] == "cpu"
    assert sorted(names) == ["rng.batch_order", "rng.device"]
    resumed = train(x, config, checkpoint_path=checkpoint)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
    assert not torch.cuda.is_initialized()


def test_a_state_from_another_kind_of_device_seeds_the_resume_device_reproducibly():
    cuda_state = torch.arange(16, dtype=torch.uint8)  # a Philox seed and offset, as CUDA keeps them
    devices.set_rng_state("cpu", cuda_state, saved_on="cuda:0")
    first = torch.rand(4)
    devices.set_rng_state("cpu", cuda_state, saved_on="cuda:0")
    torch.testing.assert_close(torch.rand(4), first, rtol=0, atol=0)
    devices.set_rng_state("cpu", cuda_state.flip(0), saved_on="cuda:0")
    assert not torch.equal(torch.rand(4), first)


def test_throughput_is_timed_after_the_device_finishes_its_steps(monkeypatch):
    waits = []

    def slow_synchronize(device):  # stands for a GPU still busy with queued steps
        time.sleep(0.1)
        waits.append(device)

    monkeypatch.setattr(sparsebin.train, "synchronize", slow_synchronize)
    x, _ = planted_data(n_rows=200, dim=8, n_bits=16, k=2)
    events = []
    train(x, TrainConfig(n_bits=16, k=2, epochs=1, batch_size=60, log_every=1, device="cpu"), progress=events.append)
    assert len(waits) == len(events) == 3
    assert [event.elapsed_seconds >= 0.1 * (index + 1) for index, event in enumerate(events)] == [True] * 3


def test_a_run_folder_records_the_device_and_torch_that_made_its_codes(tmp_path):
    x, _ = planted_data(n_rows=200, dim=8, n_bits=16, k=2)
    run_experiment(x, TrainConfig(n_bits=16, k=2, epochs=1, batch_size=50, device="cpu"), tmp_path, n_queries=5)
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert environment["device"] == "cpu" and environment["torch"] == torch.__version__
    assert environment["dtype"] == "float32" and environment["placement"] == "resident"
    assert runfolder.evaluation_device(tmp_path) == "cpu"


def test_bit_views_never_show_a_firing_bit_beside_a_logit_at_or_below_zero(tmp_path):
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    x = x * np.random.default_rng(1).uniform(0.5, 3, size=(300, 1)).astype(np.float32)  # rows of any length
    run_experiment(x, TrainConfig(n_bits=32, k=4, epochs=2, batch_size=50, device="cpu"), tmp_path, n_queries=5)
    concepts = SimpleNamespace(reset_index=lambda drop: list(range(300)))
    ctx = RunContext.load(tmp_path, SimpleNamespace(name="planted", embeddings=x, concepts=concepts))
    codes = unpack_bits(ctx.codes, 32).astype(bool)  # (M, N) stored bits
    for bit in range(32):
        np.testing.assert_array_equal(ctx.bit_logits(bit) > 0, codes[:, bit])
    for row in range(0, 300, 7):
        np.testing.assert_array_equal(ctx.concept_logits(row) > 0, codes[row])
    near_zero = np.array([-1e-7, 1e-7, 2.0, -2.0], dtype=np.float32)
    settled = ctx.agree_with_codes(near_zero, np.array([True, False, True, False]))
    assert settled[0] > 0 and settled[1] == 0 and settled[2] == 2.0 and settled[3] == -2.0
