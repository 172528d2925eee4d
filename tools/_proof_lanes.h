/* What tools/residual_proof.c and tools/compact_proof.c share: the masters of a high half
 * taken 16 at a time for the 16-lane helpers of the fused 8-bit loop (_residual.h), a
 * group holding a NaN run a second time with its NaNs replaced by zeros (so every other
 * master also goes through the lanes), and whether this CPU can run those lanes.
 * Included after _residual.h; found next to the proof, so the build line stays
 * gcc -O3 -ffp-contract=off -I src/fusedadam tools/<proof>.c
 */
#ifndef FA_PROOF_LANES_H
#define FA_PROOF_LANES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline int proof_is_nan(uint32_t u)
{
    return (u & 0x7fffffffu) > 0x7f800000u;
}

/* u[i] = (hi << 16) | (lo + i) for the group of 16 starting at lo; 1 when one is a NaN */
static inline int proof_group16(uint32_t hi, uint32_t lo, uint32_t u[16])
{
    int any_nan = 0;
    for (int i = 0; i < 16; i++) {
        u[i] = (hi << 16) | (lo + i);
        any_nan |= proof_is_nan(u[i]);
    }
    return any_nan;
}

/* the group's second pass: its NaNs replaced by zeros, the rest through the lanes */
static inline void proof_zero_nans16(uint32_t u[16])
{
    for (int i = 0; i < 16; i++)
        u[i] = proof_is_nan(u[i]) ? 0u : u[i];
}

#ifdef FA_RESID_X86
/* 16 float32 bit patterns as the two vectors the 16-lane helpers take, and back */
FA_RESID_TARGET static inline void proof_split16(const uint32_t u[16], __m256 *first,
                                                 __m256 *second)
{
    memcpy(first, u, 32);
    memcpy(second, u + 8, 32);
}

FA_RESID_TARGET static inline void proof_join16(uint32_t u[16], __m256 first, __m256 second)
{
    memcpy(u, &first, 32);
    memcpy(u + 8, &second, 32);
}
#endif

/* 1 where the 16-lane helpers exist and the CPU runs them (x86 with AVX2) */
static inline int proof_check_lanes(void)
{
#ifdef FA_RESID_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static inline void proof_print_lanes(int check_lanes, unsigned long long lanes)
{
    if (check_lanes)
        printf("16-lane helpers (AVX2) != the scalar functions: %llu\n", lanes);
    else
        printf("16-lane helpers: not checked (not x86 with AVX2)\n");
}

#endif
