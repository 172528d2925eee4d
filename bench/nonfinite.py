"""Cost of the non-finite gradient check (nonfinite="error") against no check ("ignore").

    python bench/nonfinite.py [--sizes 1e4 1e5 1e6 1e7 5e7] [--dtype float32] [--repeats 7]

Both optimizers step arrays of the same size in the same process, interleaved, each sample
calibrated to >= 50 ms; the table shows medians and the overhead of the check. The check is
a vectorised pass over the gradients' bits by the same threads, on the same slices, that
then run the update: a separate read of g, at most 4 of Adam's 28 bytes per float32 element.
"""

import argparse
import json

import numpy as np

import fusedadam as fa
from fusedadam.benchmarks.timing import load_average, measure_interleaved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7, 5e7])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    print(f"fusedadam {fa.__version__} {fa.backend_info()}; load average {load_average()}")
    print(f"{'N':>10} {'ignore us':>11} {'error us':>11} {'overhead':>9}")
    rows = []
    for size in args.sizes:
        n = int(size)
        rng = np.random.default_rng(0)
        grad = rng.standard_normal(n).astype(args.dtype)
        opts = {
            mode: fa.Adam(rng.standard_normal(n).astype(args.dtype), nonfinite=mode)
            for mode in ("ignore", "error")
        }
        steps = {mode: (lambda o=o, g=grad: o.step(g)) for mode, o in opts.items()}
        res = measure_interleaved(steps, args.repeats)
        med = {mode: r["median"] for mode, r in res.items()}
        overhead = med["error"] / med["ignore"] - 1
        rows.append(
            {
                "n": n,
                "dtype": args.dtype,
                "ignore_s": med["ignore"],
                "error_s": med["error"],
                "overhead": overhead,
            }
        )
        print(
            f"{n:>10} {med['ignore'] * 1e6:>11.1f} {med['error'] * 1e6:>11.1f} "
            f"{overhead * 100:>8.1f}%"
        )
        del opts, steps, grad
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
