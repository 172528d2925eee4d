"""clip_grad_norm: the norm it returns, the scaling it applies, and its errors."""

import math

import numpy as np
import pytest

from fusedadam._clip import clip_grad_norm


def _total(grads, order=2.0):
    flat = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in grads])
    return float(np.linalg.norm(flat, ord=order))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [1.0, 2.0, 3.0, math.inf])
def test_clips_to_max_norm_and_returns_the_norm_before(dtype, order):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(dtype) for s in [(5, 7), (13,), (0,), (1,)]]
    before = _total(grads, order)
    norm = clip_grad_norm(grads, max_norm=0.5, norm_type=order)
    assert norm == pytest.approx(before, rel=1e-6)
    assert all(g.dtype == dtype for g in grads)
    assert _total(grads, order) == pytest.approx(0.5, rel=1e-5)


def test_below_max_norm_leaves_grads_bit_identical_and_accepts_read_only():
    g = np.array([0.3, 0.4], dtype=np.float32)
    g.flags.writeable = False
    assert clip_grad_norm(g, max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g, np.array([0.3, 0.4], dtype=np.float32))


def test_float32_norm_is_accumulated_in_float64():
    g = np.full(10**6, 0.1, dtype=np.float32)
    expected = math.sqrt(10**6 * float(np.float32(0.1)) ** 2)
    assert clip_grad_norm(g, max_norm=1e9) == pytest.approx(expected, rel=1e-12)


def test_nonfinite_norm_is_returned_or_raises_and_never_scales():
    grads = [np.array([1.0, np.inf]), np.array([2.0])]
    assert clip_grad_norm(grads, 1.0) == math.inf
    assert grads[1][0] == 2.0
    with pytest.raises(FloatingPointError, match="total norm"):
        clip_grad_norm(grads, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize(
    "grads, kwargs, error",
    [
        ([np.ones(2)], {"max_norm": 0.0}, ValueError),
        ([np.ones(2)], {"max_norm": math.nan}, ValueError),
        ([np.ones(2)], {"max_norm": "1"}, TypeError),
        ([np.ones(2)], {"max_norm": 1.0, "norm_type": 0.5}, ValueError),
        ([[1.0, 2.0]], {"max_norm": 1.0}, TypeError),
        ([np.ones(2, dtype=np.int64)], {"max_norm": 1.0}, TypeError),
        (3.0, {"max_norm": 1.0}, TypeError),
    ],
)
def test_bad_arguments(grads, kwargs, error):
    with pytest.raises(error):
        clip_grad_norm(grads, **kwargs)
