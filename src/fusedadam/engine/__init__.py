"""The step engine: explicit arrays in, arrays updated, an outcome out.

Every front end (``fusedadam.optim``, ``functional``, ``sparse``, ``torch``,
``distributed``) owns its own containers and calls down into this package; nothing here
imports or calls anything above it. A front end validates a group into a
:class:`GroupSpec` (its params, state arrays, masters, 8-bit scales, step counters and
hyperparameters), makes a plan of it (``Engine.new_plan``), and steps the plans with
:meth:`Engine.step`, which returns an :class:`Outcome`.

``Engine`` is the compiled engine (``fusedadam._kernels``), or its NumPy twin
(``engine/_python.py``) where the extension is not built.
"""

from typing import Any

from fusedadam.engine._policy import NonFinitePolicy, Outcome, needs_scan, nonfinite_outcome
from fusedadam.engine._spec import GroupSpec, HyperSpec, Positions

__all__ = [
    "Engine",
    "GroupSpec",
    "HyperSpec",
    "NonFinitePolicy",
    "Outcome",
    "Positions",
    "needs_scan",
    "nonfinite_outcome",
]

# The step engine class (the compiled one, or the NumPy twin): declared for type checkers,
# bound on first use by __getattr__ below.
Engine: Any


def __getattr__(name: str) -> Any:
    # Resolved on first use: the compiled module imports this package's _policy while it
    # loads, so the engine cannot be looked up while this package itself is loading.
    if name == "Engine":
        from fusedadam._backend import _kernels

        if _kernels is not None:
            engine = _kernels.Engine
        else:
            from fusedadam.engine._python import Engine as engine
        globals()["Engine"] = engine
        return engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
