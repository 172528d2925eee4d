"""master="residual": a bfloat16 param's float32 master kept exactly as an int16 residual.

The master decodes exactly ((param << 16) + residual, _residual.h), so every step's master
is the float32-master optimizer's, bit for bit, and the param is that master rounded to
nearest with ties away from zero: it differs from the float32-master optimizer's param
(round to nearest even) only at exact ties with an even high half. Compiled == reference
on every SIMD path, thread count and chunk size.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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

import fusedadam as fa
from fusedadam import functional as F
from fusedadam import reference as R


def rne_bits(master):
    """bfloat16 bits of float32 ``master`` rounded to nearest even (ml_dtypes)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return bits(np.asarray(master, F32).astype(BF16))


def even_ties(master):
    """Where the master is an exact tie with an even high half (the documented deviation)."""
    u = bits(np.asarray(master, F32))
    finite = (u & 0x7FFFFFFF) <= 0x7F800000
    return finite & ((u & 0xFFFF) == 0x8000) & (((u >> 16) & 1) == 0)


def master_of(opt, p):
    st = opt.state[p]
    if "master_residual" in st:
        return R.residual_decode(p, st["master_residual"])
    return st["master_param"]


def assert_matches_float32_master(res, f32):
    """Same master bits; the param is RNE of it except at even ties, where it is one more."""
    (ro, rp), (fo, fp) = res, f32
    for a, b in zip(rp, fp):
        m = master_of(ro, a)
        assert_same_bits(m, master_of(fo, b))
        for name in fo.state[b]:
            if name not in ("master_param", "step"):
                assert_same_bits(ro.state[a][name], fo.state[b][name])
        assert_same_bits(b, rne_bits(m).view(BF16))
        ties = even_ties(m)
        expect = rne_bits(m).astype(np.uint32) + ties
        np.testing.assert_array_equal(bits(a).astype(np.uint32), expect)


# ------------------------------------------------------------------ the codec


def test_codec_special_values_and_every_bfloat16():
    """Every bfloat16 high half with residuals 0, +-1, 0x7fff, -0x8000 round-trips; NaN
    masters become the quiet NaN of their sign; the tie rule at the edges."""
    hi = np.arange(1 << 16, dtype=np.uint32)
    for low in (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
        u = (hi << 16) | np.uint32(low)
        m = u.view(F32)
        p, r = R.residual_encode(m)
        back = bits(R.residual_decode(p, r))
        nan = (u & 0x7FFFFFFF) > 0x7F800000
        np.testing.assert_array_equal(back[~nan], u[~nan])
        np.testing.assert_array_equal(back[nan], (u[nan] & 0x80000000) | 0x7FC00000)
        np.testing.assert_array_equal(bits(p)[nan], ((u[nan] >> 16) & 0x8000) | 0x7FC0)
        dev = bits(p).astype(np.uint32) != rne_bits(m).astype(np.uint32)
        np.testing.assert_array_equal(dev & ~nan, even_ties(m))
    # the largest finite masters: RNE's overflow to inf, decoded back exactly
    for u in (0x7F7FFFFF, 0x7F7F8000, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x80000000, 0):
        m = np.array([u], np.uint32).view(F32)
        p, r = R.residual_encode(m)
        assert bits(p)[0] == rne_bits(m)[0]
        assert bits(R.residual_decode(p, r))[0] == u


@requires_compiled
@pytest.mark.parametrize("state_dtype", [None, "8bit"])
def test_compiled_codec_matches_reference(state_dtype, simd):
    """Arbitrary (param, residual) pairs through a step that leaves the master as it is
    (lr 0, zero gradients): compiled re-encodes exactly as the reference, every bfloat16
    and residual edge included (8-bit moments: the fused x86 loop's codec too)."""
    zero_step_keeps_every_master(
        "residual", state_dtype, np.array([0, 1, -1, 0x7FFF, -0x8000, 0x1234], np.int16),
        R.residual_decode, lambda m: m,
    )  # fmt: skip


@pytest.mark.slow
def test_exhaustive_proof_over_every_float32_master(tmp_path):
    """tools/residual_proof.c: all 2**32 masters decode back bit for bit (NaN: its quiet
    NaN) and the param is round to nearest even except exactly at the 32 640 ties with an
    even high half (about 17 s of one core)."""
    done = exhaustive_proof("residual_proof.c", tmp_path)
    assert "of which ties with even high half, rounded away: 32640" in done.stdout


# ------------------------------------------------------------------ the step


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_algorithm_matches_the_float32_master(variant, state_dtype):
    cls, options = VARIANTS[variant]
    opts = {**options, "state_dtype": state_dtype}
    sizes = [0, 1, 257, 4099]
    assert_matches_float32_master(
        run(cls, opts, sizes, 3, "residual"), run(cls, opts, sizes, 3, "float32")
    )


@requires_compiled
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("chunk", [16, 400, 16384])
def test_compiled_equals_reference_every_isa_thread_count_and_chunk(
    state_dtype, num_threads, chunk, simd
):
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        sizes = [0, 1, 255, 256, 257, 4096, 8193, 17]
        opts = {"weight_decay": 0.1, "state_dtype": state_dtype, "num_threads": num_threads,
                "max_grad_norm": 50.0, "grad_scale": 2.0}  # fmt: skip
        for cls in (fa.AdamW, fa.Adam):
            a = run(cls, opts, sizes, 3, "residual", "compiled")
            b = run(cls, opts, sizes, 3, "residual", "numpy")
            assert_same_runs(a, b)
    finally:
        _kernels.set_chunk_size(saved)


@requires_compiled
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=3),
    variant=st.sampled_from(sorted(VARIANTS)),
    state_dtype=st.sampled_from([None, "bfloat16", "8bit"]),
    chunk=st.sampled_from([16, 48, 272, 16384]),
    threads=st.sampled_from([1, 2]),
)
@settings(max_examples=25, deadline=None)
def test_fuzz_compiled_equals_reference(sizes, variant, state_dtype, chunk, threads):
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    opts = {**options, "state_dtype": state_dtype, "num_threads": threads}
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        a = run(cls, opts, sizes, 2, "residual", "compiled")
        b = run(cls, opts, sizes, 2, "residual", "numpy")
    finally:
        _kernels.set_chunk_size(saved)
    for x, y in zip(a[1], b[1]):
        assert_same_bits(x, y)
        for name, value in a[0].state[x].items():
            assert_same_bits(value, b[0].state[y][name])


def test_ties_round_away_and_the_master_stays_exact():
    """A master that lands exactly on a tie: the float32-master param rounds to even, the
    residual param rounds away from zero; both masters are the same bits."""
    # p = 1.0, a step of exactly 2**-8 (half a bfloat16 ulp at 1.0): master 1 + 2**-8, a
    # tie whose high half (1.0) is even. Lion's update is lr * sign(...).
    out = {}
    for master in ("float32", "residual"):
        p = np.array([1.0, -1.0, 1.0 + 2**-7], F32).astype(BF16)
        opt = fa.Lion([p], lr=2.0**-8, weight_decay=0.0, master=master)
        opt.step([np.array([-1.0, 1.0, -1.0], F32)])
        out[master] = (p.astype(F32), master_of(opt, p))
    assert_same_bits(out["float32"][1], out["residual"][1])
    np.testing.assert_array_equal(out["float32"][1], [1 + 2**-8, -1 - 2**-8, 1 + 2**-7 + 2**-8])
    np.testing.assert_array_equal(out["float32"][0], [1.0, -1.0, 1 + 2**-6])  # to even
    np.testing.assert_array_equal(out["residual"][0], [1 + 2**-7, -1 - 2**-7, 1 + 2**-6])


def test_state_layout_and_bytes():
    p = make(10_000, 1)
    opt = fa.AdamW([p], master="residual", state_dtype="8bit")
    opt.step([make(10_000, 2, F32)])
    st = opt.state[p]
    assert "master_param" not in st
    assert st["master_residual"].dtype == np.int16 and st["master_residual"].shape == p.shape
    total = p.nbytes + sum(v.nbytes for v in st.values() if isinstance(v, np.ndarray))
    assert total / p.size <= 6.05


def test_float16_refuses_and_float32_params_ignore_the_option():
    with pytest.raises(TypeError, match="master='residual' applies to bfloat16 params"):
        fa.Adam([np.zeros(3, np.float16)], master="residual").step([np.zeros(3, np.float16)])
    with pytest.raises(ValueError, match="Invalid master 'float16'"):
        fa.Adam([np.zeros(3, F32)], master="float16")
    for dtype in (np.float32, np.float64):  # no master to keep: the option changes nothing
        p, q = np.ones(5, dtype), np.ones(5, dtype)
        a, b = fa.Adam([p], master="residual"), fa.Adam([q])
        a.step([np.full(5, 0.3, dtype)])
        b.step([np.full(5, 0.3, dtype)])
        assert_same_bits(p, q) if dtype == np.float32 else np.testing.assert_array_equal(p, q)
        assert set(a.state[p]) == set(b.state[q])


def test_failed_step_changes_nothing():
    p = make(300, 1)
    opt = fa.Adam([p], master="residual")
    opt.step([make(300, 2, F32)])
    before = p.copy(), opt.state[p]["master_residual"].copy()
    g = make(300, 3, F32)
    g[7] = np.nan
    with pytest.raises(FloatingPointError):
        opt.step([g])
    assert_same_bits(p, before[0])
    assert_same_bits(opt.state[p]["master_residual"], before[1])


# ------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("state_dtype", [None, "8bit"])
def test_state_dict_round_trip_resumes_bit_for_bit(state_dtype):
    a, (b, params) = straight_and_resumed("residual", state_dtype)
    for x, y in zip(a[1], params):
        assert_same_bits(x, y)
        assert_same_bits(a[0].state[x]["master_residual"], b.state[y]["master_residual"])


def test_convert_between_layouts_is_exact_both_ways():
    """float32 master -> residual -> float32 master: the same master bits; the converted
    run continues exactly as the float32-master run (masters equal, params at ties aside)."""
    import copy

    f32 = run(fa.Adam, {}, [3000, 1], 3, "float32", seed=4)
    sd = copy.deepcopy(f32[0].state_dict())
    params = [p.copy() for p in f32[1]]
    res = fa.Adam(params, master="residual")
    with pytest.raises(ValueError, match="pass convert=True"):
        res.load_state_dict(sd)
    res.load_state_dict(sd, convert=True)
    for p, q in zip(params, f32[1]):
        assert "master_param" not in res.state[p]
        assert_same_bits(master_of(res, p), master_of(f32[0], q))
    # and back
    back_params = [p.copy() for p in params]
    back = fa.Adam(back_params)
    with pytest.raises(ValueError, match="pass convert=True"):
        back.load_state_dict(copy.deepcopy(res.state_dict()))
    back.load_state_dict(copy.deepcopy(res.state_dict()), convert=True)
    for p, q in zip(back_params, f32[1]):
        assert_same_bits(back.state[p]["master_param"], f32[0].state[q]["master_param"])
    grads = [make(p.size, 77, F32) for p in params]
    f32[0].step([g.copy() for g in grads])
    res.step([g.copy() for g in grads])
    assert_matches_float32_master((res, params), f32)


def test_convert_rewrites_the_param_at_a_tie():
    """A float32 master on a tie: its residual layout needs the param rounded away."""
    p = np.array([1.0, 2.0], F32).astype(BF16)
    opt = fa.Adam([p])
    opt.step([np.ones(2, F32)])
    sd = opt.state_dict()
    sd["state"][0]["master_param"][...] = [1 + 2**-8, 2.0]
    q = p.copy()
    res = fa.Adam([q], master="residual")
    res.load_state_dict(sd, convert=True)
    np.testing.assert_array_equal(q.astype(F32), [1 + 2**-7, 2.0])
    assert_same_bits(master_of(res, q), np.array([1 + 2**-8, 2.0], F32))


# ------------------------------------------------------------------ functional, front ends


def test_functional_takes_residual_masters():
    p, q = make(700, 1), make(700, 1)
    m, v, m2, v2 = (np.zeros(700, F32) for _ in range(4))
    master = q.astype(F32)
    residual = np.zeros(700, np.int16)
    for t in range(1, 4):
        g = make(700, t, F32)
        F.adamw([p], [g], [m], [v], step=t, masters=[residual], master="residual")
        F.adamw([q], [g], [m2], [v2], step=t, masters=[master])
    assert_same_bits(R.residual_decode(p, residual), master)


# ------------------------------------------------------------------ convergence


def digits_like(steps=60, master="float32", seed=0, replay=None):
    """A two-layer bfloat16 MLP on a synthetic 10-class problem (bf16_digits-style: the
    forward and backward in float32 from the bfloat16 params), AdamW with 8-bit moments.
    With ``replay`` (a list of gradient pairs) the optimizer steps those instead of its
    own (open loop). Returns the losses, params, optimizer, the gradients stepped and,
    per step, how many masters sat on an even tie after it."""
    rng, x, labels, w1, w2 = digits_problem(seed)
    opt = fa.AdamW([w1, w2], lr=3e-3, master=master, state_dtype="8bit")
    losses, ties, grads = [], [], []
    for t in range(steps):
        loss, g = minibatch_loss_and_grads(rng, x, labels, w1, w2)
        losses.append(loss)
        if replay is not None:
            g = replay[t]
        grads.append([a.copy() for a in g])
        opt.step(g)
        ties.append(sum(int(even_ties(master_of(opt, w)).sum()) for w in (w1, w2)))
    return losses, (w1, w2), opt, grads, ties


def test_training_matches_the_float32_master_run():
    """Closed loop (the gradients come from the params): the residual run is the
    float32-master run bit for bit (losses, params, masters) up to the first step that
    leaves a master on an even tie, where the params first differ by one bfloat16 ulp
    (about 2**-16 of the element updates; 7 of 568 320 here); the final losses agree
    closely. Open loop (the float32 run's gradients replayed): the masters are the same
    bits at every step and the params differ exactly at the ties."""
    lf, wf, of, grads, ties = digits_like()
    lr, wr, orr, _, _ = digits_like(master="residual")
    assert sum(ties) == 7 and lf[-1] < 0.8 * lf[0]
    first = next(t for t, n in enumerate(ties) if n)
    assert lf[: first + 1] == lr[: first + 1]
    assert abs(lf[-1] - lr[-1]) < 0.02 * lf[-1]
    _, wp, op, _, _ = digits_like(master="residual", replay=grads)
    assert_matches_float32_master((op, list(wp)), (of, list(wf)))
