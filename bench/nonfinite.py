"""Cost of the non-finite gradient check, and of unscaling + clipping riding on it.

    python bench/nonfinite.py [--sizes 1e4 1e5 1e6 1e7 5e7] [--dtype float32]
        [--threads N] [--repeats 7] [--no-clip] [--json PATH]

Three Adam optimizers step arrays of the same size in the same process, interleaved, each
sample calibrated to >= 50 ms; the table shows medians:

ignore   ``nonfinite="ignore"``: no check, one pass (28 B/element in float32)
error    ``nonfinite="error"`` (the default): the NaN/inf scan of g, by the same threads on
         the same slices that then run the update
scale    ``"error"`` with ``grad_scale=1024`` (issue #12): the update divides by the scale
clip     ``"error"`` with ``grad_scale=1024`` and ``max_grad_norm`` (issue #12): the global
         norm of the unscaled gradients is accumulated in that same scan, then the update
         divides by the scale and multiplies by the clipping coefficient. The gradients are
         never written, so ``max_grad_norm`` is set below their norm: every step clips.

``error / ignore`` is the check's cost: a separate read of g, 4 B on the update's 28, which
costs more than 32/28 = 1.14x because a pass that only reads streams more slowly than one
that reads and writes (~1.2x on BERT-base's shapes at 2 threads on AMD Zen 5, where the
scan takes as long as the roofline's read-only pass over the same g: bench/README.md);
``clip / error`` is what unscaling and clipping add to it; ``clip / ignore`` the whole.
"""

import argparse
import json
import shlex
import sys

import numpy as np

import fusedadam as fa
from fusedadam.benchmarks.timing import environment, load_average, measure_interleaved

SCALE = 1024.0


def markdown(run):
    """A saved run (``--json``) as the README's Markdown table; tests/test_readme.py checks it."""
    env = run["environment"]
    out = [
        "| N | threads | no check | check | check + unscale | check + unscale + clip "
        "| check / no check | + unscale / check | + unscale + clip / check | all / no check |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["rows"]:
        out.append(
            f"| {r['n']:.0e} | {r['threads'] or env['nproc']} | {r['ignore_s'] * 1e3:.2f} ms "
            f"| {r['error_s'] * 1e3:.2f} ms | {r['scale_s'] * 1e3:.2f} ms "
            f"| {r['clip_s'] * 1e3:.2f} ms "
            f"| {r['error_s'] / r['ignore_s']:.2f}× | {r['scale_s'] / r['error_s']:.2f}× "
            f"| {r['clip_over_error']:.2f}× "
            f"| {r['clip_over_ignore']:.2f}× |"
        )
    start, end = env["loadavg_at_start"], env["loadavg_at_end"]
    out += [
        "",
        f"`{run['command']}`: {run['rows'][0]['dtype']}, Adam, medians of {run['repeats']} "
        f"interleaved samples; load average {start[0]:.2f} at the start, {end[0]:.2f} at the "
        f"end; {env['time_utc']}.",
    ]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7, 5e7])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="default: all processors")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-clip", action="store_true", help="time ignore and error only")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python bench/nonfinite.py " + " ".join(shlex.quote(a) for a in argv)
    env = environment()
    print(f"fusedadam {fa.__version__} {fa.backend_info()}; load average {load_average()}")
    print(f"{'N':>10} {'ignore us':>11} {'error us':>11} {'clip us':>11} "
          f"{'error/ignore':>12} {'clip/error':>10} {'clip/ignore':>11}")  # fmt: skip
    rows = []
    for size in args.sizes:
        n = int(size)
        rng = np.random.default_rng(0)
        grad = (rng.standard_normal(n) * SCALE).astype(args.dtype)
        norm = float(np.linalg.norm(grad.astype(np.float64))) / SCALE
        options = {"ignore": {"nonfinite": "ignore"}, "error": {"nonfinite": "error"}}
        if not args.no_clip:
            options["scale"] = {"grad_scale": SCALE}
            options["clip"] = {"grad_scale": SCALE, "max_grad_norm": norm / 2}
        opts = {
            mode: fa.Adam(rng.standard_normal(n).astype(args.dtype), num_threads=args.threads, **kw)
            for mode, kw in options.items()
        }
        steps = {mode: (lambda o=o, g=grad: o.step(g)) for mode, o in opts.items()}
        res = measure_interleaved(steps, args.repeats)
        med = {mode: r["median"] for mode, r in res.items()}
        row = {
            "n": n,
            "dtype": args.dtype,
            "threads": args.threads,
            "ignore_s": med["ignore"],
            "error_s": med["error"],
            "overhead": med["error"] / med["ignore"] - 1,
        }
        clip = med.get("clip")
        if clip is not None:
            last = opts["clip"].last_grad_norm
            assert abs(last / norm - 1) < 1e-3, (last, norm)  # it did compute the norm
            row.update(
                scale_s=med["scale"],
                clip_s=clip,
                clip_over_error=clip / med["error"],
                clip_over_ignore=clip / med["ignore"],
                grad_norm=float(last),
                max_grad_norm=norm / 2,
            )
        rows.append(row)
        print(
            f"{n:>10} {med['ignore'] * 1e6:>11.1f} {med['error'] * 1e6:>11.1f} "
            + (f"{clip * 1e6:>11.1f} " if clip else f"{'-':>11} ")
            + f"{med['error'] / med['ignore']:>11.3f}x "
            + (f"{clip / med['error']:>9.3f}x {clip / med['ignore']:>10.3f}x" if clip else "")
        )
        del opts, steps, grad
    env["loadavg_at_end"] = load_average()
    print(f"load average at the end {env['loadavg_at_end']}")
    run = {"command": command, "repeats": args.repeats, "environment": env, "rows": rows}
    if rows and "clip_s" in rows[0]:
        print("\n" + markdown(run))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run, f, indent=1)


if __name__ == "__main__":
    main()
