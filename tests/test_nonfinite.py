"""Non-finite gradients: the policies error, skip and ignore, on every path."""

import numpy as np
import pytest

import fusedadam as fa
from conftest import BACKENDS, assert_unchanged, snapshot


def two_group_optimizer(backend, nonfinite, size=50_000):
    rng = np.random.default_rng(0)
    params = [
        rng.standard_normal(size).astype(np.float32),
        rng.standard_normal((7, 3)).astype(np.float64),
    ]
    opt = fa.Adam(
        [{"params": params[:1]}, {"params": params[1:], "amsgrad": True}],
        backend=backend,
        nonfinite=nonfinite,
        num_threads=2,
    )
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
    grads[k].reshape(-1)[-1] = bad  # two bad values (one if i is the last)
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
    took = fa.functional.adam(
        [p], [np.array([1.0, np.nan, 1.0])], [m], [v], step=1, nonfinite="skip", backend=backend
    )
    assert took is False and not p.any() and not m.any()
    assert fa.functional.adam([p], [np.ones(3)], [m], [v], step=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_params_and_state_do_not_crash(backend):
    # Only gradients are checked; NaN/inf elsewhere is the user's business, computed as is.
    p = np.array([np.inf, np.nan, 1.0, -np.inf, 0.0])
    q = p.copy()
    opts = [
        fa.Adam(x, amsgrad=True, weight_decay=0.1, backend=b)
        for x, b in ((p, backend), (q, "numpy"))
    ]
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
        match = rf"grads\[0\] has 1 non-finite value .*index {position}"
        with pytest.raises(FloatingPointError, match=match):
            opt.step(g)
    else:
        opt.step(g)
        assert opt.skipped_steps == 1
    assert_unchanged(opt, before)
    opt.step(np.ones_like(p))
    assert opt.state_dict()["state"][0]["step"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_groups", [1, 2])
def test_an_error_step_publishes_no_gradient_norm(backend, n_groups):
    """A step that raises for a NaN gradient changes nothing, last_grad_norm included (the
    one-group compiled path published the NaN norm before raising)."""
    ps = [np.ones(3, np.float32) for _ in range(n_groups)]
    opt = fa.Adam([{"params": [p]} for p in ps], max_grad_norm=1.0, backend=backend)
    before = opt.last_grad_norm
    grads = [np.array([np.nan, 1, 1], np.float32)] + [np.ones(3, np.float32)] * (n_groups - 1)
    with pytest.raises(FloatingPointError):
        opt.step(grads)
    assert opt.last_grad_norm == before


@pytest.fixture
def scan_tasks(request):
    """Chunks of 16 elements and scan tasks of ``request.param`` chunks; restored after."""
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size(), _kernels.get_scan_task_size()
    _kernels.set_chunk_size(16)
    _kernels.set_scan_task_size(16 * request.param)
    yield request.param
    _kernels.set_chunk_size(saved[0])
    _kernels.set_scan_task_size(saved[1])


@pytest.mark.skipif("compiled" not in BACKENDS, reason="extension not built")
@pytest.mark.parametrize("scan_tasks", [1, 3, 16], indirect=True)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize(
    # (array, element) of the first bad value; a second one always sits later, in another
    # task when the tasks are small
    "where",
    [(0, 0), (0, 47), (0, 999), (1, 0), (1, 3 * 48 + 17), (2, 1010)],
)
def test_first_bad_value_is_found_for_every_scan_task_size(scan_tasks, threads, clip, where):
    """The parallel scan runs several chunks per task: the first bad value (in array order)
    is reported whichever task holds it and whichever thread ran that task, a task stopping
    at its first bad chunk hides no earlier one, and nothing is written."""
    rng = np.random.default_rng(3)
    sizes = [1000, 777, 1011]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    opt = fa.Adam(params, nonfinite="error", num_threads=threads, max_grad_norm=clip)
    opt.step([np.ones_like(p) for p in params])
    before = snapshot(opt)
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    k, i = where
    grads[k][i] = np.inf
    grads[2][-1] = np.nan
    match = rf"grads\[{k}\] has \d non-finite values? .*index {i}\)"
    with pytest.raises(FloatingPointError, match=match):
        opt.step(grads)
    assert_unchanged(opt, before)
