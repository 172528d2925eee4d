# cython: language_level=3
"""Compiled SparseAdam: one fused pass over the touched rows of a 2-D table.

The caller (``fusedadam.sparse``) has validated everything and grouped the gradient rows:
``rows`` holds the distinct touched rows in increasing order, and the gradient of
``rows[u]`` is the sum, in order of appearance, of ``values[order[starts[u]]]``,
``values[order[starts[u] + 1]]``, ... up to ``starts[u + 1]``. Each distinct row is written
by exactly one thread, so threads never write the same memory and no reduction crosses
threads: 1 and N threads give identical bits.

The per-element arithmetic follows ``torch.optim._functional.sparse_adam`` operation by
operation (see ``reference.sparse_adam_update``, its NumPy twin).
"""
from libc.math cimport sqrt
from cython.parallel cimport prange

from fusedadam._openmp cimport FA_OPENMP_ENABLED

ctypedef fused floating:
    float
    double

# Below this many gradient elements (k * dim) a step runs on the calling thread; the same
# order of magnitude as the dense kernels' threshold (bench/threshold.py there).
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


cdef inline void _update_row(floating *param, floating *exp_avg, floating *exp_avg_sq,
                             const floating *grad, Py_ssize_t dim, floating sign,
                             floating one_minus_beta1, floating one_minus_beta2,
                             floating step_size, floating eps) noexcept nogil:
    """One row, one gradient row (no duplicates): the common case, kept simple to vectorize."""
    cdef Py_ssize_t j
    cdef floating g, m_old, v_old, m_new, v_new, denom
    for j in range(dim):
        g = grad[j] * sign
        m_old = exp_avg[j]
        v_old = exp_avg_sq[j]
        # torch's order: old + (new - old) * (1 - beta); numer and denom from the new values.
        m_new = m_old + (g - m_old) * one_minus_beta1
        v_new = v_old + (g * g - v_old) * one_minus_beta2
        exp_avg[j] = m_new
        exp_avg_sq[j] = v_new
        # libc sqrt is double; sqrt of a float rounded back to float is the correctly
        # rounded float sqrt, and the cast keeps every later operation in the table's dtype.
        denom = <floating>sqrt(v_new)
        denom = denom + eps
        param[j] = param[j] - step_size * (m_new / denom)


cdef inline void _update_row_summed(floating *param, floating *exp_avg, floating *exp_avg_sq,
                                    const floating *values, const Py_ssize_t *order,
                                    Py_ssize_t first, Py_ssize_t last, Py_ssize_t dim,
                                    floating sign, floating one_minus_beta1,
                                    floating one_minus_beta2, floating step_size,
                                    floating eps) noexcept nogil:
    """One row touched by several gradient rows: sum them left to right, then update."""
    cdef Py_ssize_t j, o
    cdef floating g, m_old, v_old, m_new, v_new, denom
    for j in range(dim):
        g = values[order[first] * dim + j]
        for o in range(first + 1, last):
            g = g + values[order[o] * dim + j]
        g = g * sign
        m_old = exp_avg[j]
        v_old = exp_avg_sq[j]
        m_new = m_old + (g - m_old) * one_minus_beta1
        v_new = v_old + (g * g - v_old) * one_minus_beta2
        exp_avg[j] = m_new
        exp_avg_sq[j] = v_new
        # libc sqrt is double; sqrt of a float rounded back to float is the correctly
        # rounded float sqrt, and the cast keeps every later operation in the table's dtype.
        denom = <floating>sqrt(v_new)
        denom = denom + eps
        param[j] = param[j] - step_size * (m_new / denom)


cdef void _run(floating[:, ::1] param, floating[:, ::1] exp_avg,
               floating[:, ::1] exp_avg_sq, const floating[:, ::1] values,
               const Py_ssize_t[::1] rows, const Py_ssize_t[::1] order,
               const Py_ssize_t[::1] starts, floating sign, floating one_minus_beta1,
               floating one_minus_beta2, floating step_size, floating eps,
               int n_threads) noexcept nogil:
    cdef Py_ssize_t n_rows = rows.shape[0], dim = param.shape[1], u, row, first, last
    if n_rows == 0 or dim == 0:
        return
    if n_threads <= 1 or values.shape[0] * dim < _parallel_min_elements:
        for u in range(n_rows):
            row, first, last = rows[u], starts[u], starts[u + 1]
            if last - first == 1:
                _update_row(&param[row, 0], &exp_avg[row, 0], &exp_avg_sq[row, 0],
                            &values[order[first], 0], dim, sign, one_minus_beta1,
                            one_minus_beta2, step_size, eps)
            else:
                _update_row_summed(&param[row, 0], &exp_avg[row, 0], &exp_avg_sq[row, 0],
                                   &values[0, 0], &order[0], first, last, dim, sign,
                                   one_minus_beta1, one_minus_beta2, step_size, eps)
        return
    for u in prange(n_rows, num_threads=n_threads, schedule="static", nogil=True):
        row = rows[u]
        first = starts[u]
        last = starts[u + 1]
        if last - first == 1:
            _update_row(&param[row, 0], &exp_avg[row, 0], &exp_avg_sq[row, 0],
                        &values[order[first], 0], dim, sign, one_minus_beta1,
                        one_minus_beta2, step_size, eps)
        else:
            _update_row_summed(&param[row, 0], &exp_avg[row, 0], &exp_avg_sq[row, 0],
                               &values[0, 0], &order[0], first, last, dim, sign,
                               one_minus_beta1, one_minus_beta2, step_size, eps)


def sparse_adam_step(floating[:, ::1] param, floating[:, ::1] exp_avg,
                     floating[:, ::1] exp_avg_sq, const floating[:, ::1] values,
                     const Py_ssize_t[::1] rows, const Py_ssize_t[::1] order,
                     const Py_ssize_t[::1] starts, tuple scalars, int n_threads):
    """Update the rows ``rows`` of ``param``, ``exp_avg``, ``exp_avg_sq`` in place.

    ``scalars`` is ``(sign, 1 - beta1, 1 - beta2, step_size, eps)`` in double; they are
    cast to the table's dtype. Arguments must come from ``fusedadam.sparse`` (validated:
    rows in range and distinct, ``starts`` of length ``len(rows) + 1`` ending at
    ``len(order) == values.shape[0]``); the loop itself checks nothing.
    """
    cdef double sign, omb1, omb2, step_size, eps
    sign, omb1, omb2, step_size, eps = scalars
    if starts.shape[0] != rows.shape[0] + 1 or order.shape[0] != values.shape[0]:
        raise ValueError("inconsistent row grouping")
    with nogil:
        _run(param, exp_avg, exp_avg_sq, values, rows, order, starts, <floating>sign,
             <floating>omb1, <floating>omb2, <floating>step_size, <floating>eps, n_threads)
