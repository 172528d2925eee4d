"""``python -m fusedadam bench SCENARIO``: the command line of the shipped benchmarks."""

import argparse
import json
import shlex
import sys

from fusedadam.benchmarks import peers, report, roofline, scenarios, timing

__all__ = ["main", "parse_args"]

# Every scenario, with its one line for ``bench --help``; each has its own ``--help``.
SCENARIO_HELP = {
    "sweep": "one array of N elements per step, N from --sizes: time, GB/s, % of roofline",
    "model": "the arrays of a model (BERT-base, GPT-2, your .npz) in one step",
    "overhead": "the cost of a call on tiny arrays (1, 100, 10^4 elements)",
    "roofline": "the bandwidth probe alone: the ceiling the other scenarios are measured on",
    "offload": "bfloat16 params with a float32 master: one pass against three (ZeRO-Offload)",
    "show": "print a run saved with --json as Markdown tables",
}

EXAMPLES = {
    "sweep": """\
examples:
  python -m fusedadam bench sweep --quick
  python -m fusedadam bench sweep --sizes 1e4,1e5,1e6 --dtypes float32,float64 \\
      --algorithms adam,adamw --threads 1,2 --json sweep.json --plot sweep.png
  python -m fusedadam bench show sweep.json          # the saved run as Markdown
""",
    "model": """\
examples:
  python -m fusedadam bench model --model bert-base,gpt2 --threads 2
  python -m fusedadam bench model --model my_params.npz   # one array per entry
  python -m fusedadam bench model --model 1000x64,64      # shapes, comma-separated
""",
    "overhead": """\
examples:
  python -m fusedadam bench overhead
  python -m fusedadam bench overhead --overhead-sizes 1,10,100
""",
    "roofline": """\
examples:
  python -m fusedadam bench roofline --sizes 1e5,1e6,1e7 --threads 1,2
""",
}

PROTOCOL = """\
protocol: each implementation is warmed up, its calls per sample calibrated to last
>= --sample-ms, then --repeats samples are taken round-robin over the implementations;
the tables show medians. GB/s counts the compulsory traffic (Adam: 7 arrays per element,
AMSGrad 9, and one more for the default non-finite check's read of the gradients before
anything is written); % of roofline is the bandwidth probe's median over the implementation's,
same process, same threads. Peers that do not import are listed as skipped. The load
average is printed at the start and the end of the run.
"""


def usage():
    """``python -m fusedadam bench --help``: every scenario, one line each."""
    width = max(map(len, SCENARIO_HELP))
    lines = [
        "usage: python -m fusedadam bench SCENARIO [options]",
        "",
        "Time Adam-family steps: fusedadam against its roofline and its peers (the NumPy",
        "reference, torch.optim and DeepSpeed's CPU Adam where they are installed).",
        "",
        "scenarios:",
        *(f"  {name:<{width}}  {text}" for name, text in SCENARIO_HELP.items()),
        "",
        "python -m fusedadam bench SCENARIO --help shows a scenario's options and examples.",
        "",
        "examples:",
        "  python -m fusedadam bench sweep --quick --plot sweep.png",
        "  python -m fusedadam bench model --model bert-base --threads 1",
        "  python -m fusedadam bench show sweep.json",
        "",
        PROTOCOL,
    ]
    return "\n".join(lines)


def _floats(text):
    return [int(float(x)) for x in text.split(",") if x]


def _names(text, known, what, parser):
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in known]
    if bad:
        parser.error(f"unknown {what} {bad}; expected some of {','.join(known)}")
    return names


def parse_args(argv=None):
    """The parsed command line, with lists resolved (sizes as ints, threads, ...)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    scenario = argv[0] if argv else None
    if scenario not in scenarios.SCENARIOS:
        known = ", ".join(sorted(scenarios.SCENARIOS))
        raise SystemExit(f"python -m fusedadam bench: unknown scenario {scenario!r} ({known})")
    parser = argparse.ArgumentParser(
        prog=f"python -m fusedadam bench {scenario}",
        description=SCENARIO_HELP[scenario][0].upper() + SCENARIO_HELP[scenario][1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES[scenario] + "\n" + PROTOCOL,
    )

    def shown(text, *names):  # an option other scenarios ignore is left out of their --help
        return text if scenario in names else argparse.SUPPRESS

    parser.add_argument("scenario", choices=[scenario], help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes",
        default=None,
        help=shown("elements per array; default 1e3,1e4,1e5,1e6,1e7", "sweep", "roofline"),
    )
    parser.add_argument("--dtypes", default="float32", help="float32,float64 (default float32)")
    parser.add_argument(
        "--algorithms",
        default="adam",
        help=shown(f"some of {','.join(peers.ALGORITHMS)} (default adam)", "sweep", "model"),
    )
    parser.add_argument(
        "--threads",
        default=None,
        help=shown(
            "thread counts, e.g. 1,2 (default: 1 and all processors)", "sweep", "model", "roofline"
        ),
    )
    parser.add_argument(
        "--impls",
        default=",".join(peers.IMPLS),
        help=shown("implementations to time (default: all that import)", "sweep", "model"),
    )
    parser.add_argument(
        "--model",
        default="bert-base",
        help=shown(
            f"model: {','.join(scenarios.MODELS)}, PATH.npz or 100x64,64; comma-separated names",
            "model",
        ),
    )
    parser.add_argument(
        "--overhead-sizes",
        default="1,100,1e4",
        help=shown("elements per array (default 1,100,1e4)", "overhead"),
    )
    parser.add_argument("--repeats", type=int, default=5, help="samples per implementation")
    parser.add_argument(
        "--sample-ms", type=float, default=50.0, help="shortest sample in ms (default 50)"
    )
    parser.add_argument(
        "--numpy-max",
        type=float,
        default=1e7,
        help=shown("skip the slow NumPy reference above this many elements", "sweep", "model"),
    )
    parser.add_argument(
        "--mem-fraction",
        type=float,
        default=0.5,
        help="skip a case needing more than this fraction of free memory",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: sizes 1e4,1e5,1e6, 20 ms samples, toy model",
    )
    parser.add_argument("--json", metavar="PATH", help="write every measurement to PATH")
    parser.add_argument(
        "--plot",
        metavar="PATH.png",
        help=shown(
            "draw a plot (needs matplotlib: pip install matplotlib)", "sweep", "model", "roofline"
        ),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    nproc = roofline.num_procs()
    if args.quick:
        args.sizes = args.sizes or "1e4,1e5,1e6"
        args.sample_ms = min(args.sample_ms, 20.0)
        if args.model == "bert-base":
            args.model = "toy"
    args.sizes = _floats(args.sizes or "1e3,1e4,1e5,1e6,1e7")
    args.overhead_sizes = _floats(args.overhead_sizes)
    args.dtypes = _names(args.dtypes, ("float32", "float64"), "dtypes", parser)
    args.algorithms = _names(args.algorithms, tuple(peers.ALGORITHMS), "algorithms", parser)
    args.impls = _names(args.impls, peers.IMPLS, "implementations", parser)
    args.models = [m for m in args.model.split(",") if m]
    try:
        args.threads = (
            sorted({int(x) for x in args.threads.split(",")})
            if args.threads
            else sorted({1, nproc})
        )
    except ValueError:
        parser.error(f"--threads takes positive ints, got {args.threads!r}")
    if min(args.threads) < 1:
        parser.error("--threads takes positive ints")
    if args.repeats < timing.MIN_REPEATS:
        parser.error(f"--repeats must be >= {timing.MIN_REPEATS}")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes takes positive element counts")
    return args


class _Progress:
    """A tqdm bar on a terminal when tqdm is installed, else one plain line per case."""

    def __init__(self, total, enabled):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                # delay: runs shorter than a few seconds show no bar at all
                self.bar = tqdm(total=total, unit="case", delay=2.0, leave=False)

    def start(self, label):
        if self.bar is not None:
            self.bar.set_description(label)
        elif self.enabled:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def show(argv):
    """``bench show RUN.json``: a saved run's summary as Markdown (for READMEs and docs)."""
    parser = argparse.ArgumentParser(
        prog="python -m fusedadam bench show",
        description="Print the Markdown summary of a run saved with --json.",
        epilog="example:\n  python -m fusedadam bench show sweep.json > sweep.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("json", help="a file written by --json")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        run = json.load(f)
    print(report.markdown(run), end="")
    return run["rows"]


def main(argv=None):
    """Run one scenario; print the tables; write ``--json`` and ``--plot`` when asked."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return []
    if argv[:1] == ["show"]:
        return show(argv[1:])
    if argv[:1] == ["offload"]:  # its own grid: modes of one mixed-precision step
        from fusedadam.benchmarks import offload

        return offload.main(argv[1:])
    args = parse_args(argv)
    if not roofline.compiled_available():
        print(
            "note: fusedadam's compiled extension is not built here: only the NumPy "
            "reference and the peers are timed",
            file=sys.stderr,
        )
    env = timing.environment(peers.peer_versions())
    info = env["fusedadam"]
    print(
        f"# fusedadam {info['version']}  compiled={info['compiled']}  simd={info['simd']}  "
        f"openmp={info['openmp']}  max_threads={info['max_threads']}"
    )
    print(
        f"# {env['cpu']}, {env['nproc']} CPUs; Python {env['python']}, NumPy {env['numpy']}; "
        f"peers: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in env["peers"].items())
    )
    print(f"# load average at start: {env['loadavg_at_start']}")
    cases = scenarios.SCENARIOS[args.scenario](args)
    notes: dict = {}
    rows: list = []
    progress = _Progress(len(cases), not args.no_progress)
    try:
        for case in cases:
            progress.start(case.label)
            case_rows = scenarios.run_case(case, args, notes)
            progress.advance()
            if case_rows:
                print(f"\n## {args.scenario}: {case.label} ({case.n_elements:,} elements)")
                print(report.case_table(case_rows), flush=True)
            rows += case_rows
    finally:
        progress.close()
    env["loadavg_at_end"] = timing.load_average()
    skipped = peers.skipped(notes)
    print("\n## Summary (medians; 'vs X' = X's time / fusedadam's)\n")
    print(report.summary_table(rows))
    command = "python -m fusedadam bench " + " ".join(shlex.quote(a) for a in argv)
    print(f"\n{command}")
    print(f"load average at start {env['loadavg_at_start']}, at end {env['loadavg_at_end']}")
    if skipped:
        print("\nskipped:")
        for line in skipped:
            print(f"  {line}")
    if args.json:
        report.write_json(args.json, env, command, skipped, rows)
        print(f"wrote {args.json}")
    if args.plot and rows:
        title = f"fusedadam {info['version']} {args.scenario}: {env['cpu']}"
        draw = report.plot if args.scenario in ("sweep", "roofline") else report.bar_plot
        if draw(rows, args.plot, title) is None:
            print(
                "matplotlib is not installed (pip install matplotlib): no plot",
                file=sys.stderr,
            )
        else:
            print(f"wrote {args.plot}")
    return rows
