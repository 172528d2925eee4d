"""Memory: no allocation per step, flat RSS, exactly the state each algorithm needs."""

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import fusedadam as fa
from conftest import requires_compiled


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


MIXED = {
    "float32": (np.float32, np.float32, {}),
    "bfloat16 params, clipped and scaled": (
        ml_dtypes.bfloat16,
        np.float32,
        {"max_grad_norm": 1.0, "grad_scale": 2.0},
    ),
    "float16 params, bfloat16 grads and state": (
        np.float16,
        ml_dtypes.bfloat16,
        {"state_dtype": "bfloat16"},
    ),
}


@requires_compiled
@pytest.mark.parametrize("cls", [fa.Adam, fa.AdamW, fa.Adamax])
@pytest.mark.parametrize("mode", sorted(MIXED))
def test_no_allocation_per_step_after_the_first(cls, mode):
    n = 10_000_000
    param_dtype, grad_dtype, options = MIXED[mode]
    p = np.zeros(n, param_dtype)
    g = np.full(n, 0.5, grad_dtype)
    opt = cls(p, num_threads=2, **options)
    opt.step(g)  # creates the state (2 x 40 MB)
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
