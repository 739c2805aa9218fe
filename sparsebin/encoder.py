"""A scikit-learn transformer around Binary Sparsity Alignment training.

    encoder = BinarySparseEncoder(n_bits=1024, k=16).fit(X)
    bits = encoder.transform(X)     # (M, n_bits) uint8 0/1

Follows scikit-learn's estimator rules: `__init__` only stores its arguments,
`fit` validates, trains and returns self, learned attributes end in `_`, and
`random_state` is resolved in `fit`.
"""

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from sparsebin.config import TrainConfig
from sparsebin.model import BinaryAutoencoder
from sparsebin.train import train

_DEFAULTS = TrainConfig()


class BinarySparseEncoder(TransformerMixin, BaseEstimator):
    """Learns a linear encoder to N bits of which about K fire per row.

    Parameters mirror `TrainConfig`; `val_fraction` defaults to 0 here because
    scikit-learn users hold out data themselves. `batch_size` is capped at the
    number of rows so small inputs train too.
    """

    def __init__(
        self,
        n_bits: int = _DEFAULTS.n_bits,
        k: int = _DEFAULTS.k,
        alpha: float = _DEFAULTS.alpha,
        loss: str = _DEFAULTS.loss,
        rounding: str = _DEFAULTS.rounding,
        sparsity: str = _DEFAULTS.sparsity,
        init: str = _DEFAULTS.init,
        normalize: bool = _DEFAULTS.normalize,
        val_fraction: float = 0.0,
        lr: float = _DEFAULTS.lr,
        batch_size: int = _DEFAULTS.batch_size,
        epochs: int = _DEFAULTS.epochs,
        device: str = "cpu",
        random_state=None,
    ):
        self.n_bits = n_bits
        self.k = k
        self.alpha = alpha
        self.loss = loss
        self.rounding = rounding
        self.sparsity = sparsity
        self.init = init
        self.normalize = normalize
        self.val_fraction = val_fraction
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.device = device
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # the output is uint8 bits, whatever comes in
        return tags

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2, ensure_min_features=2)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        config = TrainConfig(
            n_bits=self.n_bits,
            k=self.k,
            alpha=self.alpha,
            loss=self.loss,
            rounding=self.rounding,
            sparsity=self.sparsity,
            init=self.init,
            normalize=self.normalize,
            val_fraction=self.val_fraction,
            lr=self.lr,
            batch_size=min(self.batch_size, len(X)),
            epochs=self.epochs,
            seed=seed,
            device=self.device,
            log_every=10**9,  # no progress events: nobody listens
        )
        result = train(X, config)
        self.config_ = config
        self.model_: BinaryAutoencoder = result.model.cpu()
        self.history_ = result.history
        return self

    def transform(self, X) -> np.ndarray:
        """(M, n_bits) uint8 0/1: the stored code of each row."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        x = torch.from_numpy(X)
        if self.config_.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        with torch.no_grad():
            return self.model_.encode(x).to(torch.uint8).numpy()

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray([f"bit{i}" for i in range(self.n_bits)], dtype=object)
