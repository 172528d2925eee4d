/* The only place that knows whether OpenMP was compiled in (setup.py probes for it). OpenMP
 * runs no parallel region here: it supplies the thread count, which OMP_NUM_THREADS,
 * omp_set_num_threads and threadpoolctl control; the step's threads are _pool.h's. */
#ifndef FUSEDADAM_OPENMP_H
#define FUSEDADAM_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
#define FA_OPENMP_ENABLED 1
static int fa_max_threads(void) { return omp_get_max_threads(); }
static int fa_num_procs(void) { return omp_get_num_procs(); }
#else
#define FA_OPENMP_ENABLED 0
static int fa_max_threads(void) { return 1; }
static int fa_num_procs(void) { return 1; }
#endif
#endif
