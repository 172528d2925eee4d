/*
 * SparseAdam's per-row bodies; _dispatch.h instantiates them once per instruction set and
 * element type, in the one dispatch table.
 *
 * Bit-exactness contract: per element and in the table's dtype, the operations of
 * fusedadam/reference.py::sparse_adam_update in the same order, which are those of
 * torch.optim._functional.sparse_adam. Only +, -, *, / and sqrt are used and the build
 * passes -ffp-contract=off, so every instruction set gives the NumPy reference's bits.
 */
#ifndef FUSEDADAM_SPARSE_ROWS_H
#define FUSEDADAM_SPARSE_ROWS_H

#include <math.h>
#include <stddef.h>

typedef struct {
    double sign;             /* -1 when maximizing, else 1 */
    double one_minus_beta1;
    double one_minus_beta2;
    double step_size;        /* lr_t * sqrt(1 - beta2**t) / (1 - beta1**t) */
    double eps;
} fa_sparse_scalars;

/* Update one row of dim elements from its gradient row. */
typedef void (*fa_row_fn)(void *param, void *exp_avg, void *exp_avg_sq, const void *grad,
                          ptrdiff_t dim, const fa_sparse_scalars *s);
/* out = values[order[first]] + values[order[first + 1]] + ... (left to right), rows of dim. */
typedef void (*fa_sum_fn)(void *out, const void *values, const ptrdiff_t *order,
                          ptrdiff_t first, ptrdiff_t last, ptrdiff_t dim);


#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

#define FA_SPARSE_ROW_BODY(T, SQRT)                                                  \
    {                                                                                \
        T *restrict p_ = (T *)param;                                                 \
        T *restrict m_ = (T *)exp_avg;                                               \
        T *restrict v_ = (T *)exp_avg_sq;                                            \
        const T *restrict g_ = (const T *)grad;                                      \
        const T sign = (T)s->sign, omb1 = (T)s->one_minus_beta1;                     \
        const T omb2 = (T)s->one_minus_beta2, step_size = (T)s->step_size;           \
        const T eps = (T)s->eps;                                                     \
        for (ptrdiff_t j = 0; j < dim; j++) {                                        \
            T g = g_[j] * sign;                                                      \
            T m_old = m_[j], v_old = v_[j];                                          \
            /* torch's order: old + (new - old) * (1 - beta) */                      \
            T m_new = m_old + (g - m_old) * omb1;                                    \
            T v_new = v_old + (g * g - v_old) * omb2;                                \
            m_[j] = m_new;                                                           \
            v_[j] = v_new;                                                           \
            T denom = SQRT(v_new) + eps;                                             \
            p_[j] = p_[j] - step_size * (m_new / denom);                             \
        }                                                                            \
    }

#define FA_SPARSE_SUM_BODY(T)                                                        \
    {                                                                                \
        T *restrict out_ = (T *)out;                                                 \
        const T *restrict first_row = (const T *)values + order[first] * dim;        \
        for (ptrdiff_t j = 0; j < dim; j++) out_[j] = first_row[j];                  \
        for (ptrdiff_t o = first + 1; o < last; o++) {                               \
            const T *restrict row = (const T *)values + order[o] * dim;              \
            for (ptrdiff_t j = 0; j < dim; j++) out_[j] = out_[j] + row[j];          \
        }                                                                            \
    }

#define FA_SPARSE_ROW_SIG(NAME)                                                      \
    void NAME(void *param, void *exp_avg, void *exp_avg_sq, const void *grad,        \
              ptrdiff_t dim, const fa_sparse_scalars *s)
#define FA_SPARSE_SUM_SIG(NAME)                                                      \
    void NAME(void *out, const void *values, const ptrdiff_t *order, ptrdiff_t first, \
              ptrdiff_t last, ptrdiff_t dim)

#endif /* FUSEDADAM_SPARSE_ROWS_H */
