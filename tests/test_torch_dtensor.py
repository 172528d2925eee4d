"""fusedadam.torch with DTensor params in one process (a 1-rank gloo mesh).

The multi-rank behaviour (FSDP2 shards, the global norm, DCP resharding) is tested across
processes in test_engines.py; these check the bridge itself quickly: the step updates the
local shard in place exactly as it updates a plain tensor, the state is DTensors over the
kernel's memory, state dicts load back, and a replaced local shard is followed.
"""

import os
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import fusedadam.torch as ft  # noqa: E402


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def _pair(mesh, dtype=torch.float32, shape=(7, 5)):
    """A plain param and a DTensor param (Shard(0)) with the same values and gradient."""
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(0)
    value = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    plain = torch.nn.Parameter(value.clone())
    plain.grad = grad.clone()
    dt = torch.nn.Parameter(distribute_tensor(value.clone(), mesh, [Shard(0)]))
    dt.grad = distribute_tensor(grad.clone(), mesh, [Shard(0)])
    return plain, dt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_step_equals_plain_tensor(mesh, dtype, clip):
    plain, dt = _pair(mesh, dtype)
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=clip)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=clip)
    local = dt._local_tensor
    for _ in range(3):
        a.step()
        b.step()
    assert dt._local_tensor is local  # updated in place
    # Without clipping the same bits; with it, the norm is summed in another order (over
    # the mesh, as on several ranks it must be) and the coefficient folded into the
    # gradient scale: equal to rounding.
    same = torch.equal if clip is None else _close
    assert same(dt.full_tensor(), plain.detach())
    st = b.state[dt]
    assert type(st["step"]) is torch.Tensor and int(st["step"]) == 3
    for name, value in a.state[plain].items():
        if name == "step":
            continue
        assert type(st[name]).__name__ == "DTensor", name
        assert st[name].placements == dt.placements
        assert same(st[name].full_tensor(), value), name
    if clip is not None:
        assert b.last_grad_norm == pytest.approx(a.last_grad_norm, rel=1e-6)
    # The state DTensors wrap the kernel's memory: an in-place edit is what the next step sees.
    b.state[dt]["exp_avg"].to_local().zero_()
    a.state[plain]["exp_avg"].zero_()
    a.step()
    b.step()
    assert same(dt.full_tensor(), plain.detach())


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-7)
    return True


def test_state_dict_round_trip_and_plain_state(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1)
    b = ft.AdamW([dt], lr=0.1)
    a.step()
    b.step()
    # A DTensor state dict, and a plain one (saved without sharding), both load.
    for saved in (b.state_dict(), a.state_dict()):
        plain2, dt2 = _pair(mesh)
        a2, b2 = ft.AdamW([plain2], lr=0.1), ft.AdamW([dt2], lr=0.1)
        a2.load_state_dict(a.state_dict())
        b2.load_state_dict(saved)
        assert type(b2.state[dt2]["exp_avg"]).__name__ == "DTensor"
        a2.step()
        b2.step()
        assert torch.equal(dt2.full_tensor(), plain2.detach())


def test_replaced_local_shard_is_followed(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1)
    b = ft.AdamW([dt], lr=0.1)
    a.step()
    b.step()
    # FSDP2 re-pads a shard into new memory after load_state_dict(assign=True) or .to().
    dt._local_tensor = dt._local_tensor.clone()
    a.step()
    b.step()
    assert torch.equal(dt.full_tensor(), plain.detach())


def test_gradient_placement_must_match(mesh):
    from torch.distributed.tensor import Replicate, distribute_tensor

    _, dt = _pair(mesh)
    dt.grad = distribute_tensor(dt.grad.full_tensor(), mesh, [Replicate()])
    opt = ft.AdamW([dt], lr=0.1)
    before = dt.full_tensor().clone()
    with pytest.raises(ValueError, match=r"gradient placed \(Replicate\(\),\)"):
        opt.step()
    assert torch.equal(dt.full_tensor(), before) and not opt.state[dt]


def test_8bit_state_refused_for_dtensor_params(mesh):
    _, dt = _pair(mesh)
    with pytest.raises(ValueError, match=r"state_dtype='8bit' is not supported for DTensor"):
        ft.AdamW([dt], state_dtype="8bit")
    opt = ft.AdamW([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match=r"param_groups\[1\]: state_dtype='8bit'"):
        opt.add_param_group({"params": [dt], "state_dtype": "8bit"})
    assert len(opt.param_groups) == 1


def test_clipping_switched_off_mid_run(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=0.5)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=0.5)
    for _ in range(2):  # the second step runs on the inner groups the first one left
        a.step()
        b.step()
    a.param_groups[0]["max_grad_norm"] = None
    b.param_groups[0]["max_grad_norm"] = None
    before_a, before_b = plain.detach().clone(), dt.full_tensor().clone()
    a.step()
    b.step()
    assert b.last_grad_norm is None
    # The unclipped update of the third step is the same on both (to rounding).
    _close(dt.full_tensor() - before_b, plain.detach() - before_a)


def test_huge_finite_gradient_is_not_taken_for_nonfinite(mesh):
    plain, dt = _pair(mesh)
    plain.grad[0, 0] = 1e20  # its square overflows float32; the value itself is finite
    dt.grad._local_tensor[0, 0] = 1e20
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=1.0)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=1.0)
    a.step()
    b.step()
    assert b.last_grad_norm == pytest.approx(1e20, rel=1e-6)
    _close(dt.full_tensor(), plain.detach())
    dt.grad._local_tensor[0, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]: a gradient holds NaN"):
        b.step()
