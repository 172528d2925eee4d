"""Type stub of the compiled module ``fusedadam._kernels`` (``_kernels.pyx``)."""
from typing import Dict, Final, List, Literal, Optional, Sequence, Tuple

import numpy as np

_ISAName = Literal["baseline", "avx2", "avx512"]

# Loop kinds (the numbers functional.py uses).
ADAM: Final[int]
ADAM_L2: Final[int]
AMSGRAD: Final[int]
AMSGRAD_L2: Final[int]
ADAMAX: Final[int]
ADAMAX_L2: Final[int]
PROBE: Final[int]

ISA_NAMES: Final[Tuple[_ISAName, _ISAName, _ISAName]]

# Non-finite gradient policies as StepPlan configs code them.
NONFINITE_CODES: Final[Dict[str, int]]

def openmp_enabled() -> bool:
    """True when the extension was compiled with OpenMP."""

def max_threads() -> int:
    """OpenMP's current default team size (follows OMP_NUM_THREADS and threadpoolctl)."""

def num_procs() -> int:
    """Processors available to OpenMP (1 in a serial build)."""

def best_isa() -> _ISAName:
    """Name of the widest instruction set this CPU runs and this build has loops for."""

def get_isa() -> _ISAName:
    """Name of the instruction set whose loops are in use."""

def set_isa(name: _ISAName) -> None:
    """Use the loops of instruction set ``name`` (not wider than ``best_isa()``)."""

def isa_index() -> int:
    """``ISA_NAMES.index(get_isa())``, for the other compiled modules' dispatch."""

def forked_child() -> bool:
    """True in a process forked from one that imported fusedadam (steps run serially)."""

def get_parallel_threshold() -> int:
    """Smallest number of elements in a call that is split over threads."""

def set_parallel_threshold(n_elements: int) -> None:
    """Set the serial/parallel threshold (for benchmarks measuring it)."""

class GroupKernel:
    """Validated pointer tables of one parameter group, reused step after step."""

    @property
    def params(self) -> Tuple[np.ndarray, ...]: ...
    @property
    def exp_avgs(self) -> Tuple[np.ndarray, ...]: ...
    @property
    def seconds(self) -> Tuple[np.ndarray, ...]: ...
    @property
    def thirds(self) -> Optional[Tuple[np.ndarray, ...]]: ...
    def __init__(
        self,
        params: Sequence[np.ndarray],
        exp_avgs: Sequence[np.ndarray],
        seconds: Sequence[np.ndarray],
        thirds: Optional[Sequence[np.ndarray]],
        written_lo: Sequence[int],
        written_hi: Sequence[int],
    ) -> None: ...
    @property
    def n_elements(self) -> int:
        """Total number of parameter elements in the group."""
    def prepare(self, params: list, grads: list, grad_offset: int, kind: int) -> int:
        """Check ``params`` and the gradients for a step of loop ``kind``; write nothing."""
    def run(self, scalars: Tuple[float, ...], n_threads: int) -> None:
        """Run the step prepared by ``prepare`` with the 10 per-step scalars, in place."""
    @property
    def prepared_grads(self) -> Optional[Tuple[list, int]]:
        """``(grads, offset)`` of the last successful ``prepare``, or None."""
    def first_nonfinite(self, n_threads: int) -> Optional[Tuple[int, int]]:
        """After ``prepare``: ``(k, i)`` of the first NaN/inf in the gradients, or None."""

class StepPlan:
    """An optimizer's steady-state step, run entirely in compiled code."""

    def __init__(
        self,
        groups: Sequence[dict],
        kernels: Sequence[GroupKernel],
        keys: Sequence[str],
        steps: List[int],
        configs: Sequence[tuple],
    ) -> None: ...
    def step(self, grads: object) -> int:
        """0: stepped; 1: skipped (non-finite, policy "skip"); -1: run the Python path."""

def probe(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    thirds: Optional[Sequence[np.ndarray]] = ...,
    n_threads: int = ...,
) -> None:
    """Run the bandwidth probe (loop kind ``PROBE``) once over lists of arrays, in place."""
