"""Pure-NumPy twin of every compiled loop: the fallback backend and the cross-check.

Each function updates its arrays in place from the same per-step scalars as the kernel
(see ``functional.adam_scalars``), cast to the array's dtype, and evaluates the same
IEEE operations in the same order as ``_loops.h``. NumPy's +, -, *, / and sqrt are
correctly rounded and the extension is built with ``-ffp-contract=off``, so the two agree
bit for bit on every instruction set and for every thread count.
"""
import numpy as np

__all__ = ["adam_update", "adamax_update", "probe_update"]


def _cast(scalars, dtype):
    return [dtype.type(x) for x in scalars]


def _gradient(param, grad, sign, weight_decay, coupled):
    g = grad * sign
    if coupled:
        g = g + weight_decay * param
    return g


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, coupled):
    """One Adam (or AMSGrad, when ``max_exp_avg_sq`` is given) step of one array, in place.

    ``scalars`` is the 10-tuple of ``functional.adam_scalars``; ``coupled`` applies the
    L2 term ``weight_decay * param`` to the gradient.
    """
    (sign, weight_decay, decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
     step_size, bc2_sqrt, eps) = scalars
    # step_size * m / (sqrt(v) / bc2_sqrt + eps), rewritten with one division per element
    # as (step_size * bc2_sqrt) * m / (sqrt(v) + eps * bc2_sqrt); the two products are
    # formed in double, as in _loops.h.
    (sign, weight_decay, decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
     step_size, eps) = _cast((sign, weight_decay, decay, beta1, one_minus_beta1, beta2,
                              one_minus_beta2, step_size * bc2_sqrt, eps * bc2_sqrt),
                             param.dtype)
    g = _gradient(param, grad, sign, weight_decay, coupled)
    param *= decay
    exp_avg *= beta1
    exp_avg += one_minus_beta1 * g
    g_sq = one_minus_beta2 * g
    g_sq *= g
    exp_avg_sq *= beta2
    exp_avg_sq += g_sq
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v)
    denom += eps
    update = step_size * exp_avg
    update /= denom
    param -= update


def adamax_update(param, grad, exp_avg, exp_inf, scalars, coupled):
    """One Adamax step of one array, in place: ``u = max(beta2 * u, |g| + eps)``."""
    (sign, weight_decay, decay, beta1, one_minus_beta1, beta2, _, step_size, _,
     eps) = _cast(scalars, param.dtype)
    g = _gradient(param, grad, sign, weight_decay, coupled)
    param *= decay
    exp_avg *= beta1
    exp_avg += one_minus_beta1 * g
    exp_inf *= beta2
    abs_g = np.abs(g)
    abs_g += eps
    np.maximum(exp_inf, abs_g, out=exp_inf)
    update = step_size * exp_avg
    update /= exp_inf
    param -= update


def probe_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None):
    """The bandwidth probe's trivial arithmetic (for testing the compiled probe)."""
    exp_avg += grad
    exp_avg_sq += grad
    if max_exp_avg_sq is not None:
        max_exp_avg_sq += grad
    param -= grad
