"""Type stub of the compiled module ``fusedadam._testing`` (``_testing.pyx``): the test and
benchmark kernels."""

from typing import Sequence

import numpy as np

def steps_in_flight_high_water(reset: bool = ...) -> int:
    """The most steps seen inside their GIL-free section at once since the last reset."""

class Probe:
    """The bandwidth probe over fixed lists of arrays, for benchmarks."""

    def __init__(
        self,
        params: Sequence[np.ndarray],
        grads: Sequence[np.ndarray],
        *states: Sequence[np.ndarray],
        read_only: bool = ...,
    ) -> None: ...
    def run(self, n_threads: int = ...) -> None:
        """One probe pass over every array, in place, on ``n_threads`` threads."""

def probe(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    *states: Sequence[np.ndarray],
    n_threads: int = ...,
    read_only: bool = ...,
) -> None:
    """One probe pass over lists of arrays, in place."""

def round_float32(values: np.ndarray, to: str) -> np.ndarray:
    """The bits (uint16) of float32 ``values`` rounded to bfloat16/float16 by _convert.h."""

def widen_to_float32(bits: np.ndarray, frm: str) -> np.ndarray:
    """float32 values of bfloat16/float16 ``bits`` (uint16) by the conversions of _convert.h."""

def q8_values(codes: np.ndarray, qsigned: bool) -> np.ndarray:
    """y(code) of the 8-bit map (signed or unsigned) by the decoder of _q8.h (tests)."""

def q8_codes(values: np.ndarray, absmax: float, qsigned: bool) -> np.ndarray:
    """Codes of ``values`` against ``absmax`` by the encoder of _q8.h (tests)."""
