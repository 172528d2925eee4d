/*
 * Inner loops of the Adam family over one contiguous segment, compiled once per
 * instruction set and chosen at run time (no -march flag: the wheel stays portable).
 *
 * Bit-exactness contract: every loop evaluates, per element and in the array's dtype,
 * exactly the operations of fusedadam/reference.py in the same order. Only IEEE-exact
 * operations are used (+, -, *, /, sqrt, fabs, compare); the build passes
 * -ffp-contract=off so no multiply-add is fused, so every instruction set and every
 * thread count produces the same bits as NumPy.
 *
 * Index arithmetic is ptrdiff_t (64-bit on every 64-bit target): a single parameter can
 * exceed 2**31 elements, and a 32-bit index would wrap silently.
 */
#ifndef FUSEDADAM_LOOPS_H
#define FUSEDADAM_LOOPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Per-step scalars, computed once in double by the Python layer, cast to the array's
 * dtype inside each loop (the same rounding as NumPy's dtype.type(x)). */
typedef struct {
    double sign;            /* -1 when maximizing, else 1 */
    double weight_decay;    /* coupled (L2) coefficient; used only by the *_l2 loops */
    double decay;           /* decoupled factor 1 - lr_t * weight_decay; 1 otherwise */
    double beta1;           /* beta1 * beta1_decay ** (t - 1) */
    double one_minus_beta1;
    double beta2;
    double one_minus_beta2;
    double step_size;       /* lr_t / bias_correction1 */
    double bc2_sqrt;        /* sqrt(bias_correction2) */
    double eps;
} fa_scalars;

typedef void (*fa_loop_fn)(void *param, const void *grad, void *exp_avg, void *second,
                           void *third, ptrdiff_t n, const fa_scalars *s);

enum { FA_FLOAT32 = 0, FA_FLOAT64 = 1, FA_N_DTYPES = 2 };
enum {
    FA_ADAM = 0, FA_ADAM_L2, FA_AMSGRAD, FA_AMSGRAD_L2, FA_ADAMAX, FA_ADAMAX_L2,
    FA_PROBE, FA_N_KINDS
};
enum { FA_ISA_BASELINE = 0, FA_ISA_AVX2 = 1, FA_ISA_AVX512 = 2, FA_N_ISAS = 3 };

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

/* max that propagates NaN from either side, as numpy.maximum does. */
#define FA_MAX_NAN(a, b) (((a) >= (b) || (a) != (a)) ? (a) : (b))

/* One Adam/AMSGrad element step. COUPLED and AMSGRAD are compile-time constants at
 * every call site, so each loop below is specialised with no branch left inside.
 *
 * The documented update p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps) is evaluated
 * in the algebraically identical form
 *     p -= (step_size * sqrt(bc2)) * m / (sqrt(v) + eps * sqrt(bc2))
 * (the eps-hat form of the Adam paper, section 2): one division per element instead of
 * two. The divider/square-root unit is the bottleneck of the in-cache step (on Zen 3 one
 * vsqrtps + two vdivps per 8 floats cost ~1.5 cycles/element; one division less is
 * measured in bench/README.md). Both products are formed in double and cast once per
 * call, and reference.adam_update does the same, so the two stay bit-identical. */
#define FA_ADAM_BODY(T, SQRT, COUPLED, AMSGRAD)                                      \
    {                                                                                \
        T *restrict p_ = (T *)param;                                                 \
        const T *restrict g_ = (const T *)grad;                                      \
        T *restrict m_ = (T *)exp_avg;                                               \
        T *restrict v_ = (T *)second;                                                \
        T *restrict vmax_ = (T *)third;                                              \
        const T sign = (T)s->sign, wd = (T)s->weight_decay, decay = (T)s->decay;     \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;                      \
        const T step_size = (T)(s->step_size * s->bc2_sqrt);                         \
        const T eps = (T)(s->eps * s->bc2_sqrt);                                     \
        (void)wd; (void)vmax_;                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            T g = g_[i] * sign;                                                      \
            T p = p_[i];                                                             \
            if (COUPLED) g = g + wd * p;                                             \
            p = p * decay;                                                           \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T v = b2 * v_[i] + omb2 * g * g;                                         \
            m_[i] = m;                                                               \
            v_[i] = v;                                                               \
            if (AMSGRAD) {                                                           \
                T vmax = vmax_[i];                                                   \
                vmax = FA_MAX_NAN(vmax, v);                                          \
                vmax_[i] = vmax;                                                     \
                v = vmax;                                                            \
            }                                                                        \
            T denom = SQRT(v) + eps;                                                 \
            p_[i] = p - step_size * m / denom;                                       \
        }                                                                            \
    }

/* One Adamax element step: u = max(beta2 * u, |g| + eps), p -= step_size * m / u. */
#define FA_ADAMAX_BODY(T, FABS, COUPLED)                                             \
    {                                                                                \
        T *restrict p_ = (T *)param;                                                 \
        const T *restrict g_ = (const T *)grad;                                      \
        T *restrict m_ = (T *)exp_avg;                                               \
        T *restrict u_ = (T *)second;                                                \
        const T sign = (T)s->sign, wd = (T)s->weight_decay, decay = (T)s->decay;     \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, step_size = (T)s->step_size, eps = (T)s->eps;      \
        (void)wd; (void)third;                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            T g = g_[i] * sign;                                                      \
            T p = p_[i];                                                             \
            if (COUPLED) g = g + wd * p;                                             \
            p = p * decay;                                                           \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T u = b2 * u_[i];                                                        \
            T a = FABS(g) + eps;                                                     \
            u = FA_MAX_NAN(u, a);                                                    \
            m_[i] = m;                                                               \
            u_[i] = u;                                                               \
            p_[i] = p - step_size * m / u;                                           \
        }                                                                            \
    }

/* Bandwidth probe with Adam's memory traffic (read p, g, m, v; write p, m, v) and
 * trivial arithmetic: the fastest the memory system can run an Adam step. */
#define FA_PROBE_BODY(T)                                                             \
    {                                                                                \
        T *restrict p_ = (T *)param;                                                 \
        const T *restrict g_ = (const T *)grad;                                      \
        T *restrict m_ = (T *)exp_avg;                                               \
        T *restrict v_ = (T *)second;                                                \
        T *restrict x_ = (T *)third;                                                 \
        (void)s;                                                                     \
        if (x_) {                                                                    \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T g = g_[i];                                                         \
                m_[i] = m_[i] + g; v_[i] = v_[i] + g; x_[i] = x_[i] + g;             \
                p_[i] = p_[i] - g;                                                   \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T g = g_[i];                                                         \
                m_[i] = m_[i] + g; v_[i] = v_[i] + g;                                \
                p_[i] = p_[i] - g;                                                   \
            }                                                                        \
        }                                                                            \
    }

#define FA_SIG(NAME)                                                                 \
    void NAME(void *param, const void *grad, void *exp_avg, void *second,            \
              void *third, ptrdiff_t n, const fa_scalars *s)

/* All loops of one instruction set; ATTR is that set's target attribute. */
#define FA_DEFINE_ISA(ISA, ATTR)                                                     \
    ATTR static FA_SIG(fa_adam_f32_##ISA) FA_ADAM_BODY(float, sqrtf, 0, 0)           \
    ATTR static FA_SIG(fa_adam_l2_f32_##ISA) FA_ADAM_BODY(float, sqrtf, 1, 0)        \
    ATTR static FA_SIG(fa_ams_f32_##ISA) FA_ADAM_BODY(float, sqrtf, 0, 1)            \
    ATTR static FA_SIG(fa_ams_l2_f32_##ISA) FA_ADAM_BODY(float, sqrtf, 1, 1)         \
    ATTR static FA_SIG(fa_adamax_f32_##ISA) FA_ADAMAX_BODY(float, fabsf, 0)          \
    ATTR static FA_SIG(fa_adamax_l2_f32_##ISA) FA_ADAMAX_BODY(float, fabsf, 1)       \
    ATTR static FA_SIG(fa_probe_f32_##ISA) FA_PROBE_BODY(float)                      \
    ATTR static FA_SIG(fa_adam_f64_##ISA) FA_ADAM_BODY(double, sqrt, 0, 0)           \
    ATTR static FA_SIG(fa_adam_l2_f64_##ISA) FA_ADAM_BODY(double, sqrt, 1, 0)        \
    ATTR static FA_SIG(fa_ams_f64_##ISA) FA_ADAM_BODY(double, sqrt, 0, 1)            \
    ATTR static FA_SIG(fa_ams_l2_f64_##ISA) FA_ADAM_BODY(double, sqrt, 1, 1)         \
    ATTR static FA_SIG(fa_adamax_f64_##ISA) FA_ADAMAX_BODY(double, fabs, 0)          \
    ATTR static FA_SIG(fa_adamax_l2_f64_##ISA) FA_ADAMAX_BODY(double, fabs, 1)       \
    ATTR static FA_SIG(fa_probe_f64_##ISA) FA_PROBE_BODY(double)

#define FA_TABLE_ROW(ISA)                                                            \
    {{fa_adam_f32_##ISA, fa_adam_l2_f32_##ISA, fa_ams_f32_##ISA, fa_ams_l2_f32_##ISA, \
      fa_adamax_f32_##ISA, fa_adamax_l2_f32_##ISA, fa_probe_f32_##ISA},              \
     {fa_adam_f64_##ISA, fa_adam_l2_f64_##ISA, fa_ams_f64_##ISA, fa_ams_l2_f64_##ISA, \
      fa_adamax_f64_##ISA, fa_adamax_l2_f64_##ISA, fa_probe_f64_##ISA}}

FA_DEFINE_ISA(baseline, )

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FA_HAVE_X86_DISPATCH 1
/* FMA is deliberately not enabled: a fused multiply-add rounds once, NumPy twice. */
FA_DEFINE_ISA(avx2, __attribute__((target("avx2"))))
FA_DEFINE_ISA(avx512, __attribute__((target("avx512f,prefer-vector-width=512"))))
static const fa_loop_fn fa_loops[FA_N_ISAS][FA_N_DTYPES][FA_N_KINDS] = {
    FA_TABLE_ROW(baseline), FA_TABLE_ROW(avx2), FA_TABLE_ROW(avx512)};
#else
#define FA_HAVE_X86_DISPATCH 0
static const fa_loop_fn fa_loops[FA_N_ISAS][FA_N_DTYPES][FA_N_KINDS] = {
    FA_TABLE_ROW(baseline), FA_TABLE_ROW(baseline), FA_TABLE_ROW(baseline)};
#endif

/* The best instruction set this CPU runs, as an FA_ISA_* value. */
static int fa_cpu_best_isa(void) {
#if FA_HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return FA_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return FA_ISA_AVX2;
#endif
    return FA_ISA_BASELINE;
}

static fa_loop_fn fa_get_loop(int isa, int dtype, int kind) {
    return fa_loops[isa][dtype][kind];
}

#endif /* FUSEDADAM_LOOPS_H */
