"""What a front end hands the engine: one group's validated arrays and hyperparameters."""

from typing import Any, NamedTuple, Optional

from fusedadam.engine._policy import NonFinitePolicy

__all__ = ["HyperSpec", "GroupSpec", "Positions"]


class Positions:
    """Where a group's params stand among all of a front end's params, when they are not
    consecutive (the torch front end steps the params of a group that have a gradient).

    It stands in for a group's first index in every message the engine writes:
    ``positions + k`` is the position of the group's ``k``-th param, and it formats as the
    first one's.
    """

    __slots__ = ("at",)

    def __init__(self, at):
        self.at = tuple(at)

    def __add__(self, k):
        return self.at[k]

    def __format__(self, spec):
        return format(self.at[0] if self.at else 0, spec)

    def __repr__(self):
        return f"Positions({list(self.at)})"


class HyperSpec(NamedTuple):
    """One group's validated hyperparameters, as a ``GroupPlan`` takes them."""

    keys: tuple  # the hyperparameter keys of ``GroupSpec.group`` whose objects are watched
    values: tuple  # those objects
    hyper: dict  # _algorithms.hyper_dict: the scalar rule's inputs
    lr: object  # float, or the callable lr(t)
    num_threads: object
    nonfinite: NonFinitePolicy
    backend: str  # "compiled" or "numpy"
    state_names: tuple  # the state arrays the step uses, in slot order
    state_dtype: Optional[str]  # the group's state_dtype option
    grad_scale: object  # float, callable or array (read at each step)
    max_grad_norm: Optional[float]
    master: str = "float32"  # the group's master option ("float32" or "residual")


class GroupSpec(NamedTuple):
    """One group's validated arrays and hyperparameters: what a ``GroupPlan`` is built from.

    The containers (``group``, ``state_dicts``) are the front end's; the plan only watches
    them by identity so that a later step notices an edit (and returns ``Outcome.PLAN``).
    """

    group: dict
    hyper_spec: HyperSpec
    state_names: tuple
    params: list
    state_dicts: tuple  # per param: its state dict (new ones not yet attached)
    slots: tuple  # (params, None, state arrays...): per slot, one array per param
    masters: tuple  # per param: its float32 master_param, its int16 master_residual, or None
    scales: tuple  # per state slot, per param: its 8-bit state's per-block absmax, or None
    qsigned: tuple  # per state slot: its 8-bit map is the signed one
    step_arrays: tuple  # per param: the 0-d int64 step counter
    mu_arrays: object  # per param: its scalar state, a tuple of 0-d float64, or None
    written: Any  # (lo, hi): byte intervals of every array any step writes (None: not yet)
    first_index: Any  # int: the params' first position (consecutive), or Positions
    installs: list  # (param, its state dict or None, {name: new value}) for the caller
    carry_names: tuple = ()  # the names of the scalar state in mu_arrays (the registry's)
