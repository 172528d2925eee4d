"""Mixed precision and gradient pre-processing (issue 12): bfloat16/float16 params with a
float32 master, bfloat16 state, grad_scale and max_grad_norm, all in the step's one pass.

Every compiled result is compared bit for bit with the NumPy reference (``backend="numpy"``
runs the same driver with ``reference.py`` doing the array work), for every algorithm,
instruction set and thread count; the master's trajectory with the float32 optimizer's.
"""

import copy
import math
import pickle

import ml_dtypes
import numpy as np
import pytest
from _bits import assert_same_bits, bits, make
from conftest import BACKENDS, COMPILED, VARIANTS, assert_unchanged, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import reference

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
LOW = [BF16, F16]

needs_compiled = pytest.mark.skipif(not COMPILED, reason="extension not built")


def grads_for(dtype, n, steps, seed, scale=1.0):
    return [make(dtype, n, seed + 1000 * t, scale) for t in range(steps)]


# ----------------------------------------------------------------- conversions


@needs_compiled
def test_conversions_match_ml_dtypes_and_numpy():
    from fusedadam import _testing

    rng = np.random.default_rng(0)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.99, 65520, 1e-8, 6e-8,
         2.9802322e-08, 5.9604645e-08, 6.1035156e-05, 3.4028235e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8,
         1.0 + 2**-11, 1.0 + 3 * 2**-11],
        dtype=np.float32,
    )  # fmt: skip
    # every exponent, random mantissas (so every rounding case and tie appears)
    words = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(2**16, dtype=np.uint32) << 16) | 0x8000  # bfloat16 ties, both parities
    ties16 = (np.arange(2**19, dtype=np.uint32) << 13) | 0x1000  # float16 ties
    values = np.concatenate([special, words.view(np.float32), ties.view(np.float32),
                             ties16.view(np.float32)])  # fmt: skip
    got = _testing.round_float32(values, "bfloat16")
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got, values.astype(BF16).view(np.uint16))
        want = values.astype(F16)
    got16 = _testing.round_float32(values, "float16").view(F16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(bits(got16[~nan]), bits(want[~nan]))
    assert np.isnan(got16[nan]).all()
    every = np.arange(2**16, dtype=np.uint16)
    e = every.astype(np.uint32)
    # a NaN widens exactly, payload kept, a signaling one included: NumPy's cast does that
    # on x86 but quiets it (and raises "invalid") where it converts in hardware (aarch64)
    exact_nan = {
        "bfloat16": e << 16,
        "float16": ((e & 0x8000) << 16) | 0x7F800000 | ((e & 0x3FF) << 13),
    }
    for name, dtype in (("bfloat16", BF16), ("float16", F16)):
        with np.errstate(invalid="ignore"):
            want = every.view(dtype).astype(F32)
        want = np.where(np.isnan(want), exact_nan[name].view(F32), want)
        assert_same_bits(_testing.widen_to_float32(every, name), want)


# ----------------------------------------------------------------- the master's trajectory


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("param_dtype", LOW, ids=str)
@pytest.mark.parametrize("grad_dtype", [F32, BF16, F16], ids=str)
def test_master_follows_the_float32_optimizer_bit_for_bit(variant, param_dtype, grad_dtype):
    """A bfloat16/float16 param's master is exactly what the float32 optimizer does to a
    float32 copy with the widened gradients, and the param is the master rounded."""
    cls, options = VARIANTS[variant]
    n = 1037
    p = make(param_dtype, n, 1)
    master = p.astype(np.float32)
    opt = cls([p], **options)
    opt32 = cls([master], **options)
    for g in grads_for(grad_dtype, n, 6, 2):
        opt.step([g])
        opt32.step([g.astype(np.float32)])
        assert_same_bits(opt.state[p]["master_param"], master)
        assert_same_bits(p, master.astype(param_dtype))
    for name, value in opt32.state[master].items():
        assert_same_bits(np.asarray(opt.state[p][name]), np.asarray(value))


# ----------------------------------------------------------------- compiled == reference

CASES = {
    "bf16 params, f32 grads": (BF16, F32, None, {}),
    "bf16 params, bf16 grads, bf16 state": (BF16, BF16, "bfloat16", {}),
    "f16 params, f16 grads, scaled and clipped": (
        F16, F16, None, {"grad_scale": 1024.0, "max_grad_norm": 0.5},
    ),
    "f16 params, bf16 grads, bf16 state, clipped": (F16, BF16, "bfloat16", {"max_grad_norm": 2.0}),
    "f32 params, bf16 state, scaled": (F32, F32, "bfloat16", {"grad_scale": 3.0}),
    "f32 params, clipped": (F32, F32, None, {"max_grad_norm": 1.0}),
    # a power-of-two scale and no clipping fold into the loop's sign multiply
    "f32 params, scaled by 2**10": (F32, F32, None, {"grad_scale": 1024.0}),
    "f64 params, scaled by 2**-3, clip above the norm": (
        F64, F64, None, {"grad_scale": 0.125, "max_grad_norm": 1e9},
    ),
    "f64 params, scaled and clipped": (F64, F64, None, {"grad_scale": 0.5, "max_grad_norm": 3.0}),
}  # fmt: skip


def run_pair(cls, options, param_dtype, grad_dtype, state_dtype, extra, sizes, steps, seed=3):
    """The same steps on the compiled and the NumPy backend; returns both optimizers."""
    results = []
    for backend in ("compiled", "numpy"):
        params = [make(param_dtype, n, seed + k) for k, n in enumerate(sizes)]
        opt = cls(params, backend=backend, state_dtype=state_dtype, **{**options, **extra})
        norms = []
        for t in range(steps):
            opt.step([make(grad_dtype, n, 100 * t + k, 2.0) for k, n in enumerate(sizes)])
            norms.append(opt.last_grad_norm)
        results.append((opt, params, norms))
    return results


def assert_pair_equal(results):
    (a, pa, na), (b, pb, nb) = results
    assert na == nb or all(math.isnan(x) and math.isnan(y) for x, y in zip(na, nb))
    for x, y in zip(pa, pb):
        assert_same_bits(x, y)
        for name, value in a.state[x].items():
            assert_same_bits(np.asarray(value), np.asarray(b.state[y][name]))


@needs_compiled
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compiled_equals_reference(case, variant):
    param_dtype, grad_dtype, state_dtype, extra = CASES[case]
    cls, options = VARIANTS[variant]
    assert_pair_equal(
        run_pair(cls, options, param_dtype, grad_dtype, state_dtype, extra, [0, 1, 333, 40], 4)
    )


@needs_compiled
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("num_threads", [1, 2])
def test_every_isa_and_thread_count_gives_the_reference_bits(
    case, num_threads, simd, parallel_threshold
):
    param_dtype, grad_dtype, state_dtype, extra = CASES[case]
    results = run_pair(
        fa.Adam,
        {"amsgrad": True, "weight_decay": 0.01, "num_threads": num_threads},
        param_dtype,
        grad_dtype,
        state_dtype,
        extra,
        [17, 5000, 16, 1],
        3,
    )
    assert_pair_equal(results)


@needs_compiled
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4),
    case=st.sampled_from(sorted(CASES)),
    variant=st.sampled_from(sorted(VARIANTS)),
    chunk=st.sampled_from([16, 48, 16384]),
    threads=st.sampled_from([1, 2]),
)
@settings(max_examples=60, deadline=None)
def test_fuzz_sizes_chunks_and_threads(sizes, case, variant, chunk, threads):
    from fusedadam import _kernels

    param_dtype, grad_dtype, state_dtype, extra = CASES[case]
    cls, options = VARIANTS[variant]
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        results = run_pair(
            cls, {**options, "num_threads": threads}, param_dtype, grad_dtype, state_dtype,
            extra, sizes, 2,
        )  # fmt: skip
    finally:
        _kernels.set_chunk_size(saved)
    assert_pair_equal(results)


# ----------------------------------------------------------------- grad_scale and clipping


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scale_divides_the_gradients_in_the_pass(backend):
    """grad_scale=s is the optimizer fed g / float32(s); as a float, a callable, an array
    read at each step, or step(grad_scale=...); the gradients are not written."""
    n, scale = 999, 3.0
    grads = grads_for(F32, n, 4, 5)
    ref = make(F32, n, 7)
    reference_opt = fa.Adam([ref], backend=backend)
    for g in grads:
        reference_opt.step([g / np.float32(scale)])
    scale_array = np.array([scale], dtype=np.float32)
    for how in ("float", "callable", "array", "step"):
        p = make(F32, n, 7)
        option = {"float": scale, "callable": lambda t: scale, "array": scale_array}.get(how, 1.0)
        opt = fa.Adam([p], backend=backend, grad_scale=option)
        for g in grads:
            kept = g.copy()
            opt.step([g], grad_scale=scale if how == "step" else None)
            assert_same_bits(g, kept)
        assert_same_bits(p, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_follows_torch_clip_grad_norm(backend):
    """The norm is the 2-norm of the unscaled gradients of the group (computed in double),
    the coefficient max_norm / (norm + 1e-6) clamped to 1, applied before the update."""
    sizes, scale, max_norm = [300, 7, 1000], 8.0, 0.25
    grads = [make(F32, n, 11 + k, 3.0) for k, n in enumerate(sizes)]
    params = [make(F32, n, 21 + k) for k, n in enumerate(sizes)]
    expected = [p.copy() for p in params]
    opt = fa.Adam(params, backend=backend, grad_scale=scale, max_grad_norm=max_norm)
    opt.step(grads)
    unscaled = [g / np.float32(scale) for g in grads]
    norm = math.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in unscaled))
    assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
    coef = np.float32(min(max_norm / (norm + 1e-6), 1.0))
    fa.Adam(expected, backend=backend).step([u * coef for u in unscaled])
    for p, e in zip(params, expected):
        assert_same_bits(p, e)
    # Below the threshold nothing is scaled, but the norm is still reported.
    opt2 = fa.Adam([make(F32, 10, 1)], backend=backend, max_grad_norm=1e6)
    opt2.step([np.ones(10, np.float32)])
    assert opt2.last_grad_norm == pytest.approx(math.sqrt(10))


def test_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(30, 20), (20,), (5, 7, 3)]
    values = [rng.standard_normal(s).astype(np.float32) * 3 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 5 for s in shapes]
    tparams = [torch.tensor(v, requires_grad=True) for v in values]
    topt = torch.optim.Adam(tparams, lr=1e-2)
    params = [v.copy() for v in values]
    opt = fa.Adam(params, lr=1e-2, max_grad_norm=1.0)
    for _ in range(5):
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        total = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
        topt.step()
        opt.step(grads)
        assert opt.last_grad_norm == pytest.approx(float(total), rel=1e-6)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-7)


@needs_compiled
@pytest.mark.parametrize("chunk", [4096, 16384, 1 << 16])
def test_norm_is_the_same_bits_for_every_thread_count_and_backend(chunk):
    """The sum's order is fixed by the chunks (and, within a segment, the eight lanes of
    FA_NORM_BODY), never by the threads or by how many chunks one task of the parallel
    scan takes; the reference sums in that order."""
    from fusedadam import _kernels

    grads = [make(F32, 100_003, 3, 10.0), make(BF16, 70_000, 4), make(F32, 9, 5)]
    norms = set()
    saved = _kernels.get_chunk_size(), _kernels.get_scan_task_size()
    try:
        _kernels.set_chunk_size(chunk)
        for task_chunks in (1, 3, 16):
            _kernels.set_scan_task_size(task_chunks * chunk)
            for threads in (1, 2):
                for backend in ("compiled", "numpy"):
                    params = [make(F32, 100_003, 1), make(BF16, 70_000, 2), make(F32, 9, 6)]
                    opt = fa.Adam(params, max_grad_norm=1.0, num_threads=threads, backend=backend)
                    opt.step(grads)
                    norms.add(opt.last_grad_norm)
    finally:
        _kernels.set_chunk_size(saved[0])
        _kernels.set_scan_task_size(saved[1])
    assert len(norms) == 1


def test_last_grad_norm_per_group():
    a, b = make(F32, 5, 1), make(F32, 6, 2)
    opt = fa.Adam([{"params": [a], "max_grad_norm": 1.0}, {"params": [b]}])
    assert opt.last_grad_norm == [None, None]
    opt.step([np.full(5, 2.0, np.float32), np.ones(6, np.float32)])
    norm, none = opt.last_grad_norm
    assert none is None and norm == pytest.approx(math.sqrt(20))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype", [F32, BF16], ids=str)
def test_overflow_from_unscaling_is_non_finite(backend, param_dtype):
    """Dividing by a scale < 1 can overflow float32: the check sees the unscaled values,
    "error" raises and "skip" skips (AMP's GradScaler step skip), nothing written."""
    p = make(param_dtype, 50, 1)
    g = np.zeros(50, np.float32)
    g[17] = 3e38
    for mode in ("error", "skip"):
        opt = fa.Adam([p], backend=backend, nonfinite=mode, grad_scale=0.5)
        opt.step([np.zeros(50, np.float32)])
        before = snapshot(opt)
        if mode == "error":
            with pytest.raises(FloatingPointError, match=r"grads\[0\].*index 17"):
                opt.step([g])
        else:
            opt.step([g])
            assert opt.skipped_steps == 1
        assert_unchanged(opt, before)
        opt.step([g], grad_scale=2.0)  # no overflow at this scale
        assert int(opt.state[p]["step"]) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_with_clipping_reports_the_non_finite_norm(backend):
    p = make(BF16, 40, 1)
    opt = fa.Adam([p], backend=backend, nonfinite="skip", max_grad_norm=1.0)
    g = np.ones(40, BF16)
    g[3] = np.inf
    before = snapshot(opt)
    opt.step([g])
    assert opt.skipped_steps == 1 and opt.last_grad_norm == math.inf
    assert_unchanged(opt, before)


# ----------------------------------------------------------------- validation


def _stepped(dtype=BF16, **options):
    p = make(dtype, 8, 1)
    opt = fa.Adam([p], **options)
    opt.step([make(F32 if dtype != F64 else F64, 8, 2)])
    return p, opt


BAD_STEPS = {
    "float64 grad for a bfloat16 param": (
        {}, lambda p, opt: opt.step([np.ones(8)]), TypeError,
        r"grads\[0\] has dtype float64, but params\[0\] \(bfloat16\) takes gradients of dtype "
        r"float32, bfloat16, float16",
    ),
    "bfloat16 grad for a float32 param": (
        {"dtype": F32}, lambda p, opt: opt.step([np.ones(8, BF16)]), TypeError,
        r"grads\[0\] has dtype bfloat16, but params\[0\] \(float32\) takes gradients of dtype "
        r"float32$",
    ),
    "master of another shape": (
        {}, lambda p, opt: (opt.state[p].update(master_param=np.zeros(9, np.float32)),
                            opt.step([np.ones(8, np.float32)])),
        ValueError, r"master_param of params\[0\] has shape \(9,\), but params\[0\] has \(8,\)",
    ),
    "master of another dtype": (
        {}, lambda p, opt: (opt.state[p].update(master_param=np.zeros(8, BF16)),
                            opt.step([np.ones(8, np.float32)])),
        TypeError, r"master_param of params\[0\] has dtype bfloat16, but params\[0\] "
                   r"\(bfloat16\) keeps it in float32",
    ),
    "master deleted": (
        {}, lambda p, opt: (opt.state[p].pop("master_param"), opt.step([np.ones(8, np.float32)])),
        ValueError, r"master_param of params\[0\] is missing",
    ),
    "state_dtype changed": (
        {}, lambda p, opt: (opt.param_groups[0].update(state_dtype="bfloat16"),
                            opt.step([np.ones(8, np.float32)])),
        TypeError, r"exp_avg of params\[0\] has dtype float32, but params\[0\] \(bfloat16\) "
                   r"keeps it in bfloat16 \(load a state_dict with convert=True",
    ),
    "zero grad_scale at step": (
        {}, lambda p, opt: opt.step([np.ones(8, np.float32)], grad_scale=0.0), ValueError,
        r"Invalid grad_scale: 0.0 \(must be finite and > 0\)",
    ),
    "nan grad_scale array": (
        {"grad_scale": "a fresh one-element array"},
        lambda p, opt: (opt.param_groups[0]["grad_scale"].fill(np.nan),
                        opt.step([np.ones(8, np.float32)])),
        ValueError, r"Invalid grad_scale: nan",
    ),
    "callable grad_scale returning inf": (
        {"grad_scale": lambda t: 1.0 if t == 1 else math.inf},
        lambda p, opt: opt.step([np.ones(8, np.float32)]), ValueError,
        r"Invalid grad_scale\(2\) returned: inf",
    ),
}  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_STEPS))
def test_bad_input_changes_nothing(case, backend):
    options, action, error, message = BAD_STEPS[case]
    if options.get("grad_scale") == "a fresh one-element array":
        options = {"grad_scale": np.array([1.0])}
    p, opt = _stepped(backend=backend, **options)
    before = snapshot(opt)
    master = opt.state[p]["master_param"].copy() if "master_param" in opt.state[p] else None
    state = dict(opt.state[p])
    with pytest.raises(error, match=message):
        action(p, opt)
    opt.state[p].clear()
    opt.state[p].update(state)  # undo the test's own edit of the state dict
    assert_unchanged(opt, before)
    if master is not None:
        assert_same_bits(opt.state[p]["master_param"], master)


BAD_OPTIONS = {
    "state_dtype": ("float16", ValueError, r"Invalid state_dtype 'float16'"),
    "grad_scale": (-1.0, ValueError, r"Invalid grad_scale: -1.0"),
    "max_grad_norm": (0.0, ValueError, r"Invalid max_grad_norm value: 0.0"),
}


@pytest.mark.parametrize("key", sorted(BAD_OPTIONS))
def test_bad_options_are_rejected_at_construction(key):
    value, error, message = BAD_OPTIONS[key]
    with pytest.raises(error, match=message):
        fa.Adam([make(BF16, 4, 1)], **{key: value})


def test_bfloat16_state_for_float64_params_is_an_error():
    p = make(F64, 4, 1)
    opt = fa.Adam([p], state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"state_dtype='bfloat16' applies to float32.*params\[0\]"):
        opt.step([np.ones(4)])
    assert len(opt.state) == 0


# ----------------------------------------------------------------- state dicts


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_resumes_bit_for_bit(backend):
    grads = grads_for(BF16, 64, 6, 9)
    p = make(BF16, 64, 1)
    opt = fa.AdamW([p], backend=backend, state_dtype="bfloat16", max_grad_norm=1.0)
    for g in grads[:3]:
        opt.step([g])
    saved = pickle.loads(pickle.dumps(copy.deepcopy(opt.state_dict())))
    assert saved["state"][0]["master_param"].dtype == F32
    assert saved["state"][0]["exp_avg"].dtype == BF16
    q = p.copy()
    resumed = fa.AdamW([q], backend=backend, state_dtype="bfloat16", max_grad_norm=1.0)
    resumed.load_state_dict(saved)
    for g in grads[3:]:
        opt.step([g])
        resumed.step([g])
    assert_same_bits(p, q)
    for name, value in opt.state[p].items():
        assert_same_bits(np.asarray(value), np.asarray(resumed.state[q][name]))


def test_state_dtype_conversion_must_be_explicit():
    p = make(BF16, 32, 1)
    opt = fa.Adam([p])
    opt.step([make(F32, 32, 2)])
    sd = opt.state_dict()
    other = fa.Adam([p.copy()], state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"has dtype float32, but this optimizer keeps it in "
                                        r"bfloat16; pass convert=True"):  # fmt: skip
        other.load_state_dict(sd)
    assert len(other.state) == 0
    other.load_state_dict(sd, convert=True)
    q = other.param_groups[0]["params"][0]
    assert other.state[q]["exp_avg"].dtype == BF16
    assert_same_bits(other.state[q]["exp_avg"], sd["state"][0]["exp_avg"].astype(BF16))
    assert_same_bits(other.state[q]["master_param"], sd["state"][0]["master_param"])


def test_precision_change_converts_the_master_explicitly():
    """A float32 run's state loads into bfloat16 params only with convert=True, which makes
    the master from the param; the way back drops the master."""
    p32 = make(F32, 16, 1)
    opt32 = fa.Adam([p32])
    opt32.step([make(F32, 16, 2)])
    pbf = p32.astype(BF16)
    optbf = fa.Adam([pbf])
    with pytest.raises(ValueError, match=r"missing \['master_param'\]"):
        optbf.load_state_dict(opt32.state_dict())
    optbf.load_state_dict(opt32.state_dict(), convert=True)
    assert_same_bits(optbf.state[pbf]["master_param"], pbf.astype(F32))
    back = fa.Adam([p32.copy()])
    with pytest.raises(ValueError, match=r"unexpected entries \['master_param'\].*convert=True"):
        back.load_state_dict(optbf.state_dict())
    back.load_state_dict(optbf.state_dict(), convert=True)
    assert "master_param" not in back.state[back.param_groups[0]["params"][0]]


def test_reference_clip_coefficient_is_torch_rule():
    assert reference.clip_coefficient(4.0, 1.0, 1.0) == (1.0 / (2.0 + 1e-6), 2.0)
    assert reference.clip_coefficient(16.0, 2.0, 1.0) == (1.0 / (2.0 + 1e-6), 2.0)
    assert reference.clip_coefficient(0.0, 1.0, 1.0) == (1.0, 0.0)
    coef, norm = reference.clip_coefficient(math.inf, 1.0, 1.0)
    assert (coef, norm) == (0.0, math.inf)
    assert math.isnan(reference.clip_coefficient(math.nan, 1.0, 1.0)[0])
