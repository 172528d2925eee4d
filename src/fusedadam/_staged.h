/*
 * The staged runner: mixed precision and gradient pre-processing, in the same single
 * pass as every step.
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
 * Storage is stepped through with fa_et_bytes (_convert.h), the one table of element sizes.
 */
#ifndef FUSEDADAM_STAGED_H
#define FUSEDADAM_STAGED_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_convert.h"
#include "_loops.h"
#include "_q8.h"
#include "_residual.h"
#include "_segment.h"

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

/* Per instruction set: the gradient widening (unscale, clip), the residual master's
 * loads and stores, and the staged runners of the float32 and float64 compute types. */
#define FA_DEFINE_STAGED(ISA)                                                        \
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
    /* master="residual": float32 masters from params and residuals, and back */     \
    FA_ATTR_##ISA static void fa_resid_load_##ISA(float *restrict out,               \
                                                  const uint16_t *restrict p,        \
                                                  const uint16_t *restrict r,        \
                                                  ptrdiff_t n)                       \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++)                                            \
            out[i] = fa_bits_f32(fa_resid_master(p[i], r[i]));                       \
    }                                                                                \
    FA_ATTR_##ISA static void fa_resid_store_##ISA(uint16_t *restrict p,             \
                                                   uint16_t *restrict r,             \
                                                   const float *restrict in,         \
                                                   ptrdiff_t n)                      \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            uint32_t u = fa_f32_bits(in[i]);                                         \
            p[i] = fa_resid_param(u);                                                \
            r[i] = fa_resid_low(u);                                                  \
        }                                                                            \
    }                                                                                \
    /* master="compact": float32 masters from params and int8 residuals, and back */ \
    FA_ATTR_##ISA static void fa_compact_load_##ISA(float *restrict out,             \
                                                    const uint16_t *restrict p,      \
                                                    const uint8_t *restrict c,       \
                                                    ptrdiff_t n)                     \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++)                                            \
            out[i] = fa_bits_f32(fa_compact_master(p[i], c[i]));                     \
    }                                                                                \
    FA_ATTR_##ISA static void fa_compact_store_##ISA(uint16_t *restrict p,           \
                                                     uint8_t *restrict c,            \
                                                     const float *restrict in,       \
                                                     ptrdiff_t n)                    \
    {                                                                                \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            uint32_t u = fa_f32_bits(in[i]);                                         \
            p[i] = fa_resid_param(u);                                                \
            c[i] = fa_compact_code(u);                                               \
        }                                                                            \
    }                                                                                \
    /* One staged segment with a float32 compute type (see the header comment). */   \
    FA_ATTR_##ISA static void fa_stage_f32_##ISA(fa_loop_fn dense,                   \
                                                 const fa_segment *x, ptrdiff_t off, \
                                                 ptrdiff_t n, const fa_scalars *s,   \
                                                 const fa_pre *pre)                  \
    {                                                                                \
        float gbuf[FA_STAGE], sbuf[FA_MAX_STATES][FA_STAGE], mbuf[FA_STAGE];         \
        const int resid = x->lowp_type == FA_ET_RESID;                               \
        const int compact = x->lowp_type == FA_ET_COMPACT;                           \
        char *a[FA_MAX_SLOTS] = {0};                                                 \
        const int stage_grad = x->grad_type != FA_ET_F32 || pre->active;             \
        const int q8c = x->state_type == FA_ET_Q8C;                                  \
        const int q8 = x->state_type == FA_ET_Q8 || q8c;                             \
        const int stage_state = x->state_type == FA_ET_BF16 || q8;                   \
        const size_t gsize = fa_et_bytes[x->grad_type];                              \
        const size_t ssize = fa_et_bytes[x->state_type];                             \
        const size_t lsize = x->lowp_type >= 0 ? fa_et_bytes[x->lowp_type] : 0;       \
        for (const ptrdiff_t end = off + n; off < end; off += FA_STAGE) {            \
            ptrdiff_t len = end - off < FA_STAGE ? end - off : FA_STAGE;             \
            if (resid) {                                                             \
                fa_resid_load_##ISA(mbuf, (const uint16_t *)x->lowp + off,           \
                                    (const uint16_t *)x->param + off, len);          \
                a[FA_PARAM] = (char *)mbuf;                                          \
            } else if (compact) {                                                    \
                fa_compact_load_##ISA(mbuf, (const uint16_t *)x->lowp + off,         \
                                      (const uint8_t *)x->param + off, len);         \
                a[FA_PARAM] = (char *)mbuf;                                          \
            } else {                                                                 \
                a[FA_PARAM] = x->param + off * sizeof(float);                        \
            }                                                                        \
            if (stage_grad) {                                                        \
                fa_widen_grad_f32_##ISA(gbuf, x->grad + off * gsize, x->grad_type,   \
                                        len, pre);                                   \
                a[FA_GRAD] = (char *)gbuf;                                           \
            } else {                                                                 \
                a[FA_GRAD] = (char *)x->grad + off * gsize;                          \
            }                                                                        \
            for (int j = 0; j < x->n_states; j++) {                                  \
                if (q8c) {                                                           \
                    fa_q8c_load_##ISA(sbuf[j], (const uint8_t *)(x->state[j] + off), \
                                      x->scale[j][off / FA_Q8_BLOCK], x->qsigned[j], \
                                      len);                                          \
                    a[FA_STATE0 + j] = (char *)sbuf[j];                              \
                } else if (q8) {                                                     \
                    FA_Q8_LOAD_##ISA(sbuf[j], (const uint8_t *)(x->state[j] + off),  \
                                     x->scale[j][off / FA_Q8_BLOCK], x->qsigned[j],  \
                                     len);                                           \
                    a[FA_STATE0 + j] = (char *)sbuf[j];                              \
                } else if (stage_state) {                                            \
                    fa_bf16_load_##ISA(sbuf[j],                                      \
                                       (const uint16_t *)(x->state[j] + off * ssize), len); \
                    a[FA_STATE0 + j] = (char *)sbuf[j];                              \
                } else {                                                             \
                    a[FA_STATE0 + j] = x->state[j] + off * ssize;                    \
                }                                                                    \
            }                                                                        \
            dense(a, len, s);                                                        \
            if (x->read_only)                                                        \
                continue;                                                            \
            if (q8c)                                                                 \
                for (int j = 0; j < x->n_states; j++)                                \
                    x->scale[j][off / FA_Q8_BLOCK] = fa_q8c_store_##ISA(             \
                        (uint8_t *)(x->state[j] + off), sbuf[j], x->qsigned[j], len); \
            else if (q8)                                                             \
                for (int j = 0; j < x->n_states; j++)                                \
                    x->scale[j][off / FA_Q8_BLOCK] = FA_Q8_STORE_##ISA(              \
                        (uint8_t *)(x->state[j] + off), sbuf[j], x->qsigned[j], len); \
            else if (stage_state)                                                    \
                for (int j = 0; j < x->n_states; j++)                                \
                    fa_bf16_store_##ISA((uint16_t *)(x->state[j] + off * ssize), sbuf[j], \
                                        len);                                        \
            if (resid)                                                               \
                fa_resid_store_##ISA((uint16_t *)x->lowp + off,                      \
                                     (uint16_t *)x->param + off, mbuf, len);         \
            else if (compact)                                                        \
                fa_compact_store_##ISA((uint16_t *)x->lowp + off,                    \
                                       (uint8_t *)x->param + off, mbuf, len);        \
            else if (x->lowp_type == FA_ET_BF16)                                     \
                fa_bf16_store_##ISA((uint16_t *)(x->lowp + off * lsize),             \
                                    (const float *)a[FA_PARAM], len);                \
            else if (x->lowp_type == FA_ET_F16)                                      \
                fa_f16_store_##ISA((uint16_t *)(x->lowp + off * lsize),              \
                                   (const float *)a[FA_PARAM], len);                 \
        }                                                                            \
    }                                                                                \
    /* Adam/AdamW with 8-bit moments: the whole blocks in the fused loop of this ISA,
     * where there is one (the blocks it declines, and a last partial block, staged) */ \
    FA_ATTR_##ISA static void fa_staged_f32_##ISA(fa_loop_fn dense,                  \
                                                  const fa_segment *x, ptrdiff_t n,  \
                                                  const fa_scalars *s,               \
                                                  const fa_pre *pre)                 \
    {                                                                                \
        const fa_q8_adam_fn fused = FA_Q8_ADAM_##ISA;                                \
        const int coupled = dense == fa_adam_l2_f32_##ISA;                           \
        ptrdiff_t off = 0;                                                           \
        if (fused && x->state_type == FA_ET_Q8 && x->qsigned[0] && !x->qsigned[1] && \
            (coupled || dense == fa_adam_f32_##ISA)) {                               \
            const fa_round_fn round = x->lowp_type == FA_ET_BF16 ? fa_bf16_store_##ISA \
                                    : x->lowp_type == FA_ET_F16 ? fa_f16_store_##ISA \
                                    : (fa_round_fn)0;                                \
            const ptrdiff_t n_blocks = n / FA_Q8_BLOCK;                              \
            for (ptrdiff_t b = 0; b < n_blocks; b++) {                               \
                b = fused(x, b, n_blocks, s, pre, coupled, fa_widen_grad_f32_##ISA, round); \
                if (b < n_blocks)                                                    \
                    fa_stage_f32_##ISA(dense, x, b * FA_Q8_BLOCK, FA_Q8_BLOCK, s, pre); \
            }                                                                        \
            off = n_blocks * FA_Q8_BLOCK;                                            \
        }                                                                            \
        fa_stage_f32_##ISA(dense, x, off, n - off, s, pre);                          \
    }                                                                                \
    /* float64: only the gradient is staged (unscaling, clipping). */                \
    FA_ATTR_##ISA static void fa_staged_f64_##ISA(fa_loop_fn dense,                  \
                                                  const fa_segment *x, ptrdiff_t n,  \
                                                  const fa_scalars *s,               \
                                                  const fa_pre *pre)                 \
    {                                                                                \
        double gbuf[FA_STAGE];                                                       \
        char *a[FA_MAX_SLOTS] = {0};                                                 \
        for (ptrdiff_t off = 0; off < n; off += FA_STAGE) {                          \
            ptrdiff_t len = n - off < FA_STAGE ? n - off : FA_STAGE;                 \
            a[FA_PARAM] = x->param + off * sizeof(double);                           \
            fa_widen_grad_f64_##ISA(gbuf, x->grad + off * sizeof(double), FA_ET_F64, len, pre); \
            a[FA_GRAD] = (char *)gbuf;                                               \
            for (int j = 0; j < x->n_states; j++)                                    \
                a[FA_STATE0 + j] = x->state[j] + off * sizeof(double);               \
            dense(a, len, s);                                                        \
        }                                                                            \
    }

#endif /* FUSEDADAM_STAGED_H */
