"""The numbers of the C headers that Python follows too, with one owner: the extension.

Block, chunk and piece sizes and the lanes that order every sum are defined in
the C headers; the NumPy twin (``reference.py``), the Python engine and the storage rules
(``_precision.py``) must use the same numbers for the bit-exact contract. They are read
from the compiled extension (``_kernels.constants()``); the values below are used only where
it is not built (a pure-NumPy install), and a test checks that they are the extension's.
They are attributes of this module: ``_constants.Q8_BLOCK``, ..., and ``CONSTANTS``.
"""

import functools

_WITHOUT_EXTENSION = {
    "Q8_BLOCK": 256,  # FA_Q8_BLOCK (_q8.h): elements per 8-bit scale
    "POOL_GRAIN": 16384,  # FA_POOL_GRAIN (_pool.h): elements per chunk
    "TENSOR_PIECE": 16384,  # FA_TENSOR_PIECE (_loops.h): elements per per-tensor piece
    "TENSOR_LANES": 8,  # FA_TENSOR_LANES (_loops.h): lanes of a per-tensor sum
    "NORM_LANES": 8,  # FA_NORM_LANES (_gradscan.h): lanes of the gradient norm's sum
    "SCAN_BLOCK": 2048,  # FA_SCAN_BLOCK (_finite.h): elements per scan block
    "MAX_CARRY": 2,  # FA_MAX_CARRY (_scalars.h): per-param scalar state values
    "MAX_STATE_SLOTS": 4,  # FA_MAX_SLOTS - FA_STATE0 (_dispatch.h): state arrays per loop
}


def __getattr__(name):
    # Read on first use, never at import: the extension imports reference.py and
    # _validation.py, which use these numbers, while it is being imported itself.
    values = _values()
    if name == "CONSTANTS":
        return values
    if name in values:
        return values[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _values():
    try:
        from fusedadam._kernels import constants
    except ImportError:  # not built: the NumPy reference runs every step
        return dict(_WITHOUT_EXTENSION)
    return constants()
