/*
 * Storage element types and the conversions between them, the same on every instruction
 * set (exact integer/IEEE work):
 *   - bfloat16 -> float32 and float16 -> float32 are exact;
 *   - float32 -> bfloat16 and float32 -> float16 round to nearest even; NaN stays NaN
 *     (bfloat16: sign | 0x7fc0, as ml_dtypes; float16: quiet, the payload's top bits kept,
 *     as the F16C instruction), float16 overflows to inf as IEEE says.
 * fa_et_bytes is the one table of the element types' storage sizes in C: the staged
 * runner (_staged.h) steps through storage with it, and tests/test_packaging.py checks it
 * against NumPy's item sizes of the dtypes the Python side maps to each type.
 */
#ifndef FUSEDADAM_CONVERT_H
#define FUSEDADAM_CONVERT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>


/* Storage element types; the first two are also the compute rows FA_DTYPE_f32/f64.
 * FA_ET_Q8 (block-wise 8-bit codes, see below) is a state type only: no gradient scans. */
enum { FA_ET_F32 = 0, FA_ET_F64 = 1, FA_ET_BF16 = 2, FA_ET_F16 = 3, FA_N_ETS,
       FA_ET_Q8 = FA_N_ETS, FA_ET_RESID, FA_ET_Q8C, FA_ET_COMPACT };
/* FA_ET_Q8C: 8-bit state in the companded map (state_dtype="8bit_companded": the same
 * layout as FA_ET_Q8, fa_q8c_* below; the staged runner's loops only, the fused 8-bit Adam
 * loop does not take it); FA_ET_COMPACT: as FA_ET_RESID with the master's int8 residual
 * (master="compact", _residual.h). */
/* FA_ET_RESID is a low-precision param type only: a bfloat16 param whose master is kept as
 * its int16 residual (master="residual", _residual.h); the segment's param then points at
 * the residual, and the staged runner decodes the float32 master into a buffer per block
 * and encodes param and residual back from it (the fused x86 8-bit Adam loop: per 16
 * elements, in registers, _residual.h's fa_resid_load16/store16). */

/* bytes per element of each storage type, indexed by FA_ET_* (FA_ET_RESID, FA_ET_COMPACT:
 * the residual; FA_ET_Q8, FA_ET_Q8C: the codes, the block scales aside) */
static const size_t fa_et_bytes[] = {4, 8, 2, 2, 1, 2, 1, 1};

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

#define FA_SAME(x) (x)

/* Per instruction set: blocks of bfloat16 widened to float32, float32 rounded to
 * bfloat16 or float16 (the staged runner's loads and stores). */
#define FA_DEFINE_CONVERT(ISA)                                                       \
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
    }

#endif /* FUSEDADAM_CONVERT_H */
