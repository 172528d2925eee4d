/*
 * One Adam-shaped float32 step, three ways of running it (issue #11):
 *   serial  - the calling thread alone (num_threads=1)
 *   omp     - today's scheme: an OpenMP fork-join over n_threads equal slices split at
 *             multiples of 16 elements (prange(schedule="static", chunksize=1) in _run)
 *   pool    - src/fusedadam/_pool.h: fixed chunks of K elements claimed atomically, the
 *             caller claiming too
 * Built and run by bench/pool_load.sh with setup.py's flags (-O3 -ffp-contract=off
 * -fno-math-errno -fno-trapping-math) plus -fopenmp; the loop is also compiled for AVX2
 * and picked at run time, like the extension's.
 *
 *   pool_load LABEL MODE SCHEME [K]
 *     MODE main:   N = 1e4, 1e5, 1e6, 1e7 and a 100-array 0.4M-element model
 *     MODE small:  N = 4096 ... 65536 (where does 2 threads start to pay)
 *     MODE ksweep: SCHEME must be pool; K = 1024 ... 32768 interleaved, N = 1e5, 1e6, model
 *     SCHEME: serial | omp | pool (one per process: libgomp's team and the pool's helpers
 *             both spin after a step, and a spinning thread of one scheme would steal the
 *             second core from the other)
 * Prints one JSON object per (case, scheme, K). Every step is timed on its own, in
 * SAMPLES samples of >= SAMPLE_S each; reported: median, mean, p90 and min per step.
 */
#include "_pool.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SAMPLE_S 0.02
#define SAMPLES 9
#define MAX_STEPS 200000

typedef struct {
    int n_arrays;
    ptrdiff_t offsets[129];
    float *p[128], *g[128], *m[128], *v[128];
    ptrdiff_t k;            /* pool chunk size */
    int n_threads;
} group;

static const float B1 = 0.9f, OMB1 = 0.1f, B2 = 0.999f, OMB2 = 0.001f, S = 1e-3f, E = 1e-8f;

/* The per-element math of fusedadam's Adam loop, compiled twice: baseline and AVX2. */
#define ADAM_SEG(name, attr)                                                             \
    attr static void name(float *restrict p, const float *restrict g, float *restrict m, \
                          float *restrict v, ptrdiff_t n)                                \
    {                                                                                    \
        ptrdiff_t i;                                                                     \
        for (i = 0; i < n; i++) {                                                        \
            float mi = B1 * m[i] + OMB1 * g[i];                                          \
            float vi = B2 * v[i] + OMB2 * g[i] * g[i];                                   \
            m[i] = mi;                                                                   \
            v[i] = vi;                                                                   \
            p[i] -= S * mi / (sqrtf(vi) + E);                                            \
        }                                                                                \
    }
ADAM_SEG(adam_seg_base, )
#if defined(__x86_64__)
ADAM_SEG(adam_seg_avx2, __attribute__((target("avx2"))))
#endif
typedef void (*seg_fn)(float *restrict, const float *restrict, float *restrict,
                       float *restrict, ptrdiff_t);
static seg_fn adam_seg = adam_seg_base;

/* Global elements [start, end) of the group, array by array (as _run_range does). */
static void run_range(const group *d, ptrdiff_t start, ptrdiff_t end)
{
    int k = 0;
    while (k + 1 < d->n_arrays && d->offsets[k + 1] <= start)
        k++;
    while (start < end) {
        ptrdiff_t stop = d->offsets[k + 1] < end ? d->offsets[k + 1] : end;
        ptrdiff_t off = start - d->offsets[k];
        if (stop > start)
            adam_seg(d->p[k] + off, d->g[k] + off, d->m[k] + off, d->v[k] + off, stop - start);
        start = stop;
        k++;
    }
}

static ptrdiff_t split_point(ptrdiff_t total, ptrdiff_t t, ptrdiff_t n)
{
    ptrdiff_t at;
    if (t >= n)
        return total;
    at = total * t / n;
    return at - at % 16;
}

static void step_serial(group *d) { run_range(d, 0, d->offsets[d->n_arrays]); }

static void step_omp(group *d)
{
    ptrdiff_t total = d->offsets[d->n_arrays];
    int n = d->n_threads, t;
#pragma omp parallel for num_threads(n) schedule(static, 1)
    for (t = 0; t < n; t++)
        run_range(d, split_point(total, t, n), split_point(total, t + 1, n));
}

static long chunks_by[2];    /* chunks run by the caller / by helpers, per measurement */

static void pool_chunk(void *ctx, ptrdiff_t c, int worker)
{
    group *d = ctx;
    ptrdiff_t total = d->offsets[d->n_arrays], start = c * d->k;
    __atomic_fetch_add(&chunks_by[worker > 0], 1, __ATOMIC_RELAXED);
    run_range(d, start, start + d->k < total ? start + d->k : total);
}

static void step_pool(group *d)
{
    ptrdiff_t total = d->offsets[d->n_arrays];
    fa_pool_run(pool_chunk, d, fa_chunk_count(total, d->k), d->n_threads);
}

/* ---- timing --------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef void (*step_fn)(group *);
typedef struct {
    const char *name;
    step_fn fn;
    ptrdiff_t k;
    double *t;
    int n;
} scheme;

static void measure(const char *label, const char *case_name, group *d, scheme *sc, int n_sc)
{
    int rep, i;
    for (i = 0; i < n_sc; i++) {           /* warm-up: helpers exist, pages touched */
        d->k = sc[i].k;
        sc[i].fn(d);
        sc[i].n = 0;
    }
    chunks_by[0] = chunks_by[1] = 0;
    for (rep = 0; rep < SAMPLES; rep++)
        for (i = 0; i < n_sc; i++) {
            scheme *s = &sc[(i + rep) % n_sc];
            double t_end = now_s() + SAMPLE_S;
            int steps = 0;
            d->k = s->k;
            while ((now_s() < t_end || steps < 2) && s->n < MAX_STEPS) {
                double t0 = now_s();
                s->fn(d);
                s->t[s->n++] = now_s() - t0;
                steps++;
            }
        }
    for (i = 0; i < n_sc; i++) {
        scheme *s = &sc[i];
        double sum = 0;
        int j;
        qsort(s->t, s->n, sizeof(double), cmp_double);
        for (j = 0; j < s->n; j++)
            sum += s->t[j];
        printf("{\"condition\": \"%s\", \"isa\": \"%s\", \"case\": \"%s\", \"n\": %td, \"scheme\": \"%s\", "
               "\"threads\": %d, \"k\": %td, \"steps\": %d, \"median_us\": %.3f, "
               "\"mean_us\": %.3f, \"p90_us\": %.3f, \"min_us\": %.3f, \"helper_share\": %.3f}\n",
               label, adam_seg == adam_seg_base ? "baseline" : "avx2", case_name, d->offsets[d->n_arrays], s->name,
               strcmp(s->name, "serial") == 0 ? 1 : d->n_threads, s->k, s->n,
               1e6 * s->t[s->n / 2], 1e6 * sum / s->n, 1e6 * s->t[(int)(0.9 * s->n)],
               1e6 * s->t[0],
               n_sc == 1 && chunks_by[0] + chunks_by[1] > 0
                   ? (double)chunks_by[1] / (double)(chunks_by[0] + chunks_by[1]) : -1.0);
        fflush(stdout);
    }
}

static float *filled(ptrdiff_t n, unsigned seed, float scale, float shift)
{
    float *a = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        a[i] = scale * ((float)(seed >> 8) / 16777216.0f) + shift;
    }
    return a;
}

static void one_array(group *d, ptrdiff_t n, float *p, float *g, float *m, float *v)
{
    d->n_arrays = 1;
    d->offsets[0] = 0;
    d->offsets[1] = n;
    d->p[0] = p; d->g[0] = g; d->m[0] = m; d->v[0] = v;
}

/* 100 arrays, 0.4M elements: 50 weight matrices of 7680 and 50 biases of 320,
 * interleaved like a layer list (a 64-wide transformer's lists are of this shape). */
static void model(group *d)
{
    int k;
    d->n_arrays = 100;
    d->offsets[0] = 0;
    for (k = 0; k < 100; k++) {
        ptrdiff_t n = k % 2 == 0 ? 7680 : 320;
        d->offsets[k + 1] = d->offsets[k] + n;
        d->p[k] = filled(n, 11 + k, 1.0f, -0.5f);
        d->g[k] = filled(n, 1011 + k, 1.0f, -0.5f);
        d->m[k] = filled(n, 2011 + k, 0.0f, 0.0f);
        d->v[k] = filled(n, 3011 + k, 0.0f, 0.0f);
    }
}

static step_fn scheme_fn(const char *name)
{
    if (strcmp(name, "serial") == 0)
        return step_serial;
    if (strcmp(name, "omp") == 0)
        return step_omp;
    if (strcmp(name, "pool") == 0)
        return step_pool;
    fprintf(stderr, "unknown scheme %s\n", name);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *label = argc > 1 ? argv[1] : "idle";
    const char *mode = argc > 2 ? argv[2] : "main";
    const char *name = argc > 3 ? argv[3] : "pool";
    ptrdiff_t kdef = argc > 4 ? atol(argv[4]) : 4096;
    static group one, mdl;
    static double tbuf[8][MAX_STEPS];
    scheme sc[8];
    int n_sc = 1, i;
    ptrdiff_t nmax = 10000000;
    float *p = filled(nmax, 1, 1.0f, -0.5f), *g = filled(nmax, 2, 1.0f, -0.5f);
    float *m = filled(nmax, 3, 0.0f, 0.0f), *v = filled(nmax, 4, 0.0f, 0.0f);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        adam_seg = adam_seg_avx2;
#endif
    one.n_threads = mdl.n_threads = 2;
    model(&mdl);
    sc[0] = (scheme){name, scheme_fn(name), kdef, tbuf[0], 0};

    if (strcmp(mode, "main") == 0) {
        const ptrdiff_t sizes[] = {10000, 100000, 1000000, 10000000};
        for (i = 0; i < 4; i++) {
            char case_name[32];
            snprintf(case_name, sizeof case_name, "N=%.0e", (double)sizes[i]);
            one_array(&one, sizes[i], p, g, m, v);
            measure(label, case_name, &one, sc, n_sc);
        }
        measure(label, "model100", &mdl, sc, n_sc);
    } else if (strcmp(mode, "ksweep") == 0) {
        const ptrdiff_t ks[] = {1024, 2048, 4096, 8192, 16384, 32768};
        const ptrdiff_t sizes[] = {100000, 1000000};
        for (i = 0; i < 6; i++)
            sc[i] = (scheme){"pool", step_pool, ks[i], tbuf[i], 0};
        n_sc = 6;
        for (i = 0; i < 2; i++) {
            char case_name[32];
            snprintf(case_name, sizeof case_name, "N=%.0e", (double)sizes[i]);
            one_array(&one, sizes[i], p, g, m, v);
            measure(label, case_name, &one, sc, n_sc);
        }
        measure(label, "model100", &mdl, sc, n_sc);
    } else {
        const ptrdiff_t sizes[] = {4096, 8192, 12288, 16384, 24576, 32768, 65536};
        for (i = 0; i < 7; i++) {
            char case_name[32];
            snprintf(case_name, sizeof case_name, "N=%td", sizes[i]);
            one_array(&one, sizes[i], p, g, m, v);
            measure(label, case_name, &one, sc, n_sc);
        }
    }
    return 0;
}
