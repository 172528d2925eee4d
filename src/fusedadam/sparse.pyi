"""Type stub of ``fusedadam.sparse``: SparseAdam's public API."""

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from fusedadam.optim import Optimizer, _Backend, _LearningRate, _NonFinite, _Params, _StateDict

__all__ = ["SparseAdam", "group_rows"]

_Array = np.ndarray[Any, np.dtype[Any]]
# One (indices, values) pair per parameter table: rows touched and their gradient rows.
_SparseGrads = Sequence[Tuple[_Array, _Array]]

def group_rows(indices: _Array) -> Tuple[_Array, _Array, _Array]: ...

class SparseAdam(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...
    def step(self, grads: Union[_SparseGrads, Tuple[_Array, _Array]]) -> None: ...  # type: ignore[override]
    def state_dict(self) -> _StateDict: ...
