/*
 * Every row of the dispatch table (src/fusedadam/_dispatch.h) against the first one,
 * "baseline", bit for bit: every dense loop kind of both element types, the staged runner
 * (bfloat16/float16 gradients, params and state, the 8-bit state, unscaling and clipping),
 * the non-finite scans, the norms and unscaled checks of every storage type, and
 * SparseAdam's row and sum loops. Inputs are random with NaN, infinities, signed zeros,
 * subnormals and huge values mixed in, at sizes around every vector width and block
 * boundary, at aligned and unaligned starts. The baseline row is the transcription of
 * fusedadam/reference.py that the Python suite checks; this program checks the vector
 * rows against it without Python, so it runs anywhere a C compiler and (for aarch64)
 * qemu-user do: tools/check_aarch64.sh runs it under qemu at several SVE vector lengths,
 * tests/test_rows_c.py on the build machine.
 *
 *     cc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -I src/fusedadam \
 *        tests/c/test_rows.c -o test_rows -lm && ./test_rows
 *
 * Floating-point outputs compare as the NumPy reference is compared (assert_array_equal):
 * the same bits, or NaN on both sides (a NaN's payload and sign may depend on operand
 * order, which the compiler may swap in a vectorised loop). Integer outputs (8-bit codes,
 * scan indices) must be identical. Prints one line per row; exits non-zero on the first
 * mismatch.
 */
#include "_dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/prctl.h>
#endif

static int row;         /* the row under test */
static long n_checks;   /* values compared */

#define FAIL(...)                                                                     \
    do {                                                                              \
        fprintf(stderr, "FAIL row %s: ", fa_isa_names[row]);                          \
        fprintf(stderr, __VA_ARGS__);                                                 \
        fprintf(stderr, "\n");                                                        \
        exit(1);                                                                      \
    } while (0)

/* ---- random inputs ---------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double uniform(void) { return (double)(rnd() >> 11) * 0x1.0p-53; }

static const uint32_t special32[] = {
    0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u,
    0x7f800001u, 0x7fa00000u, 0xffe12345u, 0x00000001u, 0x807fffffu, 0x00800000u,
    0x7f7fffffu, 0xff7fffffu, 0x3f800000u, 0xbf800000u, 0x7149f2cau, 0x0da24260u};
static const uint64_t special64[] = {
    0, UINT64_C(0x8000000000000000), UINT64_C(0x7ff0000000000000),
    UINT64_C(0xfff0000000000000), UINT64_C(0x7ff8000000000000),
    UINT64_C(0xfff8000000000000), UINT64_C(0x7ff0000000000001),
    UINT64_C(0x0000000000000001), UINT64_C(0x800fffffffffffff),
    UINT64_C(0x7fefffffffffffff), UINT64_C(0x3ff0000000000000),
    UINT64_C(0x7e37e43c8800759c)};

/* a value of magnitude around 2**(-scale..scale), or (with probability 1/rare) a special
 * one; nonneg: no negative values (second moments) */
static float rand_f32(int rare, int nonneg)
{
    if (rare && rnd() % rare == 0) {
        float f = fa_bits_f32(special32[rnd() % (sizeof special32 / 4)]);
        return nonneg ? fabsf(f) : f;
    }
    double x = ldexp(uniform() + 0.5, (int)(rnd() % 21) - 10);
    return (float)(nonneg || rnd() & 1 ? x : -x);
}
static double rand_f64(int rare, int nonneg)
{
    if (rare && rnd() % rare == 0) {
        uint64_t u = special64[rnd() % (sizeof special64 / 8)];
        double d;
        memcpy(&d, &u, 8);
        return nonneg ? fabs(d) : d;
    }
    double x = ldexp(uniform() + 0.5, (int)(rnd() % 41) - 20);
    return nonneg || rnd() & 1 ? x : -x;
}

/* ---- comparisons ------------------------------------------------------------------------ */

static void same_f32(const float *want, const float *got, ptrdiff_t n, const char *what)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t a = fa_f32_bits(want[i]), b = fa_f32_bits(got[i]);
        if (a != b && !(want[i] != want[i] && got[i] != got[i]))
            FAIL("%s[%td]: 0x%08x, baseline 0x%08x", what, i, b, a);
    }
    n_checks += n;
}
static void same_f64(const double *want, const double *got, ptrdiff_t n, const char *what)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        if (memcmp(want + i, got + i, 8) && !(want[i] != want[i] && got[i] != got[i]))
            FAIL("%s[%td]: %a, baseline %a", what, i, got[i], want[i]);
    }
    n_checks += n;
}
/* bfloat16 (f16 = 0) or float16 (f16 = 1) bit patterns, NaN equal to NaN */
static void same_half(const uint16_t *want, const uint16_t *got, ptrdiff_t n, int f16,
                      const char *what)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        float a = f16 ? fa_f16_to_f32(want[i]) : fa_bf16_to_f32(want[i]);
        float b = f16 ? fa_f16_to_f32(got[i]) : fa_bf16_to_f32(got[i]);
        if (want[i] != got[i] && !(a != a && b != b))
            FAIL("%s[%td]: 0x%04x, baseline 0x%04x", what, i, got[i], want[i]);
    }
    n_checks += n;
}
static void same_bytes(const uint8_t *want, const uint8_t *got, ptrdiff_t n, const char *what)
{
    for (ptrdiff_t i = 0; i < n; i++)
        if (want[i] != got[i]) FAIL("%s[%td]: %u, baseline %u", what, i, got[i], want[i]);
    n_checks += n;
}

/* sizes around every vector width (up to 2048-bit SVE: 64 floats), the staged block
 * (FA_STAGE = FA_Q8_BLOCK = 256) and the scan's FA_SCAN_BLOCK (2048) */
static const ptrdiff_t sizes[] = {0,   1,   2,   3,   4,   5,   7,   8,   9,   15,  16,
                                  17,  31,  32,  33,  63,  64,  65,  127, 128, 129, 255,
                                  256, 257, 511, 512, 513, 1000, 2049};
#define N_SIZES ((int)(sizeof sizes / sizeof sizes[0]))
#define MAXN 20000

static fa_scalars scalar_sets[4];
static void init_scalars(void)
{
    fa_scalars s = {1.0, 0.0, 1.0, 0.9, 0.1, 0.999, 0.001, 1e-3, 1e-8, 0.0, 0.0};
    s.beta3 = 0.9999, s.one_minus_beta3 = 1e-4, s.slow_coef = 5e-3, s.diff_coef = 9e-4;
    s.prox = 1.0, s.first = 1.0;
    /* the per-tensor kinds' fields (acc is set per call: check_dense) */
    s.lr = 1e-3, s.v_floor = 1e-12, s.tensor_step = 0.75, s.tensor_decay = 0.999;
    scalar_sets[0] = s;
    s.sign = -1.0, s.weight_decay = 0.1, s.decay = 0.9999, s.step_size = 3.0517578125e-5;
    s.eps = 1e-6, s.eps_root = 1e-12, s.grad_coef = 0.02;
    s.prox = 1.0001, s.first = 0.0;
    scalar_sets[1] = s;
    s.sign = 1.0, s.beta1 = 0.5, s.one_minus_beta1 = 0.5, s.beta2 = 0.0, s.one_minus_beta2 = 1.0;
    s.step_size = 0.37, s.eps = 0.0, s.decay = 1.0, s.weight_decay = 0.0;
    scalar_sets[2] = s;
    s.beta1 = 0.99, s.one_minus_beta1 = 0.01, s.beta2 = 0.95, s.one_minus_beta2 = 0.05;
    s.step_size = 1e30, s.eps = 1e-30, s.weight_decay = 1e3, s.decay = 0.5, s.grad_coef = 7.0;
    s.beta3 = 0.5, s.one_minus_beta3 = 0.5, s.slow_coef = 1e20, s.diff_coef = 3.0, s.prox = 3.0;
    scalar_sets[3] = s;
}

/* ---- dense loops -------------------------------------------------------------------------- */

static void check_dense(void)
{
    enum { A = FA_MAX_SLOTS };
    static float in32[A][MAXN + 1], base32[A][MAXN + 1], got32[A][MAXN + 1];
    static double in64[A][MAXN + 1], base64[A][MAXN + 1], got64[A][MAXN + 1];
    for (int dt = 0; dt < FA_N_DTYPES; dt++)
        for (int kind = 0; kind < FA_N_KINDS; kind++)
            for (int si = 0; si < 4; si++)
                for (int z = 0; z < N_SIZES; z++)
                    for (int shift = 0; shift < 2; shift++) {
                        const ptrdiff_t n = sizes[z];
                        const int rare = si == 3 ? 3 : (si ? 16 : 0);
                        for (int a = 0; a < A; a++)
                            for (ptrdiff_t i = 0; i < n + shift; i++) {
                                int nonneg = a >= FA_STATE0 + 1; /* v, vmax / u */
                                in32[a][i] = rand_f32(rare, nonneg);
                                in64[a][i] = rand_f64(rare, nonneg);
                            }
                        const size_t bytes = (n + shift) * (dt == FA_DTYPE_f32 ? 4 : 8);
                        char *pb[A], *pg[A];
                        for (int a = 0; a < A; a++) {
                            void *src = dt == FA_DTYPE_f32 ? (void *)in32[a] : (void *)in64[a];
                            char *b = dt == FA_DTYPE_f32 ? (char *)base32[a] : (char *)base64[a];
                            char *g = dt == FA_DTYPE_f32 ? (char *)got32[a] : (char *)got64[a];
                            memcpy(b, src, bytes);
                            memcpy(g, src, bytes);
                            size_t off = shift * (dt == FA_DTYPE_f32 ? 4 : 8);
                            pb[a] = b + off, pg[a] = g + off;
                        }
                        /* the per-tensor kinds' phase 1 adds to lanes: one set per side */
                        double acc_b[FA_TENSOR_SUMS * FA_TENSOR_LANES] = {0};
                        double acc_g[FA_TENSOR_SUMS * FA_TENSOR_LANES] = {0};
                        fa_scalars sb = scalar_sets[si], sg = scalar_sets[si];
                        sb.acc = acc_b, sg.acc = acc_g;
                        fa_get_loops(FA_ISA_baseline, dt)->dense[kind](pb, n, &sb);
                        fa_get_loops(row, dt)->dense[kind](pg, n, &sg);
                        {
                            char what[64];
                            snprintf(what, sizeof what, "%s %s set %d n %td lanes",
                                     fa_dtype_names[dt], fa_kind_names[kind], si, n);
                            same_f64(acc_b, acc_g, FA_TENSOR_SUMS * FA_TENSOR_LANES, what);
                        }
                        for (int a = 0; a < A; a++) {
                            char what[64];
                            snprintf(what, sizeof what, "%s %s set %d n %td +%d array %d",
                                     fa_dtype_names[dt], fa_kind_names[kind], si, n, shift, a);
                            if (dt == FA_DTYPE_f32)
                                same_f32(base32[a], got32[a], n + shift, what);
                            else
                                same_f64(base64[a], got64[a], n + shift, what);
                        }
                    }
}

/* ---- the staged runner (mixed precision, 8-bit state, unscaling, clipping) ---------------- */

static void check_staged(void)
{
    enum { N = 1300, BLOCKS = N / FA_Q8_BLOCK + 1 };
    static float param[2][N], grad32[N];
    static uint16_t grad16[N], lowp[2][N];
    static float st32[2][FA_MAX_STATES][N];
    static uint16_t st16[2][FA_MAX_STATES][N];
    static uint8_t st8[2][FA_MAX_STATES][N];
    static float scales[2][FA_MAX_STATES][BLOCKS];
    static const ptrdiff_t staged_sizes[] = {1, 7, 64, 255, 256, 257, 512, 777, N};
    static const double grad_scales[] = {1.0, 1024.0, 3.0, 0.25};
    static const int kinds[] = {FA_KIND_adam, FA_KIND_adam_l2, FA_KIND_amsgrad,
                                FA_KIND_adamax, FA_KIND_nadam_l2, FA_KIND_lion,
                                FA_KIND_adabelief, FA_KIND_momentum, FA_KIND_ademamix_l2,
                                FA_KIND_adan, FA_KIND_adan_prox};
    const int n_states_of[FA_N_KINDS] = {
        [FA_KIND_adam] = 2, [FA_KIND_adam_l2] = 2, [FA_KIND_amsgrad] = 3,
        [FA_KIND_adamax] = 2, [FA_KIND_nadam_l2] = 2, [FA_KIND_lion] = 1,
        [FA_KIND_adabelief] = 2, [FA_KIND_momentum] = 2, [FA_KIND_ademamix_l2] = 3,
        [FA_KIND_adan] = 4, [FA_KIND_adan_prox] = 4};
    long cases = 0;
    for (int gt = 0; gt < 3; gt++) /* FA_ET_F32, FA_ET_BF16, FA_ET_F16 */
        for (int stt = 0; stt < 3; stt++) /* FA_ET_F32, FA_ET_BF16, FA_ET_Q8 */
            for (int lt = 0; lt < 3; lt++) /* none, FA_ET_BF16, FA_ET_F16 */
                for (int ki = 0; ki < (int)(sizeof kinds / sizeof kinds[0]); ki++)
                    for (int gs = 0; gs < 4; gs++) {
                        const int grad_type = gt == 0 ? FA_ET_F32 : gt == 1 ? FA_ET_BF16 : FA_ET_F16;
                        const int state_type = stt == 0 ? FA_ET_F32 : stt == 1 ? FA_ET_BF16 : FA_ET_Q8;
                        const int lowp_type = lt == 0 ? -1 : lt == 1 ? FA_ET_BF16 : FA_ET_F16;
                        const int kind = kinds[ki], n_states = n_states_of[kind];
                        const ptrdiff_t n = staged_sizes[(cases++) % 9];
                        const int rare = (ki + gs) % 3 == 0 ? 0 : 24;
                        fa_pre pre;
                        fa_pre_set(&pre, grad_scales[gs]);
                        if (gs == 2) pre.clip = 0.7, pre.active = 1;
                        for (ptrdiff_t i = 0; i < n; i++) {
                            param[0][i] = param[1][i] = rand_f32(rare, 0);
                            grad32[i] = rand_f32(rare, 0);
                            grad16[i] = (uint16_t)rnd();
                            for (int j = 0; j < FA_MAX_STATES; j++) {
                                float v = rand_f32(rare, j > 0);
                                st32[0][j][i] = st32[1][j][i] = v;
                                st16[0][j][i] = st16[1][j][i] = fa_f32_to_bf16(v);
                                /* every code, those of inf and NaN included */
                                st8[0][j][i] = st8[1][j][i] = (uint8_t)rnd();
                            }
                        }
                        for (int j = 0; j < FA_MAX_STATES; j++)
                            for (int b = 0; b < BLOCKS; b++) {
                                /* mostly ordinary absmaxes; sometimes 0, subnormal, NaN, inf */
                                float sc = rnd() % 8 ? fabsf(rand_f32(0, 1)) : fabsf(rand_f32(1, 1));
                                scales[0][j][b] = scales[1][j][b] = sc;
                            }
                        for (int side = 0; side < 2; side++) {
                            fa_segment x;
                            memset(&x, 0, sizeof x);
                            x.param = (char *)param[side];
                            x.lowp = lowp_type >= 0 ? (char *)lowp[side] : NULL;
                            x.grad = gt == 0 ? (const char *)grad32 : (const char *)grad16;
                            x.n_states = n_states;
                            for (int j = 0; j < n_states; j++) {
                                x.state[j] = state_type == FA_ET_F32 ? (char *)st32[side][j]
                                           : state_type == FA_ET_BF16 ? (char *)st16[side][j]
                                                                      : (char *)st8[side][j];
                                x.scale[j] = state_type == FA_ET_Q8 ? scales[side][j] : NULL;
                                x.qsigned[j] = j == 0; /* signed m; v, vmax, u unsigned */
                            }
                            x.grad_type = grad_type, x.state_type = state_type;
                            x.lowp_type = lowp_type;
                            const fa_loops *L = fa_get_loops(side ? row : FA_ISA_baseline,
                                                             FA_DTYPE_f32);
                            L->staged(L->dense[kind], &x, n, &scalar_sets[(ki + gs) % 4], &pre);
                        }
                        char what[96];
                        snprintf(what, sizeof what, "staged %s grad %d state %d lowp %d scale %g n %td",
                                 fa_kind_names[kind], grad_type, state_type, lowp_type,
                                 grad_scales[gs], n);
                        same_f32(param[0], param[1], n, what);
                        if (lowp_type >= 0)
                            same_half(lowp[0], lowp[1], n, lowp_type == FA_ET_F16, what);
                        for (int j = 0; j < n_states; j++) {
                            if (state_type == FA_ET_F32)
                                same_f32(st32[0][j], st32[1][j], n, what);
                            else if (state_type == FA_ET_BF16)
                                same_half(st16[0][j], st16[1][j], n, 0, what);
                            else {
                                same_bytes(st8[0][j], st8[1][j], n, what);
                                same_f32(scales[0][j], scales[1][j], BLOCKS, what);
                            }
                        }
                    }
    /* float64: the gradient staged for unscaling and clipping */
    static double p64[2][N], g64[N], s64[2][FA_MAX_STATES][N];
    for (int gs = 0; gs < 4; gs++)
        for (int ki = 0; ki < (int)(sizeof kinds / sizeof kinds[0]); ki++) {
            const ptrdiff_t n = staged_sizes[(gs * 3 + ki) % 9];
            fa_pre pre;
            fa_pre_set(&pre, grad_scales[gs]);
            pre.clip = 0.3, pre.active = 1;
            for (ptrdiff_t i = 0; i < n; i++) {
                p64[0][i] = p64[1][i] = rand_f64(20, 0);
                g64[i] = rand_f64(20, 0);
                for (int j = 0; j < FA_MAX_STATES; j++)
                    s64[0][j][i] = s64[1][j][i] = rand_f64(20, j > 0);
            }
            for (int side = 0; side < 2; side++) {
                fa_segment x;
                memset(&x, 0, sizeof x);
                x.param = (char *)p64[side], x.grad = (const char *)g64;
                x.n_states = n_states_of[kinds[ki]];
                for (int j = 0; j < x.n_states; j++) x.state[j] = (char *)s64[side][j];
                x.grad_type = x.state_type = FA_ET_F64, x.lowp_type = -1;
                const fa_loops *L = fa_get_loops(side ? row : FA_ISA_baseline, FA_DTYPE_f64);
                L->staged(L->dense[kinds[ki]], &x, n, &scalar_sets[gs], &pre);
            }
            same_f64(p64[0], p64[1], n, "staged f64 param");
            for (int j = 0; j < FA_MAX_STATES; j++)
                same_f64(s64[0][j], s64[1][j], n, "staged f64 state");
        }
}

/* ---- gradient scans, norms, unscaled checks ------------------------------------------------ */

static void check_scans(void)
{
    enum { N = 4 * FA_SCAN_BLOCK * 2 + 37 };
    static uint8_t buf[N * 8];
    static const ptrdiff_t scan_sizes[] = {0, 1, 17, 100, 2048, 8191, 8192, 16384, 16421, N};
    const int sizes_of[FA_N_ETS] = {4, 8, 2, 2};
    for (int et = 0; et < FA_N_ETS; et++)
        for (int z = 0; z < 10; z++)
            for (int bad = -1; bad < 4; bad++) {
                const ptrdiff_t n = scan_sizes[z];
                for (ptrdiff_t i = 0; i < n; i++) {
                    if (et == FA_ET_F32) { float f = rand_f32(0, 0); memcpy(buf + 4 * i, &f, 4); }
                    else if (et == FA_ET_F64) { double d = rand_f64(0, 0); memcpy(buf + 8 * i, &d, 8); }
                    else {
                        float f = rand_f32(0, 0) * 0.01f;
                        uint16_t h = et == FA_ET_BF16 ? fa_f32_to_bf16(f) : fa_f32_to_f16(f);
                        memcpy(buf + 2 * i, &h, 2);
                    }
                }
                if (bad >= 0 && n > 0) { /* plant a NaN or an infinity, or a huge value */
                    ptrdiff_t at = bad == 0 ? n - 1 : (ptrdiff_t)(rnd() % n);
                    int w = sizes_of[et];
                    if (bad == 3) { /* huge but finite: only the float64 squares overflow; the
                                     * largest finite value of each narrower type (the scan's
                                     * boundary: one exponent step below all ones) */
                        if (et == FA_ET_F64) { double d = 1e200; memcpy(buf + 8 * at, &d, 8); }
                        else if (et == FA_ET_F32) { uint32_t u = 0xff7fffffu; memcpy(buf + 4 * at, &u, 4); }
                        else {
                            uint16_t h = et == FA_ET_BF16 ? 0x7f7f : 0xfbff;
                            memcpy(buf + 2 * at, &h, 2);
                        }
                    } else if (et == FA_ET_F32) {
                        uint32_t u = bad == 1 ? 0x7fc00000u : 0xff800000u; memcpy(buf + w * at, &u, 4);
                    } else if (et == FA_ET_F64) {
                        uint64_t u = bad == 1 ? UINT64_C(0x7ff8000000000000) : UINT64_C(0xfff0000000000000);
                        memcpy(buf + w * at, &u, 8);
                    } else {
                        uint16_t h = et == FA_ET_BF16 ? (bad == 1 ? 0x7fc1 : 0xff80)
                                                      : (bad == 1 ? 0x7e01 : 0xfc00);
                        memcpy(buf + w * at, &h, 2);
                    }
                }
                const fa_grad_fns *B = fa_get_grad_fns(FA_ISA_baseline, et);
                const fa_grad_fns *G = fa_get_grad_fns(row, et);
                ptrdiff_t want = B->scan(buf, n), got = G->scan(buf, n), truth = -1;
                for (ptrdiff_t i = 0; i < n && truth < 0; i++) { /* the first by isfinite() */
                    double x;
                    uint16_t h;
                    if (et == FA_ET_F32) { float f; memcpy(&f, buf + 4 * i, 4); x = f; }
                    else if (et == FA_ET_F64) memcpy(&x, buf + 8 * i, 8);
                    else {
                        memcpy(&h, buf + 2 * i, 2);
                        x = et == FA_ET_BF16 ? fa_bf16_to_f32(h) : fa_f16_to_f32(h);
                    }
                    if (!isfinite(x)) truth = i;
                }
                if (want != truth) FAIL("scan type %d n %td: baseline %td, first non-finite %td", et, n, want, truth);
                if (want != got) FAIL("scan type %d n %td: %td, baseline %td", et, n, got, want);
                double ws = -1, gs = -1;
                want = B->norm(buf, n, &ws);
                got = G->norm(buf, n, &gs);
                if (want != got) FAIL("norm type %d n %td: %td, baseline %td", et, n, got, want);
                same_f64(&ws, &gs, 1, "norm sum of squares");
                for (int k = 0; k < 2; k++) {
                    double sc = k ? 1e-300 : 0.3;
                    want = B->unscaled(buf, n, sc);
                    got = G->unscaled(buf, n, sc);
                    if (want != got)
                        FAIL("unscaled type %d n %td scale %g: %td, baseline %td", et, n, sc, got, want);
                }
                if (et < FA_N_DTYPES) { /* the dense table's own scan */
                    want = fa_get_loops(FA_ISA_baseline, et)->scan(buf, n);
                    got = fa_get_loops(row, et)->scan(buf, n);
                    if (want != got) FAIL("table scan %d n %td: %td, baseline %td", et, n, got, want);
                }
                n_checks += 5;
            }
}

/* ---- SparseAdam rows ------------------------------------------------------------------------ */

static void check_sparse(void)
{
    enum { DIM = 300, ROWS = 9 };
    static float p32[2][DIM], m32[2][DIM], v32[2][DIM], g32[DIM], vals32[ROWS * DIM], out32[2][DIM];
    static double p64[2][DIM], m64[2][DIM], v64[2][DIM], g64[DIM], vals64[ROWS * DIM], out64[2][DIM];
    static const ptrdiff_t order[ROWS] = {3, 0, 8, 3, 1, 7, 2, 5, 4};
    fa_sparse_scalars ss[2] = {{1.0, 0.1, 0.001, 1e-3, 1e-8}, {-1.0, 0.5, 0.05, 2.5, 1e-30}};
    for (int z = 0; z < N_SIZES; z++) {
        const ptrdiff_t dim = sizes[z] < DIM ? sizes[z] : DIM;
        for (int si = 0; si < 2; si++) {
            for (ptrdiff_t j = 0; j < dim; j++) {
                p32[0][j] = p32[1][j] = rand_f32(20, 0);
                m32[0][j] = m32[1][j] = rand_f32(20, 0);
                v32[0][j] = v32[1][j] = rand_f32(20, 1);
                g32[j] = rand_f32(20, 0);
                p64[0][j] = p64[1][j] = rand_f64(20, 0);
                m64[0][j] = m64[1][j] = rand_f64(20, 0);
                v64[0][j] = v64[1][j] = rand_f64(20, 1);
                g64[j] = rand_f64(20, 0);
            }
            for (ptrdiff_t j = 0; j < ROWS * dim; j++) vals32[j] = rand_f32(30, 0), vals64[j] = rand_f64(30, 0);
            for (int side = 0; side < 2; side++) {
                int isa = side ? row : FA_ISA_baseline;
                const fa_loops *L32 = fa_get_loops(isa, FA_DTYPE_f32);
                const fa_loops *L64 = fa_get_loops(isa, FA_DTYPE_f64);
                L32->sparse_row(p32[side], m32[side], v32[side], g32, dim, &ss[si]);
                L64->sparse_row(p64[side], m64[side], v64[side], g64, dim, &ss[si]);
                L32->sparse_sum(out32[side], vals32, order, si, ROWS, dim);
                L64->sparse_sum(out64[side], vals64, order, si, ROWS, dim);
            }
            same_f32(p32[0], p32[1], dim, "sparse f32 param");
            same_f32(m32[0], m32[1], dim, "sparse f32 exp_avg");
            same_f32(v32[0], v32[1], dim, "sparse f32 exp_avg_sq");
            same_f32(out32[0], out32[1], dim, "sparse f32 sum");
            same_f64(p64[0], p64[1], dim, "sparse f64 param");
            same_f64(m64[0], m64[1], dim, "sparse f64 exp_avg");
            same_f64(v64[0], v64[1], dim, "sparse f64 exp_avg_sq");
            same_f64(out64[0], out64[1], dim, "sparse f64 sum");
        }
    }
}

int main(int argc, char **argv)
{
    /* optional: the row the CPU must pick (tools/check_aarch64.sh checks run-time choice) */
    const int best = fa_cpu_best_isa();
    printf("rows in this build:");
    for (int i = 0; i < FA_N_ISAS; i++) printf(" %s", fa_isa_names[i]);
    printf("; this CPU runs up to: %s", fa_isa_names[best]);
#if defined(__aarch64__) && defined(__linux__) && defined(PR_SVE_GET_VL)
    if (best == FA_N_ISAS - 1) {
        int vl = prctl(PR_SVE_GET_VL);
        printf(" (SVE vector length %d bits)", vl < 0 ? -1 : (vl & 0xffff) * 8);
    }
#endif
    printf("\n");
    if (argc > 1 && strcmp(argv[1], fa_isa_names[best]) != 0) {
        fprintf(stderr, "FAIL: expected this CPU to run up to %s, got %s\n", argv[1],
                fa_isa_names[best]);
        return 1;
    }
    init_scalars();
    for (row = 0; row <= best; row++) {
        n_checks = 0;
        rng_state = 0x9e3779b97f4a7c15u; /* the same inputs for every row */
        check_dense();
        check_staged();
        check_scans();
        check_sparse();
        printf("row %-8s: %ld values bit-identical to baseline (dense kinds, staged, "
               "8-bit, scans, norms, sparse)\n", fa_isa_names[row], n_checks);
    }
    printf("all row tests passed\n");
    return 0;
}
