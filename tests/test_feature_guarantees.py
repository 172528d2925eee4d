"""The guarantees, on the features added after the float32 NumPy optimizers: checkpoints of
every state_dtype, param dtype and grad_scale form; clip_grad_norm on 16-bit gradients;
schedules compared by value; edge inputs of the NumPy front end. Each test failed before
the fix it guards."""

import io
import pickle

import ml_dtypes
import numpy as np
import pytest

import fusedadam as fa
from conftest import COMPILED

BACKENDS = ["numpy"] + (["compiled"] if COMPILED else [])
BF16 = np.dtype(ml_dtypes.bfloat16)
N = 5000  # above Q8_MIN_SIZE: 8-bit state is really 8-bit


def through_pickle(sd):
    return pickle.loads(pickle.dumps(sd))


def through_npz(sd):
    buf = io.BytesIO()
    np.savez(buf, **fa.flatten_state_dict(sd))
    buf.seek(0)
    with np.load(buf) as f:  # allow_pickle=False: the file must not need it
        return fa.unflatten_state_dict(f)


def grads(params, t, dtype=None):
    rng = np.random.default_rng([t, 5])
    return [rng.standard_normal(p.shape).astype(dtype or p.dtype) for p in params]


FEATURES = {
    "float32": (np.float32, {}),
    "bf16 state": (np.float32, {"state_dtype": "bfloat16"}),
    "8bit state": (np.float32, {"state_dtype": "8bit"}),
    "bf16 params": (BF16, {}),
    "bf16 params, bf16 state": (BF16, {"state_dtype": "bfloat16"}),
    "f16 params, 8bit state": (np.float16, {"state_dtype": "8bit"}),
    "array grad_scale": (np.float32, {"grad_scale": np.array([4.0])}),
    "0-d grad_scale": (np.float32, {"grad_scale": np.array(0.5)}),
    "grad_scale schedule": (np.float32, {"grad_scale": fa.schedules.Constant(2.0)}),
    "clipped": (np.float32, {"max_grad_norm": 1.0, "grad_scale": 8.0}),
    "amsgrad, bf16 state": (np.float32, {"amsgrad": True, "state_dtype": "bfloat16"}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transport", [through_pickle, through_npz], ids=["pickle", "npz"])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_every_feature_resumes_bit_identically(feature, transport, backend):
    dtype, options = FEATURES[feature]
    gdtype = np.float32 if dtype != np.float64 else None
    straight = [np.linspace(-1, 1, N).astype(dtype), np.ones(7, dtype)]
    resumed = [p.copy() for p in straight]
    a = fa.Adam(straight, lr=1e-2, backend=backend, **options)
    b = fa.Adam(resumed, lr=1e-2, backend=backend, **options)
    for t in range(3):
        a.step(grads(straight, t, gdtype))
        b.step(grads(resumed, t, gdtype))
    saved = transport(b.state_dict())
    c = fa.Adam(resumed, lr=1e-2, backend=backend, **options)
    c.load_state_dict(saved)
    for t in range(3, 6):
        a.step(grads(straight, t, gdtype))
        c.step(grads(resumed, t, gdtype))
    for x, y in zip(straight, resumed):
        assert x.tobytes() == y.tobytes()
    want, got = a.state_dict()["state"], c.state_dict()["state"]
    for i in want:
        for name, value in want[i].items():
            assert np.asarray(got[i][name]).dtype == np.asarray(value).dtype, name
            assert np.asarray(got[i][name]).tobytes() == np.asarray(value).tobytes(), name


def test_npz_refuses_at_save_what_it_cannot_hold():
    p = np.ones(3, np.float32)
    opt = fa.Adam([p])
    opt.param_groups[0]["note"] = {"a": 1}  # a user's own entry
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['note'\].*pickle"):
        fa.flatten_state_dict(opt.state_dict())


def test_npz_bfloat16_entry_with_wrong_bits_is_refused():
    with pytest.raises(ValueError, match="bfloat16"):
        fa.unflatten_state_dict({"state/0/exp_avg:bfloat16": np.zeros(3, np.float32)})


# ---------------------------------------------------------------- clip_grad_norm


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
@pytest.mark.parametrize("value", [6e4, 3.0, 1e-3])
def test_clip_grad_norm_16bit_grads_clip_to_max_norm(dtype, value):
    big = value >= 6e4 and dtype == np.float16
    g = [np.full(10**6 if big else 1000, value).astype(dtype), np.full((3, 5), -value, dtype)[:, ::2]]
    want = np.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g))
    total = fa.clip_grad_norm(g, max_norm=1.0)
    assert total == pytest.approx(want, rel=1e-12)
    after = np.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g))
    tolerance = 4e-3 if np.dtype(dtype) in (np.float16, BF16) else 1e-5
    assert after == pytest.approx(min(want, 1.0), rel=tolerance)
    assert all(x.dtype == dtype for x in g)


def test_clip_grad_norm_read_only_grad_changes_nothing():
    a, b = np.full(10, 3.0, np.float16), np.full(10, 4.0, np.float16)
    b.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\] is read-only"):
        fa.clip_grad_norm([a, b], 1.0)
    assert (a == 3.0).all()
    assert fa.clip_grad_norm([a, b], 1e3) == pytest.approx(np.sqrt(250))  # no clip: fine


@pytest.mark.parametrize("second", [lambda a: a, lambda a: a[2:5], lambda a: a.reshape(2, 5)])
def test_clip_grad_norm_refuses_gradients_sharing_memory(second):
    a = np.full(10, 3.0, np.float32)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] share memory"):
        fa.clip_grad_norm([a, second(a)], 1.0)
    assert (a == 3.0).all()
    x = np.arange(10.0)
    assert fa.clip_grad_norm([x[::2], x[1::2]], 1e3) == pytest.approx(np.sqrt((x**2).sum()))
