# cython: language_level=3
"""Compiled core of fusedadam: the step engine, and every loop through one dispatch table.

``Engine.step`` is the whole steady-state step of a set of planned groups in compiled
code: it checks that each group's ``GroupPlan`` still fits the arrays and hyperparameter
objects it was built from, computes the per-step scalars (``_scalars.h``), resolves the
thread count, checks the gradients, applies the non-finite policy, runs the loops of
``_dispatch.h`` with the GIL released, and counts the step. It calls nothing above it:
whatever does not fit is returned to the caller as an ``Outcome`` (``PLAN``, ``HYPER``),
and the front end (``fusedadam.optim``, ...) validates with precise messages and hands
over new plans; nothing is written before every group has passed.

A group whose backend is ``"numpy"`` runs through the same engine; only its array work
goes to ``fusedadam.reference``.
"""
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport uintptr_t, int64_t
from libc.math cimport isfinite
from cpython.object cimport PyObject
cimport numpy as cnp
import ml_dtypes as _ml_dtypes

from fusedadam._openmp cimport FA_OPENMP_ENABLED, fa_max_threads, fa_num_procs

# The layers below the engine (checks, the NumPy twin of every loop, the policy's names):
# called downward only; the engine never sees an optimizer.
from fusedadam import _validation, reference as _reference
from fusedadam.engine import _policy, _rules

cnp.import_array()

cdef extern from "Python.h":
    # Borrowed reference or NULL, without the error save/restore of PyDict_GetItem.
    PyObject *PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyDict_Size(object d)
    bint PyDict_Next(object d, Py_ssize_t *pos, PyObject **key, PyObject **value)

cdef extern from *:
    """
    /* How many steps are inside their GIL-free section now, and the most seen at once: the
     * tests observe that two threads' steps really run concurrently. Relaxed atomics: one
     * uncontended add per step. */
    #if defined(_MSC_VER) && !defined(__clang__)
    #include <intrin.h>
    static volatile long fa_steps_in_flight = 0, fa_steps_in_flight_most = 0;
    static void fa_step_enter(void) {
        long now = _InterlockedIncrement(&fa_steps_in_flight), most = fa_steps_in_flight_most;
        while (now > most) {
            long seen = _InterlockedCompareExchange(&fa_steps_in_flight_most, now, most);
            if (seen == most) break;
            most = seen;
        }
    }
    static void fa_step_leave(void) { _InterlockedDecrement(&fa_steps_in_flight); }
    #else
    static long fa_steps_in_flight = 0, fa_steps_in_flight_most = 0;
    static void fa_step_enter(void) {
        long now = __atomic_add_fetch(&fa_steps_in_flight, 1, __ATOMIC_RELAXED);
        long most = __atomic_load_n(&fa_steps_in_flight_most, __ATOMIC_RELAXED);
        while (now > most && !__atomic_compare_exchange_n(&fa_steps_in_flight_most, &most, now,
                                                          0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
    }
    static void fa_step_leave(void) {
        __atomic_sub_fetch(&fa_steps_in_flight, 1, __ATOMIC_RELAXED);
    }
    #endif
    """
    long fa_steps_in_flight_most
    void fa_step_enter() nogil
    void fa_step_leave() nogil


cdef long _steps_in_flight_most(bint reset) noexcept:
    """The most steps seen in their GIL-free section at once since the last reset (read by
    ``fusedadam._testing.steps_in_flight_high_water``)."""
    global fa_steps_in_flight_most
    cdef long most = fa_steps_in_flight_most
    if reset:
        fa_steps_in_flight_most = 0
    return most


# The names behind every number the C headers define; Python refers to names only.
ISA_NAMES = tuple(fa_isa_names[i].decode() for i in range(FA_N_ISAS))
LOOP_KINDS = tuple(fa_kind_names[i].decode() for i in range(FA_N_KINDS))
ALGORITHMS = tuple(fa_algorithm_names[i].decode() for i in range(FA_N_ALGORITHMS))
DTYPES = tuple(fa_dtype_names[i].decode() for i in range(FA_N_DTYPES))
# The names of the per-step scalars and of the hyperparameters the scalar rule reads, as
# _loops.h and _scalars.h list them (fa_scalar_fields, fa_hyper_fields).
SCALAR_FIELDS = tuple(fa_scalar_fields[i].name.decode() for i in range(FA_N_SCALAR_FIELDS))
HYPER_FIELDS = tuple(fa_hyper_fields[i].name.decode() for i in range(FA_N_HYPER_FIELDS))
_TYPENUM_TO_DTYPE = {cnp.dtype(name).num: i for i, name in enumerate(DTYPES)}
cdef int _TYPENUM_BF16 = cnp.dtype(_ml_dtypes.bfloat16).num
cdef int _TYPENUM_F16 = cnp.dtype("float16").num
cdef int _TYPENUM_F32 = cnp.dtype("float32").num
cdef int _TYPENUM_F64 = cnp.dtype("float64").num
cdef int _TYPENUM_U8 = cnp.dtype("uint8").num
cdef int _TYPENUM_I8 = cnp.dtype("int8").num
Q8_BLOCK = FA_Q8_BLOCK
# State arrays a loop call takes (FA_MAX_SLOTS less the param and gradient slots).
MAX_STATE_SLOTS = FA_MAX_SLOTS - FA_STATE0

cdef int _best_isa = fa_cpu_best_isa()
cdef int _isa = _best_isa


cdef int _current_isa() noexcept:
    """The instruction set whose loops are in use (FA_ISA_*; for ``fusedadam._testing``)."""
    return _isa

# Elements per chunk. A step is cut into chunks of this many elements (across array
# boundaries) that the calling thread and the pool's helpers claim one at a time (_pool.h):
# the caller never waits for a helper that has not started, and the chunks do not depend on
# the thread count, so neither do the results. A call of one chunk runs on the caller with
# no hand-off at all, which is what the serial/parallel threshold used to decide.
# bench/POOL.md measured 16384 (FA_POOL_GRAIN) on the 2-vCPU Zen 3 VM, idle and loaded.
cdef Py_ssize_t _chunk_elements = FA_POOL_GRAIN

# Gradient elements per task of the parallel gradient scan (a whole number of chunks, at
# least one). The scan reads 4 B a float32 element where the update moves 28: a chunk is
# ~2 us of scanning, so one task per chunk paid a claim of the pool's shared counter and a
# write of a result line the other thread also writes (false sharing) every 64 KB, and each
# thread read 64 KB runs with gaps. A task of 16 chunks reads 1 MB in one run. The results
# stay per chunk, combined in chunk order: the task size changes no bit.
cdef Py_ssize_t _scan_task_elements = 16 * FA_POOL_GRAIN

# Elements per task of the parallel update of the elementwise kinds (whole chunks, at least
# one, and at least 4 tasks a thread). With a task per chunk the two threads took turns
# along the arrays, each reading 64 KB runs of every array with a gap between them. BERT-base
# float32, 2 threads, AMD Zen 5, one optimizer stepped under each setting in turn (same
# memory), medians of the per-round ratios to torch fused's step: tasks of 1 chunk
# 1.00-1.05x (1.13-1.19x with the check), of 16 chunks 0.85-0.89x (1.01-1.03x), of 64
# chunks (4 MB of each float32 array) 0.86x (1.01-1.06x); one 1e7 tensor: 64 chunks
# 0.88-0.94x against 0.86-0.98x for 1 chunk and 1.01-1.21x for 16. A helper descheduled
# in a task holds more work, yet with another process busy on one of the 2 vCPUs (3e7
# elements) the step took 21.7 ms median, 25.8 p90, against 23.3 and 29.3 with 1 chunk. No
# result depends on it: the update is elementwise, and the chunks stay the unit of every
# per-chunk result.
cdef Py_ssize_t _update_task_elements = 64 * FA_POOL_GRAIN

# The most threads one call uses (num_threads above it is clamped); an OpenMP runtime asked
# for 100 000 threads can crash, and so would a pool.
DEF MAX_THREADS = 256
MAX_NUM_THREADS = MAX_THREADS


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FA_OPENMP_ENABLED)


def max_threads():
    """OpenMP's current default team size (follows OMP_NUM_THREADS and threadpoolctl)."""
    return fa_max_threads()


def num_procs():
    """Processors available to OpenMP (1 in a serial build)."""
    return fa_num_procs()


cdef int _resolve_threads(object spec) except -1:
    """The thread-count rule, for every path: ``None`` follows OpenMP's default team size
    (``OMP_NUM_THREADS``, threadpoolctl), -1 is every processor, a positive int is itself;
    clamped to [1, MAX_NUM_THREADS], and 1 in a build without OpenMP. ``spec`` was
    validated."""
    cdef long n
    if not FA_OPENMP_ENABLED:
        return 1
    if spec is None:
        n = fa_max_threads()
    elif spec == -1:
        n = fa_num_procs()
    elif spec > MAX_THREADS:
        return MAX_THREADS
    else:
        n = spec
    return <int>(1 if n < 1 else (MAX_THREADS if n > MAX_THREADS else n))


def effective_num_threads(spec):
    """The number of threads a step with ``num_threads=spec`` uses now (see _resolve_threads)."""
    return _resolve_threads(spec)


def best_isa():
    """Name of the widest instruction set this CPU runs and this build has loops for."""
    return ISA_NAMES[_best_isa]


def get_isa():
    """Name of the instruction set whose loops are in use."""
    return ISA_NAMES[_isa]


def set_isa(name):
    """Use the loops of instruction set ``name`` (not wider than ``best_isa()``)."""
    global _isa
    if name not in ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r}; expected one of {ISA_NAMES}")
    cdef int wanted = ISA_NAMES.index(name)
    if wanted > _best_isa:
        raise ValueError(f"this CPU or build cannot run {name!r} (best: {ISA_NAMES[_best_isa]!r})")
    _isa = wanted


def get_scan_task_size():
    """Elements per task of the parallel gradient scan (for tests and benchmarks)."""
    return _scan_task_elements


cdef Py_ssize_t _task_size(Py_ssize_t n_elements, str what) except -1:
    """A task size of the setters below: a positive number of elements."""
    if n_elements < 1:
        raise ValueError(f"the {what} task size must be a positive number of elements")
    return n_elements


def set_scan_task_size(Py_ssize_t n_elements):
    """Set the elements per task of the parallel gradient scan (rounded down to whole
    chunks, at least one; for tests and benchmarks: no result depends on it)."""
    global _scan_task_elements
    _scan_task_elements = _task_size(n_elements, "scan")


def get_update_task_size():
    """Elements per task of the parallel update (for tests and benchmarks)."""
    return _update_task_elements


def set_update_task_size(Py_ssize_t n_elements):
    """Set the elements per task of the parallel update (rounded down to whole chunks, at
    least one; for tests and benchmarks: no result depends on it)."""
    global _update_task_elements
    _update_task_elements = _task_size(n_elements, "update")


def get_chunk_size():
    """Elements per chunk: a call over more elements than this is split over threads."""
    return _chunk_elements


def set_chunk_size(Py_ssize_t n_elements):
    """Set the elements per chunk (a multiple of 16; for tests and benchmarks)."""
    global _chunk_elements
    if n_elements < 16 or n_elements % 16:
        raise ValueError("the chunk size must be a positive multiple of 16 elements")
    _chunk_elements = n_elements


cdef inline int _dtype_index(cnp.ndarray a):
    return _TYPENUM_TO_DTYPE.get(cnp.PyArray_TYPE(a), -1)


cdef inline int _element_type(int typenum) noexcept:
    """FA_ET_* of a NumPy type number, or -1."""
    if typenum == _TYPENUM_F32:
        return FA_ET_F32
    if typenum == _TYPENUM_F64:
        return FA_ET_F64
    if typenum == _TYPENUM_BF16:
        return FA_ET_BF16
    if typenum == _TYPENUM_F16:
        return FA_ET_F16
    return -1


cdef inline int _state_type(int typenum) noexcept:
    """FA_ET_* of a state array's NumPy type number (uint8: 8-bit codes; int8: those of
    the companded map), or -1."""
    if typenum == _TYPENUM_U8:
        return FA_ET_Q8
    return FA_ET_Q8C if typenum == _TYPENUM_I8 else _element_type(typenum)


cdef inline Py_ssize_t _et_size(int et) noexcept nogil:
    # bytes per element of storage type et (_convert.h's table)
    return <Py_ssize_t>fa_et_bytes[et]


cdef void _read_hyper(fa_hyper *h, dict hyper) except *:
    """Fill ``h`` from a ``hyper_dict``: every field of fa_hyper_fields by its name (a flag
    as 0/1, a number as a double); a field the dict does not hold is 0."""
    cdef char *base = <char *>h
    cdef Py_ssize_t i
    h.algorithm = ALGORITHMS.index(hyper["algorithm"])
    for i in range(FA_N_HYPER_FIELDS):
        value = hyper.get(HYPER_FIELDS[i], 0)
        if fa_hyper_fields[i].is_int:
            (<int *>(base + fa_hyper_fields[i].offset))[0] = 1 if value else 0
        else:
            (<double *>(base + fa_hyper_fields[i].offset))[0] = value


cdef dict _scalars_dict(fa_scalars *s):
    cdef char *base = <char *>s
    return {SCALAR_FIELDS[i]: (<double *>(base + fa_scalar_fields[i].offset))[0]
            for i in range(FA_N_SCALAR_FIELDS)}


def step_scalars(dict hyper, double t, double lr, carry=1.0):
    """``(loop kind name, scalars dict, carry after)`` of step ``t`` (fa_step_scalars).

    ``hyper`` holds the keys of ``fusedadam._algorithms.hyper_dict``; ``carry`` the
    per-param scalar state (a number, or a tuple of at most FA_MAX_CARRY), given back after
    the step in the same form. The NumPy twin is ``fusedadam.reference.step_scalars``; the
    two agree field by field.
    """
    cdef fa_hyper h
    cdef fa_scalars s
    cdef double carry_in[FA_MAX_CARRY]
    cdef double after[FA_MAX_CARRY]
    cdef int j
    single = not isinstance(carry, (tuple, list))
    values = (carry,) if single else tuple(carry)
    if len(values) > FA_MAX_CARRY:
        raise ValueError(f"at most {FA_MAX_CARRY} scalar state values, got {len(values)}")
    for j in range(FA_MAX_CARRY):
        carry_in[j] = values[j] if j < len(values) else 1.0
    _read_hyper(&h, hyper)
    cdef int kind = fa_step_scalars(&h, t, lr, carry_in, &s, after)
    out = tuple(after[j] for j in range(len(values)))
    return ((LOOP_KINDS[kind] if kind < FA_N_KINDS else "sparse_rows"), _scalars_dict(&s),
            out[0] if single else out)


# ------------------------------------------------------------------ running one group

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


cdef inline void _run_segment(GroupData *d, Py_ssize_t k, Py_ssize_t e,
                              Py_ssize_t n) noexcept nogil:
    """The step on elements [e, e + n) of array k: its dtype's loop on the arrays
    themselves, or (other storage types, unscaling, clipping) the staged runner."""
    _run_segment_as(d, k, e, n, d.kind, &d.scalars, &d.folded, 0)


cdef inline void _run_segment_as(GroupData *d, Py_ssize_t k, Py_ssize_t e, Py_ssize_t n,
                                 int kind, const fa_scalars *plain, const fa_scalars *folded,
                                 int read_only) noexcept nogil:
    """``_run_segment`` with loop ``kind`` and these scalars (``folded``: those with the
    unscaling in the sign); ``read_only``: the staged runner writes nothing back."""
    cdef int slot, j
    cdef int *types = d.types + 4 * k
    cdef char *a[FA_MAX_SLOTS]
    cdef fa_segment x
    cdef Py_ssize_t csize = _et_size(types[0]), ssize = _et_size(types[2])
    if (types[1] == types[0] and types[2] == types[0] and types[3] < 0
            and (not d.pre.active or d.use_folded)):
        for slot in range(FA_MAX_SLOTS):
            a[slot] = d.ptr[slot][k] + e * csize if slot < d.n_slots else NULL
        d.loops[k].dense[kind](a, n, folded if d.use_folded else plain)
        return
    # master="residual"/"compact": the param slot holds the int16/int8 residual
    x.param = d.ptr[FA_PARAM][k] + e * (
        _et_size(types[3]) if types[3] == FA_ET_RESID or types[3] == FA_ET_COMPACT else csize)
    # the bfloat16/float16 param (a compact residual's param is a bfloat16)
    x.lowp = (d.lowp[k] + e * _et_size(FA_ET_BF16 if types[3] == FA_ET_COMPACT else types[3])
              if types[3] >= 0 else NULL)
    x.grad = d.ptr[FA_GRAD][k] + e * _et_size(types[1])
    x.n_states = d.n_slots - FA_STATE0
    for j in range(x.n_states):
        x.state[j] = d.ptr[FA_STATE0 + j][k] + e * ssize
    x.grad_type, x.state_type, x.lowp_type = types[1], types[2], types[3]
    x.read_only = read_only
    for j in range(x.n_states):
        x.qsigned[j] = d.qsigned[j]
        x.scale[j] = ((d.scales[FA_MAX_STATES * k + j] + e // FA_Q8_BLOCK)
                      if types[2] == FA_ET_Q8 or types[2] == FA_ET_Q8C else NULL)
    d.loops[k].staged(d.loops[k].dense[kind], &x, n, plain, &d.pre)


cdef Py_ssize_t _walk(GroupData *d, Py_ssize_t start, Py_ssize_t end, bint scan,
                      double *sumsq) noexcept nogil:
    """Walk global elements [start, end) of the group, one array segment at a time: scan
    them (return the global index of the first non-finite gradient value, or -1; with
    ``d.want_norm`` also add the sum of squares of every segment, in order, to ``sumsq``),
    or run the step on them (return -1)."""
    cdef Py_ssize_t k, stop, e, found, first = -1, e_end, size
    cdef const char *grad
    cdef double part
    if start >= end:
        return -1
    k = _array_at(d, start)
    while start < end:
        stop = d.offsets[k + 1] if d.offsets[k + 1] < end else end
        if stop > start:
            e = start - d.offsets[k]
            if not scan and (d.types[4 * k + 2] == FA_ET_Q8 or d.types[4 * k + 2] == FA_ET_Q8C):
                # 8-bit state: a block belongs to the chunk holding its first element, so
                # the segment starts and ends at block boundaries (a block is never split
                # over two threads); the global element numbering (and the scan) is kept.
                size = d.offsets[k + 1] - d.offsets[k]
                e_end = stop - d.offsets[k]
                e = (e + FA_Q8_BLOCK - 1) // FA_Q8_BLOCK * FA_Q8_BLOCK
                e_end = (e_end + FA_Q8_BLOCK - 1) // FA_Q8_BLOCK * FA_Q8_BLOCK
                if e_end > size:
                    e_end = size
                if e_end > e:
                    _run_segment(d, k, e, e_end - e)
            elif not scan:
                _run_segment(d, k, e, stop - start)
            else:
                grad = d.ptr[FA_GRAD][k] + e * _et_size(d.types[4 * k + 1])
                if d.want_norm:
                    found = d.grad_fns[k].norm(grad, stop - start, &part)
                    sumsq[0] += part
                if d.pre.grad_scale < 1.0:
                    # unscaling by < 1 can overflow: the unscaled values decide
                    found = d.grad_fns[k].unscaled(grad, stop - start, d.pre.grad_scale)
                elif not d.want_norm:
                    found = d.grad_fns[k].scan(grad, stop - start)
                if found >= 0:
                    if not d.want_norm:
                        return start + found
                    if first < 0:
                        first = start + found
        start = stop
        k += 1
    return first


cdef inline Py_ssize_t _scan_range(GroupData *d, Py_ssize_t start, Py_ssize_t end,
                                   double *sumsq) noexcept nogil:
    sumsq[0] = 0.0
    return _walk(d, start, end, True, sumsq)


cdef inline void _run_range(GroupData *d, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    _walk(d, start, end, False, NULL)


cdef inline Py_ssize_t _chunks(GroupData *d, int n_threads) noexcept nogil:
    """Chunks of this call (sets d.chunk), or 1 when it runs on the caller alone."""
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    d.chunk = fa_chunk_size(total, _chunk_elements)
    cdef Py_ssize_t n_chunks = fa_chunk_count(total, d.chunk)
    if n_threads <= 1 or n_chunks < 2 or n_chunks > d.first_bad_size:
        return 1
    return n_chunks


cdef inline Py_ssize_t _task_end(GroupData *d, Py_ssize_t first,
                                 Py_ssize_t task) noexcept nogil:
    """One past the last chunk of the task of ``task`` chunks from chunk ``first``."""
    cdef Py_ssize_t end = first + task
    cdef Py_ssize_t n_chunks = fa_chunk_count(d.offsets[d.n_arrays], d.chunk)
    return end if end < n_chunks else n_chunks


cdef void _update_task(void *ctx, ptrdiff_t t, int worker) noexcept nogil:
    """Chunks [t * update_task, (t + 1) * update_task) of the update, as one run."""
    cdef GroupData *d = <GroupData *>ctx
    cdef Py_ssize_t start = t * d.update_task * d.chunk, total = d.offsets[d.n_arrays]
    cdef Py_ssize_t end = start + d.update_task * d.chunk
    _run_range(d, start, end if end < total else total)


cdef inline Py_ssize_t _task_chunks(Py_ssize_t task_elements, Py_ssize_t chunk,
                                    Py_ssize_t n_chunks, int n_threads) noexcept nogil:
    """Chunks per task: task_elements in whole chunks, at most a quarter of one thread's
    share (>= 4 tasks a thread, so a late task is a small part of the pass), at least 1."""
    cdef Py_ssize_t task = task_elements // chunk
    if task > n_chunks // (4 * n_threads):
        task = n_chunks // (4 * n_threads)
    return task if task >= 1 else 1


cdef void _scan_chunk(void *ctx, ptrdiff_t c, int worker) noexcept nogil:
    cdef GroupData *d = <GroupData *>ctx
    cdef Py_ssize_t end = (c + 1) * d.chunk, total = d.offsets[d.n_arrays]
    d.first_bad[c] = _scan_range(d, c * d.chunk, end if end < total else total,
                                 &d.chunk_sumsq[c])


cdef void _scan_task(void *ctx, ptrdiff_t t, int worker) noexcept nogil:
    """Chunks [t * scan_task, (t + 1) * scan_task) of the scan, each with its own results.
    Without the norm a task stops at its first bad chunk: _scan reads the chunks in order
    and stops there, so the later ones are never read."""
    cdef GroupData *d = <GroupData *>ctx
    cdef Py_ssize_t c = t * d.scan_task, end = _task_end(d, c, d.scan_task)
    while c < end:
        _scan_chunk(d, c, worker)
        if d.first_bad[c] >= 0 and not d.want_norm:
            return
        c += 1


cdef void _run(GroupData *d, int n_threads) noexcept nogil:
    """The update of every element of the group, in place."""
    if d.sum_kind >= 0:
        _run_tensors(d, n_threads)
        return
    cdef Py_ssize_t n_chunks = _chunks(d, n_threads)
    if n_chunks == 1:
        _run_range(d, 0, d.offsets[d.n_arrays])
    else:
        d.update_task = _task_chunks(_update_task_elements, d.chunk, n_chunks, n_threads)
        fa_pool_run(_update_task, d, (n_chunks + d.update_task - 1) // d.update_task,
                    n_threads)


# ------------------------------------------------------------------ per-tensor kinds
#
# A per-tensor kind (LAMB, StableAdamW, cautious masking) needs one scalar per tensor from a
# reduction over it (_loops.h). A tensor is cut into pieces of FA_TENSOR_PIECE elements
# (from its own first element: a multiple of the 8-bit block, so no block is split); the sum
# of a piece adds the lanes of FA_TENSOR_LOOP in lane order, the tensor's sum its pieces' in
# piece order. That order depends on the tensor alone: the same bits for every thread count
# and chunk size (reference.py adds in the same order). The pieces are scheduled by chunks:
# chunk c runs the pieces that start in its elements. Pass A runs phase 1 of each piece; a
# tensor of one piece then gets its scalars and its phase 2 at once, while it is in cache (a
# tensor up to FA_TENSOR_PIECE elements is read from memory once). The sums of a larger
# tensor are kept per piece (at piece_base[k] + j), added after pass A; pass B runs its
# phase 2.


cdef inline void _piece_sums(GroupData *d, Py_ssize_t k, Py_ssize_t e, Py_ssize_t n,
                             double *sums) noexcept nogil:
    """Phase 1 of elements [e, e + n) of array k: its FA_TENSOR_SUMS sums."""
    cdef double lanes[FA_TENSOR_SUMS * FA_TENSOR_LANES]
    cdef fa_scalars plain = d.scalars, folded = d.folded
    cdef int j, lane
    for j in range(FA_TENSOR_SUMS * FA_TENSOR_LANES):
        lanes[j] = 0.0
    plain.acc = folded.acc = lanes
    _run_segment_as(d, k, e, n, d.sum_kind, &plain, &folded, 1)
    for j in range(FA_TENSOR_SUMS):
        sums[j] = 0.0
        for lane in range(FA_TENSOR_LANES):
            sums[j] += lanes[j * FA_TENSOR_LANES + lane]


cdef inline void _piece_update(GroupData *d, Py_ssize_t k, Py_ssize_t e,
                               Py_ssize_t n) noexcept nogil:
    """Phase 2 of elements [e, e + n) of array k, with the array's scalars."""
    cdef fa_scalars plain = d.scalars, folded = d.folded
    plain.tensor_step = folded.tensor_step = d.tensor_step[k]
    plain.tensor_decay = folded.tensor_decay = d.tensor_decay[k]
    _run_segment_as(d, k, e, n, d.kind, &plain, &folded, 0)


cdef inline void _set_tensor(GroupData *d, Py_ssize_t k, const double *sums) noexcept nogil:
    fa_tensor_scalars(d.hyper, d.kind, sums, d.offsets[k + 1] - d.offsets[k], d.scalars.lr,
                      &d.tensor_step[k], &d.tensor_decay[k])


cdef void _tensor_pass(GroupData *d, ptrdiff_t c, bint pass_b) noexcept nogil:
    """Pass A (or B) of the pieces that start in chunk c."""
    cdef Py_ssize_t start = c * d.chunk, total = d.offsets[d.n_arrays]
    cdef Py_ssize_t end = start + d.chunk if start + d.chunk < total else total
    cdef Py_ssize_t k, e, n, size, first
    cdef double sums[FA_TENSOR_SUMS]
    if start >= end:
        return
    k = _array_at(d, start)
    while k < d.n_arrays and d.offsets[k] < end:
        size = d.offsets[k + 1] - d.offsets[k]
        first = start - d.offsets[k] if start > d.offsets[k] else 0
        e = (first + FA_TENSOR_PIECE - 1) // FA_TENSOR_PIECE * FA_TENSOR_PIECE
        while e < size and d.offsets[k] + e < end:
            n = size - e if size - e < FA_TENSOR_PIECE else FA_TENSOR_PIECE
            if size <= FA_TENSOR_PIECE:
                if not pass_b:
                    _piece_sums(d, k, 0, size, sums)
                    _set_tensor(d, k, sums)
                    _piece_update(d, k, 0, size)
            elif pass_b:
                _piece_update(d, k, e, n)
            else:
                _piece_sums(d, k, e, n,
                            &d.partials[(d.piece_base[k] + e // FA_TENSOR_PIECE) * FA_TENSOR_SUMS])
            e += FA_TENSOR_PIECE
        k += 1


cdef inline void _tensor_task(GroupData *d, ptrdiff_t t, bint pass_b) noexcept nogil:
    """Pass A (or B) of chunks [t * update_task, (t + 1) * update_task), in order."""
    cdef Py_ssize_t c = t * d.update_task, end = _task_end(d, c, d.update_task)
    while c < end:
        _tensor_pass(d, c, pass_b)
        c += 1


cdef void _tensor_task_a(void *ctx, ptrdiff_t t, int worker) noexcept nogil:
    _tensor_task(<GroupData *>ctx, t, False)


cdef void _tensor_task_b(void *ctx, ptrdiff_t t, int worker) noexcept nogil:
    _tensor_task(<GroupData *>ctx, t, True)


cdef void _run_tensors(GroupData *d, int n_threads) noexcept nogil:
    """The update of a per-tensor kind: pass A, the larger tensors' sums, pass B."""
    cdef Py_ssize_t total = d.offsets[d.n_arrays], c, k, j, n_pieces
    cdef double sums[FA_TENSOR_SUMS]
    cdef bint large = False
    cdef int i
    d.chunk = fa_chunk_size(total, _chunk_elements)
    cdef Py_ssize_t n_chunks = fa_chunk_count(total, d.chunk), n_tasks = 0
    if n_threads > 1 and n_chunks > 1:
        # runs of whole chunks per task, as the elementwise update (_update_task_elements)
        d.update_task = _task_chunks(_update_task_elements, d.chunk, n_chunks, n_threads)
        n_tasks = (n_chunks + d.update_task - 1) // d.update_task
        fa_pool_run(_tensor_task_a, d, n_tasks, n_threads)
    else:
        for c in range(n_chunks):
            _tensor_pass(d, c, False)
    for k in range(d.n_arrays):
        n_pieces = d.piece_base[k + 1] - d.piece_base[k]
        if n_pieces > 1:
            large = True
            for i in range(FA_TENSOR_SUMS):
                sums[i] = 0.0
                for j in range(d.piece_base[k], d.piece_base[k + 1]):
                    sums[i] += d.partials[j * FA_TENSOR_SUMS + i]
            _set_tensor(d, k, sums)
    if not large:
        return
    if n_tasks:
        fa_pool_run(_tensor_task_b, d, n_tasks, n_threads)
    else:
        for c in range(n_chunks):
            _tensor_pass(d, c, True)


cdef int _reserve_pieces(GroupData *d) except -1:
    """The pieces of every array (piece_base) and room for their sums; once per plan."""
    cdef Py_ssize_t k, size
    d.piece_base[0] = 0
    for k in range(d.n_arrays):
        size = d.offsets[k + 1] - d.offsets[k]
        d.piece_base[k + 1] = d.piece_base[k] + (size + FA_TENSOR_PIECE - 1) // FA_TENSOR_PIECE
    d.partials = <double *>malloc((d.piece_base[d.n_arrays] + 1) * FA_TENSOR_SUMS
                                  * sizeof(double))
    if d.partials == NULL:
        raise MemoryError()
    return 0


cdef Py_ssize_t _scan(GroupData *d, int n_threads) noexcept nogil:
    """First non-finite gradient value of the group (global index), or -1: per chunk, then
    the first in chunk order, so the answer does not depend on the thread count. With
    ``d.want_norm``, ``d.sumsq`` is the sum of the chunks' sums of squares in chunk order
    (chunks even on one thread: the same bits for every thread count)."""
    cdef Py_ssize_t c, found = -1, n_chunks = _chunks(d, n_threads)
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    d.sumsq = 0.0
    if n_chunks == 1 and not d.want_norm:
        return _scan_range(d, 0, total, &d.sumsq)
    if n_chunks == 1:
        n_chunks = fa_chunk_count(total, d.chunk)
        for c in range(n_chunks):
            _scan_chunk(d, c, 0)
    else:
        d.scan_task = _task_chunks(_scan_task_elements, d.chunk, n_chunks, n_threads)
        fa_pool_run(_scan_task, d, (n_chunks + d.scan_task - 1) // d.scan_task, n_threads)
    for c in range(n_chunks):
        if d.first_bad[c] >= 0 and found < 0:
            found = d.first_bad[c]
            if not d.want_norm:
                break
        d.sumsq += d.chunk_sumsq[c]
    return found


cdef int _reserve_chunks(GroupData *d) except -1:
    """Room for this group's per-chunk scan results at the current chunk size (allocated
    when a plan is built or the chunk size changed; never per step)."""
    cdef Py_ssize_t total = d.offsets[d.n_arrays]
    cdef Py_ssize_t n = fa_chunk_count(total, fa_chunk_size(total, _chunk_elements))
    cdef Py_ssize_t *grown
    cdef double *grown_sums
    if n > d.first_bad_size:
        grown = <Py_ssize_t *>realloc(d.first_bad, n * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        d.first_bad = grown
        grown_sums = <double *>realloc(d.chunk_sumsq, n * sizeof(double))
        if grown_sums == NULL:
            raise MemoryError()
        d.chunk_sumsq, d.first_bad_size = grown_sums, n
    return 0


cdef int _group_alloc(GroupData *d) except -1:
    """The per-array tables of a group of ``d.n_arrays`` arrays and ``d.n_slots`` slots."""
    cdef Py_ssize_t n = d.n_arrays + 1
    cdef int slot
    d.first_bad, d.chunk_sumsq, d.first_bad_size = NULL, NULL, 0
    d.sum_kind, d.hyper, d.partials = -1, NULL, NULL
    d.piece_base = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
    d.tensor_step = <double *>malloc(n * sizeof(double))
    d.tensor_decay = <double *>malloc(n * sizeof(double))
    fa_pre_set(&d.pre, 1.0)
    d.use_folded = False
    d.want_norm, d.sumsq = False, 0.0
    for slot in range(FA_MAX_SLOTS):
        d.ptr[slot] = <char **>malloc(n * sizeof(char *)) if slot < d.n_slots else NULL
    d.offsets = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
    d.lowp = <char **>malloc(n * sizeof(char *))
    d.types = <int *>malloc(4 * n * sizeof(int))
    d.scales = <float **>calloc(FA_MAX_STATES * n, sizeof(float *))
    for slot in range(FA_MAX_STATES):
        d.qsigned[slot] = 1
    d.loops = <const fa_loops **>malloc(n * sizeof(fa_loops *))
    d.grad_fns = <const fa_grad_fns **>malloc(n * sizeof(fa_grad_fns *))
    if (not d.offsets or not d.lowp or not d.types or not d.loops or not d.grad_fns
            or not d.scales or not d.tensor_step or not d.tensor_decay or not d.piece_base):
        raise MemoryError()
    for slot in range(d.n_slots):
        if not d.ptr[slot]:
            raise MemoryError()
    return 0


cdef void _group_free(GroupData *d) noexcept:
    cdef int slot
    for slot in range(FA_MAX_SLOTS):
        free(d.ptr[slot])
    free(d.offsets)
    free(d.lowp)
    free(d.types)
    free(d.scales)
    free(d.loops)
    free(d.grad_fns)
    free(d.first_bad)
    free(d.chunk_sumsq)
    free(d.tensor_step)
    free(d.tensor_decay)
    free(d.partials)
    free(d.piece_base)


cdef inline bint _writable_contiguous(cnp.ndarray a):
    return (cnp.PyArray_ISWRITEABLE(a) and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_ISALIGNED(a))


cdef inline bint _same_entries(dict d, tuple keys, tuple values):
    """``d`` holds exactly ``keys`` -> ``values`` (the same objects, in the same order): one
    walk of the dict, no hashing."""
    cdef Py_ssize_t pos = 0, i = 0
    cdef PyObject *key
    cdef PyObject *value
    if PyDict_Size(d) != len(keys):
        return False
    while PyDict_Next(d, &pos, &key, &value):
        if key != <PyObject *>keys[i] or value != <PyObject *>values[i]:
            return False
        i += 1
    return True


cdef inline bint _same_array(object current, object planned, char *ptr):
    """``current`` is still the planned array, at the same address, writeable, contiguous."""
    if current is not planned:
        return False
    cdef cnp.ndarray a = planned
    return _writable_contiguous(a) and (<char *>cnp.PyArray_DATA(a) == ptr
                                        or cnp.PyArray_SIZE(a) == 0)


# ------------------------------------------------------------------ the plan of one group

cdef class GroupPlan:
    """A validated group: its pointer tables, hyperparameters and what the user sees.

    Built by a front end from a ``GroupSpec`` after every check has passed. It
    remembers the objects it was built from (the group dict and its hyperparameter values,
    the params list, each param's state dict and arrays) and ``fits`` a later step only while
    those are still the same objects: a replaced state array, a changed hyperparameter, a
    param added or removed sends the step back to validation.
    """
    cdef GroupData d
    cdef readonly object group
    cdef readonly tuple state_names
    cdef readonly object state_dtype   # the group's option the state arrays were made for
    cdef readonly object master        # the group's master option the state was made for
    cdef readonly object installs      # state to attach at the first step that commits
    cdef readonly bint numpy_backend
    cdef readonly object nonfinite     # the group's NonFinitePolicy
    cdef bint mind_nonfinite           # its policy is not IGNORE
    cdef bint scans                    # the gradients are scanned before the update
    cdef readonly object first_index   # an int, or engine.Positions
    cdef tuple keys
    cdef tuple values
    cdef object params                 # the group's "params" list object
    cdef readonly tuple slots          # slots[slot][k]: the arrays (slot FA_GRAD: None)
    cdef readonly tuple masters        # per param: its float32 master_param, or None
    cdef tuple scales                  # per state slot, per param: its 8-bit scales, or None
    cdef tuple qsigned                 # per state slot: the 8-bit map is signed
    cdef tuple state_dicts
    cdef tuple step_arrays
    cdef tuple mu_arrays               # per param: its scalar state (0-d arrays), or None
    cdef int n_carry                   # scalar state values per param (<= FA_MAX_CARRY)
    cdef tuple state_keys              # per param: the keys of its state dict, in order
    cdef tuple state_values            # per param: the objects under them
    cdef tuple layouts                 # (array, its dtype, its shape) of every planned array
    # The same, as C arrays the steady-state check walks without touching Python objects:
    # per planned array its object, its dtype object, its ndim and where its dims start.
    cdef PyObject **layout_array
    cdef PyObject **layout_descr
    cdef int *layout_ndim
    cdef Py_ssize_t *layout_first_dim
    cdef cnp.npy_intp *layout_dims
    cdef Py_ssize_t n_layouts
    cdef int64_t **step_ptr            # per param
    cdef int64_t **distinct_steps      # each distinct step counter once
    cdef Py_ssize_t n_distinct_steps
    cdef double **mu_ptr               # per param, FA_MAX_CARRY each, or NULL
    cdef fa_hyper hyper
    cdef object hyper_dict             # the same, as hyper_dict gives it (NumPy backend)
    cdef object lr
    cdef bint lr_callable
    cdef double lr_value
    cdef object grad_scale             # the group's: a float, a callable or an array
    cdef double max_grad_norm          # <= 0: no clipping
    cdef readonly object last_grad_norm  # the norm of the last step that computed one
    cdef double norm                   # this step's
    cdef object num_threads
    cdef int n_threads                 # this step's
    cdef double carry_in[FA_MAX_CARRY]   # this step's scalar state, and after it
    cdef double mu_after[FA_MAX_CARRY]
    cdef uintptr_t *written_lo
    cdef uintptr_t *written_hi
    cdef Py_ssize_t n_written
    cdef object pending_grads          # the gradients this step reads (kept alive)
    cdef Py_ssize_t pending_offset     # where this group's gradients start in it

    def __cinit__(self, spec):
        cdef Py_ssize_t n = len(spec.params), k
        cdef int slot
        cdef int j
        cdef cnp.ndarray a
        self.group = spec.group
        self.params = spec.group["params"]
        self.state_names = tuple(spec.state_names)
        self.state_dtype = spec.hyper_spec.state_dtype
        self.master = spec.hyper_spec.master
        self.installs = spec.installs or None
        self.first_index = spec.first_index
        self.slots = tuple(tuple(arrays) if arrays is not None else None
                           for arrays in spec.slots)
        self.masters = tuple(spec.masters)
        self.scales = tuple(tuple(per_param) for per_param in spec.scales)
        self.qsigned = tuple(spec.qsigned)
        self.last_grad_norm = None
        self.state_dicts = tuple(spec.state_dicts)
        self.step_arrays = tuple(spec.step_arrays)
        self.mu_arrays = (tuple(tuple(per_param) for per_param in spec.mu_arrays)
                          if spec.mu_arrays is not None else None)
        self.n_carry = len(self.mu_arrays[0]) if self.mu_arrays else 0
        if self.n_carry > FA_MAX_CARRY:
            raise ValueError("internal error: scalar state count")
        # ``p.dtype = ...`` / ``p.shape = ...`` change an array in place, keeping its
        # identity and address: the plan remembers both so that such an edit is re-checked.
        self.layouts = tuple(
            (a, a.dtype, a.shape)
            for arrays in (self.slots + (self.masters, self.step_arrays)
                           + (tuple(zip(*self.mu_arrays)) if self.n_carry else ())
                           + self.scales) if arrays is not None
            for a in arrays if a is not None
        )
        self._record_layouts()
        self.d.n_arrays = n
        self.d.n_slots = FA_STATE0 + len(self.state_names)
        if (self.d.n_slots > FA_MAX_SLOTS or len(self.slots) != self.d.n_slots
                or len(self.scales) != self.d.n_slots - FA_STATE0):
            raise ValueError("internal error: slot count")
        _group_alloc(&self.d)
        for slot in range(self.d.n_slots - FA_STATE0):
            self.d.qsigned[slot] = 1 if self.qsigned[slot] else 0
        self.step_ptr = <int64_t **>malloc((n + 1) * sizeof(int64_t *))
        self.distinct_steps = <int64_t **>malloc((n + 1) * sizeof(int64_t *))
        self.mu_ptr = <double **>malloc((n + 1) * FA_MAX_CARRY * sizeof(double *))
        lo, hi = spec.written
        self.n_written = len(lo)
        self.written_lo = <uintptr_t *>malloc((self.n_written + 1) * sizeof(uintptr_t))
        self.written_hi = <uintptr_t *>malloc((self.n_written + 1) * sizeof(uintptr_t))
        if (not self.step_ptr or not self.distinct_steps or not self.mu_ptr
                or not self.written_lo or not self.written_hi):
            raise MemoryError()
        for k in range(self.n_written):
            self.written_lo[k] = <uintptr_t>int(lo[k])
            self.written_hi[k] = <uintptr_t>int(hi[k])
        self.d.offsets[0] = 0
        for k in range(n):
            a = self.slots[FA_PARAM][k]
            et = _element_type(cnp.PyArray_TYPE(a))
            if et < 0 or (self.masters[k] is None) != (et == FA_ET_F32 or et == FA_ET_F64):
                raise ValueError(f"internal error: params[{self.first_index + k}] dtype")
            compute = FA_ET_F64 if et == FA_ET_F64 else FA_ET_F32
            self.d.loops[k] = fa_get_loops(_isa, compute)
            self.d.grad_fns[k] = fa_get_grad_fns(_isa, compute)
            self.d.offsets[k + 1] = self.d.offsets[k] + cnp.PyArray_SIZE(a)
            self.d.ptr[FA_GRAD][k] = NULL
            for slot in range(self.d.n_slots):
                if slot != FA_GRAD:
                    self.d.ptr[slot][k] = _data(self.slots[slot][k], self.d.offsets)
            self.d.types[4 * k] = self.d.types[4 * k + 1] = compute
            self.d.types[4 * k + 2] = (
                _state_type(cnp.PyArray_TYPE(self.slots[FA_STATE0][k]))
                if self.d.n_slots > FA_STATE0 else compute)
            for slot in range(self.d.n_slots - FA_STATE0):
                scale = self.scales[slot][k]
                if (scale is None) != (self.d.types[4 * k + 2] != FA_ET_Q8
                                       and self.d.types[4 * k + 2] != FA_ET_Q8C):
                    raise ValueError(f"internal error: params[{self.first_index + k}] scales")
                if scale is not None:
                    self.d.scales[FA_MAX_STATES * k + slot] = <float *>_data(scale, self.d.offsets)
            self.d.types[4 * k + 3] = -1
            self.d.lowp[k] = NULL
            if self.masters[k] is not None:
                # an int16 (int8) master is the residual of master="residual" ("compact"),
                # bfloat16 only
                typenum = cnp.PyArray_TYPE(self.masters[k])
                self.d.types[4 * k + 3] = (
                    FA_ET_RESID if typenum == cnp.NPY_INT16
                    else FA_ET_COMPACT if typenum == cnp.NPY_INT8 else et)
                if self.d.types[4 * k + 3] in (FA_ET_RESID, FA_ET_COMPACT) and et != FA_ET_BF16:
                    raise ValueError(f"internal error: params[{self.first_index + k}] residual")
                self.d.lowp[k] = self.d.ptr[FA_PARAM][k]
                self.d.ptr[FA_PARAM][k] = _data(self.masters[k], self.d.offsets)
            a = self.step_arrays[k]
            self.step_ptr[k] = <int64_t *>cnp.PyArray_DATA(a)
            for j in range(FA_MAX_CARRY):
                if j < self.n_carry:
                    a = self.mu_arrays[k][j]
                    self.mu_ptr[FA_MAX_CARRY * k + j] = <double *>cnp.PyArray_DATA(a)
                else:
                    self.mu_ptr[FA_MAX_CARRY * k + j] = NULL
        seen = set()
        self.n_distinct_steps = 0
        for k in range(n):
            if id(self.step_arrays[k]) not in seen:
                seen.add(id(self.step_arrays[k]))
                self.distinct_steps[self.n_distinct_steps] = self.step_ptr[k]
                self.n_distinct_steps += 1
        self._snapshot_state()
        _reserve_chunks(&self.d)
        _reserve_pieces(&self.d)
        self.d.hyper = &self.hyper
        self.set_hyper(spec.hyper_spec)

    def __dealloc__(self):
        _group_free(&self.d)
        free(self.layout_array)
        free(self.layout_descr)
        free(self.layout_ndim)
        free(self.layout_first_dim)
        free(self.layout_dims)
        free(self.step_ptr)
        free(self.distinct_steps)
        free(self.mu_ptr)
        free(self.written_lo)
        free(self.written_hi)

    cdef void _snapshot_state(self) except *:
        """Remember every entry of every param's state dict (keys and objects, in order)."""
        self.state_keys = tuple(tuple(st.keys()) for st in self.state_dicts)
        self.state_values = tuple(tuple(st.values()) for st in self.state_dicts)

    def set_hyper(self, spec):
        """Take a validated ``HyperSpec`` (the group's hyperparameters now)."""
        self.keys = tuple(spec.keys)
        self.values = tuple(spec.values)
        _read_hyper(&self.hyper, spec.hyper)
        self.hyper_dict = spec.hyper
        self.lr = spec.lr
        self.lr_callable = callable(spec.lr)
        self.lr_value = 0.0 if self.lr_callable else spec.lr
        self.num_threads = spec.num_threads
        self.nonfinite = spec.nonfinite
        self.mind_nonfinite = spec.nonfinite != _policy.NonFinitePolicy.IGNORE
        self.numpy_backend = spec.backend == "numpy"
        self.grad_scale = spec.grad_scale
        self.max_grad_norm = spec.max_grad_norm if spec.max_grad_norm is not None else 0.0
        self.scans = _policy.needs_scan(spec.nonfinite, self.max_grad_norm > 0.0)

    cdef bint _hyper_fits(self):
        """Every hyperparameter of the group is still the object validated."""
        cdef Py_ssize_t j = 0, pos = 0, n = len(self.keys)
        cdef PyObject *item
        cdef PyObject *key
        # First one walk of the dict, no hashing: a group whose keys are the validated key
        # objects in the validated order (every group the front ends build, and most a
        # user writes) is decided by it: ~1.45k instructions a step for the 18 entries of
        # a torch Adam group against ~2.6k for 17 lookups, of a one-tensor step's ~25k
        # (callgrind, CPython 3.11).
        if type(self.group) is dict:
            while j < n and PyDict_Next(self.group, &pos, &key, &item):
                if key == <PyObject *>self.keys[j]:
                    if item != <PyObject *>self.values[j]:
                        return False
                    j += 1
            if j == n:
                return True
        for j in range(n):
            item = PyDict_GetItemWithError(self.group, self.keys[j])
            if item == NULL or item != <PyObject *>self.values[j]:
                return False
        return True

    cdef bint _arrays_fit(self):
        """The group's params and every state entry the user sees are the planned objects."""
        cdef Py_ssize_t k, n = self.d.n_arrays
        cdef int slot
        cdef PyObject *item
        cdef cnp.ndarray a
        item = PyDict_GetItemWithError(self.group, "params")
        if item == NULL or <object>item is not self.params:
            return False
        if type(self.params) is not list or len(<list>self.params) != n:
            return False
        for k in range(n):
            a = self.slots[FA_PARAM][k]
            if ((<list>self.params)[k] is not a or not _writable_contiguous(a)
                    or (<char *>cnp.PyArray_DATA(a) != (
                        self.d.ptr[FA_PARAM][k] if self.d.lowp[k] == NULL else self.d.lowp[k])
                        and cnp.PyArray_SIZE(a) != 0)
                    or cnp.PyArray_SIZE(a) != self.d.offsets[k + 1] - self.d.offsets[k]):
                return False
            if self.d.lowp[k] != NULL and not _same_array(
                    self.masters[k], self.masters[k], self.d.ptr[FA_PARAM][k]):
                return False
            if not _same_entries(<dict>self.state_dicts[k], <tuple>self.state_keys[k],
                                 <tuple>self.state_values[k]):
                return False
            for slot in range(FA_STATE0, self.d.n_slots):
                if not _same_array(self.slots[slot][k], self.slots[slot][k],
                                   self.d.ptr[slot][k]):
                    return False
                scale = self.scales[slot - FA_STATE0][k]
                if scale is not None and not _same_array(
                        scale, scale,
                        <char *>self.d.scales[FA_MAX_STATES * k + slot - FA_STATE0]):
                    return False
        return self._layouts_fit()

    cdef int _record_layouts(self) except -1:
        cdef Py_ssize_t j, i, n_dims = 0
        self.n_layouts = len(self.layouts)
        for entry in self.layouts:
            n_dims += len(entry[2])
        self.layout_array = <PyObject **>malloc((self.n_layouts + 1) * sizeof(PyObject *))
        self.layout_descr = <PyObject **>malloc((self.n_layouts + 1) * sizeof(PyObject *))
        self.layout_ndim = <int *>malloc((self.n_layouts + 1) * sizeof(int))
        self.layout_first_dim = <Py_ssize_t *>malloc((self.n_layouts + 1) * sizeof(Py_ssize_t))
        self.layout_dims = <cnp.npy_intp *>malloc((n_dims + 1) * sizeof(cnp.npy_intp))
        if (not self.layout_array or not self.layout_descr or not self.layout_ndim
                or not self.layout_first_dim or not self.layout_dims):
            raise MemoryError()
        n_dims = 0
        for j in range(self.n_layouts):
            entry = self.layouts[j]
            self.layout_array[j] = <PyObject *>entry[0]
            self.layout_descr[j] = <PyObject *>entry[1]
            self.layout_ndim[j] = len(entry[2])
            self.layout_first_dim[j] = n_dims
            for i in range(len(entry[2])):
                self.layout_dims[n_dims] = entry[2][i]
                n_dims += 1
        return 0

    cdef bint _layouts_fit(self) noexcept:
        """Every planned array still has the dtype and shape it was validated with."""
        cdef Py_ssize_t j, i
        cdef cnp.PyArrayObject *a
        cdef cnp.npy_intp *dims
        for j in range(self.n_layouts):
            a = <cnp.PyArrayObject *>self.layout_array[j]
            if <PyObject *>cnp.PyArray_DESCR(<cnp.ndarray>a) != self.layout_descr[j]:
                return False
            if cnp.PyArray_NDIM(<cnp.ndarray>a) != self.layout_ndim[j]:
                return False
            dims = cnp.PyArray_DIMS(<cnp.ndarray>a)
            for i in range(self.layout_ndim[j]):
                if dims[i] != self.layout_dims[self.layout_first_dim[j] + i]:
                    return False
        return True

    cdef bint _steps_agree(self):
        cdef Py_ssize_t k
        cdef int j
        for k in range(1, self.d.n_arrays):
            if self.step_ptr[k][0] != self.step_ptr[0][0]:
                return False
            for j in range(self.n_carry):
                if self.mu_ptr[FA_MAX_CARRY * k + j][0] != self.mu_ptr[j][0]:
                    return False
        return True

    cdef bint _aliases_written(self, uintptr_t lo, uintptr_t hi) noexcept:
        """True if [lo, hi) overlaps a written array (binary search, intervals disjoint)."""
        cdef Py_ssize_t a = 0, b = self.n_written, mid
        if lo >= hi or self.n_written == 0:
            return False
        while b - a > 1:
            mid = (a + b) // 2
            if self.written_lo[mid] < hi:
                a = mid
            else:
                b = mid
        return self.written_lo[a] < hi and self.written_hi[a] > lo

    cdef Py_ssize_t _fast_grads(self, list grads, Py_ssize_t offset):
        """Point the loops at ``grads[offset:offset + n]`` if each passes the fast checks
        (an ndarray of a dtype its param takes (its own; float32, bfloat16 or float16 for a
        param with a master) and of its shape, contiguous, aligned, native byte order, not
        aliasing a written array); else the index + 1 of the first that does not."""
        cdef Py_ssize_t k, nbytes
        cdef object g_obj
        cdef cnp.ndarray g, p
        cdef char *gp
        cdef int gtype, typenum
        for k in range(self.d.n_arrays):
            g_obj = grads[offset + k]
            if type(g_obj) is not cnp.ndarray:
                return k + 1
            g = g_obj
            p = self.slots[FA_PARAM][k]
            typenum = cnp.PyArray_TYPE(g)
            if typenum == cnp.PyArray_TYPE(p) and self.d.lowp[k] == NULL:
                gtype = self.d.types[4 * k]
            elif self.d.lowp[k] != NULL:
                gtype = _element_type(typenum)
                if gtype == FA_ET_F64:
                    return k + 1
            else:
                return k + 1
            if (gtype < 0 or not cnp.PyArray_ISNOTSWAPPED(g)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(g) or not cnp.PyArray_ISALIGNED(g)
                    or not cnp.PyArray_SAMESHAPE(g, p)):
                return k + 1
            gp = <char *>cnp.PyArray_DATA(g)
            nbytes = cnp.PyArray_NBYTES(g)
            if nbytes > 0 and self._aliases_written(<uintptr_t>gp, <uintptr_t>gp + nbytes):
                return k + 1
            self.d.ptr[FA_GRAD][k] = gp if gp != NULL else <char *>self.d.offsets
            self.d.types[4 * k + 1] = gtype
            self.d.grad_fns[k] = fa_get_grad_fns(_isa, gtype)
        return 0

    cdef int _prepare(self, list grads, Py_ssize_t offset, object grad_scale) except -1:
        """Scalars, thread count, gradient scale and gradients of this step; writes nothing
        anywhere. ``grad_scale`` (not None) overrides the group's for this step."""
        cdef double t, lr, scale
        cdef object value
        cdef Py_ssize_t k, n = self.d.n_arrays
        if n and not self._steps_agree():
            raise _StepsDisagree()
        if n and not 0 <= self.step_ptr[0][0] < 9007199254740991:  # _validation.MAX_STEP - 1
            raise ValueError(
                f"step of params[{self.first_index}] is {self.step_ptr[0][0]}; step counts "
                "run from 0 to below 2**53 (the step number is a float64)")
        t = <double>(self.step_ptr[0][0] + 1) if n else 1.0
        if self.lr_callable:
            value = self.lr(int(t))
            if type(value) is float and isfinite(<double>value) and <double>value >= 0.0:
                lr = <double>value
            else:
                lr = _rules.checked_rate(value, int(t))
        else:
            lr = self.lr_value
        value = self.grad_scale if grad_scale is None else grad_scale
        if type(value) is float and isfinite(<double>value) and <double>value > 0.0:
            scale = <double>value
        else:
            scale = _validation.grad_scale_value(value, int(t))
        fa_pre_set(&self.d.pre, scale)
        self.d.want_norm = self.max_grad_norm > 0.0
        for k in range(FA_MAX_CARRY):
            self.carry_in[k] = (self.mu_ptr[k][0] if n and k < self.n_carry else 1.0)
        self.d.kind = fa_step_scalars(&self.hyper, t, lr, self.carry_in,
                                      &self.d.scalars, self.mu_after)
        self.d.sum_kind = fa_sum_kind(self.d.kind)
        _fold(&self.d)
        self.n_threads = _resolve_threads(self.num_threads)
        _reserve_chunks(&self.d)
        if self.numpy_backend or self._fast_grads(grads, offset) != 0:
            # The Python checks say what is wrong, or hand back usable copies.
            checked = _validation.check_grads(
                grads[offset:offset + n], self.slots[FA_PARAM],
                [self.written_lo[k] for k in range(self.n_written)],
                [self.written_hi[k] for k in range(self.n_written)],
                self.first_index)
            if self.numpy_backend:
                self.pending_grads = checked
                self.pending_offset = 0
                return 0
            if self._fast_grads(checked, 0) != 0:
                raise RuntimeError("fusedadam internal error: validated gradients rejected")
            self.pending_grads = checked
            self.pending_offset = 0
            return 0
        self.pending_grads = grads       # d.ptr[FA_GRAD] borrows their memory until run
        self.pending_offset = offset
        return 0

    cdef list _grad_list(self):
        """The gradients this step reads, one per param."""
        if self.pending_grads is None:
            return []
        cdef Py_ssize_t first = self.pending_offset
        return (<list>self.pending_grads)[first:first + self.d.n_arrays]

    cdef bint _needs_scan(self):
        return self.scans

    cdef Py_ssize_t _scan(self, Py_ssize_t offset) except -2:
        """Global index of the first non-finite (unscaled) gradient value, or -1; the
        clipping coefficient of this step when the group clips."""
        cdef Py_ssize_t found
        if self.numpy_backend:
            found, self.d.sumsq = _reference.scan(self._grad_list(), self.d.pre.grad_scale,
                                                  self.d.want_norm, _chunk_elements)
        else:
            with nogil:
                found = _scan(&self.d, self.n_threads)
        _clip(&self.d, self.max_grad_norm, &self.norm)
        return found

    cdef Py_ssize_t _checked_run(self):
        """Scan and, unless a gradient value is not finite and the policy minds, update:
        one GIL release."""
        cdef Py_ssize_t found
        cdef bint mind = self.mind_nonfinite
        with nogil:
            fa_step_enter()
            found = _scan(&self.d, self.n_threads)
            _clip(&self.d, self.max_grad_norm, &self.norm)
            if found < 0 or not mind:
                _run(&self.d, self.n_threads)
            fa_step_leave()
        return found if mind else -1

    cdef void _note_norm(self):
        """Publish this step's norm (it ran, or was skipped): None when not clipping."""
        self.last_grad_norm = self.norm if self.d.want_norm else None

    cdef void _run(self) except *:
        if self.numpy_backend:
            _reference.run(LOOP_KINDS[self.d.kind], self.slots, self.pending_grads,
                           _scalars_dict(&self.d.scalars), self.masters,
                           self.d.pre.grad_scale, self.d.pre.clip, self.scales, self.qsigned,
                           self.hyper_dict)
            return
        with nogil:
            fa_step_enter()
            _run(&self.d, self.n_threads)
            fa_step_leave()

    cdef void _count(self) noexcept:
        """Advance the step (each distinct step counter once) and NAdam's product."""
        cdef Py_ssize_t k
        cdef int j
        for k in range(self.n_distinct_steps):
            self.distinct_steps[k][0] += 1
        for k in range(self.d.n_arrays):
            for j in range(self.n_carry):
                self.mu_ptr[FA_MAX_CARRY * k + j][0] = self.mu_after[j]

    cdef void _release(self) noexcept:
        cdef Py_ssize_t k
        for k in range(self.d.n_arrays):
            self.d.ptr[FA_GRAD][k] = NULL      # grads may be freed now
        self.pending_grads = None

    def last_step(self):
        """``(loop kind name, scalars dict, n_threads)`` of the last step prepared (tests)."""
        return LOOP_KINDS[self.d.kind], _scalars_dict(&self.d.scalars), self.n_threads


cdef inline void _clip(GroupData *d, double max_norm, double *norm) noexcept nogil:
    """This step's clipping coefficient from the scanned sum of squares (fa_clip_coefficient),
    and whether the unscaling folds into the loops' sign (``GroupData.folded``)."""
    if d.want_norm:
        d.pre.clip = fa_clip_coefficient(d.sumsq, d.pre.grad_scale, max_norm, norm)
        d.pre.active = d.pre.grad_scale != 1.0 or d.pre.clip != 1.0
    _fold(d)


cdef inline void _fold(GroupData *d) noexcept nogil:
    d.use_folded = d.pre.active and d.pre.inverse != 0.0 and d.pre.clip == 1.0
    if d.use_folded:
        d.folded = d.scalars
        d.folded.sign = d.scalars.sign * d.pre.inverse


class _StepsDisagree(Exception):
    """A group's params are at different steps (the caller's checks say which)."""


# ------------------------------------------------------------------ the engine

cdef int _RAN = _policy.Outcome.RAN, _SKIPPED = _policy.Outcome.SKIPPED
cdef int _PLAN = _policy.Outcome.PLAN, _HYPER = _policy.Outcome.HYPER
cdef int _RAN_NEW_STATE = _policy.Outcome.RAN_NEW_STATE


cdef class Engine:
    """Steps planned groups: every per-step rule, once, for every backend.

    It knows no optimizer. A front end plans its groups (validated arrays and
    hyperparameters, ``GroupPlan``), hands them over with ``set_plans(groups, plans)`` and
    calls ``step(grads, grad_scale)``, which returns an :class:`~fusedadam.engine.Outcome`:

    - ``RAN`` / ``RAN_NEW_STATE``: every group was updated and counted (for the latter the
      caller now attaches the state its plans created, then calls ``snapshot()``);
    - ``SKIPPED``: a "skip" group saw a NaN/inf gradient; nothing was written;
    - ``PLAN``: the plans no longer fit (a param, state entry or the group list changed):
      plan every group again and call ``step`` again;
    - ``HYPER``: only hyperparameters changed; ``stale_groups()`` lists the groups to
      validate again (``set_hyper``; a changed state layout means ``PLAN`` instead).

    A NaN/inf gradient in an "error" group raises ``FloatingPointError``. On any error and
    for every outcome but ``RAN*`` nothing has been written.
    """
    cdef list plans
    cdef object groups                 # the group list the plans were built from
    cdef Py_ssize_t n_params
    cdef list one_grad                 # reused for step(ndarray): no list per step
    cdef list norms                    # per group: the last step's gradient norm, or None
    cdef list stale                    # groups whose hyperparameters changed (HYPER)

    def __cinit__(self):
        self.plans = None
        self.one_grad = [None]
        self.norms = [None]
        self.stale = []

    def invalidate(self):
        """Forget the plans: the next step returns ``PLAN``."""
        self.plans = None

    def set_plans(self, groups, plans):
        """Step ``plans`` (one ``GroupPlan`` per group of the list ``groups``) from now on."""
        self.plans = list(plans)
        self.groups = groups
        self.n_params = sum(len((<GroupPlan>p).slots[FA_PARAM]) for p in self.plans)
        if len(self.norms) != len(self.plans):
            self.norms = [None] * len(self.plans)

    def set_hyper(self, Py_ssize_t gi, spec):
        """Group ``gi``'s re-validated hyperparameters (after ``HYPER``)."""
        (<GroupPlan>self.plans[gi]).set_hyper(spec)

    def stale_groups(self):
        """The groups whose hyperparameters the last ``HYPER`` outcome found changed."""
        return list(self.stale)

    def snapshot(self):
        """The caller attached the new state: watch the state dicts as they are now."""
        for plan in self.plans or ():
            if (<GroupPlan>plan).installs is not None:
                (<GroupPlan>plan).installs = None
                (<GroupPlan>plan)._snapshot_state()

    @staticmethod
    def new_plan(spec):
        """The plan of one validated group (a ``GroupSpec``)."""
        return GroupPlan(spec)

    @property
    def plans(self):
        return None if self.plans is None else list(self.plans)

    def grad_norms(self):
        """Per group, the gradient norm of the last step (None: the group does not clip)."""
        return list(self.norms)

    def set_grad_norms(self, norms):
        """Restore ``grad_norms()`` (an unpickled optimizer keeps its ``last_grad_norm``)."""
        self.norms = list(norms)

    cdef int _fit(self) except -1:
        """``_RAN`` when every plan fits the caller's arrays as they are now, else what the
        caller must do first (``_PLAN``, or ``_HYPER`` with ``stale``). No writes."""
        cdef GroupPlan plan
        cdef Py_ssize_t gi
        if (self.plans is None or type(self.groups) is not list
                or len(<list>self.groups) != len(self.plans)):
            return _PLAN
        for gi in range(len(self.plans)):
            plan = <GroupPlan>self.plans[gi]
            if (<list>self.groups)[gi] is not plan.group or not plan._arrays_fit():
                return _PLAN
        for gi in range(len(self.plans)):
            if not (<GroupPlan>self.plans[gi])._hyper_fits():
                self.stale = [gi for gi in range(len(self.plans))
                              if not (<GroupPlan>self.plans[gi])._hyper_fits()]
                return _HYPER
        return _RAN

    def step(self, grads, grad_scale=None):
        cdef list glist
        cdef GroupPlan plan
        cdef Py_ssize_t gi, n_groups, offset, found
        cdef int fit, outcome = _RAN
        fit = self._fit()
        if fit != _RAN:
            return fit
        if type(grads) is list:
            glist = <list>grads
        elif type(grads) is cnp.ndarray and self.n_params == 1:
            glist = self.one_grad
            glist[0] = grads
        else:
            glist = _validation.as_grad_list(grads, self.n_params)
        if len(glist) != self.n_params:
            glist = _validation.as_grad_list(glist, self.n_params)   # raises
        n_groups = len(self.plans)
        try:
            offset = 0
            for gi in range(n_groups):
                plan = <GroupPlan>self.plans[gi]
                try:
                    plan._prepare(glist, offset, grad_scale)
                except _StepsDisagree:
                    self.plans = None         # the caller's checks name the params
                    return _PLAN
                offset += plan.d.n_arrays
            if n_groups == 1 and plan.scans and not plan.numpy_backend:
                # One group with a scan: scan and update in one release of the GIL.
                found = plan._checked_run()
                if found >= 0:
                    outcome = self._nonfinite(plan, found)  # "error" raises: no norm published
                self._note_norms()
                if found >= 0:
                    return outcome
                return self._commit(plan, outcome)
            for gi in range(n_groups):
                plan = <GroupPlan>self.plans[gi]
                if plan.scans:
                    found = plan._scan(0)
                    if found >= 0 and plan.mind_nonfinite:
                        outcome = self._nonfinite(plan, found)
            self._note_norms()
            if outcome == _SKIPPED:
                return _SKIPPED
            for gi in range(n_groups):
                plan = <GroupPlan>self.plans[gi]
                plan._run()
                outcome = self._commit(plan, outcome)
            return outcome
        finally:
            for gi in range(n_groups):
                (<GroupPlan>self.plans[gi])._release()
            self.one_grad[0] = None

    cdef void _note_norms(self) except *:
        cdef Py_ssize_t gi
        for gi in range(len(self.plans)):
            (<GroupPlan>self.plans[gi])._note_norm()
            self.norms[gi] = (<GroupPlan>self.plans[gi]).last_grad_norm

    cdef int _nonfinite(self, GroupPlan plan, Py_ssize_t found) except -1:
        """The group's policy on a non-finite value: raise (nothing written), or skip."""
        cdef Py_ssize_t k = _array_at(&plan.d, found)
        return _policy.nonfinite_outcome(plan.nonfinite, lambda: _validation.nonfinite_error(
            plan._grad_list(), plan.first_index, k, found - plan.d.offsets[k]))

    cdef int _commit(self, GroupPlan plan, int outcome) except -1:
        plan._count()
        return _RAN_NEW_STATE if plan.installs is not None else outcome


# ------------------------------------------------------------------ SparseAdam's rows

cdef inline void _one_row(char *param, char *exp_avg, char *exp_avg_sq, const char *values,
                          const ptrdiff_t *rows, const ptrdiff_t *order,
                          const ptrdiff_t *starts, Py_ssize_t u, Py_ssize_t row_bytes,
                          Py_ssize_t dim, char *scratch, const fa_loops *loops,
                          const fa_sparse_scalars *s) noexcept nogil:
    cdef Py_ssize_t first = starts[u], last = starts[u + 1]
    cdef Py_ssize_t offset = rows[u] * row_bytes
    cdef const char *grad
    if last - first == 1:
        grad = values + order[first] * row_bytes
    else:
        # Duplicated row: sum its gradient rows into this thread's scratch row first.
        loops.sparse_sum(scratch, values, order, first, last, dim)
        grad = scratch
    loops.sparse_row(param + offset, exp_avg + offset, exp_avg_sq + offset, grad, dim, s)


cdef struct SparseJob:
    char *param
    char *exp_avg
    char *exp_avg_sq
    const char *values
    const ptrdiff_t *rows
    const ptrdiff_t *order
    const ptrdiff_t *starts
    Py_ssize_t n_rows, dim, row_bytes, rows_per_chunk
    char *scratch               # one row per worker, for summing duplicated rows
    const fa_loops *loops
    fa_sparse_scalars s


cdef void _sparse_rows(SparseJob *j, Py_ssize_t first, Py_ssize_t last,
                       char *scratch) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(first, last):
        _one_row(j.param, j.exp_avg, j.exp_avg_sq, j.values, j.rows, j.order, j.starts, u,
                 j.row_bytes, j.dim, scratch, j.loops, &j.s)


cdef void _sparse_chunk(void *ctx, ptrdiff_t c, int worker) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>ctx
    cdef Py_ssize_t last = (c + 1) * j.rows_per_chunk
    _sparse_rows(j, c * j.rows_per_chunk, last if last < j.n_rows else j.n_rows,
                 j.scratch + worker * j.row_bytes if j.scratch != NULL else NULL)


cdef void _sparse_run(SparseJob *j, int n_threads) noexcept nogil:
    """Every distinct row is written by one thread (chunks of whole rows, about one chunk
    of elements each), so 1 and N threads give identical bits."""
    j.rows_per_chunk = _chunk_elements // j.dim if j.dim < _chunk_elements else 1
    cdef Py_ssize_t n_chunks = (j.n_rows + j.rows_per_chunk - 1) // j.rows_per_chunk
    if n_threads <= 1 or n_chunks < 2:
        _sparse_rows(j, 0, j.n_rows, j.scratch)
    else:
        fa_pool_run(_sparse_chunk, j, n_chunks, n_threads)


cdef inline bint _table(cnp.ndarray a, int typenum, Py_ssize_t n, Py_ssize_t dim):
    return (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_DIM(a, 0) == n and cnp.PyArray_DIM(a, 1) == dim
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISNOTSWAPPED(a))


def sparse_first_nonfinite(cnp.ndarray values):
    """Flat index of the first NaN/inf of a validated (contiguous, native) ``values``, or -1."""
    cdef int dtype = _dtype_index(values)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(values), found
    cdef const fa_loops *loops
    if dtype < 0 or not cnp.PyArray_IS_C_CONTIGUOUS(values):
        raise ValueError("values were not validated")
    if n == 0:
        return -1
    loops = fa_get_loops(_isa, dtype)
    cdef const void *data = cnp.PyArray_DATA(values)
    with nogil:
        found = loops.scan(data, n)
    return found


def sparse_adam_step(cnp.ndarray param, cnp.ndarray exp_avg, cnp.ndarray exp_avg_sq,
                     cnp.ndarray values, const Py_ssize_t[::1] rows,
                     const Py_ssize_t[::1] order, const Py_ssize_t[::1] starts,
                     dict scalars, num_threads):
    """Update the rows ``rows`` of ``param``, ``exp_avg``, ``exp_avg_sq`` in place.

    ``scalars`` is the dict of ``step_scalars`` for algorithm ``"sparse_adam"``'s fields
    (sign, one_minus_beta1, one_minus_beta2, step_size, eps); the loops cast them to the
    table's dtype. The arguments come from ``fusedadam.sparse`` (rows distinct and in range,
    everything validated): only shapes, dtypes and layout are re-checked here.
    """
    cdef SparseJob j
    cdef int typenum = cnp.PyArray_TYPE(param), dtype = _dtype_index(param)
    cdef Py_ssize_t n_table, dim, k = order.shape[0], n_rows = rows.shape[0]
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(param)
    cdef int n_threads = _resolve_threads(num_threads)
    if dtype < 0 or cnp.PyArray_NDIM(param) != 2:
        raise ValueError("param must be a 2-D float table")
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
    j.s.sign = scalars["sign"]
    j.s.one_minus_beta1 = scalars["one_minus_beta1"]
    j.s.one_minus_beta2 = scalars["one_minus_beta2"]
    j.s.step_size = scalars["step_size"]
    j.s.eps = scalars["eps"]
    j.param = <char *>cnp.PyArray_DATA(param)
    j.exp_avg = <char *>cnp.PyArray_DATA(exp_avg)
    j.exp_avg_sq = <char *>cnp.PyArray_DATA(exp_avg_sq)
    j.values = <const char *>cnp.PyArray_DATA(values)
    j.rows = <const ptrdiff_t *>&rows[0]
    j.order = <const ptrdiff_t *>&order[0]
    j.starts = <const ptrdiff_t *>&starts[0]
    j.n_rows, j.dim, j.row_bytes = n_rows, dim, dim * itemsize
    j.loops = fa_get_loops(_isa, dtype)
    j.scratch = NULL
    if n_rows < k:
        j.scratch = <char *>malloc(n_threads * dim * itemsize)
        if j.scratch == NULL:
            raise MemoryError()
    try:
        with nogil:
            fa_step_enter()
            _sparse_run(&j, n_threads)
            fa_step_leave()
    finally:
        free(j.scratch)


def constants():
    """The numbers of the C headers that the NumPy twin and the Python engine follow too."""
    return {
        "Q8_BLOCK": FA_Q8_BLOCK,
        "POOL_GRAIN": FA_POOL_GRAIN,
        "TENSOR_PIECE": FA_TENSOR_PIECE,
        "TENSOR_LANES": FA_TENSOR_LANES,
        "NORM_LANES": FA_NORM_LANES,
        "SCAN_BLOCK": FA_SCAN_BLOCK,
        "MAX_CARRY": FA_MAX_CARRY,
        "MAX_STATE_SLOTS": FA_MAX_SLOTS - FA_STATE0,
    }


def element_bytes():
    """Bytes per element of each storage type, from _convert.h's table (the kernels step
    through storage with it; tests/test_packaging.py checks it against NumPy's item sizes).
    A function at the end of the module, as ``constants``: module-level code moves the hot
    functions' layout."""
    return {
        "float32": fa_et_bytes[FA_ET_F32],
        "float64": fa_et_bytes[FA_ET_F64],
        "bfloat16": fa_et_bytes[FA_ET_BF16],
        "float16": fa_et_bytes[FA_ET_F16],
        "8bit": fa_et_bytes[FA_ET_Q8],
        "residual": fa_et_bytes[FA_ET_RESID],
        "8bit_companded": fa_et_bytes[FA_ET_Q8C],
        "compact": fa_et_bytes[FA_ET_COMPACT],
    }
