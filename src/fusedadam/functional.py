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

import inspect
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import numpy as np

from fusedadam import _algorithms, _generate, _precision, _validation
from fusedadam._backend import resolve_backend
from fusedadam.engine import Engine, Outcome
from fusedadam.engine._plan import group_spec, hyper_spec

# One function per optimizer class of the registry, generated (_function, at the end).
__all__ = [entry.function for entry in _algorithms.CLASSES.values()] + ["resolve_backend"]

Arrays = Sequence[np.ndarray]

if TYPE_CHECKING:  # the generated functions, as a type checker sees them

    def __getattr__(name: str) -> Callable[..., bool]: ...


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


_P = inspect.Parameter


def _state_doc(name, algorithm):
    if name in algorithm.from_param:
        return f"The ``{name}`` state of each param (a copy of it before the first step)"
    return f"The ``{name}`` state of each param (zero before the first step)"


def _docstring(optimizer, algorithm, entry, n_betas):
    """numpydoc of the function of ``optimizer``: what every one says, and the registry's
    note on this one."""
    lines = [f"One {optimizer} step over lists of arrays, in place.", ""]
    if entry.function_doc:
        lines += [entry.function_doc, ""]
    lines += [
        "Parameters",
        "----------",
        "params : sequence of ndarray",
        "    float32/float64 (bfloat16/float16 with ``masters=[...]``), C-contiguous, "
        "writeable; updated in place.",
        "grads : ndarray or sequence of ndarray",
        "    One gradient per param, shaped like it; read only.",
    ]
    for name in algorithm.state_names:
        lines += [
            f"{name}s : sequence of ndarray",
            f"    {_state_doc(name, algorithm)}, updated in place.",
        ]
    for name, initial in algorithm.scalar_state:
        lines += [
            f"{name}s : sequence of ndarray",
            f"    Each param's ``{name}`` as a writeable 0-d float64 array "
            f"(``np.full((), {initial!r})`` before the first step), updated in place.",
        ]
    for name, flag in algorithm.optional_state:
        lines += [
            f"{name}s : sequence of ndarray, optional",
            f"    {_state_doc(name, algorithm)}; given means ``{flag}=True``.",
        ]
    betas = ", ".join(f"beta{i + 1}" for i in range(n_betas))
    lines += [
        "step : int",
        "    The number ``t >= 1`` of this update (bias correction and ``lr(t)`` use it).",
    ]
    if n_betas:  # a class may have none
        lines += [f"{betas} : float", f"    ``betas`` of :class:`fusedadam.{optimizer}`."]
    lines += [
        "**options",
        f"    Any other argument of :class:`fusedadam.{optimizer}`, with its defaults; "
        "``masters`` for bfloat16/float16 params.",
        "",
        "Returns",
        "-------",
        "bool",
        '    True when the step was taken, False when ``nonfinite="skip"`` skipped it.',
    ]
    return "\n".join(lines)


def _function(optimizer):
    """The function of ``optimizer`` (a class name of the registry): its state arrays as
    lists named after them (``exp_avgs``, ...), then the per-param scalar state and the
    optional state, ``step`` and the betas one by one, as torch's ``adam()``."""
    name, defaults = _algorithms.DEFAULTS[optimizer]
    algorithm = _algorithms.ALGORITHMS[name]
    entry = _algorithms.CLASSES[optimizer]
    betas = defaults.get("betas", ())  # a class may have none
    carried = [f"{state}s" for state, _ in algorithm.scalar_state]
    parameters = (
        [_P("params", _P.POSITIONAL_OR_KEYWORD, annotation=Arrays)]
        + [_P("grads", _P.POSITIONAL_OR_KEYWORD, annotation=Any)]
        + [
            _P(f"{state}s", _P.POSITIONAL_OR_KEYWORD, annotation=Arrays)
            for state in algorithm.state_names + tuple(s for s, _ in algorithm.scalar_state)
        ]
        + [
            _P(f"{state}s", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=Optional[Arrays])
            for state, _ in algorithm.optional_state
        ]
        + [_P("step", _P.KEYWORD_ONLY, annotation=int)]
        + [
            _P(f"beta{i + 1}", _P.KEYWORD_ONLY, default=beta, annotation=float)
            for i, beta in enumerate(betas)
        ]
        + [_P("options", _P.VAR_KEYWORD, annotation=Any)]
    )
    states = ", ".join(
        f"{state!r}: {state}s"
        for state in algorithm.state_names + tuple(s for s, _ in algorithm.scalar_state)
    )
    body = [f"_check_carried({arrays}, {arrays!r})" for arrays in carried]
    body.append(f"_states = {{{states}}}")
    flags = ""
    for state, flag in algorithm.optional_state:
        body += [f"if {state}s is not None:", f"    _states[{state!r}] = {state}s"]
        flags += f", {flag}={state}s is not None"
    beta_names = ", ".join(f"beta{i + 1}" for i in range(len(betas)))
    if betas:
        flags = f"betas=({beta_names},){flags}"
    body.append(f"options.update({flags.removeprefix(', ')})")
    body.append(f"return _step({optimizer!r}, params, grads, _states, step, options)")
    return _generate.define(
        entry.function,
        inspect.Signature(parameters, return_annotation=bool),
        "\n".join(body),
        {"_step": _step, "_check_carried": _check_carried},
        __name__,
        _docstring(optimizer, algorithm, entry, len(betas)),
    )


def _check_carried(arrays, name):
    """Per-param scalar state is given as writeable 0-d float64 arrays."""
    for k, value in enumerate(arrays):
        _validation.check_step_array(value, f"{name}[{k}]", np.float64)


for _optimizer in _algorithms.CLASSES:
    globals()[_algorithms.CLASSES[_optimizer].function] = _function(_optimizer)
