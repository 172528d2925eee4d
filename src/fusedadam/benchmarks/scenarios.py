"""Benchmark scenarios: the grids of cases, each case timed by :mod:`.timing`.

sweep     one array of N elements per case, over sizes x dtypes x algorithms x threads
model     a model's list of arrays stepped in one call: ``bert-base``, ``gpt2``, ``toy``,
          a ``.npz`` file's arrays, or a shape list such as ``"1000x64,64"``
overhead  tiny arrays: the cost of one call, end to end and below the optimizer layer
roofline  the bandwidth probe alone against fusedadam, per size and thread count
"""

import gc
import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from fusedadam.benchmarks import peers, roofline, timing

__all__ = ["Case", "SCENARIOS", "model_shapes", "MODELS", "run_case"]

SEED = 20240607


@dataclass(frozen=True)
class Case:
    """One timed cell of a grid: the arrays' shapes, dtype, algorithm and thread count."""

    scenario: str
    label: str
    shapes: tuple
    dtype: str
    algorithm: str
    threads: int
    impls: tuple

    @property
    def n_elements(self):
        return int(sum(int(np.prod(s)) for s in self.shapes))


def _bert_base():
    d, ff, vocab = 768, 3072, 30522
    shapes: List[Tuple[int, ...]] = [(vocab, d), (512, d), (2, d), (d,), (d,)]
    for _ in range(12):
        shapes += [(d, d), (d,)] * 4 + [(d,), (d,)]  # q, k, v, out; LayerNorm
        shapes += [(ff, d), (ff,), (d, ff), (d,), (d,), (d,)]
    return shapes + [(d, d), (d,)]  # pooler


def _gpt2(d=768, n_layers=12):
    ff, vocab, ctx = 4 * d, 50257, 1024
    shapes: List[Tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(n_layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]  # ln_1, attn
        shapes += [(d,), (d,), (d, ff), (ff,), (ff, d), (d,)]  # ln_2, mlp
    return shapes + [(d,), (d,)]


def _toy():
    d = 64
    shapes: List[Tuple[int, ...]] = [(1000, 64), (512, 64)]
    for _ in range(6):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)] + [(d,)] * 10
    return shapes


MODELS = {
    "bert-base": _bert_base,
    "gpt2": _gpt2,
    "gpt2-medium": lambda: _gpt2(1024, 24),  # 355M
    "gpt2-xl": lambda: _gpt2(1600, 48),  # 1.56B
    "toy": _toy,
}


def model_shapes(spec):
    """Shapes of a model: a name of ``MODELS``, a ``.npz`` path, or ``"AxB,C,..."``."""
    if spec in MODELS:
        return [tuple(s) for s in MODELS[spec]()]
    if spec.endswith(".npz"):
        with np.load(spec) as data:
            shapes = [tuple(data[k].shape) for k in data.files]
        if not shapes:
            raise ValueError(f"{spec} holds no arrays")
        return shapes
    try:
        return [tuple(int(d) for d in item.split("x")) for item in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--model {spec!r} is not one of {sorted(MODELS)}, a .npz file "
            "or a shape list like 1000x64,64"
        ) from None


def _arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def run_case(case, args, notes):
    """Time one case; returns its rows (one per implementation timed)."""
    itemsize = np.dtype(case.dtype).itemsize
    n = case.n_elements
    impls = [i for i in case.impls if not (i == "numpy" and n > args.numpy_max)]
    # Live arrays: the shared gradients, <= 4 per implementation and NumPy's temporaries.
    need = n * itemsize * (1 + 4 * len(impls) + (3 if "numpy" in impls else 0))
    if need > args.mem_fraction * timing.available_bytes():
        notes[("all", case.algorithm, case.dtype)] = (
            f"{case.label} skipped: needs ~{need / 2**30:.1f} GiB"
        )
        return []
    grads = _arrays(case.shapes, case.dtype, SEED + 1)
    base = _arrays(case.shapes, case.dtype, SEED)
    fns = peers.build(
        impls, case.algorithm, lambda: [p.copy() for p in base], grads, case.threads, notes
    )
    if case.scenario == "overhead" and roofline.compiled_available():
        fns["functional.adam"] = roofline.functional_step(
            [p.copy() for p in base], grads, case.threads
        )
    if "roofline" in fns and case.threads != 1:
        # The probe is a step like any other: a stalled multi-thread probe would make every
        # step look fast against it, so its one-thread run is timed too, as a floor.
        fns.update(
            peers.build(
                ["roofline 1 thread"],
                case.algorithm,
                lambda: [p.copy() for p in base],
                grads,
                1,
                notes,
            )
        )
    res = timing.measure_interleaved(fns, args.repeats, args.sample_ms / 1000)
    algorithm = peers.ALGORITHMS[case.algorithm]
    traffic = algorithm.arrays_moved * itemsize * n
    write_arrays = algorithm.write_pass_arrays
    scale = peers.probe_shape(write_arrays)[1] if write_arrays >= 5 else 1.0
    roof = res.get("roofline", {}).get("median")
    floor = res.get("roofline 1 thread", {}).get("median")
    if roof and floor and floor < roof:
        notes[("roofline", case.algorithm, case.dtype)] = (
            f"{case.label}: the {case.threads}-thread roofline probe took {roof * 1e6:.1f} us, "
            f"more than one thread's {floor * 1e6:.1f} us (stalled): % of roofline uses the "
            "one-thread probe"
        )
        roof = floor
    if roof:
        roof *= scale  # the probe's bandwidth at the algorithm's own bytes
    rows = []
    for impl, r in res.items():
        rows.append(
            {
                "scenario": case.scenario,
                "label": case.label,
                "n_elements": n,
                "n_arrays": len(case.shapes),
                "dtype": case.dtype,
                "algorithm": case.algorithm,
                "threads": case.threads,
                "impl": impl,
                "median_s": r["median"],
                "min_s": r["min"],
                "calls_per_sample": r["calls_per_sample"],
                "ns_per_element": r["median"] / max(n, 1) * 1e9,
                "gb_per_s": traffic / r["median"] / 1e9,
                "pct_roofline": 100.0 * roof / r["median"] if roof else None,
            }
        )
    del fns, grads
    gc.collect()
    return rows


# The implementations each fixed-purpose scenario times.
OVERHEAD_IMPLS = ("fusedadam", "fusedadam-kernel", "numpy", "torch-single", "torch-foreach",
                  "torch-fused", "deepspeed", "reference")  # fmt: skip
ROOFLINE_IMPLS = ("roofline", "fusedadam", "fusedadam-kernel")


def _grid(scenario, shape_sets, dtypes, algorithms, threads, impls):
    """One Case per (dtype, algorithm, thread count, named shape set)."""
    return [Case(scenario, f"{name} {algorithm} {dtype} threads={n_threads}", tuple(shapes),
                 dtype, algorithm, n_threads, tuple(impls))
            for dtype in dtypes for algorithm in algorithms for n_threads in threads
            for name, shapes in shape_sets]  # fmt: skip


def sweep_cases(args):
    sets = [(f"N={n:.0e}", [(n,)]) for n in args.sizes]
    return _grid("sweep", sets, args.dtypes, args.algorithms, args.threads, args.impls)


def model_cases(args):
    sets = []
    for spec in args.models:
        shapes = model_shapes(spec)
        n = sum(int(np.prod(s)) for s in shapes)
        name = os.path.basename(spec)
        sets.append((f"{name} ({n / 1e6:.2f}M params, {len(shapes)} arrays)", shapes))
    return _grid("model", sets, args.dtypes, args.algorithms, args.threads, args.impls)


def overhead_cases(args):
    sets = [(f"N={n}", [(n,)]) for n in args.overhead_sizes]
    return _grid("overhead", sets, args.dtypes[:1], ["adam"], [1], OVERHEAD_IMPLS)


def roofline_cases(args):
    sets = [(f"N={n:.0e}", [(n,)]) for n in args.sizes]
    return _grid("roofline", sets, args.dtypes, ["adam"], args.threads, ROOFLINE_IMPLS)


SCENARIOS = {
    "sweep": sweep_cases,
    "model": model_cases,
    "overhead": overhead_cases,
    "roofline": roofline_cases,
}
