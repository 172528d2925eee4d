"""Type stub of ``fusedadam.optim``: the optimizer classes' public API."""

from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

_Array = np.ndarray[Any, np.dtype[np.floating[Any]]]
# A number, or a callable of the step number t = 1, 2, ... (a fusedadam.schedules object).
_LearningRate = Union[float, Callable[[int], float]]
_Params = Union[_Array, Sequence[_Array], Sequence[Dict[str, Any]]]
_Grads = Union[_Array, Sequence[_Array]]
_Backend = Literal["auto", "compiled", "numpy"]
_NonFinite = Literal["error", "skip", "ignore"]
_StateDict = Dict[str, Any]

__all__ = ["Optimizer", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "AdaBelief", "Lion"]

class _ParamState:
    def __init__(self, on_change: Optional[Callable[[], None]] = None) -> None: ...
    def __getitem__(self, param: _Array) -> Dict[str, _Array]: ...
    def __setitem__(self, param: _Array, state: Dict[str, _Array]) -> None: ...
    def __delitem__(self, param: _Array) -> None: ...
    def items(self) -> List[Tuple[_Array, Dict[str, _Array]]]: ...
    def __contains__(self, param: object) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[_Array]: ...
    def get(self, param: _Array, default: Any = None) -> Optional[Dict[str, _Array]]: ...

class Optimizer:
    algorithm: Any
    defaults: Dict[str, Any]
    param_groups: List[Dict[str, Any]]
    state: _ParamState
    skipped_steps: int
    def __init__(self, params: _Params, defaults: Dict[str, Any]) -> None: ...
    def add_param_group(self, param_group: Mapping[str, Any]) -> None: ...
    def step(self, grads: _Grads) -> None: ...
    def state_dict(self) -> _StateDict: ...
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...

class Adam(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        bias_correction: bool = True,
        beta1_decay: float = 1.0,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
        decoupled_weight_decay: bool = False,
    ) -> None: ...

class AdamW(Adam):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        bias_correction: bool = True,
        beta1_decay: float = 1.0,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...

class Adamax(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 2e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        bias_correction: bool = True,
        beta1_decay: float = 1.0,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...

class NAdam(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 2e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...

class RAdam(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...

class AdaBelief(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        eps_root: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...

class Lion(Optimizer):
    def __init__(
        self,
        params: _Params,
        lr: _LearningRate = 1e-4,
        betas: Tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 1e-3,
        maximize: bool = False,
        num_threads: Optional[int] = None,
        backend: _Backend = "auto",
        nonfinite: _NonFinite = "error",
    ) -> None: ...
