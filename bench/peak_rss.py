"""Peak resident memory of one AdamW step on 1e8 bfloat16 params, beside the nbytes model.

    python bench/peak_rss.py [--size 1e8] [--json bench/results/peak_rss.json]

For every master mode ("float32", "residual", "compact") x state dtype ("float32",
"bfloat16", "8bit", "8bit_companded"), a fresh Python process (``--case``) imports numpy
and fusedadam, reads its peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
as the baseline, then allocates a bfloat16 param and a bfloat16 gradient of ``size``
elements (filled in chunks of 2**20, so no full-size temporary), builds
``fusedadam.AdamW`` over it and takes two steps (the first creates the state). The peak
resident set after them minus the baseline is what the step costs the process; the nbytes
model is the param, the gradient and every state array's ``nbytes``. The cases run one
after another (each needs up to ~1.6 GB at 1e8), never two at once.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

MASTERS = ("float32", "residual", "compact")
STATE_DTYPES = ("float32", "bfloat16", "8bit", "8bit_companded")
CHUNK = 1 << 20


def _peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_case(size, master, state_dtype):
    """In this process: the baseline, one optimizer, two steps; a dict of bytes."""
    import ml_dtypes
    import numpy as np

    import fusedadam as fa

    bf16 = np.dtype(ml_dtypes.bfloat16)
    baseline = _peak_bytes()
    rng = np.random.default_rng(0)
    param = np.empty(size, bf16)
    grad = np.empty(size, bf16)
    for start in range(0, size, CHUNK):
        stop = min(size, start + CHUNK)
        param[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * 0.02
        grad[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * 1e-3
    after_arrays = _peak_bytes()
    opt = fa.AdamW(
        [param],
        lr=1e-3,
        master=master,
        state_dtype=state_dtype,
        nonfinite="ignore",
        num_threads=1,
    )
    opt.step([grad])
    after_first = _peak_bytes()
    opt.step([grad])
    after_second = _peak_bytes()
    state = {k: int(a.nbytes) for k, a in opt.state[param].items() if k != "step"}
    return {
        "size": size,
        "master": master,
        "state_dtype": state_dtype,
        "baseline_rss": baseline,
        "peak_rss_arrays": after_arrays - baseline,
        "peak_rss_first_step": after_first - baseline,
        "peak_rss": after_second - baseline,
        "param_nbytes": int(param.nbytes),
        "grad_nbytes": int(grad.nbytes),
        "state_nbytes": state,
        "model_nbytes": int(param.nbytes + grad.nbytes + sum(state.values())),
    }


def markdown(run):
    """The table of a run (docs/master_residual.md shows the recorded one)."""
    lines = [
        "| master | moments | model: param + grad + state | peak RSS | peak RSS - model "
        "| param + state (no grad) |",
        "|---|---|---|---|---|---|",
    ]
    for r in run["rows"]:
        n = r["size"]
        model = r["model_nbytes"] / n
        peak = r["peak_rss"] / n
        without_grad = (r["param_nbytes"] + sum(r["state_nbytes"].values())) / n
        moments = {"8bit": "8-bit", "8bit_companded": "8-bit companded"}.get(
            r["state_dtype"], r["state_dtype"]
        )
        lines.append(
            f'| `"{r["master"]}"` | {moments} | {model:.3f} | {peak:.3f} | '
            f"{peak - model:+.3f} | {without_grad:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e8)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--case", nargs=2, metavar=("MASTER", "STATE_DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    size = int(args.size)
    if args.case:
        print(json.dumps(run_case(size, *args.case)))
        return

    from fusedadam.benchmarks.timing import available_bytes, environment

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    available = available_bytes()
    print(f"uptime: {uptime}; MemAvailable {available / 2**30:.1f} GiB")
    env = environment()
    rows = []
    for master in MASTERS:
        for state_dtype in STATE_DTYPES:
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--size",
                    str(size),
                    "--case",
                    master,
                    state_dtype,
                ],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    run = {
        "environment": env,
        "uptime": [uptime, uptime_end],
        "mem_available_at_start": available,
        "rows": rows,
    }
    print(f"\nAdamW, {size:.0e} bfloat16 params and gradients, two steps; bytes per param\n")
    print(markdown(run))
    print(f"\nuptime at the end: {uptime_end}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"environment": env, "uptime": [uptime, uptime_end], "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
