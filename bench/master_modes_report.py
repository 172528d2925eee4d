"""Markdown tables of the convergence and speed results of the storage modes.

    python bench/master_modes_report.py [--convergence bench/results/convergence.json] \
        [--speed bench/results/master_speed.json]

Prints the tables docs/storage_modes.md and the README show, from the JSON files
``bench/convergence.py`` and ``bench/master_speed.py`` write.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_modes import MODES, step_bytes, stored_bytes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METRIC = {"digits": "test cross-entropy", "lm": "validation loss (nats/char)"}


def _stored(name):
    mode = MODES[name]
    if mode.control:
        return "2 + float32 moments, no master"
    return f"{stored_bytes(mode):.2f}"


def _in_range(row, spread):
    if row["within_float32_range"]:
        return "yes"
    return "no: below it (better)" if row["mean"] < spread["min"] else "**no: above it (worse)**"


def convergence_tables(run):
    lines = []
    for task, result in run["results"].items():
        summary = result["summary"]
        spread = summary["_float32_spread"]
        seeds = len(summary["float32"]["finals"])
        lines += [
            f"**{task}**: final {METRIC[task]}, {seeds} seeds; float32's seed range "
            f"{spread['min']:.4f} .. {spread['max']:.4f}",
            "",
            "| mode | B/param kept | mean ± std | minus float32, same seed: mean (min .. max) "
            "| mean in float32's seed range |" + (" test accuracy |" if task == "digits" else ""),
            "|---|---|---|---|---|" + ("---|" if task == "digits" else ""),
        ]
        for name in result["modes"]:
            row = summary[name]
            diffs = row["paired_diff_to_float32"]
            cells = [
                name,
                _stored(name),
                f"{row['mean']:.4f} ± {row['std']:.4f}",
                "0"
                if name == "float32"
                else f"{statistics.mean(diffs):+.4f} ({min(diffs):+.4f} .. {max(diffs):+.4f})",
                _in_range(row, spread),
            ]
            if task == "digits":
                accs = [result["per_seed"][s][name]["final_accuracy"] for s in result["per_seed"]]
                cells.append(f"{100 * statistics.mean(accs):.2f} %")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for name in result["modes"]:
            row = summary[name]
            if "exact_twin" in row:
                ties = row["shadow_even_ties"]
                first = row["first_step_loss_differs_from_twin"]
                first = ", ".join("never" if step is None else str(step) for step in first)
                lines.append(
                    f"- `{name}` fed the `{row['exact_twin']}` run's gradients: master bit for "
                    f"bit the float32 master at all {row['shadow_steps']} steps of every seed "
                    f"(asserted); params one ulp apart at {min(ties)}-{max(ties)} even ties per "
                    f"run; trained on its own, its loss first differs at step "
                    f"{first}."
                )
        lines.append("")
    return "\n".join(lines)


def _count(n):
    """10⁷, 5·10⁷: the sizes as the docs write them."""
    mantissa, exponent = f"{n:.0e}".split("e")
    power = "10" + str(int(exponent)).translate(str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻"))
    return power if mantissa == "1" else f"{mantissa}·{power}"


def speed_tables(run):
    lines = []
    for row in run["rows"]:
        lines += [
            f"**N = {_count(row['n'])}, {row['threads']} thread"
            f"{'s' if row['threads'] > 1 else ''}**: probe {row['bandwidth_GBps']:.1f}"
            f" GB/s; load average {row['load_before'][0]:.1f} before, "
            f"{row['load_after'][0]:.1f} after",
            "",
            "| step | B/element | median | % of roofline | × today's 8-bit step "
            "| × today's float32-moment step | × 3 passes |",
            "|---|---|---|---|---|---|---|",
        ]
        speedups = row["speedup_over"]
        three = next(k for k in speedups if k.startswith("3 passes"))
        for name, model in row["bytes_per_element"].items():
            cells = [
                name,
                f"{model:.2f}",
                f"{row['median_s'][name] * 1e3:.1f} ms",
                f"{100 * row['pct_of_roofline'][name]:.0f} %",
            ]
            for label in ("f32 master, 8-bit moments", "f32 master, float32 moments", three):
                value = speedups[label].get(name)
                cells.append("" if value is None else f"{value:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convergence", default=os.path.join(RESULTS, "convergence.json"))
    parser.add_argument("--speed", default=os.path.join(RESULTS, "master_speed.json"))
    args = parser.parse_args(argv)
    print("| mode | B/param kept | B/element moved per AdamW step |")
    print("|---|---|---|")
    for name, mode in MODES.items():
        if not mode.control:
            print(f"| {name} | {stored_bytes(mode):.2f} | {step_bytes(mode):.2f} |")
    print()
    for path, tables in ((args.convergence, convergence_tables), (args.speed, speed_tables)):
        if os.path.exists(path):
            with open(path) as f:
                print(tables(json.load(f)))


if __name__ == "__main__":
    main()
