"""Block-wise 8-bit optimizer state (issue 15): ``state_dtype="8bit"``.

The map of ``_q8.h`` against ``reference.q8_*`` (every code, special values, ties), the
compiled step against the NumPy reference bit for bit (every algorithm, instruction set,
thread count and chunk size, blocks cut by chunk boundaries), state dicts, conversions,
validation, and that 8-bit Adam follows float32 Adam.
"""

import copy
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
F32 = np.dtype(np.float32)
U8 = np.dtype(np.uint8)

needs_compiled = pytest.mark.skipif(not COMPILED, reason="extension not built")


# ----------------------------------------------------------------- the map


@needs_compiled
@pytest.mark.parametrize("signed", [True, False])
def test_decoder_matches_reference_for_every_code(signed):
    from fusedadam import _testing

    codes = np.arange(256, dtype=np.uint8)
    assert_same_bits(_testing.q8_values(codes, signed), reference.q8_values(signed))


@pytest.mark.parametrize("signed", [True, False])
def test_map_is_monotonic_and_spans_documented_range(signed):
    y = reference.q8_values(signed)
    top = 120 if signed else 240
    mags = y[: top + 1]
    assert mags[0] == 0 and mags[top] == 1.0
    assert (np.diff(mags) > 0).all()
    assert mags[1] == (2.0**-17 if signed else 2.0**-32)  # the smallest step
    assert mags[8] == (2.0**-14 if signed else 2.0**-29)  # the first normal
    if signed:
        assert_same_bits(y[128:249], -y[:121])
    else:
        assert (y[top:254] == 1.0).all()  # never written; read as 1.0


@pytest.mark.parametrize("signed", [True, False])
def test_nonfinite_codes_decode_to_inf_and_nan_whatever_the_scale(signed):
    y = reference.q8_values(signed)
    codes = np.arange(256, dtype=np.uint8)
    special = reference.q8_nonfinite(codes, signed)
    want = [0x7E, 0x7F, 0xFE, 0xFF] if signed else [0xFE, 0xFF]
    assert np.flatnonzero(special).tolist() == want
    assert np.isfinite(y[~special]).all()
    words = bits(y[special]).tolist()
    if signed:  # 0xFE is never written (a NaN's sign is not kept) and reads as NaN
        assert words == [0x7FC00000, 0x7F800000, 0x7FC00000, 0xFF800000]
    else:
        assert words == [0x7FC00000, 0x7F800000]
    for scale in (0.0, 1e-45, 1.0, 3e38):  # inf * 0 would be NaN: the scale is not applied
        back = reference.q8_dequantize(codes, np.full(1, scale, np.float32), signed)
        assert_same_bits(back[special], y[special])


def _special_values(signed):
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    y = reference.q8_values(signed)
    top = 120 if signed else 240
    mags = y[: top + 1].astype(np.float64)
    # exact midpoints between neighbouring codes (ties) and their neighbours
    mid = ((mags[:-1] + mags[1:]) / 2).astype(np.float32)
    near = np.concatenate([mid, np.nextafter(mid, 0), np.nextafter(mid, 2)])
    special = np.array([0.0, -0.0, 1.0, -1.0, 2.0, np.inf, -np.inf, np.nan, 1e-45, 1e-38],
                       dtype=np.float32)  # fmt: skip
    return np.concatenate([special, near, -near, words.view(np.float32)])


@needs_compiled
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("absmax", [1.0, 3.0, 1e-30, 1e-44, 0.0, 7.5e37, 3.4028235e38], ids=str)
def test_encoder_matches_reference(signed, absmax):
    """The compiled encoder of one value against one absmax gives the reference's code
    (through a block whose finite absmax is that value: the reference takes the block's
    max); infs and NaNs (given, and among the random words) get their own codes."""
    from fusedadam import _testing

    values = _special_values(signed)
    with np.errstate(all="ignore"):  # keep the block's finite max at absmax
        finite = np.isfinite(values)
        scaled = np.where(np.abs(values) <= 1, values * np.float32(absmax), 0)
        values = np.where(finite, scaled, values).astype(np.float32)
    assert (~np.isfinite(values)).sum() > 100
    got = _testing.q8_codes(values, np.float32(absmax), signed)
    for start in range(0, values.size, 255):  # 255 values and absmax: one block
        block = np.concatenate([values[start : start + 255], [np.float32(absmax)]])
        want, scale = reference.q8_quantize(block.astype(np.float32), signed)
        assert scale.tolist() == [np.float32(absmax)]
        assert_same_bits(got[start : start + 255], want[:-1])


@pytest.mark.parametrize("signed", [True, False])
def test_encoder_rounds_to_nearest_ties_away_from_zero(signed):
    y = reference.q8_values(signed)
    top = 120 if signed else 240
    mags = y[: top + 1]
    x = np.abs(_special_values(signed))
    x = x[np.isfinite(x) & (x <= 1)].astype(np.float32)
    x = x[: x.size - x.size % 255].reshape(-1, 255)
    block = np.concatenate([np.ones((x.shape[0], 1), np.float32), x], axis=1).reshape(-1)
    codes, absmax = reference.q8_quantize(block, signed)
    assert (absmax == 1.0).all()  # every block of 256 starts with 1.0
    mag = codes.astype(np.int64) & (0x7F if signed else 0xFF)
    err = np.abs(mags[mag].astype(np.float64) - block.astype(np.float64))
    best = np.abs(mags[None, :].astype(np.float64) - block[:, None].astype(np.float64))
    best_err = best.min(axis=1)
    assert (err <= best_err).all()
    ties = (best == best_err[:, None]).sum(axis=1) == 2
    assert ties.sum() > 50
    assert (mags[mag[ties]] >= block[ties]).all()  # the larger magnitude


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_dequantize_error_is_bounded(signed):
    rng = np.random.default_rng(2)
    v = (rng.standard_normal(10_000) * np.exp(rng.uniform(-4, 4, 10_000))).astype(np.float32)
    if not signed:
        v = np.abs(v)
    codes, absmax = reference.q8_quantize(v, signed)
    back = reference.q8_dequantize(codes, absmax, signed)
    scale = np.repeat(absmax, 256)[: v.size]
    rel = np.abs(back - v) / np.abs(v)
    normal = np.abs(v) >= scale * (2.0**-14 if signed else 2.0**-29)
    assert rel[normal].max() <= 1 / 16 + 1e-6  # half a step of 3 mantissa bits
    step = 2.0**-18 if signed else 2.0**-33  # half the smallest step
    assert (np.abs(back - v)[~normal] <= scale[~normal] * step).all()


# ----------------------------------------------------------------- compiled == reference

Q8_VARIANTS = sorted(VARIANTS)


def run_pair(cls, options, sizes, steps, param_dtype=F32, seed=3, grad_scale=1.0):
    results = []
    for backend in ("compiled", "numpy"):
        params = [make(param_dtype, n, seed + k) for k, n in enumerate(sizes)]
        opt = cls(params, backend=backend, state_dtype="8bit", **options)
        for t in range(steps):
            opt.step([make(F32 if param_dtype == F32 else BF16, n, 100 * t + k, 2.0 * grad_scale)
                      for k, n in enumerate(sizes)])  # fmt: skip
        results.append((opt, params))
    return results


def assert_pair_equal(results):
    (a, pa), (b, pb) = results
    for x, y in zip(pa, pb):
        assert_same_bits(x, y)
        assert a.state[x].keys() == b.state[y].keys()
        for name, value in a.state[x].items():
            assert_same_bits(value, b.state[y][name])


@needs_compiled
@pytest.mark.parametrize("variant", Q8_VARIANTS)
def test_compiled_equals_reference(variant):
    cls, options = VARIANTS[variant]
    results = run_pair(cls, options, [0, 4096, 333, 5000, 9000], 4)
    opt, params = results[0]
    first = cls.algorithm.state_names[0]
    assert opt.state[params[1]][first].dtype == U8
    assert opt.state[params[2]][first].dtype == F32  # below 4096 elements
    assert_pair_equal(results)


@needs_compiled
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("chunk", [16, 400, 16384])
def test_every_isa_thread_count_and_chunk_gives_the_reference_bits(num_threads, chunk, simd):
    """Chunks of 16 and 400 elements cut blocks of 256: each block still runs whole, once."""
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        for param_dtype in (F32, BF16):
            opts = {"amsgrad": True, "weight_decay": 0.01, "num_threads": num_threads,
                    "max_grad_norm": 10.0, "grad_scale": 2.0}  # fmt: skip
            assert_pair_equal(
                run_pair(fa.AdamW, opts, [17, 5000, 4100, 1, 8193], 3, param_dtype, grad_scale=2)
            )
    finally:
        _kernels.set_chunk_size(saved)


@needs_compiled
@given(
    sizes=st.lists(st.integers(4090, 5200), min_size=1, max_size=3),
    variant=st.sampled_from(Q8_VARIANTS),
    chunk=st.sampled_from([16, 48, 272, 16384]),
    threads=st.sampled_from([1, 2]),
)
@settings(max_examples=25, deadline=None)
def test_fuzz_sizes_chunks_and_threads(sizes, variant, chunk, threads):
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        results = run_pair(cls, {**options, "num_threads": threads}, sizes, 2)
    finally:
        _kernels.set_chunk_size(saved)
    assert_pair_equal(results)


@needs_compiled
def test_one_and_two_threads_give_the_same_bits():
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(1040)  # not a multiple of 256
    try:
        out = []
        for threads in (1, 2):
            p = make(F32, 20_000, 5)
            opt = fa.Adam([p], state_dtype="8bit", num_threads=threads)
            for t in range(3):
                opt.step([make(F32, 20_000, t)])
            out.append((p, opt.state[p]))
    finally:
        _kernels.set_chunk_size(saved)
    assert_same_bits(out[0][0], out[1][0])
    for name in out[0][1]:
        assert_same_bits(out[0][1][name], out[1][1][name])


# ----------------------------------------------------------------- behaviour


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_layout_and_bytes(backend):
    p = make(F32, 10_000, 1)
    small = make(F32, 100, 2)
    opt = fa.AdamW([p, small], state_dtype="8bit", amsgrad=True, backend=backend)
    opt.step([make(F32, 10_000, 3), make(F32, 100, 4)])
    st_ = opt.state[p]
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert st_[name].dtype == U8 and st_[name].shape == p.shape
        assert st_[name + "_absmax"].dtype == F32 and st_[name + "_absmax"].shape == (40,)
    assert sum(st_[n].nbytes for n in st_ if n != "step") == 3 * (10_000 + 4 * 40)
    assert opt.state[small]["exp_avg"].dtype == F32
    assert "exp_avg_absmax" not in opt.state[small]


@pytest.mark.parametrize("backend", BACKENDS)
def test_8bit_adam_follows_float32_adam(backend):
    """A noisy quadratic: 8-bit state reaches the float32 run's loss (within 10 %)."""
    rng = np.random.default_rng(0)
    n = 8192
    curv = np.exp(rng.uniform(-3, 3, n)).astype(np.float32)
    losses = {}
    for dtype in (None, "8bit"):
        w = np.ones(n, np.float32)
        opt = fa.Adam([w], lr=0.02, state_dtype=dtype, backend=backend)
        noise = np.random.default_rng(1)
        for _ in range(300):
            g = curv * w + 0.01 * noise.standard_normal(n).astype(np.float32)
            opt.step([g.astype(np.float32)])
        losses[dtype] = float(0.5 * np.sum(curv * w.astype(np.float64) ** 2))
    start = float(0.5 * curv.sum())
    assert losses["8bit"] < 0.01 * start
    assert abs(losses["8bit"] - losses[None]) <= 0.1 * losses[None] + 1e-3


def test_float64_params_reject_8bit_state():
    p = np.ones(5000)
    opt = fa.Adam([p], state_dtype="8bit")
    with pytest.raises(TypeError, match=r"state_dtype='8bit' applies to float32.*params\[0\]"):
        opt.step([np.ones(5000)])
    assert len(opt.state) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_resumes_bit_for_bit(backend):
    grads = [make(F32, 6000, 10 + t) for t in range(6)]
    p = make(F32, 6000, 1)
    opt = fa.AdamW([p], backend=backend, state_dtype="8bit", weight_decay=0.1)
    for g in grads[:3]:
        opt.step([g])
    saved = pickle.loads(pickle.dumps(copy.deepcopy(opt.state_dict())))
    flat = fa.unflatten_state_dict(fa.flatten_state_dict(saved))
    assert saved["state"][0]["exp_avg"].dtype == U8
    q = p.copy()
    resumed = fa.AdamW([q], backend=backend, state_dtype="8bit", weight_decay=0.1)
    resumed.load_state_dict(flat)
    for g in grads[3:]:
        opt.step([g])
        resumed.step([g])
    assert_same_bits(p, q)
    for name, value in opt.state[p].items():
        assert_same_bits(value, resumed.state[q][name])


def test_conversion_float32_to_8bit_and_back_is_explicit():
    p = make(F32, 5000, 1)
    opt = fa.Adam([p])
    for t in range(2):
        opt.step([make(F32, 5000, t)])
    sd = opt.state_dict()
    q8 = fa.Adam([p.copy()], state_dtype="8bit")
    with pytest.raises(TypeError, match=r"has dtype float32, but this optimizer keeps it in "
                                        r"uint8.*pass convert=True"):  # fmt: skip
        q8.load_state_dict(sd)
    assert len(q8.state) == 0
    q8.load_state_dict(sd, convert=True)
    q = q8.param_groups[0]["params"][0]
    for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        codes, absmax = reference.q8_quantize(sd["state"][0][name], signed)
        assert_same_bits(q8.state[q][name], codes)
        assert_same_bits(q8.state[q][name + "_absmax"], absmax)
    q8.step([make(F32, 5000, 7)])  # and it steps
    back = fa.Adam([q.copy()])
    sd8 = q8.state_dict()
    with pytest.raises(TypeError, match=r"has dtype uint8, but this optimizer keeps it in "
                                        r"float32.*pass convert=True"):  # fmt: skip
        back.load_state_dict(sd8)
    back.load_state_dict(sd8, convert=True)
    r = back.param_groups[0]["params"][0]
    for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        want = reference.q8_dequantize(sd8["state"][0][name], sd8["state"][0][name + "_absmax"],
                                       signed)  # fmt: skip
        assert_same_bits(back.state[r][name], want)
        assert name + "_absmax" not in back.state[r]


def _stepped(backend, **options):
    p = make(F32, 5000, 1)
    opt = fa.Adam([p], state_dtype="8bit", backend=backend, **options)
    opt.step([make(F32, 5000, 2)])
    return p, opt


BAD_STATE = {
    "absmax of the wrong shape": (
        lambda st_: st_.__setitem__("exp_avg_absmax", np.zeros(19, np.float32)), ValueError,
        r"exp_avg_absmax of params\[0\] has shape \(19,\).*one scale per block of 256: \(20,\)",
    ),
    "absmax float64": (
        lambda st_: st_.__setitem__("exp_avg_sq_absmax", np.zeros(20)), TypeError,
        r"exp_avg_sq_absmax of params\[0\] has dtype float64.*keeps it in float32",
    ),
    "codes replaced by float32": (
        lambda st_: st_.__setitem__("exp_avg", np.zeros(5000, np.float32)), TypeError,
        r"exp_avg of params\[0\] has dtype float32.*keeps it in uint8",
    ),
    "absmax missing": (
        lambda st_: st_.pop("exp_avg_absmax"), ValueError,
        r"exp_avg_absmax of params\[0\] is missing",
    ),
    "absmax read-only": (
        lambda st_: st_.__setitem__("exp_avg_absmax", np.zeros(20, np.float32)) or
        st_["exp_avg_absmax"].setflags(write=False), ValueError, r"exp_avg_absmax.*read-only",
    ),
    "absmax aliases the codes": (
        lambda st_: st_.__setitem__("exp_avg_absmax", st_["exp_avg"][:80].view(np.float32)),
        ValueError, r"share memory",
    ),
}  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_STATE))
def test_bad_state_changes_nothing(case, backend):
    edit, error, message = BAD_STATE[case]
    p, opt = _stepped(backend)
    before = snapshot(opt)
    state = dict(opt.state[p])
    edit(opt.state[p])
    with pytest.raises(error, match=message):
        opt.step([make(F32, 5000, 3)])
    opt.state[p].clear()
    opt.state[p].update(state)
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_gradient_changes_nothing(backend):
    p, opt = _stepped(backend)
    before = snapshot(opt)
    g = make(F32, 5000, 3)
    g[4321] = np.nan
    with pytest.raises(FloatingPointError):
        opt.step([g])
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_switching_amsgrad_on_creates_8bit_max(backend):
    p, opt = _stepped(backend)
    opt.param_groups[0]["amsgrad"] = True
    opt.step([make(F32, 5000, 3)])
    assert opt.state[p]["max_exp_avg_sq"].dtype == U8
    assert opt.state[p]["max_exp_avg_sq_absmax"].shape == (20,)


def test_changing_state_dtype_needs_a_conversion():
    p, opt = _stepped("compiled" if COMPILED else "numpy")
    opt.param_groups[0]["state_dtype"] = None
    with pytest.raises(TypeError, match=r"has dtype uint8.*convert=True"):
        opt.step([make(F32, 5000, 3)])


@needs_compiled
@pytest.mark.parametrize("variant", ["adam", "amsgrad", "adamax", "lion"])
def test_extreme_blocks_match_reference(variant, simd):
    """Blocks of tiny, subnormal, zero, huge, inf and NaN values (nonfinite="ignore"): every
    path of the block encoder (fast, subnormal and non-finite absmax) gives the reference's
    bits."""
    cls, options = VARIANTS[variant]
    scales = [1.0, 1e-34, 1e-41, 0.0, 1e38, 1.0, 1.0, 1e-20]
    grads = []
    for t in range(3):
        g = np.concatenate([make(F32, 256, 50 + 10 * t + k, s) for k, s in enumerate(scales)])
        g[5 * 256 + 7] = np.inf
        g[6 * 256 + 9] = np.nan
        grads.append(g.astype(np.float32))
    results = []
    for backend in ("compiled", "numpy"):
        p = make(F32, len(scales) * 256, 1)
        opt = cls([p], backend=backend, state_dtype="8bit", nonfinite="ignore", **options)
        with np.errstate(all="ignore"):
            for g in grads:
                opt.step([g])
        results.append((opt, [p]))
    assert_pair_equal(results)


@needs_compiled
@pytest.mark.parametrize("grad_scale", [4.0, 3.0])
def test_grad_scale_without_clipping_matches_reference(grad_scale, simd):
    """A power-of-two grad_scale folds into the float32 loops' sign elsewhere; 8-bit state
    is staged either way and must still give the reference's bits."""
    opts = {"grad_scale": grad_scale, "weight_decay": 0.01}
    assert_pair_equal(run_pair(fa.AdamW, opts, [5000, 300, 4100], 3, grad_scale=grad_scale))


# ----------------------------------------------------------------- the fused Adam loop

# Adam and AdamW with 8-bit moments run whole blocks in the fused, software-pipelined loop of
# the avx2/avx512 rows (_q8.h, fa_q8_adam_f16c_avx2): each variant of its body (sign,
# coupled L2, decoupled decay), with gradients staged (bfloat16, unscaling, clipping) or
# not, and with a rounded low-precision param written per block.
FUSED_CASES = {
    "adam": (fa.Adam, {}),
    "adam_l2": (fa.Adam, {"weight_decay": 0.05}),
    "adam_maximize": (fa.Adam, {"maximize": True}),
    "adamw": (fa.AdamW, {"weight_decay": 0.1}),
    "adamw_maximize": (fa.AdamW, {"weight_decay": 0.1, "maximize": True}),
}
F16 = np.dtype(np.float16)


def run_fused_pair(cls, options, sizes, steps, param_dtype, grad_dtype, tamper=None):
    results = []
    for backend in ("compiled", "numpy"):
        params = [make(param_dtype, n, 7 + k) for k, n in enumerate(sizes)]
        opt = cls(params, backend=backend, state_dtype="8bit", **options)
        with np.errstate(all="ignore"):
            for t in range(steps):
                if t == 1 and tamper is not None:
                    tamper(opt, params)
                opt.step([make(grad_dtype, n, 50 * t + k, 2.0) for k, n in enumerate(sizes)])
        results.append((opt, params))
    return results


@needs_compiled
@pytest.mark.parametrize("case", sorted(FUSED_CASES))
@pytest.mark.parametrize(
    "param_dtype, grad_dtype", [(F32, F32), (BF16, BF16), (F16, F32)], ids=["f32", "bf16", "f16"]
)
@pytest.mark.parametrize(
    "pre",
    [{}, {"grad_scale": 3.0}, {"grad_scale": 4.0, "max_grad_norm": 1.0}],
    ids=["plain", "unscale", "unscale_clip"],
)
def test_fused_adam_matches_reference(case, param_dtype, grad_dtype, pre, simd):
    from fusedadam import _kernels

    cls, options = FUSED_CASES[case]
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(400)  # segments of 1 or 2 whole blocks, plus partial ones
    try:
        for threads in (1, 2):
            opts = {**options, **pre, "num_threads": threads}
            sizes = [4096, 5000, 8192 + 17]
            assert_pair_equal(run_fused_pair(cls, opts, sizes, 3, param_dtype, grad_dtype))
    finally:
        _kernels.set_chunk_size(saved)


@needs_compiled
@pytest.mark.parametrize(
    "bad", [-0.5, 1e-40, 2e-36, 0.0, np.nan, np.inf, 3e38], ids=lambda x: f"{x:g}"
)
def test_fused_adam_hands_odd_scales_to_the_staged_path(bad, simd):
    """The fused decode forms y * 2**-15 * absmax as y * (absmax * 2**-15) and encodes v
    without taking |v|: a block whose old v scale is negative, or makes that product
    inexact (subnormal), NaN or infinite, runs staged, and a block whose new absmax is 0,
    tiny or not finite is encoded by the general encoder; every block keeps the reference's
    bits."""

    for cls, options in (FUSED_CASES["adam"], FUSED_CASES["adamw"]):
        results = []
        for backend in ("compiled", "numpy"):
            p = make(F32, 256 * 17 + 100, 7)
            opt = cls([p], backend=backend, state_dtype="8bit", nonfinite="ignore", **options)
            opt.step([make(F32, p.size, 1, 2.0)])
            st = opt.state[p]
            st["exp_avg_sq"][256:512] = np.arange(256) % 241  # every code of the map
            st["exp_avg_sq_absmax"][[1, 4, -1]] = bad
            st["exp_avg_absmax"][[2, 4]] = bad
            with np.errstate(all="ignore"):
                for t in range(2):
                    g = make(F32, p.size, 2 + t, 2.0)
                    g[256:512] = 0.0  # so that v = beta2 * the decoded v, every bit of it
                    opt.step([g])
            results.append((opt, [p]))
        assert_pair_equal(results)
