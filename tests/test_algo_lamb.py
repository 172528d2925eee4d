"""LAMB (fusedadam.Lamb): parity with timm's Lamb, the compiled step against the NumPy
reference (every storage type, 1 and 2 threads), the torch front end, state dicts, refused
hyperparameters."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedadam as fa
from _pertensor_checks import (
    STORAGE,
    compiled_is_reference,
    functional_is_the_class,
    parity,
    parity_every_size_threads_bit_identical,
    refused,
    run,
    assert_same,
    state_dict_round_trip,
    torch_is_numpy,
)
from conftest import BACKENDS, COMPILED, timm_optim

# (our options, timm's options); max_grad_norm=None in timm: its global clip is not ours.
SETTINGS = {
    "defaults": ({}, {}),
    "decoupled": ({"decoupled_weight_decay": True, "weight_decay": 0.1},
                  {"decoupled_decay": True, "weight_decay": 0.1}),
    "trust_clip_always_adapt": ({"weight_decay": 0.0, "trust_clip": True, "always_adapt": True},
                                {"weight_decay": 0.0, "trust_clip": True, "always_adapt": True}),
    "no_adapt": ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
    "no_averaging_no_bias_correction": (
        {"grad_averaging": False, "bias_correction": False, "betas": (0.8, 0.99), "eps": 1e-4},
        {"grad_averaging": False, "bias_correction": False, "betas": (0.8, 0.99), "eps": 1e-4},
    ),
}  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_parity_with_timm(setting, backend):
    timm_lamb = timm_optim("lamb")
    ours, theirs = SETTINGS[setting]
    parity(
        lambda ps: fa.Lamb(ps, lr=1e-2, backend=backend, **ours),
        lambda ts: timm_lamb.Lamb(ts, lr=1e-2, max_grad_norm=None, foreach=False, **theirs),
    )


def test_parity_every_size_threads_bit_identical():
    """Sizes around the pieces, 1 and 2 threads: both match timm, with the same bits (the
    sums' order is the tensor's alone)."""
    timm_lamb = timm_optim("lamb")
    parity_every_size_threads_bit_identical(
        lambda ps, threads: fa.Lamb(ps, lr=1e-2, num_threads=threads),
        lambda ts: timm_lamb.Lamb(ts, lr=1e-2, max_grad_norm=None),
    )


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("setting", ["defaults", "decoupled", "trust_clip_always_adapt"])
def test_compiled_is_reference(setting, storage):
    dtype, extra = STORAGE[storage]
    options = {**SETTINGS[setting][0], "lr": 1e-2, "maximize": setting == "decoupled"}
    compiled_is_reference(fa.Lamb, {**options, **extra}, dtype=dtype)


@pytest.mark.skipif(not COMPILED, reason="extension not built")
def test_compiled_is_reference_clipped_and_scaled():
    """Clipping and unscaling (the staged gradient) reach both phases alike. (The gradient
    norm's order follows the chunk size, so the chunks stay at their default here.)"""
    options = {"lr": 1e-2, "max_grad_norm": 0.5, "grad_scale": 8.0}
    expected = run(fa.Lamb, options, backend="numpy")
    for threads in (1, 2):
        assert_same(run(fa.Lamb, options, backend="compiled", num_threads=threads), expected)


def test_torch_is_numpy():
    ft = pytest.importorskip("fusedadam.torch")

    torch_is_numpy(ft.Lamb, fa.Lamb, {"lr": 1e-2, "trust_clip": True})


def test_state_dict_round_trip():
    state_dict_round_trip(fa.Lamb, {"lr": 1e-2, "decoupled_weight_decay": True})


def test_functional_is_the_class():
    options = {"lr": 1e-2, "weight_decay": 0.05}
    functional_is_the_class(fa.Lamb, options, fa.functional.lamb, options)


def test_trust_ratio_is_one_for_zero_norms():
    """A zero param (or a zero update) takes the plain Adam-direction step: trust = 1."""
    p = np.zeros(4)
    opt = fa.Lamb([p], lr=0.1, weight_decay=0.01)
    opt.step([np.array([1.0, -1.0, 2.0, 0.0])])
    # m/bc1 = g, v/bc2 = g*g: u = g / (|g| + eps)
    g = np.array([1.0, -1.0, 2.0, 0.0])
    np.testing.assert_allclose(p, -0.1 * g / (np.abs(g) + 1e-6), rtol=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"trust_clip": 1}, "trust_clip must be a bool"),
        ({"always_adapt": "yes"}, "always_adapt must be a bool"),
        ({"grad_averaging": None}, "grad_averaging must be a bool"),
        ({"eps": 0.0}, "epsilon"),
        ({"betas": (0.9, 1.0)}, "beta parameter at index 1"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_refused(bad, match):
    refused(fa.Lamb, bad, match)


@pytest.mark.skipif(not COMPILED, reason="extension not built")
def test_multi_group_and_empty():
    """Two groups (the scan-then-update path), an empty param, a step skipped on NaN."""
    shapes = [(5,), (0,), (20000,)]

    def make(backend):
        ps = [np.random.default_rng(6).standard_normal(s) for s in shapes]
        groups = [
            {"params": ps[:2]},
            {"params": ps[2:], "weight_decay": 0.0, "always_adapt": True},
        ]
        return ps, fa.Lamb(groups, lr=1e-2, backend=backend, nonfinite="skip")

    a, b = make("numpy"), make("compiled")
    rng = np.random.default_rng(7)
    for t in range(4):
        grads = [rng.standard_normal(s) for s in shapes]
        if t == 2:
            grads[2][7] = np.nan
        a[1].step([g.copy() for g in grads])
        b[1].step([g.copy() for g in grads])
    assert_same(a, b)
    assert a[1].skipped_steps == b[1].skipped_steps == 1


PER_TENSOR = [
    (fa.Lamb, {}),
    (fa.Lamb, {"decoupled_weight_decay": True, "trust_clip": True, "maximize": True}),
    (fa.StableAdamW, {"decouple_lr": True}),
    (fa.AdamW, {"cautious": True}),
    (fa.AdamW, {"cautious": True, "amsgrad": True}),
    (fa.Adam, {"cautious": True, "weight_decay": 0.1}),
    (fa.Lion, {"cautious": True}),
]


@pytest.mark.skipif(not COMPILED, reason="extension not built")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 40), st.sampled_from([255, 256, 16383, 16384, 16385, 33000])),
        min_size=1,
        max_size=5,
    ),
    variant=st.integers(0, len(PER_TENSOR) - 1),
    chunk=st.sampled_from([16, 256, 4096, 16384, 65536]),
    threads=st.sampled_from([1, 2, 3]),
    storage=st.sampled_from(["float32", "float64", "bfloat16_master", "float32_8bit"]),
)
def test_fuzz_every_per_tensor_kind_is_the_reference(sizes, variant, chunk, threads, storage):
    """Any sizes, chunk size and thread count: the compiled step is the reference's."""
    from fusedadam import _kernels

    cls, options = PER_TENSOR[variant]
    dtype, extra = STORAGE[storage]
    shapes = [(n,) for n in sizes]
    options = {**options, **extra, "lr": 1e-2}
    expected = run(cls, options, shapes=shapes, steps=3, dtype=dtype, backend="numpy")
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        got = run(cls, options, shapes=shapes, steps=3, dtype=dtype, num_threads=threads)
    finally:
        _kernels.set_chunk_size(saved)
    assert_same(got, expected)


@pytest.mark.skipif(not COMPILED, reason="extension not built")
@pytest.mark.parametrize("variant", range(len(PER_TENSOR)))
def test_nonfinite_ignored_alike(variant):
    """nonfinite="ignore": a NaN or inf gradient runs through the sums (a NaN norm or RMS
    leaves the step unscaled, as the packages' torch.where / max) the same on both paths."""
    cls, options = PER_TENSOR[variant]
    results = []
    for backend in ("numpy", "compiled"):
        params = [np.linspace(-1.0, 1.0, 20000), np.linspace(0.0, 1.0, 9)]
        opt = cls(params, backend=backend, nonfinite="ignore", **options)
        for t in range(3):
            grads = [np.cos(np.arange(20000.0) * (t + 1)), np.sin(np.arange(9.0))]
            if t == 1:
                grads[0][5] = np.nan
            if t == 2:
                grads[1][2] = np.inf
            opt.step(grads)
        results.append((params, opt))
    assert_same(*results)
