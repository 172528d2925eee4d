"""Measure the serial/parallel threshold of the compiled step.

For sizes from 1e3 to 2e6 elements (one array), time one compiled step with 1 thread and
with 2 threads (the parallel path forced on), interleaved in one process, for the loops
cheapest per element (Adamax float32, Adam float32) and Adam float64. The threshold is
the smallest size from which 2 threads are faster at every larger size measured, for
every loop: below it, waking the OpenMP team costs more than the split saves.

    python bench/threshold.py [--quick] [--threads 2] [--json bench/results/threshold.json]

The value found here is what ``_parallel_min_elements`` in ``_kernels.pyx`` is set to.
"""

import argparse
import json
import platform

import numpy as np

import fusedadam
from fusedadam import _kernels
from fusedadam.benchmarks.roofline import kernel_step
from fusedadam.benchmarks.timing import load_average, measure_interleaved

LOOPS = [
    ("adamax", np.float32, "ADAMAX"),
    ("adam", np.float32, "ADAM"),
    ("adam", np.float64, "ADAM"),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="20 ms samples, 5 repeats, fewer sizes")
    ap.add_argument("--threads", type=int, default=2, help="the parallel team size to test")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument(
        "--loops",
        default=",".join(f"{n}-{np.dtype(d).name}" for n, d, _ in LOOPS),
        help="subset of the loops to measure",
    )
    args = ap.parse_args(argv)
    per_decade = 4 if args.quick else 8
    sizes = sorted({int(round(x)) for x in np.logspace(3, 6.3, int(3.3 * per_decade) + 1)})
    sample_s = 0.02 if args.quick else 0.05
    repeats = 5 if args.quick else args.repeats
    # A fork-join step waits for its slowest thread: when other processes keep the cores
    # busy, the team loses at every size. Record the load so a reader can tell.
    load_at_start = load_average()
    print(f"load average at start: {load_at_start}")
    saved = _kernels.get_parallel_threshold()
    _kernels.set_parallel_threshold(0)
    rows, crossovers = [], {}
    try:
        for name, dtype, kind in LOOPS:
            label = f"{name}-{np.dtype(dtype).name}"
            if label not in args.loops.split(","):
                continue
            faster = []
            for n in sizes:
                rng = np.random.default_rng(n)
                p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
                fns = {
                    1: kernel_step([p], [g], kind, 1),
                    args.threads: kernel_step([p.copy()], [g], kind, args.threads),
                }
                res = measure_interleaved(fns, repeats, sample_s)
                t1, tn = res[1]["median"], res[args.threads]["median"]
                faster.append(tn < t1)
                rows.append(
                    {
                        "loop": label,
                        "n": n,
                        "t1_s": t1,
                        f"t{args.threads}_s": tn,
                        "speedup": t1 / tn,
                    }
                )
                print(
                    f"{label:15s} n={n:>8d}  1 thread {t1 * 1e6:9.2f} us  "
                    f"{args.threads} threads {tn * 1e6:9.2f} us  speedup {t1 / tn:5.2f}",
                    flush=True,
                )
            # Smallest size from which the team wins at every larger size.
            cross = None
            for i in range(len(sizes) - 1, -1, -1):
                if not faster[i]:
                    break
                cross = sizes[i]
            crossovers[label] = cross
    finally:
        _kernels.set_parallel_threshold(saved)
    known = [c for c in crossovers.values() if c is not None]
    threshold = max(known) if len(known) == len(crossovers) else None
    print("crossover per loop:", crossovers)
    print(f"measured threshold (max over loops): {threshold}   (compiled in: {saved})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": platform.processor() or platform.machine(),
                    "backend": fusedadam.backend_info(),
                    "threads": args.threads,
                    "loadavg_at_start": load_at_start,
                    "crossover": crossovers,
                    "threshold": threshold,
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
