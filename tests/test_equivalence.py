"""Compiled kernels and the NumPy reference agree bit for bit.

Every algorithm x option x dtype x size x thread count x SIMD path, over many steps.
Equality is exact (assert_array_equal), never a tolerance.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import functional
from conftest import requires_compiled

pytestmark = requires_compiled

VARIANTS = {
    "adam": (fa.Adam, {}),
    "adam_l2": (fa.Adam, {"weight_decay": 0.1}),
    "amsgrad": (fa.Adam, {"amsgrad": True}),
    "amsgrad_l2_maximize": (fa.Adam, {"amsgrad": True, "weight_decay": 0.05, "maximize": True}),
    "adamw": (fa.AdamW, {"weight_decay": 0.1}),
    "adamw_amsgrad": (fa.AdamW, {"amsgrad": True}),
    "adam_no_bias_correction": (fa.Adam, {"bias_correction": False, "beta1_decay": 0.99}),
    "adam_lr_schedule": (fa.Adam, {"lr": lambda t: 1e-2 / t**0.5}),
    "adamax": (fa.Adamax, {}),
    "adamax_l2_maximize": (fa.Adamax, {"weight_decay": 0.1, "maximize": True}),
    "adamax_beta1_decay": (fa.Adamax, {"beta1_decay": 0.9, "bias_correction": False}),
}


def run_pair(cls, options, dtype, shapes, steps, num_threads, seed=0):
    """Step a compiled and a NumPy-backend optimizer on the same data; return both."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    results = {}
    for backend in ("compiled", "numpy"):
        params = [p.copy() for p in start]
        opt = cls(params, backend=backend, num_threads=num_threads,
                  **{"lr": 1e-2, **options})
        grad_rng = np.random.default_rng(seed + 1)
        for _ in range(steps):
            grads = [(grad_rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
            opt.step(grads)
        results[backend] = (params, opt.state_dict())
    return results


def assert_same(results):
    (p_c, sd_c), (p_n, sd_n) = results["compiled"], results["numpy"]
    for a, b in zip(p_c, p_n):
        np.testing.assert_array_equal(a, b)
    assert sd_c["state"].keys() == sd_n["state"].keys()
    for i in sd_c["state"]:
        for key, value in sd_c["state"][i].items():
            np.testing.assert_array_equal(value, sd_n["state"][i][key])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 7, 1000, 33333])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_single_array_bit_identical(variant, dtype, size, num_threads, simd,
                                    parallel_threshold):
    cls, options = VARIANTS[variant]
    assert_same(run_pair(cls, options, dtype, [(size,)], 50, num_threads))


@pytest.mark.parametrize("offset", [-1, 0, 1, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_sizes_straddling_parallel_threshold(offset, dtype, num_threads):
    from fusedadam import _kernels

    size = _kernels.get_parallel_threshold() + offset
    for variant in ("adam", "amsgrad_l2_maximize", "adamax"):
        cls, options = VARIANTS[variant]
        assert_same(run_pair(cls, options, dtype, [(size,)], 5, num_threads))


@pytest.mark.parametrize("num_threads", [1, 2])
def test_many_arrays_of_mixed_sizes_and_dtypes(num_threads, parallel_threshold, simd):
    # One group mixing tiny, empty, odd and large arrays, and both dtypes: one call.
    shapes = [(3, 5), (0,), (1,), (40000,), (7, 7, 7), (2,), (100003,)]
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32 if i % 2 else np.float64)
             for i, s in enumerate(shapes)]
    out = {}
    for backend in ("compiled", "numpy"):
        params = [p.copy() for p in start]
        opt = fa.Adam(params, lr=1e-2, amsgrad=True, weight_decay=0.01, backend=backend,
                      num_threads=num_threads)
        grng = np.random.default_rng(4)
        for _ in range(20):
            opt.step([grng.standard_normal(p.shape).astype(p.dtype) for p in params])
        out[backend] = params
    for a, b in zip(out["compiled"], out["numpy"]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["adam", "amsgrad_l2_maximize", "adamw", "adamax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_million_elements(variant, dtype):
    cls, options = VARIANTS[variant]
    assert_same(run_pair(cls, options, dtype, [(3_000_000,)], 3, 2))


def test_one_thread_and_two_threads_identical():
    from fusedadam import _kernels

    saved = _kernels.get_parallel_threshold()
    _kernels.set_parallel_threshold(0)
    try:
        runs = []
        for num_threads in (1, 2):
            p = np.linspace(-1, 1, 10007, dtype=np.float32)
            opt = fa.Adam(p, amsgrad=True, num_threads=num_threads, backend="compiled")
            for t in range(30):
                opt.step(np.sin(p * (t + 1)).astype(np.float32))
            runs.append(p)
        np.testing.assert_array_equal(runs[0], runs[1])
    finally:
        _kernels.set_parallel_threshold(saved)


def test_loop_kind_numbers_match_extension():
    from fusedadam import _kernels

    for name in ("ADAM", "ADAM_L2", "AMSGRAD", "AMSGRAD_L2", "ADAMAX", "ADAMAX_L2", "PROBE"):
        assert getattr(functional, name) == getattr(_kernels, name)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(["adam", "adamax"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.integers(0, 300),
    steps=st.integers(1, 60),
    lr=st.floats(0, 1),
    beta1=st.floats(0, 0.999),
    beta2=st.floats(0, 0.9999),
    eps=st.floats(1e-12, 1e-1),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.3]),
    decoupled=st.booleans(),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    bias_correction=st.booleans(),
    beta1_decay=st.floats(0.5, 1.0),
    num_threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e20]),
)
def test_functional_bit_identical_property(algorithm, dtype, size, steps, lr, beta1, beta2,
                                           eps, weight_decay, decoupled, amsgrad, maximize,
                                           bias_correction, beta1_decay, num_threads, seed,
                                           scale):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [(rng.standard_normal(size) * scale).astype(dtype) for _ in range(steps)]
    out = {}
    for backend in ("compiled", "numpy"):
        p = p0.copy()
        m, v, x = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                  maximize=maximize, bias_correction=bias_correction,
                  beta1_decay=beta1_decay, num_threads=num_threads, backend=backend)
        for t, g in enumerate(grads, start=1):
            if algorithm == "adam":
                fa.functional.adam([p], [g], [m], [v], [x] if amsgrad else None, step=t,
                                   decoupled_weight_decay=decoupled, **kw)
            else:
                fa.functional.adamax([p], [g], [m], [v], step=t, **kw)
        out[backend] = (p, m, v, x)
    for a, b in zip(out["compiled"], out["numpy"]):
        np.testing.assert_array_equal(a, b)
