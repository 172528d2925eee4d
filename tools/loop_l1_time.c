/* Nanoseconds per element of one dense loop kind of the dispatch table, on arrays that stay
 * in L1 (4096 elements), for every row of this CPU: the loop's compute cost, which the
 * bench sweep's memory-bound figure hides until it exceeds the memory time. Each row is
 * timed in rounds of a few hundred microseconds, interleaved, and the minimum kept (the
 * machine is shared: the minimum is the round no other job interrupted).
 *
 *   gcc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -w -I src/fusedadam \
 *       tools/loop_l1_time.c -o /tmp/l1 -lm && /tmp/l1 adam_atan2 adam
 */
#include "_dispatch.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 4096, ROUNDS = 300, STATES = 3 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv)
{
    static double arrays[2 + STATES][N];
    static double lanes[FA_TENSOR_SUMS * FA_TENSOR_LANES]; /* the sum_ kinds' phase-1 sums */
    int best_isa = fa_cpu_best_isa();
    for (int k = 1; k < argc; k++) {
        int kind = -1;
        for (int j = 0; j < FA_N_KINDS; j++)
            if (!strcmp(argv[k], fa_kind_names[j])) kind = j;
        if (kind < 0) {
            fprintf(stderr, "no loop kind %s\n", argv[k]);
            return 2;
        }
        for (int dt = 0; dt < FA_N_DTYPES; dt++) {
            double best[FA_N_ISAS];
            fa_scalars s;
            memset(&s, 0, sizeof s);
            /* an Adam-like step that leaves the values in range round after round */
            s.sign = 1, s.decay = 1, s.beta1 = 0.9, s.one_minus_beta1 = 0.1;
            s.beta2 = 0.999, s.one_minus_beta2 = 0.001, s.step_size = 1e-9, s.eps = 1e-8;
            s.m_scale = 1, s.v_scale = 1, s.clip = 1e30, s.beta3 = 0.99, s.one_minus_beta3 = 0.01;
            s.bias_correction2 = 1, s.lerp_weight = 0.1, s.y_step = 1e-9, s.prox = 1;
            s.tensor_step = 1e-9, s.tensor_decay = 1, s.lr = 1e-3, s.v_floor = 1e-16, s.acc = lanes;
            char *a[FA_MAX_SLOTS] = {0};
            for (int j = 0; j < 2 + STATES; j++) {
                a[j] = (char *)arrays[j];
                for (int i = 0; i < N; i++) {
                    double g = ((i * 7919) % 1000) * 2e-3 - 1;
                    double v = j == FA_STATE0 + 1 ? 0.01 * g * g : (j == FA_STATE0 ? 0.1 * g : g);
                    if (dt == FA_DTYPE_f32) ((float *)arrays[j])[i] = (float)v;
                    else arrays[j][i] = v;
                }
            }
            for (int isa = 0; isa < FA_N_ISAS; isa++) best[isa] = 1e30;
            for (int r = 0; r < ROUNDS; r++)
                for (int isa = 0; isa <= best_isa; isa++) {
                    fa_loop_fn f = fa_get_loops(isa, dt)->dense[kind];
                    double t0 = now();
                    for (int rep = 0; rep < 40; rep++) f(a, N, &s);
                    double t = (now() - t0) / 40 / N * 1e9;
                    if (t < best[isa]) best[isa] = t;
                }
            printf("%-12s %s", argv[k], fa_dtype_names[dt]);
            for (int isa = 0; isa <= best_isa; isa++)
                printf("  %s %.3f", fa_isa_names[isa], best[isa]);
            printf("  ns/element\n");
        }
    }
    return 0;
}
