"""The remedies beyond the paper: each one's effect on planted data, gradients, determinism, resume."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import planted_data

from sparsebin.config import PRESETS, ConfigError, TrainConfig, preset_config, preset_of
from sparsebin.experiment import evaluate_run
from sparsebin.metrics import firing_frequency, model_decoding
from sparsebin.model import BinaryAutoencoder, ModelSpec
from sparsebin.remedies import Remedies, auxiliary_term, init_model, k_at, rate_term, training_centre
from sparsebin.search import elias_fano
from sparsebin.search.codes import bit_counts
from sparsebin.train import train

SMALL = {"n_bits": 64, "k": 4, "batch_size": 100, "lr": 1e-2, "log_every": 1000}
OPTIONS = {
    "centre mean": {"centre": "mean"},
    "centre learned-median": {"centre": "learned-median"},
    "rate balance": {"rate_control": "balance"},
    "rate bounds": {"rate_control": "bounds"},
    "revive auxk": {"revive": "auxk", "revive_after": 3},
    "revive reinit": {"revive": "reinit", "revive_after": 3},
    "unit decoder, tied init": {"unit_decoder": True, "tied_init": True},
    "k schedule": {"k_start": 16, "k_anneal_epochs": 2},
    "recommended preset": {
        name: value for name, value in PRESETS["recommended"].items() if name not in ("n_bits", "k")
    },
    "rigid topk, k schedule": {"sparsity": "hard-topk", "k_start": 16, "k_anneal_epochs": 2},
}


@pytest.fixture(scope="module")
def planted():
    return planted_data(n_rows=1000, dim=32, n_bits=64, k=4)[0]


@pytest.fixture(scope="module")
def shared_direction(planted):
    """The planted rows plus a strong direction they all share, as sentence embeddings have."""
    common = np.random.default_rng(5).standard_normal(planted.shape[1]).astype(np.float32)
    x = planted + 2.0 * common / np.linalg.norm(common)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _firing(x, config):
    result = train(x, config)
    metrics, codes = evaluate_run(x, result, n_queries=50)
    return firing_frequency(bit_counts(codes, config.n_bits), len(codes)), metrics


def test_centring_stops_the_shared_direction_collapsing_the_code_into_always_on_bits(shared_direction):
    config = TrainConfig(**SMALL, epochs=25)
    paper, paper_metrics = _firing(shared_direction, config)
    centred, centred_metrics = _firing(shared_direction, config.replace(centre="mean"))
    # Measured: the paper's setting keeps 4 bits on for every row and 60 of 64 dead (recall 0.01);
    # centred, no bit fires for every row, at most 4 are dead and recall is ~0.19.
    assert (paper == 1.0).sum() >= 3 and (paper == 0).sum() >= 50
    assert (centred == 1.0).sum() == 0 and (centred == 0).sum() <= 8
    assert (
        centred_metrics["validation"]["recall_at_10_hamming"] > 5 * paper_metrics["validation"]["recall_at_10_hamming"]
    )


def test_rate_bounds_keep_every_bits_firing_rate_inside_them(planted):
    config = TrainConfig(**SMALL, epochs=8)
    paper, _ = _firing(planted, config)
    bounded, _ = _firing(planted, config.replace(rate_control="bounds", rate_min=0.01, rate_max=0.2))
    # Measured: without the term the busiest bit fires for 97 % of rows and 10 bits for over half;
    # with it every bit fires for 3-23 % of rows (bounds on batches of 100 rows, so a little slack).
    assert paper.max() > 0.9 and (paper > 0.5).sum() >= 5
    assert bounded.max() <= 0.25 and bounded.min() >= 0.01


def test_rate_balance_removes_always_on_and_dead_bits(planted):
    balanced, _ = _firing(planted, TrainConfig(**SMALL, epochs=8, rate_control="balance"))
    assert (balanced > 0.5).sum() == 0 and (balanced == 0).sum() == 0


SPARSE_START = TrainConfig(**SMALL, epochs=25, init="sparse")


@pytest.fixture(scope="module")
def sparse_start_firing(planted):
    # A sparse start (encoder bias logit(K/N)) leaves most bits dead (METHOD.md); measured 50 of 64 here.
    return _firing(planted, SPARSE_START)[0]


@pytest.mark.parametrize("revive", ["auxk", "reinit"])
def test_revival_brings_dead_bits_back(planted, sparse_start_firing, revive):
    revived, _ = _firing(planted, SPARSE_START.replace(revive=revive, revive_after=5, aux_weight=1.0))
    # Measured: auxk leaves 4 dead, reinit none.
    assert (sparse_start_firing == 0).sum() >= 40
    assert (revived == 0).sum() <= 8


def test_recommended_preset_brings_back_the_bits_rigid_topk_leaves_dead(planted):
    # Four times more bits than the data's planted 64: rigid TopK alone leaves many never chosen.
    settings = {"n_bits": 256, "k": 4, "batch_size": 100, "lr": 1e-2, "log_every": 1000, "epochs": 10}
    topk, _ = _firing(planted, TrainConfig(**settings, sparsity="hard-topk"))
    recommended, metrics = _firing(planted, preset_config("recommended", **settings))
    # Measured: 89 of 256 dead under rigid TopK alone, none with the preset's rate balance.
    assert (topk == 0).sum() >= 40 and (recommended == 0).sum() <= 3
    assert recommended.max() <= 0.5  # no bit fires for half the rows
    assert metrics["validation"]["active_std"] == 0 and metrics["validation"]["active_mean"] == 4  # exactly K


def test_rate_terms_send_gradient_to_always_on_and_dead_bits_and_not_to_balanced_ones():
    config = TrainConfig(n_bits=4, k=1, rate_control="bounds", rate_min=0.1, rate_max=0.5)
    logits = torch.tensor([[5.0, -5.0, 0.5, -0.5]] * 5 + [[5.0, -5.0, -0.5, 0.5]] * 5, requires_grad=True)
    soft = torch.sigmoid(logits)
    rate_term(config, soft, (logits > 0).float(), 1).backward()
    grad = logits.grad.sum(dim=0)
    assert grad[0] > 0 and grad[1] < 0  # always-on pushed down, dead pushed up
    assert grad[2] == 0 and grad[3] == 0  # firing for half the rows: inside the bounds


def test_rate_term_under_rigid_topk_counts_the_stored_topk_bits_not_the_signs_of_the_logits():
    # Every logit positive: h = 1[u > 0] fires every bit, but the stored code is the TopK mask (2 of 8 bits).
    config = TrainConfig(n_bits=8, k=2, sparsity="hard-topk", rate_control="bounds", rate_min=0.01, rate_max=0.5)
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(4, 8, 2, sparsity="hard-topk")).train()
    with torch.no_grad():
        model.encoder.bias.fill_(20.0)
    x = torch.nn.functional.normalize(torch.randn(16, 4), dim=1)
    out = model(x)
    assert bool((out.hard == 1).all())
    mask = model.stored_code(out.hard, out.topk)
    term = Remedies(config, model, steps_per_epoch=1).extra_terms(model, x, out, 2, mask)["rate_loss"]
    assert term.item() == pytest.approx(config.rate_weight * rate_term(config, out.soft, mask, 2).item())
    assert rate_term(config, out.soft, out.hard, 2).item() > 2 * rate_term(config, out.soft, mask, 2).item()


def test_auxiliary_term_trains_only_dead_bits_and_their_decoder_columns():
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(8, 16, 2)).train()
    x = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    out = model(x)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 7, 11]] = True
    auxiliary_term(model, x, out, dead, aux_k=2).backward()
    encoder_rows = model.encoder.weight.grad.abs().sum(dim=1)
    decoder_columns = model.decoder.weight.grad.abs().sum(dim=0)
    assert set(torch.nonzero(encoder_rows).flatten().tolist()) == {3, 7, 11}
    assert set(torch.nonzero(decoder_columns).flatten().tolist()) == {3, 7, 11}
    assert auxiliary_term(model, x, model(x), torch.zeros(16, dtype=torch.bool), aux_k=2) is None


def test_learned_centre_gets_a_gradient_and_a_fixed_one_does_not():
    x = torch.nn.functional.normalize(torch.randn(64, 8) + 3, dim=1)
    for centre, learned in (("mean", False), ("learned-mean", True)):
        torch.manual_seed(0)
        model = BinaryAutoencoder(ModelSpec(8, 16, 2, centre=centre)).train()
        config = TrainConfig(n_bits=16, k=2, centre=centre)
        init_model(model, config, training_centre(config, x.numpy(), np.arange(64), "cpu"))
        torch.testing.assert_close(model.centre.detach(), x.mean(dim=0))
        model(x).recon.sum().backward()
        assert (model.centre.grad is not None) == learned
        assert ("centre" in dict(model.named_parameters())) == learned and "centre" in model.state_dict()


def test_centred_model_decodes_at_the_training_rows_mean_distance_from_the_centre():
    x = torch.nn.functional.normalize(torch.randn(64, 8) + 3, dim=1)
    config = TrainConfig(n_bits=16, k=2, centre="mean")
    centre = training_centre(config, x.numpy(), np.arange(64), "cpu")
    assert centre.length == pytest.approx((x - x.mean(dim=0)).norm(dim=1).mean().item(), rel=1e-5)
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(8, 16, 2, centre="mean")).eval()
    init_model(model, config, centre)
    with torch.no_grad():
        model.decoder.weight.mul_(40)  # a decoder product far longer than the data's spread
        code = model.encode(x)
        recon = model.decode(code)
        product = model.decoder(code)
    distance = (recon - centre.point).norm(dim=1)
    torch.testing.assert_close(distance, torch.full_like(distance, centre.length))
    cosine = torch.nn.functional.cosine_similarity(recon - centre.point, product, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    # Asymmetric search reads the stored codes back exactly as the model decodes them.
    decoding = model_decoding(model)
    products = code.numpy() @ decoding.weight.T + decoding.bias
    scale, norm = decoding.rows(products)
    torch.testing.assert_close(torch.from_numpy(decoding.centre + scale[:, None] * products), recon)
    torch.testing.assert_close(torch.from_numpy(norm), recon.norm(dim=1))
    # Under MSE the loss fits |r| itself: no length, x_hat = r + c.
    mse = BinaryAutoencoder(ModelSpec(8, 16, 2, centre="mean")).eval()
    init_model(mse, config.replace(loss="mse"), centre)
    assert mse.centre_length.item() == 0 and model.centre_length.item() == pytest.approx(centre.length)
    # A centred model saved before the length was kept loads with L = 0 and decodes r + c, as it was trained.
    state = {name: value for name, value in model.state_dict().items() if name != "centre_length"}
    old = BinaryAutoencoder(ModelSpec(8, 16, 2, centre="mean")).eval()
    old.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(old.decode(code), product + centre.point)


def test_paper_model_has_exactly_the_papers_weights():
    model = BinaryAutoencoder(ModelSpec(8, 16, 2))
    assert set(model.state_dict()) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}


def test_geometric_median_ignores_far_outliers():
    x = np.concatenate([np.zeros((9, 2)), [[100.0, 100.0]]]).astype(np.float32)
    rows = np.arange(10)
    mean = training_centre(TrainConfig(centre="mean", normalize=False), x, rows, "cpu")
    median = training_centre(TrainConfig(centre="learned-median", normalize=False), x, rows, "cpu")
    assert mean.point.norm() > 10 and median.point.norm() < 1e-3
    assert median.length == pytest.approx(np.hypot(100, 100) / 10)  # nine rows at distance 0, one at 141.4
    assert training_centre(TrainConfig(), x, rows, "cpu") is None


def test_tied_init_and_unit_decoder_hold_through_training(planted):
    config = TrainConfig(**SMALL, epochs=1, unit_decoder=True, tied_init=True)
    torch.manual_seed(0)
    model = BinaryAutoencoder(ModelSpec(32, 64, 4))
    init_model(model, config, None)
    torch.testing.assert_close(model.encoder.weight, model.decoder.weight.T)
    trained = train(planted, config).model
    norms = trained.decoder.weight.norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_k_schedule_falls_geometrically_from_k_start_to_k():
    config = TrainConfig(n_bits=1024, k=16, k_start=256, k_anneal_epochs=2)
    targets = [k_at(config, step, steps_per_epoch=10) for step in range(0, 30, 5)]
    assert targets == [256, 128, 64, 32, 16, 16]
    assert k_at(TrainConfig(k=16), 7, 10) == 16


@pytest.mark.parametrize("name", list(OPTIONS))
def test_same_seed_gives_same_codes_with_each_option(name):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    options = OPTIONS[name] | ({"k_start": 16} if name == "k schedule" else {})
    config = TrainConfig(n_bits=32, k=4, epochs=3, batch_size=64, lr=1e-2, **options)
    first = evaluate_run(x, train(x, config), n_queries=20)[1]
    second = evaluate_run(x, train(x, config), n_queries=20)[1]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_resume_from_checkpoint_equals_uninterrupted_run_with_each_option(tmp_path, name):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=32, k=4)
    options = OPTIONS[name] | ({"k_start": 16} if name == "k schedule" else {})
    config = TrainConfig(n_bits=32, k=4, epochs=4, batch_size=64, lr=1e-2, **options)
    whole = train(x, config)
    calls = {"n": 0}

    def stop_after_two_epochs():
        calls["n"] += 1
        return calls["n"] > 2 * 6  # 360 training rows / 64 = 6 steps an epoch

    checkpoint = tmp_path / "checkpoint.safetensors"
    assert train(x, config, should_stop=stop_after_two_epochs, checkpoint_path=checkpoint).epochs_done == 2
    resumed = train(x, config, checkpoint_path=checkpoint)
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert [event["loss"] for event in resumed.history] == [event["loss"] for event in whole.history]


def test_revival_state_is_kept_in_the_checkpoint():
    config = TrainConfig(n_bits=16, k=2, revive="auxk")
    remedies = Remedies(config, BinaryAutoencoder(ModelSpec(4, 16, 2)), steps_per_epoch=3)
    assert set(remedies.state()) == {"steps_idle"}
    assert Remedies(TrainConfig(n_bits=16, k=2), BinaryAutoencoder(ModelSpec(4, 16, 2)), 3).state() == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"centre": "median"}, "centre must be one of none, mean, learned-mean, learned-median, got 'median'."),
        ({"rate_control": "cap"}, "rate_control must be one of none, balance, bounds, got 'cap'."),
        ({"revive": "yes"}, "revive must be one of none, auxk, reinit, got 'yes'."),
        ({"rate_weight": -1}, "rate_weight must be a number of at least 0, got -1."),
        ({"rate_min": 0.5, "rate_max": 0.2}, "rate_min and rate_max must satisfy 0 < rate_min < rate_max < 1"),
        ({"k_start": 8}, "k_start must lie above k (16) and below n_bits (1024), or be 0 for no schedule, got 8."),
        ({"k_start": 64}, "k_anneal_epochs must be at least 1 when k_start is set."),
        ({"revive": "auxk", "revive_after": 0}, "revive_after must be at least 1 step when revive is auxk, got 0."),
        ({"unit_decoder": "yes"}, "unit_decoder must be true or false, got 'yes'."),
    ],
)
def test_bad_remedy_settings_are_refused_with_one_sentence(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**changes).validate()


def test_presets_name_the_paper_and_the_recommended_remedies():
    assert preset_config("paper") == TrainConfig()
    recommended = preset_config("recommended", epochs=7)
    assert recommended.epochs == 7 and recommended.sparsity == PRESETS["recommended"]["sparsity"] == "hard-topk"
    assert (recommended.n_bits, recommended.k) == (8192, 40)
    # 48 bytes a concept Elias-Fano coded: the size of sign bits of 384 dimensions (MiniLM's)
    assert elias_fano.row_bytes(np.full(1, recommended.k), recommended.n_bits)[0] == 384 // 8
    assert preset_of(recommended.replace(n_bits=4096, k=32)) == "recommended"  # whatever its size
    assert preset_of(TrainConfig(n_bits=64)) == "paper" and preset_of(recommended) == "recommended"
    assert preset_of(TrainConfig(centre="mean")) is None
    assert preset_of(TrainConfig(sparsity="hard-topk")) is None  # rigid TopK alone is not the preset
    row = pd.Series({"label": "", "sparsity": "hard-topk", "rate_control": "balance", "rate_weight": 0.01})
    assert preset_of(row) == "recommended"  # a runs-table row; the settings it lacks count as their defaults
    with pytest.raises(ConfigError, match="preset must be one of paper, recommended, got 'best'."):
        preset_config("best")
