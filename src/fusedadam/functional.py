"""One-shot steps over explicit state arrays, for code that keeps its own state.

Each function builds the matching optimizer over ``params`` with the given state arrays
installed as that optimizer's state (used in place, not copied) at step ``step - 1``, and
takes one step: the very step of the classes, driver, validation and messages included.
It validates and plans anew on every call (tens of microseconds); a training loop should
keep an optimizer instead.
"""

import numpy as np

from fusedadam import optim
from fusedadam._backend import resolve_backend

__all__ = ["adam", "adamax", "resolve_backend"]


def _one_step(cls, params, grads, states, step, options):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1 (the number of this update), got {step!r}")
    params = list(params)
    for name, arrays in states.items():
        if len(arrays) != len(params):
            raise ValueError(f"expected {len(params)} {name} arrays, got {len(arrays)}")
    opt = cls(params, **options)
    counter = np.array(step - 1, dtype=np.int64)
    for k, p in enumerate(params):
        opt.state[p] = {**{name: arrays[k] for name, arrays in states.items()}, "step": counter}
    skipped = opt.skipped_steps
    opt.step(grads)
    return opt.skipped_steps == skipped


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, beta1=0.9,
         beta2=0.999, **options):  # fmt: skip
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
    beta1, beta2 : float
        ``betas`` of :class:`fusedadam.Adam`.
    **options
        Any other argument of :class:`fusedadam.Adam` (``lr``, ``eps``, ``weight_decay``,
        ``decoupled_weight_decay``, ...), with its defaults.

    Returns
    -------
    bool
        True when the step was taken, False when ``nonfinite="skip"`` skipped it.
    """
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    if max_exp_avg_sqs is not None:
        states["max_exp_avg_sq"] = max_exp_avg_sqs
    options.update(betas=(beta1, beta2), amsgrad=max_exp_avg_sqs is not None)
    return _one_step(optim.Adam, params, grads, states, step, options)


def adamax(params, grads, exp_avgs, exp_infs, *, step, beta1=0.9, beta2=0.999, **options):
    """One Adamax step (Adam paper, Algorithm 2) over lists of arrays, in place.

    ``exp_infs`` holds ``u``; ``options`` are the other arguments of
    :class:`fusedadam.Adamax`; the rest is as in :func:`adam`.
    """
    states = {"exp_avg": exp_avgs, "exp_inf": exp_infs}
    options.update(betas=(beta1, beta2))
    return _one_step(optim.Adamax, params, grads, states, step, options)
