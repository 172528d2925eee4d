"""Adan: parity with ``timm.optim.Adan`` (the package followed) over 100 float64 steps,
the first step's special case, the compiled loop bit for bit the NumPy reference, the torch
front end the NumPy one, state dict round trips, and the refusal of bad hyperparameters."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms, reference
from conftest import (
    BACKENDS,
    assert_unchanged,
    requires_compiled,
    snapshot,
    timm_optim,
    torch_steps_like_numpy,
)

torch = pytest.importorskip("torch")  # the parity references are torch optimizers
import fusedadam.torch as fat  # noqa: E402

STATE = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
SHAPES = [(3, 7), (11,), (1,)]

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


def _problem(seed=0, steps=100):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s) for s in SHAPES]
    noise = [[rng.standard_normal(s) * 0.3 for s in SHAPES] for _ in range(steps)]
    return p0, noise


def _grad(p, n):
    """A closed-loop gradient (of a quadratic, plus noise): a drift between two
    implementations would feed back into their later gradients."""
    return 0.5 * p + n


def run_fused(options, p0, noise, backend="compiled"):
    params = [p.copy() for p in p0]
    opt = fa.Adan(params, backend=backend, **options)
    for step_noise in noise:
        opt.step([_grad(p, n) for p, n in zip(params, step_noise)])
    return params, [{k: opt.state[p][k] for k in STATE} for p in params]


def run_package(options, p0, noise):
    kwargs = dict(options)
    sign = -1.0 if kwargs.pop("maximize", False) else 1.0
    params = [torch.tensor(p, dtype=torch.float64) for p in p0]
    opt = timm_adan()(params, **kwargs)
    for step_noise in noise:
        for p, n in zip(params, step_noise):
            p.grad = sign * _grad(p, torch.from_numpy(n))
        opt.step()
    return [p.numpy() for p in params], [
        {k: opt.state[p][k].numpy() for k in STATE} for p in params
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_timm_over_100_float64_steps(name, backend):
    p0, noise = _problem()
    ours = run_fused(PARITY[name], p0, noise, backend)
    theirs = run_package(PARITY[name], p0, noise)
    moved = max(np.max(np.abs(a - b)) for a, b in zip(ours[0], p0))
    assert moved > 1e-2  # the 100 steps did move the params
    for p, q in zip(ours[0], theirs[0]):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-300)
    for s, r in zip(ours[1], theirs[1]):
        for k in STATE:
            np.testing.assert_allclose(s[k], r[k], rtol=1e-10, atol=1e-12 * np.max(np.abs(r[k])))


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
    from fusedadam import _kernels

    group = {
        **_algorithms.DEFAULTS["Adan"][1],
        "betas": betas,
        "eps": eps,
        "weight_decay": wd,
        "no_prox": no_prox,
        "maximize": maximize,
    }
    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS["adan"], group)
    kind_c, scalars_c, _ = _kernels.step_scalars(hyper, t, lr)
    kind_p, scalars_p, _ = reference.step_scalars(hyper, t, lr)
    assert kind_c == kind_p == ("adan" if no_prox else "adan_prox")
    for field in _kernels.SCALAR_FIELDS:
        assert np.float64(scalars_c[field]).tobytes() == np.float64(scalars_p[field]).tobytes()


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
    if dtype == np.float64 and state_dtype == "bfloat16":
        state_dtype = None  # float64 params keep float64 state
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    out = []
    for backend in ("compiled", "numpy"):
        p = p0.copy()
        opt = fa.Adan(
            p, lr=1e-2, betas=betas, weight_decay=weight_decay, no_prox=no_prox,
            maximize=maximize, backend=backend, num_threads=num_threads,
            state_dtype=state_dtype, grad_scale=grad_scale,
        )  # fmt: skip
        for g in grads:
            opt.step(g)
        out.append((p, snapshot(opt)[1]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for k in STATE:
        np.testing.assert_array_equal(out[0][1][0][k], out[1][1][0][k])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_front_end_is_the_numpy_one(dtype, backend):
    options = dict(lr=1e-2, weight_decay=0.1)
    torch_steps_like_numpy("Adan", options, dtype, backend, STATE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_state_dict_round_trip_resumes_exactly(state_dtype, backend):
    rng = np.random.default_rng(7)
    shapes = [(4096 + 33,), (70, 3)]  # the first has 8-bit state, the second float32
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
    options = dict(weight_decay=0.01, state_dtype=state_dtype, backend=backend)
    straight = [p.copy() for p in p0]
    opt = fa.Adan(straight, **options)
    for g in grads:
        opt.step(g)
    resumed = [p.copy() for p in p0]
    first = fa.Adan(resumed, **options)
    for g in grads[:5]:
        first.step(g)
    saved = first.state_dict()
    if state_dtype == "8bit":
        assert saved["state"][0]["neg_pre_grad"].dtype == np.uint8
    second = fa.Adan(resumed, **options)
    second.load_state_dict(saved)
    for g in grads[5:]:
        second.step(g)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    for k, v in opt.state_dict()["state"][0].items():
        np.testing.assert_array_equal(v, second.state_dict()["state"][0][k])


def test_torch_state_dict_round_trip():
    rng = np.random.default_rng(8)
    grads = [torch.from_numpy(rng.standard_normal(12)) for _ in range(8)]
    a = torch.nn.Parameter(torch.zeros(12, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(12, dtype=torch.float64))
    oa = fat.Adan([a], weight_decay=0.02, no_prox=True)
    ob = fat.Adan([b], weight_decay=0.02, no_prox=True)
    for k, g in enumerate(grads):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        if k == 3:
            ob2 = fat.Adan([b], weight_decay=0.02, no_prox=True)
            ob2.load_state_dict(ob.state_dict())
            ob = ob2
    assert torch.equal(a, b)
    assert sorted(oa.state[a]) == sorted(("step",) + STATE)


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
    with pytest.raises(error, match=message):
        fa.Adan(np.zeros(3), **bad)
    with pytest.raises(error, match=message):
        fat.Adan([torch.nn.Parameter(torch.zeros(3))], **bad)
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
    p = np.linspace(-1, 1, 10)
    opt = fa.Adan(p, backend=backend, weight_decay=0.1)
    opt.step(np.cos(p))
    opt.step(np.sin(p))
    before = snapshot(opt)
    opt.param_groups[0].update(bad)
    with pytest.raises(error, match=message):
        opt.step(np.ones(10))
    assert_unchanged(opt, before)


def test_only_n_uses_the_unsigned_8bit_map():
    algorithm = _algorithms.ALGORITHMS["adan"]
    assert algorithm.signed_state(STATE) == (True, False, True, True)
