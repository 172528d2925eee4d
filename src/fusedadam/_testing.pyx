# cython: language_level=3
"""Kernels for the tests and the benchmarks, kept out of the production module.

``Probe`` (the bandwidth probe: a step's memory traffic with trivial arithmetic, the
roofline of ``python -m fusedadam bench``), the bfloat16/float16 conversions and the 8-bit
codec of ``_convert.h`` and ``_q8.h`` one element at a time (compared with ml_dtypes, NumPy and
``fusedadam.reference`` in the tests), and the steps-in-flight counter. They run through
the pointer tables and loops of ``fusedadam._kernels`` (``_kernels.pxd``), so what they
measure and check is what a step runs. Built with ``_kernels``; without the extension
neither module exists and the tests that need them skip.
"""
from fusedadam._kernels cimport (
    FA_KIND_probe, FA_KIND_probe_read, FA_MAX_SLOTS, FA_PARAM, FA_STATE0, GroupData,
    _current_isa, _data,
    _group_alloc, _group_free, _reserve_chunks, _run, _steps_in_flight_most,
    fa_bf16_to_f32, fa_f16_to_f32, fa_f32_to_bf16, fa_f32_to_f16, fa_get_grad_fns,
    fa_get_loops, fa_q8_code, fa_q8_value,
)
cimport numpy as cnp

from fusedadam._kernels import DTYPES as _DTYPES

cnp.import_array()


def steps_in_flight_high_water(bint reset=True):
    """The most steps (any optimizers, any threads) seen inside their GIL-free section at
    once since the last reset; for the tests that check steps run concurrently."""
    return _steps_in_flight_most(reset)


# ------------------------------------------------------------------ the roofline probe

cdef class Probe:
    """The bandwidth probe (loop kind ``probe``) over fixed lists of arrays, for benchmarks.

    Moves a step's bytes (reads p, g and each list of state arrays given; writes p and the
    states back) with trivial arithmetic, ``s += g`` for each state and ``p -= g``, exactly
    as ``reference.probe_update``, through the same pointer tables and thread split as a
    step: the roofline of the benchmarks. The arrays must be acceptable to an optimizer
    (same dtype and shape, C-contiguous, writeable, not aliasing); ``run`` re-checks nothing.

    With ``read_only=True`` (loop kind ``probe_read``) it reads p, g and the state arrays
    (0 to 4 lists) and writes nothing: the traffic of a pass that only reads, such as the
    non-finite check's scan or a per-tensor kind's phase 1. Its arrays must hold written
    memory (a fresh ``np.zeros`` may read one shared zero page, not memory).
    """
    cdef GroupData d
    cdef tuple keep

    def __cinit__(self, params, grads, *states, bint read_only=False):
        cdef Py_ssize_t n = len(params), k
        cdef int slot
        cdef cnp.ndarray a
        cdef int fewest = 0 if read_only else 1
        if not fewest <= len(states) <= FA_MAX_SLOTS - FA_STATE0:
            raise ValueError(
                f"probe: {fewest} to {FA_MAX_SLOTS - FA_STATE0} lists of state arrays, "
                f"got {len(states)}")
        columns = [list(params), list(grads)] + [list(c) for c in states]
        self.keep = tuple(tuple(c) for c in columns)
        self.d.n_arrays = n
        self.d.n_slots = len(columns)
        self.d.kind = FA_KIND_probe_read if read_only else FA_KIND_probe
        _group_alloc(&self.d)
        self.d.offsets[0] = 0
        for k in range(n):
            a = self.keep[FA_PARAM][k]
            for slot in range(self.d.n_slots):
                c = self.keep[slot][k]
                if (not isinstance(c, cnp.ndarray) or (<cnp.ndarray>c).dtype != a.dtype
                        or (<cnp.ndarray>c).size != a.size
                        or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>c)):
                    raise ValueError("probe: every array must match its param "
                                     "(dtype, size, C-contiguous)")
                self.d.ptr[slot][k] = _data(c, self.d.offsets)
            dtype = _DTYPES.index(a.dtype.name) if a.dtype.name in _DTYPES else -1
            if dtype < 0:
                raise ValueError("probe: float32 or float64 arrays")
            self.d.loops[k] = fa_get_loops(_current_isa(), dtype)
            self.d.grad_fns[k] = fa_get_grad_fns(_current_isa(), dtype)
            self.d.types[4 * k] = self.d.types[4 * k + 1] = self.d.types[4 * k + 2] = dtype
            self.d.types[4 * k + 3] = -1
            self.d.lowp[k] = NULL
            self.d.offsets[k + 1] = self.d.offsets[k] + cnp.PyArray_SIZE(a)

    def __dealloc__(self):
        _group_free(&self.d)

    def run(self, int n_threads=1):
        """One probe pass over every array, in place, on ``n_threads`` threads."""
        if n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        _reserve_chunks(&self.d)
        with nogil:
            _run(&self.d, n_threads)


def probe(params, grads, *states, int n_threads=1, bint read_only=False):
    """One probe pass (see ``Probe``) over lists of arrays, in place."""
    Probe(params, grads, *states, read_only=read_only).run(n_threads)


# ------------------------------------------------------------------ conversions (tests)

cdef bint _is_bfloat16(str name, str argument) except -1:
    """True for "bfloat16", False for "float16"; anything else is an error."""
    if name not in ("bfloat16", "float16"):
        raise ValueError(f"{argument} must be 'bfloat16' or 'float16', got {name!r}")
    return name == "bfloat16"


def round_float32(const float[::1] values, str to):
    """The bits (uint16) of ``values`` rounded to ``"bfloat16"`` or ``"float16"`` by the
    conversions of _convert.h (round to nearest even), for the tests that compare them with
    ml_dtypes and NumPy."""
    import numpy as np
    cdef Py_ssize_t i, n = values.shape[0]
    out = np.empty(n, dtype=np.uint16)
    cdef unsigned short[::1] bits = out
    cdef bint bf16 = _is_bfloat16(to, "to")
    with nogil:
        for i in range(n):
            bits[i] = fa_f32_to_bf16(values[i]) if bf16 else fa_f32_to_f16(values[i])
    return out


def widen_to_float32(const unsigned short[::1] bits, str frm):
    """float32 values of bfloat16/float16 ``bits`` (uint16) by the conversions of _convert.h."""
    import numpy as np
    cdef Py_ssize_t i, n = bits.shape[0]
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] values = out
    cdef bint bf16 = _is_bfloat16(frm, "frm")
    with nogil:
        for i in range(n):
            values[i] = fa_bf16_to_f32(bits[i]) if bf16 else fa_f16_to_f32(bits[i])
    return out


def q8_values(const unsigned char[::1] codes, bint qsigned):
    """y(code) of the 8-bit map (signed or unsigned) by the decoder of _q8.h (tests)."""
    import numpy as np
    cdef Py_ssize_t i, n = codes.shape[0]
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] values = out
    with nogil:
        for i in range(n):
            values[i] = fa_q8_value(codes[i], qsigned)
    return out


def q8_codes(const float[::1] values, float absmax, bint qsigned):
    """Codes of ``values`` against ``absmax`` by the encoder of _q8.h (tests)."""
    import numpy as np
    cdef Py_ssize_t i, n = values.shape[0]
    out = np.empty(n, dtype=np.uint8)
    cdef unsigned char[::1] codes = out
    with nogil:
        for i in range(n):
            codes[i] = fa_q8_code(values[i], absmax, qsigned)
    return out
