/*
 * master="residual": the float32 master of a bfloat16 param kept exactly in 16 more bits.
 *
 * With u the master's bits, the param is p = (u + 0x8000) >> 16 (the master rounded to
 * nearest, ties away from zero: IEEE 754's roundTiesToAway, on the sign-magnitude bits)
 * and the residual is r = u - (p << 16) as a signed 16-bit integer, in [-0x8000, 0x7fff]:
 * its bits are simply the master's low 16 bits. Decoding is exact integer arithmetic:
 * u = (p << 16) + r. Round to nearest even cannot be kept: the masters that round to an
 * even bfloat16 are 65 537 float32 values (both ties included), one too many for 16 bits,
 * so at an exact tie (low half 0x8000) the param rounds away from zero; it differs from
 * round to nearest even only there, when the high half is even (tools/residual_proof.c
 * checks every one of the 2**32 masters). A NaN master is stored as the param NaN
 * sign | 0x7fc0 (the bfloat16 rounding's NaN) with residual 0: it decodes to the quiet NaN
 * of its sign (the payload is dropped). inf and the largest finite masters round as round
 * to nearest even does (to inf from 0x7f7f8000 up) and decode back exactly.
 */
#ifndef FUSEDADAM_RESIDUAL_H
#define FUSEDADAM_RESIDUAL_H

#include <stddef.h>
#include <stdint.h>

/* the bfloat16 param of master bits u */
static inline uint16_t fa_resid_param(uint32_t u)
{
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((int32_t)(u & 0x7fffffffu) > 0x7f800000 ? nan : (u + 0x8000u) >> 16);
}

/* the residual of master bits u (its low 16 bits; 0 for a NaN) */
static inline uint16_t fa_resid_low(uint32_t u)
{
    return (uint16_t)((int32_t)(u & 0x7fffffffu) > 0x7f800000 ? 0u : u);
}

/* the master bits of param p and residual r */
static inline uint32_t fa_resid_master(uint16_t p, uint16_t r)
{
    return ((uint32_t)p << 16) + (uint32_t)(int32_t)(int16_t)r;
}

/*
 * master="compact": the same param, and of the residual r only its top byte, rounded:
 * c = min((r + 128) >> 8, 127) (an arithmetic shift: round half up), an int8. The master
 * decodes as (p << 16) + 256 c, the residual's decoding with r = c << 8: within 128 float32
 * steps (units in the last place of the master's binade, counted on the bits) of the
 * master, within 255 for the 128 residuals 0x7f80-0x7fff that the clamp moves (1 in 512).
 * The relative error is at most 2**-15 (2**-16 off a binade's edge), against bfloat16's
 * 2**-9: the master keeps 15 of float32's 24 significant bits. Exact where the master is
 * a bfloat16 (c = 0: a new state, zeros), inf (c = 0) or NaN (c = 0: the quiet NaN); a
 * decoded master encodes back to the same param and code (so a step that changes nothing
 * changes no bits). The masters within 128 steps of the largest finite float32 decode to
 * inf (their param already is inf). FlashOptim's own code (e / (ulp / 2) * 127, rounded)
 * is a float computation per element; this one is integer work on the bits, the same on
 * every instruction set, and its 256 codes cover the residual's 65 536 values uniformly.
 */
static inline uint8_t fa_compact_code(uint32_t u)
{
    int32_t c = ((int32_t)(int16_t)fa_resid_low(u) + 128) >> 8;
    return (uint8_t)(int8_t)(c < 127 ? c : 127);
}

/* the master bits of param p and compact residual c */
static inline uint32_t fa_compact_master(uint16_t p, uint8_t c)
{
    return ((uint32_t)p << 16) + ((uint32_t)(int32_t)(int8_t)c << 8);
}

/*
 * The same, 16 masters at a time, for the fused x86 8-bit Adam loop (_q8.h): integer work
 * on the bits in AVX2 registers, elements 0-7 of a group of 16 in one float32 vector and
 * 8-15 in the other. The same bits as the scalar functions above for every master
 * (tools/residual_proof.c and tools/compact_proof.c check all 2**32 of them against those).
 */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#include <string.h>
#define FA_RESID_X86 1
#define FA_RESID_TARGET __attribute__((target("avx2")))

/* Masters from 16 high halves hi16 and 16 low halves lo16 (16-bit lanes in memory order):
 * u = (hi << 16) + lo, lo signed, is the 16-bit pair (hi - 1, lo) where lo is negative.
 * The 64-bit quarters go to [0-3, 8-11 | 4-7, 12-15] first so that the in-lane
 * interleaves give elements 0-7 and 8-15. */
FA_RESID_TARGET static inline void fa_resid_join16(__m256i hi16, __m256i lo16, __m256 *first,
                                                   __m256 *second)
{
    __m256i hi = _mm256_permute4x64_epi64(hi16, 0xd8), lo = _mm256_permute4x64_epi64(lo16, 0xd8);
    hi = _mm256_add_epi16(hi, _mm256_srai_epi16(lo, 15));
    *first = _mm256_castsi256_ps(_mm256_unpacklo_epi16(lo, hi));
    *second = _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo, hi));
}

/* fa_resid_master of pp[0..16) and rr[0..16) */
FA_RESID_TARGET static inline void fa_resid_load16(const uint16_t *pp, const uint16_t *rr,
                                                   __m256 *first, __m256 *second)
{
    fa_resid_join16(_mm256_loadu_si256((const __m256i *)pp),
                    _mm256_loadu_si256((const __m256i *)rr), first, second);
}

/* fa_compact_master of pp[0..16) and cc[0..16) (the low half: c << 8, exact in 16 bits) */
FA_RESID_TARGET static inline void fa_compact_load16(const uint16_t *pp, const uint8_t *cc,
                                                     __m256 *first, __m256 *second)
{
    __m256i c = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)cc));
    fa_resid_join16(_mm256_loadu_si256((const __m256i *)pp), _mm256_slli_epi16(c, 8), first,
                    second);
}

/* whether any of 16 masters is NaN (the only masters the lanes below do not round as
 * the scalar functions do: they take those 16 one at a time); one compare of the two
 * vectors, a lane unordered when either of its two masters is NaN */
FA_RESID_TARGET static inline int fa_resid_any_nan16(__m256 first, __m256 second)
{
    __m256 nan = _mm256_cmp_ps(first, second, _CMP_UNORD_Q);
    return !_mm256_testz_ps(nan, nan);
}

/* The 16-bit halves of 16 masters that are not NaN: *low, the low halves (the residuals),
 * and the params, fa_resid_param: (u + 0x8000) >> 16 is the high half plus bit 15 of the
 * low one (mod 2**16, as the 32-bit sum's). Both in the order [0-3, 8-11 | 4-7, 12-15]
 * of 64-bit quarters (the in-lane unpacks'): one permute puts either in memory order. */
FA_RESID_TARGET static inline __m256i fa_resid_split16(__m256 first, __m256 second,
                                                       __m256i *low)
{
    /* per 128-bit lane of each: the four low halves, then the four high halves */
    const __m256i halves = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14,
                                            15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11,
                                            14, 15);
    __m256i a = _mm256_shuffle_epi8(_mm256_castps_si256(first), halves);
    __m256i b = _mm256_shuffle_epi8(_mm256_castps_si256(second), halves);
    *low = _mm256_unpacklo_epi64(a, b);
    return _mm256_add_epi16(_mm256_unpackhi_epi64(a, b), _mm256_srli_epi16(*low, 15));
}

/* Rare: 16 masters one of which is NaN, one at a time (compact: cc, else rr) */
__attribute__((noinline, cold)) static void fa_resid_store16_slow(uint16_t *pp, uint16_t *rr,
                                                                  uint8_t *cc,
                                                                  const float *masters)
{
    for (int i = 0; i < 16; i++) {
        uint32_t u;
        memcpy(&u, masters + i, 4);
        pp[i] = fa_resid_param(u);
        if (cc)
            cc[i] = fa_compact_code(u);
        else
            rr[i] = fa_resid_low(u);
    }
}

/* fa_resid_param and fa_resid_low of 16 masters into pp[0..16) and rr[0..16) */
FA_RESID_TARGET static inline void fa_resid_store16(uint16_t *pp, uint16_t *rr, __m256 first,
                                                    __m256 second)
{
    if (__builtin_expect(fa_resid_any_nan16(first, second), 0)) {
        float masters[16];
        _mm256_storeu_ps(masters, first);
        _mm256_storeu_ps(masters + 8, second);
        fa_resid_store16_slow(pp, rr, NULL, masters);
        return;
    }
    __m256i low, param = fa_resid_split16(first, second, &low);
    _mm256_storeu_si256((__m256i *)pp, _mm256_permute4x64_epi64(param, 0xd8));
    _mm256_storeu_si256((__m256i *)rr, _mm256_permute4x64_epi64(low, 0xd8));
}

/* fa_resid_param and fa_compact_code of 16 masters into pp[0..16) and cc[0..16). The code
 * min((r + 128) >> 8, 127), r the low half as int16, is the high byte of r + 128 added
 * with signed saturation (which is the clamp: r + 128 > 0x7fff exactly when r >= 0x7f80,
 * and 0x7fff >> 8 = 127). */
FA_RESID_TARGET static inline void fa_compact_store16(uint16_t *pp, uint8_t *cc, __m256 first,
                                                      __m256 second)
{
    if (__builtin_expect(fa_resid_any_nan16(first, second), 0)) {
        float masters[16];
        _mm256_storeu_ps(masters, first);
        _mm256_storeu_ps(masters + 8, second);
        fa_resid_store16_slow(pp, NULL, cc, masters);
        return;
    }
    /* the high bytes to the low 8 bytes of each 128-bit lane: [0-3, 8-11, - | 4-7, 12-15, -] */
    const __m256i high_bytes = _mm256_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1,
                                                -1, -1, -1, 1, 3, 5, 7, 9, 11, 13, 15, -1, -1,
                                                -1, -1, -1, -1, -1, -1);
    __m256i k128 = _mm256_set1_epi16(128);
    __asm__("" : "+x"(k128));
    __m256i low, param = fa_resid_split16(first, second, &low);
    __m256i c = _mm256_shuffle_epi8(_mm256_adds_epi16(low, k128), high_bytes);
    c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)pp, _mm256_permute4x64_epi64(param, 0xd8));
    _mm_storeu_si128((__m128i *)cc, _mm256_castsi256_si128(c));
}
#endif

#endif /* FUSEDADAM_RESIDUAL_H */
