"""Per-step rules that every path shares (the compiled engine inlines their fast paths).

``learning_rate``: the rate of step ``t`` from a group's validated ``lr`` (a float, or a
callable checked at every call). ``count``: the step counted once per distinct counter.
``settle``: what a front end does when the engine asks for a new plan or new
hyperparameters instead of running.
"""

import math

from fusedadam import _validation

from fusedadam.engine._policy import Outcome

__all__ = ["learning_rate", "checked_rate", "count", "settle"]


def checked_rate(value, t):
    """``value`` returned by ``lr(t)``, as a float: finite and >= 0, else a clear error."""
    if type(value) is float and math.isfinite(value) and value >= 0.0:
        return value
    return _validation.check_lr(value, f"lr({t}) returned: ")


def learning_rate(lr, t):
    """The learning rate of step ``t`` (``t >= 1``) of a group whose ``lr`` is validated."""
    return checked_rate(lr(t), t) if callable(lr) else lr


def count(step_arrays, mu_arrays=None, mu_after=None):
    """Advance each distinct 0-d step counter once (params may share one), and set each
    param's scalar state (``mu_arrays[k]``, a tuple of 0-d arrays: NAdam's running product;
    Schedule-Free's lr_max and weight_sum) to ``mu_after`` (a tuple)."""
    seen = set()
    for k, step in enumerate(step_arrays):
        if id(step) not in seen:
            seen.add(id(step))
            step[...] += 1
        if mu_arrays is not None:
            for array, value in zip(mu_arrays[k], mu_after):
                array[...] = value


def settle(engine, outcome, grads, grad_scale, replan, refresh_hyper):
    """Step ``engine`` again after ``outcome`` asked for a new plan (``replan()``) or new
    hyperparameters (``refresh_hyper()``): at most one of each, then the step's own
    outcome (RAN, RAN_NEW_STATE or SKIPPED) for the front end to act on."""
    for _ in range(3):
        if outcome == Outcome.PLAN:
            replan()
        elif outcome == Outcome.HYPER:
            refresh_hyper()
        else:
            return outcome
        outcome = engine.step(grads, grad_scale)
    if outcome in (Outcome.PLAN, Outcome.HYPER):
        raise RuntimeError(f"fusedadam internal error: the engine still asks for {outcome!r}")
    return outcome
