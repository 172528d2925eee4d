"""Convergence of the bfloat16 storage modes (master, moments): same init, same batches, seeds.

    python bench/convergence.py [--tasks digits lm] [--digits-seeds 0 1 2 3 4] \
        [--lm-seeds 0 1 2] [--digits-epochs 30] [--lm-steps 300] [--modes NAME ...] \
        [--json bench/results/convergence.json] [--plot bench/results/convergence.png]

Every mode of ``master_modes.MODES`` (float32 params; bfloat16 params with the float32
master or the exact 16-bit residual; float32 or 8-bit moments; and a negative control,
bfloat16 params with no master) trains the same model from the same initial weights
(drawn in float32 from the seed and rounded to bfloat16 once, so every mode starts from
the same values) on the same batches in the same order. Forward and backward passes run
in float32 on the (upcast) weights in every mode; bfloat16 params get bfloat16 gradients
(what a bfloat16 model's ``.grad`` holds), float32 params float32 ones. So the modes
differ only in how the weights and the optimizer state are stored and updated.

Tasks:

digits  the MLP of ``examples/digits_mlp.py`` (scikit-learn's 8x8 digits, 64-128-10,
        NumPy forward and backward), ``fusedadam.AdamW`` (the NumPy front end), lr 1e-3,
        weight decay 1e-2, minibatches of 32; metric: test cross-entropy and accuracy
        after each epoch.
lm      a character-level transformer language model (2 pre-norm layers, width 64,
        4 heads, context 64, 137 216 parameters) on Python's own standard-library sources
        (a fixed list of modules of the running interpreter; the last 10 % held out),
        ``fusedadam.torch.AdamW``, lr 3e-3 with 40 warm-up steps and a cosine decay to
        3e-4, weight decay 1e-2, batches of 16 x 64 characters; metric: validation
        cross-entropy (nats per character) on 8 fixed held-out batches.

Exactness, asserted at every step: the float32-master run of each seed carries a shadow
optimizer per residual mode (``master="residual"``, same state dtype) that is fed the same
gradients; after every step the shadow's decoded master equals the float32 master bit for
bit, and its param equals the float32-master param except where the master lies exactly
on a tie with an even high half (there it is one bfloat16 ulp away from zero: the
encoding rounds ties away, docs/master_residual.md); those ties are counted. The residual
mode's own (closed-loop) run is the float32-master run until the first such tie moves a
weight by one ulp; the step where the two runs' losses first differ is recorded.

The float32 run's seed-to-seed spread is the range (min..max over seeds) of its final
metric; a mode is "within the spread" when its mean over the seeds lies in that range.
"""

import argparse
import json
import math
import os
import sys
import sysconfig
import time

import ml_dtypes
import numpy as np

import fusedadam as fa
from fusedadam import reference
from fusedadam.benchmarks.timing import environment, load_average

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from master_modes import EXACT_TWIN, MODES  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
WEIGHT_DECAY = 1e-2
FLOAT32 = "float32"


# ---------------------------------------------------------------------------- exactness
def check_exact(master32, twin_param, shadow_param, shadow_residual):
    """Assert the shadow's master is ``master32`` bit for bit and its param the twin's but
    at even ties; returns the number of even ties (params one ulp apart)."""
    decoded = reference.residual_decode(shadow_param, shadow_residual)
    if not np.array_equal(decoded.view(np.uint32), master32.view(np.uint32)):
        raise AssertionError("residual master differs from the float32 master")
    u = master32.view(np.uint32)
    tie = ((u & 0xFFFF) == 0x8000) & (((u >> 16) & 1) == 0)
    twin_bits = np.ascontiguousarray(twin_param).view(np.uint16)
    shadow_bits = np.ascontiguousarray(shadow_param).view(np.uint16)
    differ = twin_bits != shadow_bits
    if np.any(differ & ~tie) or np.any(shadow_bits[differ] != twin_bits[differ] + 1):
        raise AssertionError("residual param differs from the float32-master param off a tie")
    return int(np.count_nonzero(differ))


# ------------------------------------------------------------------- the NumPy front end
class NumpyRun:
    """One mode's weights and optimizer over NumPy arrays (``fusedadam.AdamW``)."""

    def __init__(self, mode, init, lr):
        self.mode = mode
        dtype = np.float32 if mode.param == FLOAT32 else BF16
        self.params = [w.astype(dtype) for w in init]
        if mode.control:  # no master: a float32 copy made from the bf16 params every step
            self.work = [w.astype(np.float32) for w in self.params]
            self.opt = fa.AdamW(self.work, lr=lr, weight_decay=WEIGHT_DECAY)
        else:
            self.opt = fa.AdamW(self.params, lr=lr, weight_decay=WEIGHT_DECAY, **mode.options)

    def weights(self):
        return [w.astype(np.float32) for w in self.params]

    def set_lr(self, lr):
        self.opt.param_groups[0]["lr"] = lr

    def step(self, grads):
        grads = [g.astype(self.params[0].dtype) for g in grads]
        if not self.mode.control:
            self.opt.step(grads)
            return
        for w32, w in zip(self.work, self.params):
            w32[...] = w
        self.opt.step([g.astype(np.float32) for g in grads])
        for w32, w in zip(self.work, self.params):
            w[...] = w32.astype(BF16)

    def masters(self):
        """(float32 master, param, residual or None) per param."""
        out = []
        for p in self.params:
            state = self.opt.state[p]
            if "master_residual" in state:
                out.append((None, p, state["master_residual"]))
            else:
                out.append((state["master_param"], p, None))
        return out


# ------------------------------------------------------------------- the torch front end
def _numpy_view(torch, t):
    """The NumPy bfloat16 array over a contiguous bfloat16 tensor's memory."""
    return t.detach().view(torch.int16).numpy().view(BF16)


_TORCH_REFUSES = {}


def torch_refuses(mode):
    """Why ``fusedadam.torch.AdamW`` cannot step this bfloat16 mode, or None where it can."""
    if mode not in _TORCH_REFUSES:
        import torch

        import fusedadam.torch as ft

        p = torch.nn.Parameter(torch.zeros(1 << 13, dtype=torch.bfloat16))
        p.grad = torch.zeros_like(p)
        try:
            opt = ft.AdamW([p], **mode.options)
            opt.step()  # the first step creates the state;
            opt.step()  # the second reads it back (a state dtype may be refused only here)
            _TORCH_REFUSES[mode] = None
        except Exception as exc:
            _TORCH_REFUSES[mode] = f"{type(exc).__name__}: {exc}"
    return _TORCH_REFUSES[mode]


class TorchRun:
    """One mode's weights and optimizer over torch tensors (``fusedadam.torch.AdamW``).

    ``model`` is the float32 module the forward and backward passes run in; for bfloat16
    modes its weights are set from the bfloat16 params before each pass. A bfloat16 mode
    the torch front end refuses is stepped by the NumPy front end over the same memory
    (``self.frontend`` says which).
    """

    def __init__(self, mode, model, lr):
        import copy

        import torch

        import fusedadam.torch as ft

        self.torch, self.mode, self.frontend = torch, mode, "torch"
        self.model = copy.deepcopy(model)
        self.compute = list(self.model.parameters())
        self.arrays = None
        options = {"lr": lr, "weight_decay": WEIGHT_DECAY}
        if mode.param == FLOAT32:
            self.params = self.compute
            self.opt = ft.AdamW(self.params, **options, **mode.options)
            return
        self.params = [torch.nn.Parameter(p.detach().bfloat16()) for p in self.compute]
        if mode.control:
            self.work = [torch.nn.Parameter(p.detach().float()) for p in self.params]
            self.opt = ft.AdamW(self.work, **options)
        elif torch_refuses(mode) is None:
            self.opt = ft.AdamW(self.params, **options, **mode.options)
        else:
            self.frontend = "numpy"
            self.arrays = [_numpy_view(torch, p) for p in self.params]
            self.opt = fa.AdamW(self.arrays, **options, **mode.options)

    def set_lr(self, lr):
        self.opt.param_groups[0]["lr"] = lr

    def load_weights(self):
        if self.params is not self.compute:
            with self.torch.no_grad():
                for c, p in zip(self.compute, self.params):
                    c.copy_(p)

    def step(self, grads=None):
        """One optimizer step from float32 ``grads`` (default: the compute module's)."""
        torch = self.torch
        if self.params is self.compute:
            assert grads is None
            self.opt.step()
            return
        grads = [c.grad for c in self.compute] if grads is None else grads
        bf16_grads = [g.bfloat16() for g in grads]
        if self.arrays is not None:
            self.opt.step([_numpy_view(torch, g) for g in bf16_grads])
            return
        for p, g in zip(self.params, bf16_grads):
            p.grad = g
        if not self.mode.control:
            self.opt.step()
            return
        with torch.no_grad():
            for w, p in zip(self.work, self.params):
                w.copy_(p)
                w.grad = p.grad.float()
            self.opt.step()
            for w, p in zip(self.work, self.params):
                p.copy_(w)  # round to nearest even

    def masters(self):
        out = []
        for i, p in enumerate(self.params):
            param = _numpy_view(self.torch, p)
            if self.arrays is not None:
                state = {k: v for k, v in self.opt.state[self.arrays[i]].items()}
            else:
                state = {k: v.numpy() for k, v in self.opt.state[p].items() if hasattr(v, "numpy")}
            if "master_residual" in state:
                out.append((None, param, state["master_residual"]))
            else:
                out.append((state["master_param"], param, None))
        return out


class Shadows:
    """The residual optimizers fed the float32-master run's gradients, checked each step."""

    def __init__(self, names, make):
        self.runs = {name: make(MODES[name]) for name in names}
        self.ties = {name: 0 for name in names}
        self.steps = 0

    def check(self, twin):
        self.steps += 1
        twin_masters = twin.masters()
        for name, run in self.runs.items():
            for (master32, twin_param, _), (_, param, residual) in zip(twin_masters, run.masters()):
                self.ties[name] += check_exact(master32, twin_param, param, residual)


# ------------------------------------------------------------------------- the digits task
def digits_task(modes, seed, epochs):
    from digits_mlp import BATCH, accuracy, forward, init_params, load, loss_and_grads

    from _common import softmax_cross_entropy

    data = load()  # the split is the example's (seed 0); the seed draws init and order
    X_train, y_train, X_test, y_test = data
    lr = 1e-3
    init_rng = np.random.default_rng(1000 + seed)
    init = [w.astype(BF16).astype(np.float32) for w in init_params(init_rng, 64, 10)]
    order_rng = np.random.default_rng(2000 + seed)
    orders = [order_rng.permutation(len(y_train)) for _ in range(epochs)]
    results = {}
    for name in modes:
        mode = MODES[name]
        run = NumpyRun(mode, init, lr)
        shadow_names = [r for r, t in EXACT_TWIN.items() if t == name and r in modes]
        shadows = Shadows(shadow_names, lambda m: NumpyRun(m, init, lr))
        losses, history, t0 = [], [], time.perf_counter()
        for order in orders:
            epoch_losses = []
            for start in range(0, len(order), BATCH):
                batch = order[start : start + BATCH]
                loss, grads = loss_and_grads(run.weights(), X_train[batch], y_train[batch])
                run.step(grads)
                for shadow in shadows.runs.values():
                    shadow.step(grads)
                if shadows.runs:
                    shadows.check(run)
                epoch_losses.append(float(loss))
                losses.append(float(loss))
            weights = run.weights()
            test_loss = float(softmax_cross_entropy(forward(weights, X_test)[1], y_test)[0])
            history.append(
                {
                    "train_loss": float(np.mean(epoch_losses)),
                    "test_loss": test_loss,
                    "test_accuracy": accuracy(weights, X_test, y_test),
                }
            )
        results[name] = {
            "history": history,
            "step_losses": losses,
            "final": history[-1]["test_loss"],
            "final_accuracy": history[-1]["test_accuracy"],
            "seconds": time.perf_counter() - t0,
            "shadow_ties": shadows.ties,
            "shadow_steps": shadows.steps,
        }
    return results


# ---------------------------------------------------------------------- the language model
STDLIB_MODULES = (
    "argparse", "textwrap", "difflib", "dataclasses", "fractions", "statistics",
    "heapq", "bisect", "shlex", "string", "tokenize", "inspect",
)  # fmt: skip
LM_CONTEXT, LM_BATCH, LM_WIDTH, LM_LAYERS, LM_HEADS = 64, 16, 64, 2, 4
LM_EVAL_BATCHES, LM_WARMUP = 8, 40


def lm_corpus():
    """The bytes of a fixed list of the running Python's standard-library modules."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in STDLIB_MODULES:
        with open(os.path.join(stdlib, name + ".py"), "rb") as f:
            parts.append(f.read())
    data = np.frombuffer(b"\n".join(parts), dtype=np.uint8)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


def make_lm(torch, seed):
    """A small pre-norm GPT over bytes (vocabulary 256), float32, initialised from ``seed``."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(LM_WIDTH), nn.LayerNorm(LM_WIDTH)
            self.attn = nn.MultiheadAttention(LM_WIDTH, LM_HEADS, batch_first=True)
            self.mlp = nn.Sequential(
                nn.Linear(LM_WIDTH, 4 * LM_WIDTH), nn.GELU(), nn.Linear(4 * LM_WIDTH, LM_WIDTH)
            )

        def forward(self, x, mask):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(256, LM_WIDTH)
            self.pos = nn.Parameter(torch.randn(LM_CONTEXT, LM_WIDTH) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(LM_LAYERS))
            self.ln = nn.LayerNorm(LM_WIDTH)
            self.head = nn.Linear(LM_WIDTH, 256)
            mask = torch.triu(torch.ones(LM_CONTEXT, LM_CONTEXT, dtype=torch.bool), 1)
            self.register_buffer("mask", mask)

        def forward(self, idx):
            x = self.embed(idx) + self.pos[: idx.shape[1]]
            for block in self.blocks:
                x = block(x, self.mask)
            return self.head(self.ln(x))

    torch.manual_seed(seed)
    model = GPT()
    with torch.no_grad():  # every mode starts from the same bfloat16-representable values
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


def lm_lr(step, steps, peak=3e-3, floor=3e-4):
    if step < LM_WARMUP:
        return peak * (step + 1) / LM_WARMUP
    t = (step - LM_WARMUP) / max(1, steps - LM_WARMUP)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))


def lm_task(modes, seed, steps, eval_every):
    import torch

    train, val = lm_corpus()
    rng = np.random.default_rng(3000 + seed)
    starts = rng.integers(0, len(train) - LM_CONTEXT - 1, size=(steps, LM_BATCH))
    val_rng = np.random.default_rng(99)  # the same held-out batches for every seed
    val_starts = val_rng.integers(0, len(val) - LM_CONTEXT - 1, size=(LM_EVAL_BATCHES, LM_BATCH))
    offsets = np.arange(LM_CONTEXT + 1)

    def batch(data, rows):
        chunk = torch.from_numpy(data[rows[:, None] + offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    val_batches = [batch(val, rows) for rows in val_starts]
    model = make_lm(torch, seed)
    n_params = sum(p.numel() for p in model.parameters())
    loss_fn = torch.nn.functional.cross_entropy

    def evaluate(run):
        run.load_weights()
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        float(loss_fn(run.model(x).flatten(0, 1), y.flatten()))
                        for x, y in val_batches
                    ]
                )
            )

    results = {}
    for name in modes:
        mode = MODES[name]
        run = TorchRun(mode, model, lm_lr(0, steps))
        shadow_names = [r for r, t in EXACT_TWIN.items() if t == name and r in modes]
        shadows = Shadows(shadow_names, lambda m: TorchRun(m, model, lm_lr(0, steps)))
        losses, history, t0 = [], [], time.perf_counter()
        for step in range(steps):
            lr = lm_lr(step, steps)
            run.set_lr(lr)
            run.load_weights()
            x, y = batch(train, starts[step])
            run.model.zero_grad(set_to_none=True)
            loss = loss_fn(run.model(x).flatten(0, 1), y.flatten())
            loss.backward()
            run.step()
            for shadow in shadows.runs.values():
                shadow.set_lr(lr)
                shadow.step([c.grad for c in run.compute])
            if shadows.runs:
                shadows.check(run)
            losses.append(float(loss.detach()))
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                history.append({"step": step + 1, "val_loss": evaluate(run)})
        results[name] = {
            "history": history,
            "step_losses": losses,
            "final": history[-1]["val_loss"],
            "seconds": time.perf_counter() - t0,
            "shadow_ties": shadows.ties,
            "shadow_steps": shadows.steps,
            "n_params": n_params,
            "frontend": run.frontend,
        }
    return results


# ------------------------------------------------------------------------------ summary
def summarize(per_seed, modes):
    """Per mode: final metric per seed, mean, std, paired difference to float32, and
    whether the mean lies in the float32 run's seed range; residual's first divergence."""
    seeds = sorted(per_seed)
    base = [per_seed[s][FLOAT32]["final"] for s in seeds] if FLOAT32 in modes else None
    out = {}
    for name in modes:
        finals = [per_seed[s][name]["final"] for s in seeds]
        row = {"finals": finals, "mean": float(np.mean(finals)), "std": float(np.std(finals))}
        if base is not None:
            row["paired_diff_to_float32"] = [f - b for f, b in zip(finals, base)]
            row["within_float32_range"] = bool(min(base) <= row["mean"] <= max(base))
        if name in EXACT_TWIN and EXACT_TWIN[name] in modes:
            twin = EXACT_TWIN[name]
            first = []
            for s in seeds:
                a, b = per_seed[s][name]["step_losses"], per_seed[s][twin]["step_losses"]
                first.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None))
            row["exact_twin"] = twin
            row["first_step_loss_differs_from_twin"] = first
            row["shadow_even_ties"] = [per_seed[s][twin]["shadow_ties"][name] for s in seeds]
            row["shadow_steps"] = per_seed[seeds[0]][twin]["shadow_steps"]
        out[name] = row
    if base is not None:
        out["_float32_spread"] = {
            "min": min(base),
            "max": max(base),
            "range": max(base) - min(base),
        }
    return out


def _curves(task, per_seed, seeds, name):
    """(x, [seeds x points]) of a mode's evaluation curve."""
    history = [per_seed[s][name]["history"] for s in seeds]
    if task == "digits":
        xs = np.arange(1, len(history[0]) + 1)
        return xs, np.array([[h["test_loss"] for h in hs] for hs in history])
    return np.array([h["step"] for h in history[0]]), np.array(
        [[h["val_loss"] for h in hs] for hs in history]
    )


def plot(results, path):
    """Top: each mode's curve (mean over seeds). Bottom: its paired difference to the
    float32 run of the same seed (mean over seeds), over the float32 run's seed spread
    (each seed's curve minus the seeds' mean: the band is min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("digits", "lm") if t in results]
    fig, axes = plt.subplots(2, len(tasks), figsize=(6.8 * len(tasks), 8.2), squeeze=False)
    for column, task in enumerate(tasks):
        top, bottom = axes[0][column], axes[1][column]
        per_seed = results[task]["per_seed"]
        seeds = sorted(per_seed, key=int)
        modes = results[task]["modes"]
        xs, base = _curves(task, per_seed, seeds, FLOAT32)
        spread = base - base.mean(axis=0)
        bottom.fill_between(xs, spread.min(axis=0), spread.max(axis=0), color="C0", alpha=0.2,
                            label=f"float32: seed-to-seed spread ({len(seeds)} seeds)")  # fmt: skip
        for i, name in enumerate(modes):
            xs, curves = _curves(task, per_seed, seeds, name)
            style = {"lw": 3.5, "alpha": 0.35} if name == FLOAT32 else {"lw": 1.3}
            style["ls"] = {"residual": "--", "compact": ":"}.get(MODES[name].master, "-")
            style["color"] = "black" if MODES[name].control else f"C{i % 10}"
            top.plot(xs, curves.mean(axis=0), label=name, **style)
            if name != FLOAT32:
                diff = (curves - base).mean(axis=0)
                bottom.plot(xs, diff, label=name, **style)
        xlabel = "epoch" if task == "digits" else "step"
        if task == "digits":
            top.set(title="digits MLP: test cross-entropy", yscale="log")
        else:
            top.set(title="char transformer LM: validation loss (nats/char)")
            finals = [r["mean"] for k, r in results[task]["summary"].items() if k[0] != "_"]
            top.set_ylim(min(finals) - 0.05, min(finals) + 1.0)
        bottom.set(title="minus the float32 run of the same seed (mean over seeds)", xlabel=xlabel)
        bottom.axhline(0.0, color="black", lw=0.6)
        low, high = np.quantile(spread, [0.0, 1.0])
        bottom.set_ylim(3 * min(low, -1e-3), 3 * max(high, 1e-3))
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("same init and batches for every mode; mean over the seeds")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "lm"], choices=["digits", "lm"])
    parser.add_argument("--digits-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lm-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--digits-epochs", type=int, default=30)
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--lm-eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (lm)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the curves here (PNG; needs matplotlib)")
    parser.add_argument(
        "--replot",
        metavar="JSON",
        nargs="+",
        help="only merge results files (one task each, say) into --json and plot them to --plot",
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.json, args.plot)
    env = environment()
    print(f"fusedadam {fa.backend_info()}; load average {load_average()}")
    results = {}
    for task in args.tasks:
        per_seed = {}
        for seed in args.digits_seeds if task == "digits" else args.lm_seeds:
            if task == "digits":
                per_seed[str(seed)] = digits_task(args.modes, seed, args.digits_epochs)
            else:
                import torch

                torch.set_num_threads(args.threads)
                per_seed[str(seed)] = lm_task(args.modes, seed, args.lm_steps, args.lm_eval_every)
            for name, r in per_seed[str(seed)].items():
                print(f"{task} seed {seed} {name:28s} final {r['final']:.5f}  "
                      f"({r['seconds']:.1f} s)")  # fmt: skip
        summary = summarize(per_seed, args.modes)
        for runs in per_seed.values():  # per-step losses served the summary; not kept
            for r in runs.values():
                del r["step_losses"]
        results[task] = {"modes": args.modes, "per_seed": per_seed, "summary": summary}
        print_summary(task, summary)
    env["loadavg_at_end"] = load_average()
    out = {"command": "python bench/convergence.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
           "environment": env, "settings": vars(args), "results": results}  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
    return out


def merge_task(old, new):
    """``old``'s task results with ``new``'s modes added (same seeds). The float32 run is
    deterministic: where both have it, its finals must agree (checked). Summary rows of
    the modes already in ``old`` are kept; the added modes' rows are computed here."""
    if sorted(old["per_seed"]) != sorted(new["per_seed"]):
        raise ValueError("results files with different seeds cannot be merged")
    for seed, runs in new["per_seed"].items():
        for name, run in runs.items():
            mine = old["per_seed"][seed].get(name)
            if name == FLOAT32 and mine is not None and mine["final"] != run["final"]:
                raise AssertionError(f"float32 run of seed {seed} differs between the files")
            old["per_seed"][seed].setdefault(name, run)
    added = [m for m in new["modes"] if m not in old["modes"]]
    old["modes"] = [m for m in MODES if m in old["modes"] or m in added]
    rows = summarize(old["per_seed"], [FLOAT32] + added)
    for name in added:
        old["summary"][name] = rows[name]
    old["summary"] = {k: old["summary"][k] for k in old["modes"] + ["_float32_spread"]}
    return old


def replot(paths, json_path, plot_path):
    """Merge several results files and plot. A task in one file only is taken as it is;
    a task in several has their modes merged (``merge_task``)."""
    merged = {"runs": [], "results": {}}
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        if "runs" in run:  # itself a merge
            merged["runs"] += run["runs"]
        else:
            merged["runs"].append({k: run[k] for k in ("command", "environment")})
        for task, result in run["results"].items():
            if task in merged["results"]:
                merge_task(merged["results"][task], result)
            else:
                merged["results"][task] = result
    if json_path:
        with open(json_path, "w") as f:
            json.dump(merged, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        plot(merged["results"], plot_path)
    return merged


def print_summary(task, summary):
    metric = "test cross-entropy" if task == "digits" else "validation loss"
    print(f"\n{task}: final {metric}, mean +- std over seeds")
    for name, row in summary.items():
        if name.startswith("_"):
            continue
        line = f"  {name:28s} {row['mean']:.5f} +- {row['std']:.5f}"
        if "within_float32_range" in row:
            line += f"  within float32's seed range: {row['within_float32_range']}"
        if "exact_twin" in row:
            line += (f"  | shadow exact over {row['shadow_steps']} steps, even ties "
                     f"{row['shadow_even_ties']}, closed-loop loss first differs at step "
                     f"{row['first_step_loss_differs_from_twin']}")  # fmt: skip
        print(line)
    if "_float32_spread" in summary:
        s = summary["_float32_spread"]
        print(f"  float32 seed range {s['min']:.5f} .. {s['max']:.5f} ({s['range']:.5f})")


if __name__ == "__main__":
    main()
