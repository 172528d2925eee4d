/* Two versions of the 8-bit block loops in one process: the same chunk steps of the
 * headers in two folders (e.g. a commit before a change and the working tree), timed in
 * alternating rounds so that the load of a shared machine hits both alike; per loop the
 * median and best ns/element of each and the median (and quartiles) of the per-round
 * ratios new / old. One core, one 16384-element chunk (L2-resident), float32 params,
 * every moment finite (the common path).
 *
 *   mkdir -p /tmp/old && git archive REV src/fusedadam | tar -x -C /tmp/old
 *   F="-O3 -ffp-contract=off -fno-math-errno -fno-trapping-math"
 *   gcc $F -DVARIANT=old -I /tmp/old/src/fusedadam -c bench/floor/q8_ab.c -o /tmp/old.o
 *   gcc $F -DVARIANT=new -I src/fusedadam -c bench/floor/q8_ab.c -o /tmp/new.o
 *   gcc $F -DQ8_AB_MAIN bench/floor/q8_ab.c /tmp/old.o /tmp/new.o -o /tmp/q8_ab -lm
 *   /tmp/q8_ab
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHUNK 16384

#ifdef Q8_AB_MAIN
void setup_old(void);
void setup_new(void);
double run_old(int which, int reps);
double run_new(int which, int reps);

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    static const char *names[4] = {"fused Adam (avx2 row)", "staged Adam (avx2 row)",
                                   "staged Adam (baseline row)", "staged Adamax (avx2 row)"};
    enum { ROUNDS = 101, REPS = 200 };
    setup_old();
    setup_new();
    for (int w = 0; w < 4; w++) {
        double o[ROUNDS], n[ROUNDS], ratio[ROUNDS];
        run_old(w, REPS);
        run_new(w, REPS);
        for (int r = 0; r < ROUNDS; r++) {
            if (r & 1) n[r] = run_new(w, REPS), o[r] = run_old(w, REPS);
            else o[r] = run_old(w, REPS), n[r] = run_new(w, REPS);
            ratio[r] = n[r] / o[r];
        }
        qsort(o, ROUNDS, sizeof(double), cmp);
        qsort(n, ROUNDS, sizeof(double), cmp);
        qsort(ratio, ROUNDS, sizeof(double), cmp);
        const double per = 1e9 / REPS / CHUNK;
        printf("%-28s old %.3f ns/el (best %.3f)  new %.3f ns/el (best %.3f)  "
               "new/old %.4f [quartiles %.4f, %.4f]\n",
               names[w], o[ROUNDS / 2] * per, o[0] * per, n[ROUNDS / 2] * per, n[0] * per,
               ratio[ROUNDS / 2], ratio[ROUNDS / 4], ratio[3 * ROUNDS / 4]);
    }
    return 0;
}
#else
#include "_dispatch.h"

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define BLOCK FA_Q8_BLOCK

static float cp[CHUNK], cg[CHUNK], mscale[CHUNK / BLOCK], vscale[CHUNK / BLOCK];
static uint8_t mcodes[CHUNK], vcodes[CHUNK];
static fa_segment x;
static fa_pre pre;
static fa_scalars s = {1, 0, 1, 0.9, 0.1, 0.999, 0.001, 1e-3, 1e-8, 0, 0};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

void CAT(setup, VARIANT)(void)
{
    srand(1);
    for (int i = 0; i < CHUNK; i++) {
        double u = (rand() + 1.0) / RAND_MAX;
        cp[i] = (float)rand() / RAND_MAX;
        cg[i] = (float)((rand() & 1 ? 1 : -1) * exp(-8.0 * u)); /* 3.5 decades */
        /* codes of finite values only (magnitudes up to 1.0) */
        mcodes[i] = (uint8_t)((rand() % 121) | (rand() & 0x80));
        vcodes[i] = (uint8_t)(rand() % 241);
    }
    for (int b = 0; b < CHUNK / BLOCK; b++) mscale[b] = 0.01f, vscale[b] = 1e-4f;
    fa_segment y = {(char *)cp, NULL, (const char *)cg, {(char *)mcodes, (char *)vcodes, NULL},
                    {mscale, vscale, NULL}, {1, 0, 0}, 2, FA_ET_F32, FA_ET_Q8, -1};
    x = y;
    fa_pre_set(&pre, 1.0);
}

/* seconds for reps steps of the chunk: 0 the fused Adam loop, 1 the staged Adam block
 * loop (avx2 row: F16C decode/encode), 2 the same on the baseline row (the portable
 * loops), 3 staged Adamax (avx2 row) */
double CAT(run, VARIANT)(int which, int reps)
{
    const fa_loops *la = fa_get_loops(FA_ISA_avx2, FA_DTYPE_f32);
    const fa_loops *lb = fa_get_loops(FA_ISA_baseline, FA_DTYPE_f32);
    double t = now();
    for (int r = 0; r < reps; r++) {
        if (which == 0)
            fa_q8_adam_f16c_avx2(&x, 0, CHUNK / BLOCK, &s, &pre, 0, NULL, NULL);
        else if (which == 1)
            fa_stage_f32_avx2(la->dense[FA_KIND_adam], &x, 0, CHUNK, &s, &pre);
        else if (which == 2)
            fa_stage_f32_baseline(lb->dense[FA_KIND_adam], &x, 0, CHUNK, &s, &pre);
        else
            fa_stage_f32_avx2(la->dense[FA_KIND_adamax], &x, 0, CHUNK, &s, &pre);
        __asm__ volatile("" ::: "memory");
    }
    return now() - t;
}
#endif
