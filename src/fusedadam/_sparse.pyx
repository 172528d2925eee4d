# cython: language_level=3
"""Compiled SparseAdam: one fused pass over the touched rows of a 2-D table.

The caller (``fusedadam.sparse``) has validated everything and grouped the gradient rows:
``rows`` holds the distinct touched rows in increasing order, and the gradient of
``rows[u]`` is the sum, in order of appearance, of ``values[order[starts[u]]]``,
``values[order[starts[u] + 1]]``, ... up to ``starts[u + 1]``. Each distinct row is written
by exactly one thread, so threads never write the same memory and no reduction crosses
threads: 1 and N threads give identical bits.

The per-element arithmetic is in ``_sparse_rows.h``, compiled per instruction set and
chosen at run time; it follows ``torch.optim._functional.sparse_adam`` operation by
operation (``reference.sparse_adam_update`` is its NumPy twin).
"""
from libc.stdlib cimport malloc, free
from libc.stddef cimport ptrdiff_t
cimport numpy as cnp
from cython.parallel cimport prange, threadid

from fusedadam._openmp cimport FA_OPENMP_ENABLED

cnp.import_array()

cdef extern from "_sparse_rows.h" nogil:
    ctypedef struct fa_sparse_scalars:
        double sign
        double one_minus_beta1
        double one_minus_beta2
        double step_size
        double eps
    ctypedef void (*fa_row_fn)(void *param, void *exp_avg, void *exp_avg_sq,
                               const void *grad, ptrdiff_t dim,
                               const fa_sparse_scalars *s) noexcept nogil
    ctypedef void (*fa_sum_fn)(void *out, const void *values, const ptrdiff_t *order,
                               ptrdiff_t first, ptrdiff_t last, ptrdiff_t dim) noexcept nogil
    enum:
        FA_SP_FLOAT32
        FA_SP_FLOAT64
    fa_row_fn fa_sparse_get_row(int isa, int dtype)
    fa_sum_fn fa_sparse_get_sum(int isa, int dtype)

# The instruction set is the dense kernels' (fusedadam._kernels.set_isa, FUSEDADAM_SIMD):
# sparse_adam_step takes its index, so one switch selects every loop of the package.

# Below this many gradient elements (k * dim) a step runs on the calling thread; the same
# value as the dense kernels' threshold (measured there with bench/threshold.py).
cdef Py_ssize_t _parallel_min_elements = 32768


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FA_OPENMP_ENABLED)


def get_parallel_threshold():
    """Smallest k * dim split over threads."""
    return _parallel_min_elements


def set_parallel_threshold(Py_ssize_t n_elements):
    """Set the serial/parallel threshold (tests use 0 to force the parallel path)."""
    global _parallel_min_elements
    if n_elements < 0:
        raise ValueError("the parallel threshold must be >= 0")
    _parallel_min_elements = n_elements


cdef inline void _one_row(char *param, char *exp_avg, char *exp_avg_sq, const char *values,
                          const ptrdiff_t *rows, const ptrdiff_t *order,
                          const ptrdiff_t *starts, Py_ssize_t u, Py_ssize_t row_bytes,
                          Py_ssize_t dim, char *scratch, fa_row_fn row_fn,
                          fa_sum_fn sum_fn, const fa_sparse_scalars *s) noexcept nogil:
    cdef Py_ssize_t first = starts[u], last = starts[u + 1]
    cdef Py_ssize_t offset = rows[u] * row_bytes
    cdef const char *grad
    if last - first == 1:
        grad = values + order[first] * row_bytes
    else:
        # Duplicated row: sum its gradient rows into this thread's scratch row first.
        sum_fn(scratch, values, order, first, last, dim)
        grad = scratch
    row_fn(param + offset, exp_avg + offset, exp_avg_sq + offset, grad, dim, s)


cdef void _run(char *param, char *exp_avg, char *exp_avg_sq, const char *values,
               const ptrdiff_t *rows, const ptrdiff_t *order, const ptrdiff_t *starts,
               Py_ssize_t n_rows, Py_ssize_t k, Py_ssize_t dim, Py_ssize_t itemsize,
               char *scratch, fa_row_fn row_fn, fa_sum_fn sum_fn,
               const fa_sparse_scalars *s, int n_threads) noexcept nogil:
    cdef Py_ssize_t u, row_bytes = dim * itemsize
    if n_threads <= 1 or k * dim < _parallel_min_elements:
        for u in range(n_rows):
            _one_row(param, exp_avg, exp_avg_sq, values, rows, order, starts, u,
                     row_bytes, dim, scratch, row_fn, sum_fn, s)
        return
    for u in prange(n_rows, num_threads=n_threads, schedule="static"):
        _one_row(param, exp_avg, exp_avg_sq, values, rows, order, starts, u, row_bytes,
                 dim, scratch + threadid() * row_bytes if scratch != NULL else NULL,
                 row_fn, sum_fn, s)


cdef inline bint _table(cnp.ndarray a, int typenum, Py_ssize_t n, Py_ssize_t dim):
    return (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_DIM(a, 0) == n and cnp.PyArray_DIM(a, 1) == dim
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a))


def sparse_adam_step(cnp.ndarray param, cnp.ndarray exp_avg, cnp.ndarray exp_avg_sq,
                     cnp.ndarray values, const Py_ssize_t[::1] rows,
                     const Py_ssize_t[::1] order, const Py_ssize_t[::1] starts,
                     tuple scalars, int n_threads, int isa):
    """Update the rows ``rows`` of ``param``, ``exp_avg``, ``exp_avg_sq`` in place.

    ``scalars`` is ``(sign, 1 - beta1, 1 - beta2, step_size, eps)`` in double; the loops
    cast them to the table's dtype. ``isa`` indexes the instruction sets of
    ``fusedadam._kernels.ISA_NAMES`` (``_kernels.isa_index()``). The arguments must come from ``fusedadam.sparse``
    (rows distinct and in range): only shapes, dtypes and layout are re-checked here.
    """
    cdef fa_sparse_scalars s
    cdef int typenum = cnp.PyArray_TYPE(param), dtype
    cdef Py_ssize_t n_table, dim, k = order.shape[0], n_rows = rows.shape[0]
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(param)
    cdef char *scratch = NULL
    if typenum == cnp.NPY_FLOAT32:
        dtype = FA_SP_FLOAT32
    elif typenum == cnp.NPY_FLOAT64:
        dtype = FA_SP_FLOAT64
    else:
        raise ValueError("param must be float32 or float64")
    if cnp.PyArray_NDIM(param) != 2:
        raise ValueError("param must be 2-D")
    n_table, dim = cnp.PyArray_DIM(param, 0), cnp.PyArray_DIM(param, 1)
    if (not _table(param, typenum, n_table, dim) or not cnp.PyArray_ISWRITEABLE(param)
            or not _table(exp_avg, typenum, n_table, dim)
            or not cnp.PyArray_ISWRITEABLE(exp_avg)
            or not _table(exp_avg_sq, typenum, n_table, dim)
            or not cnp.PyArray_ISWRITEABLE(exp_avg_sq)
            or not _table(values, typenum, k, dim)):
        raise ValueError("arrays were not validated (dtype, shape or layout)")
    if starts.shape[0] != n_rows + 1 or (n_rows > 0 and starts[n_rows] != k):
        raise ValueError("inconsistent row grouping")
    if n_rows == 0 or dim == 0:
        return
    s.sign, s.one_minus_beta1, s.one_minus_beta2, s.step_size, s.eps = scalars
    if n_threads < 1:
        n_threads = 1
    if isa < 0 or isa > 2:
        raise ValueError(f"unknown instruction set index {isa}")
    if n_rows < k:
        scratch = <char *>malloc(n_threads * dim * itemsize)
        if scratch == NULL:
            raise MemoryError()
    try:
        with nogil:
            _run(<char *>cnp.PyArray_DATA(param), <char *>cnp.PyArray_DATA(exp_avg),
                 <char *>cnp.PyArray_DATA(exp_avg_sq), <const char *>cnp.PyArray_DATA(values),
                 <const ptrdiff_t *>&rows[0], <const ptrdiff_t *>&order[0],
                 <const ptrdiff_t *>&starts[0], n_rows, k, dim, itemsize, scratch,
                 fa_sparse_get_row(isa, dtype), fa_sparse_get_sum(isa, dtype), &s,
                 n_threads)
    finally:
        free(scratch)
