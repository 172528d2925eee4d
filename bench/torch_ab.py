"""A/B of two fusedadam.torch front ends over the same engine, in one process, interleaved.

    git show <commit>:src/fusedadam/torch.py > /tmp/torch_old.py
    python bench/torch_ab.py /tmp/torch_old.py [--threads 1] [--repeats 15] [--json out.json]

Times ``opt.step()`` of ``Adam`` (``nonfinite="ignore"`` and the default ``"error"``) for
one tiny tensor, the 98-tensor toy transformer and BERT-base's float32 shapes, each front
end with its own params and state reading the same gradient tensors, round-robin, medians
of ``--repeats`` samples. Each sample is timed by the calling thread's CPU time
(``time.thread_time``) as well as the wall clock: with ``--threads 1`` the step runs on
the calling thread, so its CPU time is what it costs even on a machine other jobs load
(the wall clock then measures the load as much as the step).
"""

import argparse
import gc
import importlib.util
import json
import time

import numpy as np
import torch

import fusedadam.torch as ft
from fusedadam.benchmarks import scenarios, timing


def load(path):
    spec = importlib.util.spec_from_file_location("fusedadam_torch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(module, shapes, grads, nonfinite, threads):
    gen = torch.Generator().manual_seed(0)
    params = []
    for s, g in zip(shapes, grads):
        p = torch.randn(s, generator=gen).requires_grad_()
        p.grad = g
        params.append(p)
    opt = module.Adam(params, lr=1e-6, nonfinite=nonfinite, num_threads=threads)
    opt.step()
    opt.step()
    return opt.step


def sample(fn, number):
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(number):
        fn()
    return (time.perf_counter() - wall) / number, (time.thread_time() - cpu) / number


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="the other fusedadam.torch module file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cases", default="tiny,toy,bert-base")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modules = {"this": ft, "baseline": load(args.baseline)}
    shapes_of = {"tiny": [(1,)], "toy": scenarios.model_shapes("toy")}
    out = {"load_at_start": timing.load_average(), "threads": args.threads, "cases": {}}
    for case in args.cases.split(","):
        shapes = shapes_of.get(case) or scenarios.model_shapes(case)
        gen = torch.Generator().manual_seed(1)
        grads = [torch.randn(s, generator=gen) for s in shapes]
        fns = {
            f"{name} {nonfinite}": build(m, shapes, grads, nonfinite, args.threads)
            for nonfinite in ("ignore", "error")
            for name, m in modules.items()
        }
        number = {k: max(1, int(0.05 / max(sample(f, 1)[1], 1e-7))) for k, f in fns.items()}
        samples = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                samples[k].append(sample(f, number[k]))
        row = {}
        for k, s in samples.items():
            row[k] = {
                "cpu_median_s": float(np.median([c for _, c in s])),
                "wall_median_s": float(np.median([w for w, _ in s])),
            }
        out["cases"][case] = row
        print(case, f"({len(shapes)} tensors)")
        for nonfinite in ("ignore", "error"):
            this, base = row[f"this {nonfinite}"], row[f"baseline {nonfinite}"]
            print(
                f"  nonfinite={nonfinite:6s} this {this['cpu_median_s'] * 1e6:10.2f} us cpu "
                f"({this['wall_median_s'] * 1e6:.2f} wall)   baseline "
                f"{base['cpu_median_s'] * 1e6:10.2f} us cpu ({base['wall_median_s'] * 1e6:.2f} "
                f"wall)   this/baseline {this['cpu_median_s'] / base['cpu_median_s']:.3f}",
                flush=True,
            )
        del fns, grads
        gc.collect()
    out["load_at_end"] = timing.load_average()
    print("load average", out["load_at_start"], "->", out["load_at_end"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
