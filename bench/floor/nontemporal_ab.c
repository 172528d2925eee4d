/*
 * The read-write pass with regular against non-temporal stores, and a read-only pass over
 * the gradients (the check's scan), on 1-N threads: out of cache (N float32 elements per
 * array, 4 arrays), the probe's arithmetic (m += g, v += g, p -= g), tasks of 2^20
 * elements claimed from a shared counter as the step's pool claims them, the three kinds
 * interleaved over 15 rounds, medians. It prints each kind's median and its ratio to the
 * regular read-write pass: the scan's ratio is what the check adds to a step at the
 * memory's floor.
 *
 *   gcc -O2 -pthread bench/floor/nontemporal_ab.c -o /tmp/nontemporal_ab
 *   /tmp/nontemporal_ab 30000000 2
 *
 * Needs AVX-512F. Measured (AMD EPYC Zen 5, 2 vCPUs): non-temporal stores 4-11 % slower
 * than regular ones; the read-only pass 0.21-0.23 of the read-write pass (bench/README.md).
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TASK (1L << 20)
#define ROUNDS 15
#define MAX_THREADS 64

static long n_elements;
static float *param, *grad, *exp_avg, *exp_avg_sq;
typedef void (*range_fn)(long, long);
static range_fn current;
static long next_task;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The probe's read-write pass with STORE as its store: the two kinds differ in it alone. */
#define PROBE_PASS(STORE)                                                                   \
    for (long i = a; i < b; i += 16) {                                                      \
        __m512 g = _mm512_load_ps(grad + i);                                                \
        STORE(exp_avg + i, _mm512_add_ps(_mm512_load_ps(exp_avg + i), g));                  \
        STORE(exp_avg_sq + i, _mm512_add_ps(_mm512_load_ps(exp_avg_sq + i), g));            \
        STORE(param + i, _mm512_sub_ps(_mm512_load_ps(param + i), g));                      \
    }

__attribute__((target("avx512f"))) static void regular(long a, long b)
{
    PROBE_PASS(_mm512_store_ps)
}

__attribute__((target("avx512f"))) static void nontemporal(long a, long b)
{
    PROBE_PASS(_mm512_stream_ps)
    _mm_sfence();
}

__attribute__((target("avx512f"))) static void read_only(long a, long b)
{
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0;
    for (long i = a; i < b; i += 32) {
        acc0 = _mm512_or_si512(acc0, _mm512_load_si512(grad + i));
        acc1 = _mm512_or_si512(acc1, _mm512_load_si512(grad + i + 16));
    }
    volatile int sink = _mm512_reduce_or_epi32(_mm512_or_si512(acc0, acc1));
    (void)sink;
}

static void *worker(void *unused)
{
    long t;
    (void)unused;
    while ((t = __atomic_fetch_add(&next_task, 1, __ATOMIC_RELAXED)) * TASK < n_elements) {
        long a = t * TASK, b = a + TASK < n_elements ? a + TASK : n_elements;
        current(a, b);
    }
    return NULL;
}

static void run(range_fn fn, int n_threads)
{
    pthread_t helpers[MAX_THREADS];
    current = fn;
    next_task = 0;
    for (int i = 1; i < n_threads; i++)
        pthread_create(&helpers[i], NULL, worker, NULL);
    worker(NULL);
    for (int i = 1; i < n_threads; i++)
        pthread_join(helpers[i], NULL);
}

int main(int argc, char **argv)
{
    n_elements = argc > 1 ? atol(argv[1]) : 30000000;
    int n_threads = argc > 2 ? atoi(argv[2]) : 2;
    n_elements = (n_elements + 31) / 32 * 32;
    if (n_threads < 1 || n_threads > MAX_THREADS) return 1;
    float **arrays[4] = {&param, &grad, &exp_avg, &exp_avg_sq};
    for (int k = 0; k < 4; k++) {
        *arrays[k] = aligned_alloc(64, n_elements * sizeof(float));
        if (*arrays[k] == NULL) return 1;
        for (long i = 0; i < n_elements; i++) (*arrays[k])[i] = 0.001f * (i % 97);
    }
    const char *names[3] = {"regular stores", "non-temporal stores", "read-only (scan)"};
    range_fn kinds[3] = {regular, nontemporal, read_only};
    static double times[3][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < 3; k++) {
            double start = now();
            run(kinds[k], n_threads);
            times[k][r] = now() - start;
        }
    printf("N=%ld, %d thread(s), medians of %d rounds\n", n_elements, n_threads, ROUNDS);
    for (int k = 0; k < 3; k++) {
        qsort(times[k], ROUNDS, sizeof(double), by_value);
        printf("  %-20s %8.2f ms  %.3f of regular\n", names[k], times[k][ROUNDS / 2] * 1e3,
               times[k][ROUNDS / 2] / times[0][ROUNDS / 2]);
    }
    return 0;
}
