"""Functional core: one Adam-family step over lists of arrays, in place.

The optimizer classes drive these functions; tests call them directly. A call validates
everything first and then writes: on any error no array has changed. Each call checks and
builds its pointer tables anew (tens of microseconds); the optimizer classes keep them
between steps, so a training loop should use those.

Per-step scalars are computed once, in double precision, by :func:`adam_scalars`; both
backends cast them to the arrays' dtype and run the same elementwise operations.
"""
import math
import warnings

import numpy as np

from fusedadam import _validation
from fusedadam import reference
from fusedadam._threads import effective_num_threads

try:
    from fusedadam import _kernels
except ImportError:  # the extension was not built: the NumPy reference is the backend
    _kernels = None

__all__ = ["adam", "adamax", "adam_scalars", "resolve_backend"]

BACKENDS = ("auto", "compiled", "numpy")
_warned_fallback = False

# Loop kinds, the same numbers as the compiled module's.
ADAM, ADAM_L2, AMSGRAD, AMSGRAD_L2, ADAMAX, ADAMAX_L2, PROBE = range(7)


def resolve_backend(backend):
    """Map ``"auto"``/``"compiled"``/``"numpy"`` to the backend that will run."""
    global _warned_fallback
    if backend == "numpy":
        return "numpy"
    if backend == "compiled":
        if _kernels is None:
            raise RuntimeError(
                "backend='compiled' but fusedadam's extension is not built; reinstall "
                "with a C compiler, or use backend='numpy'"
            )
        return "compiled"
    if backend == "auto":
        if _kernels is not None:
            return "compiled"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "fusedadam's compiled extension is not available; using the (slower) "
                "NumPy reference backend",
                RuntimeWarning,
                stacklevel=3,
            )
        return "numpy"
    raise ValueError(f"Invalid backend {backend!r}; expected one of {BACKENDS}")


def adam_scalars(step, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False,
                 maximize=False, bias_correction=True, beta1_decay=1.0):
    """The 10 per-step scalars of the kernels, computed in double.

    Returns ``(sign, weight_decay, decay, beta1_t, 1 - beta1_t, beta2, 1 - beta2,
    step_size, sqrt(bc2), eps)`` where ``beta1_t = beta1 * beta1_decay**(step - 1)``,
    ``step_size = lr / bc1``, ``bc1 = 1 - beta1**step`` and ``bc2 = 1 - beta2**step``
    (both 1 without bias correction), and ``decay = 1 - lr * weight_decay`` for decoupled
    (AdamW) weight decay, else 1. ``lr`` is the value for this step.
    """
    beta1_t = beta1 * beta1_decay ** (step - 1)
    if bias_correction:
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
    else:
        bc1 = bc2 = 1.0
    return (
        -1.0 if maximize else 1.0,
        0.0 if decoupled else float(weight_decay),
        1.0 - lr * weight_decay if decoupled else 1.0,
        float(beta1_t),
        1.0 - beta1_t,
        float(beta2),
        1.0 - beta2,
        lr / bc1,
        math.sqrt(bc2),
        float(eps),
    )


def nonfinite_error(group_step, k, element):
    """The FloatingPointError for a NaN/inf in gradient ``k`` of a group."""
    grad = group_step.prepared_grads()[k]
    count = int(np.count_nonzero(~np.isfinite(grad)))
    index = np.unravel_index(element, grad.shape) if grad.ndim > 1 else element
    return FloatingPointError(
        f"grads[{group_step.first_index + k}] has {count} non-finite value"
        f"{'s' if count != 1 else ''} (NaN or inf; the first at index {index}); nothing was "
        "updated. Use nonfinite='skip' to skip such steps or 'ignore' to let them propagate."
    )


def learning_rate(lr, step):
    """``lr`` itself, or ``lr(step)`` when it is callable; checked to be finite and >= 0."""
    if callable(lr):
        value = lr(step)
        return _validation.check_lr(value, f"lr({step}) returned: ")
    return float(lr)


def loop_kind(algorithm, amsgrad, coupled_weight_decay):
    """The compiled loop for an algorithm (``"adam"`` or ``"adamax"``) and its options."""
    if algorithm == "adamax":
        return ADAMAX_L2 if coupled_weight_decay else ADAMAX
    if amsgrad:
        return AMSGRAD_L2 if coupled_weight_decay else AMSGRAD
    return ADAM_L2 if coupled_weight_decay else ADAM


class GroupStep:
    """Validated arrays of one parameter group and how to step them.

    ``states`` is a list of per-state lists parallel to ``params``, in the kernel's order:
    ``[exp_avgs, exp_avg_sqs(, max_exp_avg_sqs)]`` for Adam, ``[exp_avgs, exp_infs]`` for
    Adamax. The compiled kernel (pointer tables) is built once and reused while the arrays
    stay the same; ``prepare`` checks a step's gradients and ``run`` writes.
    """

    def __init__(self, params, states, state_names, backend, first_index=0, written=None):
        self.params = list(params)
        self.states = [list(s) for s in states]
        self.state_names = tuple(state_names)
        self.backend = backend
        self.first_index = first_index
        if written is None:
            _validation.check_params(self.params, first_index)
            written = _validation.check_state(self.params, self._state_dicts(), first_index)
        # Byte intervals of every array the step writes -- the whole optimizer's when
        # given, so a gradient cannot alias a parameter of another group either.
        self.written_lo, self.written_hi = written
        self.kernel = None
        if backend == "compiled":
            thirds = self.states[2] if len(self.states) > 2 else None
            self.kernel = _kernels.GroupKernel(
                self.params, self.states[0], self.states[1], thirds,
                self.written_lo, self.written_hi,
            )
        self._grads = None
        self._kind = None

    def _state_dicts(self):
        return [dict(zip(self.state_names, arrays)) for arrays in zip(*self.states)]

    def prepare(self, params, grads, grad_offset, kind):
        """Check this group's gradients ``grads[grad_offset:]``; write nothing.

        ``params`` is the group's current list. Returns False when it no longer matches
        the arrays this GroupStep was built from (the caller rebuilds the group).
        """
        n = len(self.params)
        if self.kernel is not None:
            status = self.kernel.prepare(params, grads, grad_offset, kind)
            if status < 0:
                return False
            if status > 0:
                checked = _validation.check_grads(
                    grads[grad_offset:grad_offset + n], self.params, self.written_lo,
                    self.written_hi, self.first_index,
                )
                if self.kernel.prepare(params, checked, 0, kind) != 0:
                    raise RuntimeError("fusedadam internal error: validated gradients rejected")
            return True
        if len(params) != n or any(a is not b for a, b in zip(params, self.params)):
            return False
        # The NumPy backend re-checks the arrays every step; it is not the fast path.
        _validation.check_params(self.params, self.first_index)
        _validation.check_state(self.params, self._state_dicts(), self.first_index)
        self._grads = _validation.check_grads(
            grads[grad_offset:grad_offset + n], self.params, self.written_lo,
            self.written_hi, self.first_index,
        )
        self._kind = kind
        return True

    def prepared_grads(self):
        """The gradients ``prepare`` accepted, one per param (copies where it made them)."""
        if self.kernel is not None:
            grads, offset = self.kernel.prepared_grads
            return grads[offset:offset + len(self.params)]
        return self._grads

    def first_nonfinite(self, num_threads):
        """After ``prepare``: ``(k, i)`` of the first NaN/inf gradient value (array ``k``
        of the group, flat element ``i``), or None."""
        if self.kernel is not None:
            return self.kernel.first_nonfinite(num_threads)
        for k, g in enumerate(self._grads):
            bad = np.flatnonzero(~np.isfinite(g.reshape(-1)))
            if bad.size:
                return k, int(bad[0])
        return None

    def run(self, scalars, num_threads):
        """Write the step prepared by ``prepare``."""
        if self.kernel is not None:
            self.kernel.run(scalars, num_threads)
            return
        kind, grads, self._grads = self._kind, self._grads, None
        coupled = kind in (ADAM_L2, AMSGRAD_L2, ADAMAX_L2)
        if kind in (ADAMAX, ADAMAX_L2):
            for p, g, m, u in zip(self.params, grads, *self.states):
                reference.adamax_update(p, g, m, u, scalars, coupled)
            return
        amsgrad = kind in (AMSGRAD, AMSGRAD_L2)
        for k, (p, g) in enumerate(zip(self.params, grads)):
            vmax = self.states[2][k] if amsgrad else None
            reference.adam_update(p, g, self.states[0][k], self.states[1][k], vmax,
                                  scalars, coupled)


def _functional_step(algorithm, params, grads, states, state_names, *, step, lr, beta1,
                     beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
                     bias_correction, beta1_decay, num_threads, backend, nonfinite):
    backend = resolve_backend(backend)
    hyper = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                 beta1_decay=beta1_decay, amsgrad=amsgrad, maximize=maximize,
                 bias_correction=bias_correction, nonfinite=nonfinite)
    _validation.check_hyperparameters(hyper)
    _validation.check_num_threads(num_threads)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 (the number of this update), got {step!r}")
    params = list(params)
    for name, arrays in zip(state_names, states):
        if len(arrays) != len(params):
            raise ValueError(f"expected {len(params)} {name} arrays, got {len(arrays)}")
    grads = _validation.as_grad_list(grads, len(params))
    lr_t = learning_rate(lr, step)
    group = GroupStep(params, states, state_names, backend)
    coupled = weight_decay != 0 and not decoupled_weight_decay
    kind = loop_kind(algorithm, amsgrad, coupled)
    group.prepare(params, grads, 0, kind)
    n_threads = effective_num_threads(num_threads)
    if nonfinite != "ignore":
        found = group.first_nonfinite(n_threads)
        if found is not None:
            if nonfinite == "error":
                raise nonfinite_error(group, *found)
            return False
    scalars = adam_scalars(step, lr_t, beta1, beta2, eps, weight_decay,
                           decoupled_weight_decay, maximize, bias_correction, beta1_decay)
    group.run(scalars, n_threads)
    return True


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr=1e-3,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
         maximize=False, bias_correction=True, beta1_decay=1.0, num_threads=None,
         backend="auto", nonfinite="error"):
    """One Adam, AdamW or AMSGrad step over lists of arrays, in place.

    Parameters
    ----------
    params : sequence of ndarray
        float32/float64, C-contiguous, writeable; updated in place.
    grads : ndarray or sequence of ndarray
        One gradient per param, same dtype and shape; read only.
    exp_avgs, exp_avg_sqs : sequence of ndarray
        First and second moment estimates ``m`` and ``v``, shaped like the params.
    max_exp_avg_sqs : sequence of ndarray, optional
        Running maxima of ``v``; given means AMSGrad.
    step : int
        The number ``t >= 1`` of this update (bias correction and ``lr(t)`` use it).
    lr : float or callable
        Learning rate, or ``lr(t)`` returning it.
    beta1, beta2, eps, weight_decay, beta1_decay : float
        As in the Adam paper; ``beta1_decay`` is its lambda (``beta1_t = beta1 *
        beta1_decay**(t-1)``).
    decoupled_weight_decay : bool
        AdamW: ``p *= 1 - lr * weight_decay`` instead of adding ``weight_decay * p`` to
        the gradient.
    maximize, bias_correction : bool
    num_threads : int or None
        None: OpenMP's default; -1: all processors; else a positive count.
    backend : {"auto", "compiled", "numpy"}
    nonfinite : {"error", "skip", "ignore"}
        NaN/inf in a gradient: raise ``FloatingPointError``; skip the step (return False);
        or no check.

    Returns
    -------
    bool
        True when the step was taken, False when it was skipped.

    Raises
    ------
    TypeError, ValueError, FloatingPointError
        Before anything is written, naming the offending array or hyperparameter.
    """
    amsgrad = max_exp_avg_sqs is not None
    states = [exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    names = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"][: len(states)]
    return _functional_step(
        "adam", params, grads, states, names, step=step, lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
        beta1_decay=beta1_decay, num_threads=num_threads, backend=backend,
        nonfinite=nonfinite,
    )


def adamax(params, grads, exp_avgs, exp_infs, *, step, lr=2e-3, beta1=0.9, beta2=0.999,
           eps=1e-8, weight_decay=0.0, maximize=False, bias_correction=True,
           beta1_decay=1.0, num_threads=None, backend="auto", nonfinite="error"):
    """One Adamax step (Adam paper, Algorithm 2) over lists of arrays, in place.

    ``u = max(beta2 * u, |g| + eps)`` and ``p -= lr / (1 - beta1**t) * m / u``; the other
    parameters are as in :func:`adam` (``exp_infs`` holds ``u``).
    """
    return _functional_step(
        "adamax", params, grads, [exp_avgs, exp_infs], ["exp_avg", "exp_inf"], step=step,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=False, amsgrad=False, maximize=maximize,
        bias_correction=bias_correction, beta1_decay=beta1_decay, num_threads=num_threads,
        backend=backend, nonfinite=nonfinite,
    )
