"""Checks shared by the tests of the per-tensor algorithms (test_algo_lamb.py,
test_algo_stableadamw.py, test_algo_cautious.py): parity with a reference package, the
compiled step against the NumPy reference on every storage type, thread counts, the torch
front end, the functional form, state dict round trips and refused hyperparameters."""

import ml_dtypes
import numpy as np
import pytest

from conftest import COMPILED

# Sizes around the per-tensor pieces (16384 elements) and the chunks: empty, one element,
# odd, one piece exactly, one element over, several pieces.
SIZES = [(0,), (1,), (7,), (33, 5), (16383,), (16384,), (16385,), (40001,)]
# The 100-step parity runs: a several-piece tensor among small ones.
PARITY = [(0,), (1,), (7,), (33, 5), (16385,)]
SMALL = [(0,), (1,), (7,), (33, 5), (300,), (16385,)]


# The storage types the per-tensor kinds are checked on: (param dtype, options).
STORAGE = {
    "float32": (np.float32, {}),
    "float64": (np.float64, {}),
    "bfloat16_master": (ml_dtypes.bfloat16, {}),
    "float16_master_bf16_state": (np.float16, {"state_dtype": "bfloat16"}),
    "float32_8bit": (np.float32, {"state_dtype": "8bit"}),
    "bfloat16_residual_8bit": (ml_dtypes.bfloat16, {"state_dtype": "8bit", "master": "residual"}),
}


def storage_without(*names):
    """``STORAGE`` less the named storage types."""
    return {k: v for k, v in STORAGE.items() if k not in names}


def grads_for(rng, shapes, steps, dtype=np.float64):
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def parity(make_ours, make_theirs, shapes=PARITY, steps=100, seed=0, rtol=1e-10):
    """``steps`` float64 steps of our NumPy-front-end optimizer and of the reference package's
    torch optimizer from the same params and gradients: every param to ``rtol``."""
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(seed)
    ours = [rng.standard_normal(s) for s in shapes]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in ours]
    opt, ref = make_ours(ours), make_theirs(theirs)
    for grads in grads_for(rng, shapes, steps):
        opt.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = torch.tensor(g)
        ref.step()
    for k, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=rtol, atol=1e-14, err_msg=k)
    return ours


def parity_every_size_threads_bit_identical(make_ours, make_theirs):
    """Sizes around the pieces, 10 steps with 1 and with 2 threads, ``make_ours(params,
    threads)``: both match the package, with the same bits."""
    got = [
        parity(
            lambda ps, threads=threads: make_ours(ps, threads),
            make_theirs,
            shapes=SIZES,
            steps=10,
        )
        for threads in (1, 2)
    ]
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)


def run(cls, options, shapes=SIZES, steps=6, dtype=np.float64, seed=1, **extra):
    """Params and state after ``steps`` steps of ``cls`` (any backend, threads, state)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = cls(params, **options, **extra)
    grad_dtype = np.float32 if dtype not in (np.float32, np.float64) else dtype
    for grads in grads_for(rng, shapes, steps, grad_dtype):
        opt.step(grads)
    return params, opt


def assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for k, (x, y) in enumerate(zip(pa, pb)):
        np.testing.assert_array_equal(
            np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8), err_msg=f"param {k}"
        )
        sa, sb = oa.state[pa[k]], ob.state[pb[k]]
        assert sorted(sa) == sorted(sb)
        for key in sa:
            np.testing.assert_array_equal(np.asarray(sa[key]), np.asarray(sb[key]), err_msg=key)


def compiled_is_reference(cls, options, dtype=np.float64, **extra):
    """The compiled step (1 thread; 2 threads with chunks of 16 elements) is the NumPy
    reference's, bit for bit."""
    if not COMPILED:
        pytest.skip("extension not built")
    from fusedadam import _kernels

    expected = run(cls, options, dtype=dtype, backend="numpy", **extra)
    assert_same(run(cls, options, dtype=dtype, backend="compiled", num_threads=1, **extra),
                expected)  # fmt: skip
    saved = _kernels.get_chunk_size()
    _kernels.set_chunk_size(16)
    try:
        assert_same(
            run(cls, options, dtype=dtype, backend="compiled", num_threads=2, **extra), expected
        )
    finally:
        _kernels.set_chunk_size(saved)


def torch_is_numpy(torch_cls, cls, options, steps=5):
    """The torch front end's step is the NumPy front end's, bit for bit."""
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s) for s in SMALL]
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours, theirs = cls(params, **options), torch_cls(tensors, **options)
    for grads in grads_for(rng, SMALL, steps):
        ours.step(grads)
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        theirs.step()
    for p, t in zip(params, tensors):
        np.testing.assert_array_equal(p, t.detach().numpy())
        for name, value in ours.state[p].items():
            np.testing.assert_array_equal(
                np.asarray(value), np.asarray(theirs.state[t][name]), err_msg=name
            )


def state_dict_round_trip(cls, options, steps=3):
    """Save after ``steps`` steps, load into a new optimizer, go on: the same as never
    stopping."""
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s) for s in SMALL]
    copies = [p.copy() for p in params]
    grads = grads_for(rng, SMALL, 2 * steps)
    straight = cls(params, **options)
    for g in grads:
        straight.step(g)
    first = cls(copies, **options)
    for g in grads[:steps]:
        first.step(g)
    saved = first.state_dict()
    resumed_params = [p.copy() for p in copies]
    resumed = cls(resumed_params, **options)
    resumed.load_state_dict(saved)
    for g in grads[steps:]:
        resumed.step(g)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)


def functional_is_the_class(cls, options, functional, functional_options):
    """Three steps of the class (``options``) and of its functional form
    (``functional_options``) on a small and a several-piece tensor: the same params."""
    rng = np.random.default_rng(5)
    shapes = [(7,), (16385,)]
    p_class = [rng.standard_normal(s) for s in shapes]
    p_func = [p.copy() for p in p_class]
    m = [np.zeros(s) for s in shapes]
    v = [np.zeros(s) for s in shapes]
    opt = cls(p_class, **options)
    for t in range(1, 4):
        grads = [rng.standard_normal(s) for s in shapes]
        opt.step(grads)
        functional(p_func, grads, m, v, step=t, **functional_options)
    for a, b in zip(p_class, p_func):
        np.testing.assert_array_equal(a, b)


def refused(cls, bad, match, exception=(ValueError, TypeError)):
    """A bad hyperparameter is refused at construction, and when set on a group of an
    optimizer with state, the step raises naming it and changes nothing."""
    with pytest.raises(exception, match=match):
        cls([np.ones(3)], **bad)
    p = np.linspace(-1.0, 1.0, 5)
    opt = cls([p])
    opt.step([np.full(5, 0.5)])
    before = p.copy()
    state = {k: np.array(v, copy=True) for k, v in opt.state[p].items()}
    opt.param_groups[0].update(bad)
    with pytest.raises(exception, match=match):
        opt.step([np.full(5, 0.25)])
    np.testing.assert_array_equal(p, before)
    for k, v in state.items():
        np.testing.assert_array_equal(opt.state[p][k], v)
