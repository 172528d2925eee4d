/* The only place that knows whether OpenMP was compiled in (setup.py probes for it). */
#ifndef FUSEDADAM_OPENMP_H
#define FUSEDADAM_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
#define FA_OPENMP_ENABLED 1
static int fa_max_threads(void) { return omp_get_max_threads(); }
static int fa_num_procs(void) { return omp_get_num_procs(); }
/* Called inside a parallel region by every thread of the team. */
static int fa_team_size(void) { return omp_get_num_threads(); }
static void fa_barrier(void) {
#pragma omp barrier
}
#else
#define FA_OPENMP_ENABLED 0
static int fa_max_threads(void) { return 1; }
static int fa_num_procs(void) { return 1; }
static int fa_team_size(void) { return 1; }
static void fa_barrier(void) {}
#endif
#endif
