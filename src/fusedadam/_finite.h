/*
 * Scan for non-finite gradient values (NaN, +inf, -inf) before a step writes anything.
 *
 * An IEEE value is non-finite exactly when all its exponent bits are set, so the scan is
 * integer work on the raw bits: exact, branch-free inside a block, and vectorised (an OR
 * reduction of compare results, which needs no reassociation of floating-point sums).
 * Blocks of FA_SCAN_BLOCK elements keep the common all-finite case to one compare per
 * element; only a block that holds a bad value is walked again to find the first one.
 */
#ifndef FUSEDADAM_FINITE_H
#define FUSEDADAM_FINITE_H

#include <stddef.h>
#include <stdint.h>

#define FA_SCAN_BLOCK 2048

typedef ptrdiff_t (*fa_scan_fn)(const void *grad, ptrdiff_t n);

#define FA_SCAN_BODY(UT, EXP)                                                        \
    {                                                                                \
        const UT *bits = (const UT *)grad;                                           \
        for (ptrdiff_t start = 0; start < n; start += FA_SCAN_BLOCK) {               \
            ptrdiff_t end = n - start < FA_SCAN_BLOCK ? n : start + FA_SCAN_BLOCK;   \
            UT bad = 0;                                                              \
            for (ptrdiff_t i = start; i < end; i++)                                  \
                bad |= (UT)((bits[i] & EXP) == EXP);                                 \
            if (bad) {                                                               \
                for (ptrdiff_t i = start; i < end; i++)                              \
                    if ((bits[i] & EXP) == EXP) return i;                            \
            }                                                                        \
        }                                                                            \
        return -1;                                                                   \
    }

#define FA_DEFINE_SCAN(ISA, ATTR)                                                    \
    ATTR static ptrdiff_t fa_scan_f32_##ISA(const void *grad, ptrdiff_t n)           \
        FA_SCAN_BODY(uint32_t, UINT32_C(0x7f800000))                                 \
    ATTR static ptrdiff_t fa_scan_f64_##ISA(const void *grad, ptrdiff_t n)           \
        FA_SCAN_BODY(uint64_t, UINT64_C(0x7ff0000000000000))

FA_DEFINE_SCAN(baseline, )
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
FA_DEFINE_SCAN(avx2, __attribute__((target("avx2"))))
FA_DEFINE_SCAN(avx512, __attribute__((target("avx512f,prefer-vector-width=512"))))
static const fa_scan_fn fa_scans[3][2] = {
    {fa_scan_f32_baseline, fa_scan_f64_baseline},
    {fa_scan_f32_avx2, fa_scan_f64_avx2},
    {fa_scan_f32_avx512, fa_scan_f64_avx512}};
#else
static const fa_scan_fn fa_scans[3][2] = {
    {fa_scan_f32_baseline, fa_scan_f64_baseline},
    {fa_scan_f32_baseline, fa_scan_f64_baseline},
    {fa_scan_f32_baseline, fa_scan_f64_baseline}};
#endif

static fa_scan_fn fa_get_scan(int isa, int dtype) { return fa_scans[isa][dtype]; }

#endif /* FUSEDADAM_FINITE_H */
