/* Compute floor of an exact Adam step on one core: how fast can the divider/sqrt unit
 * go, with the element math of _loops.h but on L1-resident data (no memory traffic)?
 *
 *   gcc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -mavx2 \
 *       bench/floor/divider_floor.c -o /tmp/divider_floor -lm && /tmp/divider_floor
 *
 * Same flags as setup.py (no FMA, no fast-math); -mavx2 matches the avx2 loops. Prints
 * ns/element (median of 9 runs) of: sqrt only, sqrt + 1 div (the eps-hat form now in
 * _loops.h), sqrt + 2 div (the previous form), and the full Adam element math.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 2048            /* 8 KiB per array: L1-resident */
#define REPS 20000

static float a[N], b[N], c[N], d[N];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

__attribute__((noinline)) static void sqrt_only(float e) {
    for (int i = 0; i < N; i++) c[i] = sqrtf(a[i]) + e;
}
__attribute__((noinline)) static void one_div(float e, float s) {
    for (int i = 0; i < N; i++) c[i] = b[i] - s * d[i] / (sqrtf(a[i]) + e);
}
__attribute__((noinline)) static void two_div(float e, float s, float k) {
    for (int i = 0; i < N; i++) c[i] = b[i] - s * d[i] / (sqrtf(a[i]) / k + e);
}
__attribute__((noinline)) static void adam_elem(float e, float s, float b1, float o1,
                                                float b2, float o2) {
    for (int i = 0; i < N; i++) {
        float g = c[i], m = b1 * d[i] + o1 * g, v = b2 * a[i] + o2 * g * g;
        d[i] = m; a[i] = v;
        b[i] = b[i] - s * m / (sqrtf(v) + e);
    }
}

static int cmp(const void *x, const void *y) {
    double p = *(const double *)x, q = *(const double *)y;
    return (p > q) - (p < q);
}

#define TIME(LABEL, CALL)                                                           \
    do {                                                                            \
        double t[9];                                                                \
        for (int r = 0; r < 9; r++) {                                               \
            double t0 = now();                                                      \
            for (int k = 0; k < REPS; k++) CALL;                                    \
            t[r] = (now() - t0) / ((double)REPS * N) * 1e9;                         \
        }                                                                           \
        qsort(t, 9, sizeof(double), cmp);                                           \
        printf("%-28s median %.3f ns/element  min %.3f\n", LABEL, t[4], t[0]);      \
    } while (0)

int main(void) {
    for (int i = 0; i < N; i++) {
        a[i] = 1.0f + i % 7; b[i] = 0.5f; c[i] = 1e-3f * (i % 5); d[i] = 0.25f;
    }
    TIME("sqrt only", sqrt_only(1e-8f));
    TIME("sqrt + 1 div (eps-hat)", one_div(1e-8f, 1e-3f));
    TIME("sqrt + 2 div (previous)", two_div(1e-8f, 1e-3f, 0.7f));
    TIME("full Adam element, 1 div", adam_elem(1e-8f, 1e-3f, 0.9f, 0.1f, 0.999f, 0.001f));
    return (int)c[3] == 12345;  /* keep the results alive */
}
