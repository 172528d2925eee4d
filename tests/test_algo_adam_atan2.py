"""Adam-atan2: parity with adam_atan2_pytorch's ``AdamAtan2``, fusedadam's own atan2 (its error
against the exact angle and numpy.arctan2, its special values, the compiled loops == the
NumPy twin bit for bit on every instruction set), the torch front end == the NumPy one,
state_dict round trips, validation."""

import copy
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam import reference
from _algo_checks import (
    compiled_bytes_are_numpy_bytes,
    low_precision_backends_alike,
    parity_every_step,
    refused_and_nothing_changes,
    scalar_rule_twins_agree,
    state_dict_resumes_byte_for_byte,
)
from conftest import BACKENDS, reference_package, requires_compiled, torch_twenty_steps_like_numpy

# fusedadam options == adam_atan2_pytorch's (the same names)
SETTINGS = {
    "defaults_lr": {"lr": 1e-2},
    "decay_a_b_betas": {"lr": 3e-2, "weight_decay": 0.1, "a": 0.5, "b": 2.0, "betas": (0.8, 0.95)},
    "small_lr_b_quarter": {"lr": 1e-4, "b": 0.25, "a": 2.0, "betas": (0.99, 0.999)},
}


def _reference_cls():
    return reference_package("adam_atan2_pytorch").AdamAtan2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_parity_with_adam_atan2_pytorch(setting, backend):
    """100 float64 steps; params and both moments after every step to rtol 1e-10 (no atol)."""
    AdamAtan2 = _reference_cls()
    options = SETTINGS[setting]
    parity_every_step(fa.AdamAtan2, lambda ps: AdamAtan2(ps, **options), options, backend=backend)


# ------------------------------------------------------------------ atan2


def _random_pairs(dtype, n=200_000, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(n) * np.exp(rng.uniform(-30, 30, n))
    x = rng.standard_normal(n) * np.exp(rng.uniform(-30, 30, n))
    # a quarter with |y| / |x| in [0, 4]: every reduction of the angle, densely
    y[: n // 4] = x[: n // 4] * rng.uniform(-4, 4, n // 4)
    return y.astype(dtype), x.astype(dtype)


def _ulps(value, exact, dtype):
    """|value - exact| in units in the last place of ``dtype`` at ``exact``."""
    spacing = np.spacing(np.abs(exact).astype(dtype)).astype(exact.dtype)
    return np.abs(value.astype(exact.dtype) - exact) / spacing


# Bounds on the error, above the maxima measured over 4 million such pairs
# (docs/algorithms_adopt_atan2.md): float64 1.49 ulp from the exact angle and 2 from
# numpy.arctan2, float32 2.11 and 4.
MAX_ULPS_EXACT = {np.float64: 2.0, np.float32: 3.0}
MAX_ULPS_NUMPY = {np.float64: 3.0, np.float32: 5.0}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atan2_error_against_the_exact_angle(dtype):
    """float64 against long double (where it has more bits), float32 against float64."""
    y, x = _random_pairs(dtype)
    wide = np.float64 if dtype == np.float32 else np.longdouble
    if np.finfo(wide).nmant <= np.finfo(dtype).nmant + 8:
        pytest.skip("no wider floating type here to measure against")
    exact = np.arctan2(y.astype(wide), x.astype(wide))
    errors = _ulps(reference.atan2(y, x), exact, dtype)
    assert float(errors.max()) <= MAX_ULPS_EXACT[dtype]
    # the float64 library atan2 is not better than within an ulp either
    assert float(errors.mean()) < 0.35


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atan2_against_numpy_arctan2(dtype):
    y, x = _random_pairs(dtype, seed=3)
    ours, theirs = reference.atan2(y, x), np.arctan2(y, x)
    assert ours.dtype == theirs.dtype == dtype
    finite = theirs != 0
    assert (
        float(_ulps(ours[finite], theirs[finite].astype(np.float64), dtype).max())
        <= (MAX_ULPS_NUMPY[dtype])
    )


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    data=st.data(),
)
def test_atan2_any_floats_against_numpy(dtype, data):
    """Any pair of floats of the dtype (subnormal, huge, infinite, NaN): NaN where numpy
    gives NaN, else within the bound of numpy.arctan2, the sign of zero included."""
    width = 32 if dtype == np.float32 else 64
    floats = st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True)
    y = np.array(data.draw(st.lists(floats, min_size=1, max_size=8)), dtype=dtype)
    x = np.array(data.draw(st.lists(floats, min_size=y.size, max_size=y.size)), dtype=dtype)
    ours, theirs = reference.atan2(y, x), np.arctan2(y, x)
    assert (np.isnan(ours) == np.isnan(theirs)).all()
    ok = ~np.isnan(theirs)
    assert (np.signbit(ours[ok]) == np.signbit(theirs[ok])).all()
    nonzero = ok & (theirs != 0)
    assert (ours[ok & (theirs == 0)] == 0).all()
    errors = _ulps(ours[nonzero], theirs[nonzero].astype(np.float64), dtype)
    assert errors.size == 0 or float(errors.max()) <= MAX_ULPS_NUMPY[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atan2_near_the_ends_of_the_range(dtype):
    """|y| + |x| would overflow for two values near the largest float (atan2 scales them
    by 1/16 first); a subnormal partner of a huge value; two subnormals."""
    rng = np.random.default_rng(12)
    info = np.finfo(dtype)
    n = 20_000
    cases = [
        (info.max * rng.uniform(0.3, 1, n), info.max * rng.uniform(0.3, 1, n)),
        (info.max * rng.uniform(0.3, 1, n), info.smallest_subnormal * rng.integers(1, 99, n)),
        (info.smallest_subnormal * rng.integers(1, 99, n),
         info.smallest_subnormal * rng.integers(1, 99, n)),
    ]  # fmt: skip
    for y, x in cases:
        for sy, sx in ((y, x), (x, y), (-y, -x)):
            sy, sx = sy.astype(dtype), sx.astype(dtype)
            ours, theirs = reference.atan2(sy, sx), np.arctan2(sy, sx)
            assert (
                float(_ulps(ours, theirs.astype(np.float64), dtype).max())
                <= (MAX_ULPS_NUMPY[dtype])
            )


SPECIAL = [0.0, -0.0, 1.0, -1.0, 3.0, -0.5, np.inf, -np.inf, np.nan, 5e-324, 1e-40, 1e300]


def _special_grid(dtype):
    with np.errstate(over="ignore"):
        pairs = np.array(list(itertools.product(SPECIAL, SPECIAL)), dtype=np.float64)
        return pairs[:, 0].astype(dtype), pairs[:, 1].astype(dtype)


def _same_bits_or_both_nan(a, b):
    return (np.isnan(a) & np.isnan(b)) | ((a == b) & (np.signbit(a) == np.signbit(b)))


def test_atan2_special_values_are_ieee_float64():
    """Every pair of zeros (both signs), infinities, NaN, subnormals, huge and ordinary
    values: numpy.arctan2's result, sign of zero included."""
    y, x = _special_grid(np.float64)
    assert _same_bits_or_both_nan(reference.atan2(y, x), np.arctan2(y, x)).all()


def test_atan2_special_values_are_ieee_float32():
    """As float64; where the angle is one of 0, pi/4, pi/2, 3pi/4, pi (IEEE's special
    cases), the correctly rounded float32 of it (numpy's own float32 arctan2 is not:
    arctan2(1, 1) is 1 ulp below pi/4)."""
    y, x = _special_grid(np.float32)
    ours = reference.atan2(y, x)
    exact = np.arctan2(y.astype(np.float64), x.astype(np.float64))
    special = np.isin(np.abs(exact), [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi]) | np.isnan(
        exact
    )
    assert special.sum() > 80
    assert _same_bits_or_both_nan(ours[special], exact[special].astype(np.float32)).all()
    assert float(_ulps(ours[~special], exact[~special], np.float32).max()) <= 3.0


@requires_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_atan2_is_the_reference_bit_for_bit(simd, dtype):
    """The loop's atan2 on every instruction set, on the inputs a step can give it (y any
    value, x = sqrt(...) >= 0, -0 or NaN): with grad 0 and betas (0.5, 0.5) the first step
    is p = p - 1 * atan2(m, sqrt(v)) exactly, for m and v set in the state."""
    rng = np.random.default_rng(9)
    y, x = _random_pairs(dtype, n=20_000, seed=9)
    specials_y, specials_x = _special_grid(dtype)
    m = np.concatenate([y, specials_y, y[:2000]])
    # v = x*x (any finite or infinite non-negative value), -0, NaN, and 0
    root = np.concatenate([np.abs(x), np.abs(specials_x), np.zeros(2000)])
    with np.errstate(over="ignore", under="ignore"):
        v = (root * root).astype(dtype)
    v[:50] = -0.0
    v[50:60] = np.nan
    rng.shuffle(v)
    results = []
    for backend in ("compiled", "numpy"):
        p = np.zeros(m.size, dtype=dtype)
        opt = fa.AdamAtan2([p], lr=1.0, a=1.0, b=1.0, betas=(0.5, 0.5), backend=backend,
                           nonfinite="ignore")  # fmt: skip
        opt.step([np.zeros_like(p)])  # creates the state
        st = opt.state[p]
        # a first step from the state we choose: step 0 again, moments set (doubled, as the
        # step halves them)
        st["step"][...] = 0
        with np.errstate(over="ignore"):
            st["exp_avg"][...] = m * dtype(2)
            st["exp_avg_sq"][...] = v * dtype(2)
        p[...] = 0
        opt.step([np.zeros_like(p)])
        results.append(p.copy())
    compiled, numpy_ = results
    assert _same_bits_or_both_nan(compiled, numpy_).all()
    with np.errstate(over="ignore"):
        m2, v2 = m * dtype(2) * dtype(0.5), v * dtype(2) * dtype(0.5)
    expected = dtype(0) - reference.atan2(m2 * dtype(2), np.sqrt(v2 * dtype(2)))
    assert _same_bits_or_both_nan(numpy_, expected).all()


@requires_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("size", [0, 1, 15, 17, 255, 257, 40_000])
def test_compiled_is_the_reference_bit_for_bit(simd, dtype, n_threads, size, parallel_threshold):
    compiled_bytes_are_numpy_bytes(
        fa.AdamAtan2, dict(lr=1e-2, weight_decay=0.1, maximize=True), dtype, size, n_threads,
        scales=[10.0 ** (3 * t - 6) for t in range(5)],
    )  # fmt: skip


@requires_compiled
def test_scalar_rule_twins_agree():
    from fusedadam import _algorithms

    for options in ({}, {"a": 0.3, "b": 7.0, "weight_decay": 0.1, "maximize": True},
                    {"betas": (0.0, 0.5), "b": 0.0}):  # fmt: skip
        group = fa.AdamAtan2([np.zeros(1)], **options).param_groups[0]
        hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS["adam_atan2"], group)
        assert hyper["decoupled"]
        scalar_rule_twins_agree(hyper, "adam_atan2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_zero_gradients_leave_params_alone_without_eps(state_dtype, backend):
    """No eps, and none needed: atan2(0, 0) = 0, so a zero gradient moves nothing (no
    NaN), in every state precision."""
    p = np.linspace(-1, 1, 5000, dtype=np.float32)
    before = p.copy()
    opt = fa.AdamAtan2([p], lr=1e-2, state_dtype=state_dtype, backend=backend)
    for _ in range(3):
        opt.step([np.zeros_like(p)])
    assert p.tobytes() == before.tobytes()


def test_the_step_is_bounded_by_lr_a_pi_over_2():
    p = np.zeros(4)
    opt = fa.AdamAtan2([p], lr=0.1, a=2.0)
    opt.step([np.array([1e300, -1e-300, 5.0, 0.0])])
    assert np.all(np.abs(p) <= 0.1 * 2.0 * np.pi / 2)
    # the first step: m^ = g and sqrt(v^) = |g|, so atan2 is +-pi/4 (0 for g = 0), unless
    # g * g leaves the range: v = inf gives atan2(m^, inf) = 0, v = 0 gives -pi/2 for m^ < 0
    np.testing.assert_allclose(p, [0.0, 0.2 * np.pi / 2, -0.2 * np.pi / 4, 0.0], rtol=1e-15)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_low_precision_params_and_state_run_both_backends_alike(state_dtype):
    low_precision_backends_alike(fa.AdamAtan2, state_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_resumes_exactly(backend):
    state_dict_resumes_byte_for_byte(fa.AdamAtan2, dict(lr=1e-2, weight_decay=0.1), backend, 3)


BAD = [
    ({"a": 0.0}, ValueError, r"Invalid a value: 0\.0 \(the scale of the atan2 update"),
    ({"a": -1.0}, ValueError, r"Invalid a value: -1\.0"),
    ({"a": float("nan")}, ValueError, r"Invalid a value: nan"),
    ({"a": "1"}, TypeError, r"Invalid a value: '1'"),
    ({"b": -0.5}, ValueError, r"Invalid b value: -0\.5 \(the scale of sqrt\(v\)"),
    ({"b": 1e200}, ValueError, r"Invalid b value: 1e\+200 .*b \* b finite"),
    ({"b": float("inf")}, ValueError, r"Invalid b value: inf"),
    ({"betas": (1.0, 0.99)}, ValueError, r"Invalid beta parameter at index 0: 1\.0"),
    ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay value: -0\.1"),
    ({"maximize": "yes"}, TypeError, r"maximize must be a bool"),
]


@pytest.mark.parametrize("bad, error, match", BAD)
def test_bad_hyperparameters_are_refused_and_nothing_changes(bad, error, match):
    refused_and_nothing_changes(
        fa.AdamAtan2, fa.functional.adam_atan2, bad, error, match, warm_up=[0.5],
        functional_step=2,
    )  # fmt: skip


def test_adam_atan2_has_no_eps_and_no_coupled_decay():
    with pytest.raises(TypeError):
        fa.AdamAtan2([np.zeros(1)], eps=1e-8)
    with pytest.raises(TypeError):
        fa.AdamAtan2([np.zeros(1)], decoupled_weight_decay=False)


@pytest.fixture
def ft():
    return pytest.importorskip("fusedadam.torch")


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "a": 0.7, "b": 3.0,
                                          "maximize": True}])  # fmt: skip
def test_torch_front_end_is_the_numpy_one_bit_for_bit(options):
    torch_twenty_steps_like_numpy("AdamAtan2", options)


def test_torch_front_end_trains_like_the_reference_package(ft):
    """fusedadam.torch.AdamAtan2 against adam_atan2_pytorch on one model, float64."""
    torch = pytest.importorskip("torch")

    AdamAtan2 = _reference_cls()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.double()
    twin = copy.deepcopy(model)
    opt = ft.AdamAtan2(model.parameters(), lr=1e-2, weight_decay=0.01)
    ref = AdamAtan2(twin.parameters(), lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :1])
    for _ in range(50):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-10, atol=0)
