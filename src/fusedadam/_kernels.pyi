"""Type stub of the compiled module ``fusedadam._kernels`` (``_kernels.pyx``)."""

from typing import Any, Dict, Final, List, Literal, Optional, Sequence, Tuple

import numpy as np

_ISAName = Literal["baseline", "avx2", "avx512", "neon", "sve"]

# The names behind the numbers of the C headers (_dispatch.h, _loops.h, _scalars.h).
ISA_NAMES: Final[Tuple[_ISAName, ...]]
LOOP_KINDS: Final[Tuple[str, ...]]
ALGORITHMS: Final[Tuple[str, ...]]
DTYPES: Final[Tuple[str, ...]]
SCALAR_FIELDS: Final[Tuple[str, ...]]
HYPER_FIELDS: Final[Tuple[str, ...]]
MAX_NUM_THREADS: Final[int]
Q8_BLOCK: Final[int]
MAX_STATE_SLOTS: Final[int]

def openmp_enabled() -> bool:
    """True when the extension was compiled with OpenMP."""

def max_threads() -> int:
    """OpenMP's current default team size (follows OMP_NUM_THREADS and threadpoolctl)."""

def num_procs() -> int:
    """Processors available to OpenMP (1 in a serial build)."""

def effective_num_threads(spec: Optional[int]) -> int:
    """The number of threads a step with ``num_threads=spec`` uses now."""

def best_isa() -> _ISAName:
    """Name of the widest instruction set this CPU runs and this build has loops for."""

def get_isa() -> _ISAName:
    """Name of the instruction set whose loops are in use."""

def set_isa(name: _ISAName) -> None:
    """Use the loops of instruction set ``name`` (not wider than ``best_isa()``)."""

def get_scan_task_size() -> int:
    """Elements per task of the parallel gradient scan (for tests and benchmarks)."""

def set_scan_task_size(n_elements: int) -> None:
    """Set the elements per task of the parallel gradient scan (rounded down to whole
    chunks, at least one; for tests and benchmarks: no result depends on it)."""

def get_update_task_size() -> int:
    """Elements per task of the parallel update (for tests and benchmarks)."""

def set_update_task_size(n_elements: int) -> None:
    """Set the elements per task of the parallel update (rounded down to whole chunks, at
    least one; for tests and benchmarks: no result depends on it)."""

def get_chunk_size() -> int:
    """Elements per chunk: a call over more elements than this is split over threads."""

def set_chunk_size(n_elements: int) -> None:
    """Set the elements per chunk (a multiple of 16; for tests and benchmarks)."""

def step_scalars(
    hyper: Dict[str, Any], t: float, lr: float, mu_product: float = ...
) -> Tuple[str, Dict[str, float], float]:
    """``(loop kind name, scalars dict, mu_product after)`` of step ``t``."""

class GroupPlan:
    """A validated group: its pointer tables, hyperparameters and what the user sees."""

    @property
    def group(self) -> dict: ...
    @property
    def state_names(self) -> Tuple[str, ...]: ...
    @property
    def state_dtype(self) -> Optional[str]: ...
    @property
    def master(self) -> str: ...
    @property
    def masters(self) -> Tuple[Optional[np.ndarray], ...]: ...
    @property
    def last_grad_norm(self) -> Optional[float]: ...
    @property
    def installs(self) -> Optional[list]: ...
    @property
    def numpy_backend(self) -> bool: ...
    @property
    def nonfinite(self) -> Any: ...
    @property
    def first_index(self) -> Any:
        """The params' first position (an int), or ``engine.Positions``."""
    @property
    def slots(self) -> Tuple[Optional[Tuple[np.ndarray, ...]], ...]:
        """Per slot (params, None for the gradients, then the state), one array per param."""
    def __init__(self, spec: Any) -> None: ...
    def set_hyper(self, spec: Any) -> None:
        """Take a validated ``HyperSpec`` (the group's hyperparameters now)."""
    def last_step(self) -> Tuple[str, Dict[str, float], int]:
        """``(loop kind name, scalars dict, n_threads)`` of the last step prepared."""

class Engine:
    """Steps planned groups: every per-step rule, once, for every backend."""

    def __init__(self) -> None: ...
    def invalidate(self) -> None:
        """Forget the plans: the next step returns ``Outcome.PLAN``."""
    def set_plans(self, groups: Any, plans: Sequence[GroupPlan]) -> None:
        """Step ``plans`` (one per group of the list ``groups``) from now on."""
    def set_hyper(self, gi: int, spec: Any) -> None:
        """Group ``gi``'s re-validated hyperparameters (after ``Outcome.HYPER``)."""
    def stale_groups(self) -> List[int]:
        """The groups whose hyperparameters the last ``Outcome.HYPER`` found changed."""
    def snapshot(self) -> None:
        """The caller attached the new state: watch the state dicts as they are now."""
    @staticmethod
    def new_plan(spec: Any) -> GroupPlan:
        """The plan of one validated group (a ``GroupSpec``)."""
    @property
    def plans(self) -> Optional[List[GroupPlan]]: ...
    def step(self, grads: Any, grad_scale: Any = None) -> int:
        """An ``Outcome``: RAN, SKIPPED, PLAN, HYPER or RAN_NEW_STATE."""
    def grad_norms(self) -> List[Optional[float]]:
        """Per group, the gradient norm of the last step (None: the group does not clip)."""
    def set_grad_norms(self, norms: Sequence[Optional[float]]) -> None:
        """Restore ``grad_norms()`` (an unpickled optimizer keeps its ``last_grad_norm``)."""

def sparse_first_nonfinite(values: np.ndarray) -> int:
    """Flat index of the first NaN/inf of validated ``values``, or -1."""

def sparse_adam_step(
    param: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    scalars: Dict[str, float],
    num_threads: Optional[int],
) -> None:
    """Update the rows ``rows`` of ``param``, ``exp_avg``, ``exp_avg_sq`` in place."""

def constants() -> Dict[str, int]:
    """The numbers of the C headers that the NumPy twin and the Python engine follow too."""

def element_bytes() -> Dict[str, int]:
    """Bytes per element of each storage type (_convert.h's table)."""
