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

#endif /* FUSEDADAM_RESIDUAL_H */
