"""GPU recipes (docs/engines.md): the model on a CUDA device, fusedadam stepping on the CPU.

FSDP2 with ``CPUOffloadPolicy``, torchao's ``CPUOffloadOptimizer`` and
``fusedadam.torch.Offload``'s pinned-memory path need a GPU (torch asks for an accelerator),
so these run only where CUDA is present and skip elsewhere. Each compares with the same
run using ``torch.optim.AdamW`` (or, for Offload, with the same gradients stepped on a
CPU-only Offload: the same bits). One process; FSDP2 on a 1-rank mesh.
"""

import importlib.util
import os
import warnings

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import fusedadam.torch as ft  # noqa: E402

STEPS = 5


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 129), torch.nn.GELU(), torch.nn.Linear(129, 8)
    ).to(device="cuda", dtype=dtype)


def _batch(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 64, generator=g)
    return x.to("cuda", dtype), torch.sin(x[:, :8]).to("cuda", dtype)


@pytest.fixture(scope="module")
def process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("cpu:gloo,cuda:nccl", store=dist.HashStore(), rank=0, world_size=1)
        yield
    dist.destroy_process_group()


@pytest.mark.parametrize("clip", [None, 0.05])
def test_fsdp2_cpu_offload_policy(process_group, clip):
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    def run(cls):
        model = _model()
        fully_shard(model[0], offload_policy=CPUOffloadPolicy())
        fully_shard(model, offload_policy=CPUOffloadPolicy())
        p = next(model.parameters())
        assert p.device.type == "cpu"  # the sharded params (and so the step) are on the CPU
        kw = {"max_grad_norm": clip} if clip and cls is ft.AdamW else {}
        opt = cls(model.parameters(), lr=1e-2, weight_decay=0.1, **kw)
        losses = []
        for step in range(STEPS):
            x, y = _batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            if clip and cls is not ft.AdamW:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            losses.append(loss.item())
        return losses, {k: v.full_tensor().cpu() for k, v in model.state_dict().items()}

    fused, ref = run(ft.AdamW), run(torch.optim.AdamW)
    torch.testing.assert_close(fused[0], ref[0], rtol=1e-5, atol=0)
    for k in ref[1]:
        torch.testing.assert_close(fused[1][k], ref[1][k], rtol=0, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao")
@pytest.mark.xfail(
    raises=ValueError,
    strict=True,
    reason="CPUOffloadOptimizer makes its CPU copies without requires_grad, which "
    "fusedadam.torch refuses at construction",
)
def test_torchao_cpu_offload_optimizer():
    from torchao.optim import CPUOffloadOptimizer

    def run(cls):
        model = _model()
        opt = CPUOffloadOptimizer(model.parameters(), cls, lr=1e-2, weight_decay=0.1)
        for step in range(STEPS):
            x, y = _batch(step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return {k: v.cpu() for k, v in model.state_dict().items()}

    fused, ref = run(ft.AdamW), run(torch.optim.AdamW)
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=0, atol=1e-6)


def test_offload_pinned_matches_cpu_offload():
    """bfloat16 model on the GPU; the pinned Offload and a CPU-only Offload fed the same
    gradients write the same bfloat16 params and float32 masters."""
    model = _model(torch.bfloat16)
    cpu_model = _model(torch.bfloat16).cpu()
    gpu = ft.Offload(model.parameters(), ft.AdamW, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5)
    cpu = ft.Offload(
        cpu_model.parameters(),
        ft.AdamW,
        pin_memory=False,
        lr=1e-2,
        weight_decay=0.1,
        max_grad_norm=0.5,
    )
    assert gpu.pin_memory and all(b.is_pinned() for b in gpu.buffers)
    for step in range(STEPS):
        x, y = _batch(step, torch.bfloat16)
        torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        for p, q in zip(model.parameters(), cpu_model.parameters()):
            q.grad = p.grad.cpu()
        gpu.step()
        cpu.step()
        gpu.copy_to_params()
        cpu.copy_to_params()
        torch.cuda.synchronize()
        model.zero_grad()
    for p, q in zip(model.parameters(), cpu_model.parameters()):
        assert torch.equal(p.cpu(), q)
    for a, b in zip(gpu.master_params(), cpu.master_params()):
        assert torch.equal(a, b)
