"""Compiled kernels and the NumPy reference agree bit for bit.

Parametrized only over what changes the compiled code path: the loop kind (VARIANTS: every
kind of _loops.h and every option that changes a scalar), the element type, the instruction
set, serial vs split over threads (which also splits across array boundaries), and the
non-finite scan (fused into the update for one group; separate for several). One group of
arrays sized 0, 1, odd, vector-remainder and in-cache covers the sizes in every case, and the
NumPy side is computed once per case. Equality is exact (assert_array_equal), never a
tolerance.
"""

import inspect

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fusedadam as fa
from conftest import VARIANTS, requires_compiled

pytestmark = requires_compiled

SHAPES = [(), (0,), (1,), (7,), (3, 5), (1000,), (4099,)]  # () : a 0-d param
STEPS = 8  # RAdam rectifies from step 6 on: both of its kinds run


def run(cls, options, dtype, backend, num_threads=1, shapes=SHAPES, steps=STEPS, groups=1, seed=0):
    """Params and state after ``steps`` steps on seeded data."""
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    cut = len(params) // 2
    arg = params if groups == 1 else [{"params": params[:cut]}, {"params": params[cut:]}]
    opt = cls(arg, backend=backend, num_threads=num_threads, **{"lr": 1e-2, **options})
    grad_rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        opt.step([np.asarray(grad_rng.standard_normal(s) * 3, dtype=dtype) for s in shapes])
    return params, opt.state_dict()["state"]


def assert_same(a, b):
    (params_a, state_a), (params_b, state_b) = a, b
    for x, y in zip(params_a, params_b):
        np.testing.assert_array_equal(x, y)
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        assert state_a[i].keys() == state_b[i].keys()
        for key in state_a[i]:
            np.testing.assert_array_equal(state_a[i][key], state_b[i][key])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kind_serial_and_split(variant, dtype, simd):
    """Serial (1 thread) and split over 2 threads in chunks of 16 elements (chunks straddle
    array boundaries), both against one NumPy run."""
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    expected = run(cls, options, dtype, "numpy")
    assert_same(run(cls, options, dtype, "compiled", num_threads=1), expected)
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(16)
    try:
        assert_same(run(cls, options, dtype, "compiled", num_threads=2), expected)
    finally:
        _kernels.set_chunk_size(saved)


@pytest.mark.parametrize("variant", ["adam", "amsgrad_l2_maximize", "nadam", "radam", "lion"])
@pytest.mark.parametrize("nonfinite", ["ignore", "skip"])
def test_scan_paths(variant, nonfinite):
    """No scan ("ignore"), and scan-then-update over two groups (the fused single-group
    scan is every other test's default), serial and parallel."""
    cls, options = VARIANTS[variant]
    options = {**options, "nonfinite": nonfinite}
    for groups in (1, 2):
        expected = run(cls, options, np.float32, "numpy", groups=groups)
        for threads in (1, 2):
            assert_same(run(cls, options, np.float32, "compiled", threads, groups=groups), expected)


@pytest.mark.parametrize("offset", [-1, 0, 1, 17])
def test_sizes_straddling_one_chunk(offset):
    from fusedadam import _kernels

    shapes = [(_kernels.get_chunk_size() + offset,)]
    for variant in ("adam", "amsgrad_l2_maximize", "adamax", "adabelief"):
        cls, options = VARIANTS[variant]
        expected = run(cls, options, np.float64, "numpy", shapes=shapes, steps=4)
        assert_same(run(cls, options, np.float64, "compiled", 2, shapes=shapes, steps=4), expected)


def test_mixed_dtypes_in_one_group():
    shapes = [(3, 5), (0,), (1,), (40000,), (7, 7, 7), (2,), (100003,)]
    rng = np.random.default_rng(3)
    start = [
        rng.standard_normal(s).astype(np.float32 if i % 2 else np.float64)
        for i, s in enumerate(shapes)
    ]
    out = {}
    for backend in ("compiled", "numpy"):
        params = [p.copy() for p in start]
        opt = fa.Adam(
            params, lr=1e-2, amsgrad=True, weight_decay=0.01, backend=backend, num_threads=2
        )
        grng = np.random.default_rng(4)
        for _ in range(10):
            opt.step([grng.standard_normal(p.shape).astype(p.dtype) for p in params])
        out[backend] = params
    for a, b in zip(out["compiled"], out["numpy"]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    ["adam", "amsgrad_l2_maximize", "adamw", "adamax", "nadam", "radam", "adabelief", "lion"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_million_elements(variant, dtype):
    cls, options = VARIANTS[variant]
    shapes = [(3_000_000,)]
    assert_same(
        run(cls, options, dtype, "compiled", 2, shapes=shapes, steps=7),
        run(cls, options, dtype, "numpy", shapes=shapes, steps=7),
    )


@settings(max_examples=60, deadline=None)
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.integers(0, 300),
    steps=st.integers(1, 40),
    lr=st.floats(0, 1),
    beta1=st.floats(0, 0.999),
    beta2=st.floats(0, 0.9999),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.3]),
    num_threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e20]),
)
def test_random_hyperparameters_bit_identical(
    variant, dtype, size, steps, lr, beta1, beta2, weight_decay, num_threads, seed, scale
):
    cls, options = VARIANTS[variant]
    # StableAdamW's decouple_lr takes max_lr from lr: lr = 0 is refused (test_algo_stableadamw)
    assume(not (options.get("decouple_lr") and lr == 0.0))
    betas = (beta1, beta2)
    if cls.algorithm.n_betas == 3:  # AdEMAMix, Adan; the warmup takes log(beta1)
        betas = (beta1 if beta1 or "t_alpha_beta3" not in options else 0.5, beta2, 0.99)
    options = {**options, "lr": lr, "weight_decay": weight_decay}
    if "betas" in inspect.signature(cls).parameters:  # a class may have none
        options["betas"] = betas
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [(rng.standard_normal(size) * scale).astype(dtype) for _ in range(steps)]
    out = {}
    for backend in ("compiled", "numpy"):
        p = p0.copy()
        opt = cls([p], backend=backend, num_threads=num_threads, nonfinite="ignore", **options)
        for g in grads:
            opt.step([g])
        out[backend] = (p, opt.state_dict()["state"])
    assert_same(([out["compiled"][0]], out["compiled"][1]), ([out["numpy"][0]], out["numpy"][1]))


def test_functional_is_the_class_step():
    rng = np.random.default_rng(5)
    p0, g = rng.standard_normal(50), rng.standard_normal(50)
    out = []
    for backend in ("compiled", "numpy"):
        p, m, v, x = p0.copy(), np.zeros(50), np.zeros(50), np.zeros(50)
        for t in range(1, 6):
            assert fa.functional.adam(
                [p], [g], [m], [v], [x], step=t, lr=0.1, weight_decay=0.1, backend=backend
            )
        out.append((p, m, v, x))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
