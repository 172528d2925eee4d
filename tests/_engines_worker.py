"""Engine recipes under ``torchrun``: run by tests/test_engines.py, not collected by pytest.

``python -m torch.distributed.run --standalone --nproc_per_node 2 _engines_worker.py
SCENARIO OUT``: every scenario trains the same tiny model on the same data twice or more in
one launch, once with ``fusedadam.torch.AdamW`` and once with ``torch.optim.AdamW`` inside
the engine (plus interrupted runs resumed from the engine's own checkpoint), and rank 0
saves what the test compares (loss curves, final params) to ``OUT/SCENARIO.pt``.
Everything runs on the CPU over gloo; each rank uses one thread.
"""

import copy
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fusedadam.torch as ft

torch.set_num_threads(1)
warnings.filterwarnings("ignore")  # the engines' own deprecation and CPU notices

LR, WD, STEPS, SAVE_AT = 1e-2, 0.1, 6, 3
CLIP = 0.1  # below the MLP's gradient norms (about 0.3-0.6): clipping acts at every step


def _rank():
    return dist.get_rank() if dist.is_initialized() else 0


def _world():
    return dist.get_world_size() if dist.is_initialized() else 1


def _mlp(seed=0, hidden=32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 4),
    )


def _batch(step, rank, n=16):
    """This rank's batch of a step: the same on every launch."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, 8, generator=g)
    return x, torch.sin(x[:, :4]) + 0.1 * torch.randn(n, 4, generator=g)


def _mean(value):
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.item() / _world()


def _params(model):
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ DDP + ZeRO
def zero(out):
    """DDP + ZeroRedundancyOptimizer: loss curve, consolidated state dict, reload, resume."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank = _rank()

    def run(cls, start=0, checkpoint=None, save=None, hidden=32, **options):
        model = _mlp(hidden=hidden)
        ddp = DDP(model)
        opt = ZeroRedundancyOptimizer(
            ddp.parameters(), optimizer_class=cls, lr=LR, weight_decay=WD, **options
        )
        if checkpoint is not None:
            saved = torch.load(checkpoint, weights_only=False)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optim"])
        losses = []
        for step in range(start, STEPS):
            x, y = _batch(step, rank)
            loss = F.mse_loss(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(_mean(loss.item()))
            if save is not None and step + 1 == SAVE_AT:
                opt.consolidate_state_dict(to=0)
                if rank == 0:
                    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, save)
                dist.barrier()
        owned = sum(len(g["params"]) for g in opt.optim.param_groups)
        return {"losses": losses, "params": _params(model), "owned": owned}

    result = {}
    for name, cls in (("fused", ft.AdamW), ("torch", torch.optim.AdamW)):
        ckpt = Path(out) / f"zero_{name}.pt"
        result[name] = run(cls, save=ckpt)
        result[name + "_resumed"] = run(cls, start=SAVE_AT, checkpoint=ckpt)
        if rank == 0:
            result[name + "_consolidated"] = torch.load(ckpt, weights_only=False)["optim"]
    # 8-bit moments (the 128 x 128 weight is 8-bit; smaller params keep float32 moments).
    ckpt = Path(out) / "zero_fused8bit.pt"
    result["fused8bit"] = run(ft.AdamW, save=ckpt, hidden=128, state_dtype="8bit")
    result["fused8bit_resumed"] = run(
        ft.AdamW, start=SAVE_AT, checkpoint=ckpt, hidden=128, state_dtype="8bit"
    )
    if rank == 0:
        result["fused8bit_consolidated"] = torch.load(ckpt, weights_only=False)["optim"]
    return result


# ------------------------------------------------------------------ HF Trainer
def hf(out):
    """transformers.Trainer on 2 CPU processes: ``optimizers=`` and
    ``optimizer_cls_and_kwargs``, bf16 autocast, clipping, resume from a checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    g = torch.Generator().manual_seed(0)
    # 2 ranks x 4 sequences a step, 3 steps an epoch: the checkpoint at step 3 ends an epoch.
    data = []
    for _ in range(24):
        ids = torch.randint(0, 64, (16,), generator=g)
        data.append({"input_ids": ids, "labels": ids.clone()})

    def model():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
        return LlamaForCausalLM(config)

    def run(tag, optimizers=None, cls_kwargs=None, resume=False):
        args = TrainingArguments(
            output_dir=str(Path(out) / f"hf_{tag}"),
            per_device_train_batch_size=4,
            max_steps=STEPS,
            learning_rate=1e-3,
            weight_decay=WD,
            max_grad_norm=0.5,
            bf16=True,
            use_cpu=True,
            logging_steps=1,
            save_strategy="steps",
            save_steps=SAVE_AT,
            report_to="none",
            seed=0,
            ddp_backend="gloo",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        m = model()
        kwargs = {}
        if optimizers is not None:
            kwargs["optimizers"] = (optimizers(m), None)
        if cls_kwargs is not None:
            kwargs["optimizer_cls_and_kwargs"] = cls_kwargs
        trainer = Trainer(model=m, args=args, train_dataset=data, **kwargs)
        checkpoint = str(Path(args.output_dir) / f"checkpoint-{SAVE_AT}") if resume else None
        trainer.train(resume_from_checkpoint=checkpoint)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return {
            "losses": losses,
            "params": _params(m),
            "optimizer": type(trainer.optimizer.optimizer).__module__
            + "."
            + type(trainer.optimizer.optimizer).__name__,
        }

    kw = {"lr": 1e-3, "weight_decay": WD}
    result = {
        "fused_cls": run("fused_cls", cls_kwargs=(ft.AdamW, kw)),
        "torch_cls": run("torch_cls", cls_kwargs=(torch.optim.AdamW, kw)),
        "fused_obj": run("fused_obj", optimizers=lambda m: ft.AdamW(m.parameters(), **kw)),
        "torch_obj": run("torch_obj", optimizers=lambda m: torch.optim.AdamW(m.parameters(), **kw)),
    }
    # Resume from the checkpoint the uninterrupted run wrote at SAVE_AT (a fresh Trainer).
    result["fused_cls_resumed"] = run("fused_cls", cls_kwargs=(ft.AdamW, kw), resume=True)
    result["torch_cls_resumed"] = run("torch_cls", cls_kwargs=(torch.optim.AdamW, kw), resume=True)
    return result


# ------------------------------------------------------------------ DeepSpeed
DEEPSPEED_CONFIG = {
    "train_micro_batch_size_per_gpu": 16,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": CLIP,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    # DeepSpeed's ZeRO takes optimizers from an exact-type allow-list (torch.optim.Adam,
    # AdamW, its own FusedAdam/CPUAdam, ...): any other client optimizer needs this key.
    "zero_allow_untested_optimizer": True,
    # With offload_optimizer it insists on its own DeepSpeedCPUAdam unless this is false.
    "zero_force_ds_cpu_optimizer": False,
    "steps_per_print": 10**9,
}


def deepspeed_zero2(out):
    """DeepSpeed ZeRO-2, optimizer offloaded to the CPU, a client optimizer; bf16 params,
    fp32 master partitions stepped by the client optimizer; save/load_checkpoint."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel("ERROR")
    # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce on first use (about
    # a minute); the test keeps plain gloo, which steps nothing differently.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank = _rank()

    def run(cls, tag, resume=False, hidden=32, **options):
        model = _mlp(hidden=hidden)
        opt = cls(model.parameters(), lr=LR, weight_decay=WD, **options)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=DEEPSPEED_CONFIG)
        folder = str(Path(out) / f"ds_{tag}")
        start = 0
        if resume:
            engine.load_checkpoint(folder, tag="step3")
            start = SAVE_AT
        losses = []
        for step in range(start, STEPS):
            x, y = _batch(step, rank)
            loss = F.mse_loss(engine(x.bfloat16()).float(), y)
            engine.backward(loss)
            engine.step()
            losses.append(_mean(loss.item()))
            if not resume and step + 1 == SAVE_AT:
                engine.save_checkpoint(folder, tag="step3")
        # The fp32 master partition of this rank (what the client optimizer steps).
        masters = [
            p.detach().clone()
            for g in engine.optimizer.single_partition_of_fp32_groups
            for p in [g]
        ]
        inner = engine.optimizer.optimizer
        state = inner.state[inner.param_groups[0]["params"][0]]
        return {
            "losses": losses,
            "params": _params(model),
            "masters": masters,
            "optimizer": f"{type(inner).__module__}.{type(inner).__name__}",
            "state_dtypes": {k: str(v.dtype) for k, v in state.items()},
        }

    result = {}
    for name, cls in (("fused", ft.AdamW), ("torch", torch.optim.AdamW)):
        result[name] = run(cls, name)
        result[name + "_resumed"] = run(cls, name, resume=True)
    # 8-bit moments over each rank's flat partition (9.3k elements: above the 8-bit floor).
    result["fused8bit"] = run(ft.AdamW, "fused8bit", hidden=128, state_dtype="8bit")
    result["fused8bit_resumed"] = run(
        ft.AdamW, "fused8bit", resume=True, hidden=128, state_dtype="8bit"
    )
    result["torch128"] = run(torch.optim.AdamW, "torch128", hidden=128)
    return result


# ------------------------------------------------------------------ Lightning
def lightning(out):
    """Lightning DDP on 2 CPU processes, precision="bf16-mixed": fusedadam clips with
    max_grad_norm= (Lightning refuses gradient_clip_val for optimizers that unscale inside
    their step), torch.optim.AdamW with gradient_clip_val=; resume with ckpt_path."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        import logging

        logging.getLogger(name).setLevel(logging.ERROR)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 96  # 2 ranks x 16 per batch x 3 steps per epoch

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(8, generator=g)
            return x, torch.sin(x[:4]) + 0.1 * torch.randn(4, generator=g)

    class Module(L.LightningModule):
        def __init__(self, make_optimizer):
            super().__init__()
            self.net = _mlp()
            self.make_optimizer = make_optimizer
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            self.losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return self.make_optimizer(self.parameters())

    def fit(tag, make_optimizer, clip=None, resume=False):
        folder = Path(out) / f"pl_{tag}"
        module = Module(make_optimizer)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            precision="bf16-mixed",
            max_steps=STEPS,
            gradient_clip_val=clip,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(folder),
            deterministic=True,
            callbacks=[
                ModelCheckpoint(
                    dirpath=str(folder),
                    every_n_train_steps=SAVE_AT,
                    save_top_k=-1,
                    filename="{step}",
                )
            ],
        )
        loader = torch.utils.data.DataLoader(Data(), batch_size=16, shuffle=False)
        ckpt = str(folder / f"step={SAVE_AT}.ckpt") if resume else None
        trainer.fit(module, loader, ckpt_path=ckpt)
        opt = trainer.optimizers[0]
        norm = getattr(opt, "last_grad_norm", None)
        return {
            "losses": [_mean(v) for v in module.losses],
            "params": _params(module.net),
            "last_grad_norm": norm,
        }

    result = {
        "fused": fit("fused", lambda ps: ft.AdamW(ps, lr=LR, weight_decay=WD, max_grad_norm=CLIP)),
        "torch": fit("torch", lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD), clip=CLIP),
    }
    result["fused_resumed"] = fit(
        "fused", lambda ps: ft.AdamW(ps, lr=LR, weight_decay=WD, max_grad_norm=CLIP), resume=True
    )
    # Lightning's refusal that makes max_grad_norm= the way to clip.
    try:
        fit("refused", lambda ps: ft.AdamW(ps, lr=LR), clip=CLIP)
    except RuntimeError as error:
        result["refused"] = str(error)
    return result


# ------------------------------------------------------------------ FSDP2
def _fsdp_model():
    """Uneven shards on 2 ranks: 33 rows split 17/16, a bias of 3 split 2/1."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 33), torch.nn.Tanh(), torch.nn.Linear(33, 3))


def _full_batch(step, world):
    xs, ys = zip(*(_fsdp_batch(step, r) for r in range(world)))
    return torch.cat(xs), torch.cat(ys)


def _fsdp_batch(step, rank):
    x, y = _batch(step, rank)
    return x, y[:, :3]


def _dcp_state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd}


def _dcp_load(model, opt, folder, planner=None):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp_state(model, opt)
    dcp.load(state, checkpoint_id=folder, planner=planner)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _full_params(model):
    out = {}
    for k, v in model.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = v.detach().clone()
    return out


def fsdp2(out):
    """fully_shard on 2 ranks against one process on the whole batch; with and without
    max_grad_norm; a DCP checkpoint at step 3, resumed here at 2 ranks (and at 1 rank by
    the scenario fsdp2_resume1, launched next)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = _rank(), _world()

    def run(cls, clip, sharded, start=0, load=None, save=None, mesh=None, outside=False):
        model = _fsdp_model()
        if sharded:
            for layer in (model[0], model[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        # fusedadam clips inside its step; torch.optim (or outside=True) with clip_grad_norm_.
        outside = outside or cls is torch.optim.AdamW
        kw = {"max_grad_norm": clip} if clip and not outside else {}
        opt = cls(model.parameters(), lr=LR, weight_decay=WD, **kw)
        if load is not None:
            _dcp_load(model, opt, load)
        losses, norms = [], []
        for step in range(start, STEPS):
            x, y = _fsdp_batch(step, rank) if sharded else _full_batch(step, world)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            if clip and outside:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            losses.append(_mean(loss.item()) if sharded else loss.item())
            norms.append(getattr(opt, "last_grad_norm", None))
            if save is not None and step + 1 == SAVE_AT:
                dcp.save(_dcp_state(model, opt), checkpoint_id=save)
        result = {"losses": losses, "params": _full_params(model), "norms": norms}
        if sharded:
            result["placements"] = str(next(iter(model.parameters())).placements)
        if sharded and cls is ft.AdamW:
            st = opt.state[next(iter(model.parameters()))]
            result["state_types"] = {k: type(v).__name__ for k, v in st.items()}
        if not sharded:
            result["state_dict"] = copy.deepcopy(opt.state_dict())
        return result

    result = {}
    for clip in (None, CLIP):
        tag = "clip" if clip else "noclip"
        result[f"single_{tag}"] = run(ft.AdamW, clip, sharded=False)
        result[f"fsdp_{tag}"] = run(
            ft.AdamW, clip, sharded=True, save=str(Path(out) / f"dcp_{tag}")
        )
        result[f"fsdp_torch_{tag}"] = run(torch.optim.AdamW, clip, sharded=True)
        result[f"fsdp_{tag}_resumed"] = run(
            ft.AdamW, clip, sharded=True, start=SAVE_AT, load=str(Path(out) / f"dcp_{tag}")
        )
    # HSDP's 2-D mesh, (Replicate, Shard) placements: the norm is reduced over the shard
    # dimension (the replicate dimension has one rank here).
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
    result["hsdp_clip"] = run(ft.AdamW, CLIP, sharded=True, mesh=mesh)
    # torchtitan's way: clip_grad_norm_ over the DTensor grads, then the step.
    result["fsdp_clip_outside"] = run(ft.AdamW, CLIP, sharded=True, outside=True)
    result["nonfinite"] = _fsdp_nonfinite(rank)
    result["plain_loaded"] = _fsdp_load_plain(result["single_clip"]["state_dict"])
    return result


def _fsdp_load_plain(saved):
    """A one-process (unsharded) state dict loaded straight into an FSDP2 optimizer: each
    rank keeps its shard; returned as full tensors, per param index."""
    from torch.distributed.fsdp import fully_shard

    model = _fsdp_model()
    fully_shard(model)
    opt = ft.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    opt.load_state_dict(saved)
    return {
        i: {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in opt.state[p].items()}
        for i, p in enumerate(model.parameters())
    }


def _fsdp_nonfinite(rank):
    """A NaN in rank 1's shard only: every rank raises ("error") or skips ("skip")."""
    from torch.distributed.fsdp import fully_shard

    out = {}
    for policy in ("error", "skip"):
        model = _fsdp_model()
        fully_shard(model)
        opt = ft.AdamW(model.parameters(), lr=LR, nonfinite=policy)
        before = _full_params(model)
        x, y = _fsdp_batch(0, rank)
        F.mse_loss(model(x), y).backward()
        if rank == 1:
            next(iter(model.parameters())).grad._local_tensor[0, 0] = float("nan")
        try:
            opt.step()
            outcome = f"stepped, skipped_steps={opt.skipped_steps}"
        except FloatingPointError as error:
            outcome = f"raised: {error}"
        outcomes = [None] * _world()
        dist.all_gather_object(outcomes, outcome)
        unchanged = all(torch.equal(before[k], v) for k, v in _full_params(model).items())
        out[policy] = {"outcomes": outcomes, "unchanged": unchanged, "state": len(opt.state)}
    return out


def fsdp2_resume1(out):
    """The 2-rank DCP checkpoints of fsdp2 resumed in one process (no FSDP)."""
    dist.init_process_group("gloo")
    result = {}
    for clip in (None, CLIP):
        tag = "clip" if clip else "noclip"
        model = _fsdp_model()
        opt = ft.AdamW(model.parameters(), lr=LR, weight_decay=WD, max_grad_norm=clip)
        _dcp_load(model, opt, str(Path(out) / f"dcp_{tag}"))
        losses = []
        for step in range(SAVE_AT, STEPS):
            x, y = _full_batch(step, 2)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        result[tag] = {"losses": losses, "params": _full_params(model)}
    return result


def _full_masters(model, opt):
    """Every param's float32 master, decoded on each rank from its local shards and then
    gathered as float32 (gloo and NCCL have no int16 collectives: an int16 DTensor's
    full_tensor() is refused)."""
    from fusedadam import reference

    out = {}
    for name, p in model.named_parameters():
        residual = opt.state[p]["master_residual"]
        local_p = p._local_tensor if hasattr(p, "_local_tensor") else p
        local_r = residual.to_local() if hasattr(residual, "to_local") else residual
        words = local_p.detach().contiguous().view(torch.int16).numpy()
        decoded = reference.residual_decode(words.view("<V2"), local_r.numpy())
        master = torch.from_numpy(decoded.reshape(tuple(local_p.shape)).copy())
        if hasattr(p, "_local_tensor"):
            master = type(p).from_local(
                master, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                stride=p.stride(),
            ).full_tensor()  # fmt: skip
        out[name] = master
    return out


def _bf16_run(sharded, start=0, load=None, save=None):
    """The FSDP model in bfloat16, AdamW with master="residual"; each rank's batch."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    rank = _rank()
    model = _fsdp_model().bfloat16()
    if sharded:
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
    opt = ft.AdamW(model.parameters(), lr=LR, weight_decay=WD, master="residual")
    result = {}
    if load is not None:
        _dcp_load(model, opt, load)
        result["loaded_masters"] = _full_masters(model, opt)
    losses = []
    for step in range(start, STEPS):
        x, y = _fsdp_batch(step, rank) if sharded else _full_batch(step, 2)
        loss = F.mse_loss(model(x.bfloat16()).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(_mean(loss.item()) if sharded else loss.item())
        if save is not None and step + 1 == SAVE_AT:
            dcp.save(_dcp_state(model, opt), checkpoint_id=save)
            result["saved_masters"] = _full_masters(model, opt)
    result.update(losses=losses, params=_full_params(model))
    if sharded and load is None:
        result["final_masters"] = _full_masters(model, opt)
        result["replicated_masters"] = _load_replicated(model, opt)
    st = opt.state[next(iter(model.parameters()))]
    result["state_types"] = {k: type(v).__name__ for k, v in st.items()}
    return result


def _load_replicated(model, opt):
    """The FSDP2 optimizer's state dict (residuals sharded Shard(0)) loaded into one over
    Replicate DTensor copies of the params: the residuals are all-gathered (through int32:
    gloo has no int16 collectives); returns the decoded masters."""
    from torch.distributed.tensor import Replicate, distribute_tensor

    copies = torch.nn.Sequential(*[torch.nn.Module() for _ in range(3)])
    for name, p in model.named_parameters():
        layer, attr = name.split(".")
        full = p.full_tensor().detach()
        replicated = distribute_tensor(full, p.device_mesh, [Replicate()])
        setattr(copies[int(layer)], attr, torch.nn.Parameter(replicated))
    again = ft.AdamW(copies.parameters(), lr=LR, weight_decay=WD, master="residual")
    again.load_state_dict(opt.state_dict())
    return _full_masters(copies, again)


def fsdp2_residual(out):
    """bfloat16 params under fully_shard on 2 ranks with master="residual": the residual is
    a DTensor of the param's placements; a DCP checkpoint at step 3 resumes at 2 ranks bit
    for bit (and in one process, fsdp2_residual_resume1)."""
    dist.init_process_group("gloo")
    folder = str(Path(out) / "dcp_residual")
    return {
        "fsdp": _bf16_run(True, save=folder),
        "resumed": _bf16_run(True, start=SAVE_AT, load=folder),
    }


def fsdp2_residual_resume1(out):
    """fsdp2_residual's 2-rank DCP checkpoint loaded in one process (no FSDP): the
    residuals resharded to whole tensors decode to the saved masters."""
    dist.init_process_group("gloo")
    return _bf16_run(False, start=SAVE_AT, load=str(Path(out) / "dcp_residual"))


# ------------------------------------------------------------------ FSDP2, 8-bit state
class _Net8(torch.nn.Module):
    """Params for each 8-bit layout under fully_shard on 2 ranks: rows of whole 256-blocks
    split unevenly (33 rows: 17/16) and with a rank holding no rows (1 row), a 1-d param
    (float32 moments under FSDP2), a small one (float32 moments everywhere)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(33, 256) * 0.06)
        self.b1 = torch.nn.Parameter(torch.zeros(33))
        self.w2 = torch.nn.Parameter(torch.randn(1, 4096) * 0.5)
        self.gain = torch.nn.Parameter(torch.ones(4096))

    def forward(self, x):
        wide = x.repeat(1, 16) * self.gain
        return torch.tanh(x @ self.w1.T + self.b1)[:, :3] + wide @ self.w2.T / 1024


ROWS8 = ("w1", "w2")  # the params whose rows are whole blocks: 8-bit under FSDP2


def _batch8(step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(16, 256, generator=g)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(16, 3, generator=g)


def _full_batch8(step, world):
    xs, ys = zip(*(_batch8(step, r) for r in range(world)))
    return torch.cat(xs), torch.cat(ys)


def _full_state8(model, opt):
    """Every param's state as full tensors (8-bit scales flat, as one process keeps them)."""
    out = {}
    for name, p in model.named_parameters():
        st = {}
        for k, v in opt.state[p].items():
            v = v.full_tensor() if hasattr(v, "full_tensor") else v
            st[k] = v.detach().clone().reshape(-1) if k.endswith("_absmax") else v.clone()
        out[name] = st
    return out


def _shard8(model, mesh=None):
    from torch.distributed.fsdp import fully_shard

    fully_shard(model, mesh=mesh)
    return model


def _same_grads8(option, clip, cls="AdamW"):
    """fully_shard on 2 ranks and one process, fed the same gradients (the one process's,
    of the whole batch, cut to each rank's shard): the params whose rows are whole blocks
    get the one-process blocks, so without clipping params and states are the same bits.
    The one process keeps the 1-d param in a float32-moment group, as FSDP2 does; with
    clipping, both clip those groups by their own norms. A Schedule-Free ``cls`` is also
    compared in eval mode (and back in train mode) after the last step."""
    from torch.distributed.tensor import distribute_tensor

    world = _world()
    plain, sharded = _Net8(), _shard8(_Net8())
    named = dict(plain.named_parameters())
    groups = [
        {"params": [named[n] for n in named if n != "gain"]},
        {"params": [named["gain"]], "state_dtype": None},
    ]
    make = getattr(ft, cls)
    a = make(groups, lr=LR, weight_decay=WD, state_dtype=option, max_grad_norm=clip)
    snamed = dict(sharded.named_parameters())
    b = make(
        [{"params": [snamed[n] for n in snamed if n != "gain"]}, {"params": [snamed["gain"]]}],
        lr=LR, weight_decay=WD, state_dtype=option, max_grad_norm=clip,
    )  # fmt: skip
    for step in range(STEPS):
        x, y = _full_batch8(step, world)
        a.zero_grad()
        F.mse_loss(plain(x), y).backward()
        for name, p in sharded.named_parameters():
            grad = named[name].grad.detach().clone()
            p.grad = distribute_tensor(grad, p.device_mesh, p.placements, src_data_rank=None)
        a.step()
        b.step()
    first = a.algorithm.state_names[0]  # exp_avg; Schedule-Free's z
    modes = {}
    if hasattr(a, "eval"):
        for mode in ("eval", "train"):
            getattr(a, mode)()
            getattr(b, mode)()
            modes[mode] = (_full_params(plain), _full_params(sharded))
    return {
        "plain": {"params": _full_params(plain), "state": _full_state8(plain, a)},
        "fsdp": {"params": _full_params(sharded), "state": _full_state8(sharded, b)},
        "modes": modes,
        "absmax_shape": tuple(b.state[snamed["w1"]][f"{first}_absmax"].shape),
        "absmax_type": type(b.state[snamed["w1"]][f"{first}_absmax"]).__name__,
        "local_rows_w2": b.state[snamed["w2"]][first].to_local().shape[0],
    }


def _train8(sharded, start=0, load=None, save=None, mesh=None, saved=None, planner=None):
    """Training on each rank's batch (or the whole batch in one process), 8-bit; a DCP
    checkpoint at SAVE_AT; returns losses, params, the state saved or loaded."""
    import torch.distributed.checkpoint as dcp

    rank, world = _rank(), _world()
    model = _Net8()
    if sharded:
        _shard8(model, mesh)
    opt = ft.AdamW(model.parameters(), lr=LR, weight_decay=WD, state_dtype="8bit")
    result = {}
    if load is not None:
        _dcp_load(model, opt, load, planner)
        result["loaded_state"] = _full_state8(model, opt)
    losses = []
    for step in range(start, STEPS):
        x, y = _batch8(step, rank) if sharded and world > 1 else _full_batch8(step, 2)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(_mean(loss.item()) if sharded else loss.item())
        if save is not None and step + 1 == SAVE_AT:
            dcp.save(_dcp_state(model, opt), checkpoint_id=save)
            result["saved_state"] = _full_state8(model, opt)
            if saved is not None:
                saved.update(_full_optim_state_dict(model, opt))
    result.update(losses=losses, params=_full_params(model))
    absmax = opt.state[model.w1]["exp_avg_absmax"]
    result["absmax"] = (type(absmax).__name__, str(getattr(absmax, "placements", None)))
    return result


def _full_optim_state_dict(model, opt):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"full": get_optimizer_state_dict(model, opt, options=options)}


def _nonfinite8(rank):
    """8-bit under FSDP2: a NaN in rank 1's shard only, after a step: every rank raises
    and nothing changes (params, codes, scales, step)."""
    model = _shard8(_Net8())
    opt = ft.AdamW(model.parameters(), lr=LR, state_dtype="8bit")
    for step in range(2):
        x, y = _batch8(step, rank)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        if step == 1:
            before = (_full_params(model), _full_state8(model, opt))
            if rank == 1:
                model.w1.grad._local_tensor[0, 0] = float("nan")
        try:
            opt.step()
            outcome = "stepped"
        except FloatingPointError as error:
            outcome = f"raised: {error}"
    outcomes = [None] * _world()
    dist.all_gather_object(outcomes, outcome)
    params, state = _full_params(model), _full_state8(model, opt)
    unchanged = all(torch.equal(before[0][k], v) for k, v in params.items()) and all(
        torch.equal(before[1][n][k], v) for n, st in state.items() for k, v in st.items()
    )
    return {"outcomes": outcomes, "unchanged": unchanged}


def fsdp2_8bit(out):
    """state_dtype="8bit" under fully_shard on 2 ranks: the same gradients give the
    one-process bits; training resumes from a DCP checkpoint at 2 ranks bit for bit (and
    at 1 rank in fsdp2_8bit_resume1); a NaN on one rank changes nothing anywhere."""
    dist.init_process_group("gloo")
    result = {}
    for option in ("8bit", "8bit_companded"):
        result[f"same_{option}"] = _same_grads8(option, None)
    result["same_clip"] = _same_grads8("8bit", CLIP)
    for cls in ("AdamWScheduleFree", "RAdamScheduleFree"):
        result[f"same_{cls}"] = _same_grads8("8bit", None, cls)
    folder = str(Path(out) / "dcp_8bit")
    full = {}
    plain_folder = str(Path(out) / "dcp_8bit_plain")
    result["single"] = _train8(False, save=plain_folder)
    result["fsdp"] = _train8(True, save=folder, saved=full)
    result["full_state_dict"] = full["full"]
    result["resumed"] = _train8(True, start=SAVE_AT, load=folder)
    # The one-process checkpoint (the 1-d param in 8 bits) at 2 ranks, with the planner
    # that loads the other layout: its codes become the float32 moments FSDP2 keeps.
    result["from_plain"] = _train8(True, start=SAVE_AT, load=plain_folder, planner=ft.LoadPlanner())
    # DCP's default planner refuses it (the marker of the 1-d param's float32 moments),
    # rather than copy the codes into those moments as numbers
    try:
        _train8(True, start=SAVE_AT, load=plain_folder)
        result["from_plain_default"] = "loaded"
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        result["from_plain_default"] = f"{type(error).__name__}: {error}"
    # HSDP's 2-D mesh, (Replicate, Shard(0)): rows still follow the shards.
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, _world()), mesh_dim_names=("replicate", "shard"))
    result["hsdp"] = _train8(True, mesh=mesh)
    result["nonfinite"] = _nonfinite8(_rank())
    return result


def fsdp2_8bit_resume1(out):
    """fsdp2_8bit's 2-rank DCP checkpoint at 1 rank: fully_shard on a 1-rank mesh loads it
    (codes and scales resharded exactly) and trains on; a plain one-process model keeps
    the 1-d param in 8 bits, which the checkpoint holds in float32: DCP's default planner
    refuses it, ft.LoadPlanner loads it (quantized) and it trains on."""
    dist.init_process_group("gloo")
    folder = str(Path(out) / "dcp_8bit")
    result = {"fsdp1": _train8(True, start=SAVE_AT, load=folder)}
    try:
        _train8(False, start=SAVE_AT, load=folder)
        result["plain"] = "loaded"
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        result["plain"] = f"{type(error).__name__}: {error}"
    # with fusedadam's planner it loads: the 1-d param's float32 moments quantized
    result["plain_planner"] = _train8(False, start=SAVE_AT, load=folder, planner=ft.LoadPlanner())
    return result


SCENARIOS = {
    "fsdp2": fsdp2,
    "fsdp2_resume1": fsdp2_resume1,
    "zero": zero,
    "hf": hf,
    "deepspeed": deepspeed_zero2,
    "lightning": lightning,
    "fsdp2_residual": fsdp2_residual,
    "fsdp2_residual_resume1": fsdp2_residual_resume1,
    "fsdp2_8bit": fsdp2_8bit,
    "fsdp2_8bit_resume1": fsdp2_8bit_resume1,
}


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    result = SCENARIOS[scenario](out)
    if _rank() == 0:
        torch.save(result, Path(out) / f"{scenario}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
