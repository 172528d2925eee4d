/*
 * The gradient scans of a step: the non-finite check with the sum of squares for
 * clipping, the check of unscaled values, and the clipping coefficient.
 *
 * The norm scan: for clipping (max_grad_norm), the scan that already reads every gradient
 * for the non-finite check also sums the squares of the gradient values in double, in a
 * fixed order (FA_NORM_BODY); reference.py sums in the same order, so the norm is the same
 * bits on every path and for every thread count.
 */
#ifndef FUSEDADAM_GRADSCAN_H
#define FUSEDADAM_GRADSCAN_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_convert.h"
#include "_finite.h"

#define FA_NORM_LANES 8

/* The sum of squares of the gradient values (widened to C, then to double) into *sumsq;
 * the index of the first value that is not finite, or -1. One sequential stream, as the
 * non-finite scan (_finite.h, which says why; reading four interleaved parts at once was
 * ~25% slower here too): element i of the segment goes to lane i % FA_NORM_LANES, each
 * lane sums in order, and the total adds the lanes in lane order (reference.py sums in the
 * same order). The squares are non-negative, so the sum is finite unless some value is
 * not finite or (float64 only) the squares overflow: only then is the segment walked again
 * to find the first bad value (none: the sum simply overflowed). The group's norm is
 * sqrt(sum) / grad_scale (fa_clip_coefficient). */
#define FA_NORM_BODY(C, GT, CONV, LIMIT)                                             \
    {                                                                                \
        const GT *restrict g = (const GT *)grad;                                     \
        double acc[FA_NORM_LANES] = {0};                                             \
        ptrdiff_t i = 0;                                                             \
        for (; i + FA_NORM_LANES <= n; i += FA_NORM_LANES)                           \
            for (int j = 0; j < FA_NORM_LANES; j++) {                                \
                C x = CONV(g[i + j]);                                                \
                acc[j] += (double)x * (double)x;                                     \
            }                                                                        \
        for (int j = 0; i < n; i++, j++) {                                           \
            C x = CONV(g[i]);                                                        \
            acc[j] += (double)x * (double)x;                                         \
        }                                                                            \
        double sum = 0.0;                                                            \
        for (int j = 0; j < FA_NORM_LANES; j++) sum += acc[j];                       \
        *sumsq = sum;                                                                \
        if (!(sum <= DBL_MAX)) { /* rare: find the first value that is not finite */ \
            for (ptrdiff_t k = 0; k < n; k++) {                                      \
                C x = CONV(g[k]);                                                    \
                if (!(x <= (LIMIT) && x >= -(LIMIT))) return k;                      \
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

#endif /* FUSEDADAM_GRADSCAN_H */
