"""Fuzzing the public API: random valid and invalid inputs.

Every call either succeeds and matches the NumPy reference bit for bit, or raises
TypeError / ValueError / FloatingPointError with every array unchanged -- and the compiled
and reference backends always take the same branch.
"""
import math
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fusedadam as fa
from conftest import COMPILED

pytestmark = pytest.mark.skipif(not COMPILED, reason="extension not built")

EXPECTED = (TypeError, ValueError, FloatingPointError)
DTYPES = ["float32", "float64", "float16", "int32", "complex64"]
VALUES = ["normal", "huge", "denormal", "nonfinite", "zeros"]
# Valid choices repeat so that most examples reach step() with one thing wrong at most.
PARAM_KINDS = ["plain"] * 40 + ["memmap"] * 4 + ["readonly", "strided", "fortran",
                                                 "alias_previous"]
GRAD_KINDS = ["match"] * 14 + ["strided", "readonly", "memmap"] * 2 + [
    "wrong_dtype", "wrong_shape", "alias_param", "alias_other", "list"]
HYPER = {
    "lr": [1e-3] * 40 + [0.0, 0.5, "schedule", "schedule", -1.0, math.nan, math.inf,
                        "bad_schedule"],
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
        m = np.memmap(f"{tmpdir}/{rng.integers(1 << 40)}.dat", dtype=dtype, mode="w+",
                      shape=shape)
        m[...] = a
        a = m
    return a


def build(spec, tmpdir):
    """Fresh params and grads from a spec (called once per backend: same arrays)."""
    rng = np.random.default_rng(spec["seed"])
    params, grads = [], []
    for shape, kind in spec["params"]:
        params.append(_array(rng, kind, shape, spec["dtype"], spec["values"], tmpdir,
                             params[-1] if params else None))
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
        else:
            g = _array(rng, {"match": "plain"}.get(kind, kind), shape, dtype,
                       spec["grad_values"], tmpdir, None)
        grads.append(g)
    return params, grads


def options(spec):
    opts = {k: v for k, v in spec["hyper"].items()}
    if opts["lr"] == "schedule":
        opts["lr"] = lambda t: 0.01 / t
    elif opts["lr"] == "bad_schedule":
        opts["lr"] = lambda t: -1.0 if t == 2 else 0.01
    return opts


spec_strategy = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "dtype": st.sampled_from(DTYPES[:2] * 40 + DTYPES[2:]),
    "values": st.sampled_from(VALUES),
    "grad_values": st.sampled_from(["normal"] * 4 + VALUES),
    "params": st.lists(st.tuples(
        st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
        st.sampled_from(PARAM_KINDS)), min_size=1, max_size=3),
    "grads": st.lists(st.sampled_from(GRAD_KINDS), min_size=3, max_size=3),
    "n_grads_delta": st.sampled_from([0] * 12 + [-1, 1]),
    "hyper": st.fixed_dictionaries({k: st.sampled_from(v) for k, v in HYPER.items()}),
    "steps": st.integers(1, 3),
    "cls": st.sampled_from(["Adam", "AdamW", "Adamax"]),
})


def attempt(spec, backend, tmpdir):
    """Construct and step; return ("ok", arrays) or (exception type, arrays-unchanged flag)."""
    params, grads = build(spec, tmpdir)
    opts = options(spec)
    if spec["cls"] == "Adamax":
        opts.pop("amsgrad")
    try:
        opt = getattr(fa, spec["cls"])(params, backend=backend, **opts)
    except EXPECTED as exc:
        return ("construct", type(exc)), None
    outcome = []
    for _ in range(spec["steps"]):
        before = [np.array(p, copy=True) for p in params]
        state_before = {i: {k: np.array(v, copy=True) for k, v in st.items()}
                        for i, st in opt.state_dict()["state"].items()}
        try:
            opt.step(grads if len(grads) != 1 else grads[0])
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
    return tuple(outcome), (params, opt.state_dict(), opt.skipped_steps)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=spec_strategy)
def test_public_api_fuzz(spec):
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
