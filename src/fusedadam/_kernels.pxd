# cython: language_level=3
"""What ``_kernels.pyx`` shares with ``_testing.pyx``: the C declarations of the headers, a
group's pointer tables (``GroupData``) and the functions that allocate and run them, so
that the test and benchmark kernels (``fusedadam._testing``: the roofline probe, the
conversion and 8-bit codec helpers) run through the same code as a step without living in
the production module."""
from libc.stddef cimport ptrdiff_t
cimport numpy as cnp


cdef extern from "_dispatch.h" nogil:
    enum:
        FA_MAX_STATES
    # The engine touches these fields itself; the others are named by fa_scalar_fields.
    ctypedef struct fa_scalars:
        double sign
        double lr
        double tensor_step
        double tensor_decay
        double *acc
    ctypedef struct fa_scalar_field:
        const char *name
        size_t offset
    const fa_scalar_field fa_scalar_fields[]
    enum:
        FA_N_SCALAR_FIELDS
    ctypedef void (*fa_loop_fn)(char **a, ptrdiff_t n, const fa_scalars *s) noexcept nogil
    ctypedef ptrdiff_t (*fa_scan_fn)(const void *grad, ptrdiff_t n) noexcept nogil
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
    ctypedef struct fa_pre:
        double grad_scale
        double clip
        int active
        double inverse
    ctypedef struct fa_segment:
        char *param
        char *lowp
        const char *grad
        char *state[FA_MAX_STATES]
        float *scale[FA_MAX_STATES]
        int qsigned[FA_MAX_STATES]
        int n_states, grad_type, state_type, lowp_type
        int read_only
    ctypedef void (*fa_staged_fn)(fa_loop_fn dense, const fa_segment *x, ptrdiff_t n,
                                  const fa_scalars *s, const fa_pre *pre) noexcept nogil
    ctypedef ptrdiff_t (*fa_norm_fn)(const void *grad, ptrdiff_t n,
                                     double *sumsq) noexcept nogil
    ctypedef ptrdiff_t (*fa_unscaled_fn)(const void *grad, ptrdiff_t n,
                                         double scale) noexcept nogil
    ctypedef struct fa_grad_fns:
        fa_scan_fn scan
        fa_norm_fn norm
        fa_unscaled_fn unscaled
    ctypedef struct fa_loops:
        fa_loop_fn dense[64]
        fa_staged_fn staged
        fa_scan_fn scan
        fa_row_fn sparse_row
        fa_sum_fn sparse_sum
    enum:
        FA_N_KINDS
        FA_N_ISAS
        FA_N_DTYPES
        FA_PARAM
        FA_GRAD
        FA_STATE0
        FA_MAX_SLOTS
        FA_KIND_probe
        FA_KIND_probe_read
        FA_HAVE_X86_DISPATCH
        FA_TENSOR_SUMS
        FA_TENSOR_LANES
        FA_TENSOR_PIECE
        FA_NORM_LANES
        FA_SCAN_BLOCK
    const char *fa_kind_names[]
    const char *fa_isa_names[]
    const char *fa_dtype_names[]
    enum:
        FA_ET_F32
        FA_ET_F64
        FA_ET_BF16
        FA_ET_F16
        FA_N_ETS
        FA_ET_Q8
        FA_ET_RESID
        FA_ET_Q8C
        FA_ET_COMPACT
        FA_Q8_BLOCK
    const size_t fa_et_bytes[]
    int fa_cpu_best_isa()
    const fa_loops *fa_get_loops(int isa, int dtype)
    const fa_grad_fns *fa_get_grad_fns(int isa, int type)
    double fa_clip_coefficient(double sumsq, double grad_scale, double max_norm, double *norm)
    void fa_pre_set(fa_pre *pre, double grad_scale)
    float fa_bf16_to_f32(unsigned short h)
    unsigned short fa_f32_to_bf16(float f)
    float fa_f16_to_f32(unsigned short h)
    unsigned short fa_f32_to_f16(float f)
    float fa_q8_value(unsigned char code, int qsigned)
    unsigned char fa_q8_code(float value, float absmax, int qsigned)

cdef extern from "_pool.h" nogil:
    ctypedef void (*fa_chunk_fn)(void *ctx, ptrdiff_t chunk, int worker) noexcept nogil
    void fa_pool_run(fa_chunk_fn fn, void *ctx, ptrdiff_t n_chunks, int n_threads)
    ptrdiff_t fa_chunk_size(ptrdiff_t total, ptrdiff_t grain)
    ptrdiff_t fa_chunk_count(ptrdiff_t total, ptrdiff_t chunk_size)
    enum:
        FA_POOL_GRAIN

cdef extern from "_scalars.h" nogil:
    # Filled from a hyper_dict by the names of fa_hyper_fields (_read_hyper).
    ctypedef struct fa_hyper:
        int algorithm
    ctypedef struct fa_hyper_field:
        const char *name
        int is_int
        size_t offset
    const fa_hyper_field fa_hyper_fields[]
    enum:
        FA_N_HYPER_FIELDS
    enum:
        FA_N_ALGORITHMS
        FA_MAX_CARRY
    const char *fa_algorithm_names[]
    int fa_step_scalars(const fa_hyper *h, double t, double lr, const double *carry,
                        fa_scalars *s, double *carry_after)
    int fa_sum_kind(int kind)
    void fa_tensor_scalars(const fa_hyper *h, int kind, const double *sums, ptrdiff_t n,
                           double lr, double *step, double *decay)


cdef struct GroupData:
    Py_ssize_t n_arrays
    int n_slots                 # FA_STATE0 + number of state arrays the loops read
    # ptr[slot][k]: param (its master when it has one), grad, state arrays of array k
    char **ptr[FA_MAX_SLOTS]
    char **lowp                 # per array: the bfloat16/float16 param, or NULL
    # per array, 4 FA_ET_*: compute, grad (this step), state, low-precision param (-1: none)
    int *types
    # per array, FA_MAX_STATES per state slot: the block scales of FA_ET_Q8 state, or NULL
    float **scales
    int qsigned[FA_MAX_STATES]  # per state slot: the signed (1) or unsigned (0) 8-bit map
    Py_ssize_t *offsets         # n_arrays + 1 prefix sums of element counts
    const fa_loops **loops      # per array: the dispatch row of its compute type
    const fa_grad_fns **grad_fns  # per array: the scans of its gradient's type (this step)
    int kind                    # this step's loop kind
    fa_scalars scalars
    fa_pre pre                  # this step's unscaling and clipping
    # The scalars with sign = +-1/grad_scale: a power-of-two grad_scale and no clipping
    # fold into the loop's own multiply of g by sign (x * 2**-k * +-1 is exactly
    # (x / 2**k) * +-1), so such a step needs no staging of its gradients.
    fa_scalars folded
    bint use_folded
    bint want_norm              # this step sums the squares of the gradients (clipping)
    double sumsq                # their sum, once scanned
    Py_ssize_t chunk            # elements per chunk of this step
    Py_ssize_t scan_task        # chunks per task of this step's parallel scan
    Py_ssize_t update_task      # chunks per task of this step's parallel update
    Py_ssize_t *first_bad       # per chunk: first non-finite gradient index, or -1
    double *chunk_sumsq         # per chunk: the sum of squares of its gradient values
    Py_ssize_t first_bad_size   # capacity of first_bad and chunk_sumsq
    # Per-tensor kinds (_loops.h): the phase 1 kind of this step's kind, or -1
    int sum_kind
    const fa_hyper *hyper       # the group's hyperparameters (the tensors' scalars)
    double *tensor_step         # per array: its phase 2 scalars of this step
    double *tensor_decay
    Py_ssize_t *piece_base      # n_arrays + 1: the first piece of each array
    double *partials            # FA_TENSOR_SUMS per piece of the arrays of several pieces


cdef inline char *_data(cnp.ndarray a, void *nonnull) noexcept:
    # A zero-size array may have a NULL data pointer; never hand NULL to a loop.
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    return p if p != NULL else <char *>nonnull


cdef int _group_alloc(GroupData *d) except -1
cdef void _group_free(GroupData *d) noexcept
cdef int _reserve_chunks(GroupData *d) except -1
cdef void _run(GroupData *d, int n_threads) noexcept nogil
cdef int _current_isa() noexcept
cdef long _steps_in_flight_most(bint reset) noexcept
