"""Type stub of the compiled SparseAdam module (``_sparse.pyx``)."""
import numpy as np
import numpy.typing as npt

def openmp_enabled() -> bool: ...
def get_parallel_threshold() -> int: ...
def set_parallel_threshold(n_elements: int) -> None: ...
def sparse_adam_step(
    param: npt.NDArray[np.floating],
    exp_avg: npt.NDArray[np.floating],
    exp_avg_sq: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    order: npt.NDArray[np.intp],
    starts: npt.NDArray[np.intp],
    scalars: tuple[float, float, float, float, float],
    n_threads: int,
    isa: int,
) -> None: ...
