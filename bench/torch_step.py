"""``opt.step()`` of fusedadam.torch against torch's fused and foreach Adam (and
DeepSpeedCPUAdam when importable), on CPU tensors, timed interleaved in one process.

Cases: BERT-base's parameter shapes (float32; and bfloat16 params, where fusedadam keeps a
float32 master and torch steps the bfloat16 params directly), GPT-2-XL's block shapes
(d=1600; as many of its 48 blocks as fit the memory budget), a model of many small
tensors (the 98-array, 0.4M-parameter toy transformer of ``fusedadam.benchmarks``) and one
1-element tensor (the cost of a call). Every implementation has its own params and state;
all read the same gradient tensors. The protocol is ``fusedadam.benchmarks.timing``'s:
warm-up, calibrated samples of >= 50 ms, implementations round-robin, medians.

    python bench/torch_step.py [--quick] [--budget-gib 8] [--json bench/results/torch_step.json]

fusedadam.torch runs with ``nonfinite="ignore"`` (torch does not check gradients for
NaN/inf either) and, where memory allows, also with its default ``nonfinite="error"``
(one more read of the gradients).
"""

import argparse
import gc
import json
import os
import sys

import numpy as np
import torch

import fusedadam.torch as ft
from fusedadam.benchmarks import scenarios, timing

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


def build(impl, shapes, dtype, grads, threads):
    params = make_params(shapes, dtype, grads)
    if impl.startswith("fusedadam.torch"):
        nonfinite = "error" if "check" in impl else "ignore"
        opt = ft.Adam(params, lr=LR, nonfinite=nonfinite, num_threads=threads)
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
        print(f"  {impl:32s} {r['median'] * 1e3:10.3f} ms  (x{r['median'] / ours:.2f})")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # fusedadam.torch gets num_threads=args.threads

    peers = ["torch fused", "torch foreach"] + (
        ["DeepSpeedCPUAdam"] if deepspeed_available() else []
    )
    both = ["fusedadam.torch", "fusedadam.torch (NaN check)"]
    budget = args.budget_gib * 2**30
    # bytes per parameter: the shared gradient + per implementation param and two moments
    # (+ fusedadam's float32 master for bfloat16 params)
    cases = []
    toy = scenarios.model_shapes("toy")
    cases.append(("one tiny tensor", [(1,)], torch.float32, both + peers))
    cases.append(("many small tensors (toy transformer)", toy, torch.float32, both + peers))
    if not args.quick:
        bert = scenarios.model_shapes("bert-base")
        cases.append(("BERT-base", bert, torch.float32, both + peers))
        cases.append(("BERT-base, bf16 params", bert, torch.bfloat16, ["fusedadam.torch"] + peers))
        per_block = sum(int(np.prod(s)) for s in gpt2_xl_blocks(1))
        per_param = 4 + 12 * (1 + len(peers))
        blocks = max(1, min(48, int(budget / (per_param * per_block))))
        cases.append(
            (
                f"GPT-2-XL, {blocks} of 48 blocks",
                gpt2_xl_blocks(blocks),
                torch.float32,
                ["fusedadam.torch"] + peers,
            )
        )
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
