"""Which backend runs a step: the one owner of that choice and of the fallback warning."""

import warnings
from typing import Any

from fusedadam import _validation

_kernels: Any
_testing: Any
try:
    from fusedadam import _kernels
except ImportError:  # the extension was not built: the NumPy reference is the backend
    _kernels = None
try:  # the test and benchmark kernels (the roofline probe), built with _kernels
    from fusedadam import _testing
except ImportError:
    _testing = None

__all__ = ["resolve_backend", "compiled_available"]

_warned_fallback = False


def compiled_available():
    """True when the compiled extension is importable."""
    return _kernels is not None


def resolve_backend(backend, where=""):
    """Map ``"auto"``/``"compiled"``/``"numpy"`` to the backend that will run.

    ``"auto"`` is the compiled kernel when it is built, else the NumPy reference with one
    ``RuntimeWarning`` per process; ``"compiled"`` without the extension is an error.
    """
    global _warned_fallback
    _validation.HYPERPARAMETER_CHECKS["backend"](backend, where)
    if backend == "numpy":
        return "numpy"
    if _kernels is not None:
        return "compiled"
    if backend == "compiled":
        raise RuntimeError(
            f"{where}backend='compiled' but fusedadam's extension is not built; reinstall "
            "with a C compiler, or use backend='numpy'"
        )
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "fusedadam's compiled extension is not available; using the (slower) NumPy "
            "reference backend",
            RuntimeWarning,
            stacklevel=4,
        )
    return "numpy"
