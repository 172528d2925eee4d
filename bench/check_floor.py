"""The non-finite check's scan against its floor, on one model's shapes and the same memory.

    python bench/check_floor.py [--model bert-base] [--threads 2] [--repeats 11]

One ``fusedadam.Adam`` (default ``nonfinite="error"``) and one with ``nonfinite="ignore"``
step float32 arrays of the model's parameter shapes with the same gradient arrays. Timed
interleaved (``fusedadam.benchmarks.timing``), medians:

scan          the check alone: a step whose last gradient element is NaN scans every
              gradient and raises before writing (its last array is a copy with the NaN)
read pass     the roofline's read-only pass over the same gradient arrays (the probe loop,
              ``fusedadam.benchmarks.roofline``): what the memory allows a pass that reads g
step, check   the default step (scan, then the update)
step, ignore  the update alone

``scan / read pass`` is the scan kernel's distance from its floor; ``step, check - step,
ignore`` is what the check adds to a step.
"""

import argparse

import numpy as np

import fusedadam as fa
from fusedadam.benchmarks import roofline, scenarios
from fusedadam.benchmarks.timing import load_average, measure_interleaved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-base", choices=sorted(scenarios.MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    shapes = scenarios.model_shapes(args.model)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    bad_last = grads[-1].copy()
    bad_last.flat[-1] = np.nan
    bad = grads[:-1] + [bad_last]  # the same memory but for the last array
    checked = fa.Adam(
        [rng.standard_normal(s).astype(np.float32) for s in shapes],
        lr=1e-9,
        num_threads=args.threads,
    )
    unchecked = fa.Adam(
        [rng.standard_normal(s).astype(np.float32) for s in shapes],
        lr=1e-9,
        num_threads=args.threads,
        nonfinite="ignore",
    )
    checked.step(grads)
    unchecked.step(grads)

    def scan():
        try:
            checked.step(bad)
        except FloatingPointError:
            return
        raise AssertionError("the step with a NaN gradient did not raise")

    read_pass = roofline.read_pass(grads, args.threads)
    fns = {
        "scan": scan,
        "read pass": read_pass,
        "step, check": lambda: checked.step(grads),
        "step, ignore": lambda: unchecked.step(grads),
    }
    start = load_average()
    result = measure_interleaved(fns, repeats=args.repeats)
    med = {k: r["median"] for k, r in result.items()}
    n = sum(int(np.prod(s)) for s in shapes)
    print(f"{args.model}: {len(shapes)} arrays, {n / 1e6:.2f}M float32, {args.threads} thread(s)")
    for k, t in med.items():
        print(f"  {k:14s} {t * 1e3:8.2f} ms")
    print(f"  scan / read pass {med['scan'] / med['read pass']:.3f}")
    print(f"  step, check - step, ignore {(med['step, check'] - med['step, ignore']) * 1e3:.2f} ms")
    print(f"load average {start} -> {load_average()}")


if __name__ == "__main__":
    main()
