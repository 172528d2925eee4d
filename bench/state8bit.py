"""Block-wise 8-bit optimizer state against float32 state and the 8-bit roofline.

    python bench/state8bit.py [--sizes 1e7 5e7] [--repeats 7] [--json bench/results/state8bit.json]

At each N (float32 params), in one process, samples interleaved (medians): AdamW with
``state_dtype="8bit"``, AdamW with float32 state, both with ``nonfinite="ignore"`` (the
step alone) and with the default ``"error"`` (plus the gradient scan), and the roofline
probe (``_testing.Probe``: Adam's 28 bytes per element with trivial arithmetic, on the
same threads). The 8-bit roofline is the probe's bandwidth applied to the bytes an 8-bit
step must move: p, g read and p written (12), one code of each moment read and written
(4) and two float32 scales per 256 elements read and written (0.0625): 16.0625 bytes per
element. State bytes per parameter are measured (``nbytes`` of the state arrays).

Where torch and bitsandbytes import (``pip install torch==2.13.0`` then ``pip install
--no-deps bitsandbytes``), bitsandbytes' CPU ``Adam8bit`` (block-wise dynamic map, block
256, ``min_8bit_size=4096``) steps the same param (shared memory) in the same rounds.
"""

import argparse
import json
import os

# bitsandbytes runs on torch's OpenMP threads, which spin for a while after each of its
# steps: the step timed next (interleaved) would share the cores with them. Passive
# waiting puts them to sleep at once (fusedadam's own pool is not OpenMP).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import fusedadam as fa
from fusedadam.benchmarks.roofline import roofline_step
from fusedadam.benchmarks.timing import environment, load_average, measure_interleaved

BYTES_F32 = 28.0
BYTES_8BIT = 12.0 + 4.0 + 4 * 4.0 / 256


def bitsandbytes_step(p, g, threads):
    """(step, versions) of bitsandbytes' CPU Adam8bit on ``p`` (shared memory), or
    (None, why not)."""
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as exc:  # not installed, or no usable build
        return None, f"not importable: {type(exc).__name__}: {exc}"
    torch.set_num_threads(threads)
    param = torch.nn.Parameter(torch.from_numpy(p))
    param.grad = torch.from_numpy(g)
    opt = bnb.optim.Adam8bit([param], lr=1e-6)
    opt.step()
    return opt.step, {"bitsandbytes": bnb.__version__, "torch": torch.__version__}


def state_bytes_per_param(opt, p):
    st = opt.state[p]
    return sum(a.nbytes for name, a in st.items() if name != "step") / p.size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 5e7])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-bitsandbytes", action="store_true", help="skip bitsandbytes")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    threads = args.threads or fa.backend_info()["max_threads"]
    print(f"fusedadam {fa.backend_info()}; threads {threads}; load average {load_average()}")
    rows = []
    for size in args.sizes:
        n = int(size)
        rng = np.random.default_rng(0)
        # One param and gradient shared by every implementation (memory: this is a shared
        # machine); each optimizer keeps its own state. Values stay finite throughout.
        p = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
        opts = {}
        for dtype in ("8bit", None):
            for mode in ("ignore", "error"):
                name = f"{'8bit' if dtype else 'float32'} {mode}"
                opts[name] = fa.AdamW(
                    [p], lr=1e-6, state_dtype=dtype, nonfinite=mode, num_threads=threads
                )
        # the "error" optimizers share their state with the "ignore" ones: no extra memory
        for dtype in ("8bit", "float32"):
            opts[f"{dtype} ignore"].step([g])
            opts[f"{dtype} error"].state[p] = opts[f"{dtype} ignore"].state[p]
        steps = {name: (lambda o=o, g=g: o.step([g])) for name, o in opts.items()}
        steps["roofline 28 B"] = roofline_step([p], [g], 2, threads)
        bnb_step, bnb_info = (
            (None, "skipped (--no-bitsandbytes)")
            if args.no_bitsandbytes
            else bitsandbytes_step(p, g, threads)
        )
        if bnb_step is not None:
            steps["bitsandbytes Adam8bit"] = bnb_step
        res = measure_interleaved(steps, args.repeats)
        med = {name: r["median"] for name, r in res.items()}
        roof8 = med["roofline 28 B"] * BYTES_8BIT / BYTES_F32
        bandwidth = BYTES_F32 * n / med["roofline 28 B"]
        row = {
            "n": n,
            "threads": threads,
            "median_s": med,
            "min_s": {name: r["min"] for name, r in res.items()},
            "bandwidth_GBps": bandwidth / 1e9,
            "roofline_8bit_s": roof8,
            "speedup_8bit_vs_float32": med["float32 ignore"] / med["8bit ignore"],
            "speedup_8bit_vs_float32_checked": med["float32 error"] / med["8bit error"],
            "pct_of_8bit_roofline": roof8 / med["8bit ignore"],
            "pct_of_28B_roofline_float32": med["roofline 28 B"] / med["float32 ignore"],
            "bitsandbytes": bnb_info,
            "state_bytes_per_param": {
                "8bit": state_bytes_per_param(opts["8bit ignore"], p),
                "float32": state_bytes_per_param(opts["float32 ignore"], p),
            },
        }
        if bnb_step is not None:
            row["speedup_8bit_vs_bitsandbytes"] = med["bitsandbytes Adam8bit"] / med["8bit ignore"]
            print(
                f"  bitsandbytes Adam8bit {med['bitsandbytes Adam8bit'] * 1e3:.1f} ms: fusedadam "
                f"8-bit {row['speedup_8bit_vs_bitsandbytes']:.0f}x faster"
            )
        rows.append(row)
        print(
            f"N={n:.0e}: 8bit {med['8bit ignore'] * 1e3:.2f} ms, float32 "
            f"{med['float32 ignore'] * 1e3:.2f} ms, speed-up "
            f"{row['speedup_8bit_vs_float32']:.2f}x (checked: "
            f"{row['speedup_8bit_vs_float32_checked']:.2f}x), 8-bit roofline "
            f"{roof8 * 1e3:.2f} ms = {row['pct_of_8bit_roofline']:.0%}, bandwidth "
            f"{bandwidth / 1e9:.1f} GB/s, state B/param "
            f"{row['state_bytes_per_param']['8bit']:.4f} vs "
            f"{row['state_bytes_per_param']['float32']:.1f}"
        )
        del opts, steps, p, g
    out = {"environment": environment(), "load_after": load_average(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
