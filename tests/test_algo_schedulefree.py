"""Schedule-Free AdamW: parity with the ``schedulefree`` package, train/eval, state dicts,
bit-exactness of the compiled loop against the reference, both front ends."""

import copy

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms, reference
from fusedadam.functional import adamw_schedule_free

from conftest import (
    BACKENDS,
    assert_unchanged,
    reference_package,
    requires_compiled,
    snapshot,
)

SHAPES = [(7,), (3, 5), (1,), (0,), (33,)]

# (class name, settings) pairs: AdamW's, then RAdam's (no warmup_steps; beta2 = 0.9 and
# 0.95 rectify after a few steps, 0.999 after 6, 0.5 never).
SETTINGS = {
    "defaults": {},
    "warmup_decay": {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.05, "warmup_steps": 10},
    "r_power": {"lr": 0.02, "r": 0.5, "weight_lr_power": 1.0, "warmup_steps": 30},
    "no_lr_weighting": {
        "lr": 0.005,
        "betas": (0.95, 0.999),
        "weight_lr_power": 0.0,
        "weight_decay": 0.3,
        "eps": 1e-6,
    },
    "late_warmup_large_beta1": {"lr": 0.05, "betas": (0.98, 0.9), "warmup_steps": 150},
}
RADAM_SETTINGS = {
    "radam_defaults": {},
    "radam_decay": {"lr": 0.01, "betas": (0.9, 0.9), "weight_decay": 0.05, "r": 0.5},
    "radam_loud": {"lr": 0.01, "betas": (0.85, 0.95), "silent_sgd_phase": False},
    "radam_never_rectified": {
        "lr": 0.001,
        "betas": (0.9, 0.5),
        "silent_sgd_phase": False,
        "weight_lr_power": 0.0,
    },
}
CASES_100 = [("AdamWScheduleFree", name) for name in sorted(SETTINGS)] + [
    ("RAdamScheduleFree", name) for name in sorted(RADAM_SETTINGS)
]


def _params(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _grads(rng, dtype=np.float64):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _close(ours, theirs, rtol=1e-10):
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-300)


# ------------------------------------------------------------------ parity with the package


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls_name,name", CASES_100)
def test_matches_schedulefree_package_over_100_steps(cls_name, name, backend):
    """100 steps in float64 against schedulefree.AdamWScheduleFree / RAdamScheduleFree
    (their per-tensor loop, foreach=False, and their foreach loop), switching to eval
    (comparing x) and back to train mid-run: params, z and v to rtol 1e-10."""
    schedulefree = reference_package("schedulefree")
    torch = reference_package("torch")
    options = {**SETTINGS, **RADAM_SETTINGS}[name]
    ps = _params(0)
    refs = {}
    for foreach in (False, True):
        tensors = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
        ref = getattr(schedulefree, cls_name)(tensors, foreach=foreach, **options)
        ref.train()
        refs[foreach] = (ref, tensors)
    opt = getattr(fa, cls_name)(ps, backend=backend, **options)
    rng = np.random.default_rng(1)

    def compare():
        for ref, tensors in refs.values():
            for p, q in zip(ps, tensors):
                _close(p, q.detach().numpy())
                if p.size:
                    _close(opt.state[p]["z"], ref.state[q]["z"].numpy())
                    _close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"].numpy())

    for t in range(100):
        gs = _grads(rng)
        for ref, tensors in refs.values():
            for q, g in zip(tensors, gs):
                q.grad = torch.tensor(g.copy())
            ref.step()
        opt.step(gs)
        compare()
        if t % 23 == 7:
            for ref, _ in refs.values():
                ref.eval()
            opt.eval()
            compare()
            opt.eval()  # idempotent
            compare()
            for ref, _ in refs.values():
                ref.train()
            opt.train()
            compare()
    group = refs[False][0].param_groups[0]
    for p in ps:
        assert int(opt.state[p]["step"]) == group["k"] == 100
        assert float(opt.state[p]["lr_max"]) == group["lr_max"]
        assert float(opt.state[p]["weight_sum"]) == pytest.approx(group["weight_sum"], rel=1e-14)


def _frozen_at(t):
    frozen = set()
    if t < 20:
        frozen.add(2)  # no gradient yet: joins its group at step 21
    if 10 <= t < 30:
        frozen.add(1)
    if 40 <= t < 45:
        frozen |= {0, 4}
    if 50 <= t < 55:
        frozen |= {3, 4}  # the whole second group
    return frozen


def test_torch_front_end_frozen_params_follow_the_package():
    """A param whose grad is None for some steps keeps y and z, and continues at its
    group's counters; a param whose first grad comes late starts at its group's counters;
    a group without grads still counts the step (the package keeps k, lr_max and
    weight_sum per group and counts every step)."""
    schedulefree = reference_package("schedulefree")
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")

    options = {"lr": 0.01, "warmup_steps": 5, "weight_decay": 0.01, "r": 1.0}
    ps = _params(3)
    mine = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    ref = schedulefree.AdamWScheduleFree(
        [{"params": theirs[:3]}, {"params": theirs[3:], "lr": 0.02}], foreach=False, **options
    )
    ref.train()
    opt = fat.AdamWScheduleFree([{"params": mine[:3]}, {"params": mine[3:], "lr": 0.02}],
                                **options)  # fmt: skip
    opt.train()
    rng = np.random.default_rng(4)
    for t in range(60):
        gs = _grads(rng)
        frozen = _frozen_at(t)
        for k, (a, b, g) in enumerate(zip(mine, theirs, gs)):
            a.grad = None if k in frozen else torch.tensor(g.copy())
            b.grad = None if k in frozen else torch.tensor(g.copy())
        ref.step()
        opt.step()
        for a, b in zip(mine, theirs):
            _close(a.detach().numpy(), b.detach().numpy())
        if t == 35:
            ref.eval()
            opt.eval()
            for a, b in zip(mine, theirs):
                _close(a.detach().numpy(), b.detach().numpy())
            ref.train()
            opt.train()
    for a, b in zip(mine, theirs):
        _close(opt.state[a]["z"].numpy(), ref.state[b]["z"].numpy())
    for a in mine:
        group = ref.param_groups[0 if a is mine[0] or a is mine[1] or a is mine[2] else 1]
        assert int(opt.state[a]["step"]) == group["k"] == 60
        assert float(opt.state[a]["weight_sum"]) == pytest.approx(group["weight_sum"], rel=1e-14)


# ------------------------------------------------------------------ the scalar rule


@requires_compiled
@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(["schedulefree", "radam_schedulefree"]),
    silent=st.booleans(),
    t=st.integers(1, 10**6),
    lr=st.floats(0, 10),
    beta1=st.floats(0, 0.9999),
    beta2=st.floats(0, 0.9999),
    wd=st.sampled_from([0.0, 0.1]),
    warmup=st.integers(0, 2000),
    r=st.floats(0, 3),
    power=st.floats(0, 4),
    lr_max=st.floats(-1, 10),
    weight_sum=st.floats(0, 1e6),
)
def test_compiled_and_python_scalar_rules_agree(algorithm, silent, t, lr, beta1, beta2, wd,
                                                 warmup, r, power, lr_max, weight_sum):  # fmt: skip
    from fusedadam import _kernels

    group = {"betas": (beta1, beta2), "eps": 1e-8, "weight_decay": wd, "warmup_steps": warmup,
             "r": r, "weight_lr_power": power, "maximize": False,
             "silent_sgd_phase": silent}  # fmt: skip
    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS[algorithm], group)
    carry = (lr_max, weight_sum)
    kind_c, scalars_c, after_c = _kernels.step_scalars(hyper, t, lr, carry)
    kind_p, scalars_p, after_p = reference.step_scalars(hyper, t, lr, carry)
    assert kind_c == kind_p
    assert kind_c.startswith("schedulefree") and kind_c.endswith("_l2") == bool(wd)
    for field in scalars_c:
        assert np.float64(scalars_c[field]).tobytes() == np.float64(scalars_p[field]).tobytes()
    assert np.float64(after_c).tobytes() == np.float64(after_p).tobytes()


def test_scalar_rule_is_the_packages():
    """The rule's lr_max, weight_sum and c, and the lerp's switch at c = 0.5."""
    hyper = _algorithms.hyper_dict(
        _algorithms.ALGORITHMS["schedulefree"],
        {
            "betas": (0.9, 0.999),
            "weight_decay": 0.0,
            "warmup_steps": 4,
            "r": 0.0,
            "weight_lr_power": 2.0,
        },  # fmt: skip
    )
    _, s, after = reference.step_scalars(hyper, 1, 0.1, (-1.0, 0.0))
    assert after == (0.1 / 4, (0.1 / 4) ** 2)
    assert s["lerp_from_end"] == 1.0 and s["lerp_weight"] == 0.0  # c = 1: y = z
    assert s["step_size"] == 0.1 / 4
    _, s, after = reference.step_scalars(hyper, 2, 0.1, after)
    c = (0.1 / 2) ** 2 / ((0.1 / 4) ** 2 + (0.1 / 2) ** 2)
    assert c > 0.5 and s["lerp_from_end"] == 1.0 and s["lerp_weight"] == c - 1.0
    assert s["y_step"] == 0.1 / 2 * (0.9 * (1 - c) - 1)
    _, s, _ = reference.step_scalars(hyper, 9, 0.1, (0.1, 1.0))
    assert s["lerp_from_end"] == 0.0 and s["lerp_weight"] == 0.1**2 / (1.0 + 0.1**2)
    # lr 0 with weighting by lr: weight_sum stays 0, c is 0 (the package's ZeroDivisionError)
    _, s, after = reference.step_scalars(hyper, 1, 0.0, (-1.0, 0.0))
    assert after == (0.0, 0.0) and s["lerp_weight"] == 0.0 and s["lerp_from_end"] == 0.0


# ------------------------------------------------------------------ bit-exactness


def _run(backend, dtype, state_dtype=None, num_threads=1, steps=12, master="float32"):
    rng = np.random.default_rng(7)
    shapes = [(5000,), (17,), (0,), (300, 3)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = fa.AdamWScheduleFree(
        ps, lr=0.01, weight_decay=0.01, warmup_steps=4, r=0.3, backend=backend,
        state_dtype=state_dtype, num_threads=num_threads, master=master,
    )  # fmt: skip
    for t in range(steps):
        opt.step([rng.standard_normal(s).astype(dtype) for s in shapes])
        if t in (3, 8):
            opt.eval()
            opt.train()
    opt.eval()
    return ps, opt


CASES = [
    (np.float32, None, "float32"),
    (np.float64, None, "float32"),
    (np.float32, "bfloat16", "float32"),
    (np.float32, "8bit", "float32"),
    (ml_dtypes.bfloat16, None, "float32"),
    (ml_dtypes.bfloat16, "8bit", "float32"),
    (ml_dtypes.bfloat16, None, "residual"),
    (np.float16, "bfloat16", "float32"),
]


@requires_compiled
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype,state_dtype,master", CASES)
def test_compiled_equals_reference_bit_for_bit(dtype, state_dtype, master, num_threads, simd):
    ps_c, opt_c = _run("compiled", dtype, state_dtype, num_threads, master=master)
    ps_n, opt_n = _run("numpy", dtype, state_dtype, master=master)
    for a, b in zip(ps_c, ps_n):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(ps_c, ps_n):
        for name, value in opt_c.state[a].items():
            assert np.asarray(value).tobytes() == np.asarray(opt_n.state[b][name]).tobytes(), name


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_z_starts_as_the_param(state_dtype):
    """z is created from the param, in the state's dtype; the first step's average weight
    is 1, so y becomes z (the param then holds z's value: a low-precision z rounds it)."""
    p = np.linspace(-3, 3, 5000, dtype=np.float32)
    start = p.copy()
    opt = fa.AdamWScheduleFree([p], lr=0.0, state_dtype=state_dtype, weight_lr_power=0.0)
    opt.step(np.ones_like(p))  # lr 0: z does not move, y = lerp(y, z, 1) = z
    z = opt.state[p]["z"]
    if state_dtype == "8bit":
        codes, absmax = reference.q8_quantize(start, True)
        np.testing.assert_array_equal(z, codes)
        np.testing.assert_array_equal(opt.state[p]["z_absmax"], absmax)
        np.testing.assert_array_equal(p, reference.q8_dequantize(codes, absmax, True))
    else:
        np.testing.assert_array_equal(z, start.astype(z.dtype))
        np.testing.assert_array_equal(p, z.astype(np.float32))


def test_bfloat16_param_moves_its_master():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(300).astype(ml_dtypes.bfloat16)
    opt = fa.AdamWScheduleFree([p], lr=0.05)
    for _ in range(5):
        opt.step(rng.standard_normal(300).astype(np.float32))
    master = opt.state[p]["master_param"]
    y = master.copy()
    z = opt.state[p]["z"]
    opt.eval()
    w = np.float32(1 - 1 / 0.9)
    np.testing.assert_array_equal(master, y + w * (z - y))
    np.testing.assert_array_equal(p, master.astype(ml_dtypes.bfloat16))
    opt.train()
    np.testing.assert_allclose(master, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p, master.astype(ml_dtypes.bfloat16))


# ------------------------------------------------------------------ modes


def test_step_in_eval_mode_raises_and_changes_nothing():
    ps = _params(5)
    opt = fa.AdamWScheduleFree(ps)
    rng = np.random.default_rng(0)
    opt.step(_grads(rng))
    opt.eval()
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match=r"param_groups\[0\] is in eval mode.*train\(\)"):
        opt.step(_grads(rng))
    assert_unchanged(opt, before)
    opt.train()
    opt.step(_grads(rng))


def test_train_and_eval_are_idempotent_and_recorded():
    ps = _params(6)
    opt = fa.AdamWScheduleFree(ps, lr=0.1)
    assert opt.param_groups[0]["train_mode"] is True
    opt.train()  # no state yet, train mode: nothing
    rng = np.random.default_rng(0)
    for _ in range(3):
        opt.step(_grads(rng))
    y = [p.copy() for p in ps]
    opt.eval()
    x = [p.copy() for p in ps]
    assert any(not np.array_equal(a, b) for a, b in zip(x, y))
    opt.eval()
    for a, b in zip(ps, x):
        np.testing.assert_array_equal(a, b)
    assert opt.state_dict()["param_groups"][0]["train_mode"] is False
    opt.train()
    opt.train()
    for a, b in zip(ps, y):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # a group added in eval mode starts in eval mode
    opt.eval()
    opt.add_param_group({"params": [np.zeros(3)]})
    assert opt.param_groups[1]["train_mode"] is False


def test_eval_with_beta1_zero_is_refused_by_name():
    p = np.ones(3)
    opt = fa.AdamWScheduleFree([p], betas=(0.0, 0.9))
    opt.step(np.ones(3))  # training takes beta1 = 0, as the package does
    with pytest.raises(ValueError, match=r"beta parameter at index 0 for eval\(\): 0.0"):
        opt.eval()
    assert opt.param_groups[0]["train_mode"] is True


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_in_either_mode(mode, backend):
    rng = np.random.default_rng(8)
    ps = _params(9)
    opt = fa.AdamWScheduleFree(ps, lr=0.01, warmup_steps=3, weight_decay=0.1, backend=backend)
    for _ in range(5):
        opt.step(_grads(rng))
    if mode == "eval":
        opt.eval()
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.copy() for p in ps]
    twin = [p.copy() for p in saved_params]
    resumed = fa.AdamWScheduleFree(twin, backend=backend)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["train_mode"] is (mode == "train")
    for o in (opt, resumed):
        o.train()
    for _ in range(5):
        gs = _grads(rng)
        opt.step(gs)
        resumed.step(gs)
    opt.eval()
    resumed.eval()
    for a, b in zip(ps, twin):
        assert a.tobytes() == b.tobytes()


def test_torch_state_dict_round_trip_in_eval_mode():
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")

    rng = np.random.default_rng(10)
    ps = [torch.tensor(p) for p in _params(11)]
    opt = fat.AdamWScheduleFree(ps, lr=0.01, warmup_steps=2)
    for _ in range(4):
        for p, g in zip(ps, _grads(rng)):
            p.grad = torch.tensor(g)
        opt.step()
    opt.eval()
    saved = copy.deepcopy(opt.state_dict())
    twin = [p.detach().clone() for p in ps]
    resumed = fat.AdamWScheduleFree(twin)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["train_mode"] is False
    with pytest.raises(RuntimeError, match="eval mode"):
        resumed.step()
    for o in (opt, resumed):
        o.train()
    for _ in range(4):
        gs = _grads(rng)
        for p, q, g in zip(ps, twin, gs):
            p.grad = torch.tensor(g)
            q.grad = torch.tensor(g)
        opt.step()
        resumed.step()
    for a, b in zip(ps, twin):
        assert a.numpy().tobytes() == b.numpy().tobytes()


# ------------------------------------------------------------------ front ends


def _bits(tensor):
    """The bytes of a tensor (bfloat16 included)."""
    torch = pytest.importorskip("torch")

    if tensor.numel() == 0:
        return b""
    return tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("cls_name", ["AdamWScheduleFree", "RAdamScheduleFree"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_torch_front_end_equals_numpy_front_end(dtype, cls_name):
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(12)
    ps = [p.astype(np_dtype) for p in _params(13, np.float32)]
    tensors = [torch.from_numpy(p.view(np.int16).copy()).view(torch.bfloat16)
               if dtype == "bfloat16" else torch.tensor(p) for p in ps]  # fmt: skip
    options = {"lr": 0.02, "weight_decay": 0.01, "r": 0.2, "betas": (0.9, 0.95)}
    if cls_name == "AdamWScheduleFree":
        options["warmup_steps"] = 3
    opt_np = getattr(fa, cls_name)(ps, **options)
    opt_t = getattr(fat, cls_name)(tensors, **options)
    opt_t.train()
    for t in range(15):
        gs = [g.astype(np_dtype) for g in _grads(rng)]
        opt_np.step(gs)
        for q, g in zip(tensors, gs):
            q.grad = (torch.from_numpy(g.view(np.int16).copy()).view(torch.bfloat16)
                      if dtype == "bfloat16" else torch.tensor(g))  # fmt: skip
        opt_t.step()
        if t in (4, 10):
            opt_np.eval()
            opt_t.eval()
            for p, q in zip(ps, tensors):
                assert p.tobytes() == _bits(q)
            opt_np.train()
            opt_t.train()
    for p, q in zip(ps, tensors):
        assert p.tobytes() == _bits(q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_equals_class(backend):
    rng = np.random.default_rng(14)
    ps = _params(15)
    mine = [p.copy() for p in ps]
    zs = [p.copy() for p in mine]
    vs = [np.zeros_like(p) for p in mine]
    lr_maxs = [np.full((), -1.0) for _ in mine]
    weight_sums = [np.zeros(()) for _ in mine]
    options = {"lr": 0.03, "weight_decay": 0.02, "warmup_steps": 2, "r": 1.0}
    opt = fa.AdamWScheduleFree(ps, backend=backend, **options)
    for t in range(1, 8):
        gs = _grads(rng)
        opt.step(gs)
        assert adamw_schedule_free(mine, gs, zs, vs, lr_maxs, weight_sums, step=t,
                                   beta1=0.9, beta2=0.999, backend=backend, **options)  # fmt: skip
    for a, b, z in zip(ps, mine, zs):
        assert a.tobytes() == b.tobytes()
        assert opt.state[a]["z"].tobytes() == z.tobytes()
    assert float(lr_maxs[0]) == float(opt.state[ps[0]]["lr_max"])


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "key,value,error,match",
    [
        ("warmup_steps", -1, ValueError, "Invalid warmup_steps value: -1"),
        ("warmup_steps", 1.5, TypeError, "Invalid warmup_steps value: 1.5"),
        ("warmup_steps", True, TypeError, "Invalid warmup_steps value: True"),
        ("r", -0.5, ValueError, "Invalid r value: -0.5"),
        ("r", float("nan"), ValueError, "Invalid r value: nan"),
        ("r", "1", TypeError, "Invalid r value: '1'"),
        ("weight_lr_power", -1.0, ValueError, "Invalid weight_lr_power value: -1.0"),
        ("weight_lr_power", float("inf"), ValueError, "Invalid weight_lr_power value: inf"),
        ("silent_sgd_phase", 1, TypeError, "silent_sgd_phase must be a bool, got 1"),
    ],
)
def test_bad_hyperparameters_refused_by_name(key, value, error, match):
    cls = fa.RAdamScheduleFree if key == "silent_sgd_phase" else fa.AdamWScheduleFree
    with pytest.raises(error, match=match):
        cls([np.zeros(3)], **{key: value})
    ps = _params(16)
    opt = cls(ps)
    rng = np.random.default_rng(0)
    opt.step(_grads(rng))
    before = snapshot(opt)
    opt.param_groups[0][key] = value
    with pytest.raises(error, match=match):
        opt.step(_grads(rng))
    assert_unchanged(opt, before)


def test_bad_train_mode_entry():
    with pytest.raises(TypeError, match="train_mode must be a bool"):
        fa.AdamWScheduleFree([{"params": [np.zeros(2)], "train_mode": "yes"}])


def test_torch_bad_hyperparameters_refused_by_name():
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")

    with pytest.raises(ValueError, match="Invalid warmup_steps value: -2"):
        fat.AdamWScheduleFree([torch.zeros(2)], warmup_steps=-2)
    with pytest.raises(ValueError, match="Invalid r value: -1"):
        fat.AdamWScheduleFree([torch.zeros(2)], r=-1.0)


def test_torch_step_that_raises_leaves_a_joining_param_without_state():
    """A param whose first gradient arrives late gets its state with the step: when the
    step raises (a NaN gradient elsewhere), nothing has changed, that state included."""
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")

    ps = [torch.ones(4), torch.ones(3)]
    opt = fat.AdamWScheduleFree(ps, lr=0.1)
    for _ in range(3):
        ps[0].grad = torch.ones(4)
        ps[1].grad = None
        opt.step()
    before = [p.clone() for p in ps]
    z_before = opt.state[ps[0]]["z"].clone()
    ps[0].grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    ps[1].grad = torch.ones(3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    assert not opt.state.get(ps[1])
    assert torch.equal(opt.state[ps[0]]["z"], z_before)
    assert int(opt.state[ps[0]]["step"]) == 3
    for p, b in zip(ps, before):
        assert torch.equal(p, b)
    ps[0].grad = torch.ones(4)
    opt.step()  # now it joins at the group's step
    assert int(opt.state[ps[1]]["step"]) == int(opt.state[ps[0]]["step"]) == 4
