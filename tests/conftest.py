"""Shared fixtures: backends, SIMD paths, thread counts, the parallel threshold, and the
table of algorithm variants (one per loop kind and option that changes the scalars)."""

import importlib
import importlib.util
import os

import numpy as np
import pytest

import fusedadam as fa
from fusedadam._algorithms import CLASSES
from fusedadam.benchmarks.peers import import_reference

COMPILED = fa.backend_info()["compiled"]
requires_compiled = pytest.mark.skipif(not COMPILED, reason="extension not built")
BACKENDS = ["numpy"] + (["compiled"] if COMPILED else [])

# name -> (class, options), from the registry's ClassEntry.variants. Together they run every
# dense loop kind of _loops.h (RAdam's first steps run "momentum", later ones "adam") and
# every option that changes a scalar.
VARIANTS = {
    name: (getattr(fa, class_name), options)
    for class_name, entry in CLASSES.items()
    for name, options in entry.variants
}


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


@pytest.fixture(params=["default", "small"])
def parallel_threshold(request):
    """The default chunk size, and 16 elements (every call of more than 16 elements split
    into chunks that the threads claim)."""
    if not COMPILED:
        yield None
        return
    from fusedadam import _kernels

    saved = _kernels.get_chunk_size()
    if request.param == "small":
        _kernels.set_chunk_size(16)
    yield _kernels.get_chunk_size()
    _kernels.set_chunk_size(saved)


def snapshot(optimizer):
    """Copies of every param and state array of an optimizer, plus the step counts."""
    params = [p.copy() for g in optimizer.param_groups for p in g["params"]]
    sd = optimizer.state_dict()
    state = {
        i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
        for i, st in sd["state"].items()
    }
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


def compile_and_run_c(source, header_dir, tmp_path, flags, timeout):
    """Build the C test ``source`` with ``cc`` (asserting the build succeeds) and run it;
    the finished process (its own assertions are the caller's)."""
    import subprocess

    exe = tmp_path / source.stem
    build = subprocess.run(
        ["cc", *flags, "-I", str(header_dir), str(source), "-o", str(exe), "-lm"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)


def reference_package(module):
    """Import a reference package the new algorithms are checked against (schedulefree, timm,
    pytorch_optimizer, optimi, optax), or skip the test where it is not installed.

    CI installs them and sets ``FUSEDADAM_REQUIRE_REFERENCES=1``, which turns the skip into a
    failure: a parity test that silently skips proves nothing.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get("FUSEDADAM_REQUIRE_REFERENCES"):
            raise
        pytest.skip(f"reference package {module!r} not installed ({error})")


def timm_optim(module):
    """``timm.optim.<module>`` without running ``timm/__init__.py`` (its imports need
    torchvision, which CI does not install; see ``benchmarks.peers.import_reference``).
    Skips where timm is not installed, fails in CI (as ``reference_package``)."""
    if importlib.util.find_spec("timm") is None:
        return reference_package("timm")  # raises in CI, skips here
    return import_reference(f"timm.optim.{module}")


def torch_steps_like_numpy(name, options, dtype, backend, state_names):
    """``fusedadam.torch.<name>`` steps two params (float32, float64 or bfloat16 tensors) six
    times exactly as ``fusedadam.<name>`` steps the same data: params and ``state_names``."""
    torch = pytest.importorskip("torch")
    fat = pytest.importorskip("fusedadam.torch")
    rng = np.random.default_rng(4)
    shapes = [(4, 5), (9,)]
    start = [torch.from_numpy(rng.standard_normal(s)).to(dtype) for s in shapes]
    grads = [[torch.from_numpy(rng.standard_normal(s)).to(dtype) for s in shapes] for _ in range(6)]
    tparams = [torch.nn.Parameter(x.clone()) for x in start]
    topt = getattr(fat, name)(tparams, **options)
    if dtype == torch.bfloat16:
        import ml_dtypes

        nparams = [x.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy() for x in start]
        as_np = lambda g: g.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)  # noqa: E731
    else:
        nparams = [x.numpy().copy() for x in start]
        as_np = lambda g: g.numpy()  # noqa: E731
    nopt = getattr(fa, name)(nparams, backend=backend, **options)
    for step_grads in grads:
        for p, g in zip(tparams, step_grads):
            p.grad = g.clone()
        topt.step()
        nopt.step([as_np(g) for g in step_grads])
    for tp, np_p in zip(tparams, nparams):
        got = tp.detach()
        got = got.view(torch.uint16).numpy() if dtype == torch.bfloat16 else got.numpy()
        want = np_p.view(np.uint16) if dtype == torch.bfloat16 else np_p
        np.testing.assert_array_equal(got, want)
        for k in state_names:
            np.testing.assert_array_equal(topt.state[tp][k].numpy(), nopt.state[np_p][k])


def torch_twenty_steps_like_numpy(name, options):
    """``fusedadam.torch.<name>`` and ``fusedadam.<name>`` take 20 steps of seeded float32
    gradients (lr 1e-2): the params and both moments agree byte for byte."""
    torch = pytest.importorskip("torch")
    ft = pytest.importorskip("fusedadam.torch")
    gen = torch.Generator().manual_seed(7)
    ours = [torch.randn(s, generator=gen, requires_grad=True) for s in [(9, 3), (5,)]]
    arrays = [p.detach().numpy().copy() for p in ours]
    opt = getattr(ft, name)(ours, lr=1e-2, **options)
    ref = getattr(fa, name)(arrays, lr=1e-2, **options)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step()
        ref.step([g.numpy() for g in grads])
    for p, a in zip(ours, arrays):
        assert p.detach().numpy().tobytes() == a.tobytes()
        for state in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][state].numpy().tobytes() == ref.state[a][state].tobytes()
