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
        for _ in range(3):  # a replan and a hyperparameter refresh at most, then a step
            if outcome == Outcome.PLAN:
                self._plan()
            elif outcome == Outcome.HYPER:
                self._refresh_hyper()
            else:
                break
            outcome = self._engine.step(grads, grad_scale)
        else:
            raise RuntimeError(f"fusedadam internal error: the engine still asks for {outcome!r}")
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


# Every constructor argument: (its type in the docs, what it does). The Parameters
# section of each class is built from its signature and this table (_documented).
_PARAMETERS = {
    "params": (
        "ndarray, sequence of ndarray, or sequence of dict",
        "Arrays to optimize (float32, float64, bfloat16 or float16, C-contiguous, writeable; "
        "bfloat16/float16 params keep a float32 ``master_param``; SparseAdam: float32/float64 "
        '2-D tables), updated in place; or param groups ``{"params": [...], "lr": '
        "...}`` overriding any hyperparameter below.",
    ),
    "lr": (
        "float or callable",
        "Learning rate, or ``lr(t)`` returning it for step ``t`` "
        "(a :mod:`fusedadam.schedules` object pickles and saves).",
    ),
    "betas": ("(float, float)", "Decay rates of the first and second moments."),
    "eps": ("float", "Added to the denominator (> 0: no division by zero)."),
    "eps_root": ("float", "Added to the second moment itself, every step (>= 0)."),
    "weight_decay": ("float", "L2 penalty added to the gradient, or the decoupled decay rate."),
    "amsgrad": ("bool", "Use the running maximum of the second moment (AMSGrad)."),
    "maximize": ("bool", "Ascend instead of descend."),
    "cautious": (
        "bool",
        "Cautious masking (Liang et al. 2024, as timm's ``cadamw``/``clion``): an element whose "
        "update disagrees in sign with its gradient takes no step, the others are scaled by "
        "``1 / max(mean(mask), 1e-3)`` per tensor.",
    ),
    "grad_averaging": ("bool", "``m = beta1 m + (1 - beta1) g``; False: ``m = beta1 m + g``."),
    "trust_clip": ("bool", "Clip the trust ratio at 1 (LAMBC)."),
    "always_adapt": (
        "bool",
        "Apply the trust ratio to tensors with ``weight_decay == 0`` too (else they take "
        "Adam's step).",
    ),
    "decouple_lr": (
        "bool",
        "Fully decoupled weight decay: ``p *= 1 - lr_t / max_lr * weight_decay``.",
    ),
    "max_lr": (
        "float or None",
        "The largest lr of the schedule, for ``decouple_lr`` (None: the lr given, which then "
        "must be a number).",
    ),
    "bias_correction": ("bool", "Divide the moments by ``1 - beta**t``."),
    "beta1_decay": (
        "float in (0, 1]",
        "The Adam paper's lambda: ``beta1_t = beta1 * beta1_decay**(t-1)``.",
    ),
    "momentum_decay": ("float", "NAdam's psi in ``mu_t = beta1 (1 - 0.5 * 0.96**(t psi))``."),
    "decoupled_weight_decay": (
        "bool",
        "``p *= 1 - lr * weight_decay`` instead of the L2 term (AdamW's decay).",
    ),
    "clip_exp": (
        "float or None",
        "ADOPT: the normalised gradient is clipped to ``+-(t - 1)**clip_exp`` (timm's "
        "rule); None: no clip.",
    ),
    "a": ("float", "Adam-atan2: the update's scale, ``p -= lr * a * atan2(...)`` (> 0)."),
    "b": ("float", "Adam-atan2: the scale of ``sqrt(v^)`` inside atan2 (>= 0)."),
    "num_threads": (
        "int or None",
        "None follows OpenMP (``OMP_NUM_THREADS``, threadpoolctl); "
        "-1 all processors; a positive count (at most "
        "``fusedadam._kernels.MAX_NUM_THREADS`` are used).",
    ),
    "backend": (
        '{"auto", "compiled", "numpy"}',
        "The compiled kernel, the NumPy reference, "
        "or the first available (the same step, bit for bit).",
    ),
    "nonfinite": (
        '{"error", "skip", "ignore"}',
        "What a step does when a gradient holds "
        "NaN or inf (after unscaling): raise ``FloatingPointError`` naming the parameter "
        "and the count, changing nothing; skip the whole step (``skipped_steps`` counts "
        "them, as AMP loss scaling does); or no check at all (fastest).",
    ),
    "state_dtype": (
        '{None, "float32", "bfloat16", "8bit", "8bit_companded"}',
        "The dtype of the moments: None is the compute dtype (float32, or float64 for "
        'float64 params); ``"bfloat16"`` halves the state memory and bytes (float32, '
        'bfloat16 and float16 params; rounded to nearest even each step); ``"8bit"`` '
        "stores each moment block-wise in one byte per element plus one float32 absmax "
        "per 256 elements (``<moment>_absmax``; params of at least 4096 elements, smaller "
        "ones keep float32 moments), requantized in the step's pass; "
        '``"8bit_companded"``: the same layout with FlashOptim\'s companded map (int8 '
        "codes; see docs/master_residual.md).",
    ),
    "master": (
        '{"float32", "residual", "compact"}',
        "How a bfloat16/float16 param keeps its float32 master: a float32 copy "
        '(``master_param``, 4 bytes), or for bfloat16 params ``"residual"``: the '
        "master's low 16 bits (``master_residual``, int16, 2 bytes), the master kept "
        "exactly, the param its rounding to nearest with ties away from zero (see "
        'docs/master_residual.md); ``"compact"``: 8 of them (int8, 1 byte), lossy: the '
        "master kept to within 128 float32 units in the last place. No effect on "
        "float32/float64 params (they have no master); float16 params refuse both.",
    ),
    "grad_scale": (
        "float, callable or array",
        "Gradients are divided by it in the step's pass (AMP loss scaling): a float > 0, "
        "``grad_scale(t)``, or a one-element array read at each step; ``step(grads, "
        "grad_scale=...)`` overrides it for one step.",
    ),
    "alpha": ("float", "AdEMAMix: the weight of the slow EMA in the update (>= 0)."),
    "t_alpha_beta3": (
        "float or None",
        "AdEMAMix: steps over which alpha ramps up linearly and beta3 from beta1 to beta3 "
        "(the paper's schedulers, as pytorch_optimizer has them); None: no warmup.",
    ),
    "no_prox": (
        "bool",
        "Adan: decoupled decay ``p *= 1 - lr * weight_decay`` before the update, instead "
        "of the proximal ``p = (p - update) / (1 + lr * weight_decay)`` after it.",
    ),
    "warmup_steps": (
        "int",
        "Schedule-Free's linear warmup: the lr of step ``t`` is ``lr * min(1, t / "
        "warmup_steps)`` (0: none).",
    ),
    "r": ("float", "Schedule-Free's polynomial weighting ``t**r`` of the average (>= 0)."),
    "weight_lr_power": (
        "float",
        "Schedule-Free: the average's weights are ``lr_max**weight_lr_power`` (>= 0; "
        "0: no weighting by the learning rate).",
    ),
    "silent_sgd_phase": (
        "bool",
        "Schedule-Free RAdam: while the variance is not tractable (``rho_t <= 4``) the "
        "params do not move (True) or take the unnormalized step with ``lr`` (False); "
        "``v`` advances either way.",
    ),
    "max_grad_norm": (
        "float or None",
        "Clip the group's unscaled gradients to this global 2-norm (the rule of "
        "``torch.nn.utils.clip_grad_norm_``), the norm computed in the scan of the "
        "non-finite check; ``last_grad_norm`` holds it.",
    ),
}


def _documented(cls):
    """Add the numpydoc Parameters section of ``cls.__init__`` to the class docstring
    (before its Examples section, if it has one)."""
    lines = ["", "Parameters", "----------"]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        kind, text = getattr(cls, "_parameter_docs", {}).get(name) or _PARAMETERS[name]
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


def _hyperparameters(arguments):
    """A constructor's ``locals()`` without self and params: the optimizer's defaults."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


@_documented
class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2014), with AMSGrad (Reddi et al., 2018) as an option.

    For step ``t`` of each element, with ``g`` its gradient::

        g     = -g if maximize else g
        g     = g + weight_decay * p                  (L2 weight decay, coupled)
        p     = p * (1 - lr_t * weight_decay)         (decoupled_weight_decay: instead)
        b1_t  = beta1 * beta1_decay**(t - 1)
        m     = b1_t * m + (1 - b1_t) * g
        v     = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                         (amsgrad; then v_max is used for v)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t         (1, 1 without bias_correction)
        p     = p - (lr_t / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    ``lr_t`` is ``lr`` or ``lr(t)``. eps is added outside the square root and the
    AMSGrad maximum is taken over the raw ``v`` (not the bias-corrected one), as in
    ``torch.optim.Adam``. ``decoupled_weight_decay=True`` is AdamW.

    ``cautious=True`` (Liang et al. 2024, timm's ``cadamw``): per tensor,
    ``mask = m * g > 0`` (``g`` with its L2 term), ``scale = 1 / max(mean(mask), 1e-3)``,
    and the update uses ``m * mask * scale`` in place of ``m``.
    """

    algorithm = _algorithms.ALGORITHMS["adam"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False, bias_correction: bool = True, beta1_decay: float = 1.0,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error", decoupled_weight_decay: bool = False,
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32",
                 cautious: bool = False) -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    As :class:`Adam`, except that the gradient gets no L2 term; instead, before the
    update, ``p = p * (1 - lr_t * weight_decay)``. Default ``weight_decay=1e-2``.
    """

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False, bias_correction: bool = True, beta1_decay: float = 1.0,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32",
                 cautious: bool = False) -> None:
        Optimizer.__init__(self, params, {**_hyperparameters(locals()),
                                          "decoupled_weight_decay": True})
    # fmt: on


@_documented
class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2014, Algorithm 2), with torch's eps.

    For step ``t`` of each element::

        g    = -g if maximize else g
        g    = g + weight_decay * p
        b1_t = beta1 * beta1_decay**(t - 1)
        m    = b1_t * m + (1 - b1_t) * g
        u    = max(beta2 * u, |g| + eps)
        p    = p - (lr_t / (1 - beta1**t)) * m / u
    """

    algorithm = _algorithms.ALGORITHMS["adamax"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 2e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                 bias_correction: bool = True, beta1_decay: float = 1.0,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016), as ``torch.optim.NAdam``: Adam with Nesterov momentum.

    For step ``t`` of each element (``psi`` is ``momentum_decay``)::

        g      = -g if maximize else g
        g      = g + weight_decay * p            (or p *= 1 - lr * weight_decay, decoupled)
        mu_t   = beta1 * (1 - 0.5 * 0.96**(t * psi))
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        denom  = sqrt(v / (1 - beta2**t)) + eps
        p      = p - lr * (1 - mu_t) / (1 - mu_1...mu_t) * g / denom
                   - lr * mu_{t+1} / (1 - mu_1...mu_{t+1}) * m / denom

    The running product ``mu_1 ... mu_t`` is the per-param state ``mu_product`` (a 0-d
    float64, computed in double). The two terms share one division (``_loops.h``).
    """

    algorithm = _algorithms.ALGORITHMS["nadam"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 2e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, maximize: bool = False,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020), as ``torch.optim.RAdam``: Adam with a rectified step.

    For step ``t`` of each element::

        g      = -g if maximize else g
        g      = g + weight_decay * p            (or p *= 1 - lr * weight_decay, decoupled)
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t  = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 5:
            r  = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            p  = p - lr * r / (1 - beta1**t) * m * sqrt(1 - beta2**t) / (sqrt(v) + eps)
        else:
            p  = p - lr / (1 - beta1**t) * m
    """

    algorithm = _algorithms.ALGORITHMS["radam"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3,
                 betas: Betas = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, maximize: bool = False,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        # NAdam's arguments less momentum_decay; torch's order.
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class AdaBelief(Optimizer):
    r"""AdaBelief (Zhuang et al., 2020, Algorithm 2), as ``optax.adabelief`` computes it.

    For step ``t`` of each element::

        g  = -g if maximize else g
        g  = g + weight_decay * p               (or p *= 1 - lr * weight_decay, decoupled)
        m  = beta1 * m + (1 - beta1) * g
        s  = beta2 * s + (1 - beta2) * (g - m)**2 + eps_root
        p  = p - lr / (1 - beta1**t) * m / (sqrt(s / (1 - beta2**t)) + eps)

    ``s`` (the "belief" in the gradient) is the state ``exp_avg_var``. The defaults are
    optax's (``eps = eps_root = 1e-16``); the paper uses one eps for both.
    """

    algorithm = _algorithms.ALGORITHMS["adabelief"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-16, eps_root: float = 1e-16, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, maximize: bool = False,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class Lion(Optimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), as
    ``optax.lion``.

    For each element::

        g = -g if maximize else g
        p = p * (1 - lr_t * weight_decay)
        p = p - lr_t * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g

    One state array (``exp_avg``); ``sign(0) = 0``. Weight decay is always decoupled.
    The defaults are optax's; the paper advises an lr 3-10x smaller than AdamW's.

    ``cautious=True`` (timm's ``clion``): per tensor, ``mask = d * g > 0`` with ``d`` the
    sign above, and the step is ``lr_t * d * mask / max(mean(mask), 1e-3)``.
    """

    algorithm = _algorithms.ALGORITHMS["lion"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-4, betas: Betas = (0.9, 0.99),
                 weight_decay: float = 1e-3, maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32",
                 cautious: bool = False) -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class Lamb(Optimizer):
    r"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), as timm's
    ``Lamb``: Adam's direction, scaled per tensor by the trust ratio ``|p| / |u|``.

    For step ``t`` of each tensor (bc1, bc2 = 1, 1 without bias_correction)::

        g     = -g if maximize else g
        m     = beta1 * m + (1 - beta1) * g          (grad_averaging=False: beta1 * m + g)
        v     = beta2 * v + (1 - beta2) * g * g
        p     = p * (1 - lr_t * weight_decay)         (decoupled_weight_decay only)
        u     = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
        u     = u + weight_decay * p                  (not decoupled)
        trust = |p| / |u|   (1 when either norm is 0; at most 1 with trust_clip)
        p     = p - lr_t * trust * u

    A tensor is adapted (``trust`` as above) when ``weight_decay != 0`` or
    ``always_adapt``; otherwise ``trust = 1``. The norms are sums of squares in double in
    a fixed order (the same bits for every thread count). timm's global gradient clipping
    (its ``max_grad_norm=1.0``) is not the same rule as ``max_grad_norm`` here (the rule of
    ``torch.nn.utils.clip_grad_norm_``, per group, off by default).
    """

    algorithm = _algorithms.ALGORITHMS["lamb"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 1e-2, bias_correction: bool = True,
                 grad_averaging: bool = True, trust_clip: bool = False,
                 always_adapt: bool = False, decoupled_weight_decay: bool = False,
                 maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class StableAdamW(Optimizer):
    r"""StableAdamW (Wortsman et al., 2023, "Stable and low-precision training for
    large-scale vision-language models"), as torch-optimi's ``StableAdamW``: AdamW whose
    learning rate is clipped per tensor by the RMS of ``g**2 / v``.

    For step ``t`` of each tensor::

        g     = -g if maximize else g
        b1_t  = (beta1**t - beta1) / (beta1**t - 1)   (debiased betas: no bias correction)
        b2_t  = (beta2**t - beta2) / (beta2**t - 1)
        m     = b1_t * m + (1 - b1_t) * g
        v     = b2_t * v + (1 - b2_t) * g * g
        rms   = sqrt(mean(g**2 / max(v, eps**2)))
        lr_c  = lr_t / max(1, rms)
        p     = p * (1 - lr_c * weight_decay)        (decouple_lr: 1 - lr_c / max_lr * wd)
        p     = p - lr_c * m / (sqrt(v) + eps)

    The weight decay is decoupled and uses the clipped rate, as optimi's. The RMS is a sum
    in double in a fixed order (the same bits for every thread count).
    """

    algorithm = _algorithms.ALGORITHMS["stableadamw"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.99),
                 eps: float = 1e-6, weight_decay: float = 1e-2, decouple_lr: bool = False,
                 max_lr: Optional[float] = None, maximize: bool = False,
                 num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        max_lr = _validation.stable_adamw_max_lr(lr, decouple_lr, max_lr)
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class AdamWScheduleFree(Optimizer):
    r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), as
    ``schedulefree.AdamWScheduleFree`` computes it.

    No learning-rate schedule: the param holds the gradient point ``y`` while training,
    an interpolation of the averaged iterate ``x`` and the base sequence ``z``. For step
    ``t`` (``t = 1, 2, ...``) of each element::

        lr_t       = lr * min(1, t / warmup_steps)       (lr alone with warmup_steps=0)
        lr_max     = max(lr_max, lr_t)
        weight     = t**r * lr_max**weight_lr_power
        weight_sum = weight_sum + weight
        c          = weight / weight_sum                  (0 when weight_sum is 0)
        g          = -g if maximize else g
        v          = beta2 * v + (1 - beta2) * g * g
        gn         = g / (sqrt(v / (1 - beta2**t)) + eps)
        gn         = gn + weight_decay * y               (weight decay at y)
        y          = lerp(y, z, c)                        (torch's lerp)
        y          = y + lr_t * (beta1 * (1 - c) - 1) * gn
        z          = z - lr_t * gn

    so that ``x = (y - (1 - beta1) z) / beta1`` is the weighted average of the ``z``'s.
    ``z`` starts as a copy of the param, ``v`` (``exp_avg_sq``) at zero; ``lr_max``
    (from -1) and ``weight_sum`` (from 0) are per-param 0-d float64 state, equal over a
    group (the package keeps them, and ``k = t - 1``, per group).

    Call :meth:`eval` before evaluating or saving the model (the params become ``x``) and
    :meth:`train` before training again (back to ``y``); a step in eval mode raises. The
    optimizer starts in train mode; each group's ``"train_mode"`` entry records its mode
    and is saved in :meth:`state_dict`. Learning-rate schedules are unnecessary; ``lr``
    may still be a callable ``lr(t)`` (then scaled by the warmup).
    """

    algorithm = _algorithms.ALGORITHMS["schedulefree"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 0.0025,
                 betas: Betas = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on

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


@_documented
class RAdamScheduleFree(AdamWScheduleFree):
    r"""Schedule-Free RAdam, as ``schedulefree.RAdamScheduleFree`` computes it: Schedule-Free
    AdamW (:class:`AdamWScheduleFree`: the same state, loop, :meth:`train` and :meth:`eval`)
    with RAdam's rectification in place of a warmup.

    For step ``t`` (no ``warmup_steps``)::

        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 4:
            lr_t = lr * ((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))**0.5
            gn   = g / (sqrt(v / (1 - beta2**t)) + eps)
        else:
            lr_t = 0 if silent_sgd_phase else lr
            gn   = g                                    (v still advances)

    then ``lr_max``, ``weight_sum``, ``c``, the weight decay at ``y`` and the ``y`` and
    ``z`` updates as in :class:`AdamWScheduleFree`. The threshold is the package's 4 (torch's
    RAdam switches at 5).
    """

    algorithm = _algorithms.ALGORITHMS["radam_schedulefree"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 0.0025,
                 betas: Betas = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 r: float = 0.0, weight_lr_power: float = 2.0, silent_sgd_phase: bool = True,
                 maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        Optimizer.__init__(self, params, _hyperparameters(locals()))
    # fmt: on


_THREE_BETAS = {
    "betas": (
        "(float, float, float)",
        "Decay rates of the three moments (see the formula); each in [0, 1).",
    )
}


@_documented
class AdEMAMix(Optimizer):
    r"""AdEMAMix (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
    Older"), as ``pytorch_optimizer.AdEMAMix``: Adam plus a slow EMA of the gradient.

    For step ``t`` of each element (``T`` is ``t_alpha_beta3``)::

        g       = -g if maximize else g
        g       = g + weight_decay * p                (L2 weight decay, coupled)
        p       = p * (1 - lr_t * weight_decay)       (decoupled_weight_decay: instead)
        alpha_t = min(t * alpha / T, alpha)           (alpha when T is None)
        beta3_t = min(exp(ln(beta1) ln(beta3) / ((1 - t/T) ln(beta3) + (t/T) ln(beta1))),
                      beta3)                          (beta3 when T is None)
        m       = beta1 * m + (1 - beta1) * g
        v       = beta2 * v + (1 - beta2) * g * g
        s       = beta3_t * s + (1 - beta3_t) * g
        p       = p - lr_t * (m / (1 - beta1**t) + alpha_t * s)
                         / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The slow EMA ``s`` (state ``exp_avg_slow``) is not bias-corrected, as in the paper and
    the package. The defaults are pytorch_optimizer's; the paper's runs use
    ``decoupled_weight_decay=True`` (AdamW's decay) and ``t_alpha_beta3`` = the run's
    length. With ``t_alpha_beta3``, beta1 and beta3 must be > 0 (their logarithms).
    """

    algorithm = _algorithms.ALGORITHMS["ademamix"]
    _parameter_docs = _THREE_BETAS

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3,
                 betas: Betas3 = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 t_alpha_beta3: Optional[float] = None, eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 maximize: bool = False, num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error", state_dtype: StateDtype = None,
                 grad_scale: GradScale = 1.0, max_grad_norm: Optional[float] = None,
                 master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class Adan(Optimizer):
    r"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models"), as ``timm.optim.Adan``.

    For step ``t`` of each element::

        g  = -g if maximize else g
        d  = g - g_prev                            (0 at t = 1: g_prev = g, as timm)
        w  = g + beta2 * d
        m  = beta1 * m + (1 - beta1) * g
        dm = beta2 * dm + (1 - beta2) * d
        n  = beta3 * n + (1 - beta3) * w * w
        u  = (lr_t / (1 - beta1**t)) * m + (lr_t * beta2 / (1 - beta2**t)) * dm
        r  = u / (sqrt(n) / sqrt(1 - beta3**t) + eps)
        p  = p * (1 - lr_t * weight_decay) - r     (no_prox=True)
        p  = (p - r) / (1 + lr_t * weight_decay)   (no_prox=False, the default)

    The betas are timm's (the decay rates; the paper writes ``1 - beta``). Four state
    arrays, named as timm's: ``exp_avg`` (m), ``exp_avg_sq`` (n), ``exp_avg_diff`` (dm) and
    ``neg_pre_grad``, which holds ``-g`` of the last step: the gradient the step used,
    after unscaling (``grad_scale``), clipping (``max_grad_norm``) and ``maximize``.
    """

    algorithm = _algorithms.ALGORITHMS["adan"]
    _parameter_docs = _THREE_BETAS

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3,
                 betas: Betas3 = (0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_prox: bool = False, maximize: bool = False,
                 num_threads: Threads = None, backend: Backend = "auto",
                 nonfinite: NonFinite = "error", state_dtype: StateDtype = None,
                 grad_scale: GradScale = 1.0, max_grad_norm: Optional[float] = None,
                 master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class ADOPT(Optimizer):
    r"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2
    with the Optimal Rate"), as ``timm.optim.Adopt`` computes it.

    Step ``t = 1`` of each element only starts the second moment::

        g = -g if maximize else g
        g = g + weight_decay * p                      (L2 weight decay, coupled)
        v = v + g * g                                 (v = g * g: the state starts at 0)

    and every later step ``t`` normalises the gradient by the *previous* ``v``::

        g = -g if maximize else g
        g = g + weight_decay * p                      (L2 weight decay, coupled)
        p = p * (1 - lr_t * weight_decay)             (decoupled_weight_decay: instead)
        n = g / max(sqrt(v), eps)
        n = clamp(n, -(t - 1)**clip_exp, (t - 1)**clip_exp)   (unless clip_exp is None)
        m = beta1 * m + (1 - beta1) * n
        p = p - lr_t * m
        v = beta2 * v + (1 - beta2) * g * g

    No bias correction. The defaults and the clip ``(t - 1)**clip_exp`` are timm's
    (``clip_exp=0.333``); the paper's and pytorch-optimizer's clip is ``t**0.25``, and
    pytorch-optimizer also decays the param at step 1 (docs/algorithms_adopt_atan2.md).
    timm's ``decoupled`` is ``decoupled_weight_decay`` here and its ``caution`` is
    ``cautious`` (from step 2, ``m`` masked where ``m * g <= 0`` and the rest scaled by
    ``1 / max(mean(mask), 1e-3)`` per tensor, as timm; ``m`` is stored unmasked); its
    ``corrected_weight_decay`` is not offered.
    """

    algorithm = _algorithms.ALGORITHMS["adopt"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.9999),
                 eps: float = 1e-6, clip_exp: Optional[float] = 0.333,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32",
                 cautious: bool = False) -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on


@_documented
class AdamAtan2(Optimizer):
    r"""Adam-atan2 (Everett et al., 2024, "Scaling Exponents Across Parameterizations and
    Optimizers"), as ``adam_atan2_pytorch.AdamAtan2`` computes it: Adam without eps.

    For step ``t`` of each element::

        g = -g if maximize else g
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        p = p * (1 - lr_t * weight_decay)
        p = p - lr_t * a * atan2(m * (1 / bc1), sqrt(v * (b * b / bc2)))

    atan2 bounds each element's step by ``lr_t * a * pi / 2`` and needs no eps (it is
    scale invariant and defined at 0). Weight decay is always decoupled. atan2 is
    fusedadam's own (``fusedadam.reference.atan2``, the same operations in the compiled
    loops and in NumPy), within a few ulps of ``numpy.arctan2``
    (docs/algorithms_adopt_atan2.md). The defaults are adam_atan2_pytorch's.
    """

    algorithm = _algorithms.ALGORITHMS["adam_atan2"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-4, betas: Betas = (0.9, 0.99),
                 weight_decay: float = 0.0, a: float = 1.27, b: float = 1.0,
                 maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error",
                 state_dtype: StateDtype = None, grad_scale: GradScale = 1.0,
                 max_grad_norm: Optional[float] = None, master: Master = "float32") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on
