"""The offload step: one mixed-precision pass against the same work in passes.

    python -m fusedadam bench offload [--models bert-base,gpt2-medium] [--threads 2]
        [--repeats 7] [--json PATH]

A ZeRO-Offload style step on the CPU: bfloat16 parameters, float32 master weights and
moments, float32 gradients scaled by the AMP loss scale. Timed in one process, samples
interleaved (:mod:`.timing`), per model, first without then with gradient clipping:

fusedadam 1 pass      ``fa.Adam`` on the bfloat16 arrays (float32 master and state), float32
                      grads, ``grad_scale`` (and ``max_grad_norm``) applied in-kernel, the
                      default non-finite check on: read g, master, m, v; write master, m,
                      v, bf16 param: 30 B/element, clipping included (its norm rides on the
                      check's read); also timed with ``nonfinite="ignore"`` (no check) when
                      memory allows
3 passes, deepspeed   DeepSpeed's CPU partition, one flat buffer each: ``g.mul_(1/scale)``,
                      ``DeepSpeedCPUAdam.step()`` on the float32 master, ``bf16.copy_(master)``:
                      8 + 28 + 6 = 42 B/element; clipping adds the norm's read of g: 46
3 passes, fusedadam   the same three passes with fusedadam's float32 step
                      (``nonfinite="ignore"``, like DeepSpeedCPUAdam) in the middle
torch fused bf16      ``torch.optim.Adam(fused=True)`` on bfloat16 params, grads and moments
                      (torch's semantics: no master), ``grad_scale`` in-kernel, which writes
                      the unscaled g back: 16 B/element; clipping the AMP way
                      (``unscale_``, ``clip_grad_norm_``, step): 4 + 2 + 4 + 14 = 24

The roofline of a mode is its bytes/element over the bandwidth the compiled probe
(:mod:`.roofline`, 28 B per float32 element) reaches in the same run, on the same threads.

The sequences that unscale in place would shrink their gradients by the loss scale on
every call (and soon into subnormals, which are slow): they are called with the loss scale
``2**10`` and ``2**-10`` in turn, so the stored gradients alternate between two values, both
exact. For the same reason ``max_grad_norm`` is set above every gradient norm they see
(the clipping coefficient is 1): each clipped step still reads every gradient for the norm,
computes the coefficient and multiplies by it, as ``clip_grad_norm_`` and DeepSpeed do
whether or not it clamps.
"""

import argparse
import contextlib
import gc
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np

from fusedadam.benchmarks import peers, roofline, scenarios, timing
from fusedadam.benchmarks.report import fmt_time

__all__ = ["MODES", "main", "markdown", "memory_needed", "parse_args", "run_model"]

LR = 1e-3
SCALE = 2.0**10
# Elements of the probe's float32 arrays: far beyond L3 (840 MB moved per call), and not a
# power of two: at 2**25 the four arrays alias in the caches and the probe measured half the
# bandwidth it reaches at 2e7 or 4e7 (17 vs 35 GB/s, one thread, same run).
PROBE_MAX = 30_000_000
PROBE_BYTES = 28  # read p, g, m, v; write p, m, v (float32)
ONE_PASS = "fusedadam 1 pass"


@dataclass(frozen=True)
class Mode:
    """One way to do the step: its bytes per element (without, with clipping)."""

    name: str
    bytes_plain: int
    bytes_clip: int
    state_bytes: int  # bytes per parameter this mode allocates beyond the shared grads

    def bytes(self, clip):
        return self.bytes_clip if clip else self.bytes_plain


MODES = {
    "fusedadam": Mode(ONE_PASS, 30, 30, 2 + 12),
    "fusedadam-unchecked": Mode(ONE_PASS + ', nonfinite="ignore"', 30, 30, 2 + 12),
    "3pass-deepspeed": Mode("3 passes, DeepSpeedCPUAdam", 42, 46, 8),
    "3pass-fusedadam": Mode("3 passes, fusedadam float32", 42, 46, 8),
    "torch-bf16": Mode("torch fused Adam, bf16", 16, 24, 8),
}
THREE_PASS_COMMON = 2 + 4  # the flat bfloat16 buffer and the float32 master


def memory_needed(n, modes):
    """Bytes the arrays of ``modes`` take for ``n`` parameters (shared grads and probe in)."""
    need = 4 * n + 16 * min(n, PROBE_MAX)
    need += sum(MODES[m].state_bytes for m in modes) * n
    if any(m.startswith("3pass") for m in modes):
        need += THREE_PASS_COMMON * n
    return need


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _torch():
    torch = peers._import_torch()
    if torch is None:
        raise RuntimeError("torch is not importable")
    return torch


def _as_tensor(torch, a):
    """A torch tensor sharing ``a``'s memory (bfloat16 through an int16 view)."""
    if a.dtype == _bfloat16():
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class _Alternating:
    """The loss scale of in-place unscaling: ``SCALE`` and ``1/SCALE`` in turn (exact)."""

    def __init__(self):
        self.up = False

    def __call__(self):
        self.up = not self.up
        return SCALE if self.up else 1.0 / SCALE


def _views(flat, shapes):
    out, offset = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(flat[offset : offset + size].reshape(s))
        offset += size
    return out


def _one_pass(shapes, grads, threads, clip, max_norm, nonfinite="error"):
    import fusedadam as fa

    rng = np.random.default_rng(scenarios.SEED)
    params = [rng.standard_normal(s, dtype=np.float32).astype(_bfloat16()) for s in shapes]
    options = {"max_grad_norm": max_norm} if clip else {}
    options["nonfinite"] = nonfinite
    opt = fa.Adam(params, lr=LR, grad_scale=SCALE, num_threads=threads, **options)
    return lambda: opt.step(grads), opt


def _three_passes(middle, flat_bf16, master, flat_g, threads, clip, max_norm, scale):
    """unscale (+ norm) on the flat grads, the float32 step, then the copy into bf16."""
    torch = _torch()
    t_g, t_bf16, t_master = (_as_tensor(torch, a) for a in (flat_g, flat_bf16, master))
    if middle == "3pass-deepspeed":
        cpu_adam = peers._import_deepspeed()
        if cpu_adam is None:
            raise RuntimeError("deepspeed is not importable (DeepSpeedCPUAdam)")
        p = torch.nn.Parameter(t_master)
        p.grad = t_g
        opt = cpu_adam([p], lr=LR, adamw_mode=False)
        middle_step = opt.step
    else:
        import fusedadam as fa

        opt = fa.Adam(master, lr=LR, num_threads=threads, nonfinite="ignore")
        middle_step = lambda: opt.step(flat_g)  # noqa: E731

    def step():
        loss_scale = scale()
        combined = loss_scale
        if clip:  # DeepSpeed's unscale_and_clip_grads: one norm, one multiply
            norm = float(torch.linalg.vector_norm(t_g)) / loss_scale
            coef = (norm + 1e-6) / max_norm
            if coef > 1:
                combined = coef * loss_scale
        t_g.mul_(1.0 / combined)
        middle_step()
        t_bf16.copy_(t_master)

    return step


def _torch_bf16(shapes, threads, clip, max_norm):
    torch = _torch()
    rng = np.random.default_rng(scenarios.SEED + 2)
    tensors = []
    for s in shapes:
        t = torch.nn.Parameter(
            torch.from_numpy(rng.standard_normal(s, dtype=np.float32)).bfloat16()
        )
        g = rng.standard_normal(s, dtype=np.float32) * np.float32(SCALE)
        t.grad = torch.from_numpy(g).bfloat16()
        tensors.append(t)
    grads = [t.grad for t in tensors]
    opt = torch.optim.Adam(tensors, lr=LR, fused=True)
    scale = _Alternating()
    found_inf = torch.zeros(())
    if not clip:

        def step():
            opt.grad_scale = torch.tensor(scale())  # in-kernel, written back into g
            opt.found_inf = found_inf
            opt.step()

        return step

    def step_clipped():  # GradScaler.unscale_, clip_grad_norm_, then the step
        inv = torch.tensor(1.0 / scale())
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)
        torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=True)
        opt.step()

    return step_clipped


def _probe(n, threads):
    size = min(n, PROBE_MAX)
    rng = np.random.default_rng(scenarios.SEED + 3)
    p, g = (rng.standard_normal(size, dtype=np.float32) for _ in range(2))
    return roofline.roofline_step([p], [g], 2, threads), size


def check_one_pass_matches_three(threads=1, n=4099):
    """The one pass and the fusedadam three passes agree bit for bit (no clipping).

    Run before any timing: a benchmark of a step that does not do the work is worthless.
    Returns True when the bfloat16 params and the float32 masters are identical.
    """
    import fusedadam as fa

    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(n, dtype=np.float32).astype(_bfloat16())
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(SCALE)
    one = p0.copy()
    opt = fa.Adam(one, lr=LR, grad_scale=SCALE, num_threads=threads)
    master = p0.astype(np.float32)
    three = fa.Adam(master, lr=LR, num_threads=threads)
    bf16 = p0.copy()
    for _ in range(5):
        opt.step(g)
        three.step(g * np.float32(1.0 / SCALE))  # power of two: exact, as g / SCALE
        bf16[...] = master.astype(_bfloat16())
    return bool(
        np.array_equal(one.view(np.int16), bf16.view(np.int16))
        and np.array_equal(opt.state[one]["master_param"], master)
    )


def _phase(name, shapes, n, modes, threads, clip, args, notes, shared):
    """Build and time one phase (clipping off or on); returns its rows."""
    fns: Dict[str, Callable[[], None]] = {}
    keep: List[object] = []
    mode_of = {}
    for key in modes:
        mode = MODES[key]
        try:
            if key == "fusedadam":
                fn, opt = _one_pass(shapes, shared["grad_views"], threads, clip, args.max_grad_norm)
                keep.insert(0, opt)
            elif key == "fusedadam-unchecked":
                fn, opt = _one_pass(
                    shapes, shared["grad_views"], threads, clip, args.max_grad_norm, "ignore"
                )
                keep.append(opt)
            elif key.startswith("3pass"):
                fn = _three_passes(
                    key, shared["flat_bf16"], shared["master"], shared["flat_g"], threads, clip,
                    args.max_grad_norm, shared["scale"],
                )  # fmt: skip
            else:
                fn = _torch_bf16(shapes, threads, clip, args.max_grad_norm)
        except Exception as exc:  # a peer this machine lacks, or an API not there
            notes.setdefault(mode.name, str(exc).splitlines()[0][:160] or type(exc).__name__)
            continue
        fns[mode.name] = fn
        mode_of[mode.name] = mode
    probe, probe_n = _probe(n, threads)
    fns["roofline probe"] = probe
    if threads != 1:
        fns["roofline probe, 1 thread"] = _probe(n, 1)[0]
    res = timing.measure_interleaved(fns, args.repeats, args.sample_ms / 1000)
    probe_s = res["roofline probe"]["median"]
    floor_s = res.get("roofline probe, 1 thread", {}).get("median")
    if floor_s is not None and floor_s < probe_s:
        notes[f"{name} probe"] = (
            f"the {threads}-thread probe ({probe_s * 1e3:.1f} ms) was slower than one "
            f"thread's ({floor_s * 1e3:.1f} ms): rooflines use the one-thread probe"
        )
        probe_s = floor_s
    bandwidth = PROBE_BYTES * probe_n / probe_s
    rows = []
    for impl, r in res.items():
        timed = mode_of.get(impl)
        row = {
            "model": name,
            "n_elements": n,
            "n_arrays": len(shapes),
            "threads": threads,
            "clip": clip,
            "impl": impl,
            "median_s": r["median"],
            "min_s": r["min"],
            "samples_s": r["samples"],
            "calls_per_sample": r["calls_per_sample"],
        }
        if timed is None:
            row.update(
                probe_elements=probe_n, probe_gb_per_s=PROBE_BYTES * probe_n / r["median"] / 1e9
            )
        else:
            b = timed.bytes(clip)
            row.update(
                bytes_per_element=b,
                gb_per_s=b * n / r["median"] / 1e9,
                roofline_s=b * n / bandwidth,
                pct_roofline=100.0 * b * n / bandwidth / r["median"],
            )
        rows.append(row)
    if "fusedadam" in modes and keep:
        shared.setdefault("last_grad_norm", {})[str(clip)] = _grad_norm(keep[0])
    return rows  # run_model releases the memory, once every local here is gone


def _release_memory():
    """Free what the phase held and hand it back to the OS.

    glibc keeps freed blocks below its (self-raising) mmap threshold in the heap; the next
    phase allocates other sizes in another order, so without a trim a 355M-parameter model
    grew past its budget and was killed by the OOM killer in its second phase.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _peak_rss():
    """The process's peak resident memory so far, in bytes (None where unknown)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _grad_norm(opt):
    value = getattr(opt, "last_grad_norm", None)
    return None if value is None else np.asarray(value, dtype=float).tolist()


def run_model(spec, modes, threads, args, notes):
    """Both phases of one model: its rows (empty when it does not fit in --mem-gb)."""
    shapes = scenarios.model_shapes(spec)
    n = int(sum(int(np.prod(s)) for s in shapes))
    name = f"{os.path.basename(spec)} ({n / 1e6:.1f}M params, {len(shapes)} arrays)"
    modes = list(modes)
    # What to leave out, in this order, to fit the budget.
    for optional in ("fusedadam-unchecked", "3pass-fusedadam", "torch-bf16"):
        if memory_needed(n, modes) > args.mem_gb * 2**30 and optional in modes and len(modes) > 2:
            modes.remove(optional)
            notes[f"{name}: {MODES[optional].name}"] = f"left out to fit --mem-gb {args.mem_gb}"
    budget = min(args.mem_gb * 2**30, 0.85 * timing.available_bytes())
    for optional in ("fusedadam-unchecked", "3pass-fusedadam", "torch-bf16"):
        if memory_needed(n, modes) > budget and optional in modes and len(modes) > 2:
            modes.remove(optional)
            notes[f"{name}: {MODES[optional].name}"] = "left out: not enough free memory"
    need = memory_needed(n, modes)
    if need > budget:
        notes[name] = (
            f"skipped: needs {need / 2**30:.1f} GiB for {', '.join(modes)} (--mem-gb {args.mem_gb})"
        )
        return []
    print(f"\n## {name}: {', '.join(MODES[m].name for m in modes)}; "
          f"{need / 2**30:.1f} GiB", flush=True)  # fmt: skip
    rng = np.random.default_rng(scenarios.SEED + 1)
    flat_g = rng.standard_normal(n, dtype=np.float32)
    flat_g *= np.float32(SCALE)
    shared = {"flat_g": flat_g, "grad_views": _views(flat_g, shapes), "scale": _Alternating()}
    if any(m.startswith("3pass") for m in modes):
        master = np.random.default_rng(scenarios.SEED).standard_normal(n, dtype=np.float32)
        shared.update(master=master, flat_bf16=master.astype(_bfloat16()))
    rows = []
    for clip in (False, True):
        phase_rows = _phase(name, shapes, n, modes, threads, clip, args, notes, shared)
        _release_memory()
        print(text_table(phase_rows), flush=True)
        rows += phase_rows
    peak = _peak_rss()
    for row in rows:
        row["one_pass_last_grad_norm"] = shared.get("last_grad_norm", {}).get(str(row["clip"]))
        row["peak_rss_bytes"] = peak
    del shared, flat_g
    _release_memory()
    return rows


def text_table(rows):
    """One phase: median, GB/s of the mode's bytes, % of its roofline, vs the one pass."""
    one = next((r["median_s"] for r in rows if r["impl"] == ONE_PASS), None)
    clip = rows[0]["clip"] if rows else False
    lines = [f"clipping {'on' if clip else 'off'}",
             f"{'implementation':38s} {'median':>10s} {'B/elem':>6s} {'GB/s':>6s} "
             f"{'%roof':>6s} {'/ 1 pass':>8s}"]  # fmt: skip
    for r in rows:
        if "bytes_per_element" in r:
            extra = f"{r['bytes_per_element']:6d} {r['gb_per_s']:6.1f} {r['pct_roofline']:5.0f}%"
        else:
            extra = f"{PROBE_BYTES:6d} {r['probe_gb_per_s']:6.1f}      -"
        ratio = f"{r['median_s'] / one:7.2f}x" if one else "       -"
        lines.append(f"{r['impl']:38s} {fmt_time(r['median_s']):>10s} {extra} {ratio}")
    return "\n".join(lines)


def markdown(run):
    """A saved run as the README's Markdown table (``tests/test_readme.py`` checks it)."""
    rows = run["rows"]
    env = run["environment"]
    out = [
        "| model | clipping | mode | bytes/element | median | % of its roofline "
        "| time / one pass |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "bytes_per_element" not in r:
            continue
        one = next(
            x["median_s"]
            for x in rows
            if x["impl"] == ONE_PASS and x["model"] == r["model"] and x["clip"] == r["clip"]
        )
        rel = "1" if r["impl"] == ONE_PASS else f"**{r['median_s'] / one:.2f}×**"
        out.append(
            f"| {r['model']} | {'yes' if r['clip'] else 'no'} | {r['impl']} | "
            f"{r['bytes_per_element']} | {fmt_time(r['median_s'])} | "
            f"{r['pct_roofline']:.0f} % | {rel} |"
        )

    def load(values):
        return "unknown" if values is None else " ".join(f"{v:.2f}" for v in values)

    probes = [r["probe_gb_per_s"] for r in rows if r["impl"] == "roofline probe"]
    info = env["fusedadam"]
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in env["peers"].items())
    out += [
        "",
        f"`{run['command']}`",
        "",
        f"{env['cpu']}, {env['nproc']} CPUs, simd={info['simd']}, {rows[0]['threads']} "
        f"thread(s), NumPy {env['numpy']}, {versions}; the probe: {min(probes):.1f} to "
        f"{max(probes):.1f} GB/s over the phases; "
        f"load average (1, 5, 15 min) {load(env['loadavg_at_start'])} at the start, "
        f"{load(env['loadavg_at_end'])} at the end; {env['time_utc']}.",
    ]
    if run.get("skipped"):
        out += ["", "Left out: " + "; ".join(run["skipped"]) + "."]
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fusedadam bench offload",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[5:]),
    )
    parser.add_argument(
        "--models",
        default="bert-base,gpt2-medium",
        help=f"comma-separated: {','.join(scenarios.MODELS)}, PATH.npz or 1000x64,64",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)}")
    parser.add_argument("--threads", type=int, default=None, help="default: all processors")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-ms", type=float, default=50.0)
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=1e9,
        help="above every gradient norm here, so the clipping coefficient is 1 (see below)",
    )
    parser.add_argument("--mem-gb", type=float, default=16.0, help="memory budget per model")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad or "fusedadam" not in args.modes:
        parser.error(f"--modes: {bad or 'fusedadam missing'}; expected some of {','.join(MODES)}")
    if args.repeats < timing.MIN_REPEATS:
        parser.error(f"--repeats must be >= {timing.MIN_REPEATS}")
    args.threads = args.threads or roofline.num_procs()
    return args


def _limit_threads(threads):
    """torch's, DeepSpeed's and every other OpenMP runtime's thread count."""
    torch = peers._import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        return threadpool_limits(limits=threads, user_api="openmp")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed: no GPU probing
    if not roofline.compiled_available():
        print("fusedadam's compiled extension is not built: no probe, nothing to compare")
        return []
    if not check_one_pass_matches_three(args.threads):
        raise SystemExit("the one pass and the three passes disagree: not timing them")
    limits = _limit_threads(args.threads)
    env = timing.environment(peers.peer_versions())
    print(f"# {env['cpu']}, {env['nproc']} CPUs, {args.threads} thread(s); "
          f"load average {env['loadavg_at_start']}")  # fmt: skip
    notes: dict = {}
    rows = []
    for spec in args.models:
        rows += run_model(spec, args.modes, args.threads, args, notes)
    env["loadavg_at_end"] = timing.load_average()
    del limits
    skipped = [f"{k}: {v}" for k, v in notes.items()]
    command = "python -m fusedadam bench offload " + " ".join(shlex.quote(a) for a in argv)
    run = {"command": command, "environment": env, "skipped": skipped, "rows": rows}
    if rows:
        print("\n" + markdown(run))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(run, f, indent=1)
        print(f"wrote {args.json}")
    return rows
