"""fusedadam.torch with ``state_dtype="8bit"``: the NumPy optimizer's 8-bit moments
(uint8 codes shaped like the param, float32 per-block scales ``<moment>_absmax``) as torch
tensors in ``opt.state``, the same bits as :class:`fusedadam.AdamW`, and state dicts that
load back (also through ``torch.save``)."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedadam as fa  # noqa: E402
import fusedadam.torch as ft  # noqa: E402
from fusedadam.torch import _numpy  # noqa: E402

# 8-bit from 4096 elements (smaller params keep float32 moments); odd sizes, a partial block.
SIZES = [(5000,), (64, 64), (4097,), (10,), (0,)]


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SIZES]


def _grads(step, dtype):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g).to(dtype) for s in SIZES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_same_bits_as_numpy_optimizer(dtype, clip):
    ps = _params(dtype)
    arrays = [_numpy(p.detach().clone()) for p in ps]
    opt = ft.AdamW(ps, lr=1e-2, state_dtype="8bit", max_grad_norm=clip)
    ref = fa.AdamW(arrays, lr=1e-2, state_dtype="8bit", max_grad_norm=clip)
    for step in range(4):
        grads = _grads(step, dtype)
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
        ref.step([_numpy(g) for g in grads])
    for p, a in zip(ps, arrays):
        np.testing.assert_array_equal(_numpy(p.detach()), a)
    st = opt.state[ps[0]]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg"].shape == ps[0].shape
    assert st["exp_avg_absmax"].dtype == torch.float32 and st["exp_avg_absmax"].shape == (20,)
    assert opt.state[ps[3]]["exp_avg"].dtype == torch.float32  # small: float32 moments
    for p, a in zip(ps, arrays):
        for name, value in ref.state[a].items():
            np.testing.assert_array_equal(_numpy(opt.state[p][name]), np.asarray(value), name)


def test_state_dict_round_trip_through_torch_save():
    ps = _params(torch.float32)
    opt = ft.AdamW(ps, lr=1e-2, state_dtype="8bit")
    for step in range(2):
        for p, g in zip(ps, _grads(step, torch.float32)):
            p.grad = g
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    again = ft.AdamW(qs, lr=1e-2, state_dtype="8bit")
    again.load_state_dict(saved)
    for step in range(2, 4):
        grads = _grads(step, torch.float32)
        for p, q, g in zip(ps, qs, grads):
            p.grad, q.grad = g, g.clone()
        opt.step()
        again.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        for name, value in opt.state[p].items():
            assert torch.equal(again.state[q][name], value), name


def test_8bit_state_edits_in_place_are_the_kernels_memory():
    p = torch.nn.Parameter(torch.ones(5000))
    opt = ft.AdamW([p], lr=1e-2, state_dtype="8bit")
    p.grad = torch.ones(5000)
    opt.step()
    assert (
        opt.state[p]["exp_avg"].data_ptr()
        == opt._engine.plans[0]
        .slots[2 + opt._engine.plans[0].state_names.index("exp_avg")][0]
        .ctypes.data
    )
