"""AdEMAMix: parity with ``pytorch_optimizer.AdEMAMix`` (the package followed) over 100
float64 steps, the compiled loop bit for bit the NumPy reference, the torch front end the
NumPy one, state dict round trips, and the refusal of bad hyperparameters."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms, reference
from _algo_checks import (
    a_bad_group_value_changes_nothing,
    compiled_steps_are_numpy_steps,
    constructors_refuse,
    matches_package_over_100_float64_steps,
    scalar_fields_agree,
    state_dict_round_trip_resumes_exactly,
    torch_state_dict_round_trip,
)
from conftest import BACKENDS, reference_package, requires_compiled, torch_steps_like_numpy

torch = pytest.importorskip("torch")  # the parity references are torch optimizers
import fusedadam.torch as fat  # noqa: E402

STATE = ("exp_avg", "exp_avg_sq", "exp_avg_slow")

# fusedadam's options; the package's are the same but for decoupled_weight_decay, which
# it calls weight_decouple. Together: the defaults, both warmups (one ending inside the
# 100 steps, one beyond them), coupled and decoupled decay, maximize, a large alpha.
PARITY = {
    "defaults": {},
    "warmup_l2": dict(
        lr=3e-3, betas=(0.9, 0.99, 0.999), alpha=8.0, t_alpha_beta3=60.0, weight_decay=0.01
    ),
    "warmup_beyond_decoupled": dict(
        lr=1e-2, t_alpha_beta3=250.0, weight_decay=0.1, decoupled_weight_decay=True
    ),
    "maximize_eps": dict(lr=2e-3, betas=(0.8, 0.95, 0.99), alpha=2.0, eps=1e-6, maximize=True),
    "beta1_above_beta3_warmup": dict(betas=(0.95, 0.999, 0.9), t_alpha_beta3=20.0),
}


def package_ademamix(params, options):
    """pytorch_optimizer's AdEMAMix with fusedadam's ``options`` (weight_decouple for
    decoupled_weight_decay)."""
    po = reference_package("pytorch_optimizer")
    kwargs = dict(options)
    kwargs["weight_decouple"] = kwargs.pop("decoupled_weight_decay", False)
    return po.AdEMAMix(params, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_pytorch_optimizer_over_100_float64_steps(name, backend):
    matches_package_over_100_float64_steps(
        fa.AdEMAMix, PARITY[name], backend, lambda ps: package_ademamix(ps, PARITY[name]), STATE
    )


def test_warmup_schedules_are_the_packages():
    """alpha_t and beta3_t as pytorch_optimizer schedules them, bit for bit (the same
    double operations in the same order), before, at and after t_alpha_beta3."""
    po = reference_package("pytorch_optimizer")
    group = {**_algorithms.DEFAULTS["AdEMAMix"][1], "t_alpha_beta3": 40.0, "alpha": 7.0}
    group["betas"] = (0.9, 0.999, 0.9999)
    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS["ademamix"], group)
    lr = 1e-3
    for t in (1, 2, 17, 39, 40, 41, 1000):
        bc2 = 1.0 - 0.999**t
        _, s, _ = reference.step_scalars(hyper, t, lr)
        beta3 = po.AdEMAMix.schedule_beta3(40.0, t, 0.9, 0.9999)
        alpha = po.AdEMAMix.schedule_alpha(40.0, t, 7.0)
        assert s["beta3"] == beta3
        assert s["slow_coef"] == lr * alpha * math.sqrt(bc2)


@requires_compiled
@settings(max_examples=150, deadline=None)
@given(
    t=st.integers(1, 10**6),
    lr=st.floats(0, 10),
    beta1=st.floats(1e-6, 0.9999),
    beta2=st.floats(0, 0.9999),
    beta3=st.floats(1e-6, 0.99999),
    alpha=st.floats(0, 100),
    t_alpha_beta3=st.one_of(st.none(), st.floats(1e-3, 1e7)),
    wd=st.sampled_from([0.0, 0.1]),
    decoupled=st.booleans(),
    maximize=st.booleans(),
)
def test_compiled_and_python_scalar_rules_agree_bit_for_bit(
    t, lr, beta1, beta2, beta3, alpha, t_alpha_beta3, wd, decoupled, maximize
):
    group = {
        **_algorithms.DEFAULTS["AdEMAMix"][1],
        "betas": (beta1, beta2, beta3),
        "alpha": alpha,
        "t_alpha_beta3": t_alpha_beta3,
        "weight_decay": wd,
        "decoupled_weight_decay": decoupled,
        "maximize": maximize,
    }
    scalar_fields_agree("ademamix", group, t, lr)


@requires_compiled
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.sampled_from([0, 1, 7, 255, 256, 257, 1000]),
    steps=st.integers(1, 30),
    betas=st.tuples(st.floats(0.01, 0.99), st.floats(0, 0.9999), st.floats(0.01, 0.99999)),
    alpha=st.floats(0, 20),
    t_alpha_beta3=st.one_of(st.none(), st.floats(1, 50)),
    weight_decay=st.sampled_from([0.0, 0.05]),
    decoupled=st.booleans(),
    num_threads=st.sampled_from([1, 2]),
    state_dtype=st.sampled_from([None, "bfloat16"]),
    seed=st.integers(0, 2**31),
)
def test_compiled_is_the_reference_bit_for_bit(
    dtype, size, steps, betas, alpha, t_alpha_beta3, weight_decay, decoupled, num_threads,
    state_dtype, seed,
):  # fmt: skip
    compiled_steps_are_numpy_steps(
        fa.AdEMAMix, STATE, dtype, size, steps, state_dtype, seed, lr=1e-2, betas=betas,
        alpha=alpha, t_alpha_beta3=t_alpha_beta3, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled, num_threads=num_threads,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_front_end_is_the_numpy_one(dtype, backend):
    options = dict(lr=1e-2, t_alpha_beta3=5.0, weight_decay=0.1, decoupled_weight_decay=True)
    torch_steps_like_numpy("AdEMAMix", options, dtype, backend, STATE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_state_dict_round_trip_resumes_exactly(state_dtype, backend):
    state_dict_round_trip_resumes_exactly(
        fa.AdEMAMix, dict(t_alpha_beta3=8.0, weight_decay=0.01), state_dtype, backend,
        "exp_avg_slow",
    )  # fmt: skip


def test_torch_state_dict_round_trip():
    torch_state_dict_round_trip(fat.AdEMAMix, dict(t_alpha_beta3=4.0), STATE)


BAD = [
    (dict(betas=(0.9, 0.999)), ValueError, r"Invalid betas: \(0.9, 0.999\) \(expected a triple"),
    (dict(betas=(0.9, 0.999, 1.0)), ValueError, "Invalid beta parameter at index 2: 1.0"),
    (dict(betas=(0.9, 0.999, "x")), TypeError, "Invalid beta parameter at index 2"),
    (dict(alpha=-1.0), ValueError, "Invalid alpha value: -1.0"),
    (dict(alpha=math.nan), ValueError, "Invalid alpha value: nan"),
    (dict(alpha="5"), TypeError, "Invalid alpha value"),
    (dict(t_alpha_beta3=0.0), ValueError, "Invalid t_alpha_beta3 value: 0.0"),
    (dict(t_alpha_beta3=math.inf), ValueError, "Invalid t_alpha_beta3 value: inf"),
    (dict(t_alpha_beta3="10"), TypeError, "Invalid t_alpha_beta3 value"),
    (
        dict(t_alpha_beta3=10.0, betas=(0.0, 0.999, 0.9999)),
        ValueError,
        "Invalid beta parameter at index 0: 0.0 .*t_alpha_beta3",
    ),
    (
        dict(t_alpha_beta3=10.0, betas=(0.9, 0.999, 0.0)),
        ValueError,
        "Invalid beta parameter at index 2: 0.0 .*t_alpha_beta3",
    ),
    (dict(decoupled_weight_decay=1), TypeError, "decoupled_weight_decay must be a bool"),
]


@pytest.mark.parametrize("bad, error, message", BAD)
def test_bad_hyperparameters_are_refused_naming_them(bad, error, message):
    constructors_refuse(fa.AdEMAMix, fat.AdEMAMix, bad, error, message)
    p, m, v, s = (np.zeros(3) for _ in range(4))
    bad = dict(bad)
    betas = bad.pop("betas", (0.9, 0.999, 0.9999))
    if len(betas) == 3:
        with pytest.raises(error, match=message):
            fa.functional.ademamix(
                [p], [np.ones(3)], [m], [v], [s], step=1, beta1=betas[0], beta2=betas[1],
                beta3=betas[2], **bad,
            )  # fmt: skip
        assert not (p.any() or m.any() or v.any() or s.any())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, error, message", BAD)
def test_a_bad_group_value_changes_nothing(bad, error, message, backend):
    a_bad_group_value_changes_nothing(
        fa.AdEMAMix, dict(t_alpha_beta3=5.0), bad, error, message, backend
    )


def test_the_slow_ema_uses_the_signed_8bit_map():
    algorithm = _algorithms.ALGORITHMS["ademamix"]
    assert algorithm.signed_state(STATE) == (True, False, True)
