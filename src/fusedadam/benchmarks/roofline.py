"""The compiled calls below the optimizer classes: the step engine alone and the roofline.

Every use of fusedadam's private kernel API by the benchmarks is in this module, so a
change of that API is adapted here once.

The roofline is the compiled PROBE loop: exactly an Adam step's memory traffic (read p, g,
m, v; write p, m, v; with a third state array also read and write it) with trivial
arithmetic, on the same threads as the real loop, after a read-only probe for each pass of
the step that only reads (the non-finite check's scan of g; a per-tensor kind's phase 1):
the step's passes with their bytes, the arithmetic left out. Its time is what the memory
system allows; ``% of roofline`` is its median over an implementation's median.
"""

import os
import numpy as np

from fusedadam import functional
from fusedadam._backend import _kernels, _testing, compiled_available

__all__ = [
    "compiled_available",
    "kernel_step",
    "roofline_step",
    "read_pass",
    "functional_step",
    "num_procs",
]


def num_procs():
    """Processors OpenMP may use (``os.cpu_count()`` without the extension)."""
    if _kernels is None:
        return os.cpu_count() or 1
    return _kernels.num_procs()


def kernel_step(optimizer, grads):
    """One step of ``optimizer``'s compiled step engine, without the Python method above it.

    ``optimizer`` is a fusedadam optimizer built with ``backend="compiled"``; it is stepped
    once here, so that its groups are planned. Raises ``RuntimeError`` where the
    extension (or its engine) is missing.
    """
    if _kernels is None or not hasattr(_kernels, "Engine"):
        raise RuntimeError("the compiled extension (its step engine) is not built")
    engine = optimizer._engine
    if not isinstance(engine, _kernels.Engine):
        raise RuntimeError("this optimizer does not step through the compiled engine")
    grads = list(grads)
    optimizer.step(grads)  # the engine steps planned groups: the optimizer plans them
    if engine.step(grads) != 0:  # Outcome.RAN: the timed call is a whole step
        raise RuntimeError("the engine did not step the planned groups")
    return lambda: engine.step(grads)


def roofline_step(params, grads, n_state_arrays, n_threads, read_passes=()):
    """The probe loop over ``params`` and ``grads`` with ``n_state_arrays`` state arrays,
    after one read-only probe pass per entry of ``read_passes`` over that many arrays of
    the same sizes (1: the gradients alone, as the non-finite check's scan)."""
    if _kernels is None or _testing is None:
        raise RuntimeError("the compiled extension is not built: no roofline probe")
    if not 1 <= n_state_arrays <= _kernels.MAX_STATE_SLOTS:
        raise RuntimeError(
            f"the probe moves 1 to {_kernels.MAX_STATE_SLOTS} state arrays, not {n_state_arrays}"
        )
    # ones, not zeros: a read-only pass over never-written calloc memory would read one
    # shared zero page instead of memory
    states = [[np.ones_like(p) for p in params] for _ in range(n_state_arrays)]
    probe = _testing.Probe(list(params), list(grads), *states)
    columns = [list(grads), list(params)] + states
    readers = []
    for n_arrays in read_passes:
        if n_arrays == 1:  # one stream: the gradients given as both p and g
            readers.append(_read_probe(columns[0]))
        elif 2 <= n_arrays <= len(columns):
            readers.append(_testing.Probe(*columns[:n_arrays], read_only=True))
        else:
            raise RuntimeError(
                f"a read-only probe pass reads 1 to {len(columns)} arrays, not {n_arrays}"
            )

    def step():
        for reader in readers:
            reader.run(n_threads)
        probe.run(n_threads)

    return step


def _read_probe(arrays):
    """The read-only probe over one list of arrays (the same list as both p and g: one
    stream)."""
    arrays = list(arrays)
    return _testing.Probe(arrays, arrays, read_only=True)


def read_pass(arrays, n_threads):
    """A callable running the read-only probe pass over ``arrays`` (written memory, as a
    step's gradients): the floor of a pass that only reads them, such as the non-finite
    check's scan."""
    if _kernels is None or _testing is None:
        raise RuntimeError("the compiled extension is not built: no roofline probe")
    probe = _read_probe(arrays)
    return lambda: probe.run(n_threads)


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
