"""StableAdamW (fusedadam.StableAdamW): parity with torch-optimi's StableAdamW, the compiled
step against the NumPy reference (every storage type, 1 and 2 threads), the torch front
end, state dicts, refused hyperparameters."""

import warnings

import numpy as np
import pytest

import fusedadam as fa
from _pertensor_checks import (
    compiled_is_reference,
    functional_is_the_class,
    parity,
    parity_every_size_threads_bit_identical,
    refused,
    state_dict_round_trip,
    storage_without,
    torch_is_numpy,
)
from conftest import BACKENDS, reference_package

SETTINGS = {
    "defaults": {},
    "decouple_lr": {"decouple_lr": True, "weight_decay": 1e-3},
    "decouple_lr_max_lr": {"decouple_lr": True, "max_lr": 0.05, "weight_decay": 1e-3},
    "no_decay_large_eps": {"weight_decay": 0.0, "eps": 1e-2, "betas": (0.8, 0.9)},
}


def _optimi(ts, **options):
    optimi = reference_package("optimi")
    with warnings.catch_warnings():
        # optimi warns that weight decay with decouple_lr is not scaled by lr: known
        warnings.simplefilter("ignore", UserWarning)
        return optimi.StableAdamW(ts, lr=1e-2, foreach=False, triton=False, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_parity_with_optimi(setting, backend):
    options = SETTINGS[setting]
    parity(
        lambda ps: fa.StableAdamW(ps, lr=1e-2, backend=backend, **options),
        lambda ts: _optimi(ts, **options),
    )


def test_parity_every_size_threads_bit_identical():
    parity_every_size_threads_bit_identical(
        lambda ps, threads: fa.StableAdamW(ps, lr=1e-2, num_threads=threads),
        lambda ts: _optimi(ts),
    )


def test_rms_clips_the_learning_rate():
    """Step 1: v = g*g, so every g*g / v is 1 and rms = 1 (no clipping); then a gradient 100
    times larger than the running v gives rms > 1, and the step shrinks by 1 / rms."""
    p = np.zeros(4)
    opt = fa.StableAdamW([p], lr=0.1, weight_decay=0.0)
    g = np.array([1.0, -2.0, 3.0, 0.5])
    opt.step([g])
    np.testing.assert_allclose(p, -0.1 * g / (np.abs(g) + 1e-6), rtol=1e-12)


# Every storage type but float64, which test_compiled_is_reference_float64_scaled checks.
STORAGE = storage_without("float64")


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("setting", ["defaults", "decouple_lr_max_lr"])
def test_compiled_is_reference(setting, storage):
    dtype, extra = STORAGE[storage]
    options = {**SETTINGS[setting], "lr": 1e-2, "maximize": setting == "defaults"}
    compiled_is_reference(fa.StableAdamW, {**options, **extra}, dtype=dtype)


def test_compiled_is_reference_float64_scaled():
    compiled_is_reference(fa.StableAdamW, {"lr": 1e-2, "grad_scale": 4.0})


def test_torch_is_numpy():
    ft = pytest.importorskip("fusedadam.torch")

    torch_is_numpy(ft.StableAdamW, fa.StableAdamW, {"lr": 1e-2, "decouple_lr": True})


def test_state_dict_round_trip():
    state_dict_round_trip(fa.StableAdamW, {"lr": 1e-2, "weight_decay": 0.05})


def test_functional_is_the_class():
    functional_is_the_class(
        fa.StableAdamW, {"lr": 1e-2, "decouple_lr": True}, fa.functional.stable_adamw,
        {"lr": 1e-2, "decouple_lr": True, "max_lr": 1e-2},
    )  # fmt: skip


def test_decouple_lr_takes_the_construction_lr():
    opt = fa.StableAdamW([np.ones(2)], lr=0.03, decouple_lr=True)
    assert opt.param_groups[0]["max_lr"] == 0.03
    with pytest.raises(ValueError, match="decouple_lr=True needs max_lr"):
        fa.StableAdamW([np.ones(2)], lr=lambda t: 0.1, decouple_lr=True).step([np.ones(2)])
    with pytest.raises(ValueError, match="decouple_lr=True needs max_lr"):
        fa.StableAdamW([np.ones(2)], lr=0.0, decouple_lr=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"decouple_lr": 1}, "decouple_lr must be a bool"),
        ({"max_lr": -1.0}, "max_lr"),
        ({"max_lr": "big"}, "max_lr"),
        ({"eps": -1.0}, "epsilon"),
        ({"betas": (1.0, 0.9)}, "beta parameter at index 0"),
    ],
)
def test_bad_hyperparameters_refused(bad, match):
    refused(fa.StableAdamW, bad, match)
