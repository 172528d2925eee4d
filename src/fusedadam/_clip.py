"""``clip_grad_norm(grads, max_norm)``: scale gradients in place to a total norm, return it.

For code that needs the norm before stepping (to log it, or to skip a step). torch users
know it as ``torch.nn.utils.clip_grad_norm_``; here the gradients are the arrays passed
to ``step``, so they are passed in rather than read from ``.grad``.
"""

import math
import numbers
from typing import Any, List, Sequence, Union

import numpy as np
from numpy.lib.array_utils import byte_bounds

from fusedadam import _precision

__all__ = ["clip_grad_norm"]

_CHUNK = 1 << 16  # elements widened to float64 at a time for a 16-bit norm


def _as_grad_list(grads: Any) -> List[np.ndarray]:
    if isinstance(grads, np.ndarray):
        return [grads]
    try:
        grads = list(grads)
    except TypeError:
        raise TypeError(
            f"grads must be an array or a sequence of arrays, got {type(grads).__name__}"
        ) from None
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{i}] must be a NumPy array, got {type(g).__name__}")
        if g.dtype.kind != "f" and g.dtype != _precision.BFLOAT16:
            raise TypeError(f"grads[{i}] must have a floating dtype, got {g.dtype}")
    _check_disjoint(grads)
    return grads


def _check_disjoint(grads: List[np.ndarray]) -> None:
    """Raise if two gradients share memory: they would be counted and scaled twice."""
    spans = sorted(
        (tuple(byte_bounds(g)) + (i,) for i, g in enumerate(grads) if g.size), key=lambda s: s[0]
    )
    for k, (_, hi, i) in enumerate(spans):
        for lo2, _, j in spans[k + 1 :]:
            if lo2 >= hi:
                break
            if np.shares_memory(grads[i], grads[j]):
                first, second = sorted((i, j))
                raise ValueError(
                    f"grads[{first}] and grads[{second}] share memory; each gradient "
                    "must be its own array (it would be counted and scaled twice)"
                )


def _check_writeable(grads: List[np.ndarray]) -> None:
    for i, g in enumerate(grads):
        if not g.flags.writeable:
            raise ValueError(f"grads[{i}] is read-only; clipping scales the gradients in place")


def _scale(g: np.ndarray, coef: float) -> None:
    """``g *= coef``, computed in float32 for 16-bit gradients (rounded once) and in the
    gradient's dtype otherwise: a factor rounded to float16 loses its digits, or all of
    them (below 6e-8 it is zero)."""
    if g.dtype in _precision.LOW_PRECISION:
        np.multiply(g, np.float32(coef), out=g, dtype=np.float32, casting="unsafe")
    else:
        g *= g.dtype.type(coef)


def _norm_of(g: np.ndarray, norm_type: float) -> float:
    flat = g.reshape(-1)
    if flat.size == 0:
        return 0.0
    if norm_type == math.inf:
        return float(np.max(np.abs(flat)))
    if norm_type == 2.0 and flat.dtype not in _precision.LOW_PRECISION:
        # Accumulated in float64 so a long float32 gradient's norm keeps its digits.
        return float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        wide = np.abs(flat[start : start + _CHUNK].astype(np.float64))
        total += float(np.sum(wide * wide if norm_type == 2.0 else wide**norm_type))
    return total


def clip_grad_norm(
    grads: Union[np.ndarray, Sequence[np.ndarray]],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale ``grads`` in place so their total norm is at most ``max_norm``.

    The total norm is the norm of all gradients concatenated into one vector. When it
    exceeds ``max_norm``, every gradient is multiplied by ``max_norm / (norm + 1e-6)``
    (the factor of ``torch.nn.utils.clip_grad_norm_``); otherwise nothing is written.

    Parameters
    ----------
    grads : ndarray or sequence of ndarray
        Floating gradients (float16, bfloat16, float32, float64, ...), modified in place
        (they must be writeable when clipped, and must not share memory). The norm is
        accumulated in float64; 16-bit gradients are scaled in float32 and rounded once.
    max_norm : float
        Largest total norm allowed, > 0.
    norm_type : float, default 2.0
        Order of the norm: any real >= 1, or ``math.inf`` for the largest magnitude.
    error_if_nonfinite : bool, default False
        Raise ``FloatingPointError`` when the total norm is NaN or infinite (the
        gradients are then left unscaled). With False such a norm is returned and the
        gradients are left unscaled too (no finite factor exists).

    Returns
    -------
    float
        The total norm before clipping.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, gradients sharing memory, or a read-only gradient that needs
        clipping; raised before any gradient is written.

    Examples
    --------
    >>> import numpy as np, fusedadam as fa
    >>> g = [np.full(4, 3.0), np.full(4, 4.0)]
    >>> fa.clip_grad_norm(g, max_norm=1.0)
    10.0
    >>> round(float(np.sqrt(sum((x ** 2).sum() for x in g))), 6)
    1.0
    """
    grads = _as_grad_list(grads)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a real number, got {max_norm!r}")
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm!r}")
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number or math.inf, got {norm_type!r}")
    norm_type = float(norm_type)
    if not (norm_type >= 1.0):
        raise ValueError(f"norm_type must be >= 1 or math.inf, got {norm_type!r}")
    parts = [_norm_of(g, norm_type) for g in grads]
    if norm_type == math.inf:
        total = max(parts, default=0.0)
    else:
        total = math.fsum(parts) ** (1.0 / norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(
                f"the total norm of order {norm_type} of the gradients is {total}"
            )
        return total
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        _check_writeable(grads)  # before the first write: all are scaled, or none
        for g in grads:
            _scale(g, coef)
    return total
