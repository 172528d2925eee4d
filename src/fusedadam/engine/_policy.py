"""The step's outcomes and the non-finite policy: named once, decided in one function.

Every path (the compiled engine, the NumPy engine, SparseAdam, the sharded optimizer)
turns a group's ``nonfinite`` option into a :class:`NonFinitePolicy` when it validates the group,
and asks :func:`nonfinite_outcome` what a gradient that is not finite means for the step.
"""

import enum
from typing import Callable

__all__ = ["NonFinitePolicy", "Outcome", "nonfinite_outcome", "needs_scan"]


class NonFinitePolicy(enum.IntEnum):
    """A group's ``nonfinite`` option: what a NaN or inf gradient value does to a step."""

    ERROR = 0  # raise FloatingPointError naming the param; nothing is written
    SKIP = 1  # skip the whole step (every group); the front end counts it
    IGNORE = 2  # no check: the values flow into the update as IEEE says

    @classmethod
    def of(cls, option: str) -> "NonFinitePolicy":
        """The policy of a validated ``nonfinite`` option ("error", "skip" or "ignore")."""
        return cls[option.upper()]


class Outcome(enum.IntEnum):
    """What :meth:`Engine.step` did, or what it needs from its caller before it can."""

    RAN = 0  # every group was updated and counted
    SKIPPED = 1  # a non-finite gradient in a "skip" group: nothing was written
    PLAN = 2  # the plans no longer fit the caller's arrays: plan every group again
    HYPER = 3  # some groups' hyperparameters changed (``Engine.stale_groups()``)
    RAN_NEW_STATE = 4  # ran, and a plan's new state must now be attached by the caller


def needs_scan(policy: NonFinitePolicy, clips: bool) -> bool:
    """Whether a group's gradients are scanned before the update (for NaN/inf or the norm)."""
    return policy != NonFinitePolicy.IGNORE or clips


def nonfinite_outcome(policy: NonFinitePolicy, error: Callable[[], Exception]) -> Outcome:
    """The outcome of a step in which a group with ``policy`` saw a non-finite gradient
    value: ``ERROR`` raises ``error()`` (the caller's message names the param; nothing has
    been written yet), ``SKIP`` skips the whole step, ``IGNORE`` lets it run."""
    if policy == NonFinitePolicy.ERROR:
        raise error()
    return Outcome.SKIPPED if policy == NonFinitePolicy.SKIP else Outcome.RAN
