"""The compiled bandwidth probe (bench/step.py's roofline) against its NumPy twin."""

import numpy as np
import pytest

import fusedadam

_kernels = pytest.importorskip("fusedadam._kernels")
_testing = pytest.importorskip("fusedadam._testing")


@pytest.fixture
def split_small_calls():
    """Split even tiny calls over threads, so n_threads=2 exercises the parallel path."""
    before = _kernels.get_chunk_size()
    _kernels.set_chunk_size(16)
    yield
    _kernels.set_chunk_size(before)


def _arrays(n, dtype, amsgrad, seed):
    rng = np.random.default_rng(seed)
    count = 5 if amsgrad else 4
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


@pytest.mark.usefixtures("split_small_calls")
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam_traffic", "amsgrad_traffic"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 100003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probe_matches_reference(dtype, n, n_threads, amsgrad):
    compiled = _arrays(n, dtype, amsgrad, seed=n)
    expected = [a.copy() for a in compiled]
    p, g, m, v = compiled[:4]
    thirds = [[compiled[4]]] if amsgrad else []
    for _ in range(3):
        _testing.probe([p], [g], [m], [v], *thirds, n_threads=n_threads)
        fusedadam.reference.probe_update(*expected[:4], *expected[4:])
    for got, want in zip(compiled, expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, strict=True)
    np.testing.assert_array_equal(g, expected[1])  # the gradient is only read


@pytest.mark.usefixtures("split_small_calls")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probe_many_arrays_one_call(dtype):
    """A call over several arrays of awkward sizes splits across array boundaries."""
    sizes = [0, 1, 7, 1000, 100003, 33]
    arrays = [_arrays(n, dtype, False, seed=i) for i, n in enumerate(sizes)]
    expected = [[a.copy() for a in group] for group in arrays]
    columns = [list(c) for c in zip(*arrays)]
    _testing.probe(*columns, n_threads=2)
    for got, want in zip(arrays, expected):
        fusedadam.reference.probe_update(*want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, strict=True)


def test_probe_rejects_mismatched_gradient():
    p, g, m, v = _arrays(10, np.float32, False, seed=0)
    with pytest.raises(ValueError, match="must match its param"):
        _testing.probe([p], [g.astype(np.float64)], [m], [v])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_probe_with_one_state_array(n_threads):
    """Lion's roofline: p, g and one state array (20 B per float32 element)."""
    rng = np.random.default_rng(3)
    p, g, m = (rng.standard_normal(40_000).astype(np.float32) for _ in range(3))
    want = [p.copy(), g.copy(), m.copy()]
    _testing.probe([p], [g], [m], n_threads=n_threads)
    fusedadam.reference.probe_update(*want)
    np.testing.assert_array_equal(p, want[0])
    np.testing.assert_array_equal(m, want[2])


@pytest.mark.parametrize("n_states", [1, 2, 3, 4])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_probe_moves_every_state_count_the_slots_hold(n_states, n_threads):
    """1 to FA_MAX_SLOTS - 2 state arrays (Lion 1, Adam 2, AMSGrad 3, Adan 4), one pass."""
    limit = _kernels.MAX_STATE_SLOTS
    rng = np.random.default_rng(n_states)
    arrays = [rng.standard_normal(50_001).astype(np.float32) for _ in range(2 + n_states)]
    want = [a.copy() for a in arrays]
    if n_states > limit:
        with pytest.raises(ValueError, match=f"1 to {limit} lists"):
            _testing.probe(*[[a] for a in arrays], n_threads=n_threads)
        return
    _testing.probe(*[[a] for a in arrays], n_threads=n_threads)
    fusedadam.reference.probe_update(*want)
    for got, expected in zip(arrays, want):
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.usefixtures("split_small_calls")
@pytest.mark.parametrize("n_states", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_probe_changes_nothing(dtype, n_threads, n_states):
    """The read-only probe (a pass that only reads: the check's scan, a per-tensor phase 1)
    reads p, g and 0 to 4 state arrays and writes none of them; NaN and inf are values like
    any other to it."""
    rng = np.random.default_rng(n_states)
    sizes = [0, 1, 7, 1000, 100003]
    columns = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(2 + n_states)]
    columns[1][3][5] = np.nan
    columns[0][4][-1] = -np.inf
    want = [[a.copy() for a in column] for column in columns]
    _testing.probe(*columns, n_threads=n_threads, read_only=True)
    for got_column, want_column in zip(columns, want):
        for got, expected in zip(got_column, want_column):
            np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_read_only_probe_of_one_array(n_threads):
    """One array given as both p and g: one stream (the scan's traffic), unchanged."""
    g = np.random.default_rng(5).standard_normal(70_001).astype(np.float32)
    want = g.copy()
    _testing.Probe([g], [g], read_only=True).run(n_threads)
    np.testing.assert_array_equal(g, want, strict=True)


def test_only_the_read_only_probe_takes_no_state():
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    with pytest.raises(ValueError, match="1 to .* lists of state arrays, got 0"):
        _testing.probe([p], [g])
    too_many = [[np.ones(10, np.float32)]] * (_kernels.MAX_STATE_SLOTS + 1)
    with pytest.raises(ValueError, match="0 to .* lists of state arrays"):
        _testing.probe([p], [g], *too_many, read_only=True)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_roofline_read_pass_reads_the_arrays_and_writes_none(n_threads):
    """``benchmarks.roofline.read_pass``, the floor bench/check_floor.py sets the scan
    against: the read-only probe over a list of arrays, which it leaves as they were."""
    from fusedadam.benchmarks import roofline

    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 7, 70_001)]
    arrays[3][-1] = np.nan
    want = [a.copy() for a in arrays]
    roofline.read_pass(arrays, n_threads)()
    for got, expected in zip(arrays, want):
        np.testing.assert_array_equal(got, expected, strict=True)


BENCH = __import__("pathlib").Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.skipif(not (BENCH / "check_floor.py").is_file(), reason="bench/ not shipped here")
def test_check_floor_bench_runs(capsys):
    """bench/check_floor.py on the toy model: its NaN step raised (else it stops with an
    AssertionError) and every row printed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_floor", BENCH / "check_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--model", "toy", "--threads", "2", "--repeats", "5"])
    out = capsys.readouterr().out
    for row in ("scan", "read pass", "step, check", "step, ignore", "scan / read pass"):
        assert f"  {row} " in out, out
