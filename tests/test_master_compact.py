"""master="compact" (an int8 master_residual, lossy) and state_dtype="8bit_companded".

The compact master is the residual mode's int16 residual rounded to its top byte
(_residual.h): it decodes within 128 float32 steps of the master (255 where the clamp
moves it), exactly for bfloat16-valued masters, inf and NaN, and re-encodes to the same
bits. The companded map is FlashOptim's softsign / square-root companding on the 8-bit
block layout, with int8 code arrays. Compiled == reference on every SIMD path, thread
count and chunk size, for both and for each with the other modes.
"""

import copy

import numpy as np
import pytest
from _master_checks import (
    BF16,
    F32,
    assert_same_bits,
    assert_same_runs,
    bits,
    digits_problem,
    exhaustive_proof,
    make,
    minibatch_loss_and_grads,
    run,
    straight_and_resumed,
    zero_step_keeps_every_master,
)
from conftest import VARIANTS, requires_compiled
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import functional as F
from fusedadam import reference as R

MODES = [  # (master, state_dtype) pairs that exercise the new paths
    ("compact", None),
    ("compact", "bfloat16"),
    ("compact", "8bit"),
    ("compact", "8bit_companded"),
    ("residual", "8bit_companded"),
    ("float32", "8bit_companded"),
]


# ------------------------------------------------------------------ the compact codec


def steps_apart(u, v):
    """How many float32 steps apart two finite bit patterns of one sign are."""
    return np.abs(u.astype(np.int64) - v.astype(np.int64))


def test_compact_codec_every_low_half():
    """For several high halves, every one of the 65 536 low halves: the error is at most
    128 steps (255 for the 128 clamped residuals 0x7f80-0x7fff), the param is the residual
    mode's, and a decoded master encodes back to the same param and code."""
    low = np.arange(1 << 16, dtype=np.uint32)
    for hi in (0x0000, 0x0001, 0x3F80, 0x3F7F, 0x4049, 0xBF80, 0xC2F7, 0x7F7E, 0x8000):
        u = (np.uint32(hi) << np.uint32(16)) | low
        m = u.view(F32)
        p, c = R.compact_encode(m)
        assert c.dtype == np.int8
        assert_same_bits(p, R.residual_encode(m)[0])
        back = bits(R.compact_decode(p, c))
        err = steps_apart(u, back)
        r = R.residual_encode(m)[1]
        clamped = r >= 0x7F80
        assert err[~clamped].max() <= 128 and err[clamped].max() <= 255
        assert clamped.sum() == 128
        p2, c2 = R.compact_encode(back.view(F32))
        assert_same_bits(p2, p)
        assert_same_bits(c2, c)


def test_compact_codec_exact_values():
    """bfloat16 values (a new state: residual 0), zeros, inf and NaN decode exactly (NaN:
    the quiet NaN of its sign); the largest finite masters decode to inf, as their param."""
    hi = np.arange(1 << 16, dtype=np.uint32)
    m = (hi << np.uint32(16)).view(F32)
    p, c = R.compact_encode(m)
    nan = np.isnan(m)
    assert not c.any()
    assert_same_bits(R.compact_decode(p, c)[~nan], m[~nan])
    quiet = (hi[nan] << np.uint32(16) & np.uint32(0x80000000)) | np.uint32(0x7FC00000)
    np.testing.assert_array_equal(bits(R.compact_decode(p, c))[nan], quiet)
    top = np.array([0x7F7FFFFF, 0xFF7FFF90], np.uint32).view(F32)
    p, c = R.compact_encode(top)
    assert np.isinf(R.compact_decode(p, c)).all()


def test_compact_relative_error_bound():
    """|decoded - master| <= 2**-15 |master| for normal masters (random, many binades)."""
    rng = np.random.default_rng(3)
    m = (rng.standard_normal(200_000) * np.exp2(rng.integers(-60, 60, 200_000))).astype(F32)
    p, c = R.compact_encode(m)
    d = R.compact_decode(p, c).astype(np.float64)
    rel = np.abs(d - m) / np.abs(m.astype(np.float64))
    assert rel.max() <= 2.0**-15
    assert np.median(rel) < 2.0**-17  # uniform in +-128 steps: typically a quarter of that


@pytest.mark.slow
def test_exhaustive_check_over_every_float32_master(tmp_path):
    """tools/compact_proof.c: over all 2**32 masters, the bound (128 steps, 255 clamped),
    re-encoding to the same bits, 2**-15 relative, NaN and the top of the range (about 30 s
    of one core)."""
    exhaustive_proof("compact_proof.c", tmp_path, libs=["-lm"])


@requires_compiled
@pytest.mark.parametrize("state_dtype", [None, "8bit", "8bit_companded"])
def test_compiled_compact_codec_matches_reference(state_dtype, simd):
    """Arbitrary (param, code) pairs through a step that leaves the master as it is (lr 0,
    zero gradients): compiled decodes and re-encodes as the reference, every bfloat16 and
    code edge included."""
    zero_step_keeps_every_master(
        "compact", state_dtype, np.array([0, 1, -1, 127, -128, 0x35], np.int8),
        R.compact_decode, lambda m: R.compact_decode(*R.compact_encode(m)),
    )  # fmt: skip


# ------------------------------------------------------------------ the companded map


def test_companded_map_values():
    """Signed: 0, +-1 at magnitude 125, odd, increasing, denser near 0 than a linear map;
    unsigned: t**2 from 0 to 1 at 253; the inf/NaN codes as the float map's."""
    s, u = R.q8c_values(True), R.q8c_values(False)
    assert s[0] == 0 and s[125] == 1 and s[0x80 | 125] == -1
    np.testing.assert_array_equal(s[0x81 : 0x80 + 126], -s[1:126])
    assert (np.diff(s[:126]) > 0).all() and (np.diff(u[:254]) > 0).all()
    assert s[1] < 1 / 125 and u[253] == 1 and u[1] == np.float32(np.float32(1 / 253) ** 2)
    for signed, table in ((True, s), (False, u)):
        special = R.q8_nonfinite(np.arange(256, dtype=np.uint8), signed)
        assert_same_bits(table[special], R.q8_values(signed)[special])


@pytest.mark.parametrize("signed", [True, False])
def test_companded_quantize_round_trips_codes(signed):
    """Decoding then re-encoding a block's codes gives the same codes when the block's
    absmax code is present (the scale is then the same): the map has no ambiguity."""
    rng = np.random.default_rng(1)
    top = 125 if signed else 253
    mags = rng.integers(0, top + 1, 4096).astype(np.uint8)
    mags[::256] = top
    sign = (rng.integers(0, 2, 4096).astype(np.uint8) << 7) if signed else 0
    codes = (mags | np.where(mags > 0, sign, 0).astype(np.uint8)).view(np.int8)
    absmax = rng.uniform(1e-3, 10, 16).astype(F32)
    values = R.q8_dequantize(codes, absmax, signed)
    again, scale = R.q8_quantize(values, signed, companded=True)
    assert again.dtype == np.int8
    assert_same_bits(scale, absmax)
    assert_same_bits(again, codes)


def test_companded_error_is_smaller_for_heavy_tails():
    """The reason for the companding: on a heavy-tailed first moment, the softsign map's
    relative error on the small values is far below a linear 8-bit map's."""
    rng = np.random.default_rng(2)
    m = (rng.standard_t(2, 1 << 16) * 1e-3).astype(F32)
    codes, absmax = R.q8_quantize(m, True, companded=True)
    back = R.q8_dequantize(codes, absmax, True)
    scale = np.repeat(absmax, 256)
    linear = np.round(m / scale * 127) / 127 * scale
    small = np.abs(m) < 0.05 * scale
    err_c = np.median(np.abs(back - m)[small] / np.abs(m[small]))
    err_l = np.median(np.abs(linear - m)[small] / np.abs(m[small]))
    assert err_c < 0.6 * err_l


def test_8bit_is_unchanged_by_the_companded_option():
    """state_dtype="8bit" still keeps uint8 codes of the float map (bit for bit: the
    reference is unchanged, test_state8bit checks compiled against it)."""
    v = np.linspace(-3, 3, 4096, dtype=F32)
    codes, absmax = R.q8_quantize(v, True)
    assert codes.dtype == np.uint8
    want = R.q8_values(True)[codes] * np.repeat(absmax, 256)
    assert_same_bits(R.q8_dequantize(codes, absmax, True), want)


# ------------------------------------------------------------------ the step


@requires_compiled
@pytest.mark.parametrize("master,state_dtype", MODES)
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("chunk", [16, 400, 16384])
def test_compiled_equals_reference_every_isa_thread_count_and_chunk(
    master, state_dtype, num_threads, chunk, simd
):
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        sizes = [0, 1, 255, 256, 257, 4096, 8193, 17]
        opts = {"weight_decay": 0.1, "state_dtype": state_dtype, "num_threads": num_threads,
                "max_grad_norm": 50.0, "grad_scale": 2.0}  # fmt: skip
        for cls in (fa.AdamW, fa.Adam):
            a = run(cls, opts, sizes, 3, master, "compiled")
            b = run(cls, opts, sizes, 3, master, "numpy")
            assert_same_runs(a, b)
    finally:
        _kernels.set_chunk_size(saved)


@requires_compiled
@pytest.mark.parametrize("master,state_dtype", [("compact", "8bit_companded"), ("compact", "8bit")])
def test_many_steps_compiled_equals_reference(master, state_dtype):
    opts = {"weight_decay": 0.01, "state_dtype": state_dtype, "num_threads": 2}
    a = run(fa.AdamW, opts, [4099, 300], 40, master, "compiled")
    b = run(fa.AdamW, opts, [4099, 300], 40, master, "numpy")
    assert_same_runs(a, b)


@requires_compiled
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=3),
    variant=st.sampled_from(sorted(VARIANTS)),
    mode=st.sampled_from(MODES),
    chunk=st.sampled_from([16, 48, 272, 16384]),
    threads=st.sampled_from([1, 2]),
)
@settings(max_examples=30, deadline=None)
def test_fuzz_compiled_equals_reference(sizes, variant, mode, chunk, threads):
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    master, state_dtype = mode
    opts = {**options, "state_dtype": state_dtype, "num_threads": threads}
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        a = run(cls, opts, sizes, 2, master, "compiled")
        b = run(cls, opts, sizes, 2, master, "numpy")
    finally:
        _kernels.set_chunk_size(saved)
    assert_same_runs(a, b)


@requires_compiled
def test_nonfinite_values_in_companded_state(simd):
    """nonfinite="ignore": inf and NaN gradients reach the moments, which keep them in
    their own codes; compiled == reference."""
    out = []
    for backend in ("compiled", "numpy"):
        p = make(5000, 1)
        opt = fa.Adam([p], master="compact", state_dtype="8bit_companded",
                      nonfinite="ignore", backend=backend)  # fmt: skip
        for t in range(3):
            g = make(5000, t, F32)
            g[[3, 700, 4000]] = [np.inf, -np.inf, np.nan]
            opt.step([g])
        out.append((opt, [p]))
    assert_same_runs(*out)
    assert R.q8_nonfinite(bits(out[0][0].state[out[0][1][0]]["exp_avg"]), True).any()


def test_state_layout_and_bytes():
    """compact + 8-bit moments: at most 5.05 bytes per param; the companded codes int8."""
    for state_dtype in ("8bit", "8bit_companded"):
        p = make(100_000, 1)
        opt = fa.AdamW([p], master="compact", state_dtype=state_dtype)
        opt.step([make(100_000, 2, F32)])
        st_ = opt.state[p]
        assert "master_param" not in st_
        assert st_["master_residual"].dtype == np.int8
        assert st_["exp_avg"].dtype == (np.int8 if state_dtype == "8bit_companded" else np.uint8)
        total = p.nbytes + sum(v.nbytes for v in st_.values() if isinstance(v, np.ndarray))
        assert total / p.size <= 5.05


def test_refusals():
    with pytest.raises(TypeError, match="master='compact' applies to bfloat16 params"):
        fa.Adam([np.zeros(3, np.float16)], master="compact").step([np.zeros(3, np.float16)])
    with pytest.raises(ValueError, match="Invalid state_dtype '8bit_compand'"):
        fa.Adam([np.zeros(3, F32)], state_dtype="8bit_compand")
    with pytest.raises(TypeError, match="float64"):
        p = np.zeros(5000)
        fa.Adam([p], state_dtype="8bit_companded").step([np.zeros(5000)])
    for dtype in (np.float32, np.float64):  # no master to keep: the option changes nothing
        p, q = np.ones(5, dtype), np.ones(5, dtype)
        a, b = fa.Adam([p], master="compact"), fa.Adam([q])
        a.step([np.full(5, 0.3, dtype)])
        b.step([np.full(5, 0.3, dtype)])
        np.testing.assert_array_equal(p, q)
        assert set(a.state[p]) == set(b.state[q])


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_failed_step_changes_nothing(backend):
    p = make(5000, 1)
    opt = fa.Adam([p], master="compact", state_dtype="8bit_companded", backend=backend)
    opt.step([make(5000, 2, F32)])
    before = p.copy(), {k: np.copy(v) for k, v in opt.state[p].items()}
    g = make(5000, 3, F32)
    g[7] = np.nan
    with pytest.raises(FloatingPointError):
        opt.step([g])
    assert_same_bits(p, before[0])
    for name, value in before[1].items():
        assert_same_bits(opt.state[p][name], value)


# ------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("state_dtype", [None, "8bit", "8bit_companded"])
def test_state_dict_round_trip_resumes_bit_for_bit(state_dtype):
    assert_same_runs(*straight_and_resumed("compact", state_dtype))


@pytest.mark.parametrize("source", ["float32", "residual"])
def test_convert_to_compact_and_back(source):
    """A float32 master (or an exact int16 residual) converts to the compact layout as
    compact_encode says (param rewritten as the master encodes); compact converts back to
    the master it decodes to. Without convert=True the load refuses."""
    src = run(fa.Adam, {}, [3000, 1], 3, source, seed=4)
    sd = copy.deepcopy(src[0].state_dict())
    masters = [
        src[0].state[p]["master_param"] if source == "float32"
        else R.residual_decode(p, src[0].state[p]["master_residual"])
        for p in src[1]
    ]  # fmt: skip
    params = [p.copy() for p in src[1]]
    comp = fa.Adam(params, master="compact")
    with pytest.raises((ValueError, TypeError), match="convert=True"):
        comp.load_state_dict(copy.deepcopy(sd))
    comp.load_state_dict(sd, convert=True)
    for p, m in zip(params, masters):
        want_p, want_c = R.compact_encode(m)
        assert_same_bits(p, want_p)
        assert_same_bits(comp.state[p]["master_residual"], want_c)
    back_params = [p.copy() for p in params]
    back = fa.Adam(back_params, master=source)
    with pytest.raises((ValueError, TypeError), match="convert=True"):
        back.load_state_dict(copy.deepcopy(comp.state_dict()))
    back.load_state_dict(copy.deepcopy(comp.state_dict()), convert=True)
    for p, q in zip(back_params, params):
        decoded = R.compact_decode(q, comp.state[q]["master_residual"])
        if source == "float32":
            assert_same_bits(back.state[p]["master_param"], decoded)
        else:
            assert_same_bits(R.residual_decode(p, back.state[p]["master_residual"]), decoded)


def test_convert_between_the_8bit_maps():
    """8bit <-> 8bit_companded: the codes are requantized from their values (the dtype of
    the codes says which map they are in); without convert=True the load refuses."""
    a = run(fa.AdamW, {"state_dtype": "8bit"}, [5000], 2, "float32")
    sd = copy.deepcopy(a[0].state_dict())
    q = [p.copy() for p in a[1]]
    b = fa.AdamW(q, state_dtype="8bit_companded")
    with pytest.raises(TypeError, match="convert=True"):
        b.load_state_dict(copy.deepcopy(sd))
    b.load_state_dict(sd, convert=True)
    sa, sb = a[0].state[a[1][0]], b.state[q[0]]
    for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        assert sb[name].dtype == np.int8
        values = R.q8_dequantize(sa[name], sa[name + "_absmax"], signed)
        codes, absmax = R.q8_quantize(values, signed, companded=True)
        assert_same_bits(sb[name], codes)
        assert_same_bits(sb[name + "_absmax"], absmax)
    c = fa.AdamW([p.copy() for p in q], state_dtype=None)
    c.load_state_dict(copy.deepcopy(b.state_dict()), convert=True)
    st_ = c.state[c.param_groups[0]["params"][0]]
    assert_same_bits(st_["exp_avg"], R.q8_dequantize(sb["exp_avg"], sb["exp_avg_absmax"], True))


# ------------------------------------------------------------------ functional, front ends


def test_functional_takes_compact_masters():
    p, q = make(700, 1), make(700, 1)
    m, v = np.zeros(700, F32), np.zeros(700, F32)
    residual = np.zeros(700, np.int8)
    opt = fa.AdamW([q], master="compact")
    for t in range(1, 4):
        g = make(700, t, F32)
        F.adamw([p], [g], [m], [v], step=t, masters=[residual], master="compact")
        opt.step([g])
    assert_same_bits(p, q)
    assert_same_bits(residual, opt.state[q]["master_residual"])
    assert_same_bits(m, opt.state[q]["exp_avg"])


def test_torch_front_end():
    """The torch front end takes the options through the shared validation; its state
    tensors then include int8 ones (compact residual, companded codes)."""
    torch = pytest.importorskip("torch")
    from fusedadam import torch as ft

    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.bfloat16))
    q = make(5000, 0)
    q[...] = p.detach().float().numpy().astype(BF16)
    opt = ft.AdamW([p], master="compact", state_dtype="8bit_companded")
    ref = fa.AdamW([q], master="compact", state_dtype="8bit_companded")
    for t in range(2):
        g = make(5000, 10 + t)  # a bfloat16 gradient, as autograd gives a bfloat16 param
        p.grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
        opt.step()
        ref.step([g])
    assert_same_bits(p.detach().view(torch.int16).numpy(), q)
    for name, value in ref.state[q].items():
        assert_same_bits(opt.state[p][name].numpy(), value)


# ------------------------------------------------------------------ convergence


def digits_like(steps, master, state_dtype, seed=0):
    """A two-layer bfloat16 MLP on a synthetic 10-class problem, AdamW (the residual
    tests' problem); returns the losses."""
    rng, x, labels, w1, w2 = digits_problem(seed)
    opt = fa.AdamW([w1, w2], lr=3e-3, master=master, state_dtype=state_dtype)
    losses = []
    for _ in range(steps):
        loss, grads = minibatch_loss_and_grads(rng, x, labels, w1, w2)
        losses.append(loss)
        opt.step(grads)
    return losses


def test_training_tracks_the_float32_master_run():
    """Compact and compact + companded train the small MLP about as the float32-master
    8-bit run does (a sanity check; the convergence study is in examples/)."""
    base = digits_like(80, "float32", "8bit")
    for state_dtype in ("8bit", "8bit_companded"):
        losses = digits_like(80, "compact", state_dtype)
        assert losses[-1] < 0.8 * losses[0]
        assert np.mean(losses[-10:]) < np.mean(base[-10:]) * 1.1 + 0.02
