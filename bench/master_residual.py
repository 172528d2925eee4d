"""The master modes and 8-bit maps against today's float32 master: bytes per parameter
and step time.

    python bench/master_residual.py [--sizes 1e7] [--threads 1 2] [--repeats 7] \
        [--json bench/results/master_residual.json]

Bytes per parameter are measured (``nbytes`` of the param and every state array after one
step; gradients not counted) for every param dtype x master mode x state dtype.

Speed, at each N and thread count, in one process, samples interleaved (medians):
AdamW on bfloat16 params with bfloat16 gradients, ``nonfinite="ignore"`` (the step
alone), master "float32", "residual" and "compact", with float32, 8-bit and companded
8-bit moments (``--modes`` picks some); and the roofline
probe (``_testing.Probe``: 28 bytes per element, trivial arithmetic, same threads). The
byte model of each step (what it must read + write per element, no write-allocate):

    float32 master, float32 moments: read master 4, g 2, m v 8; write master 4, p 2, m v 8 = 28
    residual,       float32 moments: read p 2, r 2, g 2, m v 8; write p 2, r 2, m v 8  = 26
    float32 master, 8-bit moments:   read master 4, g 2, m v 2; write master 4, p 2, m v 2 = 16
    residual,       8-bit moments:   read p 2, r 2, g 2, m v 2; write p 2, r 2, m v 2  = 14
    compact,        float32 moments: read p 2, c 1, g 2, m v 8; write p 2, c 1, m v 8  = 24
    compact,        8-bit moments:   read p 2, c 1, g 2, m v 2; write p 2, c 1, m v 2  = 12

(the companded 8-bit map moves the same bytes as the float one; + 16 bytes of scales per
256 elements for 8-bit moments). Counting the read a write-
allocate cache does for a written array it did not read (the float32-master step's p),
the float32-master steps move 2 bytes more. The roofline of a step is the probe's
bandwidth applied to its model bytes; % of roofline = that time / the step's median.
"""

import argparse
import json

import ml_dtypes
import numpy as np

import fusedadam as fa
from fusedadam.benchmarks.roofline import roofline_step
from fusedadam.benchmarks.timing import environment, load_average, measure_interleaved

BF16 = np.dtype(ml_dtypes.bfloat16)
SCALES = 2 * 4 * 2 / 256  # two moments' float32 absmax per 256 elements, read and written
MODEL = {
    ("float32", None): 28.0,
    ("residual", None): 26.0,
    ("float32", "8bit"): 16.0 + SCALES,
    ("residual", "8bit"): 14.0 + SCALES,
    ("compact", None): 24.0,
    ("compact", "8bit"): 12.0 + SCALES,
    ("float32", "8bit_companded"): 16.0 + SCALES,
    ("residual", "8bit_companded"): 14.0 + SCALES,
    ("compact", "8bit_companded"): 12.0 + SCALES,
}
MASTERS = ("float32", "residual", "compact")
STATE_DTYPES = (None, "bfloat16", "8bit", "8bit_companded")


def bytes_per_param():
    """{(param dtype, master, state_dtype): bytes per param, or the refusal}."""
    n = 1 << 16
    table = {}
    for dtype in (np.float32, BF16, np.float16):
        for master in MASTERS:
            for state_dtype in STATE_DTYPES:
                key = (np.dtype(dtype).name, master, state_dtype or "default")
                p = np.zeros(n, dtype)
                try:
                    opt = fa.AdamW([p], master=master, state_dtype=state_dtype)
                    opt.step([np.zeros(n, dtype)])
                except TypeError as exc:
                    table[key] = f"refused: {exc}"
                    continue
                arrays = [a for k, a in opt.state[p].items() if k != "step"]
                table[key] = (p.nbytes + sum(a.nbytes for a in arrays)) / n
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--modes",
        nargs="+",
        metavar="MASTER/STATE_DTYPE",
        help="the steps to time, e.g. float32/8bit compact/8bit_companded (default: all)",
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    modes = list(MODEL)
    if args.modes:
        by_name = {f"{m}/{sd or 'float32'}": (m, sd) for m, sd in MODEL}
        modes = [by_name[name] for name in args.modes]
    print(f"fusedadam {fa.backend_info()}; load average {load_average()}")
    table = bytes_per_param()
    for key, value in table.items():
        print(f"  {' / '.join(key):32s} {value if isinstance(value, str) else f'{value:.4f}'}")
    rows = []
    for size in args.sizes:
        n = int(size)
        rng = np.random.default_rng(0)
        init = rng.standard_normal(n).astype(np.float32).astype(BF16)
        g = (rng.standard_normal(n) * 1e-3).astype(np.float32).astype(BF16)
        for threads in args.threads:
            steps, opts = {}, {}
            for master, state_dtype in modes:
                name = f"{master} master, {state_dtype or 'float32'} moments"
                p = init.copy()  # each its own param: a residual is meaningful only with it
                opt = fa.AdamW([p], lr=1e-6, master=master, state_dtype=state_dtype,
                               nonfinite="ignore", num_threads=threads)  # fmt: skip
                opts[name] = (opt, (master, state_dtype))
                steps[name] = lambda o=opt, g=g: o.step([g])
            probe_p = np.zeros(n, np.float32)
            probe_g = np.zeros(n, np.float32)
            steps["roofline 28 B"] = roofline_step([probe_p], [probe_g], 2, threads)
            load_before = load_average()
            res = measure_interleaved(steps, args.repeats)
            med = {name: r["median"] for name, r in res.items()}
            bandwidth = 28.0 * n / med["roofline 28 B"]
            row = {"n": n, "threads": threads, "median_s": med, "load_before": load_before,
                   "load_after": load_average(), "bandwidth_GBps": bandwidth / 1e9,
                   "pct_of_roofline": {}, "speedup_residual": {}}  # fmt: skip
            for name, (_, key) in opts.items():
                row["pct_of_roofline"][name] = MODEL[key] * n / bandwidth / med[name]
            for sd in ("float32", "8bit"):
                base, new = f"float32 master, {sd} moments", f"residual master, {sd} moments"
                if base in med and new in med:
                    row["speedup_residual"][sd] = med[base] / med[new]
            rows.append(row)
            print(f"N={n:.0e} threads={threads} load {row['load_before']} -> {row['load_after']}"
                  f" bandwidth {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
            for name in opts:
                print(f"  {name:44s} {med[name] * 1e3:8.2f} ms  "
                      f"{row['pct_of_roofline'][name]:5.0%} of its roofline")  # fmt: skip
            for sd, ratio in row["speedup_residual"].items():
                print(f"  residual speed-up, {sd} moments: {ratio:.2f}x")
            del steps, opts, probe_p, probe_g
    out = {
        "environment": environment(),
        "bytes_per_param": {" / ".join(k): v for k, v in table.items()},
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
