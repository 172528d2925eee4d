"""``opt.step()`` of fusedadam.torch against torch's fused and foreach Adam (and
DeepSpeedCPUAdam when importable), on CPU tensors, timed interleaved in one process.

Cases: BERT-base's parameter shapes (float32; and bfloat16 params, where fusedadam keeps a
float32 master and torch steps the bfloat16 params directly), GPT-2-XL's block shapes
(d=1600; as many of its 48 blocks as fit the memory budget), a model of many small
tensors (the 98-array, 0.4M-parameter toy transformer of ``fusedadam.benchmarks``) and one
1-element tensor (the cost of a call). Every implementation has its own params and state;
all read the same gradient tensors. BERT-base also times the roofline (the probe loop of
``fusedadam.benchmarks.roofline``: an Adam step's bytes with trivial arithmetic, over its own
params and state), alone and after a read-only pass over the grads (the check's scan): the
floor of each mode, against which both fusedadam.torch and torch fused compare. The
protocol is ``fusedadam.benchmarks.timing``'s: warm-up, calibrated samples of >= 50 ms,
implementations round-robin, medians.

    python bench/torch_step.py [--quick] [--budget-gib 8] [--json bench/results/torch_step.json]

fusedadam.torch runs with ``nonfinite="ignore"`` (torch does not check gradients for
NaN/inf either) and, where memory allows, also with its default ``nonfinite="error"``
(one more read of the gradients).

The torchao-style cases ("one optimizer per tensor") step the same model as one optimizer
over all of its tensors and as one optimizer instance per tensor, each stepped in turn (how
``torchao.optim.CPUOffloadOptimizer`` drives its per-parameter optimizers), for fusedadam.torch
(without and with the check) and torch fused. The printed "extra per call" is (per-tensor
time - one-optimizer time) / tensors: the cost of one more ``step()`` call, to compare with
the "one tiny tensor" case's time; beside it the same from the calling thread's CPU time
(``time.thread_time``, which a loaded machine hardly inflates), and with ``--threads`` > 1
the same against one fusedadam.torch optimizer on 1 thread: one optimizer on 2 threads
splits every tensor over the pool, one optimizer per tensor only the tensors of >= 2 chunks
(> 16384 elements), so against 2 threads the "extra" also holds the parallel speedup the
per-tensor way cannot use. The toy case also times as many optimizers as it has tensors,
each over one 1-element tensor, stepped in turn: the cost of a call when many optimizers
take turns, against which the per-tensor "extra" compares like with like (a call repeated
on one optimizer finds its objects in the core's caches; one of 98 optimizers in turn does
not).

``--training-loop`` times the step inside a torch training loop instead: a small
transformer's forward and backward (torch's intra-op threads active) before every step,
fusedadam.torch with its default threads, with ``num_threads=1`` and with the pool forced
on (``num_threads`` = the CPU count), each with its own model copy, interleaved step by
step; per variant the median, 90th percentile and mean step time, and (Linux) the CPU time
torch's own threads burnt while the step ran.

    python bench/torch_step.py --training-loop [--width 48 --layers 2 --steps 300]
"""

import argparse
import gc
import json
import os
import sys
import threading
import time

import numpy as np
import torch

import fusedadam.torch as ft
from fusedadam.benchmarks import roofline, scenarios, timing

LR = 1e-6  # small: the params barely move over the thousands of timed steps


def gpt2_xl_blocks(n_blocks):
    d = 1600
    shapes = []
    for _ in range(n_blocks):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]  # ln_1, attention
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # ln_2, MLP
    return shapes


def make_grads(shapes, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def make_params(shapes, dtype, grads, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s, g in zip(shapes, grads):
        p = torch.randn(s, generator=gen).to(dtype).requires_grad_()
        p.grad = g  # shared by every implementation: no copy in the timed loop
        params.append(p)
    return params


BASELINE = None  # --baseline: another fusedadam.torch, loaded from a file


def load_baseline(path):
    """A fusedadam.torch module from ``path`` (e.g. an older commit's, from
    ``git show <commit>:src/fusedadam/torch.py``), over this fusedadam: an A/B of the
    front ends in one process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fusedadam_torch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PER_TENSOR = ", one optimizer per tensor"
ROOFLINE = "roofline"  # the probe loop: an Adam step's passes and bytes, trivial arithmetic
ONE_THREAD = ", 1 thread"
IN_TURN = ", 1-element tensors in turn"


def build(impl, shapes, dtype, grads, threads):
    if impl.endswith(PER_TENSOR):
        return build_per_tensor(impl[: -len(PER_TENSOR)], shapes, dtype, grads, threads)
    if impl.endswith(IN_TURN):
        # as many optimizers as the case has tensors, each over one 1-element tensor,
        # stepped in turn: the cost of a call where many optimizers take turns (their
        # objects are not all in the core's caches), which a call repeated on one
        # optimizer ("one tiny tensor") does not pay
        tiny = [(1,)] * len(shapes)
        return build_per_tensor(
            impl[: -len(IN_TURN)], tiny, dtype, make_grads(tiny, dtype, seed=2), threads
        )
    if impl.endswith(ONE_THREAD):
        return build(impl[: -len(ONE_THREAD)], shapes, dtype, grads, 1)
    params = make_params(shapes, dtype, grads)
    if impl.startswith(ROOFLINE):
        # Over its own params and the shared grads; with the check first a read-only pass
        # over the grads, as the check's scan: what the memory allows each mode.
        check = (1,) if "check" in impl else ()
        arrays = [p.detach().numpy() for p in params]
        return roofline.roofline_step(arrays, [g.numpy() for g in grads], 2, threads, check)
    if impl.startswith("fusedadam.torch") or impl.startswith("baseline"):
        nonfinite = "error" if "check" in impl else "ignore"
        module = BASELINE if impl.startswith("baseline") else ft
        opt = module.Adam(params, lr=LR, nonfinite=nonfinite, num_threads=threads)
    elif impl == "torch fused":
        opt = torch.optim.Adam(params, lr=LR, fused=True)
    elif impl == "torch foreach":
        opt = torch.optim.Adam(params, lr=LR, foreach=True)
    elif impl == "DeepSpeedCPUAdam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        opt = DeepSpeedCPUAdam(params, lr=LR, adamw_mode=False)
    else:
        raise ValueError(impl)
    opt.step()  # lazy state
    return opt.step


def build_per_tensor(impl, shapes, dtype, grads, threads):
    """torchao-style: one ``impl`` optimizer per tensor; the step steps each in turn."""
    steps = [build(impl, [shape], dtype, [grad], threads) for shape, grad in zip(shapes, grads)]

    def step():
        for one in steps:
            one()

    return step


def deepspeed_available():
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: F401
    except Exception:
        return False
    return True


def run_case(name, shapes, dtype, impls, repeats, min_sample_s, threads):
    grads = make_grads(shapes, dtype)
    fns = {impl: build(impl, shapes, dtype, grads, threads) for impl in impls}
    n = int(sum(np.prod(s) for s in shapes))
    print(f"{name}: {len(shapes)} tensors, {n / 1e6:.2f}M params, {dtype}", flush=True)
    result = timing.measure_interleaved(fns, repeats=repeats, min_sample_s=min_sample_s)
    del fns, grads
    gc.collect()
    ours = result["fusedadam.torch"]["median"]
    row = {
        "tensors": len(shapes),
        "params": n,
        "dtype": str(dtype).replace("torch.", ""),
        "times": result,
        "speedup": {
            impl: r["median"] / ours for impl, r in result.items() if impl != "fusedadam.torch"
        },
    }
    for impl, r in result.items():
        print(
            f"  {impl:32s} {r['median'] * 1e3:10.3f} ms  (x{r['median'] / ours:.2f})"
            f"  thread time {r['thread_median'] * 1e3:.3f} ms"
        )
    extra, extra_thread = {}, {}

    def per_call(many, one, key):
        return (many[key] - one[key]) / len(shapes)

    for impl, r in result.items():
        one = result.get(impl[: -len(PER_TENSOR)]) if impl.endswith(PER_TENSOR) else None
        if one is None:
            continue
        # Beside the wall clock, the calling thread's CPU time: what the calls cost the
        # caller, without the waits a loaded machine adds to the wall clock.
        extra[impl] = per_call(r, one, "median")
        extra_thread[impl] = per_call(r, one, "thread_median")
        line = (
            f"  {impl}: extra per call {extra[impl] * 1e6:.2f} µs"
            f" (caller's thread time {extra_thread[impl] * 1e6:.2f} µs)"
        )
        in_turn = result.get(impl[: -len(PER_TENSOR)] + IN_TURN)
        if in_turn is not None:
            extra[impl + IN_TURN] = in_turn["median"] / len(shapes)
            line += (
                f"; a call of {len(shapes)} 1-element optimizers stepped in turn"
                f" {extra[impl + IN_TURN] * 1e6:.2f} µs"
            )
        serial = result.get(impl[: -len(PER_TENSOR)] + ONE_THREAD)
        if serial is not None:
            # One optimizer on threads > 1 splits every tensor's chunks over the pool; one
            # optimizer per tensor can split only the tensors of >= 2 chunks. Against the
            # one optimizer on 1 thread what is left is the cost of the calls themselves.
            extra[impl + ONE_THREAD] = per_call(r, serial, "median")
            extra_thread[impl + ONE_THREAD] = per_call(r, serial, "thread_median")
            line += (
                f"; against one optimizer on 1 thread {extra[impl + ONE_THREAD] * 1e6:.2f} µs"
                f" (thread time {extra_thread[impl + ONE_THREAD] * 1e6:.2f} µs)"
            )
        print(line)
    if extra:
        row["extra_per_call"] = extra
        row["extra_per_call_thread_time"] = extra_thread
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None)
    parser.add_argument("--training-loop", action="store_true", help="the in-loop case only")
    parser.add_argument(
        "--baseline",
        default=None,
        help="a fusedadam.torch module file to time against this one (A/B, interleaved)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated case-name prefixes to run (default: all)"
    )
    parser.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers to time (default: torch fused, torch foreach, DeepSpeed)",
    )
    parser.add_argument("--width", type=int, default=48, help="--training-loop: d_model")
    parser.add_argument("--layers", type=int, default=2, help="--training-loop: layers")
    parser.add_argument("--steps", type=int, default=300, help="--training-loop: steps")
    args = parser.parse_args(argv)
    if args.training_loop:
        return training_loop(args)
    torch.set_num_threads(args.threads)  # fusedadam.torch gets num_threads=args.threads

    peers = ["torch fused", "torch foreach"] + (
        ["DeepSpeedCPUAdam"] if deepspeed_available() else []
    )
    if args.peers is not None:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    both = ["fusedadam.torch", "fusedadam.torch (NaN check)"]
    if args.baseline:
        global BASELINE
        BASELINE = load_baseline(args.baseline)
        both += ["baseline", "baseline (NaN check)"]
    budget = args.budget_gib * 2**30
    # bytes per parameter: the shared gradient + per implementation param and two moments
    # (+ fusedadam's float32 master for bfloat16 params)
    cases = []
    toy = scenarios.model_shapes("toy")
    cases.append(("one tiny tensor", [(1,)], torch.float32, both + peers))
    cases.append(("many small tensors (toy transformer)", toy, torch.float32, both + peers))
    per_tensor = both + ["torch fused"]
    per_tensor += [impl + PER_TENSOR for impl in per_tensor]
    toy_per_tensor = per_tensor + ([b + ONE_THREAD for b in both[:2]] if args.threads > 1 else [])
    toy_per_tensor += [b + IN_TURN for b in both[:2]]
    cases.append(("toy transformer, one optimizer per tensor", toy, torch.float32, toy_per_tensor))
    if not args.quick:
        bert = scenarios.model_shapes("bert-base")
        floor = [ROOFLINE, ROOFLINE + " (NaN check)"] if roofline.compiled_available() else []
        cases.append(("BERT-base", bert, torch.float32, both + peers + floor))
        cases.append(("BERT-base, bf16 params", bert, torch.bfloat16, both[::2] + peers))
        n_bert = sum(int(np.prod(s)) for s in bert)
        fits = [impl for impl in per_tensor if "torch fused" not in impl]
        if (4 + 12 * len(per_tensor)) * n_bert <= budget:
            fits = per_tensor
        cases.append(("BERT-base, one optimizer per tensor", bert, torch.float32, fits))
        per_block = sum(int(np.prod(s)) for s in gpt2_xl_blocks(1))
        per_param = 4 + 12 * (1 + len(peers))
        blocks = max(1, min(48, int(budget / (per_param * per_block))))
        cases.append(
            (
                f"GPT-2-XL, {blocks} of 48 blocks",
                gpt2_xl_blocks(blocks),
                torch.float32,
                both[::2] + peers,
            )
        )
    if args.cases:
        wanted = [w.strip() for w in args.cases.split(",")]
        cases = [c for c in cases if any(c[0].startswith(w) for w in wanted)]
    environment = timing.environment({"torch": torch.__version__})  # load average now
    results = {}
    for name, shapes, dtype, impls in cases:
        results[name] = run_case(name, shapes, dtype, impls, args.repeats, 0.05, args.threads)
    out = {
        "environment": environment,
        "threads": args.threads,
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "cases": results,
        "loadavg_at_end": timing.load_average(),
    }
    print()
    print(markdown(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _thread_cpu_ns():
    """CPU time per thread of this process (ns, Linux schedstat); {} elsewhere."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def training_loop(args):
    """The step inside a torch training loop (see the module docstring)."""
    torch.set_num_threads(args.threads)
    d, n_layers = args.width, args.layers

    def model():
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        return torch.nn.Sequential(
            torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False),
            torch.nn.Linear(d, 10),
        )

    variants = {
        "default threads": {},
        "num_threads=1": {"num_threads": 1},
        f"num_threads={os.cpu_count()} (pool on)": {"num_threads": os.cpu_count()},
    }
    models = {k: model() for k in variants}
    opts = {k: ft.AdamW(models[k].parameters(), lr=1e-5, **v) for k, v in variants.items()}
    x = torch.randn(16, 32, d, generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in next(iter(models.values())).parameters())
    main_tid = threading.get_native_id()
    environment = timing.environment({"torch": torch.__version__})
    times = {k: [] for k in variants}
    # ns of CPU, while the step runs, on torch's threads and on the step pool's helpers
    burnt = {k: [0, 0] for k in variants}
    for k in variants:
        models[k](x).pow(2).mean().backward()
    torch_tids = set(_thread_cpu_ns()) - {main_tid}
    for k in variants:  # warm-up: creates the pool's helpers
        opts[k].step()
    pool_tids = set(_thread_cpu_ns()) - torch_tids - {main_tid}
    for _ in range(args.steps):
        for k in variants:
            opts[k].zero_grad()
            models[k](x).pow(2).mean().backward()
            before = _thread_cpu_ns()
            t = time.perf_counter()
            opts[k].step()
            times[k].append(time.perf_counter() - t)
            after = _thread_cpu_ns()
            for tid, ns in after.items():
                if tid in torch_tids or tid in pool_tids:
                    burnt[k][tid in pool_tids] += ns - before.get(tid, ns)
    rows = {}
    for k, ts in times.items():
        ts = sorted(ts)
        rows[k] = {
            "median": ts[len(ts) // 2],
            "p90": ts[int(0.9 * len(ts))],
            "mean": sum(ts) / len(ts),
            "torch_threads_cpu_per_step": burnt[k][0] / 1e9 / len(ts),
            "pool_helpers_cpu_per_step": burnt[k][1] / 1e9 / len(ts),
        }
    out = {
        "environment": environment,
        "threads": args.threads,
        "params": params,
        "steps": args.steps,
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "training_loop": rows,
        "loadavg_at_end": timing.load_average(),
    }
    print(f"{params / 1e6:.3f}M params, torch threads {args.threads}, {args.steps} steps")
    print("| variant | median | p90 | mean | CPU per step: torch's threads | pool helpers |")
    print("|---|---|---|---|---|---|")
    keys = ("median", "p90", "mean", "torch_threads_cpu_per_step", "pool_helpers_cpu_per_step")
    for k, r in rows.items():
        print(f"| {k} | " + " | ".join(_t(r[key]) for key in keys) + " |")
    print("load average:", environment["loadavg_at_start"], "->", out["loadavg_at_end"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def markdown(out):
    """The README table: medians and fusedadam.torch's speedup over each peer."""
    peers = []
    for row in out["cases"].values():
        for impl in row["times"]:
            if impl not in peers and impl != "fusedadam.torch":
                peers.append(impl)
    head = "| case | fusedadam.torch | " + " | ".join(peers) + " |"
    lines = [head, "|---" * (2 + len(peers)) + "|"]
    for name, row in out["cases"].items():
        ours = row["times"]["fusedadam.torch"]["median"]
        cells = [f"{name} ({row['params'] / 1e6:.2f}M, {row['tensors']} tensors)", _t(ours)]
        for impl in peers:
            r = row["times"].get(impl)
            cells.append("" if r is None else f"{_t(r['median'])} ({r['median'] / ours:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _t(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


if __name__ == "__main__":
    main()
