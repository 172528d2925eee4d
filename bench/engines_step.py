"""Optimizer step time inside FSDP2 and DeepSpeed ZeRO-2 offload, 2 ranks on one machine.

    torchrun --standalone --nproc_per_node 2 bench/engines_step.py [--layers 24] [--width 2048]
        [--rounds 7] [--json bench/results/engines_step.json] [--no-deepspeed]

A model of ``layers`` Linear(width, width) layers (24 x 2048: 100.7M parameters), float32.

* FSDP2: ``fully_shard`` per layer; one backward fills the sharded gradients; then, per
  round, each optimizer steps the same sharded params once, in turn (interleaved):
  ``fusedadam.torch.AdamW`` (default ``nonfinite="error"``: a global NaN check and one
  all-reduce a step; ``nonfinite="ignore"``; and that with 8-bit moments) and
  ``torch.optim.AdamW(fused=True)``.
* DeepSpeed ZeRO-2 with ``offload_optimizer: cpu`` (bf16 model): the engine hands its
  client optimizer one flat float32 partition per rank; each optimizer steps that same
  partition with a fixed gradient, in turn: ``fusedadam.torch.AdamW`` (as DeepSpeed
  holds it, with ``nonfinite="ignore"``, and that with 8-bit moments),
  ``torch.optim.AdamW(fused=True)`` and
  ``DeepSpeedCPUAdam`` (built on first use).

One thread per rank. The time of a step is the slowest rank's; the table gives medians over
the rounds after one warm-up step each, and their ratio to fusedadam's. The load average is
recorded at the start and the end: on a shared machine the numbers are only as good as it.
"""

import argparse
import json
import os
import statistics
import time
import warnings

import torch
import torch.distributed as dist

import fusedadam.torch as ft

warnings.filterwarnings("ignore")


# 8-bit moments (a 1-byte code per element and one float32 scale per 256-element block, for
# each moment): the step moves 16 B per float32 param (p read and written, g read, each
# moment's code read and written; + 0.06 B of scales) where the float32-state optimizers
# move 28. Under FSDP2 a param whose rows are not whole 256-element blocks keeps float32
# moments (here the biases, 0.05 % of the params).
EIGHT_BIT = 'fusedadam.torch.AdamW(nonfinite="ignore", state_dtype="8bit")'


def _time_step(step):
    dist.barrier()
    t = time.perf_counter()
    step()
    t = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def _interleaved(optimizers, rounds):
    times = {name: [] for name in optimizers}
    for opt in optimizers.values():
        _time_step(opt.step)  # warm-up: creates the state
    for _ in range(rounds):
        for name, opt in optimizers.items():
            times[name].append(_time_step(opt.step))
    return {name: statistics.median(ts) for name, ts in times.items()}, times


def _model(layers, width, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(dtype)


def fsdp2(args):
    from torch.distributed.fsdp import fully_shard

    model = _model(args.layers, args.width)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model(torch.randn(8, args.width)).square().mean().backward()
    kw = {"lr": 1e-4, "weight_decay": 0.01}
    optimizers = {
        "fusedadam.torch.AdamW": ft.AdamW(model.parameters(), **kw),
        'fusedadam.torch.AdamW(nonfinite="ignore")': ft.AdamW(
            model.parameters(), nonfinite="ignore", **kw
        ),
        EIGHT_BIT: ft.AdamW(model.parameters(), nonfinite="ignore", state_dtype="8bit", **kw),
        "torch.optim.AdamW(fused=True)": torch.optim.AdamW(model.parameters(), fused=True, **kw),
    }
    return _interleaved(optimizers, args.rounds)


def deepspeed_zero2(args):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    model = _model(args.layers, args.width)
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    kw = {"lr": 1e-4, "weight_decay": 0.01}
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=ft.AdamW(model.parameters(), **kw), config=config
    )
    partitions = list(engine.optimizer.single_partition_of_fp32_groups)
    g = torch.Generator().manual_seed(dist.get_rank())
    for part in partitions:
        part.grad = torch.randn(part.shape, generator=g) * 1e-3
    optimizers = {
        "fusedadam.torch.AdamW": engine.optimizer.optimizer,
        'fusedadam.torch.AdamW(nonfinite="ignore")': ft.AdamW(partitions, nonfinite="ignore", **kw),
        EIGHT_BIT: ft.AdamW(partitions, nonfinite="ignore", state_dtype="8bit", **kw),
        "torch.optim.AdamW(fused=True)": torch.optim.AdamW(partitions, fused=True, **kw),
        "DeepSpeedCPUAdam": DeepSpeedCPUAdam(partitions, adamw_mode=True, **kw),
    }
    sizes = [p.numel() for p in partitions]
    medians, times = _interleaved(optimizers, args.rounds)
    return medians, times, sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json")
    parser.add_argument("--no-deepspeed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start_load = os.getloadavg()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    n = sum(p.numel() for p in _model(args.layers, args.width).parameters())
    results = {"params": n, "world": dist.get_world_size(), "rounds": args.rounds}
    results["fsdp2"], results["fsdp2_all"] = fsdp2(args)
    if not args.no_deepspeed:
        (
            results["deepspeed_zero2_offload"],
            results["deepspeed_all"],
            results["partition_sizes"],
        ) = deepspeed_zero2(args)
    results["loadavg_at_start"], results["loadavg_at_end"] = start_load, os.getloadavg()
    results["torch"] = torch.__version__
    if rank == 0:
        print(f"{n / 1e6:.1f}M params, {results['world']} ranks, 1 thread each")
        for engine in ("fsdp2", "deepspeed_zero2_offload"):
            if engine not in results:
                continue
            base = results[engine]["fusedadam.torch.AdamW"]
            for name, t in results[engine].items():
                print(f"{engine:24s} {name:46s} {t * 1e3:9.1f} ms  {t / base:5.2f}x")
        print(f"load average {start_load} at the start, {results['loadavg_at_end']} at the end")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
