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
 * the index of the first value that is not finite, or -1. As the non-finite scan
 * (_finite.h), a segment is read as FA_SCAN_STREAMS streams at once (one stream per core
 * is bound by the cache misses its prefetcher keeps in flight): with
 * Q = (n / 4) / FA_SCAN_BLOCK * FA_SCAN_BLOCK, parts 0-3 are [sQ, (s+1)Q) and part 4 the
 * rest [4Q, n). Element i of a part goes to lane i % FA_NORM_LANES of that part (i from
 * the part's start), each lane sums in order, and the total adds the lanes of part 0, then
 * of part 1, ..., each in lane order (reference.py sums in the same order). The squares
 * are non-negative, so the sum is finite unless some value is not finite or (float64
 * only) the squares overflow: only then is the segment walked again to find the first bad
 * value (none: the sum simply overflowed). The group's norm is sqrt(sum) / grad_scale
 * (fa_clip_coefficient). */
#define FA_NORM_BODY(C, GT, CONV, LIMIT)                                             \
    {                                                                                \
        const GT *restrict g = (const GT *)grad;                                     \
        double acc[FA_SCAN_STREAMS + 1][FA_NORM_LANES] = {{0}};                      \
        const ptrdiff_t q = (n / FA_SCAN_STREAMS) / FA_SCAN_BLOCK * FA_SCAN_BLOCK;   \
        for (ptrdiff_t start = 0; start < q; start += FA_SCAN_BLOCK) {               \
            const GT *g0 = g + start, *g1 = g0 + q, *g2 = g1 + q, *g3 = g2 + q;      \
            for (ptrdiff_t i = 0; i < FA_SCAN_BLOCK; i += FA_NORM_LANES)             \
                for (int j = 0; j < FA_NORM_LANES; j++) {                            \
                    C x0 = CONV(g0[i + j]), x1 = CONV(g1[i + j]);                    \
                    C x2 = CONV(g2[i + j]), x3 = CONV(g3[i + j]);                    \
                    acc[0][j] += (double)x0 * (double)x0;                            \
                    acc[1][j] += (double)x1 * (double)x1;                            \
                    acc[2][j] += (double)x2 * (double)x2;                            \
                    acc[3][j] += (double)x3 * (double)x3;                            \
                }                                                                    \
        }                                                                            \
        for (ptrdiff_t i = FA_SCAN_STREAMS * q; i < n; i++) {                        \
            C x = CONV(g[i]);                                                        \
            acc[FA_SCAN_STREAMS][(i - FA_SCAN_STREAMS * q) % FA_NORM_LANES] +=       \
                (double)x * (double)x;                                               \
        }                                                                            \
        double sum = 0.0;                                                            \
        for (int s = 0; s <= FA_SCAN_STREAMS; s++)                                   \
            for (int j = 0; j < FA_NORM_LANES; j++) sum += acc[s][j];                \
        *sumsq = sum;                                                                \
        if (!(sum <= DBL_MAX)) { /* rare: find the first value that is not finite */ \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
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

#endif /* FUSEDADAM_GRADSCAN_H */
