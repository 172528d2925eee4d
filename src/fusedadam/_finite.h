/*
 * The non-finite gradient scan (NaN, +inf, -inf), run before a step writes anything.
 * _dispatch.h instantiates it once per instruction set and element type.
 *
 * An IEEE value is non-finite exactly when all its exponent bits are set, so the scan is
 * integer work on the raw bits: exact, branch-free inside a block, and vectorised. With
 * EXP the exponent mask and LOW its lowest bit, (bits & EXP) + LOW is at most EXP for a
 * finite value and exactly EXP + LOW, the sign bit alone, for a non-finite one (EXP ends
 * just below the sign bit in every IEEE format): the scan ORs these sums and tests the
 * sign bit once per block, three integer operations per vector (no compare, no mask, and
 * the same on SSE2, which has no 64-bit compare). Only a segment that holds a bad value is
 * walked again to find the first one.
 */
#ifndef FUSEDADAM_FINITE_H
#define FUSEDADAM_FINITE_H

#include <stddef.h>
#include <stdint.h>

/* Elements between two tests of the OR (an early exit costs at most one block). */
#define FA_SCAN_BLOCK 2048
/* Bytes of OR accumulators: element j of a block goes to lane j % (128 / size), so each
 * instruction set keeps several independent vector chains (8 SSE2, 4 AVX2, 2 AVX-512
 * registers for float32). With one accumulator the loop ran one vector a cycle, the OR's
 * latency: in cache (64 KB, one thread, Zen 5 at ~2.6 GHz) SSE2 36 GB/s, AVX2 82, AVX-512
 * 169, and SSE2 no faster than memory; with the lanes 76, 136 and 233 GB/s (bfloat16
 * 42/88/79 -> 75/127/145). OR is exact in any order: no result changes. */
#define FA_SCAN_LANE_BYTES 128

/* Index of the first non-finite value of grad[0:n], or -1. */
typedef ptrdiff_t (*fa_scan_fn)(const void *grad, ptrdiff_t n);

/* One sequential stream, in address order. Reading a segment as four interleaved
 * sub-ranges (to keep more cache misses in flight) was slower: per 1 MB segment of a cold
 * float32 array, one thread, AVX-512, the median of ~115 segments each, 29-32 GB/s with one
 * stream against 20-21 GB/s with two or four (AVX2 likewise, 29-31 against 22-23);
 * software prefetching 4-16 KB ahead added nothing (the update reads its four streams at
 * ~34 GB/s on the same core). */
#define FA_SCAN_BODY(UT, EXP)                                                        \
    {                                                                                \
        const UT *bits = (const UT *)grad;                                           \
        const UT low = (UT)((EXP) & (UT)(0u - (EXP)));                               \
        const UT sign = (UT)((UT)1 << (8 * sizeof(UT) - 1)); /* = EXP + low */        \
        UT lane[FA_SCAN_LANE_BYTES / sizeof(UT)] = {0}, seen = 0;                    \
        enum { LANES = FA_SCAN_LANE_BYTES / sizeof(UT) };                            \
        ptrdiff_t i = 0;                                                             \
        for (; i + FA_SCAN_BLOCK <= n && !(seen & sign); i += FA_SCAN_BLOCK) {       \
            for (ptrdiff_t j = 0; j < FA_SCAN_BLOCK; j += LANES)                     \
                for (int l = 0; l < LANES; l++)                                      \
                    lane[l] |= (UT)((bits[i + j + l] & (EXP)) + low);                \
            for (int l = 0; l < LANES; l++) seen |= lane[l];                         \
        }                                                                            \
        if (!(seen & sign))                                                          \
            for (; i < n; i++)                                                       \
                seen |= (UT)((bits[i] & (EXP)) + low);                               \
        if (seen & sign) { /* rare: find the first one */                            \
            for (ptrdiff_t k = 0; k < n; k++)                                        \
                if ((bits[k] & (EXP)) == (EXP)) return k;                            \
        }                                                                            \
        return -1;                                                                   \
    }

#endif /* FUSEDADAM_FINITE_H */
