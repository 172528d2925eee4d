"""Checkpoints: state_dict round trips resume bit-identically; bad ones change nothing."""

import pickle

import numpy as np
import pytest

import fusedadam as fa
from conftest import COMPILED, assert_unchanged, snapshot

BACKENDS = ["numpy"] + (["compiled"] if COMPILED else [])
OPTIMIZERS = {
    "adam": lambda ps, b: fa.Adam(ps, lr=1e-2, backend=b),
    "amsgrad_groups": lambda ps, b: fa.Adam(
        [{"params": ps[:1], "amsgrad": True}, {"params": ps[1:], "lr": 0.05}],
        lr=1e-2,
        weight_decay=0.01,
        backend=b,
    ),
    "adamw": lambda ps, b: fa.AdamW(ps, lr=1e-2, backend=b),
    "adamax": lambda ps, b: fa.Adamax(ps, backend=b),
    "nadam": lambda ps, b: fa.NAdam(ps, weight_decay=0.01, backend=b),
    "radam": lambda ps, b: fa.RAdam(ps, lr=1e-2, backend=b),
    "adabelief": lambda ps, b: fa.AdaBelief(ps, lr=1e-2, backend=b),
    "lion": lambda ps, b: fa.Lion(ps, lr=1e-3, backend=b),
}


def make_params(dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(dtype) for s in [(10,), (3, 7), (0,), (1,)]]


def grads_for(params, t):
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def through_pickle(sd, tmp_path):
    return pickle.loads(pickle.dumps(sd))


def through_npz(sd, tmp_path):
    path = tmp_path / "ckpt.npz"
    np.savez(path, **fa.flatten_state_dict(sd))
    with np.load(path) as f:
        return fa.unflatten_state_dict(f)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("transport", [through_pickle, through_npz])
def test_resume_is_bit_identical(backend, name, transport, tmp_path):
    n_steps, k = 12, 5
    straight = make_params()
    opt = OPTIMIZERS[name](straight, backend)
    for t in range(n_steps):
        opt.step(grads_for(straight, t))

    resumed = make_params()
    opt = OPTIMIZERS[name](resumed, backend)
    for t in range(k):
        opt.step(grads_for(resumed, t))
    saved = transport(opt.state_dict(), tmp_path)
    saved_params = [p.copy() for p in resumed]
    del opt

    fresh = [p.copy() for p in saved_params]
    opt = OPTIMIZERS[name](fresh, backend)
    opt.load_state_dict(saved)
    for t in range(k, n_steps):
        opt.step(grads_for(fresh, t))
    for a, b in zip(fresh, straight):
        np.testing.assert_array_equal(a, b)


def test_state_dict_layout():
    params = make_params()
    opt = OPTIMIZERS["amsgrad_groups"](params, "auto")
    opt.step(grads_for(params, 0))
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.05
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert set(sd["state"][1]) == {"step", "exp_avg", "exp_avg_sq"}
    # step is the optimizer's own 0-d int64 counter (live, like the arrays), one per group
    assert all(
        st["step"] == 1 and st["step"].dtype == np.int64 and st["step"].shape == ()
        for st in sd["state"].values()
    )
    assert sd["state"][1]["step"] is sd["state"][3]["step"]
    opt.step(grads_for(params, 1))
    assert sd["state"][0]["step"] == 2  # consistently live: moments and step move together


def test_load_copies_the_arrays():
    params = make_params()
    opt = fa.Adam(params)
    opt.step(grads_for(params, 0))
    sd = opt.state_dict()
    other = fa.Adam([p.copy() for p in params])
    other.load_state_dict(sd)
    sd["state"][0]["exp_avg"][:] = 123.0
    assert not np.any(other.state_dict()["state"][0]["exp_avg"] == 123.0)


def test_hyperparameters_are_restored():
    params = make_params()
    opt = fa.Adam(params, lr=0.5, betas=(0.8, 0.9))
    opt.step(grads_for(params, 0))
    other = fa.Adam([p.copy() for p in params])
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == 0.5 and other.param_groups[0]["betas"] == (0.8, 0.9)


def test_callable_lr_cannot_go_to_npz():
    params = make_params()
    opt = fa.Adam(params, lr=lambda t: 0.1)
    opt.step(grads_for(params, 0))
    with pytest.raises(TypeError, match="callable"):
        fa.flatten_state_dict(opt.state_dict())


def _corrupt(name):
    def edit(sd):
        sd = pickle.loads(pickle.dumps(sd))
        if name == "group count":
            sd["param_groups"].append(dict(sd["param_groups"][0]))
        elif name == "group size":
            sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
        elif name == "shape":
            sd["state"][1]["exp_avg"] = np.zeros((7, 3), np.float32)
        elif name == "dtype":
            sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].astype(np.float64)
        elif name == "missing key":
            del sd["state"][0]["exp_avg_sq"]
        elif name == "negative step":
            for st in sd["state"].values():
                st["step"] = -1
        elif name == "float step":  # 1.0 is a whole number, as torch keeps step
            sd["state"][0]["step"] = 1.5
        elif name == "uneven steps":
            sd["state"][0]["step"] = 7
        elif name == "not an array":
            sd["state"][0]["exp_avg"] = [0.0] * 10
        elif name == "bad hyperparameter":
            sd["param_groups"][0]["eps"] = -1.0
        elif name == "extra top-level key":
            sd["extra"] = 1
        return sd

    return edit


BAD = {
    "group count": (ValueError, "parameter groups"),
    "group size": (ValueError, "params"),
    "shape": (ValueError, "shape"),
    "dtype": (TypeError, "dtype"),
    "missing key": (ValueError, "missing"),
    "negative step": (ValueError, ">= 0"),
    "float step": (TypeError, "step must be a whole number"),
    "uneven steps": (ValueError, "different steps"),
    "not an array": (TypeError, "ndarray"),
    "bad hyperparameter": (ValueError, "Invalid epsilon"),
    "extra top-level key": (ValueError, "exactly"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_state_dict_raises_and_changes_nothing(case):
    exc, match = BAD[case]
    params = make_params()
    opt = fa.Adam(params, lr=1e-2)
    for t in range(3):
        opt.step(grads_for(params, t))
    bad = _corrupt(case)(opt.state_dict())
    target_params = make_params()
    target = fa.Adam(target_params, lr=1e-2)
    target.step(grads_for(target_params, 0))
    before = snapshot(target)
    hyper_before = [dict(g) for g in target.param_groups]
    with pytest.raises(exc, match=match):
        target.load_state_dict(bad)
    assert_unchanged(target, before)
    assert [dict(g) for g in target.param_groups] == hyper_before
    target.step(grads_for(target_params, 1))


def test_hyperparameter_change_takes_effect_next_step():
    a, b = np.zeros(5), np.zeros(5)
    opt_a = fa.Adam(a, lr=0.1)
    opt_b = fa.Adam(b, lr=lambda t: 0.1 if t == 1 else 0.01)
    g = np.ones(5)
    opt_a.step(g)
    opt_b.step(g)
    opt_a.param_groups[0]["lr"] = 0.01
    opt_a.step(g)
    opt_b.step(g)
    np.testing.assert_array_equal(a, b)
