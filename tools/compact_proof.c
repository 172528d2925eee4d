/* Exhaustive check of master="compact" (src/fusedadam/_residual.h) over all 2**32 float32
 * masters u, with p the param and c the int8 code of u, u' the master they decode to:
 *   1. NaN u: p is the quiet NaN of its sign, c = 0, u' = sign | 0x7fc00000;
 *   2. otherwise |u - u'| <= 128 float32 steps (bits, same sign), or <= 255 where the
 *      residual r = u - (p << 16) is in [0x7f80, 0x7fff] (the clamp: 128 per high half);
 *   3. encode(u') == (p, c) (a decoded master encodes back to the same bits);
 *   4. |u' - u| <= 2**-15 |u| in value for every normal u whose u' is finite; u' is inf
 *      only for inf u and the 2 x 128 masters within 128 steps of the largest finite;
 *   5. on x86 with AVX2, the 16-lane helpers of the fused 8-bit loop (fa_compact_store16,
 *      fa_compact_load16) give the bits of the scalar functions for every master, and
 *      every (param, code) pair; a group of 16 holding a NaN (taken one at a time) is run
 *      again with its NaNs replaced by zeros, so every other master also goes through
 *      the lanes.
 * Prints the counts and exits 0 when all hold.
 *
 *   gcc -O3 -ffp-contract=off -I src/fusedadam tools/compact_proof.c -o /tmp/cp
 */
#include "_residual.h"
#include "_proof_lanes.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static inline double value(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return (double)f;
}

#ifdef FA_RESID_X86
/* 5. for the masters of one high half: how many lanes differ from the scalar functions */
FA_RESID_TARGET static unsigned long long lanes_wrong(uint32_t hi)
{
    unsigned long long wrong = 0;
    for (uint32_t lo = 0; lo < 0x10000u; lo += 16) {
        uint32_t u[16];
        uint16_t p[16];
        uint8_t c[16];
        int any_nan = proof_group16(hi, lo, u);
        for (int pass = 0; pass <= any_nan; pass++) {
            if (pass)
                proof_zero_nans16(u);
            __m256 first, second;
            proof_split16(u, &first, &second);
            fa_compact_store16(p, c, first, second);
            for (int i = 0; i < 16; i++)
                wrong += p[i] != fa_resid_param(u[i]) || c[i] != fa_compact_code(u[i]);
        }
    }
    /* the decoding of every pair: param hi, every code */
    for (uint32_t code = 0; code < 0x100u; code += 16) {
        uint32_t back[16];
        uint16_t p[16];
        uint8_t c[16];
        for (int i = 0; i < 16; i++) p[i] = (uint16_t)hi, c[i] = (uint8_t)(code + i);
        __m256 first, second;
        fa_compact_load16(p, c, &first, &second);
        proof_join16(back, first, second);
        for (int i = 0; i < 16; i++) wrong += back[i] != fa_compact_master(p[i], c[i]);
    }
    return wrong;
}
#endif

int main(void)
{
    unsigned long long nan_wrong = 0, far = 0, clamped = 0, unstable = 0, rel_wrong = 0;
    unsigned long long to_inf = 0, nans = 0, lanes = 0;
    int check_lanes = proof_check_lanes();
    for (uint64_t hi = 0; hi < 0x10000u; hi++) {
#ifdef FA_RESID_X86
        if (check_lanes)
            lanes += lanes_wrong((uint32_t)hi);
#endif
        for (uint32_t lo = 0; lo < 0x10000u; lo++) {
            uint32_t u = (uint32_t)(hi << 16) | lo;
            uint16_t p = fa_resid_param(u);
            uint8_t c = fa_compact_code(u);
            uint32_t back = fa_compact_master(p, c);
            if (proof_is_nan(u)) {
                uint32_t qnan = (u & 0x80000000u) | 0x7fc00000u;
                nans++;
                nan_wrong += back != qnan || c != 0 || p != (qnan >> 16);
                continue;
            }
            int16_t r = (int16_t)fa_resid_low(u);
            int is_clamped = r >= 0x7f80;
            clamped += is_clamped;
            long long d = (long long)(u & 0x7fffffffu) - (long long)(back & 0x7fffffffu);
            d = d < 0 ? -d : d;
            far += (u >> 31) != (back >> 31) || d > (is_clamped ? 255 : 128);
            unstable += fa_resid_param(back) != p || fa_compact_code(back) != c;
            int back_inf = (back & 0x7fffffffu) == 0x7f800000u;
            int u_inf = (u & 0x7fffffffu) == 0x7f800000u;
            to_inf += back_inf && !u_inf;
            if (!back_inf && ((u >> 23) & 0xffu) != 0)
                rel_wrong += fabs(value(back) - value(u)) > ldexp(fabs(value(u)), -15);
        }
    }
    printf("NaN masters: %llu, wrong: %llu\n", nans, nan_wrong);
    printf("beyond 128 (255 clamped) steps: %llu; clamped: %llu\n", far, clamped);
    printf("not re-encoding to the same bits: %llu\n", unstable);
    printf("normal masters beyond 2**-15 relative: %llu\n", rel_wrong);
    printf("finite masters decoding to inf: %llu\n", to_inf);
    proof_print_lanes(check_lanes, lanes);
    int ok = !nan_wrong && !far && !unstable && !rel_wrong && to_inf == 256 &&
             clamped == 128ull * (0x10000u - 0x100u) && !lanes;
    printf(ok ? "PROOF OK\n" : "PROOF FAILED\n");
    return ok ? 0 : 1;
}
