/*
 * Per-element bodies of every dense loop kind. _dispatch.h instantiates each body once per
 * instruction set and element type and puts them in the one dispatch table.
 *
 * Bit-exactness contract: every body evaluates, per element and in the array's dtype,
 * exactly the operations of the matching function of fusedadam/reference.py in the same
 * order. Only IEEE-exact operations are used (+, -, *, /, sqrt, fabs, compare); the build
 * passes -ffp-contract=off so no multiply-add is fused, so every instruction set and every
 * thread count produces the same bits as NumPy.
 *
 * Index arithmetic is ptrdiff_t (64-bit on every 64-bit target): a single parameter can
 * exceed 2**31 elements, and a 32-bit index would wrap silently.
 */
#ifndef FUSEDADAM_LOOPS_H
#define FUSEDADAM_LOOPS_H

#include <math.h>
#include <stddef.h>

/* Per-step scalars, computed once in double by fa_step_scalars (_scalars.h), cast to the
 * array's dtype inside each loop (the same rounding as NumPy's dtype.type(x)). Each loop
 * kind reads the fields it needs; the others are 0. */
typedef struct {
    double sign;             /* -1 when maximizing, else 1 */
    double weight_decay;     /* coupled (L2) coefficient; used only by the *_l2 kinds */
    double decay;            /* decoupled factor 1 - lr_t * weight_decay; 1 otherwise */
    double beta1;            /* the first moment's decay of this step */
    double one_minus_beta1;
    double beta2;
    double one_minus_beta2;
    double step_size;        /* multiplies the numerator of the update */
    double eps;              /* added to the denominator */
    double eps_root;         /* AdaBelief: added to the second moment itself */
    double grad_coef;        /* NAdam: multiplies g in the numerator */
    /* The per-tensor algorithms (LAMB, StableAdamW, cautious masking; see "Per-tensor
     * kinds" below). lr and v_floor are per step; the rest is set per tensor by the engine. */
    double lr;               /* this step's learning rate */
    double v_floor;          /* StableAdamW: eps**2, the floor of v in the RMS */
    double tensor_step;      /* phase 2: this tensor's step (lr * trust, clipped lr, mask scale) */
    double tensor_decay;     /* phase 2: this tensor's decoupled decay factor (StableAdamW) */
    double *acc;             /* phase 1: FA_TENSOR_SUMS x FA_TENSOR_LANES running lane sums */
} fa_scalars;

/* Array slots of a loop call: the param, its gradient, then the state arrays in the order
 * of the algorithm's state names (fusedadam/_algorithms.py). */
enum { FA_PARAM = 0, FA_GRAD = 1, FA_STATE0 = 2, FA_MAX_SLOTS = 5 };

/* The loop kinds, in the order of their numbers: X(name, body, COUPLED, FLAG, ...). Each
 * body that can take the L2 term comes as a pair, name and name_l2 (COUPLED = 1). Python
 * reads the names (_kernels.LOOP_KINDS), so this list is the only place a kind is numbered. */
#define FA_PAIR(X, name, body, FLAG, ...)                                            \
    X(name, body, 0, FLAG, __VA_ARGS__) X(name##_l2, body, 1, FLAG, __VA_ARGS__)
#define FA_DENSE_KINDS(X, ...)                                                       \
    FA_PAIR(X, adam, FA_ADAM_BODY, 0, __VA_ARGS__)                                   \
    FA_PAIR(X, amsgrad, FA_ADAM_BODY, 1, __VA_ARGS__)                                \
    FA_PAIR(X, adamax, FA_ADAMAX_BODY, 0, __VA_ARGS__)                               \
    FA_PAIR(X, nadam, FA_NADAM_BODY, 0, __VA_ARGS__)                                 \
    FA_PAIR(X, momentum, FA_MOMENTUM_BODY, 0, __VA_ARGS__)                           \
    FA_PAIR(X, adabelief, FA_ADABELIEF_BODY, 0, __VA_ARGS__)                         \
    X(lion, FA_LION_BODY, 0, 0, __VA_ARGS__) X(probe, FA_PROBE_BODY, 0, 0, __VA_ARGS__) \
    FA_TENSOR_KINDS(FA_TENSOR_X, X, __VA_ARGS__)

/* Per-tensor kinds: each name K comes with sum_K, its phase 1 (FLAG FA_SUM): the same body
 * reading the same values and writing nothing, its per-element quantities summed per
 * tensor (_kernels.pyx runs sum_K, forms the tensor's scalars, then runs K). */
#define FA_SUM 1
#define FA_TENSOR_KINDS(Y, X, ...)                                                   \
    Y(X, lamb, FA_LAMB_BODY, 0, __VA_ARGS__) Y(X, lamb_l2, FA_LAMB_BODY, 1, __VA_ARGS__) \
    Y(X, stableadamw, FA_STABLEADAMW_BODY, 0, __VA_ARGS__)                            \
    Y(X, cautious_adam, FA_CAUTIOUS_ADAM_BODY, 0, __VA_ARGS__)                        \
    Y(X, cautious_adam_l2, FA_CAUTIOUS_ADAM_BODY, 1, __VA_ARGS__)                     \
    Y(X, cautious_amsgrad, FA_CAUTIOUS_AMSGRAD_BODY, 0, __VA_ARGS__)                  \
    Y(X, cautious_amsgrad_l2, FA_CAUTIOUS_AMSGRAD_BODY, 1, __VA_ARGS__)               \
    Y(X, cautious_lion, FA_CAUTIOUS_LION_BODY, 0, __VA_ARGS__)
#define FA_TENSOR_X(X, name, body, COUPLED, ...)                                     \
    X(sum_##name, body, COUPLED, FA_SUM, __VA_ARGS__) X(name, body, COUPLED, 0, __VA_ARGS__)

#define FA_KIND_ENUM(name, body, coupled, flag, ...) FA_KIND_##name,
enum { FA_DENSE_KINDS(FA_KIND_ENUM, ~) FA_N_KINDS };
#define FA_KIND_NAME(name, body, coupled, flag, ...) #name,
static const char *const fa_kind_names[FA_N_KINDS] = {FA_DENSE_KINDS(FA_KIND_NAME, ~)};

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

/* max that propagates NaN from either side, as numpy.maximum does. */
#define FA_MAX_NAN(a, b) (((a) >= (b) || (a) != (a)) ? (a) : (b))

/* What every kind does first: the sign, the L2 term, the decoupled decay. */
#define FA_PRELUDE(T, COUPLED)                                                       \
    T *restrict p_ = (T *)a[FA_PARAM];                                               \
    const T *restrict g_ = (const T *)a[FA_GRAD];                                    \
    const T sign = (T)s->sign, wd = (T)s->weight_decay, decay = (T)s->decay;         \
    (void)wd;
#define FA_GRAD_AND_PARAM(T, COUPLED)                                                   \
    T g = g_[i] * sign;                                                              \
    T p = p_[i];                                                                     \
    if (COUPLED) g = g + wd * p;                                                     \
    p = p * decay;

/* Adam's two moments, shared by Adam/AMSGrad, NAdam and RAdam: the arrays and decay
 * rates, then per element m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g g, stored. */
#define FA_MOMENTS_DECL(T)                                                           \
    T *restrict m_ = (T *)a[FA_STATE0];                                              \
    T *restrict v_ = (T *)a[FA_STATE0 + 1];                                          \
    const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                          \
    const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;
#define FA_MOMENTS_STEP(T)                                                           \
    T m = b1 * m_[i] + omb1 * g;                                                     \
    T v = b2 * v_[i] + omb2 * g * g;                                                 \
    m_[i] = m;                                                                       \
    v_[i] = v;

/* The update of Adam, NAdam, RAdam and AdaBelief: p -= numerator / (sqrt(second) + eps). */
#define FA_DIVIDED_STEP(T, SQRT, numerator, second)                                  \
    T denom = SQRT(second) + eps;                                                    \
    p_[i] = p - (numerator) / denom;

/* The loop of every kind on Adam's two moments (Adam/AMSGrad, NAdam, RAdam's momentum \
 * step): DECLS before it, then per element the gradient, the moments, and UPDATE. */ \
#define FA_MOMENTS_LOOP(T, COUPLED, DECLS, UPDATE)                                   \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        DECLS                                                                        \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            FA_MOMENTS_STEP(T)                                                       \
            UPDATE                                                                   \
        }                                                                            \
    }

/* Adam / AMSGrad. The update p -= lr_t/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) is evaluated in
 * the algebraically identical eps-hat form (Adam paper, section 2)
 *     p -= step_size * m / (sqrt(v) + eps),  step_size = lr_t/bc1*sqrt(bc2), eps = eps*sqrt(bc2)
 * with one division per element: the divider is what bounds the in-cache step
 * (bench/README.md). RAdam's rectified step is this loop with its own scalars. */
#define FA_ADAM_BODY(T, SQRT, FABS, COUPLED, AMSGRAD)                                \
    FA_MOMENTS_LOOP(T, COUPLED,                                                      \
        T *restrict vmax_ = (T *)a[FA_STATE0 + 2];                                   \
        const T step_size = (T)s->step_size;                                         \
        const T eps = (T)s->eps;                                                     \
        (void)vmax_;,                                                                \
        if (AMSGRAD) {                                                               \
            T vmax = vmax_[i];                                                       \
            vmax = FA_MAX_NAN(vmax, v);                                              \
            vmax_[i] = vmax;                                                         \
            v = vmax;                                                                \
        }                                                                            \
        FA_DIVIDED_STEP(T, SQRT, step_size * m, v))

/* Adamax: u = max(beta2 * u, |g| + eps), p -= step_size * m / u. */
#define FA_ADAMAX_BODY(T, SQRT, FABS, COUPLED, FLAG)                                 \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        T *restrict m_ = (T *)a[FA_STATE0];                                          \
        T *restrict u_ = (T *)a[FA_STATE0 + 1];                                      \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, step_size = (T)s->step_size, eps = (T)s->eps;      \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T u = b2 * u_[i];                                                        \
            T abs_g = FABS(g) + eps;                                                 \
            u = FA_MAX_NAN(u, abs_g);                                                \
            m_[i] = m;                                                               \
            u_[i] = u;                                                               \
            p_[i] = p - step_size * m / u;                                           \
        }                                                                            \
    }

/* NAdam (Dozat 2016, torch.optim.NAdam): Nesterov momentum on Adam's moments,
 *     p -= (grad_coef * g + step_size * m) / (sqrt(v) + eps)
 * with grad_coef = lr(1 - mu_t)/(1 - prod mu)*sqrt(bc2), step_size =
 * lr mu_{t+1}/(1 - prod mu * mu_{t+1})*sqrt(bc2), eps = eps*sqrt(bc2): torch's two
 * addcdiv terms over one shared denominator, with one division. */
#define FA_NADAM_BODY(T, SQRT, FABS, COUPLED, FLAG)                                  \
    FA_MOMENTS_LOOP(T, COUPLED,                                                      \
        const T step_size = (T)s->step_size;                                         \
        const T grad_coef = (T)s->grad_coef;                                         \
        const T eps = (T)s->eps;,                                                    \
        FA_DIVIDED_STEP(T, SQRT, grad_coef * g + step_size * m, v))

/* RAdam's unrectified step (rho_t <= 5): the moments advance as Adam's, the param takes a
 * bias-corrected momentum step p -= step_size * m, step_size = lr_t / bc1. */
#define FA_MOMENTUM_BODY(T, SQRT, FABS, COUPLED, FLAG)                               \
    FA_MOMENTS_LOOP(T, COUPLED, const T step_size = (T)s->step_size;,                \
                    p_[i] = p - step_size * m;)

/* AdaBelief (Zhuang et al. 2020, Algorithm 2, as optax.scale_by_belief): the second moment
 * tracks the squared surprise (g - m)^2 of the new m, plus eps_root inside the moment;
 * bias-corrected as Adam (step_size and eps carry sqrt(bc2)). */
#define FA_ADABELIEF_BODY(T, SQRT, FABS, COUPLED, FLAG)                              \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        const T step_size = (T)s->step_size, eps = (T)s->eps;                        \
        const T eps_root = (T)s->eps_root;                                           \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T surprise = g - m;                                                      \
            T belief = b2 * v_[i] + omb2 * surprise * surprise;                      \
            belief = belief + eps_root;                                              \
            m_[i] = m;                                                               \
            v_[i] = belief;                                                          \
            FA_DIVIDED_STEP(T, SQRT, step_size * m, belief)                             \
        }                                                                            \
    }

/* The sign of c as numpy.sign gives it for a nonzero number, and c itself for +-0 and NaN
 * (so NaN propagates and a zero interpolation moves nothing). */
#define FA_SIGN(T, c) ((c) > (T)0 ? (T)1 : ((c) < (T)0 ? (T)-1 : (c)))

/* Lion (Chen et al. 2023, optax.lion): p -= lr_t * sign(b1 m + (1 - b1) g), then
 * m = b2 m + (1 - b2) g; weight decay is decoupled (in decay). One state array. */
#define FA_LION_BODY(T, SQRT, FABS, COUPLED, FLAG)                                   \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        T *restrict m_ = (T *)a[FA_STATE0];                                          \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;                      \
        const T step_size = (T)s->step_size;                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T m = m_[i];                                                             \
            T c = b1 * m + omb1 * g;                                                 \
            p_[i] = p - step_size * FA_SIGN(T, c);                                   \
            m_[i] = b2 * m + omb2 * g;                                               \
        }                                                                            \
    }

/* Bandwidth probe with a step's memory traffic and trivial arithmetic: read p, g and the
 * state arrays given (m; m, v; or m, v and AMSGrad's third), write p and them. The fastest
 * the memory system can run a step moving those bytes (Lion: 1 state array, Adam: 2). */
#define FA_PROBE_BODY(T, SQRT, FABS, COUPLED, FLAG)                                  \
    {                                                                                \
        T *restrict p_ = (T *)a[FA_PARAM];                                           \
        const T *restrict g_ = (const T *)a[FA_GRAD];                                \
        T *restrict m_ = (T *)a[FA_STATE0];                                          \
        T *restrict v_ = (T *)a[FA_STATE0 + 1];                                      \
        T *restrict x_ = (T *)a[FA_STATE0 + 2];                                      \
        (void)s;                                                                     \
        if (x_) {                                                                    \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T g = g_[i];                                                         \
                m_[i] = m_[i] + g; v_[i] = v_[i] + g; x_[i] = x_[i] + g;             \
                p_[i] = p_[i] - g;                                                   \
            }                                                                        \
        } else if (v_) {                                                             \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T g = g_[i];                                                         \
                m_[i] = m_[i] + g; v_[i] = v_[i] + g;                                \
                p_[i] = p_[i] - g;                                                   \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T g = g_[i];                                                         \
                m_[i] = m_[i] + g;                                                   \
                p_[i] = p_[i] - g;                                                   \
            }                                                                        \
        }                                                                            \
    }

/* ---- Per-tensor kinds --------------------------------------------------------------------
 *
 * One scalar per tensor from a reduction over it, then the elementwise update with it. Both
 * phases are one body: with SUM (phase 1) it computes the new moments and the update exactly
 * as phase 2 does, writes nothing, and adds its per-element quantities (in double) to
 * FA_TENSOR_LANES lanes, element i of a call into lane i % 8, each lane in order; the engine
 * calls it on pieces that start at multiples of 8 from the piece's start (whole pieces, or
 * the staged runner's blocks of FA_STAGE), so the lanes are the piece's. Without SUM
 * (phase 2) it recomputes the same values, stores them and updates the param with
 * s->tensor_step (and s->tensor_decay). Recomputing instead of storing between the phases
 * keeps every storage type (bfloat16, 8-bit state) exact: phase 2 reads the state as
 * phase 1 did. */
#define FA_TENSOR_SUMS 2
#define FA_TENSOR_LANES 8

/* The loop of a per-tensor body: STEP per element i. With SUM, STEP stores element i's
 * NSUMS quantities as q[j][ii] (ii = i - b, in blocks of FA_TENSOR_BLOCK from b); each block's are
 * then added to the lanes of s->acc, element ii to lane ii % 8 (two loops, so that the
 * compiler vectorizes both: the update's and the lanes'). */
#define FA_TENSOR_BLOCK 256
#define FA_TENSOR_LOOP(SUM, NSUMS, STEP)                                             \
    double q[FA_TENSOR_SUMS][FA_TENSOR_BLOCK];                                       \
    if (SUM) {                                                                       \
        double *restrict acc = s->acc;                                               \
        for (ptrdiff_t b = 0; b < n; b += FA_TENSOR_BLOCK) {                          \
            const ptrdiff_t len = n - b < FA_TENSOR_BLOCK ? n - b : FA_TENSOR_BLOCK;  \
            for (ptrdiff_t ii = 0; ii < len; ii++) {                                 \
                const ptrdiff_t i = b + ii;                                          \
                STEP                                                                 \
            }                                                                        \
            for (int j = 0; j < (NSUMS); j++) {                                      \
                double *restrict lane = acc + j * FA_TENSOR_LANES;                   \
                ptrdiff_t ii = 0;                                                    \
                for (; ii + FA_TENSOR_LANES <= len; ii += FA_TENSOR_LANES)           \
                    for (int l = 0; l < FA_TENSOR_LANES; l++) lane[l] += q[j][ii + l]; \
                for (int l = 0; ii < len; ii++, l++) lane[l] += q[j][ii];            \
            }                                                                        \
        }                                                                            \
    } else {                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            const ptrdiff_t ii = 0;                                                  \
            STEP                                                                     \
        }                                                                            \
    }

/* LAMB (You et al. 2019), as timm's Lamb: the Adam direction
 *     u = step_size * m / (sqrt(v) + eps)    (step_size = sqrt(bc2)/bc1, eps = eps*sqrt(bc2))
 * plus weight_decay * p when coupled (on the decayed p when decoupled); phase 1 sums p*p
 * and u*u, phase 2 takes p -= tensor_step * u, tensor_step = lr * trust ratio. */
#define FA_LAMB_BODY(T, SQRT, FABS, COUPLED, SUM)                                    \
    {                                                                                \
        FA_PRELUDE(T, 0)                                                             \
        FA_MOMENTS_DECL(T)                                                           \
        const T step_size = (T)s->step_size, eps = (T)s->eps;                        \
        const T tstep = (T)s->tensor_step;                                           \
        FA_TENSOR_LOOP(SUM, 2,                                                       \
            FA_GRAD_AND_PARAM(T, 0)                                                  \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T v = b2 * v_[i] + omb2 * g * g;                                         \
            T u = step_size * m / (SQRT(v) + eps);                                   \
            if (COUPLED) u = u + wd * p;                                             \
            if (SUM) {                                                               \
                q[0][ii] = (double)p * (double)p;                                    \
                q[1][ii] = (double)u * (double)u;                                    \
            } else {                                                                 \
                m_[i] = m;                                                           \
                v_[i] = v;                                                           \
                p_[i] = p - tstep * u;                                               \
            })                                                                       \
    }

/* StableAdamW (Wortsman et al. 2023), as torch-optimi's: debiased betas (beta1, beta2
 * carry beta_hat = (beta^t - beta) / (beta^t - 1)), no bias correction; phase 1 sums
 * g*g / max(v, eps**2), phase 2 takes p = p * tensor_decay - tensor_step * m / (sqrt(v) + eps)
 * with tensor_step = lr / max(1, rms). */
#define FA_STABLEADAMW_BODY(T, SQRT, FABS, COUPLED, SUM)                             \
    {                                                                                \
        FA_PRELUDE(T, 0)                                                             \
        FA_MOMENTS_DECL(T)                                                           \
        const T eps = (T)s->eps, v_floor = (T)s->v_floor;                            \
        const T tstep = (T)s->tensor_step, tdecay = (T)s->tensor_decay;              \
        (void)v_floor;                                                               \
        FA_TENSOR_LOOP(SUM, 1,                                                       \
            FA_GRAD_AND_PARAM(T, 0)                                                  \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T v = b2 * v_[i] + omb2 * g * g;                                         \
            if (SUM) {                                                               \
                T floored = FA_MAX_NAN(v, v_floor);                                  \
                T ratio = g * g / floored;                                           \
                q[0][ii] = (double)ratio;                                            \
            } else {                                                                 \
                m_[i] = m;                                                           \
                v_[i] = v;                                                           \
                p = p * tdecay;                                                      \
                FA_DIVIDED_STEP(T, SQRT, tstep * m, v)                               \
            })                                                                       \
    }

/* Cautious masking (Liang et al. 2024), as timm's cadamw / clion: an element whose update
 * and gradient disagree in sign (u * g > 0 false) takes no step; the others are scaled by
 * tensor_step = 1 / max(mean(mask), 1e-3). Phase 1 counts the mask (exact in double). */
#define FA_CAUTIOUS_ADAM_BODY(T, SQRT, FABS, COUPLED, SUM)                           \
    FA_CAUTIOUS_ADAM_LOOP(T, SQRT, COUPLED, SUM, 0)
#define FA_CAUTIOUS_AMSGRAD_BODY(T, SQRT, FABS, COUPLED, SUM)                        \
    FA_CAUTIOUS_ADAM_LOOP(T, SQRT, COUPLED, SUM, 1)
#define FA_CAUTIOUS_ADAM_LOOP(T, SQRT, COUPLED, SUM, AMSGRAD)                        \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        T *restrict vmax_ = (T *)a[FA_STATE0 + 2];                                   \
        const T step_size = (T)s->step_size, eps = (T)s->eps;                        \
        const T tstep = (T)s->tensor_step;                                           \
        (void)vmax_;                                                                 \
        FA_TENSOR_LOOP(SUM, 1,                                                       \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T v = b2 * v_[i] + omb2 * g * g;                                         \
            const int agree = m * g > (T)0;                                          \
            if (SUM) {                                                               \
                q[0][ii] = agree ? 1.0 : 0.0;                                        \
            } else {                                                                 \
                m_[i] = m;                                                           \
                v_[i] = v;                                                           \
                if (AMSGRAD) {                                                       \
                    T vmax = vmax_[i];                                               \
                    vmax = FA_MAX_NAN(vmax, v);                                      \
                    vmax_[i] = vmax;                                                 \
                    v = vmax;                                                        \
                }                                                                    \
                T masked = m * (agree ? tstep : (T)0);                               \
                FA_DIVIDED_STEP(T, SQRT, step_size * masked, v)                      \
            })                                                                       \
    }

#define FA_CAUTIOUS_LION_BODY(T, SQRT, FABS, COUPLED, SUM)                           \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        T *restrict m_ = (T *)a[FA_STATE0];                                          \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;                      \
        const T step_size = (T)s->step_size, tstep = (T)s->tensor_step;              \
        FA_TENSOR_LOOP(SUM, 1,                                                       \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T m = m_[i];                                                             \
            T c = b1 * m + omb1 * g;                                                 \
            T d = FA_SIGN(T, c);                                                     \
            const int agree = d * g > (T)0;                                          \
            if (SUM) {                                                               \
                q[0][ii] = agree ? 1.0 : 0.0;                                        \
            } else {                                                                 \
                T masked = d * (agree ? tstep : (T)0);                               \
                p_[i] = p - step_size * masked;                                      \
                m_[i] = b2 * m + omb2 * g;                                           \
            })                                                                       \
    }

#endif /* FUSEDADAM_LOOPS_H */
