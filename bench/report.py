"""Turn bench/step.py's JSON into the Markdown tables of bench/README.md.

    python bench/report.py bench/results/sweep.json [more.json ...] [--grep TEXT ...]

``--grep`` keeps only the cases whose label matches every regular expression given (e.g.
``--grep threads=1 --grep float32``).

One row per case: fusedadam's median time per step, ns/element, GB/s and % of the
same-process roofline, then how many times slower each rival is than fusedadam
(median over median; >1 means fusedadam wins).
"""
import json
import re
import sys

RIVALS = ("torch-fused", "torch-foreach", "torch-single", "deepspeed", "numpy")


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def table(rows, grep=()):
    cases = {}
    for r in rows:
        if not all(re.search(text, r["label"]) for text in grep):
            continue
        cases.setdefault(r["label"], {})[r["impl"]] = r
    out = ["| case | fusedadam median (min) | ns/elem | GB/s | % roofline | "
           + " | ".join(f"{r} ×" for r in RIVALS) + " |",
           "|---|---|---|---|---|" + "---|" * len(RIVALS)]
    for label, impls in cases.items():
        fa = impls.get("fusedadam")
        if fa is None:
            continue
        pct = f"{fa['pct_roofline']:.0f}%" if fa.get("pct_roofline") else "-"
        rel = [f"{impls[r]['median_s'] / fa['median_s']:.2f}" if r in impls else "-"
               for r in RIVALS]
        out.append(f"| {label} | {fmt_time(fa['median_s'])} ({fmt_time(fa['min_s'])}) | "
                   f"{fa['ns_per_element']:.3f} | {fa['gb_per_s']:.1f} | {pct} | "
                   + " | ".join(rel) + " |")
    return "\n".join(out)


def overhead_table(rows):
    out = ["| N | call | median | min |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['n_elements']} | {r['impl']} | {r['median_s'] * 1e6:.2f} µs | "
                   f"{r['min_s'] * 1e6:.2f} µs |")
    return "\n".join(out)


def main(argv):
    grep, paths = [], []
    it = iter(argv)
    for arg in it:
        if arg == "--grep":
            grep.append(next(it))
        else:
            paths.append(arg)
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        env = data["environment"]
        print(f"### {path}\n")
        print(f"{env['cpu']}, {env['nproc']} CPUs, simd={env['fusedadam']['simd']}, "
              f"threshold={env['fusedadam']['parallel_threshold']}, torch {env['torch']}, "
              f"deepspeed {env['deepspeed']}, load average at start "
              f"{env.get('loadavg_at_start')}, {env['time_utc']}\n")
        rows = data["rows"]
        if rows and "pct_roofline" in rows[0]:
            print(table(rows, grep))
        else:
            print(overhead_table(rows))
        for note in data.get("notes", []):
            print(f"\n- {note}")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
