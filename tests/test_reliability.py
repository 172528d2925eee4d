"""Reliability: non-finite gradients, fork and thread safety, OpenMP controls, memory."""
import multiprocessing
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import fusedadam as fa
from conftest import COMPILED, assert_unchanged, requires_compiled, snapshot

BACKENDS = ["numpy"] + (["compiled"] if COMPILED else [])


def two_group_optimizer(backend, nonfinite, size=50_000):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32),
              rng.standard_normal((7, 3)).astype(np.float64)]
    opt = fa.Adam([{"params": params[:1]}, {"params": params[1:], "amsgrad": True}],
                  backend=backend, nonfinite=nonfinite, num_threads=2)
    opt.step([np.ones_like(p) for p in params])
    return opt, params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (0, 49_999), (0, 31_000), (1, 20)])
def test_nonfinite_error_names_param_and_count(backend, bad, where, parallel_threshold):
    opt, params = two_group_optimizer(backend, "error")
    before = snapshot(opt)
    grads = [np.ones_like(p) for p in params]
    k, i = where
    grads[k].reshape(-1)[i] = bad
    grads[k].reshape(-1)[-1] = bad          # two bad values (one if i is the last)
    count = 1 if i == grads[k].size - 1 else 2
    with pytest.raises(FloatingPointError, match=rf"grads\[{k}\] has {count} non-finite"):
        opt.step(grads)
    assert_unchanged(opt, before)
    assert opt.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_skip_counts_and_changes_nothing(backend):
    opt, params = two_group_optimizer(backend, "skip")
    before = snapshot(opt)
    grads = [np.ones_like(p) for p in params]
    grads[1][3, 1] = np.nan
    for _ in range(3):
        opt.step(grads)
    assert opt.skipped_steps == 3
    assert_unchanged(opt, before)
    # The next good step is step 2, exactly as if the bad ones never came.
    reference_opt, reference_params = two_group_optimizer(backend, "skip")
    good = [np.full_like(p, 0.25) for p in params]
    opt.step(good)
    reference_opt.step([g.copy() for g in good])
    for a, b in zip(params, reference_params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skipped_first_step_creates_no_state(backend):
    p = np.zeros(10, np.float32)
    opt = fa.Adam(p, backend=backend, nonfinite="skip")
    g = np.ones(10, np.float32)
    g[4] = np.inf
    opt.step(g)
    assert opt.skipped_steps == 1 and len(opt.state) == 0 and not p.any()
    opt.step(np.ones(10, np.float32))
    assert opt.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_ignore_propagates_like_the_reference(backend):
    p = np.ones(9)
    q = np.ones(9)
    g = np.array([1, np.nan, 1, np.inf, 1, -np.inf, 1, 1, 1.0])
    fa.Adam(p, backend=backend, nonfinite="ignore").step(g)
    fa.Adam(q, backend="numpy", nonfinite="ignore").step(g)
    np.testing.assert_array_equal(p, q)
    assert np.isnan(p[1]) and np.isfinite(p[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_skip_returns_false(backend):
    p, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    took = fa.functional.adam([p], [np.array([1.0, np.nan, 1.0])], [m], [v], step=1,
                              nonfinite="skip", backend=backend)
    assert took is False and not p.any() and not m.any()
    assert fa.functional.adam([p], [np.ones(3)], [m], [v], step=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_params_and_state_do_not_crash(backend):
    # Only gradients are checked; NaN/inf elsewhere is the user's business, computed as is.
    p = np.array([np.inf, np.nan, 1.0, -np.inf, 0.0])
    q = p.copy()
    opts = [fa.Adam(x, amsgrad=True, weight_decay=0.1, backend=b)
            for x, b in ((p, backend), (q, "numpy"))]
    for opt in opts:
        opt.step(np.ones(5))
        for x in (p, q):
            if x in opt.state:
                opt.state[x]["exp_avg_sq"][2] = np.nan
        opt.step(np.ones(5))
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("mode", ["errors", "Skip", "", None, True])
def test_invalid_nonfinite_mode(mode):
    with pytest.raises(ValueError, match="Invalid nonfinite mode"):
        fa.Adam(np.zeros(2), nonfinite=mode)


# ------------------------------------------------------------------- threads, fork


def _child_step(size):
    p = np.linspace(-1, 1, size).astype(np.float32)
    opt = fa.Adam(p, num_threads=2)
    for _ in range(3):
        opt.step(np.cos(p))
    return p, fa.backend_info()["max_threads"]


@requires_compiled
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_after_parallel_step_does_not_hang():
    size = 2_000_000
    expected, _ = _child_step(size)          # the parent has now run a parallel region
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child_result, child_threads = pool.apply_async(_child_step, (size,)).get(timeout=120)
    np.testing.assert_array_equal(child_result, expected)
    # The child re-creates the step's helper threads (_pool.h): it keeps its thread count.
    assert child_threads == fa.backend_info()["max_threads"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_two_optimizers(backend):
    size, steps = 300_000, 20
    start = np.linspace(-2, 2, size)

    def train(p):
        opt = fa.Adam(p, amsgrad=True, backend=backend)
        for t in range(steps):
            opt.step(np.sin(p + t))

    expected = start.copy()
    train(expected)
    results = [start.copy(), start.copy()]
    threads = [threading.Thread(target=train, args=(r,)) for r in results]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for r in results:
        np.testing.assert_array_equal(r, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_one_optimizer_are_serialized(backend):
    size, steps = 200_000, 25
    grad = np.cos(np.linspace(0, 7, size))      # the same gradient every step: order-free
    shared = np.zeros(size)
    opt = fa.Adam(shared, backend=backend)
    errors = []

    def worker():
        try:
            for _ in range(steps):
                opt.step(grad)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    expected = np.zeros(size)
    ref = fa.Adam(expected, backend=backend)
    for _ in range(2 * steps):
        ref.step(grad)
    np.testing.assert_array_equal(shared, expected)
    assert opt.state_dict()["state"][0]["step"] == 2 * steps


@requires_compiled
def test_threadpoolctl_sees_and_limits_our_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fa.backend_info()["openmp"]:
        pytest.skip("serial build")
    from fusedadam import _kernels

    libs = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "openmp"]
    assert libs, "threadpoolctl does not see the OpenMP runtime fusedadam loaded"
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fa.backend_info()["max_threads"] == 1
        p = np.zeros(100_000, np.float32)
        fa.Adam(p).step(np.ones_like(p))
        assert np.all(p < 0)
    assert fa.backend_info()["max_threads"] == _kernels.max_threads()


@requires_compiled
@pytest.mark.parametrize("value", ["1", "2"])
def test_omp_num_threads_is_respected(value):
    if not fa.backend_info()["openmp"]:
        pytest.skip("serial build")
    env = dict(os.environ, OMP_NUM_THREADS=value)
    out = subprocess.run(
        [sys.executable, "-c", "import fusedadam as fa; print(fa.backend_info()['max_threads'])"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )
    assert out.stdout.strip() == value


# ------------------------------------------------------------------- memory


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_is_exactly_two_or_three_arrays_per_param(amsgrad):
    params = [np.zeros(1000, np.float32), np.zeros((3, 5))]
    opt = fa.Adam(params, amsgrad=amsgrad)
    opt.step([np.ones_like(p) for p in params])
    for p in params:
        st = opt.state[p]
        arrays = [v for k, v in st.items() if k != "step"]
        assert len(arrays) == (3 if amsgrad else 2)
        assert st["step"].nbytes == 8
        assert all(a.nbytes == p.nbytes and a.dtype == p.dtype for a in arrays)


@requires_compiled
@pytest.mark.parametrize("cls", [fa.Adam, fa.AdamW, fa.Adamax])
def test_no_allocation_per_step_after_the_first(cls):
    n = 10_000_000
    p = np.zeros(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    opt = cls(p, num_threads=2)
    opt.step(g)                                  # creates the state (2 x 40 MB)
    opt.step(g)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(5):
            opt.step(g)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A 10^7-element step moves 280 MB; it may allocate a few small Python objects at most.
    assert peak - base < 4096, f"a step allocated {peak - base} bytes"
    assert current - base < 1024


@requires_compiled
def test_rss_does_not_grow_over_steps():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    p = np.zeros(5_000_000, np.float32)
    g = np.ones_like(p)
    opt = fa.Adam(p, amsgrad=True)
    for _ in range(3):
        opt.step(g)
    rss = proc.memory_info().rss
    for _ in range(30):
        opt.step(g)
    assert proc.memory_info().rss - rss < 2 * 2**20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("position", [0, 15, 16, 40_000, 99_999])
def test_nonfinite_in_single_group_steady_state(backend, mode, position, parallel_threshold):
    # After the first step a single-group optimizer scans and updates in one parallel
    # region: a bad value in any thread's slice must stop every thread's update.
    p = np.linspace(-1, 1, 100_000).astype(np.float32)
    opt = fa.Adam(p, backend=backend, nonfinite=mode, num_threads=2)
    for _ in range(2):
        opt.step(np.ones_like(p))
    before = snapshot(opt)
    g = np.ones_like(p)
    g[position] = np.nan
    if mode == "error":
        with pytest.raises(FloatingPointError, match=rf"grads\[0\] has 1 non-finite value .*index {position}"):
            opt.step(g)
    else:
        opt.step(g)
        assert opt.skipped_steps == 1
    assert_unchanged(opt, before)
    opt.step(np.ones_like(p))
    assert opt.state_dict()["state"][0]["step"] == 3
