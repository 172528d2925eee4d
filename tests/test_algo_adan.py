"""Adan: parity with ``timm.optim.Adan`` (the package followed) over 100 float64 steps,
the first step's special case, the compiled loop bit for bit the NumPy reference, the torch
front end the NumPy one, state dict round trips, and the refusal of bad hyperparameters."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms
from _algo_checks import (
    a_bad_group_value_changes_nothing,
    compiled_steps_are_numpy_steps,
    constructors_refuse,
    matches_package_over_100_float64_steps,
    scalar_fields_agree,
    state_dict_round_trip_resumes_exactly,
    torch_state_dict_round_trip,
)
from conftest import BACKENDS, requires_compiled, timm_optim, torch_steps_like_numpy

torch = pytest.importorskip("torch")  # the parity references are torch optimizers
import fusedadam.torch as fat  # noqa: E402

STATE = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")

# fusedadam's options, the same names as timm's (timm has no maximize: it gets -g).
PARITY = {
    "defaults": {},
    "prox": dict(lr=1e-2, weight_decay=0.02),
    "no_prox": dict(lr=1e-2, weight_decay=0.05, no_prox=True),
    "betas_eps_prox": dict(lr=5e-3, betas=(0.9, 0.8, 0.95), eps=1e-6, weight_decay=0.01),
    "maximize_no_prox": dict(lr=3e-3, weight_decay=0.1, no_prox=True, maximize=True),
}


def timm_adan():
    """timm's Adan class (loaded without ``import timm``, see ``conftest.timm_optim``)."""
    return timm_optim("adan").Adan


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_timm_over_100_float64_steps(name, backend):
    theirs = dict(PARITY[name])
    sign = -1.0 if theirs.pop("maximize", False) else 1.0
    matches_package_over_100_float64_steps(
        fa.Adan, PARITY[name], backend, lambda ps: timm_adan()(ps, **theirs), STATE, sign
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_takes_the_previous_gradient_to_be_this_one(backend):
    """As timm: step 1 has no gradient difference (exp_avg_diff stays 0), whatever
    neg_pre_grad holds; afterwards neg_pre_grad is -g of the step, the gradient as the
    step used it (unscaled, then the sign of maximize)."""
    rng = np.random.default_rng(1)
    g = rng.standard_normal(33)
    outs = []
    for garbage in (np.zeros(33), rng.standard_normal(33) * 1e3):
        p, m, v, d, q = np.ones(33), np.zeros(33), np.zeros(33), np.zeros(33), garbage.copy()
        fa.functional.adan(
            [p], [g * 4.0], [m], [v], [d], [q], step=1, grad_scale=4.0, maximize=True,
            backend=backend,
        )  # fmt: skip
        assert not d.any()
        np.testing.assert_array_equal(q, g)  # -(-(4 g) / 4)
        outs.append((p, m, v))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@requires_compiled
@settings(max_examples=150, deadline=None)
@given(
    t=st.integers(1, 10**6),
    lr=st.floats(0, 10),
    betas=st.tuples(st.floats(0, 0.9999), st.floats(0, 0.9999), st.floats(0, 0.9999)),
    eps=st.floats(1e-20, 1),
    wd=st.sampled_from([0.0, 0.1, 3.0]),
    no_prox=st.booleans(),
    maximize=st.booleans(),
)
def test_compiled_and_python_scalar_rules_agree_bit_for_bit(
    t, lr, betas, eps, wd, no_prox, maximize
):
    group = {
        **_algorithms.DEFAULTS["Adan"][1],
        "betas": betas,
        "eps": eps,
        "weight_decay": wd,
        "no_prox": no_prox,
        "maximize": maximize,
    }
    scalar_fields_agree("adan", group, t, lr, "adan" if no_prox else "adan_prox")


@requires_compiled
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.sampled_from([0, 1, 7, 255, 256, 257, 1000]),
    steps=st.integers(1, 30),
    betas=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999), st.floats(0, 0.9999)),
    weight_decay=st.sampled_from([0.0, 0.05]),
    no_prox=st.booleans(),
    maximize=st.booleans(),
    num_threads=st.sampled_from([1, 2]),
    state_dtype=st.sampled_from([None, "bfloat16"]),
    grad_scale=st.sampled_from([1.0, 8.0, 3.0]),
    seed=st.integers(0, 2**31),
)
def test_compiled_is_the_reference_bit_for_bit(
    dtype, size, steps, betas, weight_decay, no_prox, maximize, num_threads, state_dtype,
    grad_scale, seed,
):  # fmt: skip
    compiled_steps_are_numpy_steps(
        fa.Adan, STATE, dtype, size, steps, state_dtype, seed, lr=1e-2, betas=betas,
        weight_decay=weight_decay, no_prox=no_prox, maximize=maximize, num_threads=num_threads,
        grad_scale=grad_scale,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_front_end_is_the_numpy_one(dtype, backend):
    options = dict(lr=1e-2, weight_decay=0.1)
    torch_steps_like_numpy("Adan", options, dtype, backend, STATE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_state_dict_round_trip_resumes_exactly(state_dtype, backend):
    state_dict_round_trip_resumes_exactly(
        fa.Adan, dict(weight_decay=0.01), state_dtype, backend, "neg_pre_grad"
    )


def test_torch_state_dict_round_trip():
    torch_state_dict_round_trip(fat.Adan, dict(weight_decay=0.02, no_prox=True), STATE)


BAD = [
    (dict(betas=(0.9, 0.999)), ValueError, r"Invalid betas: \(0.9, 0.999\) \(expected a triple"),
    (dict(betas=(0.98, 0.92, 0.99, 0.9)), ValueError, "Invalid betas: .*expected a triple"),
    (dict(betas=(0.98, 1.0, 0.99)), ValueError, "Invalid beta parameter at index 1: 1.0"),
    (dict(betas=(0.98, 0.92, -0.1)), ValueError, "Invalid beta parameter at index 2: -0.1"),
    (dict(betas=(0.98, 0.92, None)), TypeError, "Invalid beta parameter at index 2"),
    (dict(eps=0.0), ValueError, "Invalid epsilon value: 0.0"),
    (dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (dict(no_prox=1), TypeError, "no_prox must be a bool"),
    (dict(lr=math.nan), ValueError, "Invalid learning rate: nan"),
]


@pytest.mark.parametrize("bad, error, message", BAD)
def test_bad_hyperparameters_are_refused_naming_them(bad, error, message):
    constructors_refuse(fa.Adan, fat.Adan, bad, error, message)
    arrays = [np.zeros(3) for _ in range(5)]
    bad = dict(bad)
    betas = bad.pop("betas", (0.98, 0.92, 0.99))
    if len(betas) == 3:
        with pytest.raises(error, match=message):
            fa.functional.adan(
                [arrays[0]], [np.ones(3)], *([a] for a in arrays[1:]), step=2,
                beta1=betas[0], beta2=betas[1], beta3=betas[2], **bad,
            )  # fmt: skip
        assert not any(a.any() for a in arrays)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, error, message", BAD)
def test_a_bad_group_value_changes_nothing(bad, error, message, backend):
    a_bad_group_value_changes_nothing(fa.Adan, dict(weight_decay=0.1), bad, error, message, backend)


def test_only_n_uses_the_unsigned_8bit_map():
    algorithm = _algorithms.ALGORITHMS["adan"]
    assert algorithm.signed_state(STATE) == (True, False, True, True)
