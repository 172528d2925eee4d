/*
 * Bandwidth of the gradient scans against the Adam update, one thread, robust to a busy
 * machine: cold arrays of N float32 (N * 16 bytes in all, far past the caches) are walked
 * in 1 MB segments (16 calls of 16384 elements each, as the step's chunks), each segment
 * timed on its own; the kinds rotate over the segments and passes, and each kind reports
 * the median of its segments (a segment that a neighbour preempted is an outlier). Kinds:
 * the non-finite scan of float32 and of bfloat16 (2 B/element), the clipping norm of
 * float32 (scan + sum of squares), and the float32 Adam update (28 B/element). The last
 * column is each kind's time per element over the update's: a step with the check costs
 * about 1 + that of the scan.
 *
 *   cc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -I src/fusedadam \
 *       bench/scan_segments.c -o /tmp/scan_segments
 *   /tmp/scan_segments [N=100000000] [passes=4] [isa: 0 baseline, 1 avx2, 2 avx512]
 *
 * Build it against two trees' headers to compare their kernels (bench/README.md).
 */
#include "_dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHUNK 16384
#define SEGMENT (16 * CHUNK)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const ptrdiff_t n = argc > 1 ? atol(argv[1]) : 100000000;
    const int passes = argc > 2 ? atoi(argv[2]) : 4;
    const int isa = argc > 3 ? atoi(argv[3]) : fa_cpu_best_isa();
    enum { SCAN, NORM, SCAN_BF16, UPDATE, KINDS };
    static const char *names[KINDS] = {"scan float32", "norm float32", "scan bfloat16",
                                       "update float32"};
    float *g = malloc(n * 4), *p = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4);
    const ptrdiff_t segments = n / SEGMENT;
    double *times = malloc(sizeof(double) * KINDS * segments * passes), median[KINDS], sumsq;
    int count[KINDS] = {0};
    volatile ptrdiff_t sink = 0;
    if (!g || !p || !m || !v || !times || segments < KINDS || isa < 0 || isa >= FA_N_ISAS) {
        fprintf(stderr, "N >= %d, an isa this build has, and memory for 16 B per element\n",
                KINDS * SEGMENT);
        return 2;
    }
    for (ptrdiff_t i = 0; i < n; i++) g[i] = 1.0f + (float)(i % 7), p[i] = 1, m[i] = v[i] = 0;
    const fa_loops *loops = fa_get_loops(isa, FA_DTYPE_f32);
    const fa_grad_fns *f32 = fa_get_grad_fns(isa, FA_ET_F32);
    const fa_grad_fns *bf16 = fa_get_grad_fns(isa, FA_ET_BF16);
    fa_scalars s = {1.0, 0.0, 1.0, 0.9, 0.1, 0.999, 0.001, 1e-3, 1e-8, 0.0, 0.0};
    for (int pass = 0; pass < passes; pass++)
        for (ptrdiff_t seg = 0; seg < segments; seg++) {
            const int kind = (int)((seg + pass) % KINDS);
            const double start = now();
            for (int c = 0; c < 16; c++) {
                const ptrdiff_t at = seg * SEGMENT + c * CHUNK;
                if (kind == SCAN) sink += f32->scan(g + at, CHUNK);
                else if (kind == NORM) sink += f32->norm(g + at, CHUNK, &sumsq);
                else if (kind == SCAN_BF16) sink += bf16->scan(g + at, 2 * CHUNK);
                else {
                    char *a[FA_MAX_SLOTS] = {(char *)(p + at), (char *)(g + at), (char *)(m + at),
                                             (char *)(v + at)};
                    loops->dense[0](a, CHUNK, &s);
                }
            }
            times[(kind * passes * segments) + count[kind]++] = now() - start;
        }
    printf("isa %s, N %td, %td segments of 1 MB of gradients, medians:\n", fa_isa_names[isa], n,
           segments);
    for (int k = 0; k < KINDS; k++) {
        double *t = times + k * passes * segments;
        qsort(t, count[k], sizeof(double), by_value);
        median[k] = t[count[k] / 2];
    }
    for (int k = 0; k < KINDS; k++) /* every scan reads 1 MB a segment; a bfloat16 one
                                     * holds twice the elements */
        printf("  %-15s %6.1f GB/s  time per element / update's %.3f\n", names[k],
               SEGMENT * 4.0 * (k == UPDATE ? 7 : 1) / median[k] / 1e9,
               median[k] / median[UPDATE] / (k == SCAN_BF16 ? 2 : 1));
    return 0;
}
