"""ADOPT: parity with timm's ``Adopt`` (the reference followed) and pytorch-optimizer's
``ADOPT`` where the two agree, the first-step special case, compiled == reference bit for bit,
the torch front end == the NumPy one, state_dict round trips, validation."""

import copy

import numpy as np
import pytest

import fusedadam as fa
from fusedadam import reference
from _algo_checks import (
    EVERY_STEP_SHAPES as SHAPES,
    compiled_bytes_are_numpy_bytes,
    low_precision_backends_alike,
    parity_every_step,
    refused_and_nothing_changes,
    scalar_rule_twins_agree,
    state_dict_resumes_byte_for_byte,
)
from conftest import (
    BACKENDS,
    reference_package,
    requires_compiled,
    timm_optim,
    torch_twenty_steps_like_numpy,
)


# fusedadam options -> timm's (decoupled_weight_decay is timm's `decoupled`)
TIMM_SETTINGS = {
    "defaults_lr": {"lr": 1e-2},
    "l2_clip_quarter_betas": {
        "lr": 3e-2,
        "weight_decay": 0.1,
        "clip_exp": 0.25,
        "betas": (0.8, 0.99),
        "eps": 1e-3,
    },  # fmt: skip
    "cautious_l2": {"lr": 1e-2, "weight_decay": 0.1, "cautious": True},
    "cautious_decoupled_maximize": {
        "lr": 1e-2,
        "weight_decay": 0.2,
        "decoupled_weight_decay": True,
        "maximize": True,
        "cautious": True,
        "betas": (0.8, 0.99),
    },  # fmt: skip
    "decoupled_maximize_noclip": {
        "lr": 1e-2,
        "weight_decay": 0.2,
        "decoupled_weight_decay": True,
        "maximize": True,
        "clip_exp": None,
        "betas": (0.95, 0.9),
    },  # fmt: skip
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(TIMM_SETTINGS))
@pytest.mark.parametrize("foreach", [False, True])
def test_parity_with_timm_adopt(setting, backend, foreach):
    Adopt = timm_optim("adopt").Adopt
    options = TIMM_SETTINGS[setting]
    renamed = {"decoupled_weight_decay": "decoupled", "cautious": "caution"}
    theirs = {renamed.get(k, k): v for k, v in options.items()}
    parity_every_step(
        fa.ADOPT, lambda ps: Adopt(ps, foreach=foreach, **theirs), options, backend=backend
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_parity_with_pytorch_optimizer_adopt_without_clip(weight_decay, backend):
    """pytorch-optimizer's ADOPT clips at t**0.25 (timm: (t - 1)**clip_exp) and decays
    the param at step 1 too; without the clip and with coupled (L2) weight decay the two
    packages compute the same steps, and so does fusedadam."""
    po = reference_package("pytorch_optimizer")
    options = {"lr": 1e-2, "weight_decay": weight_decay, "clip_exp": None, "betas": (0.9, 0.999)}
    parity_every_step(
        fa.ADOPT,
        lambda ps: po.ADOPT(ps, lr=1e-2, betas=(0.9, 0.999), weight_decay=weight_decay,
                            clip_lambda=None, foreach=False),
        options,
        backend=backend,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.5},
        {"weight_decay": 0.5, "decoupled_weight_decay": True, "maximize": True},
    ],
)
def test_first_step_only_starts_the_second_moment(options, dtype, backend):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    before = [p.copy() for p in params]
    grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    opt = fa.ADOPT(params, backend=backend, lr=0.5, **options)
    opt.step(grads)
    wd = dtype(options.get("weight_decay", 0.0))
    coupled = wd != 0 and not options.get("decoupled_weight_decay", False)
    sign = dtype(-1 if options.get("maximize") else 1)
    for p, p0, g in zip(params, before, grads):
        assert p.tobytes() == p0.tobytes()  # no update, no decay
        st = opt.state[p]
        assert int(st["step"]) == 1
        assert not st["exp_avg"].any()
        g = g * sign
        if coupled:
            g = g + wd * p0
        assert st["exp_avg_sq"].tobytes() == (g * g).tobytes()


def _transcription(params, grads_per_step, lr, betas, eps, clip_exp, wd, decoupled):
    """ADOPT as timm's _single_tensor_adopt writes it, in float64 NumPy (independent of the
    package's reference module: lerp, clamp and the decay written timm's way)."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for p, g, mi, vi in zip(params, grads, m, v):
            if wd and not decoupled:
                g = g + wd * p
            if t == 1:
                vi += g * g
                continue
            if wd and decoupled:
                p += -lr * wd * p
            normed = g / np.maximum(np.sqrt(vi), eps)
            if clip_exp is not None:
                c = (t - 1) ** clip_exp
                normed = np.clip(normed, -c, c)
            mi += (1 - betas[0]) * (normed - mi)
            p += -lr * mi
            vi *= betas[1]
            vi += (1 - betas[1]) * g * g
    return params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip_exp", [0.333, None])
@pytest.mark.parametrize("decoupled", [False, True])
def test_matches_the_formula_transcribed(clip_exp, decoupled, backend):
    """Against the formula itself (no package needed): float64, 60 steps, rtol 1e-10."""
    rng = np.random.default_rng(4)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(60)]
    ours = [a.copy() for a in init]
    opt = fa.ADOPT(ours, lr=2e-2, eps=1e-4, clip_exp=clip_exp, weight_decay=0.1,
                   decoupled_weight_decay=decoupled, backend=backend)  # fmt: skip
    for g in grads:
        opt.step(g)
    expected = _transcription([a.copy() for a in init], grads, 2e-2, (0.9, 0.9999), 1e-4,
                              clip_exp, 0.1, decoupled)  # fmt: skip
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)


@requires_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("size", [0, 1, 15, 17, 255, 257, 40_000])
def test_compiled_is_the_reference_bit_for_bit(simd, dtype, n_threads, size, parallel_threshold):
    """Every instruction set, thread count and awkward size; steps 1 (adopt_first), 2
    (clip = 1) and later, with gradients scaled so that the clip and the eps floor bind."""
    compiled_bytes_are_numpy_bytes(
        fa.ADOPT, dict(lr=1e-2, eps=1e-3, weight_decay=0.1), dtype, size, n_threads,
        scales=[10.0 ** (t - 2) for t in range(6)],
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_run_is_the_update_functions(backend):
    """The loop kinds the scalar rule names are those reference.run runs."""
    from fusedadam import _algorithms

    hyper = _algorithms.hyper_dict(
        _algorithms.ALGORITHMS["adopt"], fa.ADOPT([np.zeros(1)]).param_groups[0]
    )
    assert reference.step_scalars(hyper, 1, 1e-3)[0] == "adopt_first"
    kind, scalars, _ = reference.step_scalars(hyper, 2, 1e-3)
    assert kind == "adopt" and scalars["clip"] == 1.0
    assert reference.step_scalars(hyper, 9, 1e-3)[1]["clip"] == 8.0**0.333
    hyper["adopt_clip"] = False
    assert reference.step_scalars(hyper, 9, 1e-3)[1]["clip"] == np.inf


@requires_compiled
def test_scalar_rule_twins_agree():
    from fusedadam import _algorithms

    for options in (
        {},
        {"clip_exp": None},
        {"clip_exp": 0.7, "weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
    ):
        group = fa.ADOPT([np.zeros(1)], **options).param_groups[0]
        hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS["adopt"], group)
        scalar_rule_twins_agree(hyper)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_low_precision_params_and_state_run_both_backends_alike(state_dtype):
    p = low_precision_backends_alike(fa.ADOPT, state_dtype)
    assert np.isfinite(p[0].astype(np.float32)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("save_after", [1, 2, 5])
def test_state_dict_round_trip_resumes_exactly(save_after, backend):
    opt2, resumed = state_dict_resumes_byte_for_byte(
        fa.ADOPT, dict(lr=1e-2, weight_decay=0.1), backend, save_after
    )
    assert int(opt2.state[resumed[0]]["step"]) == 8


BAD = [
    ({"clip_exp": -0.5}, ValueError, r"Invalid clip_exp value: -0\.5"),
    ({"clip_exp": float("inf")}, ValueError, r"Invalid clip_exp value: inf"),
    ({"clip_exp": "0.3"}, TypeError, r"Invalid clip_exp value: '0\.3'"),
    ({"betas": (0.9, 1.0)}, ValueError, r"Invalid beta parameter at index 1: 1\.0"),
    ({"eps": 0.0}, ValueError, r"Invalid epsilon value: 0\.0"),
    ({"weight_decay": -1.0}, ValueError, r"Invalid weight_decay value: -1\.0"),
    ({"decoupled_weight_decay": 1}, TypeError, r"decoupled_weight_decay must be a bool"),
]


@pytest.mark.parametrize("bad, error, match", BAD)
def test_bad_hyperparameters_are_refused_and_nothing_changes(bad, error, match):
    refused_and_nothing_changes(
        fa.ADOPT, fa.functional.adopt, bad, error, match, warm_up=[0.5, 0.25], functional_step=3
    )


def test_functional_first_step_and_later_steps():
    p = [np.array([1.0, -2.0])]
    m, v = [np.zeros(2)], [np.zeros(2)]
    fa.functional.adopt(p, [np.array([0.5, 2.0])], m, v, step=1, lr=0.1)
    assert p[0].tolist() == [1.0, -2.0] and v[0].tolist() == [0.25, 4.0]
    fa.functional.adopt(p, [np.array([0.5, -2.0])], m, v, step=2, lr=0.1)
    # n = g / sqrt(v) = (1, -1), clip (2 - 1)**0.333 = 1; m = (1 - 0.9) n; p -= 0.1 m
    m1 = 1.0 - 0.9
    np.testing.assert_array_equal(m[0], [m1, -m1])
    np.testing.assert_array_equal(p[0], [1.0 - 0.1 * m1, -2.0 + 0.1 * m1])
    np.testing.assert_array_equal(v[0], [0.9999 * 0.25 + (1.0 - 0.9999) * 0.25,
                                         0.9999 * 4.0 + (1.0 - 0.9999) * 4.0])  # fmt: skip


@pytest.fixture
def ft():
    return pytest.importorskip("fusedadam.torch")


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "clip_exp": None},
                                     {"weight_decay": 0.1, "decoupled_weight_decay": True,
                                      "maximize": True}])  # fmt: skip
def test_torch_front_end_is_the_numpy_one_bit_for_bit(options):
    torch_twenty_steps_like_numpy("ADOPT", options)


def test_torch_state_dict_loads_from_timm_and_resumes(ft):
    """A timm Adopt checkpoint (float tensor ``step``) loads into fusedadam.torch.ADOPT and
    the next steps agree with timm's to rtol 1e-10 (float64)."""
    torch = pytest.importorskip("torch")

    Adopt = timm_optim("adopt").Adopt
    gen = torch.Generator().manual_seed(8)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(6, 2), (3,)]]
    theirs = [p.clone().requires_grad_() for p in init]
    ref = Adopt(theirs, lr=1e-2, foreach=False)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in init]
             for _ in range(10)]  # fmt: skip
    for g in grads[:4]:
        for p, gi in zip(theirs, g):
            p.grad = gi.clone()
        ref.step()
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    opt = ft.ADOPT(ours, lr=1e-2)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for g in grads[4:]:
        for p, q, gi in zip(theirs, ours, g):
            p.grad = gi.clone()
            q.grad = gi.clone()
        ref.step()
        opt.step()
    for p, q in zip(theirs, ours):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-10, atol=0)
