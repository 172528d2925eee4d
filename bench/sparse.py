"""SparseAdam: time per step against table size at a fixed number of touched elements.

A lazy step's cost should follow k * dim (rows touched times row width), not the number
of rows of the table. Dense fa.Adam on the same table is timed for contrast.

    python bench/sparse.py [--k 1024] [--dim 64] [--threads 1]

The three are timed by fusedadam's benchmark protocol (:mod:`fusedadam.benchmarks.timing`:
warm-up, calibrated samples, interleaved, medians).
"""

import argparse

import numpy as np

import fusedadam as fa
from fusedadam.benchmarks.timing import load_average, measure_interleaved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1024, help="rows touched per step")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sizes", default="1e4,1e5,1e6,4e6", help="table rows, comma separated")
    parser.add_argument("--repeat", type=int, default=7, help="samples per implementation")
    parser.add_argument("--fast", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.fast:
        sizes, args.repeat = [2 * args.k, 20 * args.k], 5
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)
    print(
        f"# fusedadam {fa.__version__}, openmp={fa.backend_info()['openmp']}, k={args.k}, "
        f"dim={args.dim}, {dtype}, num_threads={args.threads}, load {load_average()}"
    )
    print(
        f"{'rows':>10} {'table MB':>9} {'sparse us/step':>15} {'numpy-ref us':>13} "
        f"{'dense Adam us':>14}"
    )
    for rows in sizes:
        W = rng.standard_normal((rows, args.dim)).astype(dtype)
        idx = rng.integers(0, rows, size=args.k)
        vals = rng.standard_normal((args.k, args.dim)).astype(dtype)
        sparse = fa.SparseAdam([W], lr=1e-3, num_threads=args.threads)
        W_ref = W.copy()
        ref = fa.SparseAdam([W_ref], lr=1e-3, backend="numpy")
        grad = [(idx, vals)]
        W_dense = W.copy()
        dense_grad = np.zeros_like(W_dense)
        np.add.at(dense_grad, idx, vals)
        dense = fa.Adam(W_dense, lr=1e-3, num_threads=args.threads)
        res = measure_interleaved(
            {
                "sparse": lambda s=sparse, g=grad: s.step(g),
                "ref": lambda r=ref, g=grad: r.step(g),
                "dense": lambda d=dense, g=dense_grad: d.step(g),
            },
            args.repeat,
            0.02 if args.fast else 0.05,
        )
        t_sparse, t_ref, t_dense = (res[k]["median"] for k in ("sparse", "ref", "dense"))
        print(
            f"{rows:>10} {W.nbytes / 1e6:>9.1f} {t_sparse * 1e6:>15.1f} "
            f"{t_ref * 1e6:>13.1f} {t_dense * 1e6:>14.1f}"
        )


if __name__ == "__main__":
    main()
