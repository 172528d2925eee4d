"""Threads, fork, OpenMP controls: concurrent use and the thread-count rule."""

import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fusedadam as fa
from conftest import BACKENDS, COMPILED, requires_compiled


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
    expected, _ = _child_step(size)  # the parent has now run a parallel region
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child_result, child_threads = pool.apply_async(_child_step, (size,)).get(timeout=120)
    np.testing.assert_array_equal(child_result, expected)
    # The child re-creates the step's helper threads (_pool.h): it keeps its thread count.
    assert child_threads == fa.backend_info()["max_threads"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_two_optimizers(backend):
    """Two threads stepping two optimizers run concurrently (the GIL is released for the
    whole update: both steps are inside the kernel at once) and correctly."""
    size, steps = 1_000_000, 12
    start = np.linspace(-2, 2, size)
    grads = [np.sin(start + t) for t in range(steps)]

    def train(p, barrier=None):
        opt = fa.Adam(p, amsgrad=True, backend=backend, num_threads=1)
        if barrier is not None:
            barrier.wait()
        for g in grads:
            opt.step(g)

    expected = start.copy()
    train(expected)
    # The OS may run the two threads one after the other on a busy machine: up to 5 rounds
    # for them to overlap once (a kernel holding the GIL never would).
    most = 0
    for _ in range(5):
        results = [start.copy(), start.copy()]
        barrier = threading.Barrier(2)
        if COMPILED:
            from fusedadam import _testing

            _testing.steps_in_flight_high_water(reset=True)
        threads = [threading.Thread(target=train, args=(r, barrier)) for r in results]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        for r in results:
            np.testing.assert_array_equal(r, expected)
        if backend != "compiled":
            break
        most = _testing.steps_in_flight_high_water()  # and resets it
        if most == 2:
            break
    if backend == "compiled":
        assert most == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_one_optimizer_are_serialized(backend):
    size, steps = 200_000, 25
    grad = np.cos(np.linspace(0, 7, size))  # the same gradient every step: order-free
    shared = np.zeros(size)
    opt = fa.Adam(shared, backend=backend)
    errors = []

    def worker():
        try:
            for _ in range(steps):
                opt.step(grad)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    if COMPILED:
        from fusedadam import _testing

        _testing.steps_in_flight_high_water(reset=True)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    if backend == "compiled":
        assert _testing.steps_in_flight_high_water() == 1  # the lock serialized them
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
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == value


@requires_compiled
@pytest.mark.parametrize(
    "cls, options",
    [
        (fa.AdamW, {"state_dtype": "8bit"}),  # elementwise, 8-bit blocks split by chunks
        (fa.Lamb, {}),  # per-tensor: pass A and pass B run by tasks of chunks
        (fa.Lion, {"cautious": True}),
    ],
    ids=["adamw_8bit", "lamb", "cautious_lion"],
)
def test_update_task_size_changes_no_bit(cls, options):
    """The parallel update claims tasks of whole chunks (one run of memory each); how many
    chunks a task takes changes which thread steps what, never a value: every task size and
    thread count gives the one-thread step's bits."""
    from fusedadam import _kernels

    rng = np.random.default_rng(7)
    sizes = [70_001, 5, 16_384, 40_000, 1, 300_000]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(4)]

    def run(threads):
        params = [np.linspace(-1, 1, n, dtype=np.float32) for n in sizes]
        opt = cls(params, lr=1e-2, num_threads=threads, **options)
        for g in grads:
            opt.step(g)
        return params

    want = run(1)
    saved = _kernels.get_chunk_size(), _kernels.get_update_task_size()
    try:
        _kernels.set_chunk_size(4096)
        for task_chunks in (1, 3, 64, 10**6):
            _kernels.set_update_task_size(task_chunks * 4096)
            for got, expected in zip(run(2), want):
                np.testing.assert_array_equal(got, expected, strict=True)
    finally:
        _kernels.set_chunk_size(saved[0])
        _kernels.set_update_task_size(saved[1])
    with pytest.raises(ValueError, match="update task size must be a positive"):
        _kernels.set_update_task_size(0)
