"""Cautious masking (``cautious=True`` on Adam, AdamW and Lion): parity with timm's
``cadamw`` (AdamWLegacy with caution) and ``clion`` (Lion with caution), the compiled step
against the NumPy reference (every storage type, 1 and 2 threads), the torch front end,
state dicts, refused options."""

import numpy as np
import pytest

import fusedadam as fa
from _pertensor_checks import (
    STORAGE,
    compiled_is_reference,
    parity,
    parity_every_size_threads_bit_identical,
    refused,
    state_dict_round_trip,
    torch_is_numpy,
)
from conftest import BACKENDS, timm_optim

ADAMW_SETTINGS = {
    "defaults": ({}, {}),
    "maximize_decay": ({"maximize": True, "weight_decay": 0.1, "betas": (0.8, 0.95)},
                       {"maximize": True, "weight_decay": 0.1, "betas": (0.8, 0.95)}),
    "amsgrad": ({"amsgrad": True}, {"amsgrad": True}),
}  # fmt: skip
LION_SETTINGS = {
    "defaults": ({}, {"weight_decay": 1e-3, "betas": (0.9, 0.99)}),
    "maximize": ({"maximize": True, "weight_decay": 0.0}, {"maximize": True, "weight_decay": 0.0}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(ADAMW_SETTINGS))
def test_adamw_parity_with_timm_cadamw(setting, backend):
    timm_adamw = timm_optim("adamw")
    ours, theirs = ADAMW_SETTINGS[setting]
    parity(
        lambda ps: fa.AdamW(ps, lr=1e-2, cautious=True, backend=backend, **ours),
        lambda ts: timm_adamw.AdamWLegacy(ts, lr=1e-2, caution=True, foreach=False, **theirs),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(LION_SETTINGS))
def test_lion_parity_with_timm_clion(setting, backend):
    timm_lion = timm_optim("lion")
    ours, theirs = LION_SETTINGS[setting]
    parity(
        lambda ps: fa.Lion(ps, lr=1e-3, cautious=True, backend=backend, **ours),
        lambda ts: timm_lion.Lion(ts, lr=1e-3, caution=True, foreach=False, **theirs),
    )


def test_parity_every_size_threads_bit_identical():
    timm_adamw = timm_optim("adamw")
    parity_every_size_threads_bit_identical(
        lambda ps, threads: fa.AdamW(ps, lr=1e-2, cautious=True, num_threads=threads),
        lambda ts: timm_adamw.AdamWLegacy(ts, lr=1e-2, caution=True),
    )


def test_mask_and_scale():
    """One step from m = 0: m = (1 - beta1) g agrees with g everywhere it is not 0, so the
    mask is g != 0 and the scale numel / count."""
    p = np.zeros(4)
    g = np.array([1.0, -2.0, 0.0, 0.0])
    opt = fa.Lion([p], lr=0.1, weight_decay=0.0, cautious=True)
    opt.step([g])
    np.testing.assert_array_equal(p, [-0.2, 0.2, 0.0, 0.0])


def test_cautious_off_is_the_plain_step():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(50), None
    b = a.copy()
    grads = [rng.standard_normal(50) for _ in range(3)]
    plain, off = fa.AdamW([a]), fa.AdamW([b], cautious=False)
    for g in grads:
        plain.step([g])
        off.step([g])
    np.testing.assert_array_equal(a, b)


CLASSES = {
    "adam_l2_maximize": (fa.Adam, {"weight_decay": 0.1, "maximize": True}),
    "adamw": (fa.AdamW, {}),
    "adamw_amsgrad": (fa.AdamW, {"amsgrad": True}),
    "adam_amsgrad_l2": (fa.Adam, {"amsgrad": True, "weight_decay": 0.1}),
    "lion": (fa.Lion, {}),
}


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("variant", sorted(CLASSES))
def test_compiled_is_reference(variant, storage):
    cls, options = CLASSES[variant]
    dtype, extra = STORAGE[storage]
    compiled_is_reference(cls, {**options, **extra, "cautious": True, "lr": 1e-2}, dtype=dtype)


@pytest.mark.parametrize("variant", ["adamw", "lion"])
def test_torch_is_numpy(variant):
    ft = pytest.importorskip("fusedadam.torch")

    cls = {"adamw": (ft.AdamW, fa.AdamW), "lion": (ft.Lion, fa.Lion)}[variant]
    torch_is_numpy(*cls, {"lr": 1e-2, "cautious": True})


@pytest.mark.parametrize("cls", [fa.Adam, fa.Lion])
def test_state_dict_round_trip(cls):
    state_dict_round_trip(cls, {"lr": 1e-2, "cautious": True})


@pytest.mark.parametrize(
    "cls, bad, match",
    [
        (fa.Adam, {"cautious": 1}, "cautious must be a bool"),
        (fa.Lion, {"cautious": "yes"}, "cautious must be a bool"),
    ],
)
def test_bad_options_refused(cls, bad, match):
    refused(cls, bad, match)
