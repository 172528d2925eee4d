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
