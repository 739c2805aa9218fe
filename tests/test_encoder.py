"""BinarySparseEncoder follows scikit-learn's estimator rules."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from sparsebin.encoder import BinarySparseEncoder

SMALL = {"n_bits": 16, "k": 2, "epochs": 2, "batch_size": 64}


def _check_name(check) -> str:
    check = getattr(check, "func", check)
    return getattr(check, "__name__", str(check))


EXPECTED_FAILURES = {
    # The check feeds integer data with all-zero rows; an all-zero row has no
    # direction to L2-normalise, and fit rejects it with a message naming the row.
    "check_estimators_dtypes": "all-zero rows are rejected when normalize=True",
}


# The encoder turns any input into a numpy float32 array for torch and claims no
# array-API support, so scikit-learn's array-API check (which skips itself unless
# SCIPY_ARRAY_API is set) is left out rather than reported as skipped.
CHECKS = [
    pytest.param(
        estimator,
        check,
        id=_check_name(check),
        marks=pytest.mark.xfail(reason=EXPECTED_FAILURES[_check_name(check)], strict=True)
        if _check_name(check) in EXPECTED_FAILURES
        else (),
    )
    for estimator, check in estimator_checks_generator(BinarySparseEncoder(**SMALL))
    if _check_name(check) != "check_array_api_input"
]


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_scikit_learn_rules(estimator, check):
    check(estimator)


def test_transform_gives_uint8_bits_with_named_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12))
    encoder = BinarySparseEncoder(n_bits=32, k=4, epochs=30, lr=1e-2, random_state=0).fit(x)
    bits = encoder.transform(x)
    assert bits.dtype == np.uint8 and bits.shape == (200, 32)
    assert set(np.unique(bits)) <= {0, 1}
    assert list(encoder.get_feature_names_out()[:2]) == ["bit0", "bit1"]
    again = BinarySparseEncoder(n_bits=32, k=4, epochs=30, lr=1e-2, random_state=0).fit(x).transform(x)
    np.testing.assert_array_equal(bits, again)
