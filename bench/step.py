"""How fast is one Adam-family step? fusedadam against its roofline and its rivals.

Scenarios (``--scenario``, default ``sweep``):

sweep     one array of N elements, N = 1e0 ... 1e8 (capped by free memory), per dtype,
          algorithm and thread count.
model     the parameter list of a transformer (per block of width d: four d x d, one
          4d x d and one d x 4d matrix and ten d-vectors; a vocab x d embedding and a
          512 x d position table), stepped in ONE call: toy (d=64, 6 blocks, vocab 1000,
          0.40M params, 98 arrays), small (d=128, 12 blocks, vocab 8192, 3.5M params),
          bert (d=768, 12 blocks, vocab 30522, 109M params).
overhead  one small array (N = 1 ... 1e4): the time of ``opt.step(g)`` end to end, and
          where it goes (kernel only, functional layer, optimizer layer).

Implementations, all timed in the same process with their samples interleaved:

fusedadam       ``fusedadam.Adam/AdamW/Adamax(..., backend="compiled").step(grads)``
fusedadam-kernel  the compiled call inside it alone (``GroupKernel.prepare`` + ``run``)
numpy           the same optimizer with ``backend="numpy"`` (the reference twin)
roofline        the PROBE loop: an Adam step's memory traffic (read p, g, m, v; write p, m,
                v; AMSGrad also max_exp_avg_sq) with trivial arithmetic, same threads
torch-single, torch-foreach, torch-fused
                ``torch.optim.Adam/AdamW/Adamax`` with foreach=False / foreach=True /
                fused=True (when torch imports; a variant torch rejects is skipped)
deepspeed       ``DeepSpeedCPUAdam`` (Adam and AdamW only) when deepspeed imports

Protocol: seeded inputs; each implementation is warmed up, its calls per sample are
calibrated to last >= 50 ms (``--sample-ms``), then ``--repeats`` (>= 5) samples are
taken round-robin over the implementations. Reported: median and min time per step,
ns/element, GB/s of compulsory traffic (28 B/element for float32 Adam, AdamW and Adamax,
36 for AMSGrad; twice that for float64) and % of roofline (the roofline's median time over
the implementation's median time, same process, same thread count).

Results go to ``bench/results/<scenario>.json`` and, with matplotlib, a PNG plot.

Examples::

    python bench/step.py --quick
    python bench/step.py --scenario sweep --dtypes float32 --algorithms adam,amsgrad \
        --threads 1,2 --sizes 1e3,1e5,1e7
    python bench/step.py --scenario model --models toy,small
    python bench/step.py --scenario overhead
"""
import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fusedadam as fa  # noqa: E402
from _cases import SCALARS, arrays, kernel_step  # noqa: E402
from _timing import measure_interleaved  # noqa: E402

from fusedadam import functional  # noqa: E402

try:
    from fusedadam import _kernels
except ImportError:  # pragma: no cover - the benchmark needs the compiled extension
    _kernels = None

try:
    import torch
except ImportError:
    torch = None

try:
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
except Exception:  # ImportError, or deepspeed failing to find an accelerator
    DeepSpeedCPUAdam = None

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
ALGORITHMS = ("adam", "adamw", "amsgrad", "adamax")
IMPLS = ("fusedadam", "fusedadam-kernel", "numpy", "roofline", "torch-single",
         "torch-foreach", "torch-fused", "deepspeed")
LR, WD = 1e-3, 1e-2


def traffic_bytes(algorithm, itemsize):
    """Compulsory bytes per element of one step: arrays read + arrays written."""
    arrays_moved = 9 if algorithm == "amsgrad" else 7  # (p, g, m, v[, x]) in, (p, m, v[, x]) out
    return arrays_moved * itemsize


def available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


# ---------------------------------------------------------------- implementations
def _fa_optimizer(algorithm, params, backend, n_threads):
    kw = dict(lr=LR, num_threads=n_threads, backend=backend)
    if algorithm == "adam":
        return fa.Adam(params, **kw)
    if algorithm == "adamw":
        return fa.AdamW(params, weight_decay=WD, **kw)
    if algorithm == "amsgrad":
        return fa.Adam(params, amsgrad=True, **kw)
    return fa.Adamax(params, **kw)


def make_fusedadam(shapes, dtype, algorithm, n_threads, grads, backend="compiled"):
    params = [arrays(s, dtype, 1)[0] for s in shapes]
    opt = _fa_optimizer(algorithm, params, backend, n_threads)
    return lambda: opt.step(grads)


def make_kernel(shapes, dtype, algorithm, n_threads, grads):
    """fusedadam's compiled call alone (``GroupKernel.prepare`` + ``run``), no Python layer."""
    kind = {"adam": _kernels.ADAM, "adamw": _kernels.ADAM, "amsgrad": _kernels.AMSGRAD,
            "adamax": _kernels.ADAMAX}[algorithm]
    params = [arrays(s, dtype, 1)[0] for s in shapes]
    states = [[np.zeros(s, dtype) for s in shapes]
              for _ in range(3 if algorithm == "amsgrad" else 2)]
    return kernel_step(params, grads, states, kind, n_threads)


def make_roofline(shapes, dtype, algorithm, n_threads, grads):
    params = [arrays(s, dtype, 1)[0] for s in shapes]
    states = [[np.zeros(s, dtype) for s in shapes]
              for _ in range(3 if algorithm == "amsgrad" else 2)]
    return kernel_step(params, grads, states, _kernels.PROBE, n_threads)


def make_torch(variant, shapes, dtype, algorithm, n_threads, grads):
    if torch is None:
        raise RuntimeError("torch not importable")
    params = []
    for s, g in zip(shapes, grads):
        p = torch.nn.Parameter(torch.from_numpy(arrays(s, dtype, 1)[0]))
        p.grad = torch.from_numpy(g)  # shares memory: no copy inside the timed loop
        params.append(p)
    flags = {"torch-single": dict(foreach=False), "torch-foreach": dict(foreach=True),
             "torch-fused": dict(fused=True)}[variant]
    if algorithm == "adam":
        opt = torch.optim.Adam(params, lr=LR, **flags)
    elif algorithm == "adamw":
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **flags)
    elif algorithm == "amsgrad":
        opt = torch.optim.Adam(params, lr=LR, amsgrad=True, **flags)
    else:
        opt = torch.optim.Adamax(params, lr=LR, **flags)
    opt.step()  # raises here when torch has no such variant (e.g. fused Adamax on CPU)
    return opt.step


def make_deepspeed(shapes, dtype, algorithm, n_threads, grads):
    if DeepSpeedCPUAdam is None:
        raise RuntimeError("deepspeed not importable")
    if algorithm not in ("adam", "adamw"):
        raise RuntimeError(f"DeepSpeedCPUAdam has no {algorithm}")
    params = []
    for s, g in zip(shapes, grads):
        p = torch.nn.Parameter(torch.from_numpy(arrays(s, dtype, 1)[0]))
        p.grad = torch.from_numpy(g)
        params.append(p)
    opt = DeepSpeedCPUAdam(params, lr=LR, adamw_mode=algorithm == "adamw",
                           weight_decay=WD if algorithm == "adamw" else 0.0)
    opt.step()
    return opt.step


def build_impls(names, shapes, dtype, algorithm, n_threads, grads, notes):
    fns = {}
    for name in names:
        try:
            if name == "fusedadam":
                fns[name] = make_fusedadam(shapes, dtype, algorithm, n_threads, grads)
            elif name == "numpy":
                fns[name] = make_fusedadam(shapes, dtype, algorithm, n_threads, grads,
                                           backend="numpy")
            elif name == "fusedadam-kernel":
                fns[name] = make_kernel(shapes, dtype, algorithm, n_threads, grads)
            elif name == "roofline":
                fns[name] = make_roofline(shapes, dtype, algorithm, n_threads, grads)
            elif name.startswith("torch-"):
                fns[name] = make_torch(name, shapes, dtype, algorithm, n_threads, grads)
            elif name == "deepspeed":
                fns[name] = make_deepspeed(shapes, dtype, algorithm, n_threads, grads)
        except Exception as exc:  # an implementation this machine or library lacks
            key = (name, algorithm, np.dtype(dtype).name)
            if key not in notes:
                notes[key] = f"{name} skipped for {algorithm}/{np.dtype(dtype).name}: " \
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return fns


def set_threads(n_threads):
    if torch is not None:
        torch.set_num_threads(n_threads)


# ---------------------------------------------------------------- reporting
def summarise(case, res, n_elements, algorithm, dtype):
    rows = []
    per_elem = traffic_bytes(algorithm, np.dtype(dtype).itemsize)
    roof = res.get("roofline", {}).get("median")
    for name, r in res.items():
        med = r["median"]
        rows.append({**case, "impl": name, "median_s": med, "min_s": r["min"],
                     "calls_per_sample": r["calls_per_sample"],
                     "ns_per_element": med / max(n_elements, 1) * 1e9,
                     "gb_per_s": per_elem * n_elements / med / 1e9,
                     "pct_roofline": 100.0 * roof / med if roof else None})
    return rows


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:8.2f} us"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.3f} s "


def print_rows(rows, title):
    print(f"\n## {title}")
    print(f"{'impl':14s} {'median':>11s} {'min':>11s} {'ns/elem':>9s} {'GB/s':>7s} "
          f"{'%roof':>6s} {'vs fa':>6s}")
    fa_med = next((r["median_s"] for r in rows if r["impl"] == "fusedadam"), None)
    for r in rows:
        pct = f"{r['pct_roofline']:6.1f}" if r["pct_roofline"] is not None else "     -"
        rel = f"{r['median_s'] / fa_med:6.2f}" if fa_med else "     -"
        print(f"{r['impl']:14s} {fmt_time(r['median_s'])} {fmt_time(r['min_s'])} "
              f"{r['ns_per_element']:9.3f} {r['gb_per_s']:7.2f} {pct} {rel}", flush=True)


def environment():
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine(), "cpu": _cpu_name(), "nproc": os.cpu_count(),
           "fusedadam": fa.backend_info(), "torch": getattr(torch, "__version__", None),
           "deepspeed": DeepSpeedCPUAdam is not None,
           # Other processes compete for the cores: a fork-join step waits for its
           # slowest thread, so record how busy the machine was.
           "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return env


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------- scenarios
def run_case(shapes, dtype, algorithm, n_threads, impls, args, notes, label):
    n = int(sum(int(np.prod(s)) for s in shapes))
    itemsize = np.dtype(dtype).itemsize
    # Live arrays: the shared gradients, <= 4 per implementation (p, m, v, max_v), and
    # the NumPy backend's temporaries.
    need = n * itemsize * (1 + 4 * len(impls) + (3 if "numpy" in impls else 0))
    if need > args.mem_fraction * available_bytes():
        notes[("mem", label)] = f"{label}: skipped, needs ~{need / 2**30:.1f} GiB"
        print(f"\n## {label}: skipped (needs ~{need / 2**30:.1f} GiB)")
        return []
    if n > args.numpy_max:
        impls = [i for i in impls if i != "numpy"]
    set_threads(n_threads)
    grads = [arrays(s, dtype, 2)[1] for s in shapes]
    fns = build_impls(impls, shapes, dtype, algorithm, n_threads, grads, notes)
    res = measure_interleaved(fns, args.repeats, args.sample_ms / 1000)
    case = {"label": label, "n_elements": n, "n_arrays": len(shapes),
            "dtype": np.dtype(dtype).name, "algorithm": algorithm, "threads": n_threads}
    rows = summarise(case, res, n, algorithm, dtype)
    print_rows(rows, label)
    del fns, grads
    gc.collect()
    return rows


def scenario_sweep(args, notes):
    rows = []
    for dtype in args.dtypes:
        for algorithm in args.algorithms:
            for n_threads in args.threads:
                for n in args.sizes:
                    label = f"sweep {algorithm} {dtype} N={n:.0e} threads={n_threads}"
                    rows += run_case([(int(n),)], dtype, algorithm, n_threads, args.impls,
                                     args, notes, label)
    return rows


def model_shapes(d, blocks, vocab):
    shapes = [(vocab, d), (512, d)]
    for _ in range(blocks):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)] + [(d,)] * 10
    return shapes


MODELS = {"toy": (64, 6, 1000), "small": (128, 12, 8192), "bert": (768, 12, 30522)}


def scenario_model(args, notes):
    rows = []
    for name in args.models:
        shapes = model_shapes(*MODELS[name])
        for dtype in args.dtypes:
            for algorithm in args.algorithms:
                for n_threads in args.threads:
                    n = sum(int(np.prod(s)) for s in shapes)
                    label = (f"model {name} ({n / 1e6:.2f}M params, {len(shapes)} arrays) "
                             f"{algorithm} {dtype} threads={n_threads}")
                    rows += run_case(shapes, dtype, algorithm, n_threads, args.impls, args,
                                     notes, label)
    return rows


def scenario_overhead(args, notes):
    """End-to-end ``opt.step(g)`` on tiny arrays and the layers it passes through."""
    rows = []
    dtype = args.dtypes[0]
    for n in args.overhead_sizes:
        n = int(n)
        p = arrays((n,), dtype, 1)[0]
        g = arrays((n,), dtype, 2)[1]
        opt = fa.Adam(p.copy(), lr=LR, backend="compiled", num_threads=1)
        opt_auto = fa.Adam(p.copy(), lr=LR, backend="compiled")
        opt_ignore = fa.Adam(p.copy(), lr=LR, backend="compiled", num_threads=1,
                             nonfinite="ignore")
        m, v = np.zeros_like(p), np.zeros_like(p)
        pk, mk, vk = p.copy(), np.zeros_like(p), np.zeros_like(p)
        kernel = kernel_step([pk], [g], [[mk], [vk]], _kernels.ADAM, 1)
        pf = p.copy()
        gl = [g]
        group = functional.GroupStep([pf], [[m], [v]], ("exp_avg", "exp_avg_sq"), "compiled")
        fns = {
            "opt.step(g)": lambda: opt.step(g),
            "opt.step([g])": lambda: opt.step(gl),
            "opt.step(g) threads=None": lambda: opt_auto.step(g),
            "opt.step(g) nonfinite=ignore": lambda: opt_ignore.step(g),
            "functional.adam": lambda: functional.adam(
                [pf], gl, [m], [v], step=10, lr=LR, num_threads=1, backend="compiled"),
            "GroupStep prepare+run": lambda: (group.prepare([pf], gl, 0, functional.ADAM),
                                              group.run(SCALARS, 1)),
            "kernel prepare+run": kernel,
            "adam_scalars": lambda: functional.adam_scalars(10, LR, 0.9, 0.999, 1e-8),
            "effective_num_threads(None)": lambda: fa._threads.effective_num_threads(None),
        }
        if torch is not None:
            set_threads(1)
            for variant in ("torch-fused", "torch-foreach", "torch-single"):
                try:
                    fns[variant] = make_torch(variant, [(n,)], dtype, "adam", 1, [g])
                except Exception as exc:
                    notes[(variant, "overhead")] = f"{variant}: {exc}"
        if DeepSpeedCPUAdam is not None:
            fns["deepspeed"] = make_deepspeed([(n,)], dtype, "adam", 1, [g])
        res = measure_interleaved(fns, args.repeats, args.sample_ms / 1000)
        print(f"\n## overhead N={n} {dtype}")
        for name, r in res.items():
            print(f"{name:28s} median {r['median'] * 1e6:8.3f} us   min {r['min'] * 1e6:8.3f} us")
            rows.append({"label": f"overhead N={n}", "n_elements": n, "dtype": dtype,
                         "impl": name, "median_s": r["median"], "min_s": r["min"],
                         "calls_per_sample": r["calls_per_sample"]})
    # Where opt.step's time goes, by function (cProfile inflates every call alike).
    p = arrays((1,), dtype, 1)[0]
    g = arrays((1,), dtype, 2)[1]
    opt = fa.Adam(p, lr=LR, backend="compiled", num_threads=1)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20000):
        opt.step(g)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    print("\n## cProfile of 20000 x opt.step(g), N=1 (tottime order)")
    print("\n".join(out.getvalue().splitlines()[:32]))
    return rows


# ---------------------------------------------------------------- plot
def plot_sweep(rows, path, threads=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot")
        return None
    combos = sorted({(r["algorithm"], r["dtype"]) for r in rows})
    max_threads = threads if threads is not None else max(r["threads"] for r in rows)
    ncols = 2 if len(combos) > 1 else 1
    nrows = (len(combos) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3 * nrows), squeeze=False)
    for ax, (alg, dt) in zip(axes.flat, combos):
        sel = [r for r in rows if r["algorithm"] == alg and r["dtype"] == dt
               and r["threads"] == max_threads]
        for impl in IMPLS:
            pts = sorted((r["n_elements"], r["gb_per_s"]) for r in sel if r["impl"] == impl)
            if pts:
                style = dict(linestyle="--", color="black") if impl == "roofline" else {}
                ax.plot(*zip(*pts), marker="o", markersize=3, label=impl, **style)
        ax.set_xscale("log")
        ax.set_xlabel("elements N")
        ax.set_ylabel("GB/s (compulsory traffic)")
        ax.set_title(f"{alg} {dt}, {max_threads} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"fusedadam step throughput: {_cpu_name()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def compact(rows):
    """Rows with floats rounded to 4 significant digits: small JSON files to commit."""
    return [{k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in r.items()}
            for r in rows]


def replot(path, threads=None):
    """Redraw the PNG of an existing sweep JSON (``--replot``)."""
    with open(path) as f:
        rows = json.load(f)["rows"]
    png = plot_sweep(rows, os.path.splitext(path)[0] + ".png", threads)
    print(f"wrote {png}")


# ---------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Benchmark one Adam-family step: fusedadam vs roofline, NumPy, torch.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--scenario", choices=("sweep", "model", "overhead"), default="sweep")
    ap.add_argument("--sizes", default="1e0,1e1,1e2,1e3,1e4,1e5,1e6,1e7,1e8",
                    help="sweep: comma-separated element counts (default 1e0..1e8)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS),
                    help=f"subset of {','.join(ALGORITHMS)}")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1 and all processors)")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    ap.add_argument("--models", default="toy,small,bert", help="model: subset of toy,small,bert")
    ap.add_argument("--overhead-sizes", default="1,100,1e4")
    ap.add_argument("--repeats", type=int, default=5, help="samples per implementation (>= 5)")
    ap.add_argument("--sample-ms", type=float, default=50.0, help="minimum length of a sample")
    ap.add_argument("--numpy-max", type=float, default=1e7,
                    help="skip the (slow) numpy backend above this many elements")
    ap.add_argument("--mem-fraction", type=float, default=0.5,
                    help="skip a case needing more than this fraction of available memory")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 1e2,1e4,1e5,1e6,1e7; float32; adam; all threads; "
                         "20 ms samples; toy model")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/<scenario>.json)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot of a sweep JSON")
    ap.add_argument("--plot-threads", type=int, default=None,
                    help="thread count the plot shows (default: the largest measured)")
    args = ap.parse_args(argv)
    nproc = _kernels.num_procs() if _kernels is not None else 1
    if args.quick:
        args.sizes, args.dtypes, args.algorithms = "1e2,1e4,1e5,1e6,1e7", "float32", "adam"
        args.threads = args.threads or str(nproc)
        args.sample_ms, args.models = 20.0, "toy"
    args.sizes = [int(float(x)) for x in args.sizes.split(",")]
    args.overhead_sizes = [int(float(x)) for x in args.overhead_sizes.split(",")]
    args.dtypes = args.dtypes.split(",")
    args.algorithms = args.algorithms.split(",")
    args.impls = args.impls.split(",")
    args.models = args.models.split(",")
    args.threads = ([int(x) for x in args.threads.split(",")] if args.threads
                    else sorted({1, nproc}))
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (medians of fewer samples are noise here)")
    bad = set(args.algorithms) - set(ALGORITHMS) or set(args.impls) - set(IMPLS) \
        or set(args.models) - set(MODELS)
    if bad:
        ap.error(f"unknown names: {sorted(bad)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        replot(args.replot, args.plot_threads)
        return
    if _kernels is None:
        sys.exit("fusedadam's compiled extension is not built; nothing to benchmark")
    env = environment()
    print(f"# fusedadam {env['fusedadam']['version']}  simd={env['fusedadam']['simd']} "
          f"(best {env['fusedadam']['simd_best']})  openmp={env['fusedadam']['openmp']}  "
          f"threshold={env['fusedadam']['parallel_threshold']}")
    print(f"# {env['cpu']}, {env['nproc']} CPUs; numpy {env['numpy']}; torch {env['torch']}; "
          f"deepspeed {'yes' if env['deepspeed'] else 'no'}")
    notes = {}
    rows = {"sweep": scenario_sweep, "model": scenario_model,
            "overhead": scenario_overhead}[args.scenario](args, notes)
    for note in notes.values():
        print("note:", note)
    os.makedirs(RESULTS, exist_ok=True)
    out = args.out or os.path.join(RESULTS, f"{args.scenario}.json")
    with open(out, "w") as f:
        json.dump({"environment": env, "argv": sys.argv[1:], "notes": sorted(notes.values()),
                   "rows": compact(rows)}, f, separators=(",", ":"))
        f.write("\n")
    print(f"\nwrote {out}")
    if args.scenario == "sweep" and rows and not args.no_plot:
        png = plot_sweep(rows, os.path.splitext(out)[0] + ".png", args.plot_threads)
        if png:
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
