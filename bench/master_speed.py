"""The bfloat16 storage modes against DeepSpeed's offload step and bitsandbytes' 8-bit AdamW.

    python bench/master_speed.py [--sizes 1e7 5e7] [--threads 1 2] [--repeats 15] \
        [--slow-repeats 5] [--json bench/results/master_speed.json]

One AdamW step (lr 1e-3, weight decay 1e-2) on one flat bfloat16 param with a bfloat16
gradient, at each size N and thread count, every implementation in one process with its
samples interleaved (``--repeats`` rounds; bitsandbytes, a hundred times slower, in rounds
of its own beside the 8-bit baseline, ``--slow-repeats``). A speed-up is the median over
the rounds of the two samples' ratio in each round (paired: the machine is shared and its
load moves between rounds); times are medians:

fusedadam modes   every bfloat16 mode of ``master_modes.MODES`` (float32 master or the
                  exact residual, float32 or 8-bit moments, ...), ``fusedadam.AdamW``,
                  ``nonfinite="ignore"`` (the step alone, as the peers do it); the float32
                  master rows are today's step, the baseline of the speed-ups
3 passes (DS)     what ZeRO-Offload does on the host per step: the bfloat16 gradient copied
                  into a float32 buffer, ``DeepSpeedCPUAdam.step()`` (AdamW, float32
                  master and moments), the float32 master copied into the bfloat16 param:
                  read g 2 + write 4, then read p g m v 16 + write p m v 12, then read 4 +
                  write 2 = 40 B/element. Where deepspeed's CPU Adam does not build or
                  import, the middle pass is ``torch.optim.AdamW(fused=True)`` on the float32
                  master instead, and the row says so
bnb 8-bit         ``bitsandbytes.optim.AdamW8bit`` on the bfloat16 param and gradient (its
                  semantics: no master, the param updated in bfloat16, 8-bit block-wise
                  moments of 256): compulsory read p 2, g 2, m v 2, write p 2, m v 2, + 16 B
                  of scales per 256 = 10.06 B/element (its CPU code dequantises, updates
                  and requantises in separate torch passes, so it moves several times that)
roofline          the compiled bandwidth probe (``fusedadam.benchmarks.roofline``: 28 B
                  per float32 element, trivial arithmetic, same threads), on at most 3e7
                  elements (4 float32 arrays)

% of roofline = (model bytes per element x N / the probe's bandwidth) / the median. The
byte model of the fusedadam modes is ``master_modes.step_bytes``. The machine is shared:
the load average before and after each (N, threads) row is in the JSON.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys

# torch's (and bitsandbytes', DeepSpeed's) OpenMP threads spin after their parallel
# regions: the step timed next (interleaved) would share the cores with them. Passive
# waiting puts them to sleep at once (fusedadam's own pool is not OpenMP); as state8bit.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

import fusedadam as fa  # noqa: E402
from fusedadam.benchmarks.roofline import roofline_step  # noqa: E402
from fusedadam.benchmarks.timing import environment, load_average, measure_interleaved  # noqa: E402
from master_modes import MODES, step_bytes  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
LR, WEIGHT_DECAY = 1e-3, 1e-2
PROBE_MAX = 30_000_000  # the offload benchmark's cap: far beyond L3, no power-of-two aliasing
THREE_PASS_BYTES = 6.0 + 28.0 + 6.0
BNB_BYTES = 10.0 + 16 / 256
BASELINES = {None: "bf16 + f32 master", "8bit": "bf16 + f32 master, 8-bit"}


def fusedadam_modes():
    """The bfloat16 storage modes this benchmark steps."""
    return {name: m for name, m in MODES.items() if m.param == "bfloat16" and not m.control}


def _tensor(torch, a):
    """A torch tensor sharing the NumPy array's memory (bfloat16 through int16)."""
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def import_deepspeed_adam():
    """``(DeepSpeedCPUAdam, None)``, or ``(None, why)`` where it does not import or build."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            import torch

            p = torch.nn.Parameter(torch.zeros(8))
            p.grad = torch.zeros(8)
            DeepSpeedCPUAdam([p], lr=LR).step()  # builds (JIT) the op: fails here if it can't
    except Exception as exc:  # ImportError, a failed build, no accelerator
        return None, f"{type(exc).__name__}: {exc}"
    return DeepSpeedCPUAdam, None


def three_passes(torch, init, g, deepspeed_adam):
    """ZeRO-Offload's host step: g bf16 -> float32, float32 AdamW, master -> bf16 param."""
    param = init.copy()
    t_param, t_g = _tensor(torch, param), _tensor(torch, g)
    master = torch.nn.Parameter(t_param.float())
    g32 = torch.empty(master.shape, dtype=torch.float32)
    master.grad = g32
    if deepspeed_adam is not None:
        opt = deepspeed_adam([master], lr=LR, weight_decay=WEIGHT_DECAY, adamw_mode=True)
    else:
        opt = torch.optim.AdamW([master], lr=LR, weight_decay=WEIGHT_DECAY, fused=True)

    def step():
        g32.copy_(t_g)
        opt.step()
        t_param.copy_(master.detach())

    return step


def bnb_adamw8bit(torch, init, g):
    """``bitsandbytes.optim.AdamW8bit`` on the bfloat16 param; raises where it can't run."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import bitsandbytes as bnb

    param = torch.nn.Parameter(_tensor(torch, init.copy()))
    param.grad = _tensor(torch, g)
    opt = bnb.optim.AdamW8bit([param], lr=LR, weight_decay=WEIGHT_DECAY)
    opt.step()  # creates the state; raises here where CPU 8-bit optimizers are missing
    state = opt.state[param]
    if state["state1"].dtype != torch.uint8:
        raise RuntimeError(f"bitsandbytes kept {state['state1'].dtype} moments, not 8-bit")
    return opt.step, bnb.__version__


def paired_speedup(samples, base, name):
    """Median over the rounds of ``base``'s sample over ``name``'s sample of the same round:
    both taken seconds apart, so a change of the machine's load between rounds cancels."""
    return statistics.median(b / x for b, x in zip(samples[base], samples[name]))


def _limit_threads(threads):
    """torch's, DeepSpeed's and every other OpenMP runtime's thread count."""
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        return threadpool_limits(limits=threads, user_api="openmp")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 5e7])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--slow-repeats", type=int, default=5, help="rounds of bitsandbytes")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    import torch

    modes = fusedadam_modes()
    deepspeed_adam, deepspeed_why = import_deepspeed_adam()
    three_name = "3 passes, DeepSpeedCPUAdam" if deepspeed_adam else "3 passes, torch (emulated)"
    notes = {}
    if deepspeed_why:
        notes["deepspeed"] = f"DeepSpeedCPUAdam unavailable ({deepspeed_why}); emulated"
    versions = {"torch": torch.__version__}
    if deepspeed_adam is not None:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    env = environment(versions)
    print(f"fusedadam {fa.backend_info()}; load average {load_average()}")
    rows = []
    for size in args.sizes:
        n = int(size)
        rng = np.random.default_rng(0)
        init = rng.standard_normal(n, dtype=np.float32).astype(BF16)
        g = (rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(BF16)
        for threads in args.threads:
            limits = _limit_threads(threads)
            steps, model = {}, {}
            for name, mode in modes.items():
                p = init.copy()  # each its own param: a residual is meaningful only with it
                opt = fa.AdamW([p], lr=LR, weight_decay=WEIGHT_DECAY, nonfinite="ignore",
                               num_threads=threads, **mode.options)  # fmt: skip
                steps[name] = lambda o=opt, g=g: o.step([g])
                model[name] = step_bytes(mode)
            steps[three_name] = three_passes(torch, init, g, deepspeed_adam)
            model[three_name] = THREE_PASS_BYTES
            slow = {}  # seconds a call: timed in its own rounds, beside the baseline
            try:
                slow["bnb AdamW8bit"], versions["bitsandbytes"] = bnb_adamw8bit(torch, init, g)
                model["bnb AdamW8bit"] = BNB_BYTES
            except Exception as exc:
                notes["bitsandbytes"] = f"{type(exc).__name__}: {exc}"
            probe_n = min(n, PROBE_MAX)
            probe = [rng.standard_normal(probe_n, dtype=np.float32) for _ in range(2)]
            steps["roofline 28 B"] = roofline_step([probe[0]], [probe[1]], 2, threads)
            load_before = load_average()
            res = measure_interleaved(steps, args.repeats)
            samples = {name: r["samples"] for name, r in res.items()}
            if slow:
                base = BASELINES["8bit"]
                slow_res = measure_interleaved({**slow, base: steps[base]}, args.slow_repeats)
                samples.update({name: slow_res[name]["samples"] for name in slow})
                samples[f"{base} (beside the slow ones)"] = slow_res[base]["samples"]
            med = {name: statistics.median(s) for name, s in samples.items()}
            bandwidth = 28.0 * probe_n / med["roofline 28 B"]
            row = {
                "n": n,
                "threads": threads,
                "load_before": load_before,
                "load_after": load_average(),
                "bandwidth_GBps": bandwidth / 1e9,
                "median_s": med,
                "samples_s": samples,
                "bytes_per_element": model,
                "pct_of_roofline": {k: model[k] * n / bandwidth / med[k] for k in model},
                "speedup_over": {},
            }
            for label, base in (("f32 master, float32 moments", BASELINES[None]),
                                ("f32 master, 8-bit moments", BASELINES["8bit"]),
                                (three_name, three_name)):  # fmt: skip
                row["speedup_over"][label] = {
                    k: paired_speedup(samples, base, k) for k in model if k not in slow
                }
            for k in slow:
                row["speedup_over"]["f32 master, 8-bit moments"][k] = paired_speedup(
                    samples, f"{BASELINES['8bit']} (beside the slow ones)", k
                )
            rows.append(row)
            print(f"N={n:.0e} threads={threads} load {row['load_before'][0]:.1f} -> "
                  f"{row['load_after'][0]:.1f}, probe {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
            for name in model:
                print(f"  {name:30s} {med[name] * 1e3:9.2f} ms  {model[name]:6.2f} B/el  "
                      f"{row['pct_of_roofline'][name]:6.1%} of roofline  "
                      f"x{row['speedup_over']['f32 master, 8-bit moments'][name]:.3f} vs "
                      f"today's 8-bit step")  # fmt: skip
            del steps, probe, limits
    env["loadavg_at_end"] = load_average()
    env["peers"] = versions
    command = "python bench/master_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "environment": env, "notes": notes, "rows": rows}
    for why in notes.values():
        print(f"note: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
