"""One step over explicit arrays, for code that keeps its own state: every algorithm.

As ``torch.optim``'s functional ``adam(params, grads, exp_avgs, exp_avg_sqs, ...)``: the
caller owns the state arrays (updated in place, never copied) and says which step this
is. Each function validates its arrays and hyperparameters, plans them and hands them to
the step engine (``fusedadam.engine``), the engine every optimizer class steps through:
the same loops, rules and messages, with no optimizer object. It plans anew on every call
(tens of microseconds); a training loop should keep an optimizer, whose plans are cached.

bfloat16/float16 params take their masters as ``masters=[...]`` (one per param, None for
a float32/float64 param): float32 arrays, or with ``master="residual"`` (``"compact"``;
bfloat16 params) int16 (int8) residual arrays, updated in place with the param.
"""

from typing import Any, Dict, Optional, Sequence

import numpy as np

from fusedadam import _algorithms, _precision, _validation
from fusedadam._backend import resolve_backend
from fusedadam.engine import Engine, Outcome
from fusedadam.engine._plan import group_spec, hyper_spec

__all__ = [
    "adam", "adamw", "adamax", "nadam", "radam", "adabelief", "lion", "ademamix", "adan",
    "adopt", "adam_atan2", "adamw_schedule_free", "radam_schedule_free", "lamb",
    "stable_adamw", "resolve_backend",
]  # fmt: skip

Arrays = Sequence[np.ndarray]


def _step(
    optimizer: str,
    params: Arrays,
    grads: Any,
    states: Dict[str, Arrays],
    step: int,
    options: Dict[str, Any],
    grad_scale: Any = None,
) -> bool:
    """One step of ``optimizer`` (a class name of the registry) over explicit arrays."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1 (the number of this update), got {step!r}")
    name, defaults = _algorithms.DEFAULTS[optimizer]
    algorithm = _algorithms.ALGORITHMS[name]
    masters = options.pop("masters", None)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{optimizer} has no hyperparameter {unknown[0]!r}")
    params = [params] if isinstance(params, np.ndarray) else list(params)
    if masters is not None:
        # bfloat16/float16 params: their masters (float32, or int16/int8 residuals with
        # master="residual"/"compact"), None for params without one
        masters = list(masters)
        name = (
            _precision.MASTER_RESIDUAL
            if options.get("master", defaults["master"]) in _precision.RESIDUAL_DTYPES
            else _precision.MASTER
        )
        states = {**states, name: masters}
    for state_name, arrays in states.items():
        if len(arrays) != len(params):
            raise ValueError(f"expected {len(params)} {state_name} arrays, got {len(arrays)}")
    group = {"params": params, **defaults, **options}
    spec = hyper_spec(algorithm, group, defaults, "")
    _validation.check_params(params, 0)
    counter = np.array(step - 1, dtype=np.int64)
    by_param = {}
    for k, p in enumerate(params):
        by_param[id(p)] = {
            **{
                state_name: arrays[k]
                for state_name, arrays in states.items()
                if arrays[k] is not None
            },
            "step": counter,
        }
    given = tuple(states)
    named: list = []
    planned = group_spec(
        algorithm, 0, group, spec, 0, named, lambda p: by_param[id(p)], lambda p: given
    )
    if planned.installs:  # an array could not be used in place (a counter given as a number)
        raise RuntimeError("fusedadam internal error: functional state would be replaced")
    engine = Engine()
    plan = engine.new_plan(planned._replace(written=_validation.written_intervals(named)))
    engine.set_plans([group], [plan])
    outcome = engine.step(grads, grad_scale)
    if outcome not in (Outcome.RAN, Outcome.SKIPPED, Outcome.RAN_NEW_STATE):
        raise RuntimeError(f"fusedadam internal error: a fresh plan did not fit ({outcome!r})")
    return outcome != Outcome.SKIPPED


def _adam_states(exp_avgs, exp_avg_sqs, max_exp_avg_sqs, beta1, beta2, options):
    """Adam's and AdamW's state arrays by name (AMSGrad when ``max_exp_avg_sqs`` is given);
    their options completed with ``betas`` and ``amsgrad``."""
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    if max_exp_avg_sqs is not None:
        states["max_exp_avg_sq"] = max_exp_avg_sqs
    options.update(betas=(beta1, beta2), amsgrad=max_exp_avg_sqs is not None)
    return states


def adam(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    max_exp_avg_sqs: Optional[Arrays] = None,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
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
    states = _adam_states(exp_avgs, exp_avg_sqs, max_exp_avg_sqs, beta1, beta2, options)
    return _step("Adam", params, grads, states, step, options)


def adamw(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    max_exp_avg_sqs: Optional[Arrays] = None,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One AdamW step: :func:`adam` with :class:`fusedadam.AdamW`'s defaults (decoupled
    weight decay, ``weight_decay=1e-2``)."""
    states = _adam_states(exp_avgs, exp_avg_sqs, max_exp_avg_sqs, beta1, beta2, options)
    return _step("AdamW", params, grads, states, step, options)


def adamax(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_infs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One Adamax step (Adam paper, Algorithm 2) over lists of arrays, in place.

    ``exp_infs`` holds ``u``; ``options`` are the other arguments of
    :class:`fusedadam.Adamax`; the rest is as in :func:`adam`.
    """
    options.update(betas=(beta1, beta2))
    return _step("Adamax", params, grads, {"exp_avg": exp_avgs, "exp_inf": exp_infs}, step, options)


def nadam(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    mu_products: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One NAdam step over lists of arrays, in place.

    ``mu_products`` holds each param's running product ``mu_1 ... mu_{t-1}`` as a writeable
    0-d float64 array (``np.ones(())`` before the first step), updated in place;
    ``options`` are the other arguments of :class:`fusedadam.NAdam`.
    """
    for k, mu in enumerate(mu_products):
        _validation.check_step_array(mu, f"mu_products[{k}]", np.float64)
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs, "mu_product": mu_products}
    return _step("NAdam", params, grads, states, step, options)


def radam(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One RAdam step over lists of arrays, in place (``options``: :class:`fusedadam.RAdam`)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    return _step("RAdam", params, grads, states, step, options)


def adabelief(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_vars: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One AdaBelief step over lists of arrays, in place; ``exp_avg_vars`` holds ``s``
    (``options``: :class:`fusedadam.AdaBelief`)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_var": exp_avg_vars}
    return _step("AdaBelief", params, grads, states, step, options)


def lion(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.99,
    **options: Any,
) -> bool:
    """One Lion step over lists of arrays, in place (``options``: :class:`fusedadam.Lion`).
    ``step`` only numbers the update for ``lr(t)``: Lion has no bias correction."""
    options.update(betas=(beta1, beta2))
    return _step("Lion", params, grads, {"exp_avg": exp_avgs}, step, options)


def lamb(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One LAMB step over lists of arrays, in place; each array is one tensor of the trust
    ratio (``options``: :class:`fusedadam.Lamb`)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    return _step("Lamb", params, grads, states, step, options)


def stable_adamw(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.99,
    **options: Any,
) -> bool:
    """One StableAdamW step over lists of arrays, in place; each array's RMS clips its own
    learning rate (``options``: :class:`fusedadam.StableAdamW`; with ``decouple_lr=True``
    pass ``max_lr``)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    return _step("StableAdamW", params, grads, states, step, options)


def adamw_schedule_free(
    params: Arrays,
    grads: Any,
    zs: Arrays,
    exp_avg_sqs: Arrays,
    lr_maxs: Arrays,
    weight_sums: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One Schedule-Free AdamW step over lists of arrays, in place (``options``:
    :class:`fusedadam.AdamWScheduleFree`).

    ``params`` hold ``y``; ``zs`` start as copies of the params, ``exp_avg_sqs`` at zero;
    ``lr_maxs`` and ``weight_sums`` are each param's writeable 0-d float64 running
    ``lr_max`` (``np.full((), -1.0)`` before the first step) and ``weight_sum``
    (``np.zeros(())``), updated in place. The average is
    ``x = (y - (1 - beta1) z) / beta1`` (what ``AdamWScheduleFree.eval()`` puts in the
    params).
    """
    for k, (lr_max, weight_sum) in enumerate(zip(lr_maxs, weight_sums)):
        _validation.check_step_array(lr_max, f"lr_maxs[{k}]", np.float64)
        _validation.check_step_array(weight_sum, f"weight_sums[{k}]", np.float64)
    options.update(betas=(beta1, beta2))
    states = {"z": zs, "exp_avg_sq": exp_avg_sqs, "lr_max": lr_maxs, "weight_sum": weight_sums}
    return _step("AdamWScheduleFree", params, grads, states, step, options)


def radam_schedule_free(
    params: Arrays,
    grads: Any,
    zs: Arrays,
    exp_avg_sqs: Arrays,
    lr_maxs: Arrays,
    weight_sums: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    **options: Any,
) -> bool:
    """One Schedule-Free RAdam step over lists of arrays, in place (the arrays as
    :func:`adamw_schedule_free`; ``options``: :class:`fusedadam.RAdamScheduleFree`)."""
    for k, (lr_max, weight_sum) in enumerate(zip(lr_maxs, weight_sums)):
        _validation.check_step_array(lr_max, f"lr_maxs[{k}]", np.float64)
        _validation.check_step_array(weight_sum, f"weight_sums[{k}]", np.float64)
    options.update(betas=(beta1, beta2))
    states = {"z": zs, "exp_avg_sq": exp_avg_sqs, "lr_max": lr_maxs, "weight_sum": weight_sums}
    return _step("RAdamScheduleFree", params, grads, states, step, options)


def ademamix(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    exp_avg_slows: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    beta3: float = 0.9999,
    **options: Any,
) -> bool:
    """One AdEMAMix step over lists of arrays, in place; ``exp_avg_slows`` holds the slow
    EMA (``options``: :class:`fusedadam.AdEMAMix`; ``step`` also drives the
    ``t_alpha_beta3`` warmup)."""
    options.update(betas=(beta1, beta2, beta3))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs, "exp_avg_slow": exp_avg_slows}
    return _step("AdEMAMix", params, grads, states, step, options)


def adan(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    exp_avg_diffs: Arrays,
    neg_pre_grads: Arrays,
    *,
    step: int,
    beta1: float = 0.98,
    beta2: float = 0.92,
    beta3: float = 0.99,
    **options: Any,
) -> bool:
    """One Adan step over lists of arrays, in place (``options``: :class:`fusedadam.Adan`).
    ``neg_pre_grads`` holds ``-g`` of the previous step and is overwritten with this step's;
    at ``step=1`` it is not read (the previous gradient is taken to be this one, as timm)."""
    options.update(betas=(beta1, beta2, beta3))
    states = {
        "exp_avg": exp_avgs,
        "exp_avg_sq": exp_avg_sqs,
        "exp_avg_diff": exp_avg_diffs,
        "neg_pre_grad": neg_pre_grads,
    }
    return _step("Adan", params, grads, states, step, options)


def adopt(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.9999,
    **options: Any,
) -> bool:
    """One ADOPT step over lists of arrays, in place (``options``: :class:`fusedadam.ADOPT`).
    ``step=1`` only sets ``exp_avg_sqs`` to ``g * g`` (the params do not move)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    return _step("ADOPT", params, grads, states, step, options)


def adam_atan2(
    params: Arrays,
    grads: Any,
    exp_avgs: Arrays,
    exp_avg_sqs: Arrays,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.99,
    **options: Any,
) -> bool:
    """One Adam-atan2 step over lists of arrays, in place (``options``:
    :class:`fusedadam.AdamAtan2`)."""
    options.update(betas=(beta1, beta2))
    states = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    return _step("AdamAtan2", params, grads, states, step, options)
