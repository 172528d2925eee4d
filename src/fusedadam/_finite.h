/*
 * The non-finite gradient scan (NaN, +inf, -inf), run before a step writes anything.
 * _dispatch.h instantiates it once per instruction set and element type.
 *
 * An IEEE value is non-finite exactly when all its exponent bits are set, so the scan is
 * integer work on the raw bits: exact, branch-free inside a block, and vectorised (an OR
 * reduction of compare results, which needs no reassociation of floating-point sums).
 * The common all-finite case costs one compare per element; only a segment that holds a
 * bad value is walked again to find the first one.
 */
#ifndef FUSEDADAM_FINITE_H
#define FUSEDADAM_FINITE_H

#include <stddef.h>
#include <stdint.h>

#define FA_SCAN_BLOCK 2048

/* Index of the first non-finite value of grad[0:n], or -1. */
typedef ptrdiff_t (*fa_scan_fn)(const void *grad, ptrdiff_t n);

/* The segment is read as FA_SCAN_STREAMS interleaved sub-ranges at once: one sequential
 * stream per core is bound by how many cache misses the prefetcher keeps in flight (16 GB/s
 * here, against ~57 GB/s for the update's seven streams); four streams keep more in flight. */
#define FA_SCAN_STREAMS 4

#define FA_SCAN_BODY(UT, EXP)                                                        \
    {                                                                                \
        const UT *bits = (const UT *)grad;                                           \
        ptrdiff_t quarter = (n / FA_SCAN_STREAMS) / FA_SCAN_BLOCK * FA_SCAN_BLOCK;  \
        UT bad = 0;                                                                  \
        for (ptrdiff_t start = 0; start < quarter && !bad; start += FA_SCAN_BLOCK) { \
            const UT *b0 = bits + start, *b1 = b0 + quarter;                         \
            const UT *b2 = b1 + quarter, *b3 = b2 + quarter;                         \
            for (ptrdiff_t i = 0; i < FA_SCAN_BLOCK; i++)                            \
                bad |= (UT)(((b0[i] & EXP) == EXP) | ((b1[i] & EXP) == EXP) |        \
                            ((b2[i] & EXP) == EXP) | ((b3[i] & EXP) == EXP));        \
        }                                                                            \
        for (ptrdiff_t i = FA_SCAN_STREAMS * quarter; i < n; i++)                    \
            bad |= (UT)((bits[i] & EXP) == EXP);                                     \
        if (bad) { /* rare: find the first one */                                    \
            for (ptrdiff_t i = 0; i < n; i++)                                        \
                if ((bits[i] & EXP) == EXP) return i;                                \
        }                                                                            \
        return -1;                                                                   \
    }

#endif /* FUSEDADAM_FINITE_H */
