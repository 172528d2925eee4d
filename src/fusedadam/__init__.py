"""fusedadam: one-pass, multi-threaded Adam-family optimizer steps for NumPy arrays.

>>> import numpy as np, fusedadam as fa
>>> w = np.zeros(10, dtype=np.float32)
>>> opt = fa.Adam(w, lr=1e-2)
>>> opt.step(np.ones_like(w))
"""

from fusedadam import functional, reference, schedules
from fusedadam._clip import clip_grad_norm
from fusedadam._version import __version__
from fusedadam.minimize import OptimizeResult, minimize
from fusedadam import optim
from fusedadam.optim import *  # noqa: F403 (Optimizer and every class of the registry)
from fusedadam.sparse import SparseAdam
from fusedadam.serialization import flatten_state_dict, unflatten_state_dict
from fusedadam._backend import _kernels


def _apply_simd_env():
    """FUSEDADAM_SIMD=baseline|avx2|avx512 (x86-64), baseline|neon|sve (aarch64) caps the
    instruction set the loops use.

    Unset, empty or ``auto``: the widest this CPU runs. A name wider than the CPU runs
    warns and keeps the widest it runs; an unknown name is an error (a typo must not pass
    silently). Without the compiled extension there is nothing to choose.
    """
    import os

    wanted = os.environ.get("FUSEDADAM_SIMD", "").strip().lower()
    if not wanted or wanted == "auto" or _kernels is None:
        return
    if wanted not in _kernels.ISA_NAMES:
        raise ValueError(
            f"FUSEDADAM_SIMD={wanted!r} is not one of {('auto',) + tuple(_kernels.ISA_NAMES)}"
        )
    best = _kernels.best_isa()
    if _kernels.ISA_NAMES.index(wanted) > _kernels.ISA_NAMES.index(best):
        import warnings

        warnings.warn(
            f"FUSEDADAM_SIMD={wanted!r}: this CPU runs at most {best!r}; using {best!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    _kernels.set_isa(wanted)


_apply_simd_env()

__all__ = [
    "OptimizeResult",
    "SparseAdam",
    "backend_info",
    "clip_grad_norm",
    "flatten_state_dict",
    "functional",
    "minimize",
    "reference",
    "schedules",
    "unflatten_state_dict",
    "__version__",
]
__all__ += optim.__all__  # Optimizer and the optimizer classes of the registry


def backend_info():
    """What runs a step here.

    Returns a dict: ``compiled`` (the extension is importable), ``openmp`` (it was built
    with OpenMP), ``max_threads`` (threads a step with ``num_threads=None`` uses now),
    ``num_procs``, ``simd`` (instruction set of the loops in use: on x86-64
    ``"baseline"`` is SSE2, then ``"avx2"``, ``"avx512"``; on aarch64 ``"baseline"`` is
    the scalar C, then ``"neon"``, ``"sve"``), ``simd_best`` (the widest this CPU runs),
    ``chunk_size`` (a step is cut into chunks of this many elements that threads claim one
    at a time; a call of one chunk runs on the calling thread), ``version``.
    """
    from fusedadam._threads import effective_num_threads

    if _kernels is None:
        return {
            "compiled": False,
            "openmp": False,
            "max_threads": 1,
            "num_procs": 1,
            "simd": None,
            "simd_best": None,
            "chunk_size": None,
            "version": __version__,
        }
    return {
        "compiled": True,
        "openmp": _kernels.openmp_enabled(),
        "max_threads": effective_num_threads(None),
        "num_procs": _kernels.num_procs(),
        "simd": _kernels.get_isa(),
        "simd_best": _kernels.best_isa(),
        "chunk_size": _kernels.get_chunk_size(),
        "version": __version__,
    }
