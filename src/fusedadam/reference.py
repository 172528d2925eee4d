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
    "probe_update",
    "sparse_adam_update",
    "q8_values",
    "q8_dequantize",
    "q8_quantize",
]


# Overflow, inf - inf and the like are computed as IEEE says, silently, as the compiled
# loops do: what a step does with NaN/inf gradients is the ``nonfinite`` policy's call.
_quiet = np.errstate(all="ignore")


def step_scalars(hyper, t, lr, mu_product=1.0):
    """``(loop kind, scalars, mu_product after)`` of step ``t`` with learning rate ``lr``.

    The twin of ``fa_step_scalars`` in ``_scalars.h``: the same double operations in the
    same order (Python floats are C doubles, ``**`` is libm's pow). ``hyper`` is the dict
    of ``fusedadam._algorithms.hyper_dict``.
    """
    h = hyper
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
        "lr": lr,
        "v_floor": 0.0,
    }
    mu_after = mu_product
    if algorithm in ("adam", "adamax"):
        beta1 = h["beta1"] * h["beta1_decay"] ** (t - 1.0)
        if h["bias_correction"]:
            bc1 = 1.0 - h["beta1"] ** t
            bc2 = 1.0 - h["beta2"] ** t
    elif algorithm == "lamb":
        if h["bias_correction"]:
            bc1 = 1.0 - h["beta1"] ** t
            bc2 = 1.0 - h["beta2"] ** t
    elif algorithm not in ("lion", "stableadamw"):
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
        mu_after = product
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
    elif algorithm == "sparse_adam":
        s["step_size"] = lr * math.sqrt(bc2) / bc1
        s["eps"] = h["eps"]
        kind = "sparse_rows"
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
    return kind, s, mu_after


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
def probe_update(param, grad, exp_avg, exp_avg_sq=None, max_exp_avg_sq=None):
    """The bandwidth probe's trivial arithmetic (for testing the compiled probe)."""
    exp_avg += grad
    if exp_avg_sq is not None:
        exp_avg_sq += grad
    if max_exp_avg_sq is not None:
        max_exp_avg_sq += grad
    param -= grad


# ---------------------------------------------------------------- per-tensor kinds
# The twin of the per-tensor kinds (_loops.h) and of their engine (_kernels.pyx): each
# ``..._terms`` function computes, from the arrays as the step reads them, the new state,
# the per-element quantities phase 1 sums, and a function of the tensor's scalars that
# writes the update; ``_tensor_step`` sums those quantities per piece in the kernel's lane
# order, then over the pieces in order, and forms the scalars as fa_tensor_scalars.

TENSOR_PIECE = 16384  # FA_TENSOR_PIECE of _kernels.pyx


def tensor_pieces(size):
    """``[(start, stop)]``: the pieces of a tensor of ``size`` elements, ``TENSOR_PIECE``
    each from its first element (the last one shorter), as _kernels.pyx cuts it."""
    return [(lo, min(lo + TENSOR_PIECE, size)) for lo in range(0, size, TENSOR_PIECE)]


def _piece_sum(values):
    """One piece's sum: lane j sums elements j, j + 8, ... in order; then the lanes."""
    total = 0.0
    for value in _lane_sums(values).tolist():
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


_TENSOR_KINDS: Dict[str, Callable[..., Any]] = {
    "lamb": lamb_terms,
    "stableadamw": stableadamw_terms,
    "cautious_adam": cautious_adam_terms,
    "cautious_amsgrad": cautious_adam_terms,
    "cautious_lion": cautious_lion_terms,
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
}


# ---------------------------------------------------------------- block-wise 8-bit state
# The twin of the 8-bit maps of _mixed.h (see there for the format): the same integer work
# on the same bits, so codes and scales agree bit for bit.

Q8_BLOCK = 256  # FA_Q8_BLOCK
_Q8_M = 3


def _q8_emax(signed):
    return 15 if signed else 30


def q8_values(signed):
    """The 256 values y(code) of the signed or unsigned map, float32 (exact): the top bits
    of a float16 (``_mixed.h``); unsigned codes above 240 (1.0) read as 1.0."""
    codes = np.arange(256, dtype=np.uint16)
    if signed:
        half = ((codes & 0x7F) << 7) | ((codes & 0x80) << 8)
        return half.view(np.float16).astype(np.float32)
    half = np.minimum(codes, 240) << 7
    return half.view(np.float16).astype(np.float32) * np.float32(2.0**-15)


@_quiet
def q8_dequantize(codes, absmax, signed):
    """float32 values of 8-bit ``codes`` (any shape) with per-block scales ``absmax``:
    ``y(code) * absmax`` of the code's block (blocks of ``Q8_BLOCK`` flat elements)."""
    flat = np.asarray(codes).reshape(-1)
    y = q8_values(signed)[flat]
    scale = np.repeat(np.asarray(absmax, np.float32), Q8_BLOCK)[: flat.size]
    return (y * scale).reshape(np.shape(codes))


@_quiet
def q8_quantize(values, signed):
    """``(codes, absmax)`` of float32 ``values`` (any shape): per block of ``Q8_BLOCK`` flat
    elements the largest ``abs(value)`` (an integer max of the bits, NaN wins), then each
    value's nearest code of ``x = min(abs(value) * (1 / absmax), 1)``
    (``abs(value) / absmax`` for a subnormal absmax; ties away from zero; the sign bit for
    the signed map unless the magnitude is 0)."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    n_blocks = -(-v.size // Q8_BLOCK)
    flat = np.zeros(n_blocks * Q8_BLOCK, dtype=np.float32)
    flat[: v.size] = v
    blocks = flat.reshape(n_blocks, Q8_BLOCK)
    words = blocks.view(np.uint32)
    most = (words & np.uint32(0x7FFFFFFF)).max(axis=1, initial=0)
    absmax = most.view(np.float32)
    # x = |value| * (1 / absmax) for a normal absmax, |value| / absmax for a subnormal one,
    # 0 when absmax is 0 or NaN; the sign bit cleared (fa_q8_ratio)
    normal = absmax >= np.finfo(np.float32).tiny
    inv = np.float32(1) / np.where(normal, absmax, np.float32(1))
    x = np.abs(blocks) * inv[:, None]
    tiny = ~normal & (absmax > 0)
    x[tiny] = np.abs(blocks[tiny]) / absmax[tiny, None]
    x[~(absmax > 0)] = 0
    a = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    x = a.view(np.float32)
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
    codes = r.astype(np.uint8).reshape(-1)[: v.size].reshape(np.shape(values))
    return codes, absmax.copy()


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

    ``slots`` is ``(params, None, states...)``, each a sequence over the group's params
    (the compiled ``GroupPlan`` layout); ``grads`` one gradient per param; ``masters`` per
    param its float32 master or None. As the staged runner of ``_mixed.h``: the gradient is
    widened to the compute dtype, divided by ``grad_scale`` and multiplied by ``clip``;
    bfloat16 state is widened, 8-bit state (uint8 codes; ``scales[slot][k]`` its per-block
    absmax, ``qsigned[slot]`` its map) dequantized; the update runs on the master (or the
    param); then the state is rounded back (to nearest even) or requantized, and the param
    rounded from the master.

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
        if master is not None and master.dtype == np.int16:  # master="residual"
            residual, master = master, residual_decode(p, master)
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
            update(target, g, *arrays, scalars, coupled)
        for j, (a, wide) in enumerate(zip(stored, arrays)):
            block_absmax = absmax[j]
            if block_absmax is not None:
                a[...], block_absmax[...] = q8_quantize(wide, qsigned[j])
            elif wide is not a:
                a[...] = wide.astype(a.dtype)
        if residual is not None:
            p[...], residual[...] = residual_encode(master)
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


_LANES = 8  # FA_NORM_LANES of _mixed.h
_STREAMS, _BLOCK = 4, 2048  # FA_SCAN_STREAMS, FA_SCAN_BLOCK of _finite.h


def _lane_sums(part):
    """Lane j of a part: the sum, in order, of its elements j, j + 8, j + 16, ..."""
    full = part.size - part.size % _LANES
    lanes = np.zeros(_LANES)
    if full:
        lanes = np.add.reduce(part[:full].reshape(-1, _LANES), axis=0)
    tail = part[full:]
    lanes[: tail.size] += tail
    return lanes


def _segment_sumsq(squares):
    """Sum of one segment's float64 squares in the order of ``FA_NORM_BODY``: four streams
    of ``q = (n // 4) // 2048 * 2048`` elements and the rest, each summed in 8 lanes, then
    the lanes of each part in order."""
    q = (squares.size // _STREAMS) // _BLOCK * _BLOCK
    bounds = [s * q for s in range(_STREAMS + 1)] + [squares.size]
    total = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for value in _lane_sums(squares[lo:hi]).tolist():
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
    """``(coefficient, norm)``: ``fa_clip_coefficient`` of ``_mixed.h``, the rule of
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
