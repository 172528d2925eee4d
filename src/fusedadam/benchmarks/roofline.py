"""The compiled calls below the optimizer classes: the kernel alone and the roofline probe.

Every use of fusedadam's private kernel API (``_kernels.GroupKernel``, loop kinds, the
per-step scalars of ``functional``) by the benchmarks is in this module, so a change of
that API is adapted here once.

The roofline is the PROBE loop: exactly an Adam step's memory traffic (read p, g, m, v;
write p, m, v; with a third state array also read and write it) with trivial arithmetic,
on the same threads and slices as the real loop. Its time is what the memory system
allows; ``% of roofline`` is its median over an implementation's median.
"""

from typing import Any

import numpy as np

from fusedadam import functional

_kernels: Any
try:
    from fusedadam import _kernels
except ImportError:  # built without the extension: no kernel, no probe
    _kernels = None

__all__ = ["compiled_available", "kernel_step", "roofline_step", "functional_step", "num_procs"]


def _scalars():
    """Step t=10 of the usual defaults: bias correction active, every scalar non-trivial.

    Formed when a kernel-only step is built, not at import: an internal API that moved
    then skips that one implementation (with a note) instead of the whole benchmark.
    """
    return functional.adam_scalars(10, 1e-3, 0.9, 0.999, 1e-8)


def compiled_available():
    """True when the compiled extension is importable."""
    return _kernels is not None


def num_procs():
    """Processors OpenMP may use (``os.cpu_count()`` without the extension)."""
    if _kernels is None:
        import os

        return os.cpu_count() or 1
    return _kernels.num_procs()


def _group_step(params, grads, n_state_arrays, kind, n_threads):
    if not hasattr(_kernels, "GroupKernel"):
        raise RuntimeError("this build's kernel API has no GroupKernel to time alone")
    scalars = _scalars()
    states = [[np.zeros_like(p) for p in params] for _ in range(n_state_arrays)]
    thirds = states[2] if n_state_arrays > 2 else None
    kernel = _kernels.GroupKernel(params, states[0], states[1], thirds, [], [])
    params, grads = list(params), list(grads)

    def step():
        kernel.prepare(params, grads, 0, kind)
        kernel.run(scalars, n_threads)

    return step


def kernel_step(params, grads, loop, n_threads):
    """One compiled step of ``loop`` (``"ADAM"``, ``"AMSGRAD"``, ``"ADAMAX"``...) alone.

    ``GroupKernel.prepare`` + ``run`` with no Python layer above them. Raises
    ``RuntimeError`` when the extension is missing or has no such loop.
    """
    if _kernels is None:
        raise RuntimeError("the compiled extension is not built")
    kind = getattr(_kernels, loop or "", None)
    if kind is None:
        raise RuntimeError(f"the compiled extension has no {loop} loop")
    n_state_arrays = 3 if loop.startswith("AMSGRAD") else 2
    return _group_step(params, grads, n_state_arrays, kind, n_threads)


def roofline_step(params, grads, n_state_arrays, n_threads):
    """The PROBE loop over ``params`` and ``grads`` with 2 or 3 state arrays."""
    if _kernels is None:
        raise RuntimeError("the compiled extension is not built: no roofline probe")
    states = [[np.zeros_like(p) for p in params] for _ in range(n_state_arrays)]
    thirds = states[2] if n_state_arrays > 2 else None
    params, grads = list(params), list(grads)
    if hasattr(_kernels, "Probe"):  # validated once, like a steady-state step
        probe = _kernels.Probe(params, grads, states[0], states[1], thirds)
        return lambda: probe.run(n_threads)
    return _group_step(params, grads, n_state_arrays, _kernels.PROBE, n_threads)


def functional_step(params, grads, n_threads):
    """``functional.adam`` on fresh state: the uncached path through validation."""
    exp_avgs = [np.zeros_like(p) for p in params]
    exp_avg_sqs = [np.zeros_like(p) for p in params]
    params, grads = list(params), list(grads)

    def step():
        functional.adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            step=10,
            lr=1e-3,
            num_threads=n_threads,
            backend="compiled",
        )

    return step
