"""Every invalid setting is refused with one sentence that names it."""

import dataclasses

import pytest

from sparsebin.config import GRID_SETTINGS, SETTING_KINDS, TrainConfig, parse_grid, parse_setting
from sparsebin.errors import ConfigError

INVALID = [
    ({"k": 64, "n_bits": 64}, "k must be smaller than n_bits, got k=64 and n_bits=64"),
    ({"k": 100, "n_bits": 64}, "k must be smaller than n_bits"),
    ({"k": 0}, "k must be at least 1, got 0"),
    ({"n_bits": 0}, "n_bits must be a positive integer, got 0"),
    ({"alpha": -0.5}, "alpha must be a number of at least 0, got -0.5"),
    ({"lr": -1e-3}, "lr must be a positive number, got -0.001"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"loss": "hinge"}, "loss must be one of cosine, mse, l1, mse_sum, l1_sum, got 'hinge'"),
    ({"rec_loss": "huber"}, "rec_loss must be one of cosine, mse, l1, mse_sum, l1_sum or unset, got 'huber'"),
    ({"rounding": "floor"}, "rounding must be one of ste, none, hard, stochastic, got 'floor'"),
    ({"sparsity": "topk"}, "sparsity must be one of align, hard-topk, l1, none, got 'topk'"),
    ({"init": "zeros"}, "init must be one of default, sparse, got 'zeros'"),
    ({"val_fraction": 0.95}, "val_fraction must lie between 0 and 0.9, got 0.95"),
    ({"val_fraction": -0.1}, "val_fraction must lie between 0 and 0.9"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
]


@pytest.mark.parametrize(("changes", "message"), INVALID)
def test_invalid_setting_is_refused_with_its_sentence(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**changes).validate()


def test_unavailable_device_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    with pytest.raises(ConfigError, match="device cuda is not available on this machine"):
        TrainConfig(device="cuda").validate()


def test_batch_larger_than_training_rows_is_refused():
    config = TrainConfig(batch_size=500, val_fraction=0.1)
    with pytest.raises(ConfigError, match="batch_size 500 is larger than the 450 training rows; choose at most 450"):
        config.validate(n_rows=500)
    config.replace(batch_size=450).validate(n_rows=500)


def test_json_round_trip_keeps_every_setting():
    config = TrainConfig(n_bits=256, k=12, alpha=0.5, loss="mse", sparsity_loss="cosine", rounding="none", seed=7)
    assert TrainConfig.from_json(config.to_json()) == config
    assert config.reconstruction_distance == "mse" and config.alignment_distance == "cosine"


def test_unknown_setting_in_json_is_named():
    with pytest.raises(ConfigError, match="unknown setting 'bits'"):
        TrainConfig.from_dict({"bits": 12})


def test_grid_fields_are_read_as_their_settings_kind():
    typed = {"n_bits": "32, 64", "alpha": "0.5", "loss": " mse ,l1", "seed": "", "normalize": "no, yes"}
    assert parse_grid(typed) == {"n_bits": [32, 64], "alpha": [0.5], "loss": ["mse", "l1"], "normalize": [False, True]}
    with pytest.raises(ConfigError, match="normalize: 'maybe' is not true or false."):
        parse_setting("normalize", "maybe")
    with pytest.raises(ConfigError, match="unknown setting 'bits'"):
        parse_grid({"bits": "12"})
    assert parse_setting("rec_loss", "l1") == "l1"  # a setting that may be unset is read as text
    assert set(GRID_SETTINGS) <= set(SETTING_KINDS) == {field.name for field in dataclasses.fields(TrainConfig)}
