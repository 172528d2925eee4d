/* Exhaustive proof of master="residual" (src/fusedadam/_residual.h) over all 2**32
 * float32 masters u:
 *   1. decode(encode(u)) == u bit for bit for every non-NaN u; a NaN decodes to the quiet
 *      NaN of its sign (sign | 0x7fc00000);
 *   2. the param equals round to nearest even of u (an independent reference: exact
 *      distances in double to the two bfloat16 neighbours, ties to the even one; NaN:
 *      sign | 0x7fc0, as _convert.h's fa_f32_to_bf16) except exactly at the ties whose
 *      high half is even, where it is the neighbour away from zero (one more);
 *   3. on x86 with AVX2, the 16-lane helpers of the fused 8-bit loop (fa_resid_store16,
 *      fa_resid_load16) give the bits of the scalar functions for every master, and
 *      every (param, residual) pair; a group of 16 holding a NaN (taken one at a time)
 *      is run again with its NaNs replaced by zeros, so every other master also goes
 *      through the lanes.
 * Prints the counts and exits 0 when all hold.
 *
 *   gcc -O3 -mavx2 -ffp-contract=off -I src/fusedadam tools/residual_proof.c -o /tmp/rp
 */
#include "_residual.h"
#include "_proof_lanes.h"

#include <stdio.h>
#include <string.h>

/* the value of bits b in double, exactly (exponent field 255 read as 2**128 onward, so the
 * successor of the largest finite bfloat16 is 2**128, where IEEE overflow rounds to inf) */
static inline double value(uint32_t b)
{
    uint64_t e = (b >> 23) & 0xffu, m = b & 0x7fffffu;
    double sub = (double)(int64_t)m * 0x1p-149;
    uint64_t bits = ((uint64_t)(b >> 31) << 63) | ((e + 1023 - 127) << 52) | (m << 29);
    double norm;
    memcpy(&norm, &bits, 8);
    double mag = e ? norm : sub;
    return (b >> 31) && !e ? -mag : mag;
}

/* round to nearest even of finite or infinite u, by distances */
static inline uint32_t rne(uint32_t u)
{
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double x = value(u), dl = x - value(lo), dh = value(hi) - x;
    dl = dl < 0 ? -dl : dl;
    dh = dh < 0 ? -dh : dh;
    uint32_t pick = dl < dh ? lo : dh < dl ? hi : (((lo >> 16) & 1u) ? hi : lo);
    return pick >> 16;
}

#ifdef FA_RESID_X86
/* 3. for the masters of one high half: how many lanes differ from the scalar functions */
FA_RESID_TARGET static unsigned long long lanes_wrong(uint32_t hi)
{
    unsigned long long wrong = 0;
    for (uint32_t lo = 0; lo < 0x10000u; lo += 16) {
        uint32_t u[16], back[16];
        uint16_t p[16], r[16];
        int any_nan = proof_group16(hi, lo, u);
        for (int pass = 0; pass <= any_nan; pass++) {
            if (pass)
                proof_zero_nans16(u);
            __m256 first, second;
            proof_split16(u, &first, &second);
            fa_resid_store16(p, r, first, second);
            for (int i = 0; i < 16; i++)
                wrong += p[i] != fa_resid_param(u[i]) || r[i] != fa_resid_low(u[i]);
        }
        /* the decoding of every pair: param hi, residuals lo .. lo + 15 */
        for (int i = 0; i < 16; i++) p[i] = (uint16_t)hi, r[i] = (uint16_t)(lo + i);
        __m256 first, second;
        fa_resid_load16(p, r, &first, &second);
        proof_join16(back, first, second);
        for (int i = 0; i < 16; i++) wrong += back[i] != fa_resid_master(p[i], r[i]);
    }
    return wrong;
}
#endif

int main(void)
{
    unsigned long long wrong = 0, nan_wrong = 0, dev = 0, dev_tie = 0, ties_even = 0;
    unsigned long long nans = 0, param_nan_wrong = 0, lanes = 0;
    int check_lanes = proof_check_lanes();
    for (uint64_t hi = 0; hi < 0x10000u; hi++) {
#ifdef FA_RESID_X86
        if (check_lanes)
            lanes += lanes_wrong((uint32_t)hi);
#endif
        for (uint32_t lo = 0; lo < 0x10000u; lo++) {
            uint32_t u = (uint32_t)(hi << 16) | lo;
            uint16_t p = fa_resid_param(u), r = fa_resid_low(u);
            uint32_t back = fa_resid_master(p, r);
            int is_nan = proof_is_nan(u);
            uint32_t qnan = (u & 0x80000000u) | 0x7fc00000u;
            nans += is_nan;
            wrong += !is_nan && back != u;
            nan_wrong += is_nan && back != qnan;
            param_nan_wrong += is_nan && p != (qnan >> 16);
            int tie_even = !is_nan && lo == 0x8000u && !(hi & 1u);
            ties_even += tie_even;
            uint32_t ref = is_nan ? p : rne(u);
            dev += p != ref;
            dev_tie += tie_even && p == ref + 1;
        }
    }
    printf("masters: 4294967296, NaN: %llu\n", nans);
    printf("decode(encode(u)) != u (non-NaN): %llu; NaN not decoding to its quiet NaN: %llu;"
           " NaN param wrong: %llu\n", wrong, nan_wrong, param_nan_wrong);
    printf("param != round-to-nearest-even: %llu; of which ties with even high half, "
           "rounded away: %llu (ties with even high half: %llu)\n", dev, dev_tie, ties_even);
    proof_print_lanes(check_lanes, lanes);
    int ok = !wrong && !nan_wrong && !param_nan_wrong && dev == dev_tie && dev == ties_even &&
             !lanes;
    printf("%s\n", ok ? "PROOF OK" : "PROOF FAILED");
    return ok ? 0 : 1;
}
