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
from fusedadam import _algorithms
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
        if "betas" in opts:  # a class may have none
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
        "cls": st.sampled_from(sorted(_algorithms.DEFAULTS)),  # every class of the registry
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
        before, state_before = _arrays_now(params, opt)
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
                # the thread's step counts: "nothing changed" is judged from here on
                before, state_before = _arrays_now(params, opt)
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


def _arrays_now(params, opt):
    """Copies of the params and of the state dict's arrays: what a raising step must keep."""
    state = {
        i: {k: np.array(v, copy=True) for k, v in st.items()}
        for i, st in opt.state_dict()["state"].items()
    }
    return [np.array(p, copy=True) for p in params], state


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


# ------------------------------------------------------------------ the newer features
# Param dtypes with masters, bfloat16 and 8-bit state, every grad_scale form, clipping,
# non-finite policies mixed across groups, extreme finite magnitudes; between steps,
# checkpoints through every NumPy format (pickle, .npz via flatten_state_dict, a pickled
# optimizer), params converted to another dtype, group edits. Three runs per example: the
# compiled and the NumPy backends with the checkpoints, and the compiled one without
# them: all three bit-identical (a checkpoint round trip is the identity), and every step
# that raises changed nothing.

import io  # noqa: E402

import ml_dtypes  # noqa: E402

FEATURE_DTYPES = ["float32", "float32", "float64", "bfloat16", "bfloat16", "float16"]
FEATURE_SHAPES = [(0,), (1,), (7,), (3, 5), (4099,)]
GRAD_SCALES = (
    [1.0] * 10
    + [0.5, 1024.0, 3.0, 1e-30, "array", "0-d array", "schedule", "callable"]
    + ["negative", "two elements"]
)
MAX_NORMS = [None] * 12 + [1.0, 1e-3, 1e30, -1.0]
MAGNITUDES = ["normal"] * 6 + ["1e30", "subnormal", "nan one", "nan one", "zeros"]
CHECKPOINTS = ["pickle_sd", "npz", "pickle_opt"]
FEATURE_ACTIONS = ["none"] * 8 + CHECKPOINTS * 2 + [
    "to_dtype", "edit_lr", "edit_eps", "edit_nonfinite", "edit_max_norm", "edit_grad_scale",
    "override_scale",
]  # fmt: skip


def _gscale(t):
    return 2.0**t


def _grad_scale(form):
    return {
        "array": np.array([4.0]),
        "0-d array": np.array(0.25),
        "schedule": fa.schedules.Constant(8.0),
        "callable": _gscale,
        "negative": -1.0,
        "two elements": np.array([1.0, 2.0]),
    }.get(form, form)


def _feature_values(rng, magnitude, shape, dtype):
    x = rng.standard_normal(shape)
    if magnitude == "1e30":
        x *= 6e4 if dtype == "float16" else 1e30
    elif magnitude == "subnormal":
        x *= {"float64": 1e-310, "float16": 1e-7}.get(dtype, 1e-40)
    elif magnitude == "nan one" and x.size:
        x.reshape(-1)[rng.integers(x.size)] = np.nan
    elif magnitude == "zeros":
        x[...] = 0
    with np.errstate(all="ignore"):
        return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


group_strategy = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(FEATURE_DTYPES),
        "grad_dtype": st.sampled_from(["param"] * 3 + ["float32", "bfloat16", "float16"]),
        "shapes": st.lists(st.sampled_from(FEATURE_SHAPES), min_size=1, max_size=2),
        "state_dtype": st.sampled_from([None] * 4 + ["bfloat16", "8bit"] * 2),
        "grad_scale": st.sampled_from(GRAD_SCALES),
        "max_grad_norm": st.sampled_from(MAX_NORMS),
        "nonfinite": st.sampled_from(["error", "skip", "ignore"]),
        "magnitude": st.sampled_from(MAGNITUDES),
    }
)
feature_strategy = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "cls": st.sampled_from(sorted(_algorithms.DEFAULTS)),  # every class of the registry
        "amsgrad": st.booleans(),
        "groups": st.lists(group_strategy, min_size=1, max_size=3),
        "steps": st.integers(1, 4),
        "actions": st.lists(st.sampled_from(FEATURE_ACTIONS), min_size=4, max_size=4),
    }
)


def _feature_arrays(spec, t):
    """Params (t = 0) or the gradients of step t, per group."""
    rng = np.random.default_rng([spec["seed"], t])
    out = []
    for g in spec["groups"]:
        dtype = g["dtype"]
        if t and g["grad_dtype"] != "param" and dtype in ("bfloat16", "float16"):
            dtype = g["grad_dtype"]
        magnitude = g["magnitude"] if t else "normal"
        out.append([_feature_values(rng, magnitude, s, dtype) for s in g["shapes"]])
    return out


def _snapshot(opt, params):
    state = {
        i: {k: np.array(v, copy=True) for k, v in entry.items()}
        for i, entry in opt.state_dict()["state"].items()
    }
    return [p.copy() for p in params], state, opt.skipped_steps, opt.last_grad_norm


def _same(a, b):
    """Same dtype, shape and bits; a NaN matches a NaN whatever its sign and payload (which
    NaN propagates where two meet is left open by IEEE 754, and a compiler may commute an
    addition: docs/guarantees.md)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if not np.array_equal(nan_a, nan_b):
            return False
        return a[~nan_a].tobytes() == b[~nan_b].tobytes()
    return a.tobytes() == b.tobytes()


def _same_snapshot(x, y):
    (pa, sa, ka, na), (pb, sb, kb, nb) = x, y
    return (
        len(pa) == len(pb)
        and all(_same(a, b) for a, b in zip(pa, pb))
        and sa.keys() == sb.keys()
        and all(sa[i].keys() == sb[i].keys() for i in sa)
        and all(_same(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
        and ka == kb
        and repr(na) == repr(nb)
    )


def _checkpoint(action, opt, params):
    """A round trip of the state through one format; returns the optimizer to go on with."""
    if action == "pickle_opt":
        new = pickle.loads(pickle.dumps(opt))
        fresh = [p for g in new.param_groups for p in g["params"]]
        for p, q in zip(params, fresh):  # the caller's arrays stay the live ones
            p[...] = q
        for g, ng in zip(opt.param_groups, new.param_groups):
            ng["params"] = g["params"]
        new.state = [(p, new.state[q]) for p, q in zip(params, fresh) if q in new.state]
        return new
    sd = opt.state_dict()
    if action == "pickle_sd":
        saved = pickle.loads(pickle.dumps(sd))
    else:
        buf = io.BytesIO()
        np.savez(buf, **fa.flatten_state_dict(sd))
        buf.seek(0)
        with np.load(buf) as f:
            saved = fa.unflatten_state_dict(f)
    opt.load_state_dict(saved)
    return opt


def _edit(action, opt, spec, t):
    group = opt.param_groups[t % len(opt.param_groups)]
    if action == "edit_lr":
        group["lr"] = fa.schedules.CosineDecay(1e-2, 10) if t % 2 else 3e-3
    elif action == "edit_eps":
        group["eps"] = 1e-30 if t % 2 else 1e-6
    elif action == "edit_nonfinite":
        group["nonfinite"] = ["error", "skip", "ignore"][t % 3]
    elif action == "edit_max_norm" and "max_grad_norm" in group:
        group["max_grad_norm"] = None if group["max_grad_norm"] else 0.5
    elif action == "edit_grad_scale" and "grad_scale" in group:
        group["grad_scale"] = _grad_scale(GRAD_SCALES[6 + t % 8])


def _to_dtype(opt, params, spec, t):
    """Params of one group converted to another precision; the state follows (convert)."""
    gi = t % len(opt.param_groups)
    cycle = {"float32": "bfloat16", "bfloat16": "float16", "float16": "float32"}
    members = opt.param_groups[gi]["params"]
    name = str(members[0].dtype) if members else "float64"
    if name not in cycle:
        return opt, params
    new_dtype = ml_dtypes.bfloat16 if cycle[name] == "bfloat16" else cycle[name]
    sd = opt.state_dict()
    with np.errstate(all="ignore"):
        converted = {id(p): p.astype(new_dtype) for p in members}
    params = [converted.get(id(p), p) for p in params]
    groups = [
        {**{k: v for k, v in g.items() if k != "params"},
         "params": [converted.get(id(p), p) for p in g["params"]]}
        for g in opt.param_groups
    ]  # fmt: skip
    new = type(opt)(groups)
    new.load_state_dict(sd, convert=True)
    new.skipped_steps = opt.skipped_steps
    return new, params


def feature_run(spec, backend, checkpoints):
    """Construct, step and act; ``(step outcomes, final snapshot)``."""
    params_by_group = _feature_arrays(spec, 0)
    params = [p for g in params_by_group for p in g]
    groups = []
    for g, members in zip(spec["groups"], params_by_group):
        groups.append({
            "params": members, "state_dtype": g["state_dtype"],
            "grad_scale": _grad_scale(g["grad_scale"]), "max_grad_norm": g["max_grad_norm"],
            "nonfinite": g["nonfinite"],
        })  # fmt: skip
    cls = getattr(fa, spec["cls"])
    extra = {"amsgrad": spec["amsgrad"]} if spec["cls"] == "Adam" else {}
    try:
        opt = cls(groups, backend=backend, **extra)
    except EXPECTED as exc:
        return ("construct", type(exc)), None
    outcome = []
    for t in range(1, spec["steps"] + 1):
        grads = [
            g.astype(p.dtype) if g.dtype != p.dtype and p.dtype not in (BF16, F16) else g
            for g, p in zip((x for gs in _feature_arrays(spec, t) for x in gs), params)
        ]
        action = spec["actions"][t - 1]
        before = _snapshot(opt, params)
        try:
            with np.errstate(all="ignore"):
                if action == "override_scale":
                    opt.step(grads, grad_scale=np.array([2.0]))
                else:
                    opt.step(grads)
            outcome.append("ok")
        except EXPECTED as exc:
            outcome.append(type(exc).__name__)
            assert _same_snapshot(_snapshot(opt, params), before), (t, exc)
        try:
            if action in CHECKPOINTS:
                if checkpoints:
                    opt = _checkpoint(action, opt, params)
            elif action == "to_dtype":
                opt, params = _to_dtype(opt, params, spec, t)
            else:
                _edit(action, opt, spec, t)
        except EXPECTED as exc:
            # A checkpoint that cannot be written says so at save time (a plain callable
            # grad_scale in an .npz); the run goes on as if it had not been taken.
            assert action == "npz" and isinstance(exc, TypeError), (action, exc)
            event("npz refused at save time")
    return tuple(outcome), _snapshot(opt, params)


BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)


def check_feature_spec(spec):
    compiled, c_end = feature_run(spec, "compiled", checkpoints=True)
    reference, r_end = feature_run(spec, "numpy", checkpoints=True)
    straight, s_end = feature_run(spec, "compiled", checkpoints=False)
    assert compiled == reference == straight
    event(f"outcome: {compiled}")
    if c_end is not None:
        assert _same_snapshot(c_end, r_end), "compiled != numpy"
        assert _same_snapshot(c_end, s_end), "a checkpoint round trip changed the run"


@settings(max_examples=300, deadline=None, suppress_health_check=_HEALTH)
@given(spec=feature_strategy)
def test_features_fuzz(spec):
    check_feature_spec(spec)


@pytest.mark.soak
@settings(max_examples=5000, deadline=None, suppress_health_check=_HEALTH)
@given(spec=feature_strategy)
def test_features_fuzz_soak(spec):
    check_feature_spec(spec)
