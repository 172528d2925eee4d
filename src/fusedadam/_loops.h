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
    double beta3;            /* AdEMAMix: the slow EMA's decay of this step; Adan: n's */
    double one_minus_beta3;
    double slow_coef;        /* AdEMAMix: multiplies the slow EMA in the numerator */
    double diff_coef;        /* Adan: multiplies the gradient-difference EMA */
    double prox;             /* Adan (proximal decay): the param is divided by it; else 1 */
    double first;            /* Adan: 1 on step 1 (the previous gradient is this one) */
} fa_scalars;

/* Array slots of a loop call: the param, its gradient, then the state arrays in the order
 * of the algorithm's state names (fusedadam/_algorithms.py): at most FA_MAX_STATES (Adan's
 * four). The staged runner (_mixed.h) keeps one stack buffer per state slot. */
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
    FA_PAIR(X, ademamix, FA_ADEMAMIX_BODY, 0, __VA_ARGS__)                           \
    X(adan, FA_ADAN_BODY, 0, 0, __VA_ARGS__) X(adan_prox, FA_ADAN_BODY, 0, 1, __VA_ARGS__)

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

/* Bandwidth probe with a step's memory traffic and trivial arithmetic: read p, g and the
 * state arrays given (the first k state slots that are set, k = 1 .. FA_MAX_SLOTS - 2),
 * write p and them, in one pass. The fastest the memory system can run a step moving those
 * bytes (Lion: 1 state array, Adam: 2, AMSGrad: 3, ...). One loop per k, so each is
 * vectorised as a step's loop is. */
#define FA_PROBE_LOOP(T, STATES)                                                     \
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

#endif /* FUSEDADAM_LOOPS_H */
