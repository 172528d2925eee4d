"""Seeded, cached benchmark inputs and the step callables built on them."""
import functools

import numpy as np

from fusedadam import functional

try:
    from fusedadam import _kernels
except ImportError:  # built without the extension
    _kernels = None

SEED = 20240607
# Step t=10 of the usual defaults: bias correction active, every scalar non-trivial.
SCALARS = functional.adam_scalars(10, 1e-3, 0.9, 0.999, 1e-8)


@functools.lru_cache(maxsize=8)
def _base(shape, dtype_name):
    rng = np.random.default_rng(SEED)
    return rng.standard_normal(shape).astype(dtype_name)


def arrays(shape, dtype, count):
    """``count`` fresh seeded arrays of ``shape``: p, g, m, v (all >= 0 from v on)...

    Copies of one cached random array, so large sizes are generated once per process.
    Second-moment-like arrays are made non-negative (a real v never is negative).
    """
    base = _base(tuple(shape), np.dtype(dtype).name)
    out = [base.copy() for _ in range(count)]
    for a in out[3:]:
        np.abs(a, out=a)
    if count > 2:
        out[2] *= 0.1
    return out


def kernel_step(params, grads, states, kind, n_threads):
    """A callable running one compiled step of loop ``kind`` (prepare + run), no Python layer.

    ``states`` is ``[exp_avgs, seconds]`` or ``[exp_avgs, seconds, thirds]``.
    """
    thirds = states[2] if len(states) > 2 else None
    kernel = _kernels.GroupKernel(params, states[0], states[1], thirds, [], [])
    params, grads = list(params), list(grads)

    def step():
        kernel.prepare(params, grads, 0, kind)
        kernel.run(SCALARS, n_threads)

    return step
