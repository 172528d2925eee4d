# cython: language_level=3
"""Compiled core of fusedadam.

One call per parameter group: ``GroupKernel.step`` gathers the gradient pointers with
C-level checks, releases the GIL, and splits the group's elements evenly over the threads
(across array boundaries, so arrays of very different sizes stay balanced). Each thread runs
the per-instruction-set loops of ``_loops.h`` over its slice. Everything that can fail is
checked before the GIL is released; the loops themselves cannot fail.

Python-facing validation and its error messages live in ``_validation.py``: when a fast
check here fails, the caller re-runs the Python validator, which raises the precise error.
"""
from libc.stdlib cimport malloc, free
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport uintptr_t
from libc.math cimport pow, sqrt, isfinite
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid

from fusedadam._openmp cimport (FA_OPENMP_ENABLED, fa_barrier, fa_max_threads, fa_num_procs,
                               fa_team_size)

cnp.import_array()

cdef extern from "_loops.h" nogil:
    ctypedef struct fa_scalars:
        double sign
        double weight_decay
        double decay
        double beta1
        double one_minus_beta1
        double beta2
        double one_minus_beta2
        double step_size
        double bc2_sqrt
        double eps
    ctypedef void (*fa_loop_fn)(void *param, const void *grad, void *exp_avg,
                                void *second, void *third, ptrdiff_t n,
                                const fa_scalars *s) noexcept nogil
    enum:
        FA_FLOAT32
        FA_FLOAT64
        FA_ADAM
        FA_ADAM_L2
        FA_AMSGRAD
        FA_AMSGRAD_L2
        FA_ADAMAX
        FA_ADAMAX_L2
        FA_PROBE
        FA_N_KINDS
        FA_ISA_BASELINE
        FA_ISA_AVX2
        FA_ISA_AVX512
        FA_HAVE_X86_DISPATCH
    int fa_cpu_best_isa()
    fa_loop_fn fa_get_loop(int isa, int dtype, int kind)

cdef extern from "_finite.h" nogil:
    ctypedef ptrdiff_t (*fa_scan_fn)(const void *grad, ptrdiff_t n) noexcept nogil
    fa_scan_fn fa_get_scan(int isa, int dtype)


# Loop kinds, exported for the Python layer.
ADAM = FA_ADAM
ADAM_L2 = FA_ADAM_L2
AMSGRAD = FA_AMSGRAD
AMSGRAD_L2 = FA_AMSGRAD_L2
ADAMAX = FA_ADAMAX
ADAMAX_L2 = FA_ADAMAX_L2
PROBE = FA_PROBE

ISA_NAMES = ("baseline", "avx2", "avx512")
cdef int _best_isa = fa_cpu_best_isa()
cdef int _isa = _best_isa

# Below this many elements in a call the step runs on the calling thread: waking the
# OpenMP team costs more than it saves. Measured with bench/threshold.py on the 2-vCPU
# Zen 3 dev VM with the other core idle (bench/results/threshold.json, README "Threads"):
# 2 threads vs 1 at 18588 elements 1.15x/1.15x/1.25x (Adamax f32 / Adam f32 / Adam f64),
# 1.01-1.21x at 13877, 0.6-0.96x at 7735-10361; at 24897 1.28x/1.30x/1.11x, and >= 1.1x
# at every larger size. A repeat put Adam f64 at 0.96x at 18588, so the threshold sits
# just below 24897, where every loop won in both runs. With another process busy on the
# second core the team loses at every size (bench/results/threshold_loaded.json), which
# no threshold can fix: on a busy machine use num_threads=1 (or OMP_WAIT_POLICY=passive).
cdef Py_ssize_t _parallel_min_elements = 24576

# Threads split a group at multiples of this many elements: 64 bytes of float32, so two
# threads never write the same cache line of an aligned array.
DEF SPLIT_GRAIN = 16
# Upper bound on the team of one call (sizes the per-thread scan results).
DEF MAX_THREADS = 256

# Set in a child process after os.fork(): GNU libgomp's thread pool does not survive
# fork, and entering a parallel region in the child can hang. The child runs serially.
# Only a parent that has started the pool is a hazard, so a child forked before any
# parallel step keeps its threads.
cdef bint _forked_child = False
cdef bint _pool_started = False


def _after_fork_in_child():
    global _forked_child
    if _pool_started:
        _forked_child = True


import os as _os
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_child():
    """True in a process forked from one that imported fusedadam (steps run serially)."""
    return bool(_forked_child)


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FA_OPENMP_ENABLED)


def max_threads():
    """OpenMP's current default team size (follows OMP_NUM_THREADS and threadpoolctl)."""
    return fa_max_threads()


def num_procs():
    """Processors available to OpenMP (1 in a serial build)."""
    return fa_num_procs()


def best_isa():
    """Name of the widest instruction set this CPU runs and this build has loops for."""
    return ISA_NAMES[_best_isa]


def get_isa():
    """Name of the instruction set whose loops are in use."""
    return ISA_NAMES[_isa]


def isa_index():
    """``ISA_NAMES.index(get_isa())``, for the other compiled modules' dispatch."""
    return _isa


def set_isa(name):
    """Use the loops of instruction set ``name`` (not wider than ``best_isa()``)."""
    global _isa
    if name not in ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r}; expected one of {ISA_NAMES}")
    cdef int wanted = ISA_NAMES.index(name)
    if wanted > _best_isa:
        raise ValueError(f"this CPU or build cannot run {name!r} (best: {ISA_NAMES[_best_isa]!r})")
    _isa = wanted


def get_parallel_threshold():
    """Smallest number of elements in a call that is split over threads."""
    return _parallel_min_elements


def set_parallel_threshold(Py_ssize_t n_elements):
    """Set the serial/parallel threshold (for benchmarks measuring it)."""
    global _parallel_min_elements
    if n_elements < 0:
        raise ValueError("the parallel threshold must be >= 0")
    _parallel_min_elements = n_elements


cdef struct GroupData:
    Py_ssize_t n_arrays
    char **param
    char **grad
    char **exp_avg
    char **second
    char **third
    Py_ssize_t *offsets         # n_arrays + 1 prefix sums of element counts
    Py_ssize_t *itemsize
    int *dtype
    fa_loop_fn *loop            # per array, filled each step for the step's kind
    fa_scalars scalars


cdef inline Py_ssize_t _split_point(Py_ssize_t total, Py_ssize_t t,
                                    Py_ssize_t n_threads) noexcept nogil:
    if t >= n_threads:
        return total
    # total * t cannot overflow: total < 2**48 elements on any real machine, t < 2**15.
    cdef Py_ssize_t at = (total * t) // n_threads
    return at - at % SPLIT_GRAIN


cdef inline Py_ssize_t _array_at(GroupData *d, Py_ssize_t element) noexcept nogil:
    """The last array whose first element is <= element (so empty arrays are skipped)."""
    cdef Py_ssize_t lo = 0, hi = d.n_arrays, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if d.offsets[mid] <= element:
            lo = mid
        else:
            hi = mid
    return lo


cdef Py_ssize_t _scan_range(GroupData *d, Py_ssize_t start, Py_ssize_t end,
                            int isa) noexcept nogil:
    """Global index of the first non-finite gradient value in [start, end), or -1."""
    cdef Py_ssize_t k, stop, found
    if start >= end:
        return -1
    k = _array_at(d, start)
    while start < end:
        stop = d.offsets[k + 1]
        if stop > end:
            stop = end
        if stop > start:
            found = fa_get_scan(isa, d.dtype[k])(
                d.grad[k] + (start - d.offsets[k]) * d.itemsize[k], stop - start)
            if found >= 0:
                return start + found
        start = stop
        k += 1
    return -1


cdef void _run_range(GroupData *d, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Run the step on global elements [start, end) of the group, array by array."""
    cdef Py_ssize_t k, stop, off, size
    cdef char *third
    if start >= end:
        return
    k = _array_at(d, start)
    while start < end:
        stop = d.offsets[k + 1]
        if stop > end:
            stop = end
        if stop > start:
            size = d.itemsize[k]
            off = (start - d.offsets[k]) * size
            third = d.third[k] + off if d.third[k] != NULL else NULL
            d.loop[k](d.param[k] + off, d.grad[k] + off, d.exp_avg[k] + off,
                      d.second[k] + off, third, stop - start, &d.scalars)
        start = stop
        k += 1


cdef inline int _team_size(GroupData *d, int n_threads) noexcept nogil:
    """Threads a call over this group uses: 1 below the threshold or after a fork."""
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    if _forked_child or total < _parallel_min_elements:
        return 1
    if n_threads > total // SPLIT_GRAIN:
        n_threads = <int>(total // SPLIT_GRAIN)
    if n_threads > MAX_THREADS:
        n_threads = MAX_THREADS
    return n_threads if n_threads > 1 else 1


cdef void _run(GroupData *d, int n_threads) noexcept nogil:
    global _pool_started
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    cdef Py_ssize_t t
    n_threads = _team_size(d, n_threads)
    if n_threads == 1:
        _run_range(d, 0, total)     # no parallel region at all: safe after fork()
        return
    _pool_started = True
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        _run_range(d, _split_point(total, t, n_threads), _split_point(total, t + 1, n_threads))


cdef Py_ssize_t _scan(GroupData *d, int n_threads, int isa,
                      Py_ssize_t *first_per_thread) noexcept nogil:
    global _pool_started
    """First non-finite gradient value of the group (global index), or -1.

    Threads scan the same slices they will update, so on in-cache sizes each core's
    gradients are still in its cache when the update reads them.
    """
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    cdef Py_ssize_t t, first = -1
    n_threads = _team_size(d, n_threads)
    if n_threads == 1:
        return _scan_range(d, 0, total, isa)
    _pool_started = True
    for t in prange(n_threads, num_threads=n_threads, schedule="static", chunksize=1):
        first_per_thread[t] = _scan_range(
            d, _split_point(total, t, n_threads), _split_point(total, t + 1, n_threads), isa)
    for t in range(n_threads):
        if first_per_thread[t] >= 0:
            return first_per_thread[t]
    return -1


cdef Py_ssize_t _checked_run(GroupData *d, int n_threads, int isa,
                             Py_ssize_t *first_per_thread) noexcept nogil:
    """Scan the gradients for NaN/inf and, only if there is none, run the step.

    One parallel region: each thread scans its slice, all meet at a barrier, and each then
    updates the same slice (still in its cache when it fits) unless any thread found a bad
    value. Returns the global index of the first bad value (nothing written), or -1.
    """
    global _pool_started
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    cdef Py_ssize_t start, end, found
    cdef int t, j, team
    cdef bint clean
    n_threads = _team_size(d, n_threads)
    if n_threads == 1:
        found = _scan_range(d, 0, total, isa)
        if found < 0:
            _run_range(d, 0, total)
        return found
    _pool_started = True
    for t in range(n_threads):
        first_per_thread[t] = -1
    with parallel(num_threads=n_threads):
        # The team OpenMP gives may be smaller than asked: slice by its real size.
        t = threadid()
        team = fa_team_size()
        start = _split_point(total, t, team)
        end = _split_point(total, t + 1, team)
        first_per_thread[t] = _scan_range(d, start, end, isa)
        fa_barrier()
        clean = True
        for j in range(team):
            if first_per_thread[j] >= 0:
                clean = False
        if clean:
            _run_range(d, start, end)
    for t in range(n_threads):
        if first_per_thread[t] >= 0:
            return first_per_thread[t]
    return -1


cdef inline int _dtype_code(cnp.ndarray a):
    cdef int typenum = cnp.PyArray_TYPE(a)
    if typenum == cnp.NPY_FLOAT32:
        return FA_FLOAT32
    if typenum == cnp.NPY_FLOAT64:
        return FA_FLOAT64
    return -1


cdef inline bint _writable_contiguous(cnp.ndarray a):
    return (cnp.PyArray_ISWRITEABLE(a) and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a))


cdef class GroupKernel:
    """Validated pointer tables of one parameter group, reused step after step.

    Built from arrays the Python validator has already accepted (float32/float64, C
    contiguous, aligned, writeable, state shaped like its param, no two written arrays
    overlapping). ``written_lo``/``written_hi`` are the sorted byte intervals of every
    written array, used to reject a gradient that aliases any of them.
    """
    cdef readonly tuple params
    cdef readonly tuple exp_avgs
    cdef readonly tuple seconds
    cdef readonly tuple thirds
    cdef GroupData d
    cdef uintptr_t *written_lo
    cdef uintptr_t *written_hi
    cdef Py_ssize_t n_written
    cdef object pending_grads
    cdef Py_ssize_t pending_offset
    cdef int pending_threads
    cdef Py_ssize_t first_per_thread[MAX_THREADS]

    def __cinit__(self, params, exp_avgs, seconds, thirds, written_lo, written_hi):
        cdef Py_ssize_t n = len(params), k
        cdef cnp.ndarray a
        self.params = tuple(params)
        self.exp_avgs = tuple(exp_avgs)
        self.seconds = tuple(seconds)
        self.thirds = tuple(thirds) if thirds is not None else None
        if (len(self.exp_avgs) != n or len(self.seconds) != n
                or (self.thirds is not None and len(self.thirds) != n)):
            raise ValueError("state lists must be as long as params")
        if len(written_lo) != len(written_hi):
            raise ValueError("written interval bounds differ in length")
        self.d.n_arrays = n
        self.d.param = <char **>malloc((n + 1) * sizeof(char *))
        self.d.grad = <char **>malloc((n + 1) * sizeof(char *))
        self.d.exp_avg = <char **>malloc((n + 1) * sizeof(char *))
        self.d.second = <char **>malloc((n + 1) * sizeof(char *))
        self.d.third = <char **>malloc((n + 1) * sizeof(char *))
        self.d.offsets = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
        self.d.itemsize = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
        self.d.dtype = <int *>malloc((n + 1) * sizeof(int))
        self.d.loop = <fa_loop_fn *>malloc((n + 1) * sizeof(fa_loop_fn))
        self.n_written = len(written_lo)
        self.written_lo = <uintptr_t *>malloc((self.n_written + 1) * sizeof(uintptr_t))
        self.written_hi = <uintptr_t *>malloc((self.n_written + 1) * sizeof(uintptr_t))
        if (not self.d.param or not self.d.grad or not self.d.exp_avg or not self.d.second
                or not self.d.third or not self.d.offsets or not self.d.itemsize
                or not self.d.dtype or not self.d.loop or not self.written_lo
                or not self.written_hi):
            raise MemoryError()
        for k in range(self.n_written):
            self.written_lo[k] = <uintptr_t>int(written_lo[k])
            self.written_hi[k] = <uintptr_t>int(written_hi[k])
        self.d.offsets[0] = 0
        for k in range(n):
            a = self.params[k]
            self.d.dtype[k] = _dtype_code(a)
            if self.d.dtype[k] < 0 or not _writable_contiguous(a):
                raise ValueError(f"params[{k}] was not validated")
            self.d.param[k] = <char *>cnp.PyArray_DATA(a)
            self.d.itemsize[k] = cnp.PyArray_ITEMSIZE(a)
            self.d.offsets[k + 1] = self.d.offsets[k] + cnp.PyArray_SIZE(a)
            self.d.grad[k] = NULL
            self.d.exp_avg[k] = self._state_pointer(self.exp_avgs[k], a, k)
            self.d.second[k] = self._state_pointer(self.seconds[k], a, k)
            self.d.third[k] = (self._state_pointer(self.thirds[k], a, k)
                               if self.thirds is not None else NULL)

    cdef char *_state_pointer(self, object state, cnp.ndarray param, Py_ssize_t k) except NULL:
        if not isinstance(state, cnp.ndarray):
            raise ValueError(f"state of params[{k}] was not validated")
        cdef cnp.ndarray s = state
        if (cnp.PyArray_TYPE(s) != cnp.PyArray_TYPE(param)
                or cnp.PyArray_SIZE(s) != cnp.PyArray_SIZE(param)
                or not _writable_contiguous(s)):
            raise ValueError(f"state of params[{k}] was not validated")
        # A zero-size array may have a NULL data pointer; never hand NULL to a loop.
        cdef char *p = <char *>cnp.PyArray_DATA(s)
        return p if p != NULL else <char *>self.d.offsets

    def __dealloc__(self):
        free(self.d.param)
        free(self.d.grad)
        free(self.d.exp_avg)
        free(self.d.second)
        free(self.d.third)
        free(self.d.offsets)
        free(self.d.itemsize)
        free(self.d.dtype)
        free(self.d.loop)
        free(self.written_lo)
        free(self.written_hi)

    @property
    def n_elements(self):
        """Total number of parameter elements in the group."""
        return self.d.offsets[self.d.n_arrays]

    cdef bint _aliases_written(self, uintptr_t lo, uintptr_t hi) noexcept:
        """True if [lo, hi) overlaps a written array (binary search, intervals disjoint)."""
        cdef Py_ssize_t a = 0, b = self.n_written, mid
        if lo >= hi or self.n_written == 0:
            return False
        # Find the last interval starting before hi.
        while b - a > 1:
            mid = (a + b) // 2
            if self.written_lo[mid] < hi:
                a = mid
            else:
                b = mid
        return self.written_lo[a] < hi and self.written_hi[a] > lo

    cdef bint _params_unchanged(self, list params):
        cdef Py_ssize_t k, n = self.d.n_arrays
        cdef cnp.ndarray a
        if len(params) != n:
            return False
        for k in range(n):
            if params[k] is not self.params[k]:
                return False
            a = self.params[k]
            if (not _writable_contiguous(a) or <char *>cnp.PyArray_DATA(a) != self.d.param[k]
                    or self.d.offsets[k + 1] - self.d.offsets[k] != cnp.PyArray_SIZE(a)):
                return False
            if not _state_unchanged(self.exp_avgs[k], self.d.exp_avg[k]):
                return False
            if not _state_unchanged(self.seconds[k], self.d.second[k]):
                return False
            if self.thirds is not None and not _state_unchanged(self.thirds[k], self.d.third[k]):
                return False
        return True

    def prepare(self, list params, list grads, Py_ssize_t grad_offset, int kind):
        """Check ``params`` and the gradients for a step of loop ``kind``; write nothing.

        Returns 0 when ready for ``run``; -1 when ``params`` or the state no longer match
        this kernel (rebuild it); ``k + 1`` when ``grads[grad_offset + k]`` failed a fast
        check (the Python validator says why, or hands back a usable copy).
        """
        return self._prepare(params, grads, grad_offset, kind)

    cdef Py_ssize_t _prepare(self, list params, list grads, Py_ssize_t grad_offset,
                             int kind) except -2:
        cdef Py_ssize_t k, n = self.d.n_arrays, nbytes
        cdef object g_obj
        cdef cnp.ndarray g, p
        cdef char *gp
        self.pending_grads = None
        if kind < 0 or kind >= FA_N_KINDS:
            raise ValueError(f"unknown loop kind {kind}")
        if (kind == FA_AMSGRAD or kind == FA_AMSGRAD_L2) and self.thirds is None:
            return -1
        if not self._params_unchanged(params):
            return -1
        if grad_offset < 0 or len(grads) - grad_offset < n:
            raise ValueError("too few gradients")
        for k in range(n):
            g_obj = grads[grad_offset + k]
            if not isinstance(g_obj, cnp.ndarray):
                return k + 1
            g = g_obj
            p = self.params[k]
            if (cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(p)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(g) or not cnp.PyArray_ISALIGNED(g)
                    or not cnp.PyArray_SAMESHAPE(g, p)):
                return k + 1
            gp = <char *>cnp.PyArray_DATA(g)
            nbytes = cnp.PyArray_NBYTES(g)
            if nbytes > 0 and self._aliases_written(<uintptr_t>gp, <uintptr_t>gp + nbytes):
                return k + 1
            self.d.grad[k] = gp if gp != NULL else <char *>self.d.offsets
            self.d.loop[k] = fa_get_loop(_isa, self.d.dtype[k], kind)
        # Keep the gradients alive until run(): d.grad borrows their memory.
        self.pending_grads = grads
        self.pending_offset = grad_offset
        return 0

    @property
    def prepared_grads(self):
        """``(grads, offset)`` of the last successful ``prepare``, or None."""
        return None if self.pending_grads is None else (self.pending_grads, self.pending_offset)

    def first_nonfinite(self, int n_threads):
        """After ``prepare``: ``(k, i)`` of the first NaN/inf in the gradients (array
        ``k`` of the group, element ``i`` of its flattened view), or None."""
        cdef Py_ssize_t found, k
        if self.pending_grads is None:
            raise RuntimeError("first_nonfinite() without a successful prepare()")
        found = self._scan(n_threads)
        if found < 0:
            return None
        k = _array_at(&self.d, found)
        return k, found - self.d.offsets[k]

    cdef Py_ssize_t _scan(self, int n_threads):
        cdef Py_ssize_t found
        with nogil:
            found = _scan(&self.d, n_threads, _isa, self.first_per_thread)
        return found

    def run(self, tuple scalars, int n_threads):
        """Run the step prepared by ``prepare`` with the 10 per-step scalars, in place."""
        cdef fa_scalars *s = &self.d.scalars
        if self.pending_grads is None:
            raise RuntimeError("run() without a successful prepare()")
        (s.sign, s.weight_decay, s.decay, s.beta1, s.one_minus_beta1, s.beta2,
         s.one_minus_beta2, s.step_size, s.bc2_sqrt, s.eps) = scalars
        self._run(n_threads)

    cdef Py_ssize_t _checked_run(self, int n_threads):
        """Scan and, if every gradient value is finite, run (one parallel region).
        Returns -1 when the step ran, else the index of the first bad value."""
        cdef Py_ssize_t found, k
        with nogil:
            found = _checked_run(&self.d, n_threads, _isa, self.first_per_thread)
        if found < 0:
            for k in range(self.d.n_arrays):
                self.d.grad[k] = NULL
            self.pending_grads = None
        return found

    cdef void _run(self, int n_threads):
        cdef Py_ssize_t k
        with nogil:
            _run(&self.d, n_threads)
        for k in range(self.d.n_arrays):
            self.d.grad[k] = NULL      # drop borrowed pointers: grads may be freed now
        self.pending_grads = None


cdef inline bint _state_unchanged(object state, char *ptr):
    cdef cnp.ndarray s = state
    return _writable_contiguous(s) and (
        <char *>cnp.PyArray_DATA(s) == ptr or cnp.PyArray_SIZE(s) == 0)


# Non-finite gradient policies, as coded in StepPlan configs.
NONFINITE_CODES = {"error": 0, "skip": 1, "ignore": 2}


cdef void _fill_scalars(fa_scalars *s, double t, double lr, double beta1, double beta2,
                        double eps, double weight_decay, bint decoupled, bint maximize,
                        bint bias_correction, double beta1_decay) noexcept nogil:
    """C twin of functional.adam_scalars: the same double operations, the same libm pow."""
    cdef double beta1_t = beta1 * pow(beta1_decay, t - 1.0)
    cdef double bc1 = 1.0, bc2 = 1.0
    if bias_correction:
        bc1 = 1.0 - pow(beta1, t)
        bc2 = 1.0 - pow(beta2, t)
    s.sign = -1.0 if maximize else 1.0
    s.weight_decay = 0.0 if decoupled else weight_decay
    s.decay = 1.0 - lr * weight_decay if decoupled else 1.0
    s.beta1 = beta1_t
    s.one_minus_beta1 = 1.0 - beta1_t
    s.beta2 = beta2
    s.one_minus_beta2 = 1.0 - beta2
    s.step_size = lr / bc1
    s.bc2_sqrt = sqrt(bc2)
    s.eps = eps


cdef class StepPlan:
    """An optimizer's steady-state step, run entirely in compiled code.

    The optimizer builds it after a step its Python path has validated. ``step`` then
    re-checks cheaply: every hyperparameter of every group must still be the very same
    object (identity), and each GroupKernel must accept its params and gradients. Any
    other case returns -1 without writing anything, and the Python path takes over (it
    re-validates, raises the precise error, or builds a new plan).

    ``configs[g]`` is ``(kind, lr, lr_callable, beta1, beta2, eps, weight_decay,
    decoupled, maximize, bias_correction, beta1_decay, nonfinite_code, num_threads)``.
    """
    cdef list groups
    cdef list kernels
    cdef list values
    cdef list configs
    cdef tuple keys
    cdef list steps
    cdef Py_ssize_t n_params

    def __cinit__(self, groups, kernels, keys, steps, configs):
        self.groups = list(groups)
        self.kernels = list(kernels)
        self.keys = tuple(keys)
        self.values = [tuple(g[k] for k in self.keys) for g in self.groups]
        self.steps = steps
        self.configs = list(configs)
        self.n_params = sum(len(g["params"]) for g in self.groups)
        if not (len(self.kernels) == len(self.configs) == len(self.groups) == len(steps)):
            raise ValueError("one kernel, config and step count per group")

    cdef bint _group_unchanged(self, dict group, tuple values):
        cdef Py_ssize_t j
        cdef PyObject *item
        for j in range(len(self.keys)):
            item = PyDict_GetItem(group, self.keys[j])
            if item == NULL or item != <PyObject *>values[j]:
                return False
        return True

    def step(self, grads):
        """0: stepped; 1: skipped (non-finite gradients, policy "skip"); -1: nothing
        written, run the Python path."""
        cdef list glist
        cdef Py_ssize_t gi, n_groups = len(self.groups), offset = 0, t
        cdef GroupKernel kernel
        cdef tuple cfg
        cdef object params, lr_value
        cdef double lr
        cdef int code
        if isinstance(grads, cnp.ndarray):
            if self.n_params != 1:
                return -1
            glist = [grads]
        elif type(grads) is list:
            glist = <list>grads
        elif type(grads) is tuple:
            glist = list(grads)
        else:
            return -1
        if len(glist) != self.n_params:
            return -1
        # Check and prepare every group before writing any: the scalars of a group go
        # into its kernel now, the team size into its pending slot.
        for gi in range(n_groups):
            group = <dict>self.groups[gi]
            if not self._group_unchanged(group, <tuple>self.values[gi]):
                return -1
            params = group.get("params")
            if type(params) is not list:
                return -1
            kernel = <GroupKernel>self.kernels[gi]
            cfg = <tuple>self.configs[gi]
            t = <Py_ssize_t>self.steps[gi] + 1
            if cfg[2] is not None:
                lr_value = cfg[2](t)
                if (not isinstance(lr_value, (float, int)) or isinstance(lr_value, bool)
                        or not isfinite(<double>lr_value) or lr_value < 0):
                    return -1       # the Python path calls it again and raises
                lr = <double>lr_value
            else:
                lr = <double>cfg[1]
            if kernel._prepare(<list>params, glist, offset, <int>cfg[0]) != 0:
                return -1
            _fill_scalars(&kernel.d.scalars, <double>t, lr, cfg[3], cfg[4], cfg[5],
                          cfg[6], cfg[7], cfg[8], cfg[9], cfg[10])
            spec = cfg[12]
            if _forked_child or not FA_OPENMP_ENABLED:
                kernel.pending_threads = 1
            elif spec is None:
                kernel.pending_threads = fa_max_threads()
            elif spec == -1:
                kernel.pending_threads = fa_num_procs()
            else:
                kernel.pending_threads = spec
            offset += len(<list>params)
        if n_groups == 1 and (<tuple>self.configs[0])[11] != 2:
            # One group with a check: scan and update in one parallel region.
            kernel = <GroupKernel>self.kernels[0]
            if kernel._checked_run(kernel.pending_threads) >= 0:
                kernel.pending_grads = None
                if (<tuple>self.configs[0])[11] == 0:
                    return -1       # the Python path finds it again and raises
                return 1
            self.steps[0] = <Py_ssize_t>self.steps[0] + 1
            return 0
        skip = False
        for gi in range(n_groups):
            code = (<tuple>self.configs[gi])[11]
            kernel = <GroupKernel>self.kernels[gi]
            if code != 2 and kernel._scan(kernel.pending_threads) >= 0:
                if code == 0:
                    return -1       # the Python path finds it again and raises
                skip = True
        if skip:
            for gi in range(n_groups):
                (<GroupKernel>self.kernels[gi]).pending_grads = None
            return 1
        for gi in range(n_groups):
            kernel = <GroupKernel>self.kernels[gi]
            kernel._run(kernel.pending_threads)
            self.steps[gi] = <Py_ssize_t>self.steps[gi] + 1
        return 0


def probe(params, grads, exp_avgs, exp_avg_sqs, thirds=None, int n_threads=1):
    """Run the bandwidth probe (loop kind ``PROBE``) once over lists of arrays, in place.

    The probe moves an Adam step's bytes (reads p, g, m, v; writes p, m, v; with
    ``thirds`` also AMSGrad's max_exp_avg_sq) with trivial arithmetic:
    ``m += g; v += g; (x += g;) p -= g``, exactly as ``reference.probe_update``. It is
    the roofline of the benchmarks. The arrays must already be acceptable to the
    optimizer (same dtype and shape, C-contiguous, writeable, not aliasing); for repeated
    timing build a ``GroupKernel`` once instead, as ``bench/step.py`` does.
    """
    cdef GroupKernel kernel = GroupKernel(params, exp_avgs, exp_avg_sqs, thirds, [], [])
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    if kernel.prepare(list(params), list(grads), 0, FA_PROBE) != 0:
        raise ValueError("probe: a gradient does not match its param (dtype, shape, layout)")
    kernel.run((1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0), n_threads)
