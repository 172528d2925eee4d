#ifndef FUSEDADAM_Q8_H
#define FUSEDADAM_Q8_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_convert.h"
#include "_loops.h"
#include "_residual.h"
#include "_segment.h"

/* ---- block-wise 8-bit state ----------------------------------------------------------------
 *
 * A state array stored as FA_ET_Q8 holds one byte per element and one float32 scale per block
 * of FA_Q8_BLOCK (= FA_STAGE) elements of its param: the block's absmax, the largest
 * *finite* |value| (taken as the largest of the float32 bit patterns with the sign cleared
 * below the bits of inf, an integer max; 0 when the block has none). A code is a small
 * float relative to the absmax: value = y(code) * absmax, y in [-1, 1] (signed map, moments
 * that change sign) or [0, 1] (unsigned map, moments that never are negative: exp_avg_sq
 * and the like). Both are the top bits of a float16:
 *   signed:   sign | E4M3: y = the float16 with bits (code & 0x7f) << 7 and the code's sign:
 *             1.0, 14 binades [2**-14, 1) with 3 mantissa bits, then steps of 2**-17;
 *             magnitudes 121-125 are never written (read as their float16, 1.125-1.625);
 *   unsigned: E5M3: y = 2**-15 * the float16 with bits code << 7: 1.0, 29 binades
 *             [2**-29, 1), then steps of 2**-32 (the second moment spans the square of the
 *             first one's range); codes 241-253 are never written and read as 1.0.
 * A value that is not finite keeps its own code, so it stays in its element (IEEE's inf
 * or NaN, as float32 state keeps it) and the rest of the block keeps its finite scale:
 * the top two magnitudes of each map, decoded without the scale (inf * 0 would be NaN):
 *   signed:   0x7f +inf, 0xff -inf, 0x7e NaN (0xfe is never written, read as NaN);
 *   unsigned: 0xff inf (of either sign: the unsigned map keeps |value|), 0xfe NaN.
 * A NaN reads as the quiet NaN 0x7fc00000: its sign and payload are not kept (the rows of
 * the dispatch table need not agree on them: tests/c/test_rows.c takes NaN as NaN).
 * A block's codes hold such a code exactly when (code | 0x80 for the signed map) >= 0xfe:
 * the block loops test that once per block (one byte max) and take a scalar path for it.
 * Encoding a finite value: x = min(|value| * (1 / absmax), 1) (|value| / absmax for a
 * subnormal absmax, 0 when absmax is 0 or NaN; NaN x as 1), rounded to the nearest code,
 * ties away from zero; a magnitude 0 never has the sign bit. On x86 this is the F16C
 * conversion truncating to float16, then adding half of the 7 dropped bits (exact: every
 * tie point is a float16, so
 * truncation keeps which side of it x is on); the portable loops do the same rounding on
 * the float32 bits (fa_q8_encode_mag). Decoding is exact, then one float32 multiplication
 * by the absmax. Why not the paper's dynamic (base-10) map: encoding it needs a search per
 * element (bench/floor/q8_map.c measures both). reference.py is the twin. */
#define FA_Q8_BLOCK FA_STAGE
#define FA_Q8_M 3
/* per map (EMAX: the exponent field of 1.0): the first normal magnitude's bits, 2**(EMAX -
 * 1 + M) (the smallest step is its inverse) and the code of 1.0 */
#define FA_Q8_THRESH(EMAX) ((uint32_t)(128 - (EMAX)) << 23)
#define FA_Q8_SUBSCALE(EMAX) ((double)(UINT64_C(1) << ((EMAX) - 1 + FA_Q8_M)))
#define FA_Q8_ONE(EMAX) ((uint32_t)(EMAX) << FA_Q8_M)
#define FA_Q8_EMAX_SIGNED 15
#define FA_Q8_EMAX_UNSIGNED 30
/* the smallest absmax whose 2**15 / absmax is finite: the x86 loops' fast path */
#define FA_Q8_FAST_MIN 7.888609052210118e-31f /* 2**-100 */

/* the magnitude code of x in [0, 1] (or NaN), given as its bits with the sign cleared */
static inline uint32_t fa_q8_encode_mag(uint32_t a, int emax)
{
    /* below the first normal: x / smallest step + 1/2, truncated (exact in double) */
    uint32_t sub = (uint32_t)((double)fa_bits_f32(a < FA_Q8_THRESH(emax) ? a : 0u) *
                              FA_Q8_SUBSCALE(emax) + 0.5);
    /* normal: rebias the exponent, add half of the 20 dropped bits */
    uint32_t norm = (a - ((uint32_t)(127 - emax) << 23) + (1u << (22 - FA_Q8_M))) >>
                    (23 - FA_Q8_M);
    uint32_t r = a < FA_Q8_THRESH(emax) ? sub : norm;
    return a >= 0x3f800000u ? FA_Q8_ONE(emax) : r;
}

/* the bits of x = |value| / absmax as the map defines it (inv = 1 / absmax), sign cleared */
static inline uint32_t fa_q8_ratio(float value, float absmax, float inv)
{
    float x = absmax >= FLT_MIN ? fabsf(value) * inv : fabsf(value) / absmax;
    return absmax > 0.0f ? fa_f32_bits(x) & 0x7fffffffu : 0u;
}

/* the codes of values that are not finite (see above) */
#define FA_Q8_INF 0x7fu       /* signed: | the sign bit; unsigned: | 0x80 */
#define FA_Q8_NAN 0x7eu
#define FA_Q8_NONFINITE 0xfeu /* (code | 0x80 for the signed map) >= this: inf or NaN */

static inline int fa_q8_is_nonfinite(uint8_t code, int qsigned)
{
    return (code | (qsigned ? 0x80u : 0u)) >= FA_Q8_NONFINITE;
}

/* y(code) of a code that is not an inf or NaN's (the block loops' fast paths, once a
 * block is known to hold none) */
static inline float fa_q8_finite_value(uint8_t code, int qsigned)
{
    if (qsigned)
        return fa_f16_to_f32((uint16_t)(((code & 0x7fu) << 7) | ((code & 0x80u) << 8)));
    uint32_t c = code < FA_Q8_ONE(FA_Q8_EMAX_UNSIGNED) ? code : FA_Q8_ONE(FA_Q8_EMAX_UNSIGNED);
    return fa_f16_to_f32((uint16_t)(c << 7)) * 3.0517578125e-05f; /* 2**-15 */
}

/* y(code) of either map: exact (tests compare it with reference.q8_values); inf or a
 * quiet NaN for the codes of values that are not finite */
static inline float fa_q8_value(uint8_t code, int qsigned)
{
    if (fa_q8_is_nonfinite(code, qsigned)) /* inf (signed: with the code's sign) or NaN */
        return fa_bits_f32((code & 1u) ? (qsigned ? (uint32_t)(code & 0x80u) << 24 : 0u) |
                                             0x7f800000u
                                       : 0x7fc00000u);
    return fa_q8_finite_value(code, qsigned);
}

/* value of one code in a block of this absmax (the rare paths: one at a time) */
static inline float fa_q8_decode(uint8_t code, float absmax, int qsigned)
{
    const float y = fa_q8_value(code, qsigned);
    return fa_q8_is_nonfinite(code, qsigned) ? y : y * absmax;
}

static inline uint8_t fa_q8_code_inv(float value, float absmax, float inv, int qsigned)
{
    const uint32_t u = fa_f32_bits(value);
    if ((u & 0x7fffffffu) >= 0x7f800000u) { /* inf or NaN: its own code */
        if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: one code, its sign not kept */
            return (uint8_t)(qsigned ? FA_Q8_NAN : FA_Q8_NAN | 0x80u);
        return (uint8_t)(FA_Q8_INF | (qsigned ? (u >> 24) & 0x80u : 0x80u));
    }
    uint32_t a = fa_q8_ratio(value, absmax, inv);
    if (qsigned) {
        uint32_t r = fa_q8_encode_mag(a, FA_Q8_EMAX_SIGNED);
        return (uint8_t)(r | (r ? (fa_f32_bits(value) >> 24) & 0x80u : 0u));
    }
    return (uint8_t)fa_q8_encode_mag(a, FA_Q8_EMAX_UNSIGNED);
}

/* the code of value in a block of this absmax (tests) */
static inline uint8_t fa_q8_code(float value, float absmax, int qsigned)
{
    return fa_q8_code_inv(value, absmax, 1.0f / absmax, qsigned);
}

/* whether codes[0..n) hold the code of a value that is not finite: one byte max, which
 * the compiler vectorizes (the block loops' test before their fast paths) */
static inline int fa_q8_any_nonfinite(const uint8_t *restrict codes, ptrdiff_t n, int qsigned)
{
    const uint8_t sign = qsigned ? 0x80u : 0u;
    uint8_t most = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint8_t c = codes[i] | sign;
        most = c > most ? c : most;
    }
    return most >= FA_Q8_NONFINITE;
}

/* Rare: the codes of a block in[0..n) that holds a value that is not finite (the integer
 * max of its |value| bits is inf's or more), one at a time; returns its scale, the largest
 * finite |value| (0 when there is none). */
static inline float fa_q8_encode_nonfinite(uint8_t *restrict out, const float *restrict in,
                                           int qsigned, ptrdiff_t n)
{
    uint32_t most = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint32_t a = fa_f32_bits(in[i]) & 0x7fffffffu;
        most = a < 0x7f800000u && a > most ? a : most;
    }
    const float absmax = fa_bits_f32(most), inv = 1.0f / absmax;
    for (ptrdiff_t i = 0; i < n; i++) out[i] = fa_q8_code_inv(in[i], absmax, inv, qsigned);
    return absmax;
}

/* ---- the companded 8-bit map (FA_ET_Q8C) ------------------------------------------------
 *
 * FlashOptim's companding on this file's block layout (FA_Q8_BLOCK elements per float32
 * absmax, the same codes for inf and NaN, the same sign-magnitude bytes): with
 * x = |value| / absmax in [0, 1] (fa_q8_ratio, capped at 1), a signed moment's magnitude is
 * round(125 * 2x / (1 + x)) (softsign: codes dense near 0) and an unsigned one's
 * round(253 * sqrt(x)), rounding half up; decoding z = m / 125, y = z / (2 - z), or
 * t = m / 253, y = t * t, then y * absmax. Every step one float32 operation (correctly
 * rounded on every instruction set), so reference.q8c_values and q8_quantize(...,
 * companded=True) are its twins bit for bit. FlashOptim uses groups of 32 elements with
 * float16 scales and int8 +-127 / uint8 255 codes; here the blocks and scales are those of
 * state_dtype="8bit" (2.03 bytes per element for two moments) and the top codes are kept
 * for inf and NaN. */
#define FA_Q8C_TOP_SIGNED 125.0f
#define FA_Q8C_TOP_UNSIGNED 253.0f

/* y(code) of a code that is not an inf or NaN's */
static inline float fa_q8c_finite_value(uint8_t code, int qsigned)
{
    if (qsigned) {
        uint32_t m = code & 0x7fu;
        float z = (float)(m < 125u ? m : 125u) / FA_Q8C_TOP_SIGNED;
        float y = z / (2.0f - z);
        return (code & 0x80u) ? -y : y;
    }
    float t = (float)(code < 253u ? code : 253u) / FA_Q8C_TOP_UNSIGNED;
    return t * t;
}

/* y(code) of either companded map, inf or NaN for their codes (as fa_q8_value) */
static inline float fa_q8c_value(uint8_t code, int qsigned)
{
    return fa_q8_is_nonfinite(code, qsigned) ? fa_q8_value(code, qsigned)
                                             : fa_q8c_finite_value(code, qsigned);
}

static inline uint8_t fa_q8c_code_inv(float value, float absmax, float inv, int qsigned)
{
    const uint32_t u = fa_f32_bits(value);
    if ((u & 0x7fffffffu) >= 0x7f800000u) /* inf or NaN: the codes of the float map */
        return fa_q8_code_inv(value, absmax, inv, qsigned);
    float x = fa_bits_f32(fa_q8_ratio(value, absmax, inv));
    x = x < 1.0f ? x : 1.0f;
    if (qsigned) {
        float y = (x + x) / (1.0f + x);
        uint32_t m = (uint32_t)(y * FA_Q8C_TOP_SIGNED + 0.5f);
        return (uint8_t)(m | (m ? (u >> 24) & 0x80u : 0u));
    }
    return (uint8_t)(uint32_t)(sqrtf(x) * FA_Q8C_TOP_UNSIGNED + 0.5f);
}

/* the companded code of value in a block of this absmax (tests) */
static inline uint8_t fa_q8c_code(float value, float absmax, int qsigned)
{
    return fa_q8c_code_inv(value, absmax, 1.0f / absmax, qsigned);
}

/* The 8-bit block loops by hand for x86 with AVX2 and F16C (the avx2 and avx512 rows; the
 * dispatcher picks those rows only where the CPU has F16C too): the hardware float16
 * conversions do the map's rounding in one instruction, about twice as fast as the portable
 * loops (the baseline row's; bench/floor/q8_map.c). The same codes and values as
 * fa_q8_code_inv and fa_q8_value (tests/test_state8bit.py runs every row against the
 * reference). */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define FA_Q8_X86 1
#define FA_Q8_TARGET __attribute__((target("avx2,f16c")))
#define FA_ALIGN32 __attribute__((aligned(32)))

FA_Q8_TARGET static void fa_q8_load_f16c_avx2(float *restrict out, const uint8_t *restrict in,
                                        float absmax, int qsigned, ptrdiff_t n)
{
    const __m256 scale = _mm256_set1_ps(absmax);
    ptrdiff_t i = 0;
    if (fa_q8_any_nonfinite(in, n, qsigned)) { /* rare: the code of an inf or NaN */
        for (; i < n; i++) out[i] = fa_q8_decode(in[i], absmax, qsigned);
        return;
    }
    if (qsigned) {
        for (; i + 8 <= n; i += 8) {
            __m128i c = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(in + i)));
            __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x7f)), 7),
                                     _mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x80)), 8));
            _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtph_ps(h), scale));
        }
    } else {
        const __m256 two_m15 = _mm256_set1_ps(3.0517578125e-05f);
        for (; i + 8 <= n; i += 8) {
            __m128i c = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(in + i)));
            __m128i h = _mm_slli_epi16(
                _mm_min_epu16(c, _mm_set1_epi16((short)FA_Q8_ONE(FA_Q8_EMAX_UNSIGNED))), 7);
            __m256 y = _mm256_mul_ps(_mm256_cvtph_ps(h), two_m15);
            _mm256_storeu_ps(out + i, _mm256_mul_ps(y, scale));
        }
    }
    for (; i < n; i++) out[i] = fa_q8_finite_value(in[i], qsigned) * absmax;
}

/* 8 codes (in 16-bit lanes) of in[0..8): x * cap = min(|value| * inv_cap, cap), cap = 1
 * (signed) or 2**15 (unsigned: its float16 exponent field is then 30 for 1.0) */
FA_Q8_TARGET static inline __m128i fa_q8_code8_avx2(const float *in, __m256 inv_cap, __m256 cap,
                                               int qsigned)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i u = _mm256_loadu_si256((const __m256i *)in);
    __m256 x = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(u, abs_mask)), inv_cap);
    __m128i h = _mm256_cvtps_ph(_mm256_min_ps(x, cap), _MM_FROUND_TO_ZERO);
    __m128i r = _mm_srli_epi16(_mm_add_epi16(h, _mm_set1_epi16(0x40)), 7);
    if (!qsigned)
        return r;
    __m256i neg = _mm256_srai_epi32(u, 31);
    __m128i sign = _mm_and_si128(_mm_packs_epi32(_mm256_castsi256_si128(neg),
                                                 _mm256_extracti128_si256(neg, 1)),
                                 _mm_set1_epi16(0x80));
    __m128i zero = _mm_cmpeq_epi16(r, _mm_setzero_si128());
    return _mm_or_si128(r, _mm_andnot_si128(zero, sign));
}

/* the largest of 8 unsigned 32-bit lanes */
FA_Q8_TARGET static inline uint32_t fa_q8_max8_avx2(__m256i x)
{
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(m);
}

FA_Q8_TARGET static void fa_q8_encode_f16c_avx2(uint8_t *restrict out, const float *restrict in,
                                               float absmax, int qsigned, ptrdiff_t n);

/* the codes of in[0..n) given most, the integer max of its |value| bits; returns the
 * block's scale (the absmax of its finite values: most itself when every value is finite) */
FA_Q8_TARGET static float fa_q8_encode_most_avx2(uint8_t *restrict out, const float *restrict in,
                                                 uint32_t most, int qsigned, ptrdiff_t n)
{
    if (most >= 0x7f800000u) /* rare: an inf or NaN */
        return fa_q8_encode_nonfinite(out, in, qsigned, n);
    fa_q8_encode_f16c_avx2(out, in, fa_bits_f32(most), qsigned, n);
    return fa_bits_f32(most);
}

FA_Q8_TARGET static float fa_q8_store_f16c_avx2(uint8_t *restrict out, const float *restrict in,
                                          int qsigned, ptrdiff_t n)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i most8 = _mm256_setzero_si256();
    ptrdiff_t i = 0;
    uint32_t most = 0;
    for (; i + 8 <= n; i += 8)
        most8 = _mm256_max_epi32(
            most8, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(in + i)), abs_mask));
    most = fa_q8_max8_avx2(most8);
    for (; i < n; i++) {
        uint32_t a = fa_f32_bits(in[i]) & 0x7fffffffu;
        most = a > most ? a : most;
    }
    return fa_q8_encode_most_avx2(out, in, most, qsigned, n);
}

/* the codes of in[0..n), every value finite, in a block of this absmax */
FA_Q8_TARGET static void fa_q8_encode_f16c_avx2(uint8_t *restrict out, const float *restrict in,
                                               float absmax, int qsigned, ptrdiff_t n)
{
    const float inv = 1.0f / absmax;
    ptrdiff_t i = 0;
    if (absmax >= FA_Q8_FAST_MIN && absmax <= FLT_MAX) { /* no NaN, inf or tiny absmax */
        const float c = qsigned ? 1.0f : 32768.0f;
        const __m256 inv_cap = _mm256_set1_ps(inv * c), cap = _mm256_set1_ps(c);
        if (qsigned) {
            for (; i + 16 <= n; i += 16)
                _mm_storeu_si128((__m128i *)(out + i),
                                 _mm_packus_epi16(fa_q8_code8_avx2(in + i, inv_cap, cap, 1),
                                                  fa_q8_code8_avx2(in + i + 8, inv_cap, cap, 1)));
        } else {
            for (; i + 16 <= n; i += 16)
                _mm_storeu_si128((__m128i *)(out + i),
                                 _mm_packus_epi16(fa_q8_code8_avx2(in + i, inv_cap, cap, 0),
                                                  fa_q8_code8_avx2(in + i + 8, inv_cap, cap, 0)));
        }
    }
    for (; i < n; i++) out[i] = fa_q8_code_inv(in[i], absmax, inv, qsigned);
}

/* 16 codes of the signed map from in[0..16), whose block absmax is in the fast range
 * (inv = 1 / absmax). No clamp to [-1, 1] is needed: |value| <= absmax, so
 * |value| * inv <= 1 + 2**-23, which truncates to the float16 1.0 as 1 does. The float16
 * of value * inv (x * -1 rounds as x) carries the sign; the magnitude code is its top bits
 * rounded, and the sign is kept only on a nonzero magnitude: the codes of
 * fa_q8_code8_avx2. */
FA_Q8_TARGET static inline __m128i fa_q8_enc16_signed(const float *in, __m256 inv)
{
    __m256 x0 = _mm256_mul_ps(_mm256_load_ps(in), inv);
    __m256 x1 = _mm256_mul_ps(_mm256_load_ps(in + 8), inv);
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvtps_ph(x0, _MM_FROUND_TO_ZERO)),
                                        _mm256_cvtps_ph(x1, _MM_FROUND_TO_ZERO), 1);
    __m256i r = _mm256_srli_epi16(
        _mm256_add_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(0x40)), 7);
    __m256i sign = _mm256_and_si256(_mm256_srli_epi16(h, 8), _mm256_set1_epi16(0x80));
    /* min(sign, r << 7): the sign when r >= 1, else 0 */
    __m256i code = _mm256_or_si256(r, _mm256_min_epu16(sign, _mm256_slli_epi16(r, 7)));
    return _mm_packus_epi16(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
}

/* 16 codes of the unsigned map from in[0..16), values >= +0 (the caller's guarantee) with
 * the block absmax in the fast range (inv_cap = (1 / absmax) * 2**15, as
 * fa_q8_code8_avx2; no cap, as above) */
FA_Q8_TARGET static inline __m128i fa_q8_enc16_unsigned(const float *in, __m256 inv_cap)
{
    __m256 x0 = _mm256_mul_ps(_mm256_load_ps(in), inv_cap);
    __m256 x1 = _mm256_mul_ps(_mm256_load_ps(in + 8), inv_cap);
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvtps_ph(x0, _MM_FROUND_TO_ZERO)),
                                        _mm256_cvtps_ph(x1, _MM_FROUND_TO_ZERO), 1);
    __m256i code = _mm256_srli_epi16(_mm256_add_epi16(h, _mm256_set1_epi16(0x40)), 7);
    return _mm_packus_epi16(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
}

/* Adam/AdamW (FA_ADAM_BODY: the adam and adam_l2 kinds) with float32 param and gradient
 * and 8-bit moments, over whole blocks, software-pipelined: while block b is decoded,
 * updated and its param written (its new moments kept in an L1 buffer, their absmax
 * taken), the codes of block b - 1 are encoded from the other buffer, so the encoder's
 * integer work runs beside the divider of the update. The same operations in the same
 * order as the staged runner's decode + dense loop + encode, so the same bits
 * (tests/test_state8bit.py). Stops before a block whose old v scale the fused decode cannot
 * take exactly (subnormal, NaN or infinite: y * 2**-15 * absmax is computed as
 * y * (absmax * 2**-15)) or whose codes hold an inf or NaN (the fused decode has no such
 * code: one byte max per block tells), having finished every block before it; returns how
 * many blocks it did. A block whose new moments hold an inf or NaN is encoded by the
 * general encoder (its scale: the absmax of its finite values). */
/* whether a block's codes (m signed, v unsigned) hold the code of an inf or NaN
 * (fa_q8_any_nonfinite of both, 256 codes each) */
FA_Q8_TARGET static inline int fa_q8_block_nonfinite_avx2(const uint8_t *mc, const uint8_t *vc)
{
    const __m256i sign = _mm256_set1_epi8((char)0x80);
    __m256i most_m = _mm256_setzero_si256(), most_v = _mm256_setzero_si256();
    for (ptrdiff_t i = 0; i < FA_Q8_BLOCK; i += 32) {
        most_m = _mm256_max_epu8(
            most_m, _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(mc + i)), sign));
        most_v = _mm256_max_epu8(most_v, _mm256_loadu_si256((const __m256i *)(vc + i)));
    }
    const __m256i most = _mm256_max_epu8(most_m, most_v);
    const __m256i hit = _mm256_cmpeq_epi8(
        _mm256_max_epu8(most, _mm256_set1_epi8((char)FA_Q8_NONFINITE)), most);
    return _mm256_movemask_epi8(hit) != 0;
}

/* the scalars of the fused loop, as vectors */
typedef struct {
    __m256 sign, wd, decay, b1, omb1, b2, omb2, step, eps;
} fa_q8_adam_consts;

/* One block: decode, update and write block b's param, keep its new moments in
 * mnew/vnew and return their absmax lanes; encode block b - 1 (mold/vold, inverse scales
 * minv/vinv) into mc_prev/vc_prev. COUPLED, SIGN and DECAY are constants at each call. */
FA_Q8_TARGET static inline __attribute__((always_inline)) void fa_q8_adam_block(
    float *restrict p, uint16_t *restrict pp, void *restrict rr,
    const float *restrict g, const uint8_t *restrict mc,
    const uint8_t *restrict vc, float *restrict mnew, float *restrict vnew,
    const float *restrict mold, const float *restrict vold, uint8_t *restrict mc_prev,
    uint8_t *restrict vc_prev, __m256 mscale8, __m256 vscale8, __m256 minv, __m256 vinv,
    const fa_q8_adam_consts *c, __m256i *most_m_out, __m256i *most_v_out,
    const int COUPLED, const int SIGN, const int DECAY, const int RESID)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256 sign8 = c->sign, wd8 = c->wd, decay8 = c->decay, b1 = c->b1, omb1 = c->omb1;
    const __m256 b2 = c->b2, omb2 = c->omb2, step8 = c->step, eps8 = c->eps;
    __m256i most_m = _mm256_setzero_si256(), most_v = _mm256_setzero_si256();
    for (ptrdiff_t i = 0; i < FA_Q8_BLOCK; i += 16) {
        __m256i mx = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(mc + i)));
        __m256i vx = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(vc + i)));
        /* signed: ((c & 0x7f) << 7) | ((c & 0x80) << 8) = (c + (c & 0x80)) << 7 */
        __m256i mh = _mm256_slli_epi16(
            _mm256_add_epi16(mx, _mm256_and_si256(mx, _mm256_set1_epi16(0x80))), 7);
        __m256i vh = _mm256_slli_epi16(
            _mm256_min_epu16(vx, _mm256_set1_epi16((short)FA_Q8_ONE(FA_Q8_EMAX_UNSIGNED))), 7);
        /* master="residual" (RESID 1) or "compact" (RESID 2): 16 float32 masters from
         * params and residuals, and back after the update (_residual.h) */
        __m256 masters[2];
        if (RESID == 1)
            fa_resid_load16(pp + i, (const uint16_t *)rr + i, &masters[0], &masters[1]);
        else if (RESID == 2)
            fa_compact_load16(pp + i, (const uint8_t *)rr + i, &masters[0], &masters[1]);
        for (int h = 0; h < 2; h++) {
            __m128i mh8 = h ? _mm256_extracti128_si256(mh, 1) : _mm256_castsi256_si128(mh);
            __m128i vh8 = h ? _mm256_extracti128_si256(vh, 1) : _mm256_castsi256_si128(vh);
            const ptrdiff_t k = i + 8 * h;
            __m256 m = _mm256_mul_ps(_mm256_cvtph_ps(mh8), mscale8);
            __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(vh8), vscale8);
            __m256 gv = _mm256_loadu_ps(g + k);
            __m256 pv = RESID ? masters[h] : _mm256_loadu_ps(p + k);
            if (SIGN) gv = _mm256_mul_ps(gv, sign8);
            if (COUPLED) gv = _mm256_add_ps(gv, _mm256_mul_ps(wd8, pv));
            if (DECAY) pv = _mm256_mul_ps(pv, decay8);
            m = _mm256_add_ps(_mm256_mul_ps(b1, m), _mm256_mul_ps(omb1, gv));
            v = _mm256_add_ps(_mm256_mul_ps(b2, v),
                              _mm256_mul_ps(_mm256_mul_ps(omb2, gv), gv));
            _mm256_store_ps(mnew + k, m);
            _mm256_store_ps(vnew + k, v);
            most_m = _mm256_max_epu32(most_m, _mm256_and_si256(_mm256_castps_si256(m), abs_mask));
            most_v = _mm256_max_epu32(most_v, _mm256_and_si256(_mm256_castps_si256(v), abs_mask));
            __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(v), eps8);
            pv = _mm256_sub_ps(pv, _mm256_div_ps(_mm256_mul_ps(step8, m), denom));
            if (RESID)
                masters[h] = pv;
            else
                _mm256_storeu_ps(p + k, pv);
        }
        if (RESID == 1)
            fa_resid_store16(pp + i, (uint16_t *)rr + i, masters[0], masters[1]);
        else if (RESID == 2)
            fa_compact_store16(pp + i, (uint8_t *)rr + i, masters[0], masters[1]);
        _mm_storeu_si128((__m128i *)(mc_prev + i), fa_q8_enc16_signed(mold + i, minv));
        _mm_storeu_si128((__m128i *)(vc_prev + i), fa_q8_enc16_unsigned(vold + i, vinv));
    }
    *most_m_out = most_m;
    *most_v_out = most_v;
}

FA_Q8_TARGET static ptrdiff_t fa_q8_adam_f16c_avx2(const fa_segment *x, ptrdiff_t first,
                                                   ptrdiff_t n_blocks, const fa_scalars *s,
                                                   const fa_pre *pre, int coupled,
                                                   fa_widen_f32_fn widen, fa_round_fn round)
{
    FA_ALIGN32 float bufs[2][2][FA_Q8_BLOCK], gbuf[FA_Q8_BLOCK];
    /* 1: master="residual", 2: master="compact" (the RESID of fa_q8_adam_block) */
    const int resid = x->lowp_type == FA_ET_RESID ? 1 : x->lowp_type == FA_ET_COMPACT ? 2 : 0;
    uint8_t scratch[2][FA_Q8_BLOCK]; /* where the block before the first one "encodes" */
    const fa_q8_adam_consts c = {
        _mm256_set1_ps((float)s->sign), _mm256_set1_ps((float)s->weight_decay),
        _mm256_set1_ps((float)s->decay), _mm256_set1_ps((float)s->beta1),
        _mm256_set1_ps((float)s->one_minus_beta1), _mm256_set1_ps((float)s->beta2),
        _mm256_set1_ps((float)s->one_minus_beta2), _mm256_set1_ps((float)s->step_size),
        _mm256_set1_ps((float)s->eps)};
    /* x * 1 is x: the sign and the decay multiply only when they are not 1 */
    const int sign = (float)s->sign != 1.0f, decay = (float)s->decay != 1.0f;
    const int stage_grad = x->grad_type != FA_ET_F32 || pre->active;
    const size_t gsize = x->grad_type == FA_ET_F32 ? 4 : 2;
    /* the block before: its buffers, codes and scales (the first time, zeros to scratch);
     * *_most_prev: the integer max of its new moments' |value| bits */
    float *mold = bufs[1][0], *vold = bufs[1][1];
    uint8_t *mc_prev = scratch[0], *vc_prev = scratch[1];
    float scratch_scale[2];
    float *mscale_prev = &scratch_scale[0], *vscale_prev = &scratch_scale[1];
    uint32_t mmost_prev = 0x3f800000u, vmost_prev = 0x3f800000u; /* 1.0 */
    memset(bufs[1], 0, sizeof bufs[1]);
    ptrdiff_t b = first;
    for (; b < n_blocks; b++) {
        const ptrdiff_t off = b * FA_Q8_BLOCK;
        float *mscale = x->scale[0] + b, *vscale = x->scale[1] + b;
        const float vscale_y = *vscale * 3.0517578125e-05f;
        uint8_t *mc = (uint8_t *)x->state[0] + off, *vc = (uint8_t *)x->state[1] + off;
        /* exact scaling; and >= 0, so v stays >= +0 (fa_q8_enc16_unsigned) */
        if (!(vscale_y * 32768.0f == *vscale && *vscale >= 0.0f)) break;
        if (fa_q8_block_nonfinite_avx2(mc, vc)) break; /* rare: an inf or NaN moment */
        float *p = resid ? NULL : (float *)x->param + off;
        uint16_t *pp = resid ? (uint16_t *)x->lowp + off : NULL;
        void *rr = resid ? x->param + off * (resid == 1 ? 2 : 1) : NULL;
        const float *g = (const float *)x->grad + off;
        if (stage_grad) {
            widen(gbuf, x->grad + off * gsize, x->grad_type, FA_Q8_BLOCK, pre);
            g = gbuf;
        }
        float *mnew = bufs[b & 1][0], *vnew = bufs[b & 1][1];
        float mmax_prev = fa_bits_f32(mmost_prev), vmax_prev = fa_bits_f32(vmost_prev);
        /* (an inf or NaN fails these too) */
        int fast_prev = mmax_prev >= FA_Q8_FAST_MIN && mmax_prev <= FLT_MAX &&
                        vmax_prev >= FA_Q8_FAST_MIN && vmax_prev <= FLT_MAX;
        if (!fast_prev) { /* rare: encode it on its own, then encode zeros to scratch */
            *mscale_prev = fa_q8_encode_most_avx2(mc_prev, mold, mmost_prev, 1, FA_Q8_BLOCK);
            *vscale_prev = fa_q8_encode_most_avx2(vc_prev, vold, vmost_prev, 0, FA_Q8_BLOCK);
            memset(mold, 0, FA_Q8_BLOCK * sizeof(float));
            memset(vold, 0, FA_Q8_BLOCK * sizeof(float));
            mc_prev = scratch[0], vc_prev = scratch[1];
            mscale_prev = &scratch_scale[0], vscale_prev = &scratch_scale[1];
            mmax_prev = vmax_prev = 1.0f;
        }
        const __m256 minv = _mm256_set1_ps(1.0f / mmax_prev);
        const __m256 vinv = _mm256_set1_ps((1.0f / vmax_prev) * 32768.0f);
        const __m256 mscale8 = _mm256_set1_ps(*mscale), vscale8 = _mm256_set1_ps(vscale_y);
        __m256i most_m, most_v;
#define FA_Q8_ADAM_CALL(COUPLED, SIGN, DECAY, RESID)                                 \
    fa_q8_adam_block(p, pp, rr, g, mc, vc, mnew, vnew, mold, vold, mc_prev, vc_prev,   \
                     mscale8, vscale8, minv, vinv, &c, &most_m, &most_v, COUPLED, SIGN, \
                     DECAY, RESID)
        if (resid == 1) {
            if (coupled)
                FA_Q8_ADAM_CALL(1, 1, 1, 1);
            else if (!sign && !decay)
                FA_Q8_ADAM_CALL(0, 0, 0, 1);
            else if (!sign)
                FA_Q8_ADAM_CALL(0, 0, 1, 1);
            else
                FA_Q8_ADAM_CALL(0, 1, 1, 1);
        } else if (resid == 2) {
            if (coupled)
                FA_Q8_ADAM_CALL(1, 1, 1, 2);
            else if (!sign && !decay)
                FA_Q8_ADAM_CALL(0, 0, 0, 2);
            else if (!sign)
                FA_Q8_ADAM_CALL(0, 0, 1, 2);
            else
                FA_Q8_ADAM_CALL(0, 1, 1, 2);
        } else if (coupled)
            FA_Q8_ADAM_CALL(1, 1, 1, 0);
        else if (!sign && !decay)
            FA_Q8_ADAM_CALL(0, 0, 0, 0);
        else if (!sign)
            FA_Q8_ADAM_CALL(0, 0, 1, 0);
        else
            FA_Q8_ADAM_CALL(0, 1, 1, 0);
#undef FA_Q8_ADAM_CALL
        if (round && !resid)
            round((uint16_t *)x->lowp + off, p, FA_Q8_BLOCK);
        mmost_prev = fa_q8_max8_avx2(most_m);
        vmost_prev = fa_q8_max8_avx2(most_v);
        /* the scales; an inf or NaN's block gets its finite absmax when it is encoded */
        *mscale = fa_bits_f32(mmost_prev);
        *vscale = fa_bits_f32(vmost_prev);
        mscale_prev = mscale, vscale_prev = vscale;
        mold = mnew, vold = vnew;
        mc_prev = mc, vc_prev = vc;
    }
    *mscale_prev = fa_q8_encode_most_avx2(mc_prev, mold, mmost_prev, 1, FA_Q8_BLOCK);
    *vscale_prev = fa_q8_encode_most_avx2(vc_prev, vold, vmost_prev, 0, FA_Q8_BLOCK);
    return b;
}
#define FA_Q8_LOAD_baseline fa_q8_load_baseline
#define FA_Q8_STORE_baseline fa_q8_store_baseline
#define FA_Q8_LOAD_avx2 fa_q8_load_f16c_avx2
#define FA_Q8_STORE_avx2 fa_q8_store_f16c_avx2
#define FA_Q8_LOAD_avx512 fa_q8_load_f16c_avx2
#define FA_Q8_STORE_avx512 fa_q8_store_f16c_avx2
#define FA_Q8_ADAM_baseline ((fa_q8_adam_fn)0)
#define FA_Q8_ADAM_avx2 fa_q8_adam_f16c_avx2
#define FA_Q8_ADAM_avx512 fa_q8_adam_f16c_avx2
#else  /* elsewhere every row runs the portable 8-bit loops of FA_DEFINE_MIXED */
#define FA_Q8_X86 0
#define FA_Q8_LOAD_baseline fa_q8_load_baseline
#define FA_Q8_STORE_baseline fa_q8_store_baseline
#define FA_Q8_ADAM_baseline ((fa_q8_adam_fn)0)
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define FA_Q8_LOAD_neon fa_q8_load_neon
#define FA_Q8_STORE_neon fa_q8_store_neon
#define FA_Q8_ADAM_neon ((fa_q8_adam_fn)0)
#define FA_Q8_LOAD_sve fa_q8_load_sve
#define FA_Q8_STORE_sve fa_q8_store_sve
#define FA_Q8_ADAM_sve ((fa_q8_adam_fn)0)
#else
#define FA_Q8_LOAD_avx2 fa_q8_load_avx2
#define FA_Q8_STORE_avx2 fa_q8_store_avx2
#define FA_Q8_LOAD_avx512 fa_q8_load_avx512
#define FA_Q8_STORE_avx512 fa_q8_store_avx512
#define FA_Q8_ADAM_avx2 ((fa_q8_adam_fn)0)
#define FA_Q8_ADAM_avx512 ((fa_q8_adam_fn)0)
#endif
#endif

/* Per instruction set, the portable 8-bit loads and stores (the rows without a loop by
 * hand above use them; the staged runner calls them through FA_Q8_LOAD_/FA_Q8_STORE_). */
#define FA_DEFINE_Q8(ISA)                                                            \
    /* companded 8-bit state: widen one block, and the block's absmax then codes (the  \
     * fast paths branch-free, so that the compiler vectorizes them; a float's sign set \
     * by bits, as y >= 0; the conversions through int32, exact for these magnitudes)   */ \
    FA_ATTR_##ISA static void fa_q8c_load_##ISA(float *restrict out,                 \
                                                const uint8_t *restrict in,          \
                                                float absmax, int qsigned,           \
                                                ptrdiff_t n)                         \
    {                                                                                \
        if (fa_q8_any_nonfinite(in, n, qsigned)) { /* rare: an inf or NaN's code */  \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8_is_nonfinite(in[i], qsigned)                          \
                             ? fa_q8_value(in[i], qsigned)                           \
                             : fa_q8c_finite_value(in[i], qsigned) * absmax;         \
        } else if (qsigned) {                                                        \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                const int32_t m = in[i] & 0x7f;                                      \
                const float z = (float)(m < 125 ? m : 125) / FA_Q8C_TOP_SIGNED;      \
                const float y = z / (2.0f - z);                                      \
                out[i] = fa_bits_f32(fa_f32_bits(y) | (uint32_t)(in[i] & 0x80u) << 24) \
                         * absmax;                                                   \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                const int32_t c = in[i];                                             \
                const float t = (float)(c < 253 ? c : 253) / FA_Q8C_TOP_UNSIGNED;    \
                out[i] = t * t * absmax;                                             \
            }                                                                        \
        }                                                                            \
    }                                                                                \
    FA_ATTR_##ISA static float fa_q8c_store_##ISA(uint8_t *restrict out,             \
                                                  const float *restrict in,          \
                                                  int qsigned, ptrdiff_t n)          \
    {                                                                                \
        uint32_t most = 0;                                                           \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            uint32_t a = fa_f32_bits(in[i]) & 0x7fffffffu;                           \
            most = a > most ? a : most;                                              \
        }                                                                            \
        const int nonfinite = most >= 0x7f800000u;                                  \
        if (nonfinite) { /* rare: an inf or NaN; the scale is the finite absmax */  \
            most = 0;                                                                \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                uint32_t a = fa_f32_bits(in[i]) & 0x7fffffffu;                       \
                most = a < 0x7f800000u && a > most ? a : most;                       \
            }                                                                        \
        }                                                                            \
        const float absmax = fa_bits_f32(most), inv = 1.0f / absmax;                 \
        if (nonfinite || !(absmax >= FLT_MIN)) { /* rare: inf, NaN, 0 or subnormal */ \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8c_code_inv(in[i], absmax, inv, qsigned);               \
            return absmax;                                                           \
        }                                                                            \
        int32_t wide[FA_Q8_BLOCK];                                                   \
        if (qsigned)                                                                 \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                float x = fabsf(in[i]) * inv;                                        \
                x = x < 1.0f ? x : 1.0f;                                             \
                const float y = (x + x) / (1.0f + x);                                \
                const int32_t m = (int32_t)(y * FA_Q8C_TOP_SIGNED + 0.5f);           \
                const int32_t sign = (int32_t)((fa_f32_bits(in[i]) >> 24) & 0x80u);  \
                wide[i] = m | (m ? sign : 0);                                        \
            }                                                                        \
        else                                                                         \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                float x = fabsf(in[i]) * inv;                                        \
                x = x < 1.0f ? x : 1.0f;                                             \
                wide[i] = (int32_t)(sqrtf(x) * FA_Q8C_TOP_UNSIGNED + 0.5f);          \
            }                                                                        \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = (uint8_t)wide[i];                 \
        return absmax;                                                               \
    }                                                                                \
    /* 8-bit state: widen one block (codes * absmax) */                             \
    FA_ATTR_##ISA static void fa_q8_load_##ISA(float *restrict out,                  \
                                               const uint8_t *restrict in,           \
                                               float absmax, int qsigned,            \
                                               ptrdiff_t n)                          \
    {                                                                                \
        if (fa_q8_any_nonfinite(in, n, qsigned)) /* rare: an inf or NaN's code */  \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8_decode(in[i], absmax, qsigned);                       \
        else if (qsigned)                                                            \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8_finite_value(in[i], 1) * absmax;                      \
        else                                                                         \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8_finite_value(in[i], 0) * absmax;                      \
    }                                                                                \
    /* 8-bit state: the block's new absmax, then its codes; returns the absmax */    \
    FA_ATTR_##ISA static float fa_q8_store_##ISA(uint8_t *restrict out,              \
                                                 const float *restrict in,           \
                                                 int qsigned, ptrdiff_t n)           \
    {                                                                                \
        uint32_t most = 0;                                                           \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            uint32_t a = fa_f32_bits(in[i]) & 0x7fffffffu;                           \
            most = a > most ? a : most;                                              \
        }                                                                            \
        if (most >= 0x7f800000u) /* rare: an inf or NaN */                           \
            return fa_q8_encode_nonfinite(out, in, qsigned, n);                      \
        const float absmax = fa_bits_f32(most), inv = 1.0f / absmax;                 \
        if (!(absmax >= FLT_MIN)) { /* rare: 0 or subnormal */                       \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                out[i] = fa_q8_code_inv(in[i], absmax, inv, qsigned);                \
        } else {                                                                     \
            /* codes in 32-bit lanes first, then narrowed: gcc vectorizes both loops */  \
            uint32_t wide[FA_Q8_BLOCK];                                              \
            if (qsigned)                                                             \
                for (ptrdiff_t i = 0; i < n; i++) {                                  \
                    uint32_t u = fa_f32_bits(in[i]);                                 \
                    uint32_t r = fa_q8_encode_mag(fa_f32_bits(fabsf(in[i]) * inv)    \
                                                  & 0x7fffffffu, FA_Q8_EMAX_SIGNED); \
                    wide[i] = r | ((u >> 24) & (r ? 0x80u : 0u));                    \
                }                                                                    \
            else                                                                     \
                for (ptrdiff_t i = 0; i < n; i++)                                    \
                    wide[i] = fa_q8_encode_mag(fa_f32_bits(fabsf(in[i]) * inv)       \
                                               & 0x7fffffffu, FA_Q8_EMAX_UNSIGNED);  \
            for (ptrdiff_t i = 0; i < n; i++) out[i] = (uint8_t)wide[i];             \
        }                                                                            \
        return absmax;                                                               \
    }

#endif /* FUSEDADAM_Q8_H */
