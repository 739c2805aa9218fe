"""The decoder product from active columns only: the same loss, gradients and codes as the dense product."""

import itertools

import numpy as np
import pytest
import torch
from conftest import planted_data

from sparsebin.config import ROUNDINGS, SPARSITIES, TrainConfig
from sparsebin.decoding import sparse_pays
from sparsebin.train import build_model, train, training_loss

SETTINGS = list(itertools.product(ROUNDINGS, SPARSITIES))


def loss_and_gradients(config: TrainConfig, x: torch.Tensor, path: str):
    model = build_model(config, x.shape[1], decoder_path=path)
    model.train()
    torch.manual_seed(1)  # the same Bernoulli draws for stochastic rounding
    loss, rec, sp, out = training_loss(model, config, x)
    loss.backward()
    return model, loss, {name: param.grad for name, param in model.named_parameters()}


@pytest.mark.parametrize(("rounding", "sparsity"), SETTINGS)
def test_sparse_and_dense_decoder_give_the_same_loss_and_gradients(rounding, sparsity):
    x = torch.from_numpy(planted_data(n_rows=256, dim=24, n_bits=96, k=6)[0])
    config = TrainConfig(n_bits=96, k=6, rounding=rounding, sparsity=sparsity, device="cpu")
    dense_model, dense_loss, dense = loss_and_gradients(config, x, "dense")
    sparse_model, sparse_loss, sparse = loss_and_gradients(config, x, "sparse")
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)
    assert dense.keys() == sparse.keys()
    for name, grad in dense.items():
        if grad is None:  # hard rounding: no reconstruction gradient reaches the encoder
            assert sparse[name] is None or not sparse[name].any()
            continue
        torch.testing.assert_close(sparse[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    binary = rounding != "none" or sparsity == "hard-topk"
    assert sparse_model.decoding.active_share < 1.0 if binary else sparse_model.decoding.active_share == 1.0


@pytest.mark.parametrize(("rounding", "sparsity"), [("ste", "align"), ("hard", "l1"), ("stochastic", "hard-topk")])
def test_sparse_and_dense_training_store_the_same_codes(rounding, sparsity):
    x, _ = planted_data(n_rows=400, dim=16, n_bits=64, k=4)
    config = TrainConfig(n_bits=64, k=4, epochs=3, batch_size=64, rounding=rounding, sparsity=sparsity, device="cpu")
    dense = train(x, config, decoder_path="dense").model
    sparse = train(x, config, decoder_path="sparse").model
    for name, value in dense.state_dict().items():
        torch.testing.assert_close(sparse.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        inputs = torch.from_numpy(x)
        dense_codes, sparse_codes = dense.encode(inputs), sparse.encode(inputs)
    logits = dense.encode_logits(inputs).detach()
    clear = logits.abs() > 1e-4  # entries not within float32 rounding of the boundary
    assert torch.equal(dense_codes[clear], sparse_codes[clear])
    assert clear.float().mean() > 0.999


def test_the_cost_rule_goes_sparse_only_when_few_bits_are_on():
    assert sparse_pays(32 / 4096, 384)  # a converged code, about K of N bits
    assert not sparse_pays(0.5, 384)  # the start: half the bits fire
    threshold = next(share for share in np.linspace(0, 1, 1001) if not sparse_pays(share, 384))
    assert 0.05 < threshold < 0.3
    assert sparse_pays(0.01, 384, positions_known=True) and not sparse_pays(0.0, 8)  # tiny D: scanning costs more


def test_auto_switches_to_the_sparse_path_once_the_code_is_sparse():
    x = torch.from_numpy(planted_data(n_rows=256, dim=64, n_bits=96, k=6)[0])
    model = build_model(TrainConfig(n_bits=96, k=6, init="sparse"), 64).train()
    assert not sparse_pays(model.decoding.active_share, 64, False)  # starts dense
    out = model(x)
    share = model.decoding.active_share
    assert share == pytest.approx(out.hard.mean().item()) and share < 0.2
    assert sparse_pays(share, 64, False)  # the next batch goes sparse
    # Rigid TopK's share is K / N from the start, so a resumed run takes the path an uninterrupted one does.
    topk = build_model(TrainConfig(n_bits=96, k=6, sparsity="hard-topk"), 64).train()
    assert topk.decoding.active_share == 6 / 96 and sparse_pays(topk.decoding.active_share, 64, True)
    topk(x)
    assert topk.decoding.active_share == pytest.approx(6 / 96)
    with pytest.raises(ValueError, match="decoder_path must be one of auto, dense, sparse, got 'gpu'"):
        build_model(TrainConfig(n_bits=96, k=6, init="sparse"), 64, decoder_path="gpu")
