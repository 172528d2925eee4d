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
from conftest import (
    torch_steps_like_numpy,
    BACKENDS,
    assert_unchanged,
    reference_package,
    requires_compiled,
    snapshot,
)

torch = pytest.importorskip("torch")  # the parity references are torch optimizers
import fusedadam.torch as fat  # noqa: E402

STATE = ("exp_avg", "exp_avg_sq", "exp_avg_slow")
SHAPES = [(3, 7), (11,), (1,)]

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
    opt = fa.AdEMAMix(params, backend=backend, **options)
    for step_noise in noise:
        opt.step([_grad(p, n) for p, n in zip(params, step_noise)])
    return params, [{k: opt.state[p][k] for k in STATE} for p in params]


def run_package(options, p0, noise):
    po = reference_package("pytorch_optimizer")
    kwargs = dict(options)
    kwargs["weight_decouple"] = kwargs.pop("decoupled_weight_decay", False)
    params = [torch.tensor(p, dtype=torch.float64) for p in p0]
    opt = po.AdEMAMix(params, **kwargs)
    for step_noise in noise:
        for p, n in zip(params, step_noise):
            p.grad = _grad(p, torch.from_numpy(n))
        opt.step()
    return [p.numpy() for p in params], [
        {k: opt.state[p][k].numpy() for k in STATE} for p in params
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_pytorch_optimizer_over_100_float64_steps(name, backend):
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
    from fusedadam import _kernels

    group = {
        **_algorithms.DEFAULTS["AdEMAMix"][1],
        "betas": (beta1, beta2, beta3),
        "alpha": alpha,
        "t_alpha_beta3": t_alpha_beta3,
        "weight_decay": wd,
        "decoupled_weight_decay": decoupled,
        "maximize": maximize,
    }
    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS["ademamix"], group)
    kind_c, scalars_c, _ = _kernels.step_scalars(hyper, t, lr)
    kind_p, scalars_p, _ = reference.step_scalars(hyper, t, lr)
    assert kind_c == kind_p
    for field in _kernels.SCALAR_FIELDS:
        assert np.float64(scalars_c[field]).tobytes() == np.float64(scalars_p[field]).tobytes()


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
    if dtype == np.float64 and state_dtype == "bfloat16":
        state_dtype = None  # float64 params keep float64 state
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    out = []
    for backend in ("compiled", "numpy"):
        p = p0.copy()
        opt = fa.AdEMAMix(
            p, lr=1e-2, betas=betas, alpha=alpha, t_alpha_beta3=t_alpha_beta3,
            weight_decay=weight_decay, decoupled_weight_decay=decoupled, backend=backend,
            num_threads=num_threads, state_dtype=state_dtype,
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
    options = dict(lr=1e-2, t_alpha_beta3=5.0, weight_decay=0.1, decoupled_weight_decay=True)
    torch_steps_like_numpy("AdEMAMix", options, dtype, backend, STATE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_state_dict_round_trip_resumes_exactly(state_dtype, backend):
    rng = np.random.default_rng(7)
    shapes = [(4096 + 33,), (70, 3)]  # the first has 8-bit moments, the second float32
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
    options = dict(t_alpha_beta3=8.0, weight_decay=0.01, state_dtype=state_dtype, backend=backend)
    straight = [p.copy() for p in p0]
    opt = fa.AdEMAMix(straight, **options)
    for g in grads:
        opt.step(g)
    resumed = [p.copy() for p in p0]
    first = fa.AdEMAMix(resumed, **options)
    for g in grads[:5]:
        first.step(g)
    saved = first.state_dict()
    if state_dtype == "8bit":
        assert saved["state"][0]["exp_avg_slow"].dtype == np.uint8
    second = fa.AdEMAMix(resumed, **options)
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
    oa = fat.AdEMAMix([a], t_alpha_beta3=4.0)
    ob = fat.AdEMAMix([b], t_alpha_beta3=4.0)
    for k, g in enumerate(grads):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        if k == 3:
            ob2 = fat.AdEMAMix([b], t_alpha_beta3=4.0)
            ob2.load_state_dict(ob.state_dict())
            ob = ob2
    assert torch.equal(a, b)
    assert sorted(oa.state[a]) == sorted(("step",) + STATE)


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
    with pytest.raises(error, match=message):
        fa.AdEMAMix(np.zeros(3), **bad)
    with pytest.raises(error, match=message):
        fat.AdEMAMix([torch.nn.Parameter(torch.zeros(3))], **bad)
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
    p = np.linspace(-1, 1, 10)
    opt = fa.AdEMAMix(p, backend=backend, t_alpha_beta3=5.0)
    opt.step(np.cos(p))
    opt.step(np.sin(p))
    before = snapshot(opt)
    opt.param_groups[0].update(bad)
    with pytest.raises(error, match=message):
        opt.step(np.ones(10))
    assert_unchanged(opt, before)


def test_the_slow_ema_uses_the_signed_8bit_map():
    algorithm = _algorithms.ALGORITHMS["ademamix"]
    assert algorithm.signed_state(STATE) == (True, False, True)
