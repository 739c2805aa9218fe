"""The method's behaviour: planted structure, gradient facts, every ablation, determinism."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import planted_data
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparsebin import runfolder
from sparsebin.config import LOSSES, ROUNDINGS, SPARSITIES, TrainConfig
from sparsebin.errors import DataError, RunFileError
from sparsebin.experiment import evaluate_run, run_experiment
from sparsebin.losses import (
    cosine_alignment,
    cosine_distance,
    distance,
    mask_from_indices,
    sparsity_term,
    topk_indices,
)
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.progress import ProgressEvent
from sparsebin.search.codes import pack_bits
from sparsebin.train import train

PLANTED = {"n_bits": 64, "k": 6, "lr": 3e-2, "batch_size": 128, "epochs": 40, "log_every": 1000}


@pytest.fixture(scope="module")
def planted():
    x, codes = planted_data(n_rows=2000, dim=128, n_bits=64, k=6)
    return x, codes


def test_paper_setting_recovers_planted_codes_with_flexible_counts(planted):
    x, codes = planted
    result = train(x, TrainConfig(**PLANTED))
    metrics, _ = evaluate_run(x, result, n_queries=200)
    val = metrics["validation"]
    planted_mean = codes.sum(axis=1).mean()
    # Measured: recon_loss ~0.14, active_mean ~6.9 for K=6, active_std ~1.2 (planted std ~2.3).
    assert val["recon_loss"] < 0.2
    assert abs(val["active_mean"] - 6) <= 0.25 * 6
    assert val["active_std"] > 0.5
    assert abs(planted_mean - 6) < 0.3
    # A 2000-row set, so the held-out part is 200 rows.
    assert val["split"] == "validation" and val["n_rows"] == 200


def test_rigid_topk_gives_exactly_k_bits(planted):
    x, _ = planted
    result = train(x, TrainConfig(**PLANTED | {"sparsity": "hard-topk", "epochs": 5}))
    val = evaluate_run(x, result, n_queries=50)[0]["validation"]
    assert val["active_std"] == 0.0
    assert val["active_mean"] == 6 and val["active_min"] == 6 and val["active_max"] == 6


def _encoder_gradient_from_reconstruction(rounding: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(16, 32, 4, rounding=rounding)).train()
    x = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    out = model(x)
    distance("cosine", x, out.recon).backward()
    return model.encoder.weight.grad


def test_pass_through_round_sends_reconstruction_gradient_to_encoder():
    grad = _encoder_gradient_from_reconstruction("ste")
    assert grad is not None and grad.abs().sum() > 0


def test_hard_round_sends_no_reconstruction_gradient_to_encoder():
    grad = _encoder_gradient_from_reconstruction("hard")
    assert grad is None or grad.abs().sum() == 0


def test_removed_round_lets_decoder_see_the_soft_code():
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(16, 32, 4, rounding="none")).train()
    out = model(torch.randn(8, 16))
    torch.testing.assert_close(out.code, out.soft)
    assert not torch.equal(out.code, out.hard)
    model.eval()
    out = model(torch.randn(8, 16))
    torch.testing.assert_close(out.code, out.hard)  # evaluation always decodes the hard bits


def test_sparsity_terms_match_their_definitions():
    soft = torch.tensor([[0.9, 0.8, 0.1, 0.2]])
    top = torch.tensor([[0, 1]])  # t = [1, 1, 0, 0]
    cos = 1 - (0.9 + 0.8) / (math.sqrt(0.81 + 0.64 + 0.01 + 0.04) * math.sqrt(2))
    assert sparsity_term("align", "cosine", soft, top).item() == pytest.approx(cos, rel=1e-5)
    assert sparsity_term("align", "mse", soft, top).item() == pytest.approx((0.01 + 0.04 + 0.01 + 0.04) / 4)
    assert sparsity_term("align", "l1", soft, top).item() == pytest.approx((0.1 + 0.2 + 0.1 + 0.2) / 4)
    assert sparsity_term("l1", "cosine", soft, top).item() == pytest.approx(0.5)
    assert sparsity_term("none", "cosine", soft, top).item() == 0.0


def test_written_out_cosine_alignment_equals_autograd_of_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(32, 64, dtype=torch.float64)
    soft = torch.sigmoid(logits).requires_grad_()
    top = topk_indices(soft, 5)
    fast = cosine_alignment(soft, top)
    (fast_grad,) = torch.autograd.grad(fast, soft)
    reference = cosine_distance(soft, mask_from_indices(top, 64, soft))
    (reference_grad,) = torch.autograd.grad(reference, soft)
    torch.testing.assert_close(fast, reference)
    torch.testing.assert_close(fast_grad, reference_grad)


@pytest.mark.parametrize(("loss", "rounding", "sparsity"), list(itertools.product(LOSSES, ROUNDINGS, SPARSITIES)))
def test_every_combination_trains_and_yields_finite_metrics(loss, rounding, sparsity):
    x, _ = planted_data(n_rows=120, dim=12, n_bits=16, k=3, seed=1)
    config = TrainConfig(n_bits=16, k=3, loss=loss, rounding=rounding, sparsity=sparsity, epochs=2, batch_size=32)
    result = train(x, config)
    assert len(result.history) >= 2
    metrics, codes = evaluate_run(x, result, n_queries=20)
    assert codes.shape == (120, 2)
    for part in ("train", "validation", "sign_validation"):
        for key, value in metrics[part].items():
            if isinstance(value, float):
                assert math.isfinite(value), f"{part}.{key} is {value}"


@pytest.mark.parametrize(("row", "value"), [(3, np.nan), (7, np.inf)])
def test_nan_or_inf_in_data_is_refused_before_training(row, value):
    x, _ = planted_data(n_rows=50, dim=8, n_bits=8, k=2)
    x[row, 2] = value
    with pytest.raises(DataError, match=f"embeddings contain NaN or inf, first in row {row}"):
        train(x, TrainConfig(n_bits=16, k=2, batch_size=10))


def test_zero_row_is_refused_when_normalising():
    x, _ = planted_data(n_rows=50, dim=8, n_bits=8, k=2)
    x[5] = 0
    with pytest.raises(DataError, match="embeddings row 5 is all zeros"):
        train(x, TrainConfig(n_bits=16, k=2, batch_size=10))


def test_same_seed_gives_same_codes_and_other_seed_differs():
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    # Pinned to the CPU: GPU kernels (atomics in reductions) need not repeat bit for bit.
    config = TrainConfig(n_bits=32, k=4, epochs=3, batch_size=64, device="cpu")
    first = evaluate_run(x, train(x, config), n_queries=20)[1]
    second = evaluate_run(x, train(x, config), n_queries=20)[1]
    other = evaluate_run(x, train(x, config.replace(seed=1)), n_queries=20)[1]
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("rounding", ["ste", "stochastic"])
def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, rounding):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    config = TrainConfig(n_bits=32, k=4, epochs=4, batch_size=64, rounding=rounding, device="cpu")  # bit for bit
    whole = train(x, config)
    checkpoint = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def stop_after_two_epochs():
        calls["n"] += 1
        return calls["n"] > 2 * 6  # 360 training rows / 64 = 6 steps an epoch

    interrupted = train(x, config, should_stop=stop_after_two_epochs, checkpoint_path=checkpoint)
    assert interrupted.cancelled and interrupted.epochs_done == 2
    resumed = train(x, config, checkpoint_path=checkpoint)
    assert resumed.epochs_done == 4
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in whole.history]
    assert resumed.stability == whole.stability  # the churn curve, gradient norms and non-finite count


def test_progress_reports_steps_losses_and_dead_bits():
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    events = []
    train(x, TrainConfig(n_bits=32, k=4, epochs=2, batch_size=30, log_every=3), progress=events.append)
    assert [e.step for e in events][:3] == [3, 6, 9]
    assert events[-1].step == events[-1].total_steps == 18
    fields = {"loss", "reconstruction_loss", "alignment_loss", "active_mean", "dead_bits", "samples_per_second"}
    assert fields <= set(events[0].to_record())
    assert all(0 <= e.dead_bits <= 32 for e in events)


def test_dead_count_changes_only_at_epoch_ends_and_hard_topk_logs_its_code():
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    events = []
    train(x, TrainConfig(n_bits=32, k=4, epochs=4, batch_size=30, log_every=2, lr=3e-2), progress=events.append)
    last_epoch_count = None
    for event in events:
        if event.epoch > 1 and not event.epoch_end:
            assert event.dead_bits == last_epoch_count  # mid-epoch: the last whole epoch's count
        if event.epoch_end:
            last_epoch_count = event.dead_bits
    rigid = []
    train(x, TrainConfig(n_bits=32, k=4, epochs=2, batch_size=30, sparsity="hard-topk"), progress=rigid.append)
    assert all(event.active_mean == 4 for event in rigid)  # the stored code t, not h


def test_a_folder_with_another_configs_checkpoint_is_refused_untouched(tmp_path):
    x, _ = planted_data(n_rows=300, dim=16, n_bits=32, k=4)
    config = TrainConfig(n_bits=32, k=4, epochs=3, batch_size=30, loss="mse")
    calls = {"n": 0}

    def stop_in_epoch_two():
        calls["n"] += 1
        return calls["n"] > 12

    run_experiment(x, config, tmp_path, should_stop=stop_in_epoch_two)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(RunFileError, match=r"checkpoint of a different configuration \(loss differ\)"):
        run_experiment(x, config.replace(loss="cosine"), tmp_path)
    assert (tmp_path / "config.json").read_text() == before
    run_experiment(x, config, tmp_path)  # the same config resumes and finishes
    assert (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoint.safetensors").exists()
    with pytest.raises(RunFileError, match="already holds a finished run"):
        run_experiment(x, config, tmp_path)


def test_a_model_file_keeps_its_spec_and_one_written_before_the_spec_still_loads(tmp_path):
    x, _ = planted_data(n_rows=200, dim=16, n_bits=32, k=4)
    config = TrainConfig(n_bits=32, k=4, epochs=1, batch_size=50, sparsity="hard-topk", centre="mean")
    run_experiment(x, config, tmp_path, n_queries=20)
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert ModelSpec.from_json(meta["model"]) == ModelSpec(16, 32, 4, sparsity="hard-topk", centre="mean")
    # Before ModelSpec, the metadata held the constructor's arguments: the same fields, no decoder path.
    old = {name: value for name, value in json.loads(meta["model"]).items() if name != "decoder_path"}
    save_file(load_file(str(path)), str(path), metadata=meta | {"model": json.dumps(old)})
    model = runfolder.load_model(tmp_path)
    assert model.spec == ModelSpec(16, 32, 4, sparsity="hard-topk", centre="mean", decoder_path="auto")
    codes = pack_bits(model.encode(torch.nn.functional.normalize(torch.from_numpy(x), dim=1)).numpy())
    np.testing.assert_array_equal(codes, runfolder.load_codes(tmp_path))


def test_history_written_with_the_old_short_names_reads_under_the_whole_words(tmp_path):
    old = {"step": 3, "epoch": 1, "total_steps": 9, "loss": 0.5, "rec_loss": 0.25, "sp_loss": 0.25}
    old |= {"active_mean": 4.0, "dead_bits": 1, "samples_per_s": 900.0, "elapsed_s": 0.1, "epoch_end": False}
    old |= {"aux_loss": 0.01, "k_target": 8}
    (tmp_path / "history.jsonl").write_text(json.dumps(old) + "\n")
    (record,) = runfolder.load_history(tmp_path)
    assert ProgressEvent(**record) == ProgressEvent(
        step=3,
        epoch=1,
        total_steps=9,
        loss=0.5,
        reconstruction_loss=0.25,
        alignment_loss=0.25,
        active_mean=4.0,
        dead_bits=1,
        samples_per_second=900.0,
        elapsed_seconds=0.1,
        epoch_end=False,
        auxiliary_loss=0.01,
        target_active=8,
    )
    assert ProgressEvent(**record).to_record() == record  # no rate control: no rate_loss in the record
