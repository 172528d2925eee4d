"""Fuzzing the public API: random valid and invalid inputs, and random sequences of use.

Every call either succeeds and matches the NumPy reference bit for bit, or raises
TypeError / ValueError / FloatingPointError with every array unchanged -- and the compiled
and reference backends always take the same branch. Between steps a run may save and load
its state dict, pickle itself, remove a param group, replace a state array, switch AMSGrad
or step from another thread or a forked child (issue #10's classes). The default run is
short; ``pytest -m soak`` runs thousands of examples.
"""

import copy
import math
import os
import pickle
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fusedadam as fa
from conftest import COMPILED

pytestmark = pytest.mark.skipif(not COMPILED, reason="extension not built")

EXPECTED = (TypeError, ValueError, FloatingPointError)
DTYPES = ["float32", "float64", "float16", "int32", "complex64", ">f4", ">f8"]
VALUES = ["normal", "huge", "denormal", "nonfinite", "zeros"]
# Valid choices repeat so that most examples reach step() with one thing wrong at most.
PARAM_KINDS = ["plain"] * 40 + ["memmap"] * 4 + ["readonly", "strided", "fortran", "alias_previous"]
GRAD_KINDS = (
    ["match"] * 14
    + ["strided", "readonly", "memmap"] * 2
    + [
        "wrong_dtype",
        "wrong_shape",
        "alias_param",
        "alias_other",
        "list",
        "byteswap",
        "matrix",
        "masked",
    ]
)
# What happens between two steps; most of the time nothing.
ACTIONS = ["none"] * 12 + [
    "save_load",
    "pickle",
    "remove_group",
    "replace_state",
    "toggle_amsgrad",
    "numpy_scalar_lr",
    "thread",
    "fork",
]
HYPER = {
    "lr": [1e-3] * 40
    + [0.0, 0.5, "schedule", "schedule", -1.0, math.nan, math.inf, "bad_schedule"],
    "betas": [(0.9, 0.999)] * 40 + [(0.0, 0.0), (0.99, 0.9999), (1.0, 0.9), (0.9, math.nan)],
    "eps": [1e-8] * 40 + [1e-30, 0.0, math.nan, -1.0],
    "weight_decay": [0.0] * 20 + [0.1] * 20 + [-1.0, math.inf],
    "amsgrad": [False, True],
    "maximize": [False, True],
    "nonfinite": ["error", "skip", "ignore"],
    "num_threads": [None, 1, 2, -1] * 10 + [0],
}


def _values(rng, kind, size, dtype):
    x = rng.standard_normal(size)
    if kind == "huge":
        x *= 1e38 if dtype == "float32" else 1e300
    elif kind == "denormal":
        x *= 1e-40 if dtype == "float32" else 1e-310
    elif kind == "nonfinite" and size:
        x[rng.integers(0, size, 2)] = [np.nan, np.inf]
    elif kind == "zeros":
        x[:] = 0
    return x


def _array(rng, kind, shape, dtype, values, tmpdir, previous):
    size = int(np.prod(shape))
    if kind == "alias_previous" and previous is not None:
        return previous
    data = _values(rng, values, size, dtype)
    with np.errstate(all="ignore"):
        a = data.astype(dtype).reshape(shape)
    if kind == "readonly":
        a.flags.writeable = False
    elif kind == "strided":
        big = np.zeros(shape[:-1] + (shape[-1] * 2,), dtype) if shape else np.zeros(2, dtype)
        if shape:
            big[..., ::2] = a
            a = big[..., ::2]
    elif kind == "fortran":
        a = np.asfortranarray(a)
    elif kind == "memmap" and size:
        m = np.memmap(f"{tmpdir}/{rng.integers(1 << 40)}.dat", dtype=dtype, mode="w+", shape=shape)
        m[...] = a
        a = m
    return a


def build(spec, tmpdir):
    """Fresh params and grads from a spec (called once per backend: same arrays)."""
    rng = np.random.default_rng(spec["seed"])
    params, grads = [], []
    for shape, kind in spec["params"]:
        params.append(
            _array(
                rng,
                kind,
                shape,
                spec["dtype"],
                spec["values"],
                tmpdir,
                params[-1] if params else None,
            )
        )
    n_grads = max(0, len(params) + spec["n_grads_delta"])
    for k, kind in enumerate((spec["grads"] * 2)[:n_grads]):
        p = params[k % len(params)]
        shape, dtype = p.shape, p.dtype
        if kind == "wrong_dtype":
            dtype = np.float64 if dtype == np.float32 else np.float32
        elif kind == "wrong_shape":
            shape = shape + (1,)
        if kind == "alias_param":
            g = p
        elif kind == "alias_other":
            g = params[(k + 1) % len(params)]
        elif kind == "list":
            g = np.asarray(p).tolist()
        elif kind in ("byteswap", "matrix", "masked"):
            g = _array(rng, "plain", shape, dtype, spec["grad_values"], tmpdir, None)
            if kind == "byteswap":
                g = g.astype(g.dtype.newbyteorder())
            elif kind == "matrix" and g.ndim == 2:
                g = g.view(np.matrix)
            elif kind == "masked":
                g = np.ma.masked_less(g, 0)
        else:
            g = _array(
                rng,
                {"match": "plain"}.get(kind, kind),
                shape,
                dtype,
                spec["grad_values"],
                tmpdir,
                None,
            )
        grads.append(g)
    return params, grads


def _schedule(t):
    return 0.01 / t


def _bad_schedule(t):
    return -1.0 if t == 2 else 0.01


def options(spec):
    """The constructor's keyword arguments: the spec's hyperparameters that the class has,
    as NumPy scalars when the spec says so (scalars are formed in double on every path)."""
    cls = getattr(fa, spec["cls"])
    accepted = cls.__init__.__code__.co_varnames
    opts = {k: v for k, v in spec["hyper"].items() if k in accepted}
    if opts["lr"] == "schedule":
        opts["lr"] = _schedule
    elif opts["lr"] == "bad_schedule":
        opts["lr"] = _bad_schedule
    if spec["numpy_scalars"]:
        for key in ("lr", "eps", "weight_decay"):
            if key in opts and isinstance(opts[key], float):
                opts[key] = np.float32(opts[key])
        opts["betas"] = tuple(np.float32(b) for b in opts["betas"])
    return opts


spec_strategy = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "dtype": st.sampled_from(DTYPES[:2] * 40 + DTYPES[2:]),
        "values": st.sampled_from(VALUES),
        "grad_values": st.sampled_from(["normal"] * 4 + VALUES),
        "params": st.lists(
            st.tuples(
                st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
                st.sampled_from(PARAM_KINDS),
            ),
            min_size=1,
            max_size=3,
        ),
        "grads": st.lists(st.sampled_from(GRAD_KINDS), min_size=3, max_size=3),
        "n_grads_delta": st.sampled_from([0] * 12 + [-1, 1]),
        "hyper": st.fixed_dictionaries({k: st.sampled_from(v) for k, v in HYPER.items()}),
        "steps": st.integers(1, 4),
        "cls": st.sampled_from(["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "AdaBelief", "Lion"]),
        "groups": st.sampled_from([1, 1, 2]),
        "numpy_scalars": st.sampled_from([False] * 3 + [True]),
        "actions": st.lists(st.sampled_from(ACTIONS), min_size=4, max_size=4),
    }
)


def _in_a_forked_child(opt, grads):
    """Step in a forked child; the child's outcome, as bytes the parent can compare."""
    if not hasattr(os, "fork"):
        return b"no fork"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            try:
                opt.step(grads)
                out = b"".join(
                    np.ascontiguousarray(p).tobytes() for g in opt.param_groups for p in g["params"]
                )
            except EXPECTED as exc:
                out = type(exc).__name__.encode()
            os.write(write, out[: 1 << 15])
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def act(action, opt, params, grads):
    """Do ``action`` between steps; return the (possibly new) optimizer, params and grads."""
    if action == "save_load":
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    elif action == "pickle":
        opt = pickle.loads(pickle.dumps(opt))
        fresh = [p for g in opt.param_groups for p in g["params"]]
        grads = (
            [g if not any(g is p for p in params) else fresh[params.index(g)] for g in grads]
            if isinstance(grads, list)
            else grads
        )
        params = fresh
    elif action == "remove_group" and len(opt.param_groups) > 1:
        removed = opt.param_groups.pop(0)
        n = len(removed["params"])
        params = params[n:]
        grads = grads[n:] if isinstance(grads, list) else grads
    elif action == "replace_state":
        for p in list(opt.state):
            st = opt.state[p]
            for name in [k for k in st if k != "step"]:
                if isinstance(st[name], np.ndarray):
                    st[name] = st[name].copy()
    elif action == "toggle_amsgrad" and "amsgrad" in opt.param_groups[-1]:
        opt.param_groups[-1]["amsgrad"] = not opt.param_groups[-1]["amsgrad"]
    elif action == "numpy_scalar_lr":
        opt.param_groups[-1]["lr"] = np.float32(0.003)
    return opt, params, grads


def attempt(spec, backend, tmpdir):
    """Construct, then step and act; return the outcomes and the final arrays."""
    params, grads = build(spec, tmpdir)
    opts = options(spec)
    arg = (
        params
        if spec["groups"] == 1 or len(params) < 2
        else [{"params": params[:1]}, {"params": params[1:]}]
    )
    try:
        opt = getattr(fa, spec["cls"])(arg, backend=backend, **opts)
    except EXPECTED as exc:
        return ("construct", type(exc)), None
    outcome = []
    for t in range(spec["steps"]):
        before = [np.array(p, copy=True) for p in params]
        state_before = {
            i: {k: np.array(v, copy=True) for k, v in st.items()}
            for i, st in opt.state_dict()["state"].items()
        }
        action = spec["actions"][t]
        step_grads = grads if len(grads) != 1 else grads[0]
        try:
            if action == "thread":
                errors = []
                worker = threading.Thread(target=_step_or_keep, args=(opt, step_grads, errors))
                worker.start()
                worker.join(60)
                if errors:
                    raise errors[0]
            elif action == "fork":
                outcome.append(_in_a_forked_child(opt, step_grads))
            opt.step(step_grads)
            outcome.append("ok")
        except EXPECTED as exc:
            outcome.append(type(exc))
            for a, b in zip(params, before):
                np.testing.assert_array_equal(a, b)
            after = opt.state_dict()["state"]
            assert after.keys() == state_before.keys()
            for i in after:
                for k, v in after[i].items():
                    np.testing.assert_array_equal(v, state_before[i][k])
        try:
            opt, params, grads = act(action, opt, params, grads)
            outcome.append(action)
        except EXPECTED as exc:
            outcome.append((action, type(exc)))
    return tuple(outcome), (params, opt.state_dict(), opt.skipped_steps)


def _step_or_keep(opt, grads, errors):
    try:
        opt.step(grads)
    except EXPECTED as exc:
        errors.append(exc)


def check_spec(spec):
    with tempfile.TemporaryDirectory() as tmpdir:
        compiled, c_state = attempt(spec, "compiled", tmpdir)
        reference, r_state = attempt(spec, "numpy", tmpdir)
    assert compiled == reference
    event(f"outcome: {compiled[0] if compiled[0] == 'construct' else compiled}")
    if c_state is None:
        return
    (c_params, c_sd, c_skipped), (r_params, r_sd, r_skipped) = c_state, r_state
    assert c_skipped == r_skipped
    for a, b in zip(c_params, r_params):
        np.testing.assert_array_equal(a, b)
    assert c_sd["state"].keys() == r_sd["state"].keys()
    for i in c_sd["state"]:
        for k, v in c_sd["state"][i].items():
            np.testing.assert_array_equal(v, r_sd["state"][i][k])


_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much]


@settings(max_examples=300, deadline=None, suppress_health_check=_HEALTH)
@given(spec=spec_strategy)
def test_public_api_fuzz(spec):
    check_spec(spec)


@pytest.mark.soak
@settings(max_examples=4000, deadline=None, suppress_health_check=_HEALTH)
@given(spec=spec_strategy)
def test_public_api_fuzz_soak(spec):
    check_spec(spec)
