"""Adversarial use (issue #10): each class of failure found against the Guarantees table.

Every test here failed before its fix. Item numbers refer to the issue; "audit" marks
classes found while auditing the public entry points for the same kinds of failure.
"""

import copy
import multiprocessing
import os
import pickle
import threading
import time

import numpy as np
import pytest

import fusedadam as fa
from conftest import BACKENDS, COMPILED, VARIANTS, assert_unchanged, requires_compiled, snapshot


def stepped(cls=fa.Adam, backend="numpy", steps=2, **options):
    params = [np.linspace(-1, 1, 40, dtype=np.float32), np.ones((3, 4), np.float64)]
    opt = cls(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}], backend=backend, **options
    )
    for t in range(steps):
        opt.step([np.cos(p * (t + 1)).astype(p.dtype) for p in params])
    return opt, params


def grads_for(params, t=0):
    return [np.cos(p * (t + 2)).astype(p.dtype) for p in params]


# 1: a failed first step leaves nothing behind (dense: tests/test_driver.py)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_failed_first_step_creates_no_state(backend):
    W = np.zeros((6, 3))
    opt = fa.SparseAdam([W], backend=backend)
    with pytest.raises(FloatingPointError, match=r"grads\[0\] has 1 non-finite"):
        opt.step([(np.array([1]), np.array([[1.0, np.nan, 1.0]]))])
    assert W not in opt.state and opt.state_dict()["state"] == {}
    opt.step([(np.array([1]), np.ones((1, 3)))])
    assert int(opt.state[W]["step"]) == 1


# 2: byte order
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["adam", "nadam", "lion"])
def test_byte_swapped_gradients_are_read_by_value(backend, variant):
    cls, options = VARIANTS[variant]
    native, swapped = stepped(cls, backend, **options), stepped(cls, backend, **options)
    for t in range(3):
        g = grads_for(native[1], t)
        native[0].step(g)
        swapped[0].step([a.astype(a.dtype.newbyteorder()) for a in g])
    for a, b in zip(native[1], swapped[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(), (1,), (2, 3)])
def test_byte_swapped_gradient_of_any_shape(backend, shape):
    """Found by the fuzz test: a 0-d byte-swapped gradient was copied as 1-d."""
    p, q = np.full(shape, 0.5), np.full(shape, 0.5)
    fa.Adam(p, backend=backend).step(np.full(shape, 2.0, dtype=">f8"))
    fa.Adam(q, backend=backend).step(np.full(shape, 2.0))
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_byte_swapped_param_is_rejected(backend):
    p = np.zeros(4, dtype=">f8")
    with pytest.raises(TypeError, match=r"params\[0\] has non-native byte order"):
        fa.Adam(p, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_byte_swapped_values_and_indices(backend):
    W1, W2 = np.zeros((5, 2)), np.zeros((5, 2))
    idx, vals = np.array([4, 0, 4]), np.arange(6.0).reshape(3, 2)
    fa.SparseAdam([W1], backend=backend).step([(idx, vals)])
    fa.SparseAdam([W2], backend=backend).step(
        [(idx.astype(idx.dtype.newbyteorder()), vals.astype(">f8"))]
    )
    np.testing.assert_array_equal(W1, W2)


# 3: removing a param group
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["del", "pop"])
def test_removed_group_leaves_the_others_exact(backend, how):
    only = np.ones((3, 4))
    twin = fa.Adam([{"params": [only], "lr": 0.05}], backend=backend, amsgrad=True)
    for t in range(3):
        twin.step([np.cos(only * (t + 1))])
    opt, params = stepped(fa.Adam, backend, steps=3, amsgrad=True)
    if how == "del":
        del opt.param_groups[0]
    else:
        opt.param_groups.pop(0)
    for t in range(4):
        opt.step([np.cos(params[1] * t)])
        twin.step([np.cos(only * t)])
    np.testing.assert_array_equal(params[1], only)
    assert int(opt.state[params[1]]["step"]) == int(twin.state[only]["step"]) == 7
    with pytest.raises(ValueError, match="expected 1 gradients"):
        opt.step(grads_for(params))


# 5: SparseAdam gaps
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_nonfinite_policies(backend):
    W = np.ones((4, 2))
    bad = [(np.array([2]), np.array([[np.inf, 0.0]]))]
    opt = fa.SparseAdam([W], backend=backend, nonfinite="skip")
    opt.step(bad)
    assert opt.skipped_steps == 1 and np.all(W == 1) and W not in opt.state
    opt = fa.SparseAdam([W], backend=backend, nonfinite="ignore")
    opt.step(bad)
    assert np.isnan(W[2]).any() or np.isinf(W[2]).any()
    with pytest.raises(ValueError, match="Invalid nonfinite mode"):
        fa.SparseAdam([W], nonfinite="warn")


def test_sparse_overlapping_tables_and_aliasing_values_are_rejected():
    base = np.zeros((10, 2))
    with pytest.raises(ValueError, match="share memory"):
        fa.SparseAdam([base[:6], base[4:]]).step([None, None])
    A, B = np.zeros((4, 2)), np.zeros((4, 2))
    opt = fa.SparseAdam([A, B])
    opt.step([(np.array([0]), np.ones((1, 2))), None])
    before = (A.copy(), B.copy())
    with pytest.raises(ValueError, match=r"grads\[0\]: values share memory"):
        opt.step([(np.array([1]), B[:1]), None])
    with pytest.raises(ValueError, match=r"grads\[1\]: values share memory"):
        opt.step([None, (np.array([1]), opt.state[A]["exp_avg"][2:3])])
    np.testing.assert_array_equal(A, before[0])
    np.testing.assert_array_equal(B, before[1])


# 6: thread counts the kernels cannot run are clamped before anything is written
@pytest.mark.parametrize("num_threads", [2**31, 100_000, 10**30])
def test_huge_thread_counts_are_clamped(num_threads):
    dense = [np.linspace(-1, 1, 50_000), np.ones(7)]
    ref = [p.copy() for p in dense]
    opt = fa.Adam([{"params": dense[:1]}, {"params": dense[1:]}], num_threads=num_threads)
    fa.Adam([{"params": ref[:1]}, {"params": ref[1:]}], num_threads=1).step(grads_for(ref))
    opt.step(grads_for(dense))
    for a, b in zip(dense, ref):
        np.testing.assert_array_equal(a, b)
    W = np.zeros((50_000, 4))
    fa.SparseAdam([W], num_threads=num_threads).step([(np.arange(50_000), np.ones((50_000, 4)))])
    assert np.all(W < 0)


# 7: fork
def _sparse_child():
    W = np.zeros((40_000, 8))
    fa.SparseAdam([W], num_threads=2).step([(np.arange(40_000), np.ones((40_000, 8)))])
    return float(W.sum())


@requires_compiled
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_after_a_sparse_only_parallel_step():
    expected = _sparse_child()  # the parent's pool is running now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_sparse_child).get(timeout=60) == expected


def _step_in_child(opt, params):
    opt.step(grads_for(params))
    return int(opt.state[params[0]]["step"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_while_another_thread_holds_the_optimizer_lock():
    opt, params = stepped(fa.Adam, "compiled" if COMPILED else "numpy")
    inside, release = threading.Event(), threading.Event()

    def slow_lr(t):
        inside.set()
        release.wait(30)
        return 0.01

    opt.param_groups[0]["lr"] = slow_lr
    holder = threading.Thread(target=opt.step, args=(grads_for(params),))
    holder.start()
    assert inside.wait(30)  # the holder is inside step(), lock held
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            opt.param_groups[0]["lr"] = 0.01  # (the child gets this copy)
            assert pool.apply_async(_step_in_child, (opt, params)).get(timeout=60) == 3
    finally:
        release.set()
        holder.join(30)


# 8: state dicts are consistently live; a deep copy is a consistent snapshot
@pytest.mark.parametrize("backend", BACKENDS)
def test_snapshot_then_steps_then_load_resumes_from_the_snapshot(backend):
    opt, params = stepped(fa.NAdam, backend, steps=3)
    saved_params = [p.copy() for p in params]
    snap = copy.deepcopy(opt.state_dict())
    for t in range(3):
        opt.step(grads_for(params, t))
    live = opt.state_dict()
    assert int(live["state"][0]["step"]) == 6 and int(snap["state"][0]["step"]) == 3
    for p, s in zip(params, saved_params):
        p[...] = s
    opt.load_state_dict(snap)
    for t in range(3):
        opt.step(grads_for(params, t))
    for a, b in zip(params, [p for p in params]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(opt.state[params[0]]["exp_avg"], live["state"][0]["exp_avg"])


# 9: every public mutator is serialized with step()
def test_add_param_group_waits_for_a_step_in_progress():
    opt, params = stepped(fa.Adam, "compiled" if COMPILED else "numpy")
    inside, order = threading.Event(), []

    def slow_lr(t):
        inside.set()
        time.sleep(0.3)
        order.append("step")
        return 0.01

    opt.param_groups[0]["lr"] = slow_lr
    worker = threading.Thread(target=opt.step, args=(grads_for(params),))
    worker.start()
    assert inside.wait(30)
    opt.add_param_group({"params": [np.zeros(3)]})
    order.append("add")
    worker.join(30)
    assert order == ["step", "add"]
    assert int(opt.state[params[0]]["step"]) == 3  # the step ran on the old groups
    opt.step(grads_for(params) + [np.ones(3)])


# 11: NumPy subclasses
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself warns
@pytest.mark.parametrize("backend", BACKENDS)
def test_matrix_and_memmap_gradients_are_plain_arrays(backend, tmp_path):
    p1, p2 = np.ones((3, 4)), np.ones((3, 4))
    g = np.arange(12.0).reshape(3, 4) / 7
    mm = np.memmap(tmp_path / "g.dat", dtype=np.float64, mode="w+", shape=(3, 4))
    mm[...] = g
    a, b = fa.Adam(p1, backend=backend), fa.Adam(p2, backend=backend)
    for _ in range(3):
        a.step(np.asmatrix(g))
        b.step(mm)
    expected = np.ones((3, 4))
    ref = fa.Adam(expected, backend=backend)
    for _ in range(3):
        ref.step(g)
    np.testing.assert_array_equal(p1, expected)
    np.testing.assert_array_equal(p2, expected)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(1, 12\)"):
        fa.Adam(np.ones(12), backend=backend).step(np.asmatrix(np.ones(12)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_gradients_are_rejected(backend):
    opt, params = stepped(fa.Adam, backend)
    before = snapshot(opt)
    g = grads_for(params)
    g[1] = np.ma.masked_greater(g[1], 0.5)
    with pytest.raises(TypeError, match=r"grads\[1\] is a masked array"):
        opt.step(g)
    assert_unchanged(opt, before)


# 12: copying
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize(
    "variant", ["adam", "amsgrad", "adamax", "nadam", "radam", "adabelief", "lion"]
)
def test_copies_step_bit_identically(backend, how, variant):
    cls, options = VARIANTS[variant]
    opt, params = stepped(cls, backend, steps=2, **options)
    if how == "deepcopy":
        clone = copy.deepcopy(opt)
    else:
        clone = pickle.loads(pickle.dumps(opt))
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    assert all(c is not p for c, p in zip(clone_params, params))
    for t in range(3):
        opt.step(grads_for(params, t))
        clone.step(grads_for(clone_params, t))
    for a, b in zip(params, clone_params):
        np.testing.assert_array_equal(a, b)


def test_sparse_copy_steps_bit_identically():
    W = np.zeros((5, 3))
    opt = fa.SparseAdam([W])
    opt.step([(np.array([1, 3]), np.ones((2, 3)))])
    clone = pickle.loads(pickle.dumps(opt))
    (W2,) = clone.param_groups[0]["params"]
    for opt_ in (opt, clone):
        opt_.step([(np.array([3, 0]), np.full((2, 3), 0.5))])
    np.testing.assert_array_equal(W, W2)


# 13: minimize
def test_minimize_rejects_a_reshaped_gradient():
    with pytest.raises(ValueError, match=r"gradient has shape \(6,\), but x has shape \(2, 3\)"):
        fa.minimize(lambda x: (float((x**2).sum()), 2 * x.reshape(-1)), np.ones((2, 3)), jac=True)


@pytest.mark.parametrize("stop", [lambda x: np.True_, lambda x: True])
def test_minimize_callback_true_stops(stop):
    res = fa.minimize(lambda x: (float(x @ x), 2 * x), np.ones(3), jac=True, callback=stop)
    assert res.nit == 1 and res.status == 2 and res.success


def test_minimize_callback_stop_iteration_is_a_clean_stop():
    def callback(x):
        raise StopIteration

    res = fa.minimize(lambda x: (float(x @ x), 2 * x), np.ones(3), jac=True, callback=callback)
    assert res.nit == 1 and res.status == 2 and res.success


def test_minimize_callback_truthy_non_bool_does_not_stop():
    res = fa.minimize(
        lambda x: (float(x @ x), 2 * x), np.ones(3), jac=True, callback=lambda x: [1], maxiter=5
    )
    assert res.nit == 5


# audit: a betas array edited in place cannot change a validated value behind the step
@pytest.mark.parametrize("backend", BACKENDS)
def test_mutable_betas_are_frozen_at_validation(backend):
    betas = np.array([0.9, 0.999])
    p, q = np.ones(5), np.ones(5)
    opt = fa.Adam(p, betas=betas, backend=backend)
    ref = fa.Adam(q, betas=(0.9, 0.999), backend=backend)
    opt.step(np.ones(5))
    betas[0] = 0.0
    opt.step(np.ones(5))
    ref.step(np.ones(5))
    ref.step(np.ones(5))
    np.testing.assert_array_equal(p, q)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


# audit: a param appended to a stepped group's list raises and changes nothing
@pytest.mark.parametrize("backend", BACKENDS)
def test_param_appended_to_a_stepped_group(backend):
    opt, params = stepped(fa.Adam, backend)
    before = snapshot(opt)
    opt.param_groups[0]["params"].append(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"params\[1\] has no state, but its group is at step 2"):
        opt.step(grads_for(params)[:1] + [np.ones(2, np.float32)] + grads_for(params)[1:])
    del opt.param_groups[0]["params"][-1]
    assert_unchanged(opt, before)


# audit: an lr schedule that raises changes nothing
@pytest.mark.parametrize("backend", BACKENDS)
def test_raising_lr_callable_changes_nothing(backend):
    opt, params = stepped(fa.Adam, backend)
    before = snapshot(opt)

    def broken(t):
        raise KeyError("schedule table ends")

    opt.param_groups[1]["lr"] = broken
    with pytest.raises(KeyError):
        opt.step(grads_for(params))
    assert_unchanged(opt, before)


# audit: a malformed flattened state dict names its bad entry
def test_unflatten_names_a_malformed_entry():
    with pytest.raises(ValueError, match="unexpected entry 'state/x'"):
        fa.unflatten_state_dict({"state/x": np.zeros(1)})
