"""What a benchmark run shows: terminal tables, a Markdown summary, JSON and a plot."""

import json
from typing import Any, Dict

__all__ = ["case_table", "summary_table", "write_json", "plot"]

# Speedups are reported against these, in this order, when they were timed.
VERSUS = ("numpy", "torch-fused", "torch-foreach", "torch-single", "deepspeed", "reference")


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


# The series a plot draws, in this order, at most PLOT_MAX_SERIES per panel; the others
# (fusedadam-kernel: the compiled call alone, torch-single, ...) stay in the tables.
PLOT_ORDER = ("fusedadam", "torch-fused", "reference", "deepspeed", "torch-foreach", "numpy",
              "fusedadam-kernel", "torch-single")  # fmt: skip
PLOT_MAX_SERIES = 5


def _plotted_impls(rows):
    present = {r["impl"] for r in rows if not r["impl"].startswith("roofline")}
    ordered = [i for i in PLOT_ORDER if i in present] + sorted(present - set(PLOT_ORDER))
    return ordered[:PLOT_MAX_SERIES], ordered[PLOT_MAX_SERIES:]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _legend_below(fig, axes, left_out):
    """One legend for the figure, under the panels (never over the data)."""
    handles: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=min(len(handles), 3),
        fontsize=9,
        frameon=False,
    )
    if left_out:
        fig.text(
            0.5,
            0.005,
            "not drawn (see the tables): " + ", ".join(left_out),
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.4",
        )


def plot(rows, path, title):
    """Throughput against size: one panel per (algorithm, dtype, thread count).

    Each panel draws at most :data:`PLOT_MAX_SERIES` implementations, in the same color in
    every panel, and the roofline (the probe that only moves the step's bytes) as a shaded
    ceiling: the region above it is out of reach. One legend, under the panels.
    Returns ``path``, or None when matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return None
    panels = list(dict.fromkeys((r["algorithm"], r["dtype"], r["threads"]) for r in rows))
    impls, left_out = _plotted_impls(rows)
    colors = {impl: f"C{k}" for k, impl in enumerate(impls)}
    markers = dict(zip(impls, "osD^v"))
    ncols = 2 if len(panels) in (2, 4) else min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 1.0), squeeze=False, sharey=True
    )
    used = list(axes.flat)[: len(panels)]
    for ax, (alg, dt, t) in zip(used, panels):

        def series(impl, alg=alg, dt=dt, t=t):
            return sorted(
                (r["n_elements"], r["gb_per_s"])
                for r in rows
                if r["impl"] == impl and r["algorithm"] == alg and r["dtype"] == dt
                and r["threads"] == t
            )  # fmt: skip

        for impl in impls:
            pts = series(impl)
            if pts:
                ax.plot(*zip(*pts), marker=markers[impl], markersize=4, linewidth=1.5,
                        color=colors[impl], label=impl)  # fmt: skip
        for impl in sorted({r["impl"] for r in rows} - {"roofline"}):
            if impl.startswith("roofline") and series(impl):  # e.g. a one-thread fallback
                ax.plot(*zip(*series(impl)), color="0.35", linewidth=1.0, linestyle="--",
                        label=impl)  # fmt: skip
        ceiling = series("roofline")
        if ceiling:
            xs, ys = zip(*ceiling)
            ax.plot(xs, ys, color="0.35", linewidth=1.0, label="roofline (probe)")
            ax.fill_between(xs, ys, [y * 1e3 for y in ys], color="0.85", zorder=0,
                            label="out of reach (above the roofline)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements per step")
        ax.set_title(f"{alg}, {dt}, {t} thread{'s' if t > 1 else ''}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("GB/s moved (compulsory traffic)")
    all_ys = [r["gb_per_s"] for r in rows if r["impl"] in impls or "roofline" in r["impl"]]
    if all_ys:
        used[0].set_ylim(min(all_ys) / 1.5, max(all_ys) * 1.6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    bottom = 0.9 / (3.6 * nrows + 1.0)
    fig.tight_layout(rect=(0, bottom + 0.02, 1, 0.97))
    _legend_below(fig, used, left_out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_plot(rows, path, title):
    """Median time per step: one group of bars per case, at most five implementations.

    The roofline's time (the probe that only moves the step's bytes) is a shaded floor
    under each group: no step of that case can be faster.
    """
    plt = _pyplot()
    if plt is None:
        return None
    import textwrap

    labels = list(dict.fromkeys(r["label"] for r in rows))
    impls, left_out = _plotted_impls(rows)
    width = 0.8 / max(len(impls), 1)
    times = [r["median_s"] for r in rows if r["impl"] in impls or r["impl"] == "roofline"]
    log = bool(times) and max(times) / min(times) > 30
    scale, unit = (1e3, "ms") if times and min(times) > 1e-3 and not log else (1e6, "µs")
    fig, ax = plt.subplots(figsize=(max(6.4, 1.0 * len(labels) * max(len(impls), 2) / 2), 5.2))
    for j, label in enumerate(labels):
        floor = next((r for r in rows if r["label"] == label and r["impl"] == "roofline"), None)
        if floor is not None:
            ax.bar(j, floor["median_s"] * scale, 0.9, color="0.85", zorder=0,
                   label="out of reach (below the roofline's time)")  # fmt: skip
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, label in enumerate(labels):
            r = next((r for r in rows if r["label"] == label and r["impl"] == impl), None)
            if r is not None:
                xs.append(j + (i - (len(impls) - 1) / 2) * width)
                ys.append(r["median_s"] * scale)
        ax.bar(xs, ys, width * 0.9, label=impl, color=f"C{i}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([textwrap.fill(label, 28) for label in labels], fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(f"median time per step ({unit}, lower is faster)")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    _legend_below(fig, [ax], left_out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
