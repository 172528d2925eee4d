"""Bit-level comparisons and seeded arrays shared by the storage tests
(test_state8bit.py, test_state8bit_nonfinite.py, test_mixed_precision.py)."""

import numpy as np


def bits(a):
    """The raw bits of an array (so -0.0 and NaN payloads count)."""
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(a, b):
    """The same dtype, shape and bits."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(bits(a), bits(b))


def make(dtype, n, seed, scale=1.0):
    """``n`` seeded normal values times ``scale``, rounded to float32, then to ``dtype``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(np.float32).astype(dtype)
