"""``python -m fusedadam [demo]``: step a large vector with the compiled kernel and the NumPy
reference, check they agree bit for bit, and print time per step and the speedup.

``python -m fusedadam bench SCENARIO ...`` runs the micro-benchmarks
(:mod:`fusedadam.benchmarks`); ``python -m fusedadam bench --help`` lists them."""

import argparse
import time

import numpy as np

import fusedadam as fa


def _time_steps(opt, grad, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step(grad)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    """Dispatch ``bench`` to the benchmarks; anything else (or ``demo``) runs the demo."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from fusedadam.benchmarks.cli import main as bench_main

        bench_main(argv[1:])
        return
    if argv[:1] == ["demo"]:
        argv = argv[1:]
    demo(argv)


def demo(argv=None):
    """The demo: compiled kernel against the NumPy reference on one large vector."""
    parser = argparse.ArgumentParser(
        prog="python -m fusedadam [demo]",
        description=__doc__,
        epilog="Benchmarks: python -m fusedadam bench "
        "{sweep,model,overhead,roofline,offload} --help",
    )
    parser.add_argument("--size", type=float, default=2e7, help="elements (default 2e7)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per backend")
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)
    n, dtype = int(args.size), np.dtype(args.dtype)
    info = fa.backend_info()
    print(f"fusedadam {fa.__version__}: {info}")
    rng = np.random.default_rng(0)
    start = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    backends = ["compiled", "numpy"] if info["compiled"] else ["numpy"]
    params = {b: start.copy() for b in backends}
    opts = {
        b: fa.Adam(params[b], lr=1e-3, backend=b, num_threads=args.num_threads) for b in backends
    }
    for b in backends:  # first step allocates the state; not timed
        opts[b].step(grad)
    times = {b: [] for b in backends}
    for _ in range(2):  # interleave the backends so machine noise hits both
        for b in backends:
            times[b].append(_time_steps(opts[b], grad, args.repeats))
    bytes_per_step = n * dtype.itemsize * 7  # read p, g, m, v; write p, m, v
    print(f"Adam step on {n:,} {dtype} elements ({bytes_per_step / 1e9:.2f} GB moved per step)")
    for b in backends:
        t = min(times[b])
        print(
            f"  {b:>8}: {t * 1e3:9.2f} ms/step  {n / t / 1e9:7.3f} Gelem/s"
            f"  {bytes_per_step / t / 1e9:6.1f} GB/s"
        )
    if len(backends) == 2:
        same = np.array_equal(params["compiled"], params["numpy"])
        speedup = min(times["numpy"]) / min(times["compiled"])
        print(
            f"  speedup compiled vs NumPy reference: {speedup:.1f}x; results bit-identical: {same}"
        )
        if not same:
            raise SystemExit("compiled and reference results differ")


if __name__ == "__main__":
    main()
