"""Bad input raises a clear error naming the problem, and changes nothing."""

import math

import numpy as np
import pytest

import fusedadam as fa
from conftest import COMPILED, assert_unchanged, snapshot

BACKENDS = ["numpy"] + (["compiled"] if COMPILED else [])


def trained(backend, cls=fa.Adam, **options):
    """An optimizer over three float32 params (two groups) that has taken two steps."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(5,), (3, 4), (6,)]]
    opt = cls(
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], backend=backend, **options
    )
    for _ in range(2):
        opt.step([np.ones_like(p) for p in params])
    return opt, params


def good_grads(params):
    return [np.full_like(p, 0.5) for p in params]


BAD_GRADS = {
    "dtype float64": (
        TypeError,
        r"grads\[1\] has dtype float64",
        lambda ps, opt: [ps[0] * 0, np.zeros((3, 4)), ps[2] * 0],
    ),
    "dtype int": (
        TypeError,
        r"grads\[0\] has dtype int",
        lambda ps, opt: [np.zeros(5, dtype=np.int32), ps[1] * 0, ps[2] * 0],
    ),
    "shape": (
        ValueError,
        r"grads\[1\] has shape \(4, 3\)",
        lambda ps, opt: [ps[0] * 0, np.zeros((4, 3), np.float32), ps[2] * 0],
    ),
    "not an array": (
        TypeError,
        r"grads\[2\] must be a numpy.ndarray",
        lambda ps, opt: [ps[0] * 0, ps[1] * 0, [0.0] * 6],
    ),
    "too few": (ValueError, r"expected 3 gradients", lambda ps, opt: [ps[0] * 0]),
    "too many": (ValueError, r"expected 3 gradients", lambda ps, opt: [p * 0 for p in ps * 2]),
    "single array for three params": (ValueError, r"one gradient array", lambda ps, opt: ps[0] * 0),
    "aliases its param": (
        ValueError,
        r"grads\[1\] shares memory",
        lambda ps, opt: [ps[0] * 0, ps[1], ps[2] * 0],
    ),
    "view of its param": (
        ValueError,
        r"grads\[1\] shares memory",
        lambda ps, opt: [ps[0] * 0, ps[1][:, :], ps[2] * 0],
    ),
    "aliases state": (
        ValueError,
        r"grads\[0\] shares memory",
        lambda ps, opt: [opt.state[ps[0]]["exp_avg"], ps[1] * 0, ps[2] * 0],
    ),
    "aliases another param": (
        ValueError,
        r"grads\[2\] shares memory",
        lambda ps, opt: [
            ps[0] * 0,
            ps[1] * 0,
            ps[0][:6] if ps[0].size >= 6 else ps[1].reshape(-1)[:6],
        ],
    ),
    "set of grads": (TypeError, r"ordered sequence", lambda ps, opt: {1, 2, 3}),
    "not a sequence": (TypeError, r"grads must be", lambda ps, opt: 3.0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_GRADS))
def test_bad_gradients_raise_and_change_nothing(backend, case):
    exc, match, make = BAD_GRADS[case]
    opt, params = trained(backend, amsgrad=True)
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(make(params, opt))
    assert_unchanged(opt, before)
    opt.step(good_grads(params))  # and the optimizer still works


BAD_GROUP_SETTINGS = {
    "lr negative": ("lr", -1.0, ValueError, r"param_groups\[1\]: Invalid learning rate: -1.0"),
    "lr nan": ("lr", math.nan, ValueError, r"Invalid learning rate: nan"),
    "lr inf": ("lr", math.inf, ValueError, r"Invalid learning rate: inf"),
    "lr string": ("lr", "0.1", TypeError, r"Invalid learning rate"),
    "lr callable negative": ("lr", lambda t: -0.5, ValueError, r"lr\(3\) returned"),
    "lr callable nan": ("lr", lambda t: math.nan, ValueError, r"lr\(3\) returned"),
    "beta1 = 1": ("betas", (1.0, 0.999), ValueError, r"beta parameter at index 0: 1.0"),
    "beta2 < 0": ("betas", (0.9, -0.1), ValueError, r"beta parameter at index 1: -0.1"),
    "beta nan": ("betas", (0.9, math.nan), ValueError, r"beta parameter at index 1: nan"),
    "betas one value": ("betas", (0.9,), ValueError, r"Invalid betas"),
    "eps zero": ("eps", 0.0, ValueError, r"Invalid epsilon value: 0.0"),
    "eps negative": ("eps", -1e-8, ValueError, r"Invalid epsilon value"),
    "weight_decay negative": ("weight_decay", -0.1, ValueError, r"Invalid weight_decay value"),
    "weight_decay nan": ("weight_decay", math.nan, ValueError, r"Invalid weight_decay value"),
    "beta1_decay zero": ("beta1_decay", 0.0, ValueError, r"Invalid beta1_decay value: 0.0"),
    "beta1_decay > 1": ("beta1_decay", 1.5, ValueError, r"Invalid beta1_decay value: 1.5"),
    "num_threads zero": ("num_threads", 0, ValueError, r"Invalid num_threads: 0"),
    "num_threads -2": ("num_threads", -2, ValueError, r"Invalid num_threads: -2"),
    "num_threads float": ("num_threads", 2.0, TypeError, r"num_threads must be"),
    "amsgrad not bool": ("amsgrad", "yes", TypeError, r"amsgrad must be a bool"),
    "backend unknown": ("backend", "gpu", ValueError, r"Invalid backend 'gpu'"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_GROUP_SETTINGS))
def test_bad_hyperparameters_between_steps_change_nothing(backend, case):
    key, value, exc, match = BAD_GROUP_SETTINGS[case]
    opt, params = trained(backend)
    before = snapshot(opt)
    good = opt.param_groups[1][key]
    opt.param_groups[1][key] = value
    with pytest.raises(exc, match=match):
        opt.step(good_grads(params))
    assert_unchanged(opt, before)  # group 0 was valid and must not have stepped either
    opt.param_groups[1][key] = good
    opt.step(good_grads(params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_made_read_only_after_construction(backend):
    opt, params = trained(backend)
    before = snapshot(opt)
    params[2].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[2\] is read-only"):
        opt.step(good_grads(params))
    params[2].flags.writeable = True
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_failure_creates_no_state(backend):
    p = np.zeros(4, np.float32)
    opt = fa.Adam([p, np.zeros(3, np.float32)], backend=backend)
    with pytest.raises(TypeError):
        opt.step([np.ones(4, np.float32), np.ones(3)])
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}
    assert not p.any()


CONSTRUCTION_ERRORS = {
    "int param": (
        lambda: [np.zeros(3, np.int64)],
        {},
        TypeError,
        r"params\[0\] has dtype int64; supported: float32, float64, bfloat16, float16",
    ),
    "complex param": (lambda: [np.zeros(3, np.complex64)], {}, TypeError, r"complex64"),
    "list param": (lambda: [[1.0, 2.0]], {}, TypeError, r"params\[0\] must be a numpy.ndarray"),
    "non-contiguous": (
        lambda: [np.zeros((4, 4), np.float32)[:, ::2]],
        {},
        ValueError,
        r"params\[0\] is not C-contiguous",
    ),
    "fortran order": (
        lambda: [np.zeros((4, 3), np.float32, order="F")],
        {},
        ValueError,
        r"not C-contiguous",
    ),
    "read-only": (
        lambda: [np.zeros(3, np.float32).view()],
        "ro",
        ValueError,
        r"params\[0\] is read-only",
    ),
    "same array twice": (
        lambda: (lambda a: [a, np.zeros(2), a])(np.zeros(3)),
        {},
        ValueError,
        r"params\[2\] is the same array as params\[0\]",
    ),
    "overlapping views": (
        lambda: (lambda a: [a[:6], a[4:]])(np.zeros(10)),
        {},
        "first-step",
        r"share memory",
    ),
    "set": (lambda: {1}, {}, TypeError, r"not a set"),
    "empty": (lambda: [], {}, ValueError, r"empty parameter list"),
    "lr": (lambda: [np.zeros(3)], {"lr": -1}, ValueError, r"Invalid learning rate: -1"),
    "betas": (
        lambda: [np.zeros(3)],
        {"betas": (0.9, 1.0)},
        ValueError,
        r"Invalid beta parameter at index 1: 1.0",
    ),
    "eps": (lambda: [np.zeros(3)], {"eps": 0}, ValueError, r"Invalid epsilon value: 0"),
    "num_threads": (lambda: [np.zeros(3)], {"num_threads": 0}, ValueError, r"num_threads: 0"),
    "backend": (lambda: [np.zeros(3)], {"backend": "cuda"}, ValueError, r"Invalid backend"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTION_ERRORS))
def test_construction_errors(case):
    make, options, exc, match = CONSTRUCTION_ERRORS[case]
    params = make()
    if options == "ro":
        params[0].flags.writeable = False
        options = {}
    if exc == "first-step":
        # Overlap between params is found when the group's memory map is built.
        opt = fa.Adam(params, **options)
        before = [p.copy() for p in params]
        with pytest.raises(ValueError, match=match):
            opt.step([np.zeros_like(p) for p in params])
        for p, b in zip(params, before):
            np.testing.assert_array_equal(p, b)
        return
    with pytest.raises(exc, match=match):
        fa.Adam(params, **options)


def test_param_in_two_groups_rejected():
    a = np.zeros(3)
    with pytest.raises(ValueError, match="more than one parameter group"):
        fa.Adam([{"params": [a]}, {"params": [a]}])


def test_mixed_groups_and_arrays_rejected():
    with pytest.raises(TypeError, match="not a mix"):
        fa.Adam([np.zeros(3), {"params": [np.zeros(2)]}])


def test_group_override_is_validated_at_construction():
    with pytest.raises(ValueError, match=r"param_groups\[1\]: Invalid epsilon"):
        fa.Adam([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "eps": -1.0}])


def test_compiled_backend_required_but_missing(monkeypatch):
    monkeypatch.setattr(fa._backend, "_kernels", None)
    with pytest.raises(RuntimeError, match="extension is not built"):
        fa.Adam(np.zeros(3), backend="compiled")


def test_auto_backend_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(fa._backend, "_kernels", None)
    monkeypatch.setattr(fa._backend, "_warned_fallback", False)
    p = np.zeros(3)
    with pytest.warns(RuntimeWarning, match="NumPy reference backend"):
        opt = fa.Adam(p)
    opt.step(np.ones(3))  # no second warning (filterwarnings=error would raise)
    assert np.all(p < 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_read_only_grads_are_accepted(backend):
    p = np.zeros((4, 6), np.float32)
    q = p.copy()
    opt_a = fa.Adam(p, backend=backend)
    opt_b = fa.Adam(q, backend=backend)
    g = np.arange(48, dtype=np.float32).reshape(6, 8)[:, ::2].T  # strided, transposed
    g_contig = np.ascontiguousarray(g)
    g_ro = g_contig.copy()
    g_ro.flags.writeable = False
    opt_a.step(g)
    opt_b.step(g_ro)
    np.testing.assert_array_equal(p, q)


NEW_ALGORITHM_SETTINGS = [
    (fa.NAdam, {"momentum_decay": -0.1}, ValueError, r"Invalid momentum_decay value: -0.1"),
    (fa.NAdam, {"momentum_decay": math.inf}, ValueError, r"Invalid momentum_decay value: inf"),
    (fa.NAdam, {"decoupled_weight_decay": 1}, TypeError, r"decoupled_weight_decay must be a bool"),
    (fa.RAdam, {"betas": (0.9, 1.0)}, ValueError, r"Invalid beta parameter at index 1: 1.0"),
    (fa.RAdam, {"eps": 0.0}, ValueError, r"Invalid epsilon value: 0.0"),
    (fa.AdaBelief, {"eps_root": -1e-16}, ValueError, r"Invalid eps_root value"),
    (fa.AdaBelief, {"eps_root": "0"}, TypeError, r"Invalid eps_root value"),
    (fa.Lion, {"weight_decay": -1.0}, ValueError, r"Invalid weight_decay value: -1.0"),
    (fa.Lion, {"lr": -1.0}, ValueError, r"Invalid learning rate: -1.0"),
]


@pytest.mark.parametrize("cls,settings,exc,match", NEW_ALGORITHM_SETTINGS)
def test_new_algorithms_validate_their_hyperparameters(cls, settings, exc, match):
    with pytest.raises(exc, match=match):
        cls(np.zeros(3), **settings)
    p = np.zeros(3)
    opt = cls([{"params": [p]}])
    opt.step(np.ones(3))
    before = snapshot(opt)
    opt.param_groups[0].update(settings)
    with pytest.raises(exc, match=r"param_groups\[0\]: " + match):
        opt.step(np.ones(3))
    assert_unchanged(opt, before)


def test_lion_has_no_eps():
    with pytest.raises(TypeError, match="eps"):
        fa.Lion(np.zeros(3), eps=1e-8)
