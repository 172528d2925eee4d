"""Pure-NumPy twin of every compiled loop and of the per-step scalars.

The fallback backend and the cross-check. :func:`step_scalars` is the twin of
``fa_step_scalars`` (``_scalars.h``), compared field by field with it in the tests; each
``..._update`` function updates its arrays in place from those scalars, cast to the array's
dtype, with the IEEE operations of the matching body of ``_loops.h`` in the same order.
NumPy's ``+``, ``-``, ``*``, ``/`` and ``sqrt`` are correctly rounded and the extension is
built with ``-ffp-contract=off``, so the two agree bit for bit on every instruction set and
for every thread count.
"""

import math
from typing import Any, Callable, Dict, List, Tuple

import ml_dtypes
import numpy as np

from fusedadam import _constants

__all__ = [
    "step_scalars",
    "run",
    "first_nonfinite",
    "scan",
    "clip_coefficient",
    "chunk_size",
    "adam_update",
    "adamax_update",
    "nadam_update",
    "momentum_update",
    "adabelief_update",
    "lion_update",
    "ademamix_update",
    "adan_update",
    "adopt_first_update",
    "adopt_update",
    "atan2",
    "adam_atan2_update",
    "schedulefree_update",
    "schedulefree_sgd_update",
    "probe_update",
    "sparse_adam_update",
    "q8_values",
    "q8_dequantize",
    "q8_quantize",
    "q8c_values",
]


# Overflow, inf - inf and the like are computed as IEEE says, silently, as the compiled
# loops do: what a step does with NaN/inf gradients is the ``nonfinite`` policy's call.
_quiet = np.errstate(all="ignore")


def step_scalars(hyper, t, lr, carry=1.0):
    """``(loop kind, scalars, carry after)`` of step ``t`` with learning rate ``lr``.

    The twin of ``fa_step_scalars`` in ``_scalars.h``: the same double operations in the
    same order (Python floats are C doubles, ``**`` is libm's pow). ``hyper`` is the dict
    of ``fusedadam._algorithms.hyper_dict``. ``carry`` is the per-param scalar state in the
    registry's order (NAdam's ``mu_product``; Schedule-Free's ``(lr_max, weight_sum)``): a
    number, or a tuple of at most two; the carry after the step comes back in the same form.
    """
    single = not isinstance(carry, (tuple, list))
    carry_in = (float(carry),) if single else tuple(float(c) for c in carry)
    carry_in = carry_in + (1.0,) * (_constants.MAX_CARRY - len(carry_in))
    kind, s, after = _step_scalars(hyper, t, lr, carry_in)
    return kind, s, after[0] if single else after[: len(carry)]


def _step_scalars(hyper, t, lr, carry):
    # the fields of the three-beta algorithms: absent (0) in a hyper dict of the others
    h = {"beta3": 0.0, "alpha": 0.0, "t_alpha_beta3": 0.0, "no_prox": False, **hyper}
    mu_product = carry[0]
    after = list(carry)
    algorithm = h["algorithm"]
    t = float(t)
    coupled = h["weight_decay"] != 0.0 and not h["decoupled"]
    bc1 = bc2 = 1.0
    beta1 = h["beta1"]
    s = {
        "sign": -1.0 if h["maximize"] else 1.0,
        "weight_decay": 0.0 if h["decoupled"] else h["weight_decay"],
        "decay": 1.0 - lr * h["weight_decay"] if h["decoupled"] else 1.0,
        "eps_root": 0.0,
        "grad_coef": 0.0,
        "beta3": 0.0,
        "one_minus_beta3": 0.0,
        "slow_coef": 0.0,
        "diff_coef": 0.0,
        "prox": 1.0,
        "first": 0.0,
        "clip": 0.0,
        "m_scale": 0.0,
        "v_scale": 0.0,
        "bias_correction2": 1.0,
        "lerp_weight": 0.0,
        "lerp_from_end": 0.0,
        "y_step": 0.0,
        "lr": lr,
        "v_floor": 0.0,
    }
    if algorithm in ("adam", "adamax"):
        beta1 = h["beta1"] * h["beta1_decay"] ** (t - 1.0)
        if h["bias_correction"]:
            bc1 = 1.0 - h["beta1"] ** t
            bc2 = 1.0 - h["beta2"] ** t
    elif algorithm == "lamb":
        if h["bias_correction"]:
            bc1 = 1.0 - h["beta1"] ** t
            bc2 = 1.0 - h["beta2"] ** t
    elif algorithm not in ("lion", "schedulefree", "radam_schedulefree", "stableadamw"):
        bc1 = 1.0 - h["beta1"] ** t
        bc2 = 1.0 - h["beta2"] ** t
    s["beta1"] = beta1
    s["one_minus_beta1"] = 1.0 - beta1
    s["beta2"] = h["beta2"]
    s["one_minus_beta2"] = 1.0 - h["beta2"]
    s["step_size"] = lr / bc1 * math.sqrt(bc2)
    s["eps"] = h["eps"] * math.sqrt(bc2)
    suffix = "_l2" if coupled else ""
    if algorithm == "adam":
        if h["cautious"]:
            kind = ("cautious_amsgrad" if h["amsgrad"] else "cautious_adam") + suffix
        else:
            kind = ("amsgrad" if h["amsgrad"] else "adam") + suffix
    elif algorithm == "adamax":
        s["step_size"] = lr / bc1
        s["eps"] = h["eps"]
        kind = "adamax" + suffix
    elif algorithm == "nadam":
        mu = h["beta1"] * (1.0 - 0.5 * 0.96 ** (t * h["momentum_decay"]))
        mu_next = h["beta1"] * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * h["momentum_decay"]))
        product = mu_product * mu
        product_next = product * mu_next
        s["grad_coef"] = lr * (1.0 - mu) / (1.0 - product) * math.sqrt(bc2)
        s["step_size"] = lr * mu_next / (1.0 - product_next) * math.sqrt(bc2)
        after[0] = product
        kind = "nadam" + suffix
    elif algorithm == "radam":
        rho_inf = 2.0 / (1.0 - h["beta2"]) - 1.0
        rho_t = rho_inf - 2.0 * t * h["beta2"] ** t / bc2
        if rho_t > 5.0:
            rect = math.sqrt(
                (rho_t - 4.0)
                * (rho_t - 2.0)
                * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
            )
            s["step_size"] = lr * rect / bc1 * math.sqrt(bc2)
            s["eps"] = h["eps"]
            kind = "adam" + suffix
        else:
            s["step_size"] = lr / bc1
            s["eps"] = 0.0
            kind = "momentum" + suffix
    elif algorithm == "adabelief":
        s["eps_root"] = h["eps_root"]
        kind = "adabelief" + suffix
    elif algorithm in ("schedulefree", "radam_schedulefree"):
        normalized = True
        s["bias_correction2"] = 1.0 - h["beta2"] ** t
        if algorithm == "schedulefree":
            warmup = h.get("warmup_steps", 0.0)
            lr_t = lr * (t / warmup if t - 1.0 < warmup else 1.0)
        else:
            rho_inf = 2.0 / (1.0 - h["beta2"]) - 1.0
            rho_t = rho_inf - 2.0 * t * h["beta2"] ** t / s["bias_correction2"]
            if rho_t > 4.0:
                rect = _pow(
                    (rho_t - 4.0)
                    * (rho_t - 2.0)
                    * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                    0.5,
                )
            else:
                rect = 0.0 if h.get("silent_sgd_phase", False) else 1.0
                normalized = False
            lr_t = lr * rect
        lr_max = lr_t if lr_t > carry[0] else carry[0]
        weight = _pow(t, h.get("r", 0.0)) * _pow(lr_max, h.get("weight_lr_power", 0.0))
        weight_sum = carry[1] + weight
        ckp1 = weight / weight_sum if weight_sum != 0.0 else 0.0
        after[0], after[1] = lr_max, weight_sum
        s["step_size"] = lr_t
        s["eps"] = h["eps"]
        s["weight_decay"] = h["weight_decay"]
        s["decay"] = 1.0
        small = abs(ckp1) < 0.5
        s["lerp_from_end"] = 0.0 if small else 1.0
        s["lerp_weight"] = ckp1 if small else ckp1 - 1.0
        s["y_step"] = lr_t * (h["beta1"] * (1.0 - ckp1) - 1.0)
        kind = "schedulefree" if normalized else "schedulefree_sgd"
        kind += "_l2" if h["weight_decay"] != 0.0 else ""
    elif algorithm == "sparse_adam":
        s["step_size"] = lr * math.sqrt(bc2) / bc1
        s["eps"] = h["eps"]
        kind = "sparse_rows"
    elif algorithm == "ademamix":
        alpha, beta3 = h["alpha"], h["beta3"]
        if h["t_alpha_beta3"] > 0.0:
            period = h["t_alpha_beta3"]
            ramp = t * h["alpha"] / period
            log_beta1, log_beta3 = math.log(h["beta1"]), math.log(h["beta3"])
            warm = math.exp(
                log_beta1 * log_beta3 / ((1.0 - t / period) * log_beta3 + (t / period) * log_beta1)
            )
            alpha = min(ramp, h["alpha"])
            beta3 = min(warm, h["beta3"])
        s["beta3"] = beta3
        s["one_minus_beta3"] = 1.0 - beta3
        s["slow_coef"] = lr * alpha * math.sqrt(bc2)
        kind = "ademamix" + suffix
    elif algorithm == "adan":
        bc3 = 1.0 - h["beta3"] ** t
        s["beta3"] = h["beta3"]
        s["one_minus_beta3"] = 1.0 - h["beta3"]
        s["step_size"] = lr / bc1 * math.sqrt(bc3)
        s["diff_coef"] = lr * h["beta2"] / bc2 * math.sqrt(bc3)
        s["eps"] = h["eps"] * math.sqrt(bc3)
        s["first"] = 1.0 if t == 1.0 else 0.0
        if not h["no_prox"]:
            s["decay"] = 1.0
            s["prox"] = 1.0 + lr * h["weight_decay"]
        kind = "adan" if h["no_prox"] else "adan_prox"
    elif algorithm == "adopt":
        s["step_size"] = lr
        s["eps"] = h["eps"]
        if t <= 1.0:
            s["decay"] = 1.0
            kind = "adopt_first" + suffix
        else:
            s["clip"] = (t - 1.0) ** h["clip_exp"] if h["adopt_clip"] else math.inf
            kind = ("cautious_adopt" if h["cautious"] else "adopt") + suffix
    elif algorithm == "adam_atan2":
        s["step_size"] = lr * h["atan2_a"]
        s["eps"] = 0.0
        s["m_scale"] = 1.0 / bc1
        s["v_scale"] = h["atan2_b"] * h["atan2_b"] / bc2
        kind = "adam_atan2"
    elif algorithm == "lamb":
        s["one_minus_beta1"] = 1.0 - h["beta1"] if h["grad_averaging"] else 1.0
        if h["weight_decay"] != 0.0 or h["always_adapt"]:
            s["step_size"] = math.sqrt(bc2) / bc1
            kind = "lamb" + suffix
        else:
            kind = "adam"
    elif algorithm == "stableadamw":
        p1, p2 = h["beta1"] ** t, h["beta2"] ** t
        s["beta1"] = (p1 - h["beta1"]) / (p1 - 1.0)
        s["one_minus_beta1"] = 1.0 - s["beta1"]
        s["beta2"] = (p2 - h["beta2"]) / (p2 - 1.0)
        s["one_minus_beta2"] = 1.0 - s["beta2"]
        s["step_size"] = lr
        s["eps"] = h["eps"]
        s["v_floor"] = h["eps"] * h["eps"]
        s["weight_decay"] = 0.0
        s["decay"] = 1.0
        kind = "stableadamw"
    else:  # lion
        s["step_size"] = lr
        s["eps"] = 0.0
        kind = "cautious_lion" if h["cautious"] else "lion"
    return kind, s, tuple(after)


def _pow(x, y):
    """libm's pow, as the C rule calls it (Python's ``**`` on floats): +inf where it
    overflows (``**`` raises there; the bases here are >= 0)."""
    try:
        return x**y
    except OverflowError:
        return math.inf


def _cast(dtype, scalars, *names):
    return [dtype.type(scalars[name]) for name in names]


def _gradient(param, grad, scalars, coupled):
    """The prelude of every kind: sign, L2 term (on the param before decay), decay."""
    sign, weight_decay, decay = _cast(param.dtype, scalars, "sign", "weight_decay", "decay")
    g = grad * sign
    if coupled:
        g = g + weight_decay * param
    param *= decay
    return g


def _first_moment(g, exp_avg, b1, omb1):
    """m = b1 m + (1 - b1) g, in place."""
    exp_avg *= b1
    exp_avg += omb1 * g


def _divided_step(param, update, second, eps):
    """p -= update / (sqrt(second) + eps), in place (``update`` is consumed)."""
    denom = np.sqrt(second)
    denom += eps
    update /= denom
    param -= update


def _moments(g, exp_avg, exp_avg_sq, scalars):
    """m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g g, in place."""
    b1, omb1, b2, omb2 = _cast(g.dtype, scalars, "beta1", "one_minus_beta1", "beta2",
                               "one_minus_beta2")  # fmt: skip
    _first_moment(g, exp_avg, b1, omb1)
    g_sq = omb2 * g
    g_sq *= g
    exp_avg_sq *= b2
    exp_avg_sq += g_sq


@_quiet
def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, coupled):
    """Adam (AMSGrad when ``max_exp_avg_sq`` is given; RAdam's rectified step), in place:
    ``p -= step_size * m / (sqrt(v) + eps)`` after the moments."""
    g = _gradient(param, grad, scalars, coupled)
    _moments(g, exp_avg, exp_avg_sq, scalars)
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size, eps = _cast(param.dtype, scalars, "step_size", "eps")
    _divided_step(param, step_size * exp_avg, v, eps)


@_quiet
def adamax_update(param, grad, exp_avg, exp_inf, scalars, coupled):
    """Adamax, in place: ``u = max(beta2 * u, |g| + eps)``, ``p -= step_size * m / u``."""
    g = _gradient(param, grad, scalars, coupled)
    b1, omb1, b2, step_size, eps = _cast(param.dtype, scalars, "beta1", "one_minus_beta1",
                                         "beta2", "step_size", "eps")  # fmt: skip
    _first_moment(g, exp_avg, b1, omb1)
    exp_inf *= b2
    abs_g = np.abs(g)
    abs_g += eps
    np.maximum(exp_inf, abs_g, out=exp_inf)
    update = step_size * exp_avg
    update /= exp_inf
    param -= update


@_quiet
def nadam_update(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """NAdam, in place: ``p -= (grad_coef * g + step_size * m) / (sqrt(v) + eps)``."""
    g = _gradient(param, grad, scalars, coupled)
    _moments(g, exp_avg, exp_avg_sq, scalars)
    grad_coef, step_size, eps = _cast(param.dtype, scalars, "grad_coef", "step_size", "eps")
    update = grad_coef * g
    update += step_size * exp_avg
    _divided_step(param, update, exp_avg_sq, eps)


@_quiet
def momentum_update(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """RAdam's unrectified step, in place: the moments advance, ``p -= step_size * m``."""
    g = _gradient(param, grad, scalars, coupled)
    _moments(g, exp_avg, exp_avg_sq, scalars)
    (step_size,) = _cast(param.dtype, scalars, "step_size")
    param -= step_size * exp_avg


@_quiet
def adabelief_update(param, grad, exp_avg, exp_avg_var, scalars, coupled):
    """AdaBelief, in place: ``s = b2 s + (1 - b2)(g - m)^2 + eps_root`` with the new m,
    ``p -= step_size * m / (sqrt(s) + eps)``."""
    g = _gradient(param, grad, scalars, coupled)
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size", "eps",
             "eps_root")  # fmt: skip
    b1, omb1, b2, omb2, step_size, eps, eps_root = _cast(param.dtype, scalars, *names)
    _first_moment(g, exp_avg, b1, omb1)
    surprise = g - exp_avg
    surprise_sq = omb2 * surprise
    surprise_sq *= surprise
    exp_avg_var *= b2
    exp_avg_var += surprise_sq
    exp_avg_var += eps_root
    _divided_step(param, step_size * exp_avg, exp_avg_var, eps)


@_quiet
def lion_update(param, grad, exp_avg, scalars, coupled):
    """Lion, in place: ``p -= step_size * sign(b1 m + (1 - b1) g)``, then
    ``m = b2 m + (1 - b2) g``. sign keeps +-0 and NaN as they are (``_loops.h``)."""
    g = _gradient(param, grad, scalars, coupled)
    b1, omb1, b2, omb2, step_size = _cast(param.dtype, scalars, "beta1", "one_minus_beta1",
                                          "beta2", "one_minus_beta2", "step_size")  # fmt: skip
    c = b1 * exp_avg
    c += omb1 * g
    one = param.dtype.type(1)
    direction = np.where(c > 0, one, np.where(c < 0, -one, c))
    param -= step_size * direction
    _first_moment(g, exp_avg, b2, omb2)


@_quiet
def schedulefree_update(param, grad, z, exp_avg_sq, scalars, coupled):
    """Schedule-Free AdamW, in place (the param holds y): ``v = b2 v + (1 - b2) g g``,
    ``gn = g / (sqrt(v / bc2) + eps)`` (``+ wd y`` when coupled), ``y = lerp(y, z, c)``
    as torch's lerp, ``y += y_step gn``, ``z -= lr_t gn``."""
    _schedulefree(param, grad, z, exp_avg_sq, scalars, coupled, True)


@_quiet
def schedulefree_sgd_update(param, grad, z, exp_avg_sq, scalars, coupled):
    """Schedule-Free RAdam before its rectification, in place: as
    :func:`schedulefree_update` with ``gn = g`` (``v`` still advances)."""
    _schedulefree(param, grad, z, exp_avg_sq, scalars, coupled, False)


def _schedulefree(param, grad, z, exp_avg_sq, scalars, coupled, normalized):
    sign, weight_decay = _cast(param.dtype, scalars, "sign", "weight_decay")
    names = ("beta2", "one_minus_beta2", "bias_correction2", "eps", "lerp_weight", "y_step",
             "step_size")  # fmt: skip
    b2, omb2, bc2, eps, lerp_weight, y_step, z_step = _cast(param.dtype, scalars, *names)
    g = grad * sign
    g_sq = omb2 * g
    g_sq *= g
    exp_avg_sq *= b2
    exp_avg_sq += g_sq
    if normalized:
        denom = np.sqrt(exp_avg_sq / bc2)  # (no out=: a 0-d param's temporaries are scalars)
        denom += eps
        gn = g / denom
    else:
        gn = g.copy()
    if coupled:
        gn += weight_decay * param
    diff = z - param
    diff *= lerp_weight
    if scalars["lerp_from_end"] != 0.0:
        param[...] = z
    param += diff
    param += y_step * gn
    gn *= z_step
    z -= gn


@_quiet
def ademamix_update(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, scalars, coupled):
    """AdEMAMix, in place: Adam's moments, ``s = b3_t s + (1 - b3_t) g``, then
    ``p -= (step_size * m + slow_coef * s) / (sqrt(v) + eps)``."""
    g = _gradient(param, grad, scalars, coupled)
    _moments(g, exp_avg, exp_avg_sq, scalars)
    b3, omb3, step_size, slow_coef, eps = _cast(param.dtype, scalars, "beta3", "one_minus_beta3",
                                                "step_size", "slow_coef", "eps")  # fmt: skip
    _first_moment(g, exp_avg_slow, b3, omb3)
    update = step_size * exp_avg
    update += slow_coef * exp_avg_slow
    _divided_step(param, update, exp_avg_sq, eps)


@_quiet
def adan_update(param, grad, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, scalars, prox):
    """Adan, in place: ``d = g - g_prev`` (0 on the first step), ``w = g + b2 d``,
    ``m = b1 m + (1 - b1) g``, ``dm = b2 dm + (1 - b2) d``, ``n = b3 n + (1 - b3) w w``,
    ``p -= (step_size * m + diff_coef * dm) / (sqrt(n) + eps)``, then ``p /= prox`` with
    ``prox`` (the proximal decay); ``neg_pre_grad = -g``."""
    g = _gradient(param, grad, scalars, False)
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3", "one_minus_beta3",
             "step_size", "diff_coef", "eps", "prox")  # fmt: skip
    b1, omb1, b2, omb2, b3, omb3, step_size, diff_coef, eps, prox_div = _cast(
        param.dtype, scalars, *names
    )
    neg_prev = -g if scalars["first"] != 0.0 else neg_pre_grad
    d = neg_prev + g
    _first_moment(g, exp_avg, b1, omb1)
    _first_moment(d, exp_avg_diff, b2, omb2)
    w = b2 * d
    w += g
    w_sq = omb3 * w
    w_sq *= w
    exp_avg_sq *= b3
    exp_avg_sq += w_sq
    np.negative(g, out=neg_pre_grad)
    update = step_size * exp_avg
    update += diff_coef * exp_avg_diff
    _divided_step(param, update, exp_avg_sq, eps)
    if prox:
        param /= prox_div


def _adan_prox_update(param, grad, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, scalars,
                      coupled):  # fmt: skip
    """Adan with the proximal decay (the ``adan_prox`` kind; Adan has no L2 term)."""
    adan_update(param, grad, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, scalars, True)


@_quiet
def adopt_first_update(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """ADOPT's first step, in place: ``v = v + g * g`` (v starts at zero); the param and
    ``m`` do not move (timm's special case; the L2 term is in ``g``)."""
    sign, weight_decay = _cast(param.dtype, scalars, "sign", "weight_decay")
    g = grad * sign
    if coupled:
        g = g + weight_decay * param
    g_sq = g * g
    exp_avg_sq += g_sq


@_quiet
def adopt_update(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """ADOPT's later steps, in place: ``n = clip(g / max(sqrt(v), eps))`` with the previous
    ``v``, ``m = b1 m + (1 - b1) n``, ``p -= step_size * m``, then ``v = b2 v + (1 - b2) g g``."""
    g = _gradient(param, grad, scalars, coupled)
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size", "eps",
             "clip")  # fmt: skip
    b1, omb1, b2, omb2, step_size, eps, clip = _cast(param.dtype, scalars, *names)
    denom = np.sqrt(exp_avg_sq)
    denom = np.maximum(denom, eps)  # (no out=: a 0-d param's temporaries are scalars)
    normed = g / denom
    normed = np.maximum(normed, -clip)
    normed = np.minimum(normed, clip)
    _first_moment(normed, exp_avg, b1, omb1)
    param -= step_size * exp_avg
    g_sq = omb2 * g
    g_sq *= g
    exp_avg_sq *= b2
    exp_avg_sq += g_sq


# FA_ATAN2_POLY of _loops.h: Cephes' atan coefficients (S. L. Moshier), the double rational's
# numerator P and denominator Q (leading 1 omitted), the float polynomial; highest power first.
_ATAN_P64 = (-8.750608600031904122785e-1, -1.615753718733365076637e1,
             -7.500855792314704667340e1, -1.228866684490136173410e2,
             -6.485021904942025371773e1)  # fmt: skip
_ATAN_Q64 = (2.485846490142306297962e1, 1.650270098316988542046e2,
             4.328810604912902668951e2, 4.853903996359136964868e2,
             1.945506571482613964425e2)  # fmt: skip
_ATAN_P32 = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)
# (nearest value, rest) of pi, 3 pi/4, pi/2, pi/4: the value is the dtype's rounding of
# the first number, the rest the second rounded to it (float64, float32 rests).
_PI = (3.141592653589793, 1.2246467991473532e-16, -8.742278000372485e-08)
_PI34 = (2.356194490192345, 9.184850993605148e-17, -5.962440227403018e-09)
_PIO2 = (1.5707963267948966, 6.123233995736766e-17, -4.3711390001862426e-08)
_PIO4 = (0.7853981633974483, 3.061616997868383e-17, -2.1855695000931213e-08)


@_quiet
def atan2(y, x):
    """``atan2(y, x)`` elementwise, in the dtype of the arrays (float32 or float64, both
    the same): the one implementation the compiled loops also run (``FA_ATAN2_REDUCE``,
    ``_POLY``, ``_FINISH`` in ``_loops.h``), built from IEEE operations in the same
    order, so that both give the same bits on every instruction set. IEEE's special
    values, as ``numpy.arctan2``; the error is measured in tests/test_algo_adam_atan2.py
    (docs/algorithms_adopt_atan2.md)."""
    y = np.asarray(y)
    x = np.asarray(x)
    t = y.dtype.type
    f32 = y.dtype == np.float32
    lo = 2 if f32 else 1
    one, zero = t(1), t(0)
    ay, ax = np.abs(y), np.abs(x)
    # scaled exactly: by 1/16 when one is huge (|y| + |x| cannot overflow), by 2**600
    # (2**60 float) when both are tiny (the region tests are not rounded as subnormals);
    # the larger one decides (FA_MAX_BOUND's: a NaN partner makes the result that NaN)
    huge = t(1e37 if f32 else 1e300)
    tiny = t(2.0**-100 if f32 else 2.0**-900)
    up = t(2.0**60 if f32 else 2.0**600)
    larger = np.where(ay < ax, ax, ay)
    factor = np.where(larger < tiny, up, one)
    factor = np.where(larger > huge, t(0.0625), factor)
    sy, sx = ay * factor, ax * factor
    far = sy > t(2.41421356237309504880) * sx
    mid = sy > t(0.4142135623730950 if f32 else 0.66) * sx  # far ones included
    x_sign = np.copysign(one, x)
    back = x_sign < zero
    # one division: u = -|x|/|y|, (|y| - |x|)/(|y| + |x|) or |y|/|x|, negated for a
    # negative x (pi - a is base' + (core(-u) + low'): core is odd)
    num = np.where(mid, sy - sx, sy)
    den = np.where(mid, sy + sx, sx)
    num = np.where(far, -sx, num)
    den = np.where(far, sy, den)
    num = num * x_sign
    pi, pi34, pio2, pio4 = (t(c[0]) for c in (_PI, _PI34, _PIO2, _PIO4))
    pi_lo, pi34_lo, pio2_lo, pio4_lo = (t(c[lo]) for c in (_PI, _PI34, _PIO2, _PIO4))
    base = np.where(mid, np.where(back, pi34, pio4), np.where(back, pi, zero))
    low = np.where(mid, np.where(back, pi34_lo, pio4_lo), np.where(back, pi_lo, zero))
    base = np.where(far, pio2, base)
    low = np.where(far, pio2_lo, low)
    # |y| == |x| (0/0 and inf/inf included): u = 0 and the angle in base: pi/4, 3 pi/4,
    # or 0, pi for zeros
    diag = ay == ax
    same = np.where(ax == zero, np.where(back, pi, zero), np.where(back, pi34, pio4))
    num = np.where(diag, zero, num)
    den = np.where(diag, one, den)
    base = np.where(diag, same, base)
    low = np.where(diag, zero, low)
    u = num / den
    # FA_ATAN2_POLY, then FA_ATAN2_FINISH
    z = u * u
    if f32:
        c0, c1, c2, c3 = (t(c) for c in _ATAN_P32)
        poly = c0 * z
        poly -= -c1
        poly *= z
        poly += c2
        poly *= z
        poly -= -c3
        poly *= z
    else:
        p = t(_ATAN_P64[0]) * z
        for c in _ATAN_P64[1:-1]:
            p -= t(-c)
            p *= z
        p -= t(-_ATAN_P64[-1])
        q = z + t(_ATAN_Q64[0])
        for c in _ATAN_Q64[1:]:
            q *= z
            q += t(c)
        poly = z * p
        poly /= q
    angle = u * poly
    angle += u
    angle += low
    angle = base + angle
    return np.copysign(angle, y)


@_quiet
def adam_atan2_update(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """Adam-atan2, in place: Adam's moments, then
    ``p -= step_size * atan2(m * m_scale, sqrt(v * v_scale))`` (:func:`atan2`)."""
    g = _gradient(param, grad, scalars, coupled)
    _moments(g, exp_avg, exp_avg_sq, scalars)
    step_size, m_scale, v_scale = _cast(param.dtype, scalars, "step_size", "m_scale", "v_scale")
    num = exp_avg * m_scale
    den = np.sqrt(exp_avg_sq * v_scale)
    param -= step_size * atan2(num, den)


@_quiet
def probe_update(param, grad, *states):
    """The bandwidth probe's trivial arithmetic (for testing the compiled probe)."""
    for state in states:
        state += grad
    param -= grad


# ---------------------------------------------------------------- per-tensor kinds
# The twin of the per-tensor kinds (_loops.h) and of their engine (_kernels.pyx): each
# ``..._terms`` function computes, from the arrays as the step reads them, the new state,
# the per-element quantities phase 1 sums, and a function of the tensor's scalars that
# writes the update; ``_tensor_step`` sums those quantities per piece in the kernel's lane
# order, then over the pieces in order, and forms the scalars as fa_tensor_scalars.


def tensor_pieces(size):
    """``[(start, stop)]``: the pieces of a tensor of ``size`` elements, ``TENSOR_PIECE``
    each from its first element (the last one shorter), as _kernels.pyx cuts it."""
    piece = _constants.TENSOR_PIECE
    return [(lo, min(lo + piece, size)) for lo in range(0, size, piece)]


def _piece_sum(values):
    """One piece's sum: lane j sums elements j, j + 8, ... in order; then the lanes."""
    total = 0.0
    for value in _lane_sums(values, _constants.TENSOR_LANES).tolist():
        total += value
    return total


def tensor_scalars(hyper, kind, sums, n, lr):
    """``(tensor_step, tensor_decay)`` of a tensor of ``n`` elements from its phase 1
    ``sums``: the twin of ``fa_tensor_scalars`` (_scalars.h)."""
    decay = 1.0
    if kind in ("lamb", "lamb_l2"):
        w_norm, u_norm = math.sqrt(sums[0]), math.sqrt(sums[1])
        trust = w_norm / u_norm if (w_norm > 0.0 and u_norm > 0.0) else 1.0
        if hyper["trust_clip"] and trust > 1.0:
            trust = 1.0
        return lr * trust, decay
    if kind == "stableadamw":
        rms = math.sqrt(sums[0] / n)
        clipped = lr / (rms if rms > 1.0 else 1.0)
        if hyper["weight_decay"] != 0.0:
            if hyper["decouple_lr"]:
                decay = 1.0 - clipped / hyper["max_lr"] * hyper["weight_decay"]
            else:
                decay = 1.0 - clipped * hyper["weight_decay"]
        return clipped, decay
    mean = sums[0] / n  # cautious
    return 1.0 / (mean if mean > 1e-3 else 1e-3), decay


def _prelude(param, grad, scalars, coupled):
    """The prelude of a per-tensor kind, without writing: ``(g, decayed p)``."""
    sign, weight_decay, decay = _cast(param.dtype, scalars, "sign", "weight_decay", "decay")
    g = grad * sign
    if coupled:
        g = g + weight_decay * param
    return g, param * decay


def _new_moments(g, exp_avg, exp_avg_sq, scalars):
    b1, omb1, b2, omb2 = _cast(g.dtype, scalars, "beta1", "one_minus_beta1", "beta2",
                               "one_minus_beta2")  # fmt: skip
    m = b1 * exp_avg + omb1 * g
    v = b2 * exp_avg_sq + omb2 * g * g
    return m, v


@_quiet
def lamb_terms(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """LAMB (``FA_LAMB_BODY``): sums ``p*p`` and ``u*u``, then ``p -= tensor_step * u``."""
    g, p = _prelude(param, grad, scalars, False)
    m, v = _new_moments(g, exp_avg, exp_avg_sq, scalars)
    step_size, eps, wd = _cast(param.dtype, scalars, "step_size", "eps", "weight_decay")
    u = step_size * m / (np.sqrt(v) + eps)
    if coupled:
        u = u + wd * p
    wide_p, wide_u = p.astype(np.float64), u.astype(np.float64)

    def write(tstep, tdecay):
        exp_avg[...], exp_avg_sq[...] = m, v
        param[...] = p - param.dtype.type(tstep) * u

    return [wide_p * wide_p, wide_u * wide_u], write


@_quiet
def stableadamw_terms(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """StableAdamW (``FA_STABLEADAMW_BODY``): sums ``g*g / max(v, eps**2)``, then
    ``p = p * tensor_decay - tensor_step * m / (sqrt(v) + eps)``."""
    g, p = _prelude(param, grad, scalars, False)
    m, v = _new_moments(g, exp_avg, exp_avg_sq, scalars)
    eps, v_floor = _cast(param.dtype, scalars, "eps", "v_floor")
    ratio = g * g / np.maximum(v, v_floor)

    def write(tstep, tdecay):
        exp_avg[...], exp_avg_sq[...] = m, v
        dtype = param.dtype.type
        param[...] = p * dtype(tdecay) - dtype(tstep) * m / (np.sqrt(v) + eps)

    return [ratio.astype(np.float64)], write


@_quiet
def cautious_adam_terms(param, grad, exp_avg, exp_avg_sq, scalars, coupled,
                        max_exp_avg_sq=None):  # fmt: skip
    """Cautious Adam (``FA_CAUTIOUS_ADAM_BODY``; AMSGrad with ``max_exp_avg_sq``): counts
    ``m * g > 0``, then Adam's step on ``m * (tensor_step where they agree, else 0)``."""
    g, p = _prelude(param, grad, scalars, coupled)
    m, v = _new_moments(g, exp_avg, exp_avg_sq, scalars)
    step_size, eps = _cast(param.dtype, scalars, "step_size", "eps")
    agree = m * g > 0

    def write(tstep, tdecay):
        exp_avg[...], exp_avg_sq[...] = m, v
        second = v
        if max_exp_avg_sq is not None:
            np.maximum(max_exp_avg_sq, v, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        zero = param.dtype.type(0)
        masked = m * np.where(agree, param.dtype.type(tstep), zero)
        param[...] = p - step_size * masked / (np.sqrt(second) + eps)

    return [agree.astype(np.float64)], write


@_quiet
def cautious_lion_terms(param, grad, exp_avg, scalars, coupled):
    """Cautious Lion (``FA_CAUTIOUS_LION_BODY``): counts ``sign(c) * g > 0``, then Lion's
    step on ``sign(c) * (tensor_step where they agree, else 0)``."""
    g, p = _prelude(param, grad, scalars, coupled)
    b1, omb1, b2, omb2, step_size = _cast(param.dtype, scalars, "beta1", "one_minus_beta1",
                                          "beta2", "one_minus_beta2", "step_size")  # fmt: skip
    c = b1 * exp_avg + omb1 * g
    one = param.dtype.type(1)
    d = np.where(c > 0, one, np.where(c < 0, -one, c))
    agree = d * g > 0

    def write(tstep, tdecay):
        zero = param.dtype.type(0)
        masked = d * np.where(agree, param.dtype.type(tstep), zero)
        param[...] = p - step_size * masked
        exp_avg[...] = b2 * exp_avg + omb2 * g

    return [agree.astype(np.float64)], write


@_quiet
def cautious_adopt_terms(param, grad, exp_avg, exp_avg_sq, scalars, coupled):
    """Cautious ADOPT (``FA_CAUTIOUS_ADOPT_BODY``): counts ``m * g > 0`` with ADOPT's new
    ``m``, then ADOPT's step on ``m * (tensor_step where they agree, else 0)``; ``m`` and ``v``
    are stored unmasked."""
    g, p = _prelude(param, grad, scalars, coupled)
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size", "eps",
             "clip")  # fmt: skip
    b1, omb1, b2, omb2, step_size, eps, clip = _cast(param.dtype, scalars, *names)
    denom = np.maximum(np.sqrt(exp_avg_sq), eps)
    normed = np.minimum(np.maximum(g / denom, -clip), clip)
    m = b1 * exp_avg + omb1 * normed
    agree = m * g > 0

    def write(tstep, tdecay):
        zero = param.dtype.type(0)
        masked = m * np.where(agree, param.dtype.type(tstep), zero)
        exp_avg[...] = m
        param[...] = p - step_size * masked
        g_sq = omb2 * g
        g_sq *= g
        exp_avg_sq[...] = b2 * exp_avg_sq + g_sq

    return [agree.astype(np.float64)], write


_TENSOR_KINDS: Dict[str, Callable[..., Any]] = {
    "lamb": lamb_terms,
    "stableadamw": stableadamw_terms,
    "cautious_adam": cautious_adam_terms,
    "cautious_amsgrad": cautious_adam_terms,
    "cautious_lion": cautious_lion_terms,
    "cautious_adopt": cautious_adopt_terms,
}


def _tensor_step(kind, terms, pieces, hyper, scalars, n):
    """Sum one tensor's phase 1 terms per piece, then over the pieces in order; its
    scalars; the write of phase 2."""
    quantities, write = terms
    sums = []
    for q in quantities:
        q = q.reshape(-1)
        total = 0.0
        for lo, hi in pieces:
            total += _piece_sum(q[lo:hi])
        sums.append(total)
    tstep, tdecay = tensor_scalars(hyper, kind, sums, n, scalars["lr"])
    write(tstep, tdecay)


# Loop kind -> (update function, number of state arrays it takes).
_KINDS: Dict[str, Tuple[Callable[..., None], int]] = {
    "adam": (adam_update, 2),
    "amsgrad": (adam_update, 3),
    "adamax": (adamax_update, 2),
    "nadam": (nadam_update, 2),
    "momentum": (momentum_update, 2),
    "adabelief": (adabelief_update, 2),
    "lion": (lion_update, 1),
    "ademamix": (ademamix_update, 3),
    "adan": (adan_update, 4),
    "adan_prox": (_adan_prox_update, 4),
    "adopt_first": (adopt_first_update, 2),
    "adopt": (adopt_update, 2),
    "adam_atan2": (adam_atan2_update, 2),
    "schedulefree": (schedulefree_update, 2),
    "schedulefree_sgd": (schedulefree_sgd_update, 2),
}


# ---------------------------------------------------------------- block-wise 8-bit state
# The twin of the 8-bit maps of _q8.h (see there for the format): the same integer work
# on the same bits, so codes and scales agree bit for bit.

_Q8_M = 3


def _q8_emax(signed):
    return 15 if signed else 30


def q8_nonfinite(codes, signed):
    """Where 8-bit ``codes`` are those of an inf or NaN: ``(code | 0x80) >= 0xFE`` for the
    signed map (0x7F/0xFF: +inf/-inf, 0x7E: NaN; 0xFE is never written and reads as NaN),
    ``code >= 0xFE`` for the unsigned one (0xFF: inf, 0xFE: NaN)."""
    mark = np.uint8(0x80 if signed else 0)
    return (np.asarray(codes, dtype=np.uint8) | mark) >= np.uint8(0xFE)


def q8_values(signed):
    """The 256 values y(code) of the signed or unsigned map, float32 (exact): the top bits
    of a float16 (``_q8.h``); unsigned codes 241-253 read as 1.0; the codes of
    non-finite values (``q8_nonfinite``) read as inf (signed map: with the code's sign) or
    the quiet NaN 0x7FC00000 (a NaN's sign and payload are not kept)."""
    codes = np.arange(256, dtype=np.uint16)
    if signed:
        half = ((codes & 0x7F) << 7) | ((codes & 0x80) << 8)
        y = half.view(np.float16).astype(np.float32)
    else:
        half = np.minimum(codes, 240) << 7
        y = half.view(np.float16).astype(np.float32) * np.float32(2.0**-15)
    special = q8_nonfinite(codes.astype(np.uint8), signed)
    sign = (codes.astype(np.uint32) & np.uint32(0x80 if signed else 0)) << np.uint32(24)
    words = np.where(codes & 1, sign | np.uint32(0x7F800000), np.uint32(0x7FC00000))
    return np.where(special, words.view(np.float32), y)


@_quiet
def q8_dequantize(codes, absmax, signed):
    """float32 values of 8-bit ``codes`` (any shape) with per-block scales ``absmax``:
    ``y(code) * absmax`` of the code's block (blocks of ``Q8_BLOCK`` flat elements); the
    code of an inf or NaN is that value, whatever the scale."""
    flat = np.asarray(codes).reshape(-1)
    # int8 codes are the companded map's (state_dtype="8bit_companded")
    table = q8c_values(signed) if flat.dtype == np.int8 else q8_values(signed)
    flat = flat.view(np.uint8)
    y = table[flat]
    scale = np.repeat(np.asarray(absmax, np.float32), _constants.Q8_BLOCK)[: flat.size]
    return np.where(q8_nonfinite(flat, signed), y, y * scale).reshape(np.shape(codes))


@_quiet
def q8_quantize(values, signed, companded=False):
    """``(codes, absmax)`` of float32 ``values`` (any shape): per block of ``Q8_BLOCK`` flat
    elements the largest finite ``abs(value)`` (an integer max of the bits below inf's; 0
    when there is none), then each finite value's nearest code of
    ``x = min(abs(value) * (1 / absmax), 1)`` (``abs(value) / absmax`` for a subnormal
    absmax; ties away from zero; the sign bit for the signed map unless the magnitude is 0),
    and each inf or NaN its own code (``q8_nonfinite``): it stays in its element."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    n_blocks = -(-v.size // _constants.Q8_BLOCK)
    flat = np.zeros(n_blocks * _constants.Q8_BLOCK, dtype=np.float32)
    flat[: v.size] = v
    blocks = flat.reshape(n_blocks, _constants.Q8_BLOCK)
    words = blocks.view(np.uint32)
    magnitude = words & np.uint32(0x7FFFFFFF)
    finite = magnitude < np.uint32(0x7F800000)
    most = np.where(finite, magnitude, np.uint32(0)).max(axis=1, initial=0)
    absmax = most.view(np.float32)
    # x = |value| * (1 / absmax) for a normal absmax, |value| / absmax for a subnormal one,
    # 0 when absmax is 0; the sign bit cleared (fa_q8_ratio)
    normal = absmax >= np.finfo(np.float32).tiny
    inv = np.float32(1) / np.where(normal, absmax, np.float32(1))
    x = np.abs(blocks) * inv[:, None]
    tiny = ~normal & (absmax > 0)
    x[tiny] = np.abs(blocks[tiny]) / absmax[tiny, None]
    x[~(absmax > 0)] = 0
    a = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    x = a.view(np.float32)
    if companded:
        r = _q8c_magnitudes(x, signed)
    else:
        # fa_q8_encode_mag: nearest code, ties away from zero
        emax = _q8_emax(signed)
        below = a < np.uint32((128 - emax) << 23)
        sub = np.floor(np.where(below, x, 0).astype(np.float64) * 2.0 ** (emax - 1 + _Q8_M) + 0.5)
        shift = np.uint32(23 - _Q8_M)
        norm = (a - np.uint32((127 - emax) << 23) + np.uint32(1 << (22 - _Q8_M))) >> shift
        r = np.where(below, sub.astype(np.uint32), norm)
        r = np.where(a >= np.uint32(0x3F800000), np.uint32(emax << _Q8_M), r)
    if signed:
        r |= np.where(r != 0, (words >> np.uint32(24)) & np.uint32(0x80), np.uint32(0))
    # an inf: 0x7F | the sign bit (signed) or 0x80 (unsigned); a NaN: 0x7E (signed) or
    # 0xFE (unsigned), its sign not kept
    nan = magnitude > np.uint32(0x7F800000)
    if signed:
        inf = np.uint32(0x7F) | (words >> np.uint32(24)) & np.uint32(0x80)
        special = np.where(nan, np.uint32(0x7E), inf)
    else:
        special = np.where(nan, np.uint32(0xFE), np.uint32(0xFF))
    r = np.where(finite, r, special)
    codes = r.astype(np.uint8).reshape(-1)[: v.size].reshape(np.shape(values))
    return (codes.view(np.int8) if companded else codes), absmax.copy()


# The companded map (state_dtype="8bit_companded", FlashOptim's companding; the twin of
# fa_q8c_* in _q8.h): the same block layout, scales and codes of inf/NaN as the map
# above, but the finite magnitudes are a linear grid in a companded variable,
# x = |value| / absmax in [0, 1]: signed, m = round(125 * 2x / (1 + x)) in [0, 125] (the
# softsign, steeper near 0: more codes for small moments); unsigned, m = round(253 *
# sqrt(x)) in [0, 253] (the second moment spans the square of the first's range). Decoding:
# z = m / 125, y = z / (2 - z); t = m / 253, y = t * t. Each a float32 operation in this
# order (rounding to nearest even); the code rounds half up.
_Q8C_TOP = {True: 125, False: 253}


def _q8c_magnitudes(x, signed):
    """The magnitude codes of float32 ratios ``x`` in [0, 1 + 2**-23] (uint32)."""
    x = np.minimum(x, np.float32(1))
    top = np.float32(_Q8C_TOP[bool(signed)])
    s = (x + x) / (np.float32(1) + x) if signed else np.sqrt(x)
    return (s * top + np.float32(0.5)).astype(np.uint32)


def q8c_values(signed):
    """The 256 values y(code) of the companded signed or unsigned map, float32: finite
    magnitudes as the comment above says (signed 0-125, unsigned 0-253); the codes of inf
    and NaN as ``q8_values`` (signed magnitudes 126-127, unsigned codes 254-255)."""
    codes = np.arange(256, dtype=np.uint32)
    top = np.float32(_Q8C_TOP[bool(signed)])
    magnitude = np.minimum(codes & np.uint32(0x7F if signed else 0xFF), np.uint32(top))
    t = magnitude.astype(np.float32) / top
    if signed:
        y = t / (np.float32(2) - t)
        y = np.where(codes & np.uint32(0x80), -y, y)
    else:
        y = t * t
    special = q8_nonfinite(codes.astype(np.uint8), signed)
    return np.where(special, q8_values(signed), y).astype(np.float32)


def residual_encode(master):
    """``(param, residual)`` of float32 ``master`` under ``master="residual"``
    (``_residual.h``): the bfloat16 param is the master rounded to nearest, ties away
    from zero (the bits ``(u + 0x8000) >> 16``); the int16 residual is the master's low 16
    bits, ``u - (param << 16)``. A NaN master: the param ``sign | 0x7fc0``, residual 0."""
    u = np.ascontiguousarray(master, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    with np.errstate(over="ignore"):
        rounded = (u + np.uint32(0x8000)) >> np.uint32(16)
    quiet = ((u >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(0x7FC0)
    param = np.where(nan, quiet, rounded).astype(np.uint16).view(ml_dtypes.bfloat16)
    residual = np.where(nan, np.uint32(0), u & np.uint32(0xFFFF)).astype(np.uint16)
    return param, residual.view(np.int16)


def compact_encode(master):
    """``(param, residual)`` of float32 ``master`` under ``master="compact"``
    (``_residual.h``): the param as ``residual_encode``'s; the int8 residual is the int16
    residual ``r`` rounded to a multiple of 256, ``min((r + 128) >> 8, 127)``."""
    param, low = residual_encode(master)
    r8 = np.minimum((low.astype(np.int32) + 128) >> 8, 127)
    return param, r8.astype(np.int8)


def compact_decode(param, residual):
    """The float32 master of a bfloat16 ``param`` and its int8 ``residual``: the bits
    ``(param << 16) + 256 * residual`` (``residual_decode`` of ``residual << 8``)."""
    r = np.ascontiguousarray(residual).view(np.int8).astype(np.int16) << np.int16(8)
    return residual_decode(param, r)


def master_decode(param, residual):
    """The float32 master of a bfloat16 ``param`` and its ``master_residual`` (int16:
    ``master="residual"``, exact; int8: ``master="compact"``)."""
    if np.asarray(residual).dtype == np.int8:
        return compact_decode(param, residual)
    return residual_decode(param, residual)


def master_encode(master, residual_dtype):
    """``(param, residual)`` of float32 ``master`` for a ``master_residual`` of this dtype."""
    if np.dtype(residual_dtype) == np.int8:
        return compact_encode(master)
    return residual_encode(master)


def residual_decode(param, residual):
    """The float32 master of a bfloat16 ``param`` and its int16 ``residual``, exactly:
    the bits ``(param << 16) + residual`` (two's complement, modulo 2**32)."""
    p = np.ascontiguousarray(param).view(np.uint16).astype(np.int64)
    r = np.ascontiguousarray(residual).view(np.int16).astype(np.int64)
    return (((p << 16) + r) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


@_quiet
def run(kind, slots, grads, scalars, masters=None, grad_scale=1.0, clip=1.0, scales=None,
        qsigned=None, hyper=None):  # fmt: skip
    """Run loop ``kind`` (a name of ``_kernels.LOOP_KINDS``) over a group, in place.

    ``slots`` is ``(params, None, states...)``, each a sequence over the group's params (the
    compiled ``GroupPlan`` layout); ``grads`` one gradient per param; ``masters`` per param
    its float32 master or None. As the staged runner of ``_staged.h``: the gradient is
    widened to the compute dtype, divided by ``grad_scale`` and multiplied by ``clip``;
    bfloat16 state is widened, 8-bit state (uint8 codes, int8 for the companded map;
    ``scales[slot][k]`` its per-block absmax, ``qsigned[slot]`` its map) dequantized; the
    update runs on the master (or the param); then the state is rounded back (to nearest
    even) or requantized, and the param rounded from the master.

    A per-tensor kind (LAMB, StableAdamW, cautious) also takes the group's ``hyper``
    (``_algorithms.hyper_dict``): its tensors' scalars.
    """
    coupled = kind.endswith("_l2")
    base = kind[:-3] if coupled else kind
    tensor = _TENSOR_KINDS.get(base)
    update, n_states = _KINDS[base] if tensor is None else (None, 0)
    params, states = slots[0], slots[2:]
    for k, (p, g) in enumerate(zip(params, grads)):
        p, g = np.asarray(p), np.asarray(g)
        master = masters[k] if masters is not None else None
        residual = None
        if master is not None and master.dtype in (np.int16, np.int8):  # residual, compact
            residual, master = master, master_decode(p, master)
        target = p if master is None else master
        compute = target.dtype
        if g.dtype != compute or grad_scale != 1.0 or clip != 1.0:
            g = g.astype(compute)
            g /= compute.type(grad_scale)
            g *= compute.type(clip)
        stored: List[Any] = [np.asarray(s[k]) for s in states]
        absmax = [None] * len(states) if scales is None else [sc[k] for sc in scales]
        arrays = [
            a if a.dtype == compute
            else q8_dequantize(a, absmax[j], qsigned[j]) if absmax[j] is not None
            else a.astype(compute)
            for j, a in enumerate(stored)
        ]  # fmt: skip
        if tensor is not None:
            if p.size == 0:  # no elements: no sums (n = 0), nothing to update
                continue
            if base == "cautious_amsgrad":  # the running maximum comes last
                terms = tensor(target, g, *arrays[:2], scalars, coupled, arrays[2])
            else:
                terms = tensor(target, g, *arrays, scalars, coupled)
            _tensor_step(kind, terms, tensor_pieces(p.size), hyper, scalars, p.size)
        elif update is adam_update:
            arrays = arrays[:2] + [arrays[2] if n_states == 3 else None]
            update(target, g, *arrays, scalars, coupled)
        else:
            assert update is not None  # a dense kind (the per-tensor ones took the branch above)
            update(target, g, *arrays, scalars, coupled)
        for j, (a, wide) in enumerate(zip(stored, arrays)):
            block_absmax = absmax[j]
            if block_absmax is not None:
                a[...], block_absmax[...] = q8_quantize(wide, qsigned[j], a.dtype == np.int8)
            elif wide is not a:
                a[...] = wide.astype(a.dtype)
        if residual is not None:
            p[...], residual[...] = master_encode(master, residual.dtype)
        elif master is not None:
            p[...] = master.astype(p.dtype)


def chunk_size(total, grain):
    """Elements per chunk of a group of ``total`` elements (``fa_chunk_size`` of _pool.h)."""
    k = max(grain, 16)
    k -= k % 16
    if total // k >= 2**31 - 1:
        k = total // (2**31 - 2) + 16
        k -= k % 16
    return k


def _lane_sums(part, n_lanes=None):
    """Lane j of a part: the sum, in order, of its elements j, j + n_lanes, ... (the
    gradient norm's lanes unless ``n_lanes`` says otherwise)"""
    n_lanes = _constants.NORM_LANES if n_lanes is None else n_lanes
    full = part.size - part.size % n_lanes
    lanes = np.zeros(n_lanes)
    if full:
        lanes = np.add.reduce(part[:full].reshape(-1, n_lanes), axis=0)
    tail = part[full:]
    lanes[: tail.size] += tail
    return lanes


def _segment_sumsq(squares):
    """Sum of one segment's float64 squares in the order of ``FA_NORM_BODY``: element i in
    lane i % 8, each lane summed in order, then the lanes in order."""
    total = 0.0
    for value in _lane_sums(squares).tolist():
        total += value
    return total


@_quiet
def scan(grads, grad_scale, want_norm, grain):
    """``(first, sumsq)``: the flat index (over the group's gradients as one vector) of the
    first gradient value that is not finite once unscaled, or -1; and, with ``want_norm``,
    the sum of squares of the gradient values (widened to the compute dtype; the norm is
    ``sqrt(sumsq) / grad_scale``, see :func:`clip_coefficient`), summed per chunk of
    ``chunk_size`` elements (per array segment in the lane order of ``_segment_sumsq``)
    and then over the chunks in order, as the compiled scan does for any thread count
    (else 0.0)."""
    values: List[Any] = []
    first, offset = -1, 0
    for g in grads:
        g = np.asarray(g).reshape(-1)
        compute: Any = np.float64 if g.dtype == np.float64 else np.float32
        x: Any = g.astype(compute)
        values.append(x)
        if first < 0:
            bad = np.flatnonzero(~np.isfinite(x / compute(grad_scale)))
            if bad.size:
                first = offset + int(bad[0])
            offset += x.size
    if not want_norm:
        return first, 0.0
    total = sum(x.size for x in values)
    k = chunk_size(total, grain)
    chunk_sums = np.zeros((total + k - 1) // k)
    offset = 0
    for x in values:
        wide: Any = x.astype(np.float64)
        squares = wide * wide
        start = 0
        while start < x.size:
            chunk = (offset + start) // k
            stop = min(x.size, (chunk + 1) * k - offset)
            chunk_sums[chunk] += _segment_sumsq(squares[start:stop])
            start = stop
        offset += x.size
    sumsq = 0.0
    for value in chunk_sums.tolist():
        sumsq += value
    return first, sumsq


def clip_coefficient(sumsq, grad_scale, max_norm):
    """``(coefficient, norm)``: ``fa_clip_coefficient`` of ``_gradscan.h``, the rule of
    ``torch.nn.utils.clip_grad_norm_`` in double: the norm of the unscaled gradients
    ``sqrt(sumsq) / grad_scale`` and ``max_norm / (norm + 1e-6)`` clamped to at most 1
    (NaN stays NaN)."""
    norm = math.sqrt(sumsq) / grad_scale
    coefficient = max_norm / (norm + 1e-6)
    return (1.0 if coefficient > 1.0 else coefficient), norm


def first_nonfinite(grads):
    """Flat index of the first NaN/inf over the gradients taken as one vector, or -1."""
    offset = 0
    for g in grads:
        bad = np.flatnonzero(~np.isfinite(np.asarray(g).reshape(-1)))
        if bad.size:
            return offset + int(bad[0])
        offset += g.size
    return -1


@_quiet
def sparse_adam_update(param, exp_avg, exp_avg_sq, values, rows, order, starts, scalars):
    """One SparseAdam step of the rows ``rows`` of a 2-D table, in place.

    The twin of ``_kernels.sparse_adam_step``: the gradient of ``rows[u]`` is the sum, left
    to right in order of appearance, of ``values[order[starts[u]:starts[u + 1]]]``;
    ``scalars`` is the dict of :func:`step_scalars` for ``"sparse_adam"``.
    """
    sign, one_minus_beta1, one_minus_beta2, step_size, eps = _cast(
        param.dtype, scalars, "sign", "one_minus_beta1", "one_minus_beta2", "step_size", "eps"
    )
    if rows.size == 0 or param.shape[1] == 0:
        return
    counts = np.diff(starts)
    g = values[order[starts[:-1]]]
    # Rows with r + 1 or more duplicates get their (r + 1)-th value added in round r:
    # the same left-to-right sum as the compiled loop, vectorized over rows.
    for r in range(1, int(counts.max())):
        sel = np.flatnonzero(counts > r)
        g[sel] = g[sel] + values[order[starts[sel] + r]]
    g = g * sign
    m_old = exp_avg[rows]
    v_old = exp_avg_sq[rows]
    m_new = m_old + (g - m_old) * one_minus_beta1
    v_new = v_old + (g * g - v_old) * one_minus_beta2
    exp_avg[rows] = m_new
    exp_avg_sq[rows] = v_new
    denom = np.sqrt(v_new)
    denom += eps
    param[rows] = param[rows] - step_size * (m_new / denom)


def __getattr__(name):
    # Q8_BLOCK and TENSOR_PIECE, as code written against this module spells them: the
    # extension's numbers (fusedadam._constants owns them; read on use, not at import).
    if name in ("Q8_BLOCK", "TENSOR_PIECE"):
        return getattr(_constants, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
