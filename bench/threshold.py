"""Measure where a step on 2 threads starts to beat a step on 1.

For sizes from 1e3 to 2e6 elements (one array), time ``opt.step(g)`` of a compiled
optimizer with ``num_threads=1`` and with ``num_threads=N``, interleaved in one process,
for the loops cheapest per element (Adamax float32, Adam float32) and Adam float64. The
crossover is the smallest size from which N threads are faster at every larger size
measured, for every loop: below it, waking the other threads costs more than the split
saves. Timed by fusedadam's benchmark protocol (``fusedadam.benchmarks.timing``).

    python bench/threshold.py [--quick] [--threads 2] [--json out/threshold.json]

With the chunked step driver, the work a call splits is set by
``_kernels.get_chunk_size()`` (printed); this measures its effect end to end.
"""

import argparse
import json
import platform

import numpy as np

import fusedadam
from fusedadam.benchmarks.timing import load_average, measure_interleaved

LOOPS = [
    ("adamax", np.float32, fusedadam.Adamax),
    ("adam", np.float32, fusedadam.Adam),
    ("adam", np.float64, fusedadam.Adam),
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
    info = fusedadam.backend_info()
    print(f"chunk size: {info['chunk_size']}")
    rows, crossovers = [], {}
    for name, dtype, cls in LOOPS:
        label = f"{name}-{np.dtype(dtype).name}"
        if label not in args.loops.split(","):
            continue
        faster = []
        for n in sizes:
            rng = np.random.default_rng(n)
            p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
            one = cls(p, num_threads=1, backend="compiled")
            many = cls(p.copy(), num_threads=args.threads, backend="compiled")
            fns = {
                1: lambda o=one, g=g: o.step(g),
                args.threads: lambda o=many, g=g: o.step(g),
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
    known = [c for c in crossovers.values() if c is not None]
    threshold = max(known) if len(known) == len(crossovers) else None
    print("crossover per loop:", crossovers)
    print(f"measured crossover (max over loops): {threshold}   (chunk size: {info['chunk_size']})")
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
