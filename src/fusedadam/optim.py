"""Optimizer classes shaped like ``torch.optim``: an algorithm-agnostic base and thin algorithms.

The base owns param groups, per-param state, the lock, the state_dict layout and planning
(validation into ``GroupSpec``\\ s of explicit arrays); the step itself is the engine's
(``fusedadam.engine``), which owns every per-step rule and returns an ``Outcome`` the base
acts on (plan again, count a skipped step, attach new state). An algorithm class adds its
defaults, its registry entry (``_algorithms.py``) and its docstring.
"""

import inspect
import threading
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from fusedadam import _algorithms, _schedule_free, _validation
from fusedadam import _generate as _generate_module
from fusedadam.engine import Engine, GroupSpec, Outcome, _rules
from fusedadam.engine._plan import check_group_hyper, group_spec, hyper_spec, state_dtypes
from fusedadam.engine._saved import checked_state

__all__ = [
    "Optimizer", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "AdaBelief", "Lion", "AdEMAMix",
    "Adan", "ADOPT", "AdamAtan2", "AdamWScheduleFree", "RAdamScheduleFree",
    "Lamb", "StableAdamW",
]  # fmt: skip

# The types of the public API (py.typed ships these annotations).
LearningRate = Union[float, Callable[[int], float]]
Params = Union[np.ndarray, Sequence[np.ndarray], Sequence[Dict[str, Any]]]
Grads = Union[np.ndarray, Sequence[np.ndarray]]
Betas = Tuple[float, float]
Betas3 = Tuple[float, float, float]
Threads = Optional[int]
Backend = Literal["auto", "compiled", "numpy"]
NonFinite = Literal["error", "skip", "ignore"]
StateDtype = Optional[Literal["float32", "bfloat16", "8bit", "8bit_companded"]]
Master = Literal["float32", "residual", "compact"]
GradScale = Union[float, Callable[[int], float], np.ndarray]


def _as_param_list(params, where):
    if isinstance(params, np.ndarray):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where} must be an ordered sequence of arrays, not a set: the order of a "
            "set changes between runs, and so would the meaning of a state_dict"
        )
    if isinstance(params, dict):
        raise TypeError(f"{where} must be an array or a sequence of arrays, got a dict")
    try:
        return list(params)
    except TypeError:
        raise TypeError(
            f"{where} must be an ndarray or a sequence of ndarrays, got {type(params).__name__}"
        ) from None


def _param_groups_from(params):
    """The group dicts of an optimizer's ``params`` argument (arrays, or group dicts)."""
    params = _as_param_list(params, "params")
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        return params
    if any(isinstance(p, dict) for p in params):
        raise TypeError("params must be all arrays or all param-group dicts, not a mix")
    return [{"params": params}]


class _ParamState:
    """``optimizer.state``: per-parameter state dicts, looked up by the param array itself.

    ``on_change()`` runs whenever a param's dict is added, replaced or removed, which is how
    the step engine notices (entries inside a dict are watched by identity). As in torch
    (a ``defaultdict``), reading the state of a param of the optimizer that has none yet
    gives an empty dict, which its first step fills (``owns(param)`` tells a param).
    """

    def __init__(self, on_change=None, owns=None):
        self._by_id = {}
        self._on_change = on_change
        self._owns = owns

    def __getitem__(self, param):
        entry = self._by_id.get(id(param))
        if entry is None:
            if self._owns is None or not self._owns(param):
                raise KeyError(param)
            entry = (param, {})
            self._set(param, entry[1])
        return entry[1]

    def __setitem__(self, param, state):
        if not isinstance(state, dict):
            raise TypeError("a param's state must be a dict")
        self._set(param, state)

    def __delitem__(self, param):
        del self._by_id[id(param)]
        self._changed()

    def __contains__(self, param):
        return id(param) in self._by_id

    def __len__(self):
        return len(self._by_id)

    def __iter__(self):
        return (param for param, _ in self._by_id.values())

    def items(self):
        return list(self._by_id.values())

    def get(self, param, default=None):
        entry = self._by_id.get(id(param))
        return default if entry is None else entry[1]

    def _set(self, param, state, notify=True):
        self._by_id[id(param)] = (param, state)
        if notify:
            self._changed()

    def _clear(self):
        self._by_id.clear()
        self._changed()

    def _changed(self):
        if self._on_change is not None:
            self._on_change()


# Every live optimizer, so that a child forked while another thread held an optimizer's
# lock gets fresh locks (a held lock would block the child forever).
_LIVE: "weakref.WeakSet[Optimizer]" = weakref.WeakSet()


def _fresh_locks_in_child():
    for optimizer in list(_LIVE):
        optimizer._lock = threading.Lock()


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_fresh_locks_in_child)


class Optimizer:
    """Base class: param groups, lazily created state, ``step``, ``state_dict``.

    A subclass sets ``algorithm`` (an entry of ``fusedadam._algorithms.ALGORITHMS``) and
    passes its ``defaults`` (every hyperparameter key its groups have) to ``__init__``.
    Every public method is serialized by one lock, and on any error nothing (params, state,
    counters, the cached plans) has changed.
    """

    algorithm: ClassVar[_algorithms.Algorithm]

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self._check_group_hyper(self.defaults, "")
        self._lock = threading.Lock()
        self._engine = Engine()
        self._pending_installs: List[tuple] = []  # state the current plans will attach
        self._param_groups = []
        self._state = _ParamState(self._engine.invalidate, self._owns_param)
        self._created = {}  # id(param) -> (param, names of the optional state it got)
        #: Steps skipped because a gradient held NaN or inf (groups with nonfinite="skip").
        self.skipped_steps = 0
        _LIVE.add(self)
        for group in _param_groups_from(params):
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            lines.append(f"    params: {len(group['params'])} arrays")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]!r}")
        lines.append(")")
        return "\n".join(lines)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """The list of group dicts (edit it in place, or assign a new list)."""
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        self._param_groups = groups
        self._engine.invalidate()

    @property
    def state(self) -> "_ParamState":
        """Per-param state dicts: ``opt.state[p]``. Assigning a mapping replaces them all."""
        return self._state

    @state.setter
    def state(self, mapping):
        items = mapping.items() if hasattr(mapping, "items") else mapping
        self._state._by_id = {id(p): (p, st) for p, st in items}
        self._record_created(self._state.items())
        self._engine.invalidate()

    def _owns_param(self, param):
        groups = self._param_groups
        return isinstance(groups, list) and any(
            p is param for g in groups if isinstance(g, dict) for p in g.get("params", ())
        )

    def _record_created(self, items):
        """Remember which optional state each param holds now (a later absence is a deletion)."""
        optional = {name for name, _ in self.algorithm.optional_state}
        for param, state in items:
            names = optional.intersection(state) if isinstance(state, dict) else set()
            kept = self._created.get(id(param))
            if kept is not None and kept[0] is param:
                names |= kept[1]
            self._created[id(param)] = (param, names)

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group ``{"params": [...], <hyperparameter overrides>}``."""
        with self._lock:
            group, where = self._admit_param_group(param_group)
            self.param_groups.append(group)
            self._engine.invalidate()

    def _admit_param_group(self, param_group):
        """A new group dict: checked (params, no param already in a group, hyperparameters),
        defaults filled in. Returns ``(group, where)``; the caller appends it."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        where = f"param_groups[{len(self.param_groups)}]"
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"{where} has no 'params' entry")
        group["params"] = _as_param_list(group["params"], f"{where}['params']")
        first = sum(len(g["params"]) for g in self.param_groups)
        _validation.check_params(group["params"], first)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self._check_params(group["params"], first)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group_hyper(group, f"{where}: ")
        return group, where

    def _check_params(self, params, first):
        """Algorithm-specific requirements on params (SparseAdam: 2-D tables)."""

    def _check_group_hyper(self, group, where):
        """Validate a group's hyperparameters in place (``engine.check_group_hyper``)."""
        check_group_hyper(group, self.defaults, where, self.algorithm.n_betas)

    # ---------------------------------------------------------------- step
    def step(self, grads: Grads, grad_scale: Optional[GradScale] = None) -> None:
        """Update every parameter in place from ``grads``.

        ``grads`` is one array (when there is one parameter) or a sequence of arrays in
        the order of all params of all groups. ``grad_scale`` (a float > 0, or a
        one-element array), when given, replaces every group's ``grad_scale`` for this
        step only: the gradients are divided by it in the step's pass. Everything is
        checked first: on an error no parameter, state array or step count has changed.

        Raises
        ------
        TypeError, ValueError
            Bad gradients, hyperparameters, params or state (the message names them).
        FloatingPointError
            A gradient holds NaN or inf in a group with ``nonfinite="error"``.
        """
        with self._lock:
            outcome = self._engine.step(grads, grad_scale)
            if outcome:  # anything but Outcome.RAN
                self._settle(outcome, grads, grad_scale)

    def _settle(self, outcome, grads, grad_scale):
        """Act on an engine outcome other than RAN: plan again (and step), count a
        skipped step, attach the state a first step created."""
        outcome = _rules.settle(
            self._engine, outcome, grads, grad_scale, self._plan, self._refresh_hyper
        )
        if outcome == Outcome.SKIPPED:
            self.skipped_steps += 1
        elif outcome == Outcome.RAN_NEW_STATE:
            installs, self._pending_installs = self._pending_installs, []
            self._install(installs)
            self._engine.snapshot()

    def _plan(self):
        """Validate every group and hand the engine new plans."""
        self._engine.invalidate()
        specs = self._plan_groups()
        self._engine.set_plans(self.param_groups, [self._engine.new_plan(s) for s in specs])
        self._pending_installs = [i for spec in specs for i in spec.installs]

    def _refresh_hyper(self):
        """Validate the groups whose hyperparameters changed; plan again if their state
        layout changed with them."""
        for gi in self._engine.stale_groups():
            spec = self._check_hyper(gi)
            plan = self._engine.plans[gi]
            if (
                spec.state_names != plan.state_names
                or spec.state_dtype != plan.state_dtype
                or spec.master != plan.master
            ):
                self._plan()
                return
            self._engine.set_hyper(gi, spec)

    def get_last_lr(self) -> List[float]:
        """Per group, the learning rate its next step uses: ``lr``, or ``lr(t)`` for a
        schedule, with ``t`` the group's next step number (what torch's
        ``scheduler.get_last_lr()`` gives; ``param_groups[i]["lr"]`` holds the schedule
        itself, so that it is saved and resumed with the state)."""
        with self._lock:
            rates = []
            for group in self.param_groups:
                lr = group["lr"]
                if callable(lr):
                    steps = [self.state.get(p, {}).get("step") for p in group["params"]]
                    t = max((int(s) for s in steps if s is not None), default=0) + 1
                    lr = _rules.learning_rate(lr, t)
                rates.append(float(lr))
            return rates

    @property
    def last_grad_norm(self) -> Union[None, float, List[Optional[float]]]:
        """The 2-norm of the unscaled gradients of the last step (the value
        ``torch.nn.utils.clip_grad_norm_`` returns), per group with ``max_grad_norm`` set
        (None for a group without): a float for a one-group optimizer, else a list."""
        norms, n_groups = self._engine.grad_norms(), len(self.param_groups)
        if len(norms) != n_groups:  # no step since the groups changed
            norms = [None] * n_groups
        return norms[0] if n_groups == 1 else norms

    def _install(self, installs):
        """Attach the state a committed step created (it was invisible until now)."""
        for param, state, entries in installs:
            if state is None:
                self.state._set(param, entries, notify=False)
            else:
                state.update(entries)
        self._record_created((param, entries) for param, _, entries in installs)

    def _check_hyper(self, gi):
        """Validate group ``gi``'s hyperparameters; return its ``HyperSpec``."""
        group = self.param_groups[gi]
        if not isinstance(group, dict):
            raise TypeError(f"param_groups[{gi}] must be a dict, got {type(group).__name__}")
        return hyper_spec(self.algorithm, group, self.defaults, f"param_groups[{gi}]: ")

    def _plan_groups(self):
        """Validate every group against the state the user sees; return its GroupSpecs.

        State a param lacks is created here (zeros, step 0) but only attached to
        ``opt.state`` when a step commits, so a failed step leaves nothing behind.
        """
        groups = self.param_groups
        if not isinstance(groups, list):
            raise TypeError("param_groups must be a list of dicts")
        hyper_specs = [self._check_hyper(gi) for gi in range(len(groups))]
        specs: List[GroupSpec] = []
        named: List[Tuple[str, np.ndarray]] = []
        first = 0
        for gi, group in enumerate(groups):
            if not isinstance(group.get("params"), list):
                group["params"] = _as_param_list(
                    group.get("params", ()), f"param_groups[{gi}]['params']"
                )
            params = group["params"]
            _validation.check_params(params, first)
            self._check_params(params, first)
            specs.append(self._plan_arrays(gi, group, hyper_specs[gi], first, named))
            first += len(params)
        _validation.check_params([p for g in groups for p in g["params"]])
        written = _validation.written_intervals(named)
        return [spec._replace(written=written) for spec in specs]

    def _plan_arrays(self, gi, group, spec, first, named):
        return group_spec(
            self.algorithm, gi, group, spec, first, named, self.state.get, self._created_names
        )

    def _created_names(self, p):
        """The optional state names param ``p`` got while their flag was on."""
        kept = self._created.get(id(p))
        return kept[1] if kept is not None and kept[0] is p else ()

    def _state_dtypes(self, p, option, pname, master="float32"):
        return state_dtypes(self.algorithm, p, option, pname, master)

    # ---------------------------------------------------------------- state dict
    def state_dict(self) -> Dict[str, Any]:
        """Plain dict of Python scalars and NumPy arrays, keyed like ``torch.optim``.

        ``{"state": {i: {"step": t, "exp_avg": ..., ...}}, "param_groups": [{..., "params":
        [i, ...]}]}`` with ``i`` the param's position over all groups. **Live**, as in
        torch: the state arrays and the 0-d ``step`` counters are the optimizer's own, so
        the dict always pairs moments and steps consistently and follows later steps;
        ``copy.deepcopy(opt.state_dict())`` is a snapshot. Picklable;
        :func:`fusedadam.flatten_state_dict` makes it ``np.savez``-able.
        """
        with self._lock:
            state, groups, index = {}, [], 0
            for group in self.param_groups:
                packed = {k: v for k, v in group.items() if k != "params"}
                packed["params"] = list(range(index, index + len(group["params"])))
                groups.append(packed)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st:  # an empty dict (state read before the first step) is no state
                        state[index] = dict(st)
                    index += 1
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any], convert: bool = False) -> None:
        """Load a ``state_dict()``: checked whole, then copied in; resumes exactly.

        Raises ``ValueError``/``TypeError`` (and changes nothing) when the groups, sizes,
        shapes, dtypes, keys or steps do not fit this optimizer. State a saved entry holds
        for an option that is off now (AMSGrad's ``max_exp_avg_sq``) is kept. A state saved
        in another dtype (another ``state_dtype``, or params that changed precision) loads
        only with ``convert=True``: the arrays are cast to this optimizer's dtypes (rounded
        to nearest even), a missing ``master_param`` is made from the param, and one the
        params no longer need is dropped. ``convert=True`` also moves a bfloat16 param's
        master between ``master_param`` and ``master_residual`` (``master="residual"``),
        exactly both ways; converting to the residual rewrites the param as its master
        encodes (it changes only where the master's low half is exactly 0x8000).
        """
        if not isinstance(convert, (bool, np.bool_)):
            raise TypeError(f"convert must be a bool, got {convert!r}")
        with self._lock:
            new_groups, new_state = self._check_state_dict(state_dict, convert)
            for group, saved in zip(self.param_groups, new_groups):
                group.update(saved)
            self.state._clear()
            for p, st in new_state:
                new_param = st.pop(_validation.NEW_PARAM, None)
                if new_param is not None:  # converted to master="residual"
                    p[...] = new_param
                self.state._set(p, st)
            self._created = {}
            self._record_created(new_state)
            self._engine.invalidate()

    def _check_state_dict(self, state_dict, convert=False):
        return checked_state(
            self.algorithm, self.param_groups, state_dict, convert, self._check_group_hyper
        )

    # ---------------------------------------------------------------- copying
    def __getstate__(self):
        return {
            "defaults": self.defaults,
            "param_groups": self._param_groups,
            "state": self._state.items(),
            "skipped_steps": self.skipped_steps,
            "grad_norms": self._engine.grad_norms(),
        }

    def __setstate__(self, saved):
        self.defaults = saved["defaults"]
        self._lock = threading.Lock()
        self._engine = Engine()
        self._pending_installs = []
        self._param_groups = saved["param_groups"]
        self._state = _ParamState(self._engine.invalidate, self._owns_param)
        for param, state in saved["state"]:
            self._state._set(param, state)
        self._created = {}
        self._record_created(saved["state"])
        self.skipped_steps = saved["skipped_steps"]
        self._engine.set_grad_norms(saved.get("grad_norms", [None]))
        _LIVE.add(self)


# The annotation of a constructor argument, where its default's type is not it (a default
# of None: Optional[float]).
_ANNOTATIONS = {
    "params": Params,
    "lr": LearningRate,
    "num_threads": Threads,
    "backend": Backend,
    "nonfinite": NonFinite,
    "state_dtype": StateDtype,
    "grad_scale": GradScale,
    "master": Master,
    "clip_exp": Optional[float],
}


def _annotation(name, default):
    if name == "betas":
        return Betas3 if len(default) == 3 else Betas
    if name in _ANNOTATIONS:
        return _ANNOTATIONS[name]
    return Optional[float] if default is None else type(default)


def _documented(cls):
    """Add the numpydoc Parameters section of ``cls.__init__`` to the class docstring
    (before its Examples section, if it has one)."""
    lines = ["", "Parameters", "----------"]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        kind, text = _algorithms.HYPERPARAMETER_DOCS[name]
        if name == "betas" and cls.algorithm.n_betas == 3:
            kind, text = "(float, float, float)", _THREE_BETAS
        default = (
            ""
            if parameter.default is inspect.Parameter.empty
            else (f", default {parameter.default!r}")
        )
        lines += [f"{name} : {kind}{default}", f"    {text}"]
    doc = inspect.cleandoc(cls.__doc__)
    head, examples, tail = doc.partition("\nExamples\n--------")
    cls.__doc__ = head.rstrip() + "\n" + "\n".join(lines) + "\n" + examples + tail
    return cls


_THREE_BETAS = "Decay rates of the three moments (see the formula); each in [0, 1)."


def _hyperparameters(arguments):
    """A constructor's ``locals()`` without self and params: the optimizer's defaults."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


class _Registered(Optimizer):
    """An optimizer class of the registry. ``_generate`` (below) gives it, from
    ``_algorithms.DEFAULTS`` and ``_algorithms.CLASSES`` under its own name, its algorithm,
    its constructor (signature, defaults, annotations) and its docstring (the formula and
    the Parameters section)."""

    if TYPE_CHECKING:  # the generated constructors take the registry's hyperparameters

        def __init__(self, params: Params, **hyperparameters: Any) -> None: ...

    @staticmethod
    def _resolved(hyper):
        """The defaults a constructor's arguments give (a class may derive some)."""
        return hyper


def _generate(cls):
    name = cls.__name__
    algorithm, defaults = _algorithms.DEFAULTS[name]
    entry = _algorithms.CLASSES[name]
    arguments = [k for k in defaults if k not in entry.fixed]
    signature = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Params)]
        + [
            inspect.Parameter(
                k,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=defaults[k],
                annotation=_annotation(k, defaults[k]),
            )
            for k in arguments
        ],
        return_annotation=None,
    )
    hyper = ", ".join(f"{k!r}: {k}" for k in arguments)
    fixed = {k: defaults[k] for k in entry.fixed}
    cls.algorithm = _algorithms.ALGORITHMS[algorithm]
    cls.__init__ = _generate_module.define(
        f"{cls.__qualname__}.__init__",
        signature,
        f"_Optimizer.__init__(self, params, self._resolved({{{hyper}, **_fixed}}))",
        {"_Optimizer": Optimizer, "_fixed": fixed},
        __name__,
    )
    cls.__doc__ = entry.doc
    _documented(cls)


# The classes of the registry (``_algorithms.CLASSES``): each is generated by ``_generate``.
# fmt: off
class Adam(_Registered): ...
class AdamW(Adam): ...
class Adamax(_Registered): ...
class NAdam(_Registered): ...
class RAdam(_Registered): ...
class AdaBelief(_Registered): ...
class Lion(_Registered): ...
class Lamb(_Registered): ...
class AdEMAMix(_Registered): ...
class Adan(_Registered): ...
class ADOPT(_Registered): ...
class AdamAtan2(_Registered): ...
# fmt: on


class StableAdamW(_Registered):
    @staticmethod
    def _resolved(hyper):
        # max_lr None with decouple_lr: the lr at construction (the rule of both front ends)
        max_lr = _validation.stable_adamw_max_lr(hyper["lr"], hyper["decouple_lr"], hyper["max_lr"])
        return {**hyper, "max_lr": max_lr}


class AdamWScheduleFree(_Registered):
    def _admit_param_group(self, param_group):
        # A new group takes the optimizer's mode (the package's starts in eval mode).
        train = all(g.get("train_mode", True) for g in self.param_groups)
        param_group = dict(param_group)
        param_group.setdefault("train_mode", train)
        return super()._admit_param_group(param_group)

    def _check_group_hyper(self, group, where):
        super()._check_group_hyper(group, where)
        _schedule_free.check_mode_entry(group, where)

    def step(self, grads: Grads, grad_scale: Optional[GradScale] = None) -> None:
        """Update every parameter (``y``) in place from ``grads``; see
        :meth:`Optimizer.step`. Raises ``RuntimeError`` in eval mode (nothing changes)."""
        _schedule_free.check_steppable(self.param_groups, type(self).__name__)
        super().step(grads, grad_scale)

    def train(self) -> None:
        """Switch to train mode: each param of a group in eval mode moves from ``x`` to
        ``y = lerp(x, z, 1 - beta1)``. Does nothing in train mode (idempotent)."""
        self._set_mode(True)

    def eval(self) -> None:
        """Switch to eval mode: each param of a group in train mode moves from ``y`` to
        ``x = lerp(y, z, 1 - 1/beta1)``. Does nothing in eval mode (idempotent)."""
        self._set_mode(False)

    def _set_mode(self, train):
        with self._lock:
            writes = []
            for gi, group in enumerate(self.param_groups):
                if bool(group.get("train_mode", True)) == train:
                    continue
                where = f"param_groups[{gi}]: "
                self._check_group_hyper(group, where)
                weight = _schedule_free.mode_weight(group["betas"], train, where)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "z" in st:
                        writes.append(_schedule_free.move(p, st, weight))
            for write in writes:
                write()
            for group in self.param_groups:
                group["train_mode"] = train


class RAdamScheduleFree(AdamWScheduleFree): ...


for _name in _algorithms.CLASSES:
    _generate(globals()[_name])
