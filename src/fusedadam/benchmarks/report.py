"""What a benchmark run shows: terminal tables, a Markdown summary, JSON and a plot."""

import json
from typing import Any, Dict

__all__ = ["case_table", "summary_table", "write_json", "plot"]

# Speedups are reported against these, in this order, when they were timed.
VERSUS = ("numpy", "torch-fused", "torch-foreach", "torch-single", "deepspeed")


def fmt_time(seconds):
    """``12.34 us``, ``5.67 ms`` or ``1.234 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def case_table(rows):
    """One case's implementations: median, min, ns/element, GB/s, % roofline, speedup.

    ``fa speedup`` is the implementation's median over fusedadam's: how many times faster
    fusedadam is (> 1: fusedadam wins).
    """
    fa = next((r["median_s"] for r in rows if r["impl"] == "fusedadam"), None)
    lines = [
        f"{'implementation':18s} {'median':>11s} {'min':>11s} {'ns/elem':>9s} "
        f"{'GB/s':>7s} {'%roof':>6s} {'fa speedup':>10s}"
    ]
    for r in rows:
        pct = f"{r['pct_roofline']:6.1f}" if r.get("pct_roofline") else "     -"
        speedup = f"{r['median_s'] / fa:9.2f}x" if fa and r["impl"] != "fusedadam" else "         -"
        lines.append(
            f"{r['impl']:18s} {fmt_time(r['median_s']):>11s} "
            f"{fmt_time(r['min_s']):>11s} {r['ns_per_element']:9.3f} "
            f"{r['gb_per_s']:7.2f} {pct} {speedup}"
        )
    return "\n".join(lines)


def summary_table(rows):
    """A Markdown table, one line per case: fusedadam's numbers and its speedup vs peers."""
    cases: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        cases.setdefault(r["label"], {})[r["impl"]] = r
    versus = [v for v in VERSUS if any(v in impls for impls in cases.values())]
    out = [
        "| case | fusedadam median | ns/element | GB/s | % of roofline | "
        + "".join(f"vs {v} | " for v in versus),
        "|---|---:|---:|---:|---:|" + "---:|" * len(versus),
    ]
    for label, impls in cases.items():
        fa = impls.get("fusedadam")
        if fa is None:
            continue
        pct = f"{fa['pct_roofline']:.0f}%" if fa.get("pct_roofline") else "-"
        rel = [
            f"{impls[v]['median_s'] / fa['median_s']:.2f}x" if v in impls else "-" for v in versus
        ]
        out.append(
            f"| {label} | {fmt_time(fa['median_s'])} | {fa['ns_per_element']:.3f} | "
            f"{fa['gb_per_s']:.1f} | {pct} | " + "".join(f"{x} | " for x in rel)
        )
    return "\n".join(line.rstrip() for line in out)


def markdown(run):
    """A ``--json`` run as Markdown: the summary table, then the command and the machine."""
    env = run["environment"]
    info = env["fusedadam"]
    peers = ", ".join(f"{k} {v or 'not installed'}" for k, v in env["peers"].items())

    def load(values):
        return "unknown" if values is None else " ".join(f"{v:.2f}" for v in values)

    lines = [
        summary_table(run["rows"]),
        "",
        f"`{run['command']}`",
        "",
        f"{env['cpu']}, {env['nproc']} CPUs, simd={info['simd']}, NumPy {env['numpy']}, "
        f"{peers}; load average (1, 5, 15 min) {load(env['loadavg_at_start'])} at the "
        f"start, {load(env.get('loadavg_at_end'))} at the end; {env['time_utc']}.",
    ]
    return "\n".join(lines) + "\n"


def _compact(rows):
    """Floats rounded to 4 significant digits: small JSON files."""
    return [
        {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]


def write_json(path, environment, command, notes, rows):
    """Write a run: ``{"environment", "command", "skipped", "rows"}``."""
    with open(path, "w") as f:
        json.dump(
            {
                "environment": environment,
                "command": command,
                "skipped": notes,
                "rows": _compact(rows),
            },
            f,
            indent=1,
        )
        f.write("\n")


def plot(rows, path, title):
    """Throughput against size, one panel per (algorithm, dtype); needs matplotlib.

    Lines are implementations (the roofline dashed black), markers thread counts.
    Returns ``path``, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    combos = sorted({(r["algorithm"], r["dtype"]) for r in rows})
    threads = sorted({r["threads"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    markers = dict(zip(threads, "osD^v<>"))
    colors = {impl: f"C{i}" for i, impl in enumerate(i for i in impls if i != "roofline")}
    ncols = min(2, len(combos))
    nrows = (len(combos) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
    x_key = "n_elements"
    for ax, (alg, dt) in zip(axes.flat, combos):
        for impl in impls:
            for t in threads:
                pts = sorted(
                    (r[x_key], r["gb_per_s"])
                    for r in rows
                    if r["impl"] == impl
                    and r["threads"] == t
                    and r["algorithm"] == alg
                    and r["dtype"] == dt
                )
                if not pts:
                    continue
                style = (
                    {"color": "black", "linestyle": "--"}
                    if impl == "roofline"
                    else {"color": colors[impl], "linestyle": "-" if t == threads[-1] else ":"}
                )
                ax.plot(
                    *zip(*pts),
                    marker=markers[t],
                    markersize=5,
                    linewidth=1.5,
                    label=f"{impl}, {t} thread{'s' if t > 1 else ''}",
                    **style,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements per step")
        ax.set_ylabel("GB/s of compulsory memory traffic")
        ax.set_title(f"{alg}, {dt}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(combos) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_plot(rows, path, title):
    """Median time per step of each implementation, one group of bars per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = list(dict.fromkeys(r["label"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(labels) * len(impls) / 3), 4.8))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, label in enumerate(labels):
            r = next((r for r in rows if r["label"] == label and r["impl"] == impl), None)
            if r is not None:
                xs.append(j + (i - (len(impls) - 1) / 2) * width)
                ys.append(r["median_s"] * 1e6)
        ax.bar(xs, ys, width, label=impl, color="black" if impl == "roofline" else f"C{i}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8, rotation=10)
    ax.set_yscale("log")
    ax.set_ylabel("median time per step (us)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
