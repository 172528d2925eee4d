/*
 * Mixed precision and gradient pre-processing, in the same single pass as every step.
 *
 * Storage element types (FA_ET_*): a param, its gradient and its state may each be stored
 * in a type other than the one the step computes in (float32 for float32, bfloat16 and
 * float16 params; float64 for float64 params). Such a segment runs "staged": per block of
 * FA_STAGE elements, the gradient (converted, divided by grad_scale, multiplied by the
 * clipping coefficient) and any bfloat16 state are widened into buffers on the stack, the
 * compute type's ordinary loop of _loops.h runs on the block (on the float32 master when the
 * param is bfloat16/float16), then the bfloat16 state and the rounded param are written
 * back. The block stays in L1: every byte of memory is still read once and written once,
 * and the float32 arithmetic is exactly the float32 optimizer's (same loop), so the master's
 * trajectory is bit-identical to a float32 optimizer stepping the master with the widened
 * gradients.
 *
 * Conversions are exact integer/IEEE work, the same on every instruction set:
 *   - bfloat16 -> float32 and float16 -> float32 are exact;
 *   - float32 -> bfloat16 and float32 -> float16 round to nearest even; NaN stays NaN
 *     (bfloat16: sign | 0x7fc0, as ml_dtypes; float16: quiet, the payload's top bits kept,
 *     as the F16C instruction), float16 overflows to inf as IEEE says.
 *
 * The norm scan: for clipping (max_grad_norm), the scan that already reads every gradient
 * for the non-finite check also sums the squares of the unscaled gradient values
 * x = (C)g / (C)grad_scale, in double, in FA_NORM_LANES lanes (element i of a segment goes
 * to lane i % FA_NORM_LANES, each lane sums in order, the lanes are then added in order).
 * reference.py sums in the same order, so the norm is the same bits on every path.
 */
#ifndef FUSEDADAM_MIXED_H
#define FUSEDADAM_MIXED_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Storage element types; the first two are also the compute rows FA_DTYPE_f32/f64. */
enum { FA_ET_F32 = 0, FA_ET_F64 = 1, FA_ET_BF16 = 2, FA_ET_F16 = 3, FA_N_ETS };

#define FA_STAGE 256      /* elements per staged block: 4 float32 buffers = 4 KB */
#define FA_NORM_LANES 16

/* Gradient pre-processing of one step of one group (sign is the loops' own). */
typedef struct {
    double grad_scale;    /* gradients are divided by it (1: no unscaling) */
    double clip;          /* then multiplied by it (1: no clipping) */
    int active;           /* grad_scale != 1 or clip != 1 */
    double inverse;       /* 1 / grad_scale when that is exact and dividing by grad_scale
                           * is multiplying by it (a power of two in [2**-126, 2**126],
                           * as AMP's scales are), else 0 */
} fa_pre;

/* Set the unscaling of this step (clip 1 until the scan has run). x / 2**k and
 * x * 2**-k are the same correctly rounded number, subnormal results included, and both
 * 2**k and 2**-k are exact in float32 for |k| <= 126: the multiply replaces the divider. */
static inline void fa_pre_set(fa_pre *pre, double grad_scale)
{
    int e;
    pre->grad_scale = grad_scale;
    pre->clip = 1.0;
    pre->active = grad_scale != 1.0;
    pre->inverse = (frexp(grad_scale, &e) == 0.5 && e - 1 >= -126 && e - 1 <= 126)
                       ? 1.0 / grad_scale : 0.0;
}

/* One array segment of a staged call. */
typedef struct {
    char *param;          /* the compute-type array the loop updates: master, or the param */
    char *lowp;           /* the bfloat16/float16 param rounded from it, or NULL */
    const char *grad;
    char *state[3];
    int n_states, grad_type, state_type, lowp_type;
} fa_segment;

/* ---- scalar conversions --------------------------------------------------------------- */

static inline float fa_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t fa_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float fa_bf16_to_f32(uint16_t h) { return fa_bits_f32((uint32_t)h << 16); }

static inline uint16_t fa_f32_to_bf16(float f)
{
    uint32_t u = fa_f32_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    /* NaN test as a signed compare of the magnitude (one vector instruction) */
    return (uint16_t)((int32_t)(u & 0x7fffffffu) > 0x7f800000 ? nan : rounded);
}

static inline float fa_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : ((em << 13) + 0x38000000u);
    /* subnormal or zero: em * 2**-24, exact in float */
    float value = em < 0x400u ? (float)em * 5.9604644775390625e-8f : fa_bits_f32(bits);
    return fa_bits_f32(fa_f32_bits(value) | sign);
}

static inline uint16_t fa_f32_to_f16(float f)
{
    uint32_t u = fa_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* |f| < 2**-14: adding 0.5 rounds to a multiple of 2**-24 (RNE), the subnormal code */
    uint32_t sub = fa_f32_bits(fa_bits_f32(a) + 0.5f) - 0x3f000000u;
    /* normal: rebias the exponent, round the 13 dropped bits to nearest even */
    uint32_t norm = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
    uint32_t r = a < 0x38800000u ? sub : norm;
    r = a >= 0x47800000u ? 0x7c00u : r;                        /* overflow: inf */
    r = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : r; /* NaN: quiet */
    return (uint16_t)(r | sign);
}

/* ---- per-instruction-set block loops ------------------------------------------------------ */

/* out[i] = (C)g[i] / scale * clip (the division as the exact reciprocal's multiply
 * when pre->inverse is set; skipped, as x / 1 and x * 1 are x, when inactive). */
#define FA_WIDEN_LOOP(C, GT, CONV)                                                   \
    {                                                                                \
        const GT *restrict src = (const GT *)grad;                                   \
        const C scale = (C)pre->grad_scale, clip = (C)pre->clip;                     \
        const C inverse = (C)pre->inverse;                                           \
        if (!pre->active) {                                                          \
            for (ptrdiff_t i = 0; i < n; i++) out[i] = CONV(src[i]);                 \
        } else if (pre->inverse != 0.0) {                                            \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                C x = CONV(src[i]) * inverse;                                        \
                out[i] = x * clip;                                                   \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                C x = CONV(src[i]) / scale;                                          \
                out[i] = x * clip;                                                   \
            }                                                                        \
        }                                                                            \
    }
#define FA_SAME(x) (x)

#define FA_DEFINE_MIXED(ISA)                                                         \
    FA_ATTR_##ISA static void fa_widen_grad_f32_##ISA(                               \
        float *restrict out, const void *grad, int type, ptrdiff_t n,                \
        const fa_pre *pre)                                                           \
    {                                                                                \
        if (type == FA_ET_BF16) FA_WIDEN_LOOP(float, uint16_t, fa_bf16_to_f32)       \
        else if (type == FA_ET_F16) FA_WIDEN_LOOP(float, uint16_t, fa_f16_to_f32)    \
        else FA_WIDEN_LOOP(float, float, FA_SAME)                                    \
    }                                                                                \
    FA_ATTR_##ISA static void fa_widen_grad_f64_##ISA(                               \
        double *restrict out, const void *grad, int type, ptrdiff_t n,               \
        const fa_pre *pre)                                                           \
    {                                                                                \
        (void)type;                                                                  \
        FA_WIDEN_LOOP(double, double, FA_SAME)                                       \
    }                                                                                \
    FA_ATTR_##ISA static void fa_bf16_load_##ISA(float *restrict out,                \
                                                 const uint16_t *restrict in,        \
                                                 ptrdiff_t n)                        \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = fa_bf16_to_f32(in[i]);            \
    }                                                                                \
    FA_ATTR_##ISA static void fa_bf16_store_##ISA(uint16_t *restrict out,            \
                                                  const float *restrict in,          \
                                                  ptrdiff_t n)                       \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = fa_f32_to_bf16(in[i]);            \
    }                                                                                \
    FA_ATTR_##ISA static void fa_f16_store_##ISA(uint16_t *restrict out,             \
                                                 const float *restrict in,           \
                                                 ptrdiff_t n)                        \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = fa_f32_to_f16(in[i]);             \
    }                                                                                \
    /* One staged segment with a float32 compute type (see the header comment). */  \
    FA_ATTR_##ISA static void fa_staged_f32_##ISA(fa_loop_fn dense,                  \
                                                  const fa_segment *x, ptrdiff_t n,  \
                                                  const fa_scalars *s,               \
                                                  const fa_pre *pre)                 \
    {                                                                                \
        float gbuf[FA_STAGE], sbuf[3][FA_STAGE];                                     \
        char *a[FA_MAX_SLOTS] = {0};                                                 \
        const int stage_grad = x->grad_type != FA_ET_F32 || pre->active;             \
        const int stage_state = x->state_type == FA_ET_BF16;                         \
        const size_t gsize = x->grad_type == FA_ET_F32 ? 4 : 2;                      \
        const size_t ssize = stage_state ? 2 : 4;                                    \
        for (ptrdiff_t off = 0; off < n; off += FA_STAGE) {                          \
            ptrdiff_t len = n - off < FA_STAGE ? n - off : FA_STAGE;                 \
            a[FA_PARAM] = x->param + off * 4;                                        \
            if (stage_grad) {                                                        \
                fa_widen_grad_f32_##ISA(gbuf, x->grad + off * gsize, x->grad_type,   \
                                        len, pre);                                   \
                a[FA_GRAD] = (char *)gbuf;                                           \
            } else {                                                                 \
                a[FA_GRAD] = (char *)x->grad + off * 4;                              \
            }                                                                        \
            for (int j = 0; j < x->n_states; j++) {                                  \
                if (stage_state) {                                                   \
                    fa_bf16_load_##ISA(sbuf[j],                                      \
                                       (const uint16_t *)(x->state[j] + off * 2), len); \
                    a[FA_STATE0 + j] = (char *)sbuf[j];                              \
                } else {                                                             \
                    a[FA_STATE0 + j] = x->state[j] + off * ssize;                    \
                }                                                                    \
            }                                                                        \
            dense(a, len, s);                                                        \
            if (stage_state)                                                         \
                for (int j = 0; j < x->n_states; j++)                                \
                    fa_bf16_store_##ISA((uint16_t *)(x->state[j] + off * 2), sbuf[j], \
                                        len);                                        \
            if (x->lowp_type == FA_ET_BF16)                                          \
                fa_bf16_store_##ISA((uint16_t *)(x->lowp + off * 2),                 \
                                    (const float *)a[FA_PARAM], len);                \
            else if (x->lowp_type == FA_ET_F16)                                      \
                fa_f16_store_##ISA((uint16_t *)(x->lowp + off * 2),                  \
                                   (const float *)a[FA_PARAM], len);                 \
        }                                                                            \
    }                                                                                \
    /* float64: only the gradient is staged (unscaling, clipping). */               \
    FA_ATTR_##ISA static void fa_staged_f64_##ISA(fa_loop_fn dense,                  \
                                                  const fa_segment *x, ptrdiff_t n,  \
                                                  const fa_scalars *s,               \
                                                  const fa_pre *pre)                 \
    {                                                                                \
        double gbuf[FA_STAGE];                                                       \
        char *a[FA_MAX_SLOTS] = {0};                                                 \
        for (ptrdiff_t off = 0; off < n; off += FA_STAGE) {                          \
            ptrdiff_t len = n - off < FA_STAGE ? n - off : FA_STAGE;                 \
            a[FA_PARAM] = x->param + off * 8;                                        \
            fa_widen_grad_f64_##ISA(gbuf, x->grad + off * 8, FA_ET_F64, len, pre);   \
            a[FA_GRAD] = (char *)gbuf;                                               \
            for (int j = 0; j < x->n_states; j++)                                    \
                a[FA_STATE0 + j] = x->state[j] + off * 8;                            \
            dense(a, len, s);                                                        \
        }                                                                            \
    }

/* The sum of squares of the gradient values (widened to C, then to double) into *sumsq,
 * in the lane order of the header comment; the index of the first value that is not
 * finite, or -1. The squares are non-negative, so the sum is finite unless some value is
 * not finite or (float64 only) the squares overflow: only then is the segment walked again
 * to find the first bad value (none: the sum simply overflowed). The main loop is pure
 * vector arithmetic. The group's norm is sqrt(sum) / grad_scale (fa_clip_coefficient). */
#define FA_NORM_BODY(C, GT, CONV, LIMIT)                                             \
    {                                                                                \
        const GT *restrict g = (const GT *)grad;                                     \
        double acc[FA_NORM_LANES] = {0};                                             \
        ptrdiff_t i = 0, full = n - n % FA_NORM_LANES;                               \
        for (; i < full; i += FA_NORM_LANES)                                         \
            for (int j = 0; j < FA_NORM_LANES; j++) {                                \
                C x = CONV(g[i + j]);                                                \
                acc[j] += (double)x * (double)x;                                     \
            }                                                                        \
        for (; i < n; i++) {                                                         \
            C x = CONV(g[i]);                                                        \
            acc[i - full] += (double)x * (double)x;                                  \
        }                                                                            \
        double sum = 0.0;                                                            \
        for (int j = 0; j < FA_NORM_LANES; j++) sum += acc[j];                       \
        *sumsq = sum;                                                                \
        if (!(sum <= DBL_MAX)) { /* rare: find the first value that is not finite */ \
            for (i = 0; i < n; i++) {                                                \
                C x = CONV(g[i]);                                                    \
                if (!(x <= (LIMIT) && x >= -(LIMIT))) return i;                      \
            }                                                                        \
        }                                                                            \
        return -1;                                                                   \
    }

/* The first index whose unscaled value (C)g / (C)scale is not finite, or -1: for
 * grad_scale < 1 only (dividing by >= 1 cannot overflow, so the raw scan decides). */
#define FA_UNSCALED_BODY(C, GT, CONV, LIMIT)                                         \
    {                                                                                \
        const GT *restrict g = (const GT *)grad;                                     \
        const C sc = (C)scale;                                                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            C x = CONV(g[i]) / sc;                                                   \
            if (!(x <= (LIMIT) && x >= -(LIMIT))) return i;                          \
        }                                                                            \
        return -1;                                                                   \
    }

typedef ptrdiff_t (*fa_norm_fn)(const void *grad, ptrdiff_t n, double *sumsq);
typedef ptrdiff_t (*fa_unscaled_fn)(const void *grad, ptrdiff_t n, double scale);

#define FA_NORM_SIG(name) ptrdiff_t name(const void *grad, ptrdiff_t n, double *sumsq)
#define FA_UNSCALED_SIG(name) ptrdiff_t name(const void *grad, ptrdiff_t n, double scale)
#define FA_DEFINE_NORM(ISA, SFX, C, GT, CONV, LIMIT)                                 \
    FA_ATTR_##ISA static FA_NORM_SIG(fa_norm_##SFX##_##ISA)                          \
        FA_NORM_BODY(C, GT, CONV, LIMIT)                                             \
    FA_ATTR_##ISA static FA_UNSCALED_SIG(fa_unscaled_##SFX##_##ISA)                  \
        FA_UNSCALED_BODY(C, GT, CONV, LIMIT)
#define FA_DEFINE_NORMS(ISA)                                                         \
    FA_DEFINE_NORM(ISA, f32, float, float, FA_SAME, FLT_MAX)                         \
    FA_DEFINE_NORM(ISA, f64, double, double, FA_SAME, DBL_MAX)                       \
    FA_DEFINE_NORM(ISA, bf16, float, uint16_t, fa_bf16_to_f32, FLT_MAX)              \
    FA_DEFINE_NORM(ISA, f16, float, uint16_t, fa_f16_to_f32, FLT_MAX)                \
    FA_ATTR_##ISA static ptrdiff_t fa_scan_bf16_##ISA(const void *grad, ptrdiff_t n) \
        FA_SCAN_BODY(uint16_t, (uint16_t)0x7f80u)                                    \
    FA_ATTR_##ISA static ptrdiff_t fa_scan_f16_##ISA(const void *grad, ptrdiff_t n)  \
        FA_SCAN_BODY(uint16_t, (uint16_t)0x7c00u)

/* The clipping rule of torch.nn.utils.clip_grad_norm_, in double: the norm of the unscaled
 * gradients sqrt(sumsq) / grad_scale, and the coefficient max_norm / (norm + 1e-6)
 * clamped to at most 1 (a NaN norm gives NaN, as torch's clamp). */
static inline double fa_clip_coefficient(double sumsq, double grad_scale, double max_norm,
                                         double *norm)
{
    *norm = sqrt(sumsq) / grad_scale;
    double coef = max_norm / (*norm + 1e-6);
    return coef > 1.0 ? 1.0 : coef;
}

#endif /* FUSEDADAM_MIXED_H */
