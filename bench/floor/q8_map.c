/* What the 8-bit map costs per element on one core, L1-resident (no memory traffic):
 * the map fusedadam uses (_mixed.h: a float-like code relative to the block absmax,
 * encoded by integer work) against the block-wise dynamic map of Dettmers et al.
 * (bitsandbytes), whose 256 values are not a floating-point format, so encoding needs a
 * search per element: scalar branchless binary search (bitsandbytes' CPU quantizer) and
 * an AVX2 binary search with gathers.
 *
 *   gcc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -I src/fusedadam \
 *       bench/floor/q8_map.c -o /tmp/q8_map -lm && /tmp/q8_map
 *
 * Prints ns/element (best of 9 runs) of encoding one block of 256 values (absmax and
 * codes) and of decoding it, and the full fused step's parts for scale: the Adam element
 * loop of _loops.h on the same block. Then whole 8-bit Adam steps on one chunk (16384
 * elements, L2-resident): the staged runner (per block: decode both moments into buffers,
 * the float32 Adam loop, encode) and the fused, software-pipelined loop the avx2 row runs
 * (fa_q8_adam_f16c_avx2), which gives the same bits.
 */
#include "_dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BLOCK 256
#define REPS 40000

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static float table[256]; /* the signed dynamic map, sorted ascending */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* bitsandbytes' create_dynamic_map(signed=True): per decade 10**-k, k = 6..0, linearly
 * spaced fractions (more bits for larger decades), both signs, plus 0 and 1. */
static void make_dynamic_map(void)
{
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1; /* 2**(i + 7 - 7) + 1 boundaries */
        for (int j = 0; j + 1 < items && n < 254; j++) {
            double lo = 0.1 + 0.9 * j / (items - 1), hi = 0.1 + 0.9 * (j + 1) / (items - 1);
            double v = pow(10.0, -6 + i) * (lo + hi) / 2;
            table[n++] = (float)v;
            table[n++] = (float)-v;
        }
    }
    while (n < 254) table[n++] = 0.0f;
    table[n++] = 0.0f;
    table[n++] = 1.0f;
    qsort(table, 256, sizeof(float), cmp_float);
}

static float block_absmax(const float *in)
{
    float m = 0.0f;
    for (int i = 0; i < BLOCK; i++) m = fabsf(in[i]) > m ? fabsf(in[i]) : m;
    return m;
}

/* scalar: branchless binary search for the last table value <= x, then the nearer of it
 * and the next one */
static void dynamic_encode_scalar(uint8_t *out, const float *in)
{
    float inv = 1.0f / block_absmax(in);
    for (int i = 0; i < BLOCK; i++) {
        float x = in[i] * inv;
        int lo = 0;
        for (int step = 128; step > 0; step >>= 1)
            lo = table[lo + step] <= x ? lo + step : lo;
        int hi = lo < 255 ? lo + 1 : lo;
        out[i] = (uint8_t)(fabsf(table[hi] - x) < fabsf(x - table[lo]) ? hi : lo);
    }
}

__attribute__((target("avx2"))) static void dynamic_encode_avx2(uint8_t *out, const float *in)
{
    const __m256 inv = _mm256_set1_ps(1.0f / block_absmax(in));
    for (int i = 0; i < BLOCK; i += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(in + i), inv);
        __m256i lo = _mm256_setzero_si256();
        for (int step = 128; step > 0; step >>= 1) {
            __m256i mid = _mm256_add_epi32(lo, _mm256_set1_epi32(step));
            __m256 v = _mm256_i32gather_ps(table, _mm256_min_epi32(mid, _mm256_set1_epi32(255)), 4);
            lo = _mm256_blendv_epi8(lo, mid, _mm256_castps_si256(_mm256_cmp_ps(v, x, _CMP_LE_OQ)));
        }
        __m256i hi = _mm256_min_epi32(_mm256_add_epi32(lo, _mm256_set1_epi32(1)),
                                      _mm256_set1_epi32(255));
        __m256 vlo = _mm256_i32gather_ps(table, lo, 4), vhi = _mm256_i32gather_ps(table, hi, 4);
        __m256 up = _mm256_cmp_ps(_mm256_sub_ps(vhi, x), _mm256_sub_ps(x, vlo), _CMP_LT_OQ);
        __m256i r = _mm256_blendv_epi8(lo, hi, _mm256_castps_si256(up));
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(out + i), _mm_packus_epi16(w, w));
    }
}

static void dynamic_decode(float *out, const uint8_t *in, float absmax)
{
    for (int i = 0; i < BLOCK; i++) out[i] = table[in[i]] * absmax;
}

#define BEST(label, stmt)                                                             \
    {                                                                                 \
        double best = 1e9;                                                            \
        for (int k = 0; k < 9; k++) {                                                 \
            double t = now();                                                         \
            for (int r = 0; r < REPS; r++) {                                          \
                stmt;                                                                 \
                __asm__ volatile("" ::: "memory");                                    \
            }                                                                         \
            t = now() - t;                                                            \
            best = t < best ? t : best;                                               \
        }                                                                             \
        printf("%-44s %6.3f ns/element\n", label, best / REPS / BLOCK * 1e9);         \
    }

int main(void)
{
    static float in[BLOCK], out[BLOCK], p[BLOCK], g[BLOCK], m[BLOCK], v[BLOCK];
    static uint8_t codes[BLOCK];
    volatile float sink = 0;
    make_dynamic_map();
    srand(1);
    for (int i = 0; i < BLOCK; i++) {
        double u = (rand() + 1.0) / RAND_MAX;
        in[i] = (float)((rand() & 1 ? 1 : -1) * exp(-8.0 * u)); /* 3.5 decades */
        p[i] = 1.0f, g[i] = in[i], m[i] = 0.0f, v[i] = 0.0f;
    }
    BEST("fusedadam map, encode signed (AVX2)", sink += FA_Q8_STORE_avx2(codes, in, 1, BLOCK));
    BEST("fusedadam map, encode unsigned (AVX2)", sink += FA_Q8_STORE_avx2(codes, in, 0, BLOCK));
    BEST("fusedadam map, decode signed (AVX2)", FA_Q8_LOAD_avx2(out, codes, 1.5f, 1, BLOCK));
    BEST("fusedadam map, decode unsigned (AVX2)", FA_Q8_LOAD_avx2(out, codes, 1.5f, 0, BLOCK));
    BEST("dynamic map, encode (scalar binary search)", dynamic_encode_scalar(codes, in));
    BEST("dynamic map, encode (AVX2 gathers)", dynamic_encode_avx2(codes, in));
    BEST("dynamic map, decode (table)", dynamic_decode(out, codes, 1.5f));
    fa_scalars s = {1, 0, 1, 0.9, 0.1, 0.999, 0.001, 1e-3, 1e-8, 0, 0};
    char *a[5] = {(char *)p, (char *)g, (char *)m, (char *)v, 0};
    const fa_loops *loops = fa_get_loops(FA_ISA_avx2, FA_DTYPE_f32);
    BEST("Adam element loop (float32, AVX2), for scale", loops->dense[FA_KIND_adam](a, BLOCK, &s));

    /* whole steps on one chunk, per element: staged against fused */
    enum { CHUNK = 16384 };
    static float cp[CHUNK], cg[CHUNK], mscale[CHUNK / BLOCK], vscale[CHUNK / BLOCK];
    static uint8_t mcodes[CHUNK], vcodes[CHUNK];
    for (int i = 0; i < CHUNK; i++) {
        cp[i] = (float)rand() / RAND_MAX, cg[i] = in[i % BLOCK];
        /* codes of finite values (magnitudes up to 1.0) */
        mcodes[i] = (uint8_t)((rand() % 121) | (rand() & 0x80)), vcodes[i] = (uint8_t)(rand() % 241);
    }
    for (int b = 0; b < CHUNK / BLOCK; b++) mscale[b] = 0.01f, vscale[b] = 1e-4f;
    fa_segment x = {(char *)cp, NULL, (const char *)cg, {(char *)mcodes, (char *)vcodes, NULL},
                    {mscale, vscale, NULL}, {1, 0, 0}, 2, FA_ET_F32, FA_ET_Q8, -1};
    fa_pre pre;
    fa_pre_set(&pre, 1.0);
    {
        double best_staged = 1e9, best_fused = 1e9;
        for (int k = 0; k < 9; k++) {
            double t = now();
            for (int r = 0; r < REPS / 64; r++)
                fa_stage_f32_avx2(loops->dense[FA_KIND_adam], &x, 0, CHUNK, &s, &pre);
            t = now() - t;
            best_staged = t < best_staged ? t : best_staged;
            t = now();
            for (int r = 0; r < REPS / 64; r++)
                fa_q8_adam_f16c_avx2(&x, 0, CHUNK / BLOCK, &s, &pre, 0, NULL, NULL);
            t = now() - t;
            best_fused = t < best_fused ? t : best_fused;
        }
        printf("%-44s %6.3f ns/element\n", "8-bit Adam step, staged (one chunk)",
               best_staged / (REPS / 64) / CHUNK * 1e9);
        printf("%-44s %6.3f ns/element\n", "8-bit Adam step, fused (one chunk)",
               best_fused / (REPS / 64) / CHUNK * 1e9);
    }
    return (int)sink & 0;
}
