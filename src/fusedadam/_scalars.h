/*
 * The per-step scalars of every algorithm: the only place they are defined. Given a
 * group's hyperparameters, the step number t >= 1 and this step's learning rate, one call
 * gives the loop kind to run and the scalars it reads, all computed in double with libm's
 * pow and sqrt. fusedadam/reference.py::step_scalars is the NumPy fallback's twin (the
 * same operations in the same order; tests compare the two field by field).
 */
#ifndef FUSEDADAM_SCALARS_H
#define FUSEDADAM_SCALARS_H

#include <math.h>
#include "_loops.h"

/* Algorithms, in the order of their numbers; Python reads the names (_kernels.ALGORITHMS). */
#define FA_ALGORITHMS(X) X(adam) X(adamax) X(nadam) X(radam) X(adabelief) X(lion) X(sparse_adam) \
    X(ademamix) X(adan) \
    X(adopt) X(adam_atan2) X(schedulefree) X(radam_schedulefree) X(lamb) X(stableadamw)
#define FA_ALGO_ENUM(name) FA_ALGO_##name,
enum { FA_ALGORITHMS(FA_ALGO_ENUM) FA_N_ALGORITHMS };
#define FA_ALGO_NAME(name) #name,
static const char *const fa_algorithm_names[FA_N_ALGORITHMS] = {FA_ALGORITHMS(FA_ALGO_NAME)};

/* A group's hyperparameters, as validated by fusedadam/_validation.py: X(type, name) of
 * every field but the algorithm, named as fusedadam/_algorithms.py::hyper_dict names them
 * (the extension fills the struct from that dict by these names: fa_hyper_fields). */
#define FA_HYPER_FIELDS(X)                                                                \
    X(int, amsgrad) X(int, decoupled) X(int, maximize) X(int, bias_correction)           \
    X(double, beta1) X(double, beta2) X(double, eps) X(double, eps_root)                 \
    X(double, weight_decay) X(double, beta1_decay) X(double, momentum_decay)             \
    X(double, beta3)          /* AdEMAMix: the slow EMA's decay; Adan: the third moment's */ \
    X(double, alpha)          /* AdEMAMix: the slow EMA's weight */                      \
    X(double, t_alpha_beta3)  /* AdEMAMix: warmup steps of alpha and beta3; 0: none */   \
    X(int, no_prox)           /* Adan: decoupled decay p *= 1 - lr wd, not p /= 1 + lr wd */ \
    X(int, adopt_clip)        /* ADOPT: clip the normalised gradient (clip_exp is not None) */ \
    X(double, clip_exp)       /* ADOPT: the clip of step t is (t - 1)**clip_exp */       \
    X(double, atan2_a) X(double, atan2_b) /* Adam-atan2: p -= lr a atan2(m^, b sqrt(v^)) */ \
    X(double, warmup_steps) X(double, r) X(double, weight_lr_power) /* Schedule-Free */  \
    X(int, silent_sgd_phase)  /* Schedule-Free RAdam */                                  \
    /* the per-tensor algorithms: cautious masking (Adam, Lion, ADOPT), LAMB's options,  \
     * StableAdamW's decouple_lr with its max_lr */                                      \
    X(int, cautious) X(int, grad_averaging) X(int, trust_clip) X(int, always_adapt)      \
    X(int, decouple_lr) X(double, max_lr)

#define FA_HYPER_DECLARE(type, name) type name;
typedef struct {
    int algorithm;
    FA_HYPER_FIELDS(FA_HYPER_DECLARE)
} fa_hyper;

/* Every field of FA_HYPER_FIELDS by name: where it is and whether it is an int (a flag)
 * or a double. */
typedef struct {
    const char *name;
    int is_int;
    size_t offset;
} fa_hyper_field;
#define FA_HYPER_IS_INT_int 1
#define FA_HYPER_IS_INT_double 0
#define FA_HYPER_ENTRY(type, name) {#name, FA_HYPER_IS_INT_##type, offsetof(fa_hyper, name)},
static const fa_hyper_field fa_hyper_fields[] = {FA_HYPER_FIELDS(FA_HYPER_ENTRY)};
#define FA_HYPER_COUNT(type, name) +1
enum { FA_N_HYPER_FIELDS = 0 FA_HYPER_FIELDS(FA_HYPER_COUNT) };

/* The per-param scalar state a step reads and writes besides its counter (the
 * registry's scalar_state, in order): NAdam's mu_product; Schedule-Free's lr_max and
 * weight_sum. */
#define FA_MAX_CARRY 2

/* What a step of one group needs besides its arrays: the loop kind, its scalars, and the
 * scalar state after this step (carry[0..FA_MAX_CARRY) in, carry_after out: NAdam's
 * product mu_1 * ... * mu_t; Schedule-Free's lr_max and weight_sum; unread and copied
 * through for the others). */
static int fa_step_scalars(const fa_hyper *h, double t, double lr, const double *carry,
                           fa_scalars *s, double *carry_after) {
    const int coupled = h->weight_decay != 0.0 && !h->decoupled;
    const double mu_product = carry[0];
    double bc1 = 1.0, bc2 = 1.0, beta1 = h->beta1;
    int kind;
    for (int j = 0; j < FA_MAX_CARRY; j++) carry_after[j] = carry[j];
    s->sign = h->maximize ? -1.0 : 1.0;
    s->weight_decay = h->decoupled ? 0.0 : h->weight_decay;
    s->decay = h->decoupled ? 1.0 - lr * h->weight_decay : 1.0;
    s->eps_root = 0.0;
    s->grad_coef = 0.0;
    s->beta3 = s->one_minus_beta3 = s->slow_coef = s->diff_coef = s->first = 0.0;
    s->prox = 1.0;
    s->clip = 0.0;
    s->m_scale = 0.0;
    s->v_scale = 0.0;
    s->bias_correction2 = 1.0;
    s->lerp_weight = 0.0;
    s->lerp_from_end = 0.0;
    s->y_step = 0.0;
    s->lr = lr;
    s->v_floor = 0.0;
    s->tensor_step = 1.0;
    s->tensor_decay = 1.0;
    s->acc = 0;
    if (h->algorithm == FA_ALGO_adam || h->algorithm == FA_ALGO_adamax) {
        beta1 = h->beta1 * pow(h->beta1_decay, t - 1.0);
        if (h->bias_correction) {
            bc1 = 1.0 - pow(h->beta1, t);
            bc2 = 1.0 - pow(h->beta2, t);
        }
    } else if (h->algorithm == FA_ALGO_lamb) {
        if (h->bias_correction) {
            bc1 = 1.0 - pow(h->beta1, t);
            bc2 = 1.0 - pow(h->beta2, t);
        }
    } else if (h->algorithm != FA_ALGO_lion && h->algorithm != FA_ALGO_schedulefree &&
               h->algorithm != FA_ALGO_radam_schedulefree && h->algorithm != FA_ALGO_stableadamw) {
        bc1 = 1.0 - pow(h->beta1, t);
        bc2 = 1.0 - pow(h->beta2, t);
    }
    s->beta1 = beta1;
    s->one_minus_beta1 = 1.0 - beta1;
    s->beta2 = h->beta2;
    s->one_minus_beta2 = 1.0 - h->beta2;
    /* Adam's eps-hat form: step_size = lr/bc1*sqrt(bc2), eps = eps*sqrt(bc2) (_loops.h). */
    s->step_size = lr / bc1 * sqrt(bc2);
    s->eps = h->eps * sqrt(bc2);
    switch (h->algorithm) {
    case FA_ALGO_adam:
        if (h->cautious && h->amsgrad)
            kind = coupled ? FA_KIND_cautious_amsgrad_l2 : FA_KIND_cautious_amsgrad;
        else if (h->cautious) kind = coupled ? FA_KIND_cautious_adam_l2 : FA_KIND_cautious_adam;
        else if (h->amsgrad) kind = coupled ? FA_KIND_amsgrad_l2 : FA_KIND_amsgrad;
        else kind = coupled ? FA_KIND_adam_l2 : FA_KIND_adam;
        break;
    case FA_ALGO_adamax:
        s->step_size = lr / bc1;
        s->eps = h->eps;
        kind = coupled ? FA_KIND_adamax_l2 : FA_KIND_adamax;
        break;
    case FA_ALGO_nadam: {
        /* torch.optim.NAdam: mu_t = beta1 (1 - 0.5 * 0.96^(t psi)). */
        double mu = h->beta1 * (1.0 - 0.5 * pow(0.96, t * h->momentum_decay));
        double mu_next = h->beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * h->momentum_decay));
        double product = mu_product * mu;
        double product_next = product * mu_next;
        s->grad_coef = lr * (1.0 - mu) / (1.0 - product) * sqrt(bc2);
        s->step_size = lr * mu_next / (1.0 - product_next) * sqrt(bc2);
        carry_after[0] = product;
        kind = coupled ? FA_KIND_nadam_l2 : FA_KIND_nadam;
        break;
    }
    case FA_ALGO_radam: {
        /* torch.optim.RAdam: rectify once the variance is tractable (rho_t > 5). */
        double rho_inf = 2.0 / (1.0 - h->beta2) - 1.0;
        double rho_t = rho_inf - 2.0 * t * pow(h->beta2, t) / bc2;
        if (rho_t > 5.0) {
            double rect = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                               ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
            s->step_size = lr * rect / bc1 * sqrt(bc2);
            s->eps = h->eps;
            kind = coupled ? FA_KIND_adam_l2 : FA_KIND_adam;
        } else {
            s->step_size = lr / bc1;
            s->eps = 0.0;
            kind = coupled ? FA_KIND_momentum_l2 : FA_KIND_momentum;
        }
        break;
    }
    case FA_ALGO_adabelief:
        s->eps_root = h->eps_root;
        kind = coupled ? FA_KIND_adabelief_l2 : FA_KIND_adabelief;
        break;
    case FA_ALGO_schedulefree:
    case FA_ALGO_radam_schedulefree: {
        /* schedulefree.AdamWScheduleFree and RAdamScheduleFree (their step, per group, in
         * their order): t = k + 1; the step's lr_t (below); lr_max the largest lr_t so far,
         * the average's weight t^r lr_max^weight_lr_power and c = weight / weight_sum (0
         * when the sum is 0, the package's ZeroDivisionError). The loop lerps y to z with
         * weight c as torch's lerp does (from y below 0.5, from z with c - 1 above), then
         * y += lr_t (beta1 (1 - c) - 1) gn and z -= lr_t gn. */
        double lr_t, lr_max, weight, weight_sum, ckp1;
        int normalized = 1;
        s->bias_correction2 = 1.0 - pow(h->beta2, t);
        if (h->algorithm == FA_ALGO_schedulefree) {
            /* AdamW: linear warmup of lr over warmup_steps */
            lr_t = lr * (t - 1.0 < h->warmup_steps ? t / h->warmup_steps : 1.0);
        } else {
            /* RAdam: lr times the rectification once rho_t > 4; before, lr (or 0 with
             * silent_sgd_phase) on the raw gradient: the loop kind without normalization */
            double rho_inf = 2.0 / (1.0 - h->beta2) - 1.0;
            double rho_t = rho_inf - 2.0 * t * pow(h->beta2, t) / s->bias_correction2;
            double rect;
            if (rho_t > 4.0) {
                rect = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                           ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5);
            } else {
                rect = h->silent_sgd_phase ? 0.0 : 1.0;
                normalized = 0;
            }
            lr_t = lr * rect;
        }
        lr_max = lr_t > carry[0] ? lr_t : carry[0];
        weight = pow(t, h->r) * pow(lr_max, h->weight_lr_power);
        weight_sum = carry[1] + weight;
        ckp1 = weight_sum != 0.0 ? weight / weight_sum : 0.0;
        carry_after[0] = lr_max;
        carry_after[1] = weight_sum;
        s->step_size = lr_t;
        s->eps = h->eps;
        s->weight_decay = h->weight_decay;
        s->decay = 1.0;
        s->lerp_from_end = fabs(ckp1) < 0.5 ? 0.0 : 1.0;
        s->lerp_weight = fabs(ckp1) < 0.5 ? ckp1 : ckp1 - 1.0;
        s->y_step = lr_t * (h->beta1 * (1.0 - ckp1) - 1.0);
        if (normalized)
            kind = h->weight_decay != 0.0 ? FA_KIND_schedulefree_l2 : FA_KIND_schedulefree;
        else
            kind = h->weight_decay != 0.0 ? FA_KIND_schedulefree_sgd_l2 : FA_KIND_schedulefree_sgd;
        break;
    }
    case FA_ALGO_sparse_adam:
        /* torch.optim.SparseAdam's order: lr * sqrt(bc2) / bc1; eps is not scaled. Its rows
         * are no dense kind: FA_N_KINDS says so. */
        s->step_size = lr * sqrt(bc2) / bc1;
        s->eps = h->eps;
        kind = FA_N_KINDS;
        break;
    case FA_ALGO_ademamix: {
        /* pytorch_optimizer.AdEMAMix: alpha_t = min(t alpha / T, alpha) and
         * beta3_t = min(exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3) with
         * T = t_alpha_beta3 (validated: b1, b3 > 0 then), in its order of operations */
        double alpha = h->alpha, beta3 = h->beta3;
        if (h->t_alpha_beta3 > 0.0) {
            double ramp = t * h->alpha / h->t_alpha_beta3;
            double log_beta1 = log(h->beta1), log_beta3 = log(h->beta3);
            double warm = exp(log_beta1 * log_beta3 /
                              ((1.0 - t / h->t_alpha_beta3) * log_beta3 +
                               (t / h->t_alpha_beta3) * log_beta1));
            alpha = h->alpha < ramp ? h->alpha : ramp;
            beta3 = h->beta3 < warm ? h->beta3 : warm;
        }
        s->beta3 = beta3;
        s->one_minus_beta3 = 1.0 - beta3;
        s->slow_coef = lr * alpha * sqrt(bc2);
        kind = coupled ? FA_KIND_ademamix_l2 : FA_KIND_ademamix;
        break;
    }
    case FA_ALGO_adan: {
        /* timm.optim.Adan: n is corrected by sqrt(1 - b3^t) in the denominator, the
         * difference term's step is lr b2 / (1 - b2^t) */
        double bc3 = 1.0 - pow(h->beta3, t);
        s->beta3 = h->beta3;
        s->one_minus_beta3 = 1.0 - h->beta3;
        s->step_size = lr / bc1 * sqrt(bc3);
        s->diff_coef = lr * h->beta2 / bc2 * sqrt(bc3);
        s->eps = h->eps * sqrt(bc3);
        s->first = t == 1.0 ? 1.0 : 0.0;
        if (!h->no_prox) {
            s->decay = 1.0;
            s->prox = 1.0 + lr * h->weight_decay;
        }
        kind = h->no_prox ? FA_KIND_adan : FA_KIND_adan_prox;
        break;
    }
    case FA_ALGO_adopt:
        /* timm.optim.Adopt: no bias correction; step 1 only sets v = g g (no decay). */
        s->step_size = lr;
        s->eps = h->eps;
        if (t <= 1.0) {
            s->decay = 1.0;
            kind = coupled ? FA_KIND_adopt_first_l2 : FA_KIND_adopt_first;
        } else {
            s->clip = h->adopt_clip ? pow(t - 1.0, h->clip_exp) : HUGE_VAL;
            if (h->cautious) kind = coupled ? FA_KIND_cautious_adopt_l2 : FA_KIND_cautious_adopt;
            else kind = coupled ? FA_KIND_adopt_l2 : FA_KIND_adopt;
        }
        break;
    case FA_ALGO_adam_atan2:
        /* adam_atan2_pytorch.AdamAtan2: decoupled weight decay only (validated), no eps. */
        s->step_size = lr * h->atan2_a;
        s->eps = 0.0;
        s->m_scale = 1.0 / bc1;
        s->v_scale = h->atan2_b * h->atan2_b / bc2;
        kind = FA_KIND_adam_atan2;
        break;
    case FA_ALGO_lamb:
        /* timm's Lamb: m = beta1 m + beta3 g, beta3 = 1 - beta1 (grad_averaging) or 1 */
        s->one_minus_beta1 = h->grad_averaging ? 1.0 - h->beta1 : 1.0;
        if (h->weight_decay != 0.0 || h->always_adapt) {
            s->step_size = sqrt(bc2) / bc1;   /* the direction's scale; lr is per tensor */
            kind = coupled ? FA_KIND_lamb_l2 : FA_KIND_lamb;
        } else {                              /* no adaptation: an Adam step */
            kind = FA_KIND_adam;
        }
        break;
    case FA_ALGO_stableadamw: {
        /* torch-optimi: debiased betas beta_hat = (beta^t - beta) / (beta^t - 1), no bias
         * correction; the decay is per tensor (it uses the clipped lr) */
        double p1 = pow(h->beta1, t), p2 = pow(h->beta2, t);
        s->beta1 = (p1 - h->beta1) / (p1 - 1.0);
        s->one_minus_beta1 = 1.0 - s->beta1;
        s->beta2 = (p2 - h->beta2) / (p2 - 1.0);
        s->one_minus_beta2 = 1.0 - s->beta2;
        s->step_size = lr;
        s->eps = h->eps;
        s->v_floor = h->eps * h->eps;
        s->weight_decay = 0.0;
        s->decay = 1.0;
        kind = FA_KIND_stableadamw;
        break;
    }
    default: /* FA_ALGO_lion: decoupled weight decay only (validated), no bias correction */
        s->step_size = lr;
        s->eps = 0.0;
        kind = h->cautious ? FA_KIND_cautious_lion : FA_KIND_lion;
        break;
    }
    return kind;
}

/* The phase 1 kind of a per-tensor kind (_loops.h), or -1 for an elementwise kind. */
#define FA_SUM_KIND_CASE(X, name, ...) case FA_KIND_##name: return FA_KIND_sum_##name;
static int fa_sum_kind(int kind)
{
    switch (kind) {
    FA_TENSOR_KINDS(FA_SUM_KIND_CASE, ~)
    default: return -1;
    }
}

/* A tensor's phase 2 scalars from its phase 1 sums (n elements), in double:
 *   LAMB: tensor_step = lr * trust, trust = |p| / |u| (1 when either is 0, NaN included,
 *         as timm's torch.where), at most 1 with trust_clip;
 *   StableAdamW: tensor_step = lr / max(1, rms), rms = sqrt(sum / n), and tensor_decay =
 *         1 - tensor_step * weight_decay (decouple_lr: 1 - tensor_step / max_lr * weight_decay);
 *   cautious: tensor_step = 1 / max(count / n, 1e-3). */
static void fa_tensor_scalars(const fa_hyper *h, int kind, const double *sums, ptrdiff_t n,
                              double lr, double *step, double *decay)
{
    *decay = 1.0;
    switch (kind) {
    case FA_KIND_lamb:
    case FA_KIND_lamb_l2: {
        double w_norm = sqrt(sums[0]), u_norm = sqrt(sums[1]);
        double trust = (w_norm > 0.0 && u_norm > 0.0) ? w_norm / u_norm : 1.0;
        if (h->trust_clip && trust > 1.0) trust = 1.0;
        *step = lr * trust;
        break;
    }
    case FA_KIND_stableadamw: {
        double rms = sqrt(sums[0] / (double)n);
        double clipped = lr / (rms > 1.0 ? rms : 1.0);
        *step = clipped;
        if (h->weight_decay != 0.0)
            *decay = h->decouple_lr ? 1.0 - clipped / h->max_lr * h->weight_decay
                                    : 1.0 - clipped * h->weight_decay;
        break;
    }
    default: { /* cautious */
        double mean = sums[0] / (double)n;
        *step = 1.0 / (mean > 1e-3 ? mean : 1e-3);
        break;
    }
    }
}

#endif /* FUSEDADAM_SCALARS_H */
