"""SparseAdam: compiled vs NumPy reference bit for bit, vs dense math, vs torch, errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedadam as fa
from fusedadam._backend import _kernels

DTYPES = [np.float32, np.float64]
compiled = pytest.mark.skipif(_kernels is None, reason="the extension is not built")


def _table(rng, rows, dim, dtype):
    return rng.standard_normal((rows, dim)).astype(dtype)


def _run_pair(
    dtype, rows, dim, steps, k, n_threads, seed=0, duplicates=True, threshold=None, **hyper
):
    """Run the compiled and the NumPy backend on the same gradients; return both optimizers."""
    rng = np.random.default_rng(seed)
    W = _table(rng, rows, dim, dtype)
    W_ref = W.copy()
    opt = fa.SparseAdam([W], backend="compiled", num_threads=n_threads, **hyper)
    ref = fa.SparseAdam([W_ref], backend="numpy", **hyper)
    old = _kernels.get_chunk_size()
    if threshold is not None:
        _kernels.set_chunk_size(threshold)
    try:
        for _ in range(steps):
            idx = rng.integers(0, rows, size=k) if duplicates else rng.permutation(rows)[:k]
            vals = rng.standard_normal((k, dim)).astype(dtype)
            opt.step([(idx, vals)])
            ref.step([(idx.copy(), vals.copy())])
    finally:
        _kernels.set_chunk_size(old)
    return W, W_ref, opt, ref


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("k", [0, 1, 7, 300])
@pytest.mark.parametrize("threshold", [None, 16])
def test_compiled_matches_reference_bit_for_bit(dtype, n_threads, k, threshold):
    W, W_ref, opt, ref = _run_pair(
        dtype, 40, 13, 6, k, n_threads, threshold=threshold, lr=0.05, betas=(0.8, 0.95), eps=1e-6
    )
    np.testing.assert_array_equal(W, W_ref)
    if k:
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt.state[W][name], ref.state[W_ref][name])
        assert opt.state[W]["step"] == ref.state[W_ref]["step"] == 6


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_identical_on_the_parallel_path(dtype):
    W1, _, _, _ = _run_pair(dtype, 500, 64, 4, 2000, 1, threshold=16)
    W2, _, _, _ = _run_pair(dtype, 500, 64, 4, 2000, 2, threshold=16)
    np.testing.assert_array_equal(W1, W2)


@compiled
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 30),
    dim=st.integers(1, 20),
    k=st.integers(0, 60),
    steps=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
    n_threads=st.sampled_from([1, 2]),
    maximize=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_compiled_equals_reference(
    rows, dim, k, steps, dtype, n_threads, maximize, seed
):
    W, W_ref, opt, ref = _run_pair(
        dtype, rows, dim, steps, k, n_threads, seed=seed, threshold=16, maximize=maximize, lr=0.01
    )
    np.testing.assert_array_equal(W, W_ref)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("compiled", marks=compiled)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_touched_every_step_follow_dense_adam(backend, dtype):
    """A row in every step's gradient follows torch-style Adam (eps outside, bias-corrected
    step size); untouched rows do not move."""
    rng = np.random.default_rng(3)
    rows, dim, lr, b1, b2, eps = 20, 5, 0.01, 0.9, 0.999, 1e-8
    W = _table(rng, rows, dim, dtype)
    W0 = W.copy()
    dense = W0[:4].astype(np.float64)
    m = np.zeros_like(dense)
    v = np.zeros_like(dense)
    opt = fa.SparseAdam([W], lr=lr, betas=(b1, b2), eps=eps, backend=backend)
    for t in range(1, 31):
        g = rng.standard_normal((4, dim)).astype(dtype)
        opt.step([(np.array([3, 0, 2, 1]), g[[3, 0, 2, 1]])])
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        dense -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    # Same formula in float64 (a different operation order): agreement to rounding.
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(W[:4], dense, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_array_equal(W[4:], W0[4:])
    # And the same rows stepped by fa.Adam, which puts eps on sqrt(v_hat) rather than on
    # sqrt(v): early on that is an eps / sqrt(1 - beta2**t) ~ 3e-7 relative difference.
    rtol = 1e-4 if dtype == np.float32 else 1e-6
    W_adam = W0[:4].copy()
    rng = np.random.default_rng(3)
    _table(rng, rows, dim, dtype)
    adam = fa.Adam(W_adam, lr=lr, betas=(b1, b2), eps=eps)
    for _ in range(30):
        adam.step(rng.standard_normal((4, dim)).astype(dtype))
    np.testing.assert_allclose(W[:4], W_adam, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("compiled", marks=compiled)])
def test_duplicates_are_summed(backend):
    rng = np.random.default_rng(5)
    W = _table(rng, 10, 4, np.float64)
    W_sum = W.copy()
    vals = rng.standard_normal((3, 4))
    a = fa.SparseAdam([W], lr=0.1, backend=backend)
    b = fa.SparseAdam([W_sum], lr=0.1, backend=backend)
    a.step([(np.array([6, 2, 6]), vals)])
    b.step([(np.array([2, 6]), np.stack([vals[1], vals[0] + vals[2]]))])
    np.testing.assert_array_equal(W, W_sum)
    np.testing.assert_array_equal(a.state[W]["exp_avg_sq"], b.state[W_sum]["exp_avg_sq"])


def test_first_step_formula_by_hand():
    W = np.zeros((3, 2))
    opt = fa.SparseAdam([W], lr=0.5, betas=(0.9, 0.99), eps=1e-3, backend="numpy")
    opt.step([(np.array([1]), np.array([[2.0, -4.0]]))])
    g = np.array([2.0, -4.0])
    m, v = 0.1 * g, 0.01 * g * g
    step_size = 0.5 * math.sqrt(1 - 0.99) / (1 - 0.9)
    np.testing.assert_allclose(W[1], -step_size * m / (np.sqrt(v) + 1e-3), rtol=1e-15)
    assert not W[0].any() and not W[2].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_sparse_adam(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    W = _table(rng, 30, 6, dtype)
    param = torch.nn.Parameter(torch.tensor(W.copy()))
    ours = fa.SparseAdam([W], lr=0.02, betas=(0.85, 0.99), eps=1e-7)
    theirs = torch.optim.SparseAdam([param], lr=0.02, betas=(0.85, 0.99), eps=1e-7)
    for _ in range(15):
        idx = rng.permutation(30)[:8]
        vals = rng.standard_normal((8, 6)).astype(dtype)
        ours.step([(idx, vals)])
        with torch.sparse.check_sparse_tensor_invariants(True):
            param.grad = torch.sparse_coo_tensor(
                torch.tensor(idx)[None], torch.tensor(vals), (30, 6)
            )
        theirs.step()
    got = param.detach().numpy()
    if dtype == np.float64:
        np.testing.assert_array_equal(W, got)
    else:
        # torch's float32 CPU sqrt is not correctly rounded (measured: it differs from
        # np.sqrt in the last bit), so float32 agrees to an ulp or so, not bit for bit.
        np.testing.assert_allclose(W, got, rtol=1e-5, atol=1e-6)


def test_none_gradient_skips_table_and_its_step():
    A, B = np.ones((4, 2)), np.ones((5, 2))
    opt = fa.SparseAdam([A, B], lr=0.1)
    opt.step([(np.array([0]), np.ones((1, 2))), None])
    opt.step([(np.array([], dtype=np.int64), np.empty((0, 2))), None])
    assert opt.state[A]["step"] == 2 and B not in opt.state
    np.testing.assert_array_equal(B, 1.0)


def test_cost_does_not_depend_on_table_size_in_state():
    """k=1 touches one row of a big table: nothing else is written."""
    W = np.zeros((100_000, 3), dtype=np.float32)
    opt = fa.SparseAdam([W], lr=0.1)
    opt.step([(np.array([99_999]), np.ones((1, 3), dtype=np.float32))])
    assert np.count_nonzero(W) == 3 and np.count_nonzero(opt.state[W]["exp_avg"]) == 3


# ------------------------------------------------------------------------- errors
def _fresh():
    rng = np.random.default_rng(0)
    W = _table(rng, 6, 3, np.float32)
    opt = fa.SparseAdam([W], lr=0.1)
    opt.step([(np.array([1, 2]), np.ones((2, 3), dtype=np.float32))])
    return W, opt


@pytest.mark.parametrize(
    "grad, error, match",
    [
        (
            (np.array([6]), np.ones((1, 3), np.float32)),
            ValueError,
            r"grads\[0\].*index 6 is out of range.*params\[0\]",
        ),
        (
            (np.array([-1]), np.ones((1, 3), np.float32)),
            ValueError,
            r"grads\[0\].*index -1 is negative",
        ),
        ((np.array([1.0]), np.ones((1, 3), np.float32)), TypeError, r"grads\[0\].*integer dtype"),
        (([1.5], np.ones((1, 3), np.float32)), TypeError, r"grads\[0\].*indices must be integers"),
        ((np.array([True]), np.ones((1, 3), np.float32)), TypeError, r"integer dtype"),
        ((np.array([[1]]), np.ones((1, 3), np.float32)), ValueError, r"must be 1-D"),
        ((np.array([1]), np.ones((1, 4), np.float32)), ValueError, r"grads\[0\].*shape \(1, 4\)"),
        (
            (np.array([1, 2]), np.ones((1, 3), np.float32)),
            ValueError,
            r"expected \(len\(indices\), dim\)",
        ),
        (
            (np.array([1]), np.ones((1, 3), np.float64)),
            TypeError,
            r"grads\[0\].*float64.*params\[0\] has float32",
        ),
        ((np.array([1]), [[1.0, 2.0, 3.0]]), TypeError, r"values must be a numpy.ndarray"),
        (np.ones((6, 3), np.float32), TypeError, r"grads\[0\] must be a pair"),
    ],
)
def test_errors_name_the_parameter_and_change_nothing(grad, error, match):
    W, opt = _fresh()
    before = {k: np.copy(v) for k, v in opt.state[W].items() if k != "step"}
    W_before = W.copy()
    with pytest.raises(error, match=match):
        opt.step([grad])
    np.testing.assert_array_equal(W, W_before)
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state[W][k], v)
    assert opt.state[W]["step"] == 1


def test_error_in_second_table_leaves_first_unchanged():
    A, B = np.zeros((4, 2)), np.zeros((4, 2))
    opt = fa.SparseAdam([A, B], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[1\].*index 9"):
        opt.step([(np.array([0]), np.ones((1, 2))), (np.array([9]), np.ones((1, 2)))])
    assert not A.any() and A not in opt.state


def test_values_aliasing_the_table_rejected():
    W = np.ones((4, 2))
    opt = fa.SparseAdam([W])
    with pytest.raises(ValueError, match="share memory"):
        opt.step([(np.array([0, 1]), W[2:])])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1.0), ValueError, "Invalid learning rate"),
        (dict(betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0: 1.0"),
        (dict(eps=0.0), ValueError, "Invalid epsilon"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(backend="gpu"), ValueError, "Invalid backend"),
        (dict(maximize=1), TypeError, "maximize must be a bool"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        fa.SparseAdam([np.zeros((2, 2))], **kwargs)


def test_params_must_be_2d_float_tables():
    with pytest.raises(ValueError, match=r"params\[0\] has shape \(3,\).*2-D"):
        fa.SparseAdam([np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
        fa.SparseAdam([np.zeros((3, 2), dtype=np.int64)])
    with pytest.raises(ValueError, match="expected 1 gradients"):
        fa.SparseAdam([np.zeros((3, 2))]).step([])


def test_state_dict_round_trip_resumes_exactly():
    W, opt = _fresh()
    rng = np.random.default_rng(1)
    grads = [
        (rng.integers(0, 6, 4), rng.standard_normal((4, 3)).astype(np.float32)) for _ in range(3)
    ]
    saved = {
        "state": {
            i: {k: np.copy(v) for k, v in s.items()} for i, s in opt.state_dict()["state"].items()
        },
        "param_groups": opt.state_dict()["param_groups"],
    }
    W2 = W.copy()
    opt2 = fa.SparseAdam([W2], lr=0.1)
    opt2.load_state_dict(saved)
    for g in grads:
        opt.step([g])
        opt2.step([g])
    np.testing.assert_array_equal(W, W2)
    bad = {
        "state": {0: {**saved["state"][0], "exp_avg": np.zeros((5, 3), np.float32)}},
        "param_groups": saved["param_groups"],
    }
    with pytest.raises(ValueError, match="exp_avg.*shape"):
        opt2.load_state_dict(bad)
    assert opt2.state[W2]["step"] == 4


def test_lr_callable_and_param_groups():
    A, B = np.zeros((3, 1)), np.zeros((3, 1))
    opt = fa.SparseAdam([{"params": [A]}, {"params": [B], "lr": lambda t: 0.2 * t}], lr=0.1)
    one = (np.array([0]), np.ones((1, 1)))
    opt.step([one, one])
    # First step of Adam moves by lr * m_hat / (sqrt(v_hat) + eps') = lr (up to eps).
    assert A[0, 0] == pytest.approx(-0.1, rel=1e-6)
    assert B[0, 0] == pytest.approx(-0.2, rel=1e-6)


def test_group_edited_between_steps_is_rechecked():
    W = np.zeros((3, 2))
    opt = fa.SparseAdam([W], lr=0.1)
    one = [(np.array([0]), np.ones((1, 2)))]
    opt.step(one)
    opt.param_groups[0]["betas"] = [0.9, 1.5]
    with pytest.raises(ValueError, match=r"param_groups\[0\]: Invalid beta parameter at index 1"):
        opt.step(one)
    assert opt.state[W]["step"] == 1
    opt.param_groups[0]["betas"] = np.array([0.5, 0.9])
    opt.param_groups[0]["lr"] = 0.0
    before = W.copy()
    opt.step(one)
    np.testing.assert_array_equal(W, before)
    assert opt.state[W]["step"] == 2


def test_group_rows_sorted_fast_path_and_general_path_agree():
    idx = np.array([1, 4, 9])
    rows, order, starts = fa.sparse.group_rows(idx)
    np.testing.assert_array_equal(rows, idx)
    np.testing.assert_array_equal(order, [0, 1, 2])
    np.testing.assert_array_equal(starts, [0, 1, 2, 3])
    rows, order, starts = fa.sparse.group_rows(np.array([9, 1, 9, 4, 1]))
    np.testing.assert_array_equal(rows, [1, 4, 9])
    np.testing.assert_array_equal(order, [1, 4, 3, 0, 2])
    np.testing.assert_array_equal(starts, [0, 2, 3, 5])


@pytest.mark.parametrize("backend", ["numpy", pytest.param("compiled", marks=compiled)])
def test_read_only_non_contiguous_values_and_unsigned_indices(backend):
    rng = np.random.default_rng(9)
    W, W_ref = np.zeros((5, 4), np.float32), np.zeros((5, 4), np.float32)
    vals = np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))
    vals.flags.writeable = False
    idx = np.array([4, 1, 4], dtype=np.uint8)
    idx.flags.writeable = False
    fa.SparseAdam([W], lr=0.1, backend=backend).step([(idx, vals)])
    fa.SparseAdam([W_ref], lr=0.1, backend="numpy").step([([4, 1, 4], np.ascontiguousarray(vals))])
    np.testing.assert_array_equal(W, W_ref)
    assert W[[1, 4]].all() and not W[[0, 2, 3]].any()


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_instruction_set_gives_the_same_bits(dtype):
    from fusedadam import _kernels as ext

    names = ext.ISA_NAMES[: ext.ISA_NAMES.index(ext.best_isa()) + 1]
    results = []
    try:
        for name in names:
            ext.set_isa(name)
            W, W_ref, _, _ = _run_pair(dtype, 30, 37, 3, 80, 2, seed=4, threshold=16)
            np.testing.assert_array_equal(W, W_ref)
            results.append(W)
    finally:
        ext.set_isa(ext.best_isa())
    for W in results[1:]:
        np.testing.assert_array_equal(W, results[0])
    with pytest.raises(ValueError, match="unknown instruction set"):
        ext.set_isa("sse9")


def test_npz_round_trip_with_flatten_state_dict(tmp_path):
    W, opt = _fresh()
    np.savez(tmp_path / "ckpt.npz", **fa.flatten_state_dict(opt.state_dict()))
    W2 = W.copy()
    opt2 = fa.SparseAdam([W2], lr=0.5)
    with np.load(tmp_path / "ckpt.npz") as ckpt:
        opt2.load_state_dict(fa.unflatten_state_dict(ckpt))
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.state[W2]["step"] == 1
    grad = [(np.array([5, 1]), np.full((2, 3), 0.5, np.float32))]
    opt.step(grad)
    opt2.step(grad)
    np.testing.assert_array_equal(W, W2)


def test_state_swapped_by_hand_is_checked_before_any_write():
    A, B = np.zeros((3, 2)), np.zeros((3, 2))
    opt = fa.SparseAdam([A, B], lr=0.1)
    one = (np.array([0]), np.ones((1, 2)))
    opt.step([one, one])
    opt.state[B]["exp_avg"] = np.zeros((3, 2), dtype=np.float32)
    before = A.copy()
    with pytest.raises(TypeError, match=r"exp_avg of params\[1\] has dtype float32"):
        opt.step([one, one])
    np.testing.assert_array_equal(A, before)
    opt.state[B]["exp_avg"] = opt.state[B]["exp_avg_sq"]
    with pytest.raises(ValueError, match="share memory"):
        opt.step([one, one])
    np.testing.assert_array_equal(A, before)
