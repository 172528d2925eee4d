"""A/B of two builds: the same grid of steps, timed in alternating processes.

Each interpreter (a venv with one build of fusedadam installed) runs this file in worker
mode for one round of the grid; rounds alternate A, B, A, B, ... so that machine drift
hits both builds alike, and the report gives, per cell, the median over rounds of each
round's median step time and the ratio B / A. Only the public API is used, so any two
versions can be compared.

    python bench/ab.py --a /path/venv-old/bin/python --b /path/venv-new/bin/python \\
        --rounds 5 --json bench/results/ab.json
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np

CELLS = [  # (label, class, options, dtype, N or "toy", num_threads)
    ("overhead N=1", "Adam", {}, "float32", 1, None),
    ("Adam f32 1e5 1thr", "Adam", {}, "float32", 100_000, 1),
    ("Adam f32 1e5", "Adam", {}, "float32", 100_000, None),
    ("Adam f32 1e6 1thr", "Adam", {}, "float32", 1_000_000, 1),
    ("Adam f32 1e6", "Adam", {}, "float32", 1_000_000, None),
    ("Adam f32 1e7 1thr", "Adam", {}, "float32", 10_000_000, 1),
    ("Adam f32 1e7", "Adam", {}, "float32", 10_000_000, None),
    ("AdamW f32 1e7 1thr", "AdamW", {}, "float32", 10_000_000, 1),
    ("AMSGrad f32 1e7 1thr", "Adam", {"amsgrad": True}, "float32", 10_000_000, 1),
    ("Adamax f32 1e7 1thr", "Adamax", {}, "float32", 10_000_000, 1),
    ("Adam f64 1e7 1thr", "Adam", {}, "float64", 10_000_000, 1),
    ("Adam f32 1e7 ignore 1thr", "Adam", {"nonfinite": "ignore"}, "float32", 10_000_000, 1),
    ("toy model 1thr", "Adam", {}, "float32", "toy", 1),
    ("toy model", "Adam", {}, "float32", "toy", None),
]


def toy_shapes(d=64, blocks=6, vocab=1000):
    shapes = [(vocab, d), (512, d)]
    for _ in range(blocks):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)] + [(d,)] * 10
    return shapes


def worker(budget):
    """One round of the grid in this process: {label: median seconds per step}."""
    import fusedadam as fa

    out = {}
    for label, cls, options, dtype, size, threads in CELLS:
        rng = np.random.default_rng(0)
        shapes = toy_shapes() if size == "toy" else [(size,)]
        params = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt = getattr(fa, cls)(params, lr=1e-6, num_threads=threads, **options)
        arg = grads[0] if len(grads) == 1 else grads
        opt.step(arg)
        times, start = [], time.perf_counter()
        batch = 1000 if size == 1 else 1
        while len(times) < 7 or time.perf_counter() - start < budget:
            t0 = time.perf_counter()
            for _ in range(batch):
                opt.step(arg)
            times.append((time.perf_counter() - t0) / batch)
        out[label] = float(np.median(times))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", help="python of build A (the baseline)")
    parser.add_argument("--b", help="python of build B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per cell")
    parser.add_argument("--json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.budget)))
        return
    results = {"a": [], "b": []}
    for _ in range(args.rounds):
        for side in ("a", "b"):
            proc = subprocess.run(
                [
                    getattr(args, side),
                    os.path.abspath(__file__),
                    "--worker",
                    "--budget",
                    str(args.budget),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
            )
            results[side].append(json.loads(proc.stdout))
    rows = []
    print(
        f"{'cell':>26} {'A':>12} {'B':>12} {'B/A':>7}   (medians of {args.rounds} rounds, "
        f"load average now {os.getloadavg()[0]:.1f})"
    )
    for label, *_ in CELLS:
        a = float(np.median([r[label] for r in results["a"]]))
        b = float(np.median([r[label] for r in results["b"]]))
        unit, scale = ("us", 1e6) if a < 1e-2 else ("ms", 1e3)
        print(f"{label:>26} {a * scale:>9.2f} {unit} {b * scale:>9.2f} {unit} {b / a:>7.3f}")
        rows.append({"cell": label, "a_s": a, "b_s": b, "b_over_a": b / a})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"a": args.a, "b": args.b, "rounds": args.rounds, "rows": rows, "raw": results},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
