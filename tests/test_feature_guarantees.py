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
    g = [
        np.full(10**6 if big else 1000, value).astype(dtype),
        np.full((3, 5), -value, dtype)[:, ::2],
    ]
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


# ---------------------------------------------------------------- edges of the NumPy front end


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [1e-46, 1e-40, 5e-324])
def test_eps_that_vanishes_in_float32_is_refused_not_nan(eps, dtype):
    with pytest.raises(ValueError, match="Invalid epsilon value.*1e-30"):
        fa.Adam([np.zeros(4, dtype)], eps=eps)
    p = np.zeros(4, dtype)
    opt = fa.Adam([p], eps=1e-30, betas=(0.9, 1 - 2**-52))  # the smallest eps, extreme beta2
    for _ in range(3):
        opt.step([np.zeros(4, dtype)])
    assert (p == 0).all()


def stepped(backend, n=1):
    p = np.zeros(4, np.float32)
    opt = fa.Adam([p], backend=backend)
    for _ in range(n):
        opt.step([np.ones(4, np.float32)])
    return p, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["load", "assign", "in place"])
@pytest.mark.parametrize("count", [2**53, 2**63 - 1, -1])
def test_step_count_out_of_range_is_refused_never_wraps(backend, how, count):
    p, opt = stepped(backend)
    before = p.copy()
    with pytest.raises(ValueError, match=r"2\*\*53"):
        if how == "load":
            sd = opt.state_dict()
            sd["state"][0] = {**sd["state"][0], "step": count}
            opt.load_state_dict(sd)
        elif how == "assign":
            opt.state[p]["step"] = count
        else:
            opt.state[p]["step"][...] = count
        opt.step([np.ones(4, np.float32)])
    assert p.tobytes() == before.tobytes()
    opt.state[p]["step"] = 2**53 - 2  # the last count that steps
    opt.step([np.ones(4, np.float32)])
    assert int(opt.state[p]["step"]) == 2**53 - 1 and np.isfinite(p).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [5.0, np.float32(5.0), np.array(5.0, np.float32), np.int32(5)])
def test_any_whole_number_step_is_accepted_as_torch_keeps_it(backend, value):
    p, opt = stepped(backend)
    opt.state[p]["step"] = value
    opt.step([np.ones(4, np.float32)])
    assert int(opt.state[p]["step"]) == 6
    sd = opt.state_dict()
    sd["state"][0] = {**sd["state"][0], "step": value}
    opt.load_state_dict(sd)
    assert int(opt.state[p]["step"]) == 5
    opt.state[p]["step"] = 5.5
    with pytest.raises(TypeError, match="whole number"):
        opt.step([np.ones(4, np.float32)])


def _mutations():
    def resize(p, opt):
        p.resize((4000,), refcheck=False)

    return {
        "p.dtype": lambda p, opt: setattr(p, "dtype", np.int32),
        "p.shape": lambda p, opt: setattr(p, "shape", (2, 2)),
        "p.resize": resize,
        "exp_avg.dtype": lambda p, opt: setattr(opt.state[p]["exp_avg"], "dtype", np.int32),
        "exp_avg.shape": lambda p, opt: setattr(opt.state[p]["exp_avg"], "shape", (4, 1)),
        "step.dtype": lambda p, opt: setattr(opt.state[p]["step"], "dtype", np.float64),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mutation", sorted(_mutations()))
def test_arrays_mutated_in_place_between_steps_are_detected(backend, mutation):
    p, opt = stepped(backend, 2)
    _mutations()[mutation](p, opt)
    before = [a.copy() for a in (p, *opt.state[p].values())]
    with pytest.raises((TypeError, ValueError)):
        opt.step([np.ones(p.shape, np.float32)])
    after = [p, *opt.state[p].values()]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after)), mutation


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_read_before_the_first_step_is_an_empty_dict_the_step_fills(backend):
    p = np.zeros(4, np.float32)
    opt = fa.Adam([p], backend=backend)
    st = opt.state[p]  # torch: a defaultdict
    assert st == {} and opt.state_dict()["state"] == {}
    opt.step([np.ones(4, np.float32)])
    assert opt.state[p] is st and sorted(st) == ["exp_avg", "exp_avg_sq", "step"]
    st["exp_avg"] = np.full(4, 5.0, np.float32)  # the dict the user holds is the live one
    opt.step([np.ones(4, np.float32)])
    assert st["exp_avg"][0] == np.float32(0.9 * 5.0 + 0.1)
    with pytest.raises(KeyError):
        opt.state[np.zeros(4, np.float32)]  # not a param of this optimizer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("copy_", [pickle.loads, None], ids=["pickle", "deepcopy"])
def test_a_copied_optimizer_keeps_its_last_grad_norm(backend, copy_):
    import copy

    p = np.ones(5, np.float32)
    opt = fa.Adam([p], max_grad_norm=1.0, backend=backend)
    opt.step([np.ones(5, np.float32)])
    other = copy_(pickle.dumps(opt)) if copy_ else copy.deepcopy(opt)
    assert other.last_grad_norm == opt.last_grad_norm == pytest.approx(np.sqrt(5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("modes", [("skip", "error"), ("skip", "skip")])
def test_skipped_steps_counts_a_step_once_and_not_when_it_raises(backend, modes):
    params = [np.ones(3, np.float32), np.ones(3, np.float32)]
    opt = fa.Adam([{"params": [p], "nonfinite": m} for p, m in zip(params, modes)], backend=backend)
    bad = [np.full(3, np.nan, np.float32), np.full(3, np.nan, np.float32)]
    if modes[1] == "error":
        with pytest.raises(FloatingPointError):
            opt.step(bad)
        assert opt.skipped_steps == 0
    else:
        opt.step(bad)
        assert opt.skipped_steps == 1


def _spread(backend, state_dtype):
    p = np.zeros(N, np.float32)
    opt = fa.Adam([p], state_dtype=state_dtype, backend=backend, nonfinite="ignore")
    g = np.full(N, 0.1, np.float32)
    g[3] = 1e30  # finite; its square overflows the second moment of element 3 only
    with np.errstate(all="ignore"):
        opt.step([g])
        opt.step([np.full(N, 0.1, np.float32)])
    return np.flatnonzero(~np.isfinite(p))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16"])
def test_an_overflowing_moment_stays_in_its_element(backend, state_dtype):
    assert _spread(backend, state_dtype).size == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_overflowing_8bit_moment_stays_in_its_element(backend):
    """8-bit state: the inf keeps its own code and the block its finite scale (the largest
    finite |value|), so the other 255 elements of the block step as before."""
    assert _spread(backend, "8bit").size == 0


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "schedule",
    [fa.schedules.StepDecay(1e-3, 1, 10.0), fa.schedules.ExponentialDecay(1e-3, 10.0)],
    ids=["step decay", "exponential"],
)
def test_a_schedule_growing_past_float_range_gives_a_clear_error_not_overflow(schedule):
    assert schedule(2**31) == np.inf
    p = np.zeros(3, np.float32)
    opt = fa.Adam([p], lr=schedule)
    opt.step([np.ones(3, np.float32)])
    opt.state[p]["step"] = 2**40
    before = p.copy()
    with pytest.raises(ValueError, match=r"lr\(1099511627777\) returned"):
        opt.step([np.ones(3, np.float32)])
    assert p.tobytes() == before.tobytes()


def test_a_schedule_config_that_is_not_a_dict_is_a_clear_error():
    with pytest.raises(TypeError, match="schedule config must be a dict"):
        fa.schedules.from_json("[1]")


# ---------------------------------------------------------------- extreme magnitudes vs torch

EXTREMES = [0.0, 1e-45, 1e-40, 1e-30, 1.0, 1e19, 1e30, 3e38, -3e38]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name, options",
    [
        ("Adam", {}),
        ("Adam", {"amsgrad": True, "weight_decay": 0.01}),
        ("AdamW", {}),
        ("Adamax", {}),
        ("NAdam", {}),
        ("RAdam", {}),
        ("Adam", {"maximize": True, "eps": 1e-30}),
        ("Adam", {"lr": 1e30}),
        ("Adam", {"betas": (0.0, 0.0)}),
    ],
)
def test_extreme_finite_magnitudes_are_non_finite_exactly_where_torch_is(name, options, dtype):
    """Every pair of param and gradient from 0 and subnormals to 3e38, three steps: NaN and
    inf exactly where torch.optim has them (never NaN from reordered arithmetic)."""
    torch = pytest.importorskip("torch")
    p0 = np.array([v for v in EXTREMES for _ in EXTREMES], dtype)
    g = np.array([v for _ in EXTREMES for v in EXTREMES], dtype)
    p = p0.copy()
    opt = getattr(fa, name)([p], nonfinite="ignore", **options)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, name)([tp], **options)
    with np.errstate(all="ignore"):
        for _ in range(3):
            opt.step([g.copy()])
            tp.grad = torch.tensor(g.copy())
            topt.step()
    t = tp.detach().numpy()
    assert (np.isnan(p) == np.isnan(t)).all() and (np.isinf(p) == np.isinf(t)).all()
