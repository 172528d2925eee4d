"""Pure-NumPy twin of every compiled loop: the fallback backend and the cross-check.

Each function updates its arrays in place from the same per-step scalars as the kernel
(see ``functional.adam_scalars``), cast to the array's dtype, and evaluates the same
IEEE operations in the same order as ``_loops.h``. NumPy's +, -, *, / and sqrt are
correctly rounded and the extension is built with ``-ffp-contract=off``, so the two agree
bit for bit on every instruction set and for every thread count.
"""
import numpy as np

__all__ = ["adam_update", "adamax_update", "probe_update", "sparse_adam_update"]


# Overflow, inf - inf and the like are computed as IEEE says, silently, as the compiled
# loops do: what a step does with NaN/inf gradients is the ``nonfinite`` policy's call.
_quiet = np.errstate(all="ignore")


def _cast(scalars, dtype):
    return [dtype.type(x) for x in scalars]


def _gradient(param, grad, sign, weight_decay, coupled):
    g = grad * sign
    if coupled:
        g = g + weight_decay * param
    return g


@_quiet
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


@_quiet
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


@_quiet
def probe_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None):
    """The bandwidth probe's trivial arithmetic (for testing the compiled probe)."""
    exp_avg += grad
    exp_avg_sq += grad
    if max_exp_avg_sq is not None:
        max_exp_avg_sq += grad
    param -= grad


def sparse_adam_update(param, exp_avg, exp_avg_sq, values, rows, order, starts, scalars):
    """One SparseAdam step of the rows ``rows`` of a 2-D table, in place.

    The twin of ``_sparse.sparse_adam_step``: the gradient of ``rows[u]`` is the sum, left
    to right in order of appearance, of ``values[order[starts[u]:starts[u + 1]]]``;
    ``scalars`` is ``(sign, 1 - beta1, 1 - beta2, step_size, eps)``.
    """
    sign, one_minus_beta1, one_minus_beta2, step_size, eps = _cast(scalars, param.dtype)
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
