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
#include <stdint.h>

/* Per-step scalars, computed once in double by fa_step_scalars (_scalars.h), cast to the
 * array's dtype inside each loop (the same rounding as NumPy's dtype.type(x)). Each loop
 * kind reads the fields it needs; the others are 0. */
#define FA_SCALAR_FIELDS(X)                                                                \
    X(sign)             /* -1 when maximizing, else 1 */                                  \
    X(weight_decay)     /* coupled (L2) coefficient; used only by the *_l2 kinds */      \
    X(decay)            /* decoupled factor 1 - lr_t * weight_decay; 1 otherwise */      \
    X(beta1)            /* the first moment's decay of this step */                       \
    X(one_minus_beta1)                                                                    \
    X(beta2)                                                                              \
    X(one_minus_beta2)                                                                    \
    X(step_size)        /* multiplies the numerator of the update */                      \
    X(eps)              /* added to the denominator */                                    \
    X(eps_root)         /* AdaBelief: added to the second moment itself */                \
    X(grad_coef)        /* NAdam: multiplies g in the numerator */                        \
    X(beta3)            /* AdEMAMix: the slow EMA's decay of this step; Adan: n's */      \
    X(one_minus_beta3)                                                                    \
    X(slow_coef)        /* AdEMAMix: multiplies the slow EMA in the numerator */          \
    X(diff_coef)        /* Adan: multiplies the gradient-difference EMA */                \
    X(prox)             /* Adan (proximal decay): the param is divided by it; else 1 */   \
    X(first)            /* Adan: 1 on step 1 (the previous gradient is this one) */       \
    X(clip)             /* ADOPT: |g / max(sqrt(v), eps)| <= clip; inf: no clip */        \
    X(m_scale)          /* Adam-atan2: 1 / bc1, the first moment's bias correction */     \
    X(v_scale)          /* Adam-atan2: b * b / bc2, under the square root */              \
    X(bias_correction2) /* Schedule-Free: v is divided by it */                           \
    X(lerp_weight)      /* Schedule-Free: y = base + lerp_weight * (z - y) ... */         \
    X(lerp_from_end)    /* ... with base z when 1, y when 0 (torch's lerp) */             \
    X(y_step)           /* Schedule-Free: y += y_step * gn */                             \
    /* The per-tensor algorithms (LAMB, StableAdamW, cautious masking; see "Per-tensor    \
     * kinds" below). lr and v_floor are per step; the rest is set per tensor by the     \
     * engine. */                                                                         \
    X(lr)               /* this step's learning rate */                                   \
    X(v_floor)          /* StableAdamW: eps**2, the floor of v in the RMS */

#define FA_SCALAR_DECLARE(name) double name;
typedef struct {
    FA_SCALAR_FIELDS(FA_SCALAR_DECLARE)
    double tensor_step;      /* phase 2: this tensor's step (lr * trust, clipped lr, mask scale) */
    double tensor_decay;     /* phase 2: this tensor's decoupled decay factor (StableAdamW) */
    double *acc;             /* phase 1: FA_TENSOR_SUMS x FA_TENSOR_LANES running lane sums */
} fa_scalars;

/* one dense loop: a[] holds the slots' pointers (FA_PARAM, FA_GRAD, FA_STATE0 + j) */
typedef void (*fa_loop_fn)(char *const *a, ptrdiff_t n, const fa_scalars *s);
/* The per-step fields by name (what fa_step_scalars sets and reference.step_scalars
 * twins), for the extension that hands them to Python. */
typedef struct {
    const char *name;
    size_t offset;
} fa_scalar_field;
#define FA_SCALAR_ENTRY(name) {#name, offsetof(fa_scalars, name)},
static const fa_scalar_field fa_scalar_fields[] = {FA_SCALAR_FIELDS(FA_SCALAR_ENTRY)};
#define FA_SCALAR_COUNT(name) +1
enum { FA_N_SCALAR_FIELDS = 0 FA_SCALAR_FIELDS(FA_SCALAR_COUNT) };

/* Array slots of a loop call: the param, its gradient, then the state arrays in the order
 * of the algorithm's state names (fusedadam/_algorithms.py): at most FA_MAX_STATES (Adan's
 * four). The staged runner (_staged.h) keeps one stack buffer per state slot. */
enum { FA_PARAM = 0, FA_GRAD = 1, FA_STATE0 = 2, FA_MAX_STATES = 4,
       FA_MAX_SLOTS = FA_STATE0 + FA_MAX_STATES };

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
    X(probe_read, FA_PROBE_READ_BODY, 0, 0, __VA_ARGS__)                             \
    FA_PAIR(X, ademamix, FA_ADEMAMIX_BODY, 0, __VA_ARGS__)                           \
    X(adan, FA_ADAN_BODY, 0, 0, __VA_ARGS__) X(adan_prox, FA_ADAN_BODY, 0, 1, __VA_ARGS__) \
    FA_PAIR(X, adopt_first, FA_ADOPT_FIRST_BODY, 0, __VA_ARGS__)                     \
    FA_PAIR(X, adopt, FA_ADOPT_BODY, 0, __VA_ARGS__)                                 \
    X(adam_atan2, FA_ADAM_ATAN2_BODY, 0, 0, __VA_ARGS__)                             \
    FA_PAIR(X, schedulefree, FA_SCHEDULEFREE_BODY, 0, __VA_ARGS__)                   \
    FA_PAIR(X, schedulefree_sgd, FA_SCHEDULEFREE_BODY, 1, __VA_ARGS__)              \
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
    Y(X, cautious_lion, FA_CAUTIOUS_LION_BODY, 0, __VA_ARGS__) \
    Y(X, cautious_adopt, FA_CAUTIOUS_ADOPT_BODY, 0, __VA_ARGS__)                      \
    Y(X, cautious_adopt_l2, FA_CAUTIOUS_ADOPT_BODY, 1, __VA_ARGS__)
#define FA_TENSOR_X(X, name, body, COUPLED, ...)                                     \
    X(sum_##name, body, COUPLED, FA_SUM, __VA_ARGS__) X(name, body, COUPLED, 0, __VA_ARGS__)

#define FA_KIND_ENUM(name, body, coupled, flag, ...) FA_KIND_##name,
enum { FA_DENSE_KINDS(FA_KIND_ENUM, ~) FA_N_KINDS };
#define FA_KIND_NAME(name, body, coupled, flag, ...) #name,
static const char *const fa_kind_names[FA_N_KINDS] = {FA_DENSE_KINDS(FA_KIND_NAME, ~)};

#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif

/* The arrays of one loop call never overlap (fusedadam/_validation.py refuses aliasing), but
 * a restrict on a local pointer does not tell gcc so: it versions a loop with a run-time
 * overlap test per pair of arrays, and gives up vectorizing beyond 10 tests (Adan's six
 * arrays need 15). FA_NO_OVERLAP before such a loop states it. */
#if defined(__clang__)
#define FA_NO_OVERLAP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FA_NO_OVERLAP _Pragma("GCC ivdep")
#else
#define FA_NO_OVERLAP
#endif

/* max that propagates NaN from either side, as numpy.maximum does. */
#define FA_MAX_NAN(a, b) (((a) >= (b) || (a) != (a)) ? (a) : (b))
/* max and min with a bound b that is never NaN: NaN in a propagates, and the result is
 * numpy.maximum(a, b) / numpy.minimum(a, b) bit for bit (a when the two compare equal),
 * in a form the vectoriser maps to one max/min instruction. */
#define FA_MAX_BOUND(a, b) ((a) < (b) ? (b) : (a))
#define FA_MIN_BOUND(a, b) ((a) > (b) ? (b) : (a))

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

/* AdEMAMix (Pagliardini et al. 2024, as pytorch_optimizer.AdEMAMix): Adam's moments and a
 * slow EMA s = b3_t s + (1 - b3_t) g (not bias-corrected), mixed into the numerator,
 *     p -= (step_size * m + slow_coef * s) / (sqrt(v) + eps)
 * with step_size = lr/bc1*sqrt(bc2), slow_coef = lr*alpha_t*sqrt(bc2), eps = eps*sqrt(bc2):
 * the package's lr * (m/bc1 + alpha_t s) / (sqrt(v)/sqrt(bc2) + eps) with one division. */
#define FA_ADEMAMIX_BODY(T, SQRT, FABS, COUPLED, FLAG)                               \
    FA_MOMENTS_LOOP(T, COUPLED,                                                      \
        T *restrict slow_ = (T *)a[FA_STATE0 + 2];                                   \
        const T b3 = (T)s->beta3;                                                    \
        const T omb3 = (T)s->one_minus_beta3;                                        \
        const T step_size = (T)s->step_size;                                         \
        const T slow_coef = (T)s->slow_coef;                                         \
        const T eps = (T)s->eps;,                                                    \
        T slow = b3 * slow_[i] + omb3 * g;                                           \
        slow_[i] = slow;                                                             \
        FA_DIVIDED_STEP(T, SQRT, step_size * m + slow_coef * slow, v))

/* Adan (Xie et al. 2022, as timm.optim.Adan): with d = g - g_prev (0 on step 1, where
 * timm takes g_prev = g) and w = g + b2 d,
 *     m = b1 m + (1 - b1) g,  dm = b2 dm + (1 - b2) d,  n = b3 n + (1 - b3) w w
 *     p = p * decay - (step_size * m + diff_coef * dm) / (sqrt(n) + eps)
 *     p = p / prox                                               (PROX: timm's no_prox=False)
 * step_size = lr/bc1*sqrt(bc3), diff_coef = lr*b2/bc2*sqrt(bc3), eps = eps*sqrt(bc3): timm's
 * two addcdiv terms over one denominator, with one division. The fourth state is timm's
 * neg_pre_grad, -g of this step (the gradient the loop sees: unscaled, clipped, signed). */
#define FA_ADAN_BODY(T, SQRT, FABS, COUPLED, PROX)                                   \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        T *restrict m_ = (T *)a[FA_STATE0];                                          \
        T *restrict n_ = (T *)a[FA_STATE0 + 1];                                      \
        T *restrict dm_ = (T *)a[FA_STATE0 + 2];                                     \
        T *restrict neg_prev_ = (T *)a[FA_STATE0 + 3];                               \
        const T b1 = (T)s->beta1, omb1 = (T)s->one_minus_beta1;                      \
        const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;                      \
        const T b3 = (T)s->beta3, omb3 = (T)s->one_minus_beta3;                      \
        const T step_size = (T)s->step_size, diff_coef = (T)s->diff_coef;            \
        const T eps = (T)s->eps, prox = (T)s->prox;                                  \
        const int first = s->first != 0.0;                                           \
        (void)prox;                                                                  \
        FA_NO_OVERLAP                                                                \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            T neg_prev = first ? -g : neg_prev_[i];                                  \
            T d = neg_prev + g;                                                      \
            T m = b1 * m_[i] + omb1 * g;                                             \
            T dm = b2 * dm_[i] + omb2 * d;                                           \
            T w = b2 * d + g;                                                        \
            T nn = b3 * n_[i] + omb3 * w * w;                                        \
            m_[i] = m;                                                               \
            dm_[i] = dm;                                                             \
            n_[i] = nn;                                                              \
            neg_prev_[i] = -g;                                                       \
            T denom = SQRT(nn) + eps;                                                \
            p = p - (step_size * m + diff_coef * dm) / denom;                        \
            if (PROX) p = p / prox;                                                  \
            p_[i] = p;                                                               \
        }                                                                            \
    }

/* ADOPT (Taniguchi et al. 2024, as timm.optim.Adopt), its first step: the second moment
 * starts at g * g (v + g g on the zero state) and nothing else moves. The L2 term is in g
 * (timm adds it before the first-step test); the decoupled decay waits for step 2. */
#define FA_ADOPT_FIRST_BODY(T, SQRT, FABS, COUPLED, FLAG)                            \
    {                                                                                \
        T *restrict p_ = (T *)a[FA_PARAM];                                           \
        const T *restrict g_ = (const T *)a[FA_GRAD];                                \
        T *restrict v_ = (T *)a[FA_STATE0 + 1];                                      \
        const T sign = (T)s->sign, wd = (T)s->weight_decay;                          \
        (void)wd;                                                                    \
        (void)p_;                                                                    \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            T g = g_[i] * sign;                                                      \
            if (COUPLED) g = g + wd * p_[i];                                         \
            v_[i] = v_[i] + g * g;                                                   \
        }                                                                            \
    }

/* ADOPT's new momentum from the previous v (read into v): the gradient normalised by
 * max(sqrt(v), eps), clipped to [-clip, clip], averaged into m. */
#define FA_ADOPT_MOMENTUM(T, SQRT)                                                   \
    T v = v_[i];                                                                     \
    T denom = SQRT(v);                                                               \
    denom = FA_MAX_BOUND(denom, eps);                                                \
    T normed = g / denom;                                                            \
    normed = FA_MAX_BOUND(normed, neg_clip);                                         \
    normed = FA_MIN_BOUND(normed, clip);                                             \
    T m = b1 * m_[i] + omb1 * normed;

/* ADOPT's later steps: the gradient normalised by the PREVIOUS second moment, clipped,
 * then the momentum, the step, and only then the second moment's update:
 *     n = clamp(g / max(sqrt(v), eps), -clip, clip),  m = b1 m + (1 - b1) n,
 *     p -= lr_t * m,  v = b2 v + (1 - b2) g g.  */
#define FA_ADOPT_BODY(T, SQRT, FABS, COUPLED, FLAG)                                  \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        const T step_size = (T)s->step_size, eps = (T)s->eps;                        \
        const T clip = (T)s->clip, neg_clip = -clip;                                 \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            FA_ADOPT_MOMENTUM(T, SQRT)                                               \
            m_[i] = m;                                                               \
            p_[i] = p - step_size * m;                                               \
            v_[i] = b2 * v + omb2 * g * g;                                           \
        }                                                                            \
    }

/* atan2(y, x) with only +, -, *, /, compares and copysign, so that its NumPy twin
 * (reference.atan2: the same operations in the same order) gives the same bits on every
 * instruction set and thread count; libm's atan2 and numpy.arctan2 are not one function,
 * and a vectorised loop may call yet another. The angle of r = |y| / |x| is reduced as
 * Cephes' atan (S. L. Moshier): above tan(3 pi / 8) to u = -1/r around pi/2, above 0.66
 * (double; tan(pi/8) for float) to u = (r - 1)/(r + 1) around pi/4, else u = r around
 * 0, each u formed with one division from |y| and |x| (compared as |y| > c |x|, both
 * scaled by a power of 2 at the ends of the range); then core = u + u z P(z) (z = u u;
 * Cephes' rational P/Q of degree 4/5 for double, its degree-3 polynomial for float). The
 * result is base + (core + low), with base the dtype's nearest value of 0, pi/4 or pi/2
 * and low the rest of it; for a negative x (sign bit set) pi minus that, as base' +
 * (core(-u) + low') with base' the nearest value of pi, 3 pi/4 or pi/2 (core is odd:
 * core(-u) = -core(u) exactly), so that no angle near pi/2 is rounded twice; |y| == |x|
 * (0/0 and inf/inf included) takes u = 0 and base = 0, pi/4, 3 pi/4 or pi, low = 0; then
 * y's sign. Every branch is computed and one selected per element, in the loops as in
 * NumPy, and the loops vectorise. The special values are IEEE's (numpy.arctan2's).
 * Measured error: docs/algorithms_adopt_atan2.md.
 *
 * It comes in three parts, FA_ATAN2_REDUCE (y, x -> u, base, low), FA_ATAN2_POLY (u -> z P(z))
 * and FA_ATAN2_FINISH (y, u, z P(z), base, low -> the angle), which the loop runs as
 * separate passes over a block held in stack buffers: one pass of the whole chain of
 * dependent operations (moments, square root, reduction, division, polynomial) keeps so
 * many operations waiting that the core's scheduler, not its arithmetic units, sets the
 * pace (AMD Zen 5, AVX-512, in L1: a chain of 64 dependent multiplies and adds per vector
 * takes 14.4 ns, two chains of 32 in two loops 9.4 ns, four of 16 6.1 ns). */
/* copysign in T (copysignf for float; both are exact and vectorise) */
#define FA_COPYSIGN(T, a, b)                                                         \
    (sizeof(T) == sizeof(float) ? (T)copysignf((float)(a), (float)(b))             \
                                : (T)copysign((double)(a), (double)(b)))
/* NONNEG: x is known to be +0, positive, +inf or NaN (a square root), so the sign tests
 * fold away; that changes no bit, for the sign bit of a NaN x changes only the sign of
 * the NaN result, which y's sign then replaces. */
#define FA_ATAN2_REDUCE(T, FABS, NONNEG, y, x, u_out, base_out, low_out)             \
    {                                                                                \
        const int f32_ = sizeof(T) == sizeof(float);                                 \
        const T ay_ = FABS(y), ax_ = FABS(x);                                        \
        /* |y| and |x| scaled exactly by a power of 2: by 1/16 when one is huge, so   \
         * that |y| + |x| cannot overflow (a subnormal partner's lost bits then change  \
         * no angle), by 2**600 (2**60 float) when both are tiny, so that the region   \
         * tests c |x| are not rounded as subnormals. The larger one decides both (a  \
         * NaN partner makes the result that NaN whatever the factor). */              \
        const T huge_ = f32_ ? (T)1e37 : (T)1e300;                                   \
        const T tiny_ = f32_ ? (T)7.888609052210118e-31 : (T)1.1830521861667747e-271; \
        const T up_ = f32_ ? (T)1.152921504606847e+18 : (T)4.149515568880993e+180;   \
        const T larger_ = FA_MAX_BOUND(ay_, ax_);                                    \
        T factor_ = larger_ < tiny_ ? up_ : (T)1;                                    \
        factor_ = larger_ > huge_ ? (T)0.0625 : factor_;                             \
        const T sy_ = ay_ * factor_, sx_ = ax_ * factor_;                            \
        const int far_ = sy_ > (T)2.41421356237309504880 * sx_;                      \
        /* above the middle threshold (far ones included) */                         \
        const int mid_ = sy_ > (f32_ ? (T)0.4142135623730950 : (T)0.66) * sx_;       \
        const T x_sign_ = NONNEG ? (T)1 : FA_COPYSIGN(T, (T)1, x);                   \
        const int back_ = x_sign_ < (T)0;                                            \
        /* one division: u = -|x|/|y|, (|y| - |x|)/(|y| + |x|) or |y|/|x|, negated    \
         * for a negative x */                                                         \
        T num_ = mid_ ? sy_ - sx_ : sy_, den_ = mid_ ? sy_ + sx_ : sx_;              \
        num_ = far_ ? -sx_ : num_;                                                   \
        den_ = far_ ? sy_ : den_;                                                    \
        if (!NONNEG) num_ = num_ * x_sign_;                                          \
        const T pi_ = (T)3.141592653589793, pi34_ = (T)2.356194490192345;            \
        const T pio2_ = (T)1.5707963267948966, pio4_ = (T)0.7853981633974483;        \
        const T pi_lo_ = f32_ ? (T)-8.742278000372485e-08 : (T)1.2246467991473532e-16; \
        const T pi34_lo_ = f32_ ? (T)-5.962440227403018e-09 : (T)9.184850993605148e-17; \
        const T pio2_lo_ = f32_ ? (T)-4.3711390001862426e-08 : (T)6.123233995736766e-17; \
        const T pio4_lo_ = f32_ ? (T)-2.1855695000931213e-08 : (T)3.061616997868383e-17; \
        T base_ = mid_ ? (back_ ? pi34_ : pio4_) : (back_ ? pi_ : (T)0);              \
        T low_ = mid_ ? (back_ ? pi34_lo_ : pio4_lo_) : (back_ ? pi_lo_ : (T)0);      \
        base_ = far_ ? pio2_ : base_;                                                \
        low_ = far_ ? pio2_lo_ : low_;                                               \
        /* |y| == |x| (0/0 and inf/inf included): pi/4, 3 pi/4, or 0, pi for zeros */  \
        const int diag_ = ay_ == ax_;                                                \
        const T same_ = ax_ == (T)0 ? (back_ ? pi_ : (T)0) : (back_ ? pi34_ : pio4_);  \
        num_ = diag_ ? (T)0 : num_;                                                  \
        den_ = diag_ ? (T)1 : den_;                                                  \
        base_out = diag_ ? same_ : base_;                                            \
        low_out = diag_ ? (T)0 : low_;                                               \
        u_out = num_ / den_;                                                         \
    }
/* z P(z) of u (z = u u) */
#define FA_ATAN2_POLY(T, u, out)                                                     \
    {                                                                                \
        const T z_ = (u) * (u);                                                      \
        T poly_;                                                                     \
        if (sizeof(T) == sizeof(float)) {                                            \
            poly_ = (T)8.05374449538e-2 * z_ - (T)1.38776856032e-1;                  \
            poly_ = poly_ * z_ + (T)1.99777106478e-1;                                \
            poly_ = poly_ * z_ - (T)3.33329491539e-1;                                \
            poly_ = poly_ * z_;                                                      \
        } else {                                                                     \
            T p_ = (T)-8.750608600031904122785e-1 * z_ - (T)1.615753718733365076637e1; \
            p_ = p_ * z_ - (T)7.500855792314704667340e1;                             \
            p_ = p_ * z_ - (T)1.228866684490136173410e2;                             \
            p_ = p_ * z_ - (T)6.485021904942025371773e1;                             \
            T q_ = z_ + (T)2.485846490142306297962e1;                                \
            q_ = q_ * z_ + (T)1.650270098316988542046e2;                             \
            q_ = q_ * z_ + (T)4.328810604912902668951e2;                             \
            q_ = q_ * z_ + (T)4.853903996359136964868e2;                             \
            q_ = q_ * z_ + (T)1.945506571482613964425e2;                             \
            poly_ = z_ * p_ / q_;                                                    \
        }                                                                            \
        out = poly_;                                                                 \
    }
/* the angle, core = u + u z P(z) */
#define FA_ATAN2_FINISH(T, y, u, poly, base, low, out)                               \
    {                                                                                \
        T angle_ = (u) * (poly) + (u);                                               \
        angle_ = angle_ + (low);                                                     \
        angle_ = (base) + angle_;                                                    \
        out = FA_COPYSIGN(T, angle_, y);                                             \
    }

/* Adam-atan2 (Everett et al. 2024, as adam_atan2_pytorch.AdamAtan2): Adam's moments, and
 * in place of m^ / (sqrt(v^) + eps) the bounded atan2(m / bc1, sqrt(v b b / bc2)), so no
 * eps: p -= lr_t a atan2(...) after the decoupled decay (the only weight decay). Four
 * passes per block of FA_ATAN2_BLOCK elements (see the atan2 above): the moments, the
 * reduction, the polynomial, the angle and the param. */
/* Blocks of 128 elements, and a software prefetch of the block 4 blocks ahead (2 KB of
 * each float32 array, 4 KB of float64) at the start of each: the passes after the first
 * touch no array, so while they run the hardware prefetcher, which follows demand loads, has
 * nothing to follow and memory idles; out of cache (1e7 float32, one thread, AMD Zen 5,
 * interleaved with the probe) blocks of 256 without the prefetch ran at 85-91 % of the
 * probe's bandwidth, 128 with it at 92-101 % (128 without it: 86-92 %; 2 or 8 blocks ahead
 * or blocks of 160: 87-96 %). A prefetch changes no value. */
#define FA_ATAN2_BLOCK 128
#define FA_ATAN2_AHEAD 4
#if defined(__GNUC__) || defined(__clang__)
#define FA_PREFETCH_WRITE(address) __builtin_prefetch((address), 1)
#define FA_PREFETCH_READ(address) __builtin_prefetch((address), 0)
#else
#define FA_PREFETCH_WRITE(address) ((void)0)
#define FA_PREFETCH_READ(address) ((void)0)
#endif
#define FA_ATAN2_PREFETCH(T, start)                                                  \
    {                                                                                \
        const ptrdiff_t ahead_ = (start) + FA_ATAN2_AHEAD * FA_ATAN2_BLOCK;          \
        const ptrdiff_t stop_ = ahead_ + FA_ATAN2_BLOCK < n ? ahead_ + FA_ATAN2_BLOCK : n; \
        for (ptrdiff_t l_ = ahead_; l_ < stop_; l_ += 64 / (ptrdiff_t)sizeof(T)) {    \
            FA_PREFETCH_READ(g_ + l_);                                               \
            FA_PREFETCH_WRITE(m_ + l_);                                              \
            FA_PREFETCH_WRITE(v_ + l_);                                              \
            FA_PREFETCH_WRITE(p_ + l_);                                              \
        }                                                                            \
    }
#define FA_ADAM_ATAN2_BODY(T, SQRT, FABS, COUPLED, FLAG)                             \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        const T step_size = (T)s->step_size;                                         \
        const T m_scale = (T)s->m_scale, v_scale = (T)s->v_scale;                    \
        /* u_buf holds x = sqrt(v v_scale), then u in its place */                    \
        T y_buf[FA_ATAN2_BLOCK], u_buf[FA_ATAN2_BLOCK];                              \
        T base_buf[FA_ATAN2_BLOCK], low_buf[FA_ATAN2_BLOCK], poly_buf[FA_ATAN2_BLOCK]; \
        for (ptrdiff_t start = 0; start < n; start += FA_ATAN2_BLOCK) {              \
            const ptrdiff_t nb = n - start < FA_ATAN2_BLOCK ? n - start : FA_ATAN2_BLOCK; \
            T *restrict pb_ = p_ + start;                                            \
            const T *restrict gb_ = g_ + start;                                      \
            T *restrict mb_ = m_ + start;                                            \
            T *restrict vb_ = v_ + start;                                            \
            FA_ATAN2_PREFETCH(T, start)                                              \
            for (ptrdiff_t j = 0; j < nb; j++) {                                     \
                T g = gb_[j] * sign;                                                 \
                T m = b1 * mb_[j] + omb1 * g;                                        \
                T v = b2 * vb_[j] + omb2 * g * g;                                    \
                mb_[j] = m;                                                          \
                vb_[j] = v;                                                          \
                y_buf[j] = m * m_scale;                                              \
                T den = v * v_scale;                                                 \
                u_buf[j] = SQRT(den);                                                \
            }                                                                        \
            for (ptrdiff_t j = 0; j < nb; j++)                                       \
                FA_ATAN2_REDUCE(T, FABS, 1, y_buf[j], u_buf[j], u_buf[j], base_buf[j], \
                                low_buf[j])                                          \
            for (ptrdiff_t j = 0; j < nb; j++) FA_ATAN2_POLY(T, u_buf[j], poly_buf[j]) \
            for (ptrdiff_t j = 0; j < nb; j++) {                                     \
                T update;                                                            \
                FA_ATAN2_FINISH(T, y_buf[j], u_buf[j], poly_buf[j], base_buf[j],     \
                                low_buf[j], update)                                  \
                T p = pb_[j] * decay;                                                \
                pb_[j] = p - step_size * update;                                     \
            }                                                                        \
        }                                                                            \
    }

/* Schedule-Free AdamW (Defazio et al. 2024, schedulefree.AdamWScheduleFree): the param
 * holds y, state z and v. In the package's order:
 *     v = b2 v + (1 - b2) g g;  gn = g / (sqrt(v / bc2) + eps);  gn += wd y (_l2)
 *     y = lerp(y, z, c);  y += y_step gn;  z -= lr_t gn
 * The lerp is torch's: y + c (z - y) for c < 0.5, z + (c - 1)(z - y) otherwise (the
 * scalar rule hands over the coefficient and the base). FLAG (schedulefree_sgd:
 * RAdamScheduleFree before its rectification) takes gn = g, unnormalized. */
#define FA_SCHEDULEFREE_BODY(T, SQRT, FABS, COUPLED, FLAG)                           \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        T *restrict z_ = (T *)a[FA_STATE0];                                          \
        T *restrict v_ = (T *)a[FA_STATE0 + 1];                                      \
        const T b2 = (T)s->beta2, omb2 = (T)s->one_minus_beta2;                      \
        const T bc2 = (T)s->bias_correction2, eps = (T)s->eps;                       \
        const T lerp_weight = (T)s->lerp_weight, y_step = (T)s->y_step;              \
        const T z_step = (T)s->step_size;                                            \
        const int from_end = s->lerp_from_end != 0.0;                                \
        (void)decay;                                                                 \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            T g = g_[i] * sign;                                                      \
            T y = p_[i];                                                             \
            T z = z_[i];                                                             \
            T v = b2 * v_[i] + omb2 * g * g;                                         \
            T gn = g;                                                                \
            if (!FLAG) {                                                             \
                T denom = SQRT(v / bc2) + eps;                                       \
                gn = g / denom;                                                      \
            }                                                                        \
            if (COUPLED) gn = gn + wd * y;                                           \
            T base = from_end ? z : y;                                               \
            T y_new = base + lerp_weight * (z - y);                                  \
            y_new = y_new + y_step * gn;                                             \
            v_[i] = v;                                                               \
            z_[i] = z - z_step * gn;                                                 \
            p_[i] = y_new;                                                           \
        }                                                                            \
    }

/* Bandwidth probe with a step's memory traffic and trivial arithmetic: read p, g and the
 * state arrays given (the first k state slots that are set, k = 1 .. FA_MAX_SLOTS - 2),
 * write p and them, in one pass. The fastest the memory system can run a step moving those
 * bytes (Lion: 1 state array, Adam: 2, AMSGrad: 3, Adan: 4). One loop per k, each
 * vectorised as a step's loop is (FA_NO_OVERLAP: with six arrays gcc would not). */
#define FA_PROBE_LOOP(T, STATES)                                                     \
    FA_NO_OVERLAP                                                                    \
    for (ptrdiff_t i = 0; i < n; i++) {                                              \
        T g = g_[i];                                                                 \
        STATES                                                                       \
        p_[i] = p_[i] - g;                                                           \
    }
#define FA_PROBE_S(j) s##j[i] = s##j[i] + g;
#define FA_PROBE_BODY(T, SQRT, FABS, COUPLED, FLAG)                                  \
    {                                                                                \
        T *restrict p_ = (T *)a[FA_PARAM];                                           \
        const T *restrict g_ = (const T *)a[FA_GRAD];                                \
        T *restrict s0 = (T *)a[FA_STATE0];                                          \
        T *restrict s1 = FA_MAX_SLOTS > FA_STATE0 + 1 ? (T *)a[FA_STATE0 + 1] : 0;   \
        T *restrict s2 = FA_MAX_SLOTS > FA_STATE0 + 2 ? (T *)a[FA_STATE0 + 2] : 0;   \
        T *restrict s3 = FA_MAX_SLOTS > FA_STATE0 + 3 ? (T *)a[FA_STATE0 + 3] : 0;   \
        (void)s;                                                                     \
        if (s3) {                                                                    \
            FA_PROBE_LOOP(T, FA_PROBE_S(0) FA_PROBE_S(1) FA_PROBE_S(2) FA_PROBE_S(3)) \
        } else if (s2) {                                                             \
            FA_PROBE_LOOP(T, FA_PROBE_S(0) FA_PROBE_S(1) FA_PROBE_S(2))              \
        } else if (s1) {                                                             \
            FA_PROBE_LOOP(T, FA_PROBE_S(0) FA_PROBE_S(1))                            \
        } else {                                                                     \
            FA_PROBE_LOOP(T, FA_PROBE_S(0))                                          \
        }                                                                            \
    }

/* The read-only probe: the memory traffic of a pass that reads p, g and the state arrays
 * given (the first k state slots that are set, k = 0 .. FA_MAX_SLOTS - 2; p alone when g is
 * the same array) and writes nothing,
 * as the non-finite check's scan and a per-tensor kind's phase 1 do. One core streams reads
 * alone more slowly than reads with their writes back (AMD Zen 5, one thread, 10**7 float32:
 * four read streams 0.45 ns per element, 36 GB/s; the write probe's 28 B 0.52 ns, 54 GB/s),
 * so the roofline of a step with such a pass times this probe for it (benchmarks.peers). The
 * bits are XORed across the arrays and ORed into lanes (as the scan, _finite.h), the result
 * stored to a volatile local so that no load can be dropped; no array changes. */
#define FA_PROBE_READ_LOOP(UT, EXPR)                                                 \
    {                                                                                \
        enum { L_ = 128 / sizeof(UT) };                                              \
        UT lane_[L_] = {0}, all_ = 0;                                                \
        ptrdiff_t i = 0;                                                             \
        for (; i + L_ <= n; i += L_)                                                 \
            for (int l_ = 0; l_ < L_; l_++) {                                        \
                const ptrdiff_t j = i + l_;                                          \
                lane_[l_] |= EXPR;                                                   \
            }                                                                        \
        for (; i < n; i++) {                                                         \
            const ptrdiff_t j = i;                                                   \
            all_ |= EXPR;                                                            \
        }                                                                            \
        for (int l_ = 0; l_ < L_; l_++) all_ |= lane_[l_];                           \
        volatile UT sink_ = all_;                                                    \
        (void)sink_;                                                                 \
    }
#define FA_PROBE_READ_TYPED(UT)                                                      \
    {                                                                                \
        const UT *restrict r0 = (const UT *)a[FA_PARAM];                             \
        const UT *restrict r1 = (const UT *)a[FA_GRAD];                              \
        const UT *restrict r2 = (const UT *)a[FA_STATE0];                            \
        const UT *restrict r3 = FA_MAX_SLOTS > FA_STATE0 + 1 ? (const UT *)a[FA_STATE0 + 1] : 0; \
        const UT *restrict r4 = FA_MAX_SLOTS > FA_STATE0 + 2 ? (const UT *)a[FA_STATE0 + 2] : 0; \
        const UT *restrict r5 = FA_MAX_SLOTS > FA_STATE0 + 3 ? (const UT *)a[FA_STATE0 + 3] : 0; \
        if (r5) {                                                                    \
            FA_PROBE_READ_LOOP(UT, r0[j] ^ r1[j] ^ r2[j] ^ r3[j] ^ r4[j] ^ r5[j])     \
        } else if (r4) {                                                             \
            FA_PROBE_READ_LOOP(UT, r0[j] ^ r1[j] ^ r2[j] ^ r3[j] ^ r4[j])             \
        } else if (r3) {                                                             \
            FA_PROBE_READ_LOOP(UT, r0[j] ^ r1[j] ^ r2[j] ^ r3[j])                     \
        } else if (r2) {                                                             \
            FA_PROBE_READ_LOOP(UT, r0[j] ^ r1[j] ^ r2[j])                             \
        } else if (r1 != r0) {                                                       \
            FA_PROBE_READ_LOOP(UT, r0[j] ^ r1[j])                                     \
        } else { /* one array given as p and g: one stream */                        \
            FA_PROBE_READ_LOOP(UT, r0[j])                                             \
        }                                                                            \
    }
#define FA_PROBE_READ_BODY(T, SQRT, FABS, COUPLED, FLAG)                             \
    {                                                                                \
        (void)s;                                                                     \
        if (sizeof(T) == sizeof(uint32_t)) {                                         \
            FA_PROBE_READ_TYPED(uint32_t)                                            \
        } else {                                                                     \
            FA_PROBE_READ_TYPED(uint64_t)                                            \
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
/* The engine cuts a tensor into pieces of this many elements from its first (a multiple of
 * FA_Q8_BLOCK: no 8-bit block is split); a tensor's sums add its pieces' in order. */
#define FA_TENSOR_PIECE 16384

/* The loop of a per-tensor body: STEP per element i. With SUM, STEP stores element i's
 * NSUMS quantities as q[j][ii] (ii = i - b, in blocks of FA_TENSOR_BLOCK from b); each block's
 * are then added to the lanes of s->acc, element ii to lane ii % 8 (two loops, so that the
 * compiler vectorizes both: the update's and the lanes'). Each lane's sum is one chain of
 * dependent additions in a fixed order: with blocks of 64 (8 additions per lane) the chain
 * overlaps the next block's arithmetic; with blocks of 256 it ran 32 deep after each block
 * and phase 1 of LAMB cost 0.230 ns per element in L1 against 0.195 now (float32, AVX-512,
 * AMD Zen 5, tools/loop_l1_time.c; cautious Lion's 0.140 against 0.117; 16 and 32 were no
 * faster, 128 as fast in L1 but slower out of cache for cautious Lion). Full blocks have a
 * constant length, so the compiler drops their remainder code. */
#define FA_TENSOR_BLOCK 64
#define FA_TENSOR_SUM_BLOCK(NSUMS, STEP, len)                                        \
    for (ptrdiff_t ii = 0; ii < (len); ii++) {                                       \
        const ptrdiff_t i = b + ii;                                                  \
        STEP                                                                         \
    }                                                                                \
    for (int j = 0; j < (NSUMS); j++) {                                              \
        ptrdiff_t ii = 0;                                                            \
        for (; ii + FA_TENSOR_LANES <= (len); ii += FA_TENSOR_LANES)                 \
            for (int l = 0; l < FA_TENSOR_LANES; l++)                                \
                lane[j * FA_TENSOR_LANES + l] += q[j][ii + l];                       \
        for (int l = 0; ii < (len); ii++, l++) lane[j * FA_TENSOR_LANES + l] += q[j][ii]; \
    }
#define FA_TENSOR_LOOP(SUM, NSUMS, STEP)                                             \
    double q[FA_TENSOR_SUMS][FA_TENSOR_BLOCK];                                       \
    if (SUM) {                                                                       \
        double *restrict lane = s->acc;                                              \
        ptrdiff_t b = 0;                                                             \
        for (; b + FA_TENSOR_BLOCK <= n; b += FA_TENSOR_BLOCK) {                      \
            FA_TENSOR_SUM_BLOCK(NSUMS, STEP, FA_TENSOR_BLOCK)                        \
        }                                                                            \
        if (b < n) {                                                                 \
            const ptrdiff_t len = n - b;                                             \
            FA_TENSOR_SUM_BLOCK(NSUMS, STEP, len)                                    \
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

/* Cautious ADOPT (timm's Adopt(caution=True)): ADOPT's later step (FA_ADOPT_BODY) with
 * the momentum masked where m * g <= 0 and the rest scaled by tensor_step; m and v are
 * stored unmasked. Step 1 (adopt_first) has no mask, as in timm. */
#define FA_CAUTIOUS_ADOPT_BODY(T, SQRT, FABS, COUPLED, SUM)                          \
    {                                                                                \
        FA_PRELUDE(T, COUPLED)                                                       \
        FA_MOMENTS_DECL(T)                                                           \
        const T step_size = (T)s->step_size, eps = (T)s->eps;                        \
        const T clip = (T)s->clip, neg_clip = -clip;                                 \
        const T tstep = (T)s->tensor_step;                                           \
        FA_TENSOR_LOOP(SUM, 1,                                                       \
            FA_GRAD_AND_PARAM(T, COUPLED)                                            \
            FA_ADOPT_MOMENTUM(T, SQRT)                                               \
            const int agree = m * g > (T)0;                                          \
            if (SUM) {                                                               \
                q[0][ii] = agree ? 1.0 : 0.0;                                        \
            } else {                                                                 \
                m_[i] = m;                                                           \
                T masked = m * (agree ? tstep : (T)0);                               \
                p_[i] = p - step_size * masked;                                      \
                v_[i] = b2 * v + omb2 * g * g;                                       \
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
