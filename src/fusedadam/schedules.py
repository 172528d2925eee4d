"""Learning-rate schedules: picklable objects usable as ``lr=`` of every optimizer.

An optimizer calls ``lr(t)`` with its step number ``t = 1, 2, ...``; a schedule returns
the rate of that step. Like optax's schedules (and torch's ``LambdaLR``), a schedule is a
function of the number of steps already taken, ``count = t - 1``: the first step uses the
value at ``count = 0``, and ``sched(t)`` equals optax's ``schedule(t - 1)``.

Unlike a lambda, a schedule is a plain object: it pickles, it compares equal to a copy of
itself, and :meth:`Schedule.to_config` / :func:`from_config` turn it into JSON and back,
which is how :func:`fusedadam.flatten_state_dict` stores it in an ``.npz`` file.

>>> import fusedadam as fa
>>> from fusedadam import schedules
>>> lr = schedules.warmup_cosine_decay(0.0, 1e-3, warmup_steps=100, decay_steps=1000)
>>> lr(1), lr(101), round(lr(1100), 12)
(0.0, 0.001, 0.0)
"""

import inspect
import json
import math
import numbers
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = [
    "Schedule",
    "Constant",
    "StepDecay",
    "ExponentialDecay",
    "LinearDecay",
    "CosineDecay",
    "LinearWarmup",
    "OneCycle",
    "JoinSchedules",
    "warmup_cosine_decay",
    "from_config",
    "from_json",
]


def _real(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def _count(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _step_number(t: int) -> int:
    """The optimizer's step ``t >= 1`` as the count of steps taken before it."""
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"a schedule is called with the step number t (an int), got {t!r}")
    if t < 1:
        raise ValueError(f"step numbers start at 1, got {t!r}")
    return int(t) - 1


class Schedule:
    """Base class: ``sched(t)`` is the learning rate of step ``t`` (``t = 1`` first).

    Subclasses implement :meth:`value` (a function of ``count = t - 1``) and list their
    constructor arguments in ``_fields`` (by default the ``__init__`` parameters); that
    list is all that pickling, equality,
    ``repr`` and :meth:`to_config` need.
    """

    _fields: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The constructor's parameters, unless the class names its fields itself
        # (Constant keeps ``value`` as ``value_``: ``value`` is the method).
        super().__init_subclass__(**kwargs)
        if "_fields" not in cls.__dict__:
            parameters = list(inspect.signature(cls.__init__).parameters)[1:]
            cls._fields = tuple(parameters)

    def __call__(self, t: int) -> float:
        count = _step_number(t)
        try:
            return float(self.value(count))
        except OverflowError:
            # A growing rate (gamma > 1) past float's range: inf, which the optimizer
            # refuses with a ValueError naming lr(t), rather than an OverflowError.
            return math.inf

    def value(self, count: int) -> float:
        """The rate after ``count`` steps (``count = 0`` for the first step)."""
        raise NotImplementedError

    def to_config(self) -> Dict[str, Any]:
        """JSON-compatible ``{"type": class name, <constructor arguments>}``."""
        config: Dict[str, Any] = {"type": type(self).__name__}
        for name in self._fields:
            value = getattr(self, name)
            if isinstance(value, Schedule):
                value = value.to_config()
            elif isinstance(value, (list, tuple)):
                value = [v.to_config() if isinstance(v, Schedule) else v for v in value]
            config[name] = value
        return config

    def to_json(self) -> str:
        """:meth:`to_config` as a JSON string (what an ``.npz`` checkpoint stores)."""
        return json.dumps(self.to_config(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate at every step.

    Parameters
    ----------
    value : float
        The learning rate, >= 0.
    """

    _fields = ("value_",)

    def __init__(self, value: float) -> None:
        self.value_ = _real(value, "value")

    def value(self, count: int) -> float:
        return self.value_

    def to_config(self) -> Dict[str, Any]:
        return {"type": "Constant", "value": self.value_}

    def __repr__(self) -> str:
        return f"Constant(value={self.value_!r})"


class StepDecay(Schedule):
    """``init_value * gamma ** (count // step_size)``, as ``torch.optim.lr_scheduler.StepLR``.

    Parameters
    ----------
    init_value : float
        Rate of the first ``step_size`` steps.
    step_size : int
        Steps between two multiplications by ``gamma``.
    gamma : float, default 0.1
        Factor applied every ``step_size`` steps.
    """

    def __init__(self, init_value: float, step_size: int, gamma: float = 0.1) -> None:
        self.init_value = _real(init_value, "init_value")
        self.step_size = _count(step_size, "step_size")
        self.gamma = _real(gamma, "gamma")

    def value(self, count: int) -> float:
        return self.init_value * self.gamma ** (count // self.step_size)


class ExponentialDecay(Schedule):
    """``init_value * decay_rate ** (count / transition_steps)``, optionally clipped.

    Parameters
    ----------
    init_value : float
        Rate of the first step.
    decay_rate : float
        Factor per ``transition_steps`` steps (< 1 decays, > 1 grows).
    transition_steps : int, default 1
        Steps over which the rate is multiplied by ``decay_rate``.
    staircase : bool, default False
        Use ``count // transition_steps`` (a step function) instead of the ratio.
    end_value : float or None, default None
        A floor (when decaying) or ceiling (when growing) of the rate.
    """

    def __init__(
        self,
        init_value: float,
        decay_rate: float,
        transition_steps: int = 1,
        staircase: bool = False,
        end_value: Optional[float] = None,
    ) -> None:
        self.init_value = _real(init_value, "init_value")
        self.decay_rate = _real(decay_rate, "decay_rate", positive=True)
        self.transition_steps = _count(transition_steps, "transition_steps")
        self.staircase = bool(staircase)
        self.end_value = None if end_value is None else _real(end_value, "end_value")

    def value(self, count: int) -> float:
        exponent = count / self.transition_steps
        if self.staircase:
            exponent = math.floor(exponent)
        rate = self.init_value * self.decay_rate**exponent
        if self.end_value is not None:
            rate = max(rate, self.end_value) if self.decay_rate < 1 else min(rate, self.end_value)
        return rate


class LinearDecay(Schedule):
    """From ``init_value`` to ``end_value`` in a straight line over ``decay_steps``, then flat.

    ``init_value + (end_value - init_value) * min(count, decay_steps) / decay_steps``.
    With ``end_value > init_value`` this is a linear ramp up.

    Parameters
    ----------
    init_value, end_value : float
        Rates at ``count = 0`` and from ``count = decay_steps`` on.
    decay_steps : int
        Length of the ramp in steps.
    """

    def __init__(self, init_value: float, end_value: float, decay_steps: int) -> None:
        self.init_value = _real(init_value, "init_value")
        self.end_value = _real(end_value, "end_value")
        self.decay_steps = _count(decay_steps, "decay_steps")

    def value(self, count: int) -> float:
        frac = min(count, self.decay_steps) / self.decay_steps
        return self.init_value + (self.end_value - self.init_value) * frac


class CosineDecay(Schedule):
    """Half a cosine from ``init_value`` down to ``end_value`` over ``decay_steps``, then flat.

    ``end_value + (init_value - end_value) * (1 + cos(pi * min(count, decay_steps) /
    decay_steps)) / 2`` (SGDR without restarts; optax's ``cosine_decay_schedule``).

    Parameters
    ----------
    init_value : float
        Rate at ``count = 0``.
    decay_steps : int
        Steps to reach ``end_value``.
    end_value : float, default 0.0
        Rate from ``count = decay_steps`` on.
    """

    def __init__(self, init_value: float, decay_steps: int, end_value: float = 0.0) -> None:
        self.init_value = _real(init_value, "init_value")
        self.decay_steps = _count(decay_steps, "decay_steps")
        self.end_value = _real(end_value, "end_value")

    def value(self, count: int) -> float:
        frac = min(count, self.decay_steps) / self.decay_steps
        return self.end_value + (self.init_value - self.end_value) * 0.5 * (
            1.0 + math.cos(math.pi * frac)
        )


class LinearWarmup(LinearDecay):
    """A linear ramp from ``init_value`` to ``peak_value`` over ``warmup_steps``, then flat.

    Parameters
    ----------
    init_value : float
        Rate at ``count = 0`` (often 0).
    peak_value : float
        Rate from ``count = warmup_steps`` on.
    warmup_steps : int
        Length of the ramp.
    """

    def __init__(self, init_value: float, peak_value: float, warmup_steps: int) -> None:
        # The ramp of LinearDecay, from init_value up to peak_value.
        super().__init__(init_value, peak_value, warmup_steps)

    @property
    def peak_value(self) -> float:
        return self.end_value

    @property
    def warmup_steps(self) -> int:
        return self.decay_steps


class OneCycle(Schedule):
    """The one-cycle policy: cosine up to ``max_value``, then cosine down to a small rate.

    The rate starts at ``max_value / div_factor``, rises to ``max_value`` over the first
    ``round(pct_start * total_steps)`` steps and falls to ``max_value / (div_factor *
    final_div_factor)`` at ``count = total_steps``, where it stays (torch's
    ``OneCycleLR`` with ``anneal_strategy="cos"``, learning rate only).

    Parameters
    ----------
    max_value : float
        Peak rate.
    total_steps : int
        Length of the cycle.
    pct_start : float, default 0.3
        Fraction of the cycle spent rising, in (0, 1).
    div_factor : float, default 25.0
        ``max_value / div_factor`` is the initial rate.
    final_div_factor : float, default 1e4
        The final rate is the initial rate divided by this.
    """

    def __init__(
        self,
        max_value: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.max_value = _real(max_value, "max_value")
        self.total_steps = _count(total_steps, "total_steps", minimum=2)
        self.pct_start = _real(pct_start, "pct_start")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        self.div_factor = _real(div_factor, "div_factor", positive=True)
        self.final_div_factor = _real(final_div_factor, "final_div_factor", positive=True)

    def value(self, count: int) -> float:
        initial = self.max_value / self.div_factor
        final = initial / self.final_div_factor
        rise = min(max(1, round(self.pct_start * self.total_steps)), self.total_steps - 1)
        if count <= rise:
            start, end, frac = initial, self.max_value, count / rise
        else:
            fall = self.total_steps - rise
            start, end, frac = self.max_value, final, min(count - rise, fall) / fall
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


class JoinSchedules(Schedule):
    """Schedules one after another (optax's ``join_schedules``).

    Before ``boundaries[0]`` steps have been taken, ``schedules[0]`` gives the rate; from
    then on ``schedules[1]``, evaluated at ``count - boundaries[0]`` (each schedule starts
    at its own count 0), and so on.

    Parameters
    ----------
    schedules : sequence of Schedule
        ``len(boundaries) + 1`` schedules.
    boundaries : sequence of int
        Strictly increasing step counts where the next schedule takes over.
    """

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]) -> None:
        schedules, boundaries = list(schedules), list(boundaries)
        for i, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                raise TypeError(f"schedules[{i}] must be a Schedule (picklable), got {s!r}")
        if len(schedules) != len(boundaries) + 1:
            raise ValueError(
                f"{len(schedules)} schedules need {len(schedules) - 1} "
                f"boundaries, got {len(boundaries)}"
            )
        boundaries = [_count(b, f"boundaries[{i}]") for i, b in enumerate(boundaries)]
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
        self.schedules = tuple(schedules)
        self.boundaries = tuple(boundaries)

    def value(self, count: int) -> float:
        start = 0
        for schedule, boundary in zip(self.schedules, self.boundaries):
            if count < boundary:
                return schedule.value(count - start)
            start = boundary
        return self.schedules[-1].value(count - start)


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> JoinSchedules:
    """Linear warmup to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warmup included (as optax's
    ``warmup_cosine_decay_schedule``).

    Returns
    -------
    JoinSchedules
        ``LinearWarmup`` for ``warmup_steps`` steps, then ``CosineDecay``.
    """
    warmup_steps = _count(warmup_steps, "warmup_steps")
    decay_steps = _count(decay_steps, "decay_steps")
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})")
    return JoinSchedules(
        [
            LinearWarmup(init_value, peak_value, warmup_steps),
            CosineDecay(peak_value, decay_steps - warmup_steps, end_value),
        ],
        [warmup_steps],
    )


_TYPES = {
    cls.__name__: cls
    for cls in (
        Constant,
        StepDecay,
        ExponentialDecay,
        LinearDecay,
        CosineDecay,
        LinearWarmup,
        OneCycle,
        JoinSchedules,
    )
}


def from_config(config: Dict[str, Any]) -> Schedule:
    """The schedule that :meth:`Schedule.to_config` described.

    Raises
    ------
    ValueError
        For an unknown ``"type"``.
    TypeError
        For a config that is not a dict, or arguments the type does not take.
    """
    if not isinstance(config, dict):
        raise TypeError(
            f"a schedule config must be a dict with a 'type' entry, got {type(config).__name__}"
        )
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _TYPES:
        raise ValueError(f"unknown schedule type {kind!r}; expected one of {sorted(_TYPES)}")
    if kind == "JoinSchedules":
        config["schedules"] = [from_config(c) for c in config["schedules"]]
    return _TYPES[kind](**config)


def from_json(text: str) -> Schedule:
    """Inverse of :meth:`Schedule.to_json`."""
    return from_config(json.loads(text))
