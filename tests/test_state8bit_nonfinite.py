"""8-bit state: an inf or NaN moment stays in its element.

A block's scale is the largest *finite* |value| of its 256 elements; an inf or NaN keeps a
code of its own (signed map: 0x7F/0xFF for +inf/-inf, 0x7E for NaN; unsigned map: 0xFF
for inf, 0xFE for NaN), decoded without the scale. So the other elements of the block keep
the codes and values they would have without it, and the element keeps IEEE's inf or NaN as
float32 state does. The map (reference), then the compiled block loops against it on every
instruction-set row (the staged decode/encode, the fused x86 Adam loop with float32,
bfloat16, master="residual" and master="compact" params) and thread count, and the
non-finite policies.
"""

import ml_dtypes
import numpy as np
import pytest
import _bits
from _bits import assert_same_bits
from conftest import BACKENDS, COMPILED, VARIANTS, assert_unchanged, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import _algorithms, reference

F32 = np.dtype(np.float32)
BF16 = np.dtype(ml_dtypes.bfloat16)
U8 = np.dtype(np.uint8)
# state names stored with the unsigned map (every algorithm's ``nonnegative``)
UNSIGNED = {name for a in _algorithms.ALGORITHMS.values() for name in a.nonnegative}
BAD = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}

needs_compiled = pytest.mark.skipif(not COMPILED, reason="extension not built")


def make(n, seed, scale=1.0, dtype=F32):
    return _bits.make(dtype, n, seed, scale)


# ----------------------------------------------------------------- the map (reference)


def _code_of(value, signed):
    if np.isnan(value):
        return 0x7E if signed else 0xFE
    return (0xFF if value < 0 else 0x7F) if signed else 0xFF


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize(
    "size, where",
    [(256, 0), (256, 255), (256, 128), (1, 0), (300, 299), (300, 256), (700, 511)],
    ids=[
        "first",
        "last",
        "middle",
        "block of one",
        "partial: last",
        "partial: first",
        "second block: last",
    ],  # fmt: skip
)
def test_a_nonfinite_value_keeps_its_own_code_and_the_block_its_finite_scale(
    signed, bad, size, where
):
    values = make(size, 1, 3.0)
    if not signed:
        values = np.abs(values)
    clean_codes, clean_scale = reference.q8_quantize(
        np.where(np.arange(size) == where, 0, values), signed
    )
    values[where] = BAD[bad]
    codes, scale = reference.q8_quantize(values, signed)
    assert_same_bits(scale, clean_scale)  # the absmax of the finite values
    assert np.isfinite(scale).all()
    others = np.arange(size) != where
    assert_same_bits(codes[others], clean_codes[others])
    assert codes[where] == _code_of(BAD[bad], signed)
    back = reference.q8_dequantize(codes, scale, signed)
    assert np.isfinite(back[others]).all()
    if np.isnan(BAD[bad]):
        assert np.isnan(back[where])
    else:  # the unsigned map keeps |value|
        assert back[where] == (BAD[bad] if signed else np.inf)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("size", [1, 256, 300])
def test_a_block_of_nothing_but_inf_and_nan_has_scale_zero_and_decodes_back(signed, size):
    values = np.array([np.inf, -np.inf, np.nan] * 100, np.float32)[:size]
    codes, scale = reference.q8_quantize(values, signed)
    assert scale.tolist() == [0.0] * -(-size // 256)  # no finite value in any block
    back = reference.q8_dequantize(codes, scale, signed)
    assert_same_bits(np.isnan(back), np.isnan(values))
    want = values if signed else np.abs(values)
    finite = ~np.isnan(values)
    assert_same_bits(back[finite], want[finite])


# ----------------------------------------------------------------- compiled == reference

# A param of 16 whole blocks and a partial one of 1 or 100 elements (the staged path's
# partial block; the fused loop takes the whole ones): gradients that put inf, -inf and NaN
# into the moments at the first, last and middle element of block 0, block 1 all of them,
# one in a block of subnormal and one in a block of huge moments, and the last element of
# the param. nonfinite="ignore" lets them through.
SIZES = [4096 + 1, 4096 + 100]  # 8-bit from 4096 elements


def bad_grads(size, steps, dtype):
    grads = []
    for t in range(steps):
        g = make(size, 10 + t, 2.0)
        if t == 0:
            g[[0, 255, 128]] = [np.inf, -np.inf, np.nan]
            g[256:512] = np.resize(np.array([np.inf, -np.inf, np.nan], np.float32), 256)
            g[-1] = -np.inf
            g[1280:1536] *= np.float32(1e-39)  # subnormal moments beside an inf
            g[1283] = np.inf
            g[1536:1792] *= np.float32(1e37)  # huge finite moments beside a NaN
            g[1541] = np.nan
        if t == 1:
            g[700] = np.float32(1e30)  # finite: its square overflows v only
        grads.append(g.astype(dtype))
    return grads


def run(backend, cls, options, size, param_dtype, grad_dtype, state_dtype="8bit", steps=3,
        **extra):  # fmt: skip
    p = make(size, 1, 1.0, param_dtype)
    opt = cls([p], backend=backend, state_dtype=state_dtype, nonfinite="ignore",
              **options, **extra)  # fmt: skip
    with np.errstate(all="ignore"):
        for g in bad_grads(size, steps, grad_dtype):
            opt.step([g])
    return p, opt


def decoded(opt, p):
    """The float32 moments of ``p``: 8-bit ones dequantized."""
    out = {}
    for name, a in opt.state[p].items():
        if name == "step" or name.endswith("_absmax") or np.ndim(a) == 0:
            continue
        if a.dtype == U8:
            out[name] = reference.q8_dequantize(
                a, opt.state[p][name + "_absmax"], name not in UNSIGNED
            )
        else:
            out[name] = np.asarray(a, np.float32)
    return out


def assert_runs_equal(a, b):
    (pa, oa), (pb, ob) = a, b
    assert_same_bits(pa, pb)
    assert oa.state[pa].keys() == ob.state[pb].keys()
    for name, value in oa.state[pa].items():
        assert_same_bits(value, ob.state[pb][name])


NONFINITE_VARIANTS = ["adam", "adam_l2", "adamw", "amsgrad", "adamax", "lion", "adabelief",
                      "nadam", "ademamix", "adan"]  # fmt: skip


@needs_compiled
@pytest.mark.parametrize("variant", NONFINITE_VARIANTS)
@pytest.mark.parametrize("size", SIZES)
def test_nonfinite_moments_match_the_reference_and_stay_in_their_elements(variant, size, simd):
    """Every row against the NumPy reference bit for bit, and the elements that are not
    finite (param and every moment) exactly those of float32 state."""
    cls, options = VARIANTS[variant]
    compiled = run("compiled", cls, options, size, F32, F32)
    numpy = run("numpy", cls, options, size, F32, F32)
    assert_runs_equal(compiled, numpy)
    p, opt = compiled
    assert opt.state[p]["exp_avg"].dtype == U8
    scales = [a for k, a in opt.state[p].items() if k.endswith("_absmax")]
    assert all(np.isfinite(s).all() for s in scales)
    ref_p, ref_opt = run("numpy", cls, options, size, F32, F32, state_dtype=None)
    assert_same_bits(np.isfinite(p), np.isfinite(ref_p))
    assert (~np.isfinite(p)).sum() > 0
    want = decoded(ref_opt, ref_p)
    for name, value in decoded(opt, p).items():
        assert_same_bits(np.isfinite(value), np.isfinite(want[name]))
        assert_same_bits(np.isnan(value), np.isnan(want[name]))


@needs_compiled
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk", [16, 400, 16384])
@pytest.mark.parametrize(
    "param_dtype, grad_dtype, extra",
    [
        (F32, F32, {}),
        (BF16, BF16, {}),
        (BF16, BF16, {"master": "residual"}),
        (BF16, BF16, {"master": "compact"}),
    ],
    ids=["f32", "bf16", "bf16 residual", "bf16 compact"],
)
@pytest.mark.parametrize("variant", ["adam", "adamw", "amsgrad"])
def test_fused_and_staged_paths_every_thread_count_and_chunk(
    variant, param_dtype, grad_dtype, extra, chunk, threads, simd
):
    """The fused x86 Adam loop hands a block with an inf/NaN code to the staged path and
    encodes a block with a new inf/NaN moment by the general encoder; chunks of 16 and 400
    elements cut blocks (each still runs whole, once)."""
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    options = {**options, "num_threads": threads, **extra}
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        for size in SIZES:
            assert_runs_equal(
                run("compiled", cls, options, size, param_dtype, grad_dtype),
                run("numpy", cls, options, size, param_dtype, grad_dtype),
            )
    finally:
        _kernels.set_chunk_size(saved)


@needs_compiled
@pytest.mark.parametrize("variant", ["adam", "adamax", "lion"])
def test_every_nonfinite_code_written_into_the_state_decodes_alike(variant, simd):
    """Codes of inf and NaN (and those never written: 0xFE of the signed map, 241-253 of
    the unsigned one) put into the state by hand, every block and scale: the compiled
    decode equals the reference's."""
    cls, options = VARIANTS[variant]
    runs = []
    for backend in ("compiled", "numpy"):
        p = make(4096 + 77, 1)
        opt = cls([p], backend=backend, state_dtype="8bit", nonfinite="ignore", **options)
        opt.step([make(p.size, 2)])
        rng = np.random.default_rng(3)
        for name, a in opt.state[p].items():
            if getattr(a, "dtype", None) == U8:
                a[rng.integers(0, a.size, 300)] = rng.choice(
                    [0x7E, 0x7F, 0xFE, 0xFF, 241, 253], 300
                )
                opt.state[p][name + "_absmax"][3] = 0.0
        with np.errstate(all="ignore"):
            opt.step([make(p.size, 4)])
            opt.step([make(p.size, 5)])
        runs.append((p, opt))
    assert_runs_equal(*runs)


@needs_compiled
@given(
    size=st.integers(4096, 4096 + 600),
    bad=st.lists(
        st.tuples(st.integers(0, 4096 + 599), st.sampled_from(sorted(BAD)), st.integers(0, 2)),
        min_size=1,
        max_size=12,
    ),
    variant=st.sampled_from(NONFINITE_VARIANTS),
    chunk=st.sampled_from([16, 272, 16384]),
    threads=st.sampled_from([1, 2]),
)
@settings(max_examples=30, deadline=None)
def test_fuzz_nonfinite_positions(size, bad, variant, chunk, threads):
    """Random sizes and random infs and NaNs at random steps: compiled == reference bit for
    bit, and non-finite exactly where float32 state is."""
    from fusedadam import _kernels

    cls, options = VARIANTS[variant]
    grads = [make(size, 20 + t, 2.0) for t in range(3)]
    for where, kind, t in bad:
        grads[t][where % size] = BAD[kind]
    runs = []
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(chunk)
    try:
        for backend, state_dtype in (("compiled", "8bit"), ("numpy", "8bit"), ("numpy", None)):
            p = make(size, 1)
            opt = cls([p], backend=backend, state_dtype=state_dtype, nonfinite="ignore",
                      num_threads=threads, **options)  # fmt: skip
            with np.errstate(all="ignore"):
                for g in grads:
                    opt.step([g.copy()])
            runs.append((p, opt))
    finally:
        _kernels.set_chunk_size(saved)
    assert_runs_equal(runs[0], runs[1])
    (p, opt), (p32, opt32) = runs[0], runs[2]
    assert_same_bits(np.isfinite(p), np.isfinite(p32))
    want = decoded(opt32, p32)
    for name, value in decoded(opt, p).items():
        assert_same_bits(np.isnan(value), np.isnan(want[name]))
        assert_same_bits(np.isinf(value), np.isinf(want[name]))


# ----------------------------------------------------------------- the non-finite policies


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonfinite", ["error", "skip"])
def test_a_huge_finite_gradient_steps_under_error_and_skip_and_overflows_one_element(
    backend, nonfinite
):
    """The gradient scan sees only finite values: the step runs, v of that one element
    overflows to inf (as with float32 state, whose param it then leaves in place), the
    block's other elements and later steps are unaffected; a NaN gradient after it is
    still refused or skipped with nothing changed."""
    runs = {}
    for state_dtype in ("8bit", None):
        p = make(5000, 1)
        opt = fa.Adam([p], backend=backend, state_dtype=state_dtype, nonfinite=nonfinite)
        g = make(5000, 2)
        g[300] = np.float32(1e30)
        with np.errstate(over="ignore"):
            opt.step([g])
            for t in range(3):
                opt.step([make(5000, 3 + t)])
        assert opt.skipped_steps == 0
        runs[state_dtype] = (p, opt)
    p, opt = runs["8bit"]
    st = opt.state[p]
    assert np.isfinite(p).all()
    v = reference.q8_dequantize(st["exp_avg_sq"], st["exp_avg_sq_absmax"], False)
    assert np.flatnonzero(~np.isfinite(v)).tolist() == [300]
    assert st["exp_avg_sq"][300] == 0xFF
    assert np.isfinite(st["exp_avg_sq_absmax"]).all()
    p32, opt32 = runs[None]
    assert p[300] == p32[300]  # v = inf: the element's update is 0 from the first step
    np.testing.assert_allclose(p, p32, rtol=0, atol=1e-2)

    before = snapshot(opt)
    g = make(5000, 9)
    g[4999] = np.nan
    if nonfinite == "error":
        with pytest.raises(FloatingPointError):
            opt.step([g])
        assert opt.skipped_steps == 0
    else:
        opt.step([g])
        assert opt.skipped_steps == 1
    assert_unchanged(opt, before)


@needs_compiled
def test_huge_finite_gradient_compiled_equals_reference():
    runs = []
    for backend in ("compiled", "numpy"):
        p = make(5000, 1)
        opt = fa.AdamW([p], backend=backend, state_dtype="8bit", weight_decay=0.1)
        g = make(5000, 2)
        g[[0, 255, 256, 4999]] = np.float32(3e38)
        with np.errstate(over="ignore"):
            for t in range(3):
                opt.step([g if t == 0 else make(5000, 3 + t)])
        runs.append((p, opt))
    assert_runs_equal(*runs)


# ----------------------------------------------------------------- state dicts


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_codes_round_trip_and_convert_to_float_state(backend):
    p = make(5000, 1)
    opt = fa.Adam([p], backend=backend, state_dtype="8bit", nonfinite="ignore")
    g = make(5000, 2)
    g[[7, 4000]] = [np.inf, np.nan]
    with np.errstate(all="ignore"):
        opt.step([g])
    sd = opt.state_dict()
    m = sd["state"][0]["exp_avg"]
    assert m[7] == 0x7F and m[4000] == 0x7E
    again = fa.Adam([p.copy()], backend=backend, state_dtype="8bit")
    again.load_state_dict(sd)
    for name, value in opt.state[p].items():
        assert_same_bits(value, again.state[again.param_groups[0]["params"][0]][name])
    wide = fa.Adam([p.copy()], backend=backend)
    wide.load_state_dict(sd, convert=True)
    m32 = wide.state[wide.param_groups[0]["params"][0]]["exp_avg"]
    assert m32.dtype == F32
    assert np.flatnonzero(~np.isfinite(m32)).tolist() == [7, 4000]
    assert m32[7] == np.inf and np.isnan(m32[4000])
    back = fa.Adam([p.copy()], backend=backend, state_dtype="8bit")
    back.load_state_dict(wide.state_dict(), convert=True)
    assert_same_bits(back.state[back.param_groups[0]["params"][0]]["exp_avg"], m)


# ----------------------------------------------------------------- torch front end


def test_torch_front_end_keeps_an_overflowing_moment_in_its_element():
    torch = pytest.importorskip("torch")
    import fusedadam.torch as fat

    p = torch.nn.Parameter(torch.zeros(5000))
    opt = fat.Adam([p], state_dtype="8bit")
    g = torch.full((5000,), 0.1)
    g[3] = 1e30  # finite: passes the gradient scan; its square overflows v
    p.grad = g
    opt.step()
    p.grad = torch.full((5000,), 0.1)
    opt.step()
    st = opt.state[p]
    assert torch.isfinite(p.detach()).all()
    assert st["exp_avg_sq"][3].item() == 0xFF
    assert torch.isfinite(st["exp_avg_sq_absmax"]).all()
    v = reference.q8_dequantize(st["exp_avg_sq"].numpy(), st["exp_avg_sq_absmax"].numpy(), False)
    assert np.flatnonzero(~np.isfinite(v)).tolist() == [3]
