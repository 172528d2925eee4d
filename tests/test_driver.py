"""The step engine: one owner per rule, state identity, plans rebuilt through validation.

- the per-step scalars of the compiled rule (_scalars.h) and of its NumPy twin
  (reference.step_scalars) agree field by field, for every algorithm;
- the Python twin engine (engine/_python.py, used where the extension is not built) takes
  the same decisions as the compiled engine, step by step;
- the state the user sees is the state the step updates: a replaced state array of the
  right dtype and shape is used from the next step on; one that does not fit raises at the
  next step with nothing modified. Every state name of every algorithm, both backends, on
  the steady-state (fast) path and on the path that plans again (checked).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms, reference
from fusedadam.engine import _python
from conftest import BACKENDS, VARIANTS, assert_unchanged, requires_compiled, snapshot

CLASSES = {
    "adam": fa.Adam,
    "adamw": fa.AdamW,
    "amsgrad": fa.Adam,
    "adamax": fa.Adamax,
    "nadam": fa.NAdam,
    "radam": fa.RAdam,
    "adabelief": fa.AdaBelief,
    "lion": fa.Lion,
}


def make(name, backend, **options):
    params = [np.linspace(-1, 1, 37, dtype=np.float32), np.ones((3, 4), np.float64)]
    if name == "amsgrad":
        options["amsgrad"] = True
    return CLASSES[name](params, lr=0.01, backend=backend, **options), params


def grads(params, t=0):
    return [np.cos(p * (t + 1)).astype(p.dtype) for p in params]


# ------------------------------------------------------------------ scalars: one rule, twins


@requires_compiled
@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(_algorithms.ALGORITHMS)),
    t=st.integers(1, 10**7),
    lr=st.floats(0, 10),
    beta1=st.floats(0, 0.9999),
    beta2=st.floats(0, 0.9999),
    eps=st.floats(1e-20, 1),
    wd=st.sampled_from([0.0, 0.1]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    beta1_decay=st.floats(0.5, 1),
    momentum_decay=st.floats(0, 0.1),
    mu_product=st.floats(0.01, 1),
    tensor_flags=st.tuples(*[st.booleans()] * 5),
    max_lr=st.floats(1e-4, 1),
)
def test_compiled_and_python_scalar_rules_agree_field_by_field(
    algorithm, t, lr, beta1, beta2, eps, wd, flags, beta1_decay, momentum_decay, mu_product,
    tensor_flags, max_lr,
):  # fmt: skip
    from fusedadam import _kernels

    amsgrad, decoupled, maximize, bias_correction = flags
    hyper = {
        "algorithm": algorithm,
        "amsgrad": amsgrad,
        "decoupled": decoupled,
        "maximize": maximize,
        "bias_correction": bias_correction,
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps,
        "eps_root": eps / 3,
        "weight_decay": wd,
        "beta1_decay": beta1_decay,
        "momentum_decay": momentum_decay,
        # ADOPT's clip and Adam-atan2's a, b, varied with the values drawn above
        "adopt_clip": amsgrad,
        "clip_exp": 10 * momentum_decay,
        "atan2_a": beta1_decay,
        "atan2_b": 1 / eps,
    }
    names = ("cautious", "grad_averaging", "trust_clip", "always_adapt", "decouple_lr")
    hyper.update(zip(names, tensor_flags), max_lr=max_lr)
    kind_c, scalars_c, mu_c = _kernels.step_scalars(hyper, t, lr, mu_product)
    kind_p, scalars_p, mu_p = reference.step_scalars(hyper, t, lr, mu_product)
    assert kind_c == kind_p
    assert scalars_c.keys() == scalars_p.keys() == set(_kernels.SCALAR_FIELDS)
    for field in scalars_c:  # bit for bit, NaN included
        c_bits, p_bits = (np.float64(x[field]).tobytes() for x in (scalars_c, scalars_p))
        assert c_bits == p_bits, field
    assert np.float64(mu_c).tobytes() == np.float64(mu_p).tobytes()


@requires_compiled
@pytest.mark.parametrize("name", sorted(_algorithms.DEFAULTS))
def test_hyper_dict_names_every_field_the_scalar_rule_reads(name):
    """The extension fills fa_hyper by name from hyper_dict (a field it does not find is 0):
    the dict of every class holds exactly the fields _scalars.h lists, and the struct the
    extension fills gives the same scalars as the dict itself does in the twin."""
    from fusedadam import _kernels

    algorithm, defaults = _algorithms.DEFAULTS[name]
    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS[algorithm], defaults)
    assert set(hyper) == {"algorithm", *_kernels.HYPER_FIELDS}
    assert len(_kernels.HYPER_FIELDS) == len(set(_kernels.HYPER_FIELDS))
    assert len(_kernels.SCALAR_FIELDS) == len(set(_kernels.SCALAR_FIELDS))


def test_numpy_scalar_hyperparameters_form_scalars_in_double():
    """np.float32 hyperparameters: the scalars are the same as with the Python floats they
    equal (formed in double on every path), so every backend gives the same bits."""
    results = []
    for backend in BACKENDS:
        for kind in (float, np.float32):
            p = np.linspace(-1, 1, 50, dtype=np.float32)
            opt = fa.NAdam(
                p,
                lr=kind(0.01),
                betas=(kind(0.9), kind(0.99)),
                eps=kind(1e-7),
                weight_decay=kind(0.1),
                momentum_decay=kind(0.004),
                backend=backend,
            )
            for t in range(5):
                opt.step(np.cos(p * t).astype(np.float32))
            results.append(p)
    expected = [np.float32(x) for x in (0.01, 0.9, 0.99, 1e-7, 0.1, 0.004)]
    assert [float(x) for x in expected] != [0.01, 0.9, 0.99, 1e-7, 0.1, 0.004]
    # float and np.float32 hyperparameters differ in value, so compare like with like
    for a, b in zip(results[1::2], results[3::2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(results[0::2], results[2::2]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ the two drivers agree


@requires_compiled
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_python_twin_driver_takes_the_same_decisions(variant):
    """Field by field, step by step: loop kind, every scalar, step counts, skip decisions
    and errors of engine._python.Engine equal those of the compiled engine."""
    cls, options = VARIANTS[variant]
    opts, params = [], []
    for twin in (False, True):
        ps = [np.linspace(-1, 1, 9, dtype=np.float32), np.ones(3, np.float64)]
        opt = cls(
            [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}],
            lr=0.01,
            backend="numpy",
            nonfinite="skip",
            **{k: v for k, v in options.items() if k != "lr"},
        )
        if twin:
            opt._engine = _python.Engine()
            opt.state._on_change = opt._engine.invalidate
        opts.append(opt)
        params.append(ps)
    for t in range(9):
        bad = t == 4
        for opt, ps in zip(opts, params):
            gs = grads(ps, t)
            if bad:
                gs[1][0] = np.nan
            opt.step(gs)
        assert opts[0].skipped_steps == opts[1].skipped_steps == (1 if t >= 4 else 0)
        for plan_c, plan_p in zip(opts[0]._engine.plans, opts[1]._engine.plans):
            kind_c, scalars_c, _ = plan_c.last_step()
            kind_p, scalars_p, _ = plan_p.last_step()
            assert kind_c == kind_p
            assert scalars_c == scalars_p
        for a, b in zip(*params):
            np.testing.assert_array_equal(a, b)
        sd = [o.state_dict()["state"] for o in opts]
        assert [int(e["step"]) for e in sd[0].values()] == [int(e["step"]) for e in sd[1].values()]
    for opt, ps in zip(opts, params):
        opt.param_groups[0]["nonfinite"] = "error"
        gs = grads(ps)
        gs[0][3] = np.inf
        with pytest.raises(FloatingPointError, match=r"grads\[0\] has 1 non-finite value"):
            opt.step(gs)


# ------------------------------------------------------------------ state identity

STATE_NAMES = [
    (name, state)
    for name in CLASSES
    for state in _algorithms.ALGORITHMS[
        {"adamw": "adam", "amsgrad": "adam"}.get(name, name)
    ].slot_names({"amsgrad": name == "amsgrad"})
]


def _step_twice(opt, params):
    for t in range(2):
        opt.step(grads(params, t))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["fast", "checked"])
@pytest.mark.parametrize("name,state", STATE_NAMES)
def test_replaced_state_array_is_used_from_the_next_step(name, state, backend, path):
    opt, params = make(name, backend)
    twin, twin_params = make(name, backend)
    _step_twice(opt, params)
    _step_twice(twin, twin_params)
    for k, p in enumerate(params):
        fresh = np.full_like(p, 0.25)
        opt.state[p][state] = fresh  # a reset, as a torch user writes it
        twin.state[twin_params[k]][state][...] = 0.25  # the same values, in place
    if path == "checked":
        opt.param_groups[0]["lr"] = 0.01  # a new object: hyperparameters re-checked
        opt._engine.invalidate()  # and every group planned again
    for t in range(3):
        opt.step(grads(params, t))
        twin.step(grads(twin_params, t))
    for k, p in enumerate(params):
        assert opt.state[p][state] is opt.state_dict()["state"][k][state]
        np.testing.assert_array_equal(opt.state[p][state], twin.state[twin_params[k]][state])
        np.testing.assert_array_equal(p, twin_params[k])
    if state != "max_exp_avg_sq":  # a running max may stay at 0.25; the params say it was used
        assert not np.all(opt.state[params[0]][state] == 0.25)  # updated, not ignored


BAD_REPLACEMENTS = {
    "dtype": (
        TypeError,
        r"{state} of params\[0\] has dtype float64",
        lambda p, st: p.astype(np.float64),
    ),
    "shape": (
        ValueError,
        r"{state} of params\[0\] has shape \(36,\)",
        lambda p, st: np.zeros(36, p.dtype),
    ),
    "read-only": (
        ValueError,
        r"{state} of params\[0\] is read-only",
        lambda p, st: (
            np.require(np.zeros_like(p), requirements="C").view() if False else _read_only(p)
        ),
    ),
    "not contiguous": (
        ValueError,
        r"{state} of params\[0\] is not C-contiguous",
        lambda p, st: np.zeros(74, p.dtype)[::2],
    ),
    "byte order": (
        TypeError,
        r"{state} of params\[0\] has non-native byte order",
        lambda p, st: np.zeros_like(p).astype(p.dtype.newbyteorder()),
    ),
    "aliases its param": (ValueError, r"share memory", lambda p, st: p),
    "list": (TypeError, r"{state} of params\[0\] must be a numpy.ndarray", lambda p, st: list(p)),
    "deleted": (ValueError, r"{state} of params\[0\] is missing", None),
}


def _read_only(p):
    a = np.zeros_like(p)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["fast", "checked"])
@pytest.mark.parametrize("case", sorted(BAD_REPLACEMENTS))
@pytest.mark.parametrize("name,state", STATE_NAMES)
def test_unfit_state_array_raises_at_next_step_and_changes_nothing(
    name, state, case, backend, path
):
    exc, match, make_bad = BAD_REPLACEMENTS[case]
    opt, params = make(name, backend)
    _step_twice(opt, params)
    good = opt.state[params[0]][state]
    if make_bad is None:
        del opt.state[params[0]][state]
    else:
        opt.state[params[0]][state] = make_bad(params[0], opt.state[params[0]])
    if path == "checked":
        opt._engine.invalidate()
    before = snapshot(opt)
    with pytest.raises(exc, match=match.format(state=state)):
        opt.step(grads(params))
    assert_unchanged(opt, before)
    opt.state[params[0]][state] = good  # restored: the optimizer goes on
    opt.step(grads(params))
    assert int(opt.state[params[0]]["step"]) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_counter_replaced_by_a_number_is_used(backend):
    opt, params = make("nadam", backend)
    twin, twin_params = make("nadam", backend)
    _step_twice(opt, params)
    for _ in range(5):
        twin.step(grads(twin_params))  # twin reaches step 7 the long way
    _step_twice(opt, params)
    for _ in range(3):
        opt.step(grads(opt.param_groups[0]["params"]))
    # a counter set by hand: every param of the group at the same step, as a plain int
    for p in params:
        opt.state[p]["step"] = 10
    opt.step(grads(params))
    assert int(opt.state[params[0]]["step"]) == 11
    assert isinstance(opt.state[params[0]]["step"], np.ndarray)
    for p in params[:1]:
        opt.state[p]["step"] = 3  # now the group disagrees with itself
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"different steps \[3, 11\]"):
        opt.step(grads(params))
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reordered_group_keys_keep_or_change_the_hyperparameters_they_hold(backend):
    """The steady check of the hyperparameters walks the group dict in the validated key
    order first; a group whose keys were reordered (or re-created as other string objects)
    is checked key by key: the same values step as before, a changed one is used."""
    opt, params = make("adam", backend)
    twin, twin_params = make("adam", backend)
    for t in range(2):
        opt.step(grads(params, t))
        twin.step(grads(twin_params, t))
    group = opt.param_groups[0]
    group["lr"] = group.pop("lr")  # the same object, now the dict's last key
    group["".join(["e", "ps"])] = group.pop("eps")  # an equal key, another str object
    opt.step(grads(params, 2))
    twin.step(grads(twin_params, 2))
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p, q)
    group["betas"] = group.pop("betas")
    group["eps"] = 1e-3  # a new value in a reordered group
    twin.param_groups[0]["eps"] = 1e-3
    opt.step(grads(params, 3))
    twin.step(grads(twin_params, 3))
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p, q)


def test_new_state_is_attached_only_when_a_step_commits():
    """A failed first step (non-finite gradient) leaves no state behind, and the next good
    step's state is the one opt.state and state_dict() show (issue 10, item 1)."""
    for backend in BACKENDS:
        p = np.ones(5)
        opt = fa.Adam(p, backend=backend)
        with pytest.raises(FloatingPointError):
            opt.step(np.array([1.0, np.nan, 1.0, 1.0, 1.0]))
        assert p not in opt.state and opt.state_dict()["state"] == {}
        for _ in range(4):
            opt.step(np.ones(5))
        assert int(opt.state_dict()["state"][0]["step"]) == 4
        m = opt.state[p]["exp_avg"]
        opt.step(np.ones(5))
        assert opt.state[p]["exp_avg"] is m and not np.all(m == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_amsgrad_toggle_keeps_its_state_and_resumes(backend):
    """amsgrad on -> off -> on keeps max_exp_avg_sq (never silently dropped or reset), in
    the optimizer and through state_dict/load_state_dict (issue 10, item 10)."""

    def run(split):
        p = np.linspace(-1, 1, 11)
        opt = fa.Adam(p, lr=0.05, amsgrad=True, backend=backend)
        for t in range(9):
            if t == 3:
                opt.param_groups[0]["amsgrad"] = False
            if t == 6:
                opt.param_groups[0]["amsgrad"] = True
            if split and t == 5:
                sd = opt.state_dict()
                assert "max_exp_avg_sq" in sd["state"][0]
                q = p.copy()
                opt = fa.Adam(q, lr=0.05, amsgrad=False, backend=backend)
                opt.load_state_dict(sd)
                p = q
            opt.step(np.sin(p * (t + 3)))
        return p

    np.testing.assert_array_equal(run(False), run(True))
