"""Gather bench/pool_load.sh's JSON lines into one JSON file and print a Markdown table.

Per (condition, case, scheme, K): the median over rounds of each process's per-step
median, and the mean over rounds of each process's per-step mean (the mean counts the
stalls the median hides). Ratios are against `serial` in the same condition.
"""

import json
import statistics
import sys
from collections import defaultdict


def main(lines_path, out_path):
    rows, notes = [], []
    with open(lines_path) as f:
        for line in f:
            r = json.loads(line)
            (notes if "loadavg_before" in r else rows).append(r)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["condition"], r["case"], r["scheme"], r["k"])].append(r)
    summary = []
    for (cond, case, scheme, k), rs in groups.items():
        summary.append(
            {
                "condition": cond,
                "case": case,
                "n": rs[0]["n"],
                "scheme": scheme,
                "k": k,
                "threads": rs[0]["threads"],
                "isa": rs[0]["isa"],
                "rounds": len(rs),
                "median_us": statistics.median(r["median_us"] for r in rs),
                "mean_us": statistics.fmean(r["mean_us"] for r in rs),
                "p90_us": statistics.median(r["p90_us"] for r in rs),
            }
        )
    serial = {(s["condition"], s["case"]): s for s in summary if s["scheme"] == "serial"}
    for s in summary:
        ref = serial.get((s["condition"], s["case"]))
        if ref:
            s["median_vs_serial"] = s["median_us"] / ref["median_us"]
            s["mean_vs_serial"] = s["mean_us"] / ref["mean_us"]
    with open(out_path, "w") as f:
        json.dump({"summary": summary, "runs": rows, "load": notes}, f, indent=1)
    order = {"idle": 0, "pinned": 1, "unpinned": 2}
    summary.sort(key=lambda s: (order[s["condition"]], s["n"], s["case"], s["scheme"], s["k"]))
    print(
        "| condition | case | scheme | K | median µs | mean µs | median / serial | mean / serial |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def ratio(s, key):
        return f"{s[key]:.2f}" if key in s else ""

    for s in summary:
        print(
            f"| {s['condition']} | {s['case']} | {s['scheme']} | {s['k']} | "
            f"{s['median_us']:.1f} | {s['mean_us']:.1f} | {ratio(s, 'median_vs_serial')} | "
            f"{ratio(s, 'mean_vs_serial')} |"
        )
    loads = [n["loadavg_before"] for n in notes]
    print(f"\nload average before each process: {loads[0]} ... {loads[-1]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
