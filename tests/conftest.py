"""Shared fixtures: backends, SIMD paths, thread counts, the parallel threshold."""
import numpy as np
import pytest

import fusedadam as fa

COMPILED = fa.backend_info()["compiled"]
requires_compiled = pytest.mark.skipif(not COMPILED, reason="extension not built")


def pytest_collection_modifyitems(config, items):
    """Without the extension, backend="auto" warns once that it falls back to NumPy.

    That warning is the expected state of a pure-Python install, not a test failure under
    filterwarnings=error; tests that check it use pytest.warns, which still sees it.
    """
    if COMPILED:
        return
    fallback = pytest.mark.filterwarnings(
        "ignore:fusedadam's compiled extension is not available:RuntimeWarning"
    )
    for item in items:
        item.add_marker(fallback)


def simd_paths():
    """Every instruction-set path this CPU can run (each must match the reference)."""
    if not COMPILED:
        return []
    from fusedadam import _kernels

    best = _kernels.ISA_NAMES.index(_kernels.best_isa())
    return list(_kernels.ISA_NAMES[: best + 1])


@pytest.fixture(params=simd_paths() or [None])
def simd(request):
    """Run the test once per SIMD path, restoring the default afterwards."""
    if request.param is None:
        pytest.skip("extension not built")
    from fusedadam import _kernels

    saved = _kernels.get_isa()
    _kernels.set_isa(request.param)
    yield request.param
    _kernels.set_isa(saved)


@pytest.fixture(params=["default", "zero"])
def parallel_threshold(request):
    """The default serial/parallel threshold, and 0 (every call split over threads)."""
    if not COMPILED:
        yield None
        return
    from fusedadam import _kernels

    saved = _kernels.get_parallel_threshold()
    if request.param == "zero":
        _kernels.set_parallel_threshold(0)
    yield _kernels.get_parallel_threshold()
    _kernels.set_parallel_threshold(saved)


def snapshot(optimizer):
    """Copies of every param and state array of an optimizer, plus the step counts."""
    params = [p.copy() for g in optimizer.param_groups for p in g["params"]]
    sd = optimizer.state_dict()
    state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
             for i, st in sd["state"].items()}
    return params, state


def assert_unchanged(optimizer, before):
    params, state = snapshot(optimizer)
    old_params, old_state = before
    assert len(params) == len(old_params)
    for new, old in zip(params, old_params):
        np.testing.assert_array_equal(new, old)
    assert state.keys() == old_state.keys()
    for i in state:
        assert state[i].keys() == old_state[i].keys()
        for k in state[i]:
            np.testing.assert_array_equal(state[i][k], old_state[i][k])
