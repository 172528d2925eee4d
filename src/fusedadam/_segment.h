/*
 * What one staged call of a group is given: the gradient pre-processing of the step
 * (fa_pre: unscaling by grad_scale, the clipping coefficient) and one array segment
 * (fa_segment: param, low-precision param, gradient, state, 8-bit scales), with the
 * block size the staged runner (_staged.h) and the 8-bit state (_q8.h) share, and the
 * signatures of the runner's pieces the fused 8-bit loops take.
 */
#ifndef FUSEDADAM_SEGMENT_H
#define FUSEDADAM_SEGMENT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_loops.h"

#define FA_STAGE 256      /* elements per staged block: 1 KB per float32 buffer (at most 7) */


/* Gradient pre-processing of one step of one group (sign is the loops' own). */
typedef struct {
    double grad_scale;    /* gradients are divided by it (1: no unscaling) */
    double clip;          /* then multiplied by it (1: no clipping) */
    int active;           /* grad_scale != 1 or clip != 1 */
    double inverse;       /* 1 / grad_scale when that is exact and dividing by grad_scale
                           * is multiplying by it (a power of two in [2**-126, 2**126],
                           * as AMP's scales are), else 0 */
} fa_pre;

/* Set the unscaling of this step (clip 1 until the scan has run). x / 2**k and
 * x * 2**-k are the same correctly rounded number, subnormal results included, and both
 * 2**k and 2**-k are exact in float32 for |k| <= 126: the multiply replaces the divider. */
static inline void fa_pre_set(fa_pre *pre, double grad_scale)
{
    int e;
    pre->grad_scale = grad_scale;
    pre->clip = 1.0;
    pre->active = grad_scale != 1.0;
    pre->inverse = (frexp(grad_scale, &e) == 0.5 && e - 1 >= -126 && e - 1 <= 126)
                       ? 1.0 / grad_scale : 0.0;
}

/* One array segment of a staged call. */
typedef struct {
    char *param;          /* the compute-type array the loop updates: master, or the param
                           * (FA_ET_RESID: the int16 residual of the master) */
    char *lowp;           /* the bfloat16/float16 param rounded from it, or NULL */
    const char *grad;
    char *state[FA_MAX_STATES];
    float *scale[FA_MAX_STATES]; /* FA_ET_Q8 state: the absmax of the segment's first block */
    int qsigned[FA_MAX_STATES];  /* FA_ET_Q8 state: 1 for the signed map, 0 the unsigned */
    int n_states, grad_type, state_type, lowp_type;
    int read_only;        /* phase 1 of a per-tensor kind (_loops.h): nothing is written back */
} fa_segment;

/* the staged runner's gradient widening and low-precision rounding, as the fused 8-bit
 * loops take them */
typedef void (*fa_widen_f32_fn)(float *restrict out, const void *grad, int type, ptrdiff_t n,
                                const fa_pre *pre);
typedef void (*fa_round_fn)(uint16_t *restrict out, const float *restrict in, ptrdiff_t n);
/* a fused 8-bit Adam loop over blocks [first, n_blocks) of a segment; returns where it
 * stopped */
typedef ptrdiff_t (*fa_q8_adam_fn)(const fa_segment *x, ptrdiff_t first, ptrdiff_t n_blocks,
                                   const fa_scalars *s, const fa_pre *pre, int coupled,
                                   fa_widen_f32_fn widen, fa_round_fn round);

#endif /* FUSEDADAM_SEGMENT_H */
