"""Training stability: code churn, loss roughness, gradient norms and non-finite steps, measured while training."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import planted_data
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparsebin import train as training
from sparsebin.config import TrainConfig
from sparsebin.errors import ConfigError, TrainingError
from sparsebin.stability import PROBE_ROWS, probe_rows, stability_metrics
from sparsebin.train import split_rows, train

# 900 training rows, 9 steps an epoch.
SMALL = TrainConfig(n_bits=32, k=4, epochs=10, batch_size=100, log_every=1, device="cpu")


@pytest.fixture(scope="module")
def planted():
    return planted_data(n_rows=1000, dim=64, n_bits=32, k=4)[0]


def poison(monkeypatch, steps, how="batch"):
    """Make the steps of `steps` (0-based) not finite: a NaN in the batch, or an infinite encoder gradient."""
    real = training.train_step

    def poisoned(state, x, step):
        if step not in steps:
            return real(state, x, step)
        if how == "batch":
            x = x.clone()
            x[0, 0] = math.nan
            return real(state, x, step)
        handle = state.model.encoder.weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
        try:
            return real(state, x, step)
        finally:
            handle.remove()

    monkeypatch.setattr(training, "train_step", poisoned)


def test_an_oscillating_learning_rate_churns_the_codes_and_roughens_the_loss(planted, one_torch_thread):
    steady = train(planted, SMALL).stability
    shaky = train(planted, SMALL.replace(lr=0.3)).stability
    # Measured: churn 0.0053 at the default lr 1e-3 against 0.019 at 0.3, roughness 0.0061 against 0.018.
    assert shaky["code_churn"] > 2 * steady["code_churn"]
    assert shaky["loss_roughness"] > 2 * steady["loss_roughness"]
    assert len(steady["code_churn_curve"]) == SMALL.epochs and steady["code_churn"] == steady["code_churn_curve"][-1]
    assert steady["nonfinite_steps"] == 0 and 0 < steady["grad_norm_mean"] <= steady["grad_norm_max"]


def test_the_first_epochs_churn_compares_with_the_codes_before_training(planted, one_torch_thread):
    config = SMALL.replace(epochs=1)
    result = train(planted, config)
    split = split_rows(len(planted), config.val_fraction, config.split_seed)
    probe = torch.nn.functional.normalize(torch.from_numpy(planted[probe_rows(split.train, split.validation, 0)]))
    before = training.build_model(config, planted.shape[1]).encode(probe)
    after = result.model.encode(probe)
    assert result.stability["code_churn_curve"] == [(before != after).sum().item() / before.numel()]


def test_a_nan_batch_is_counted_and_never_applied(planted, monkeypatch, one_torch_thread):
    config = SMALL.replace(epochs=2)
    last = 2 * 9 - 1
    calls = {"n": 0}

    def stop_before_the_last_step():
        calls["n"] += 1
        return calls["n"] > last

    unpoisoned = train(planted, config, should_stop=stop_before_the_last_step)
    poison(monkeypatch, {last})
    result = train(planted, config)
    for name, value in unpoisoned.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], value, rtol=0, atol=0)
    assert math.isnan(result.history[-1]["loss"]) and math.isnan(result.history[-1]["grad_norm"])
    assert result.history[-1]["nonfinite_steps"] == 1 and result.history[-2]["nonfinite_steps"] == 0
    assert result.stability["nonfinite_steps"] == 1 and math.isfinite(result.stability["grad_norm_max"])


def test_too_many_nonfinite_steps_stop_the_run_with_a_sentence(planted, monkeypatch):
    poison(monkeypatch, set(range(2, 90)))
    with pytest.raises(TrainingError) as caught:
        train(planted, SMALL.replace(max_nonfinite_steps=3, log_every=2))
    assert str(caught.value) == (
        "training stopped at step 6 (epoch 1): 4 steps had a loss that was not finite (NaN or infinite), and "
        "max_nonfinite_steps is 3; none of them was applied to the weights, so train again with a lower lr than 0.001."
    )


def test_a_gradient_that_is_not_finite_under_a_finite_loss_is_named(planted, monkeypatch):
    poison(monkeypatch, {0, 1}, how="gradient")
    with pytest.raises(TrainingError, match=r"at step 2 \(epoch 1\): 2 steps had a gradient that was not finite"):
        train(planted, SMALL.replace(max_nonfinite_steps=2))


def test_a_resumed_run_reports_the_stability_of_an_uninterrupted_one(planted, monkeypatch, tmp_path):
    poison(monkeypatch, {4})  # in the first epoch, before the checkpoint
    config = SMALL.replace(epochs=4)
    whole = train(planted, config)
    checkpoint = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def stop_after_two_epochs():
        calls["n"] += 1
        return calls["n"] > 2 * 9

    assert train(planted, config, should_stop=stop_after_two_epochs, checkpoint_path=checkpoint).epochs_done == 2
    resumed = train(planted, config, checkpoint_path=checkpoint)
    assert resumed.stability == whole.stability and whole.stability["nonfinite_steps"] == 1

    def untimed(history):  # JSON, where the poisoned step's NaN loss equals itself
        return json.dumps(
            [{k: v for k, v in e.items() if k not in ("samples_per_second", "elapsed_seconds")} for e in history]
        )

    assert untimed(resumed.history) == untimed(whole.history)


def test_a_checkpoint_written_before_the_count_resumes_with_none_counted(planted, tmp_path):
    config = SMALL.replace(epochs=2)
    checkpoint = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def stop_after_one_epoch():
        calls["n"] += 1
        return calls["n"] > 9

    train(planted, config, should_stop=stop_after_one_epoch, checkpoint_path=checkpoint)
    tensors = load_file(str(checkpoint))
    with safe_open(str(checkpoint), framework="pt") as handle:
        meta = handle.metadata()
    del tensors["stability.nonfinite"]
    save_file(tensors, str(checkpoint), metadata=meta)
    assert train(planted, config, checkpoint_path=checkpoint).stability["nonfinite_steps"] == 0


def test_the_probe_is_held_out_rows_by_the_split_seed_or_training_rows_when_none_are():
    split = split_rows(30000, 0.1, seed=0)
    probe = probe_rows(split.train, split.validation, split_seed=0)
    assert len(probe) == PROBE_ROWS and set(probe) <= set(split.validation)
    np.testing.assert_array_equal(probe, probe_rows(split.train, split.validation, split_seed=0))
    assert not np.array_equal(probe, probe_rows(split.train, split.validation, split_seed=1))
    small = split_rows(100, 0.0, seed=0)
    np.testing.assert_array_equal(probe_rows(small.train, small.validation, 0), np.arange(100))


def test_stability_figures_follow_their_definitions_from_a_history():
    def event(step, loss, **fields):
        return {"step": step, "epoch": 1 + (step - 1) // 4, "loss": loss, "epoch_end": step % 4 == 0} | fields

    losses = [1.0, 0.9, 0.5, 0.6, 0.4, 0.45, 0.5, 0.3]
    history = [event(step, loss, grad_norm=step / 10, nonfinite_steps=0) for step, loss in enumerate(losses, 1)]
    history[3]["code_churn"], history[7]["code_churn"] = 0.2, 0.05
    history[5]["grad_norm"], history[6]["nonfinite_steps"] = math.nan, 1
    second_half = np.array([0.4, 0.45, 0.5, 0.3])  # steps 5 to 8, after half the 8 steps
    assert stability_metrics(history) == {
        "code_churn": 0.05,
        "code_churn_curve": [0.2, 0.05],
        "loss_roughness": pytest.approx(np.median(np.abs(np.diff(second_half))) / np.median(second_half)),
        "grad_norm_mean": pytest.approx(np.mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8])),
        "grad_norm_max": 0.8,
        "nonfinite_steps": 0,
    }
    history[-1]["nonfinite_steps"] = 1
    assert stability_metrics(history)["nonfinite_steps"] == 1
    # A history logged before stability was measured: only the roughness, which needs only the losses.
    old = [event(step, loss) for step, loss in enumerate(losses, 1)]
    assert stability_metrics(old) == stability_metrics(history) | {
        "code_churn": None,
        "code_churn_curve": None,
        "grad_norm_mean": None,
        "grad_norm_max": None,
        "nonfinite_steps": None,
    }


def test_max_nonfinite_steps_must_be_positive():
    with pytest.raises(ConfigError, match="max_nonfinite_steps must be a positive integer, got 0."):
        TrainConfig(max_nonfinite_steps=0).validate()
