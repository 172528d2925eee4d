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

#endif /* FUSEDADAM_RESIDUAL_H */
