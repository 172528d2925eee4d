"""Step time under load: the default (all threads) step vs num_threads=1, idle and loaded.

A competing CPU-bound process (a Python busy loop, pinned to the last core with
``--pin`` or left to the scheduler) is started and stopped by this script; the idle and
loaded phases alternate round by round, and inside each phase the two thread settings are
interleaved, so machine drift hits every cell alike. Medians of the per-round medians.

    python bench/load.py                       # N = 1e4 .. 1e7 and the toy model
    python bench/load.py --pin --rounds 5 --json bench/results/load_pinned.json

Issue #11's targets: loaded default <= 1.2x loaded num_threads=1 at every size, and the
idle default no slower than the two-thread step before the pool (compare with the same
command run under an older build: the script uses only the public API).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import fusedadam as fa

BUSY = "while True: pass"


def toy_model(rng):
    """The toy transformer of bench/README.md: d=64, 6 blocks, vocab 1000 (0.40M
    parameters in 98 arrays)."""
    d, blocks, vocab = 64, 6, 1000
    shapes = [(vocab, d), (512, d)]
    for _ in range(blocks):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)] + [(d,)] * 10
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def make_case(name, num_threads):
    rng = np.random.default_rng(0)
    params = (
        toy_model(rng)
        if name == "model"
        else [rng.standard_normal(int(float(name))).astype(np.float32)]
    )
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    opt = fa.Adam(params, lr=1e-6, num_threads=num_threads)
    opt.step(grads)
    return opt, grads, sum(p.size for p in params)


def time_steps(opt, grads, budget):
    """Median seconds per step over about ``budget`` seconds (at least 5 steps)."""
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        opt.step(grads)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def start_competitor(pin):
    cmd = [sys.executable, "-c", BUSY]
    if pin and hasattr(os, "sched_setaffinity"):
        last = max(os.sched_getaffinity(0))
        cmd = ["taskset", "-c", str(last)] + cmd
    proc = subprocess.Popen(cmd)
    time.sleep(0.3)  # let it reach the busy loop
    return proc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1e4,1e5,1e6,1e7,model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per cell")
    parser.add_argument("--pin", action="store_true", help="pin the competitor to one core")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    settings = {"default": None, "1 thread": 1}
    cells = {(c, s, phase): [] for c in cases for s in settings for phase in ("idle", "loaded")}
    competitor = None

    def stop(*_):
        if competitor is not None and competitor.poll() is None:
            competitor.kill()
            competitor.wait()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(1)))
    try:
        for _ in range(args.rounds):
            for phase in ("idle", "loaded"):
                if phase == "loaded":
                    competitor = start_competitor(args.pin)
                for case in cases:
                    runs = {s: make_case(case, n) for s, n in settings.items()}
                    for s, (opt, grads, _) in runs.items():
                        cells[(case, s, phase)].append(time_steps(opt, grads, args.budget))
                stop()
                competitor = None
    finally:
        stop()
    info = fa.backend_info()
    print(
        f"fusedadam {fa.__version__}, {info['max_threads']} threads by default, "
        f"{'pinned' if args.pin else 'unpinned'} competitor, {args.rounds} rounds, "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'case':>6} {'default idle':>13} {'1 thr idle':>11} {'default loaded':>15} "
        f"{'1 thr loaded':>13} {'loaded ratio':>13}"
    )
    print(header)
    rows = []
    for case in cases:
        med = {
            k: float(np.median(cells[(case, *k)])) * 1e6
            for k in [(s, p) for s in settings for p in ("idle", "loaded")]
        }
        ratio = med[("default", "loaded")] / med[("1 thread", "loaded")]
        rows.append(
            {
                "case": case,
                "us": {f"{s} {p}": v for (s, p), v in med.items()},
                "loaded_default_over_1_thread": ratio,
            }
        )
        print(
            f"{case:>6} {med[('default', 'idle')]:>11.1f}us {med[('1 thread', 'idle')]:>9.1f}us"
            f" {med[('default', 'loaded')]:>13.1f}us {med[('1 thread', 'loaded')]:>11.1f}us"
            f" {ratio:>12.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "version": fa.__version__,
                    "backend_info": info,
                    "pinned": args.pin,
                    "rounds": args.rounds,
                    "rows": rows,
                    "command": "python bench/load.py " + " ".join(argv or sys.argv[1:]),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
