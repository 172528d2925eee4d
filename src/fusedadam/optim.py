"""Optimizer classes shaped like ``torch.optim``: param groups, lazy state, state_dict.

A step validates every group, then writes every group: bad input raises before any array
or counter changes. Each group is one call into compiled code.
"""
import threading
from typing import NamedTuple

import numpy as np

from fusedadam import _validation
from fusedadam._threads import effective_num_threads
from fusedadam.functional import (
    GroupStep,
    _kernels,
    adam_scalars,
    learning_rate,
    loop_kind,
    nonfinite_error,
    resolve_backend,
)

__all__ = ["Optimizer", "Adam", "AdamW", "Adamax"]

_HYPER_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
               "bias_correction", "beta1_decay", "num_threads", "backend", "nonfinite")


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


def _admit_param_group(param_group, param_groups, defaults):
    """A new group dict for an optimizer holding ``param_groups``: checked, defaults filled.

    Checks what every optimizer requires of a group (a dict with a ``params`` sequence of
    acceptable arrays, none already in another group) and returns ``(group, where,
    first)``: the copy to store, its name for messages, and the position of its first
    param over all groups. Hyperparameters are the caller's to check.
    """
    if not isinstance(param_group, dict):
        raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
    where = f"param_groups[{len(param_groups)}]"
    group = dict(param_group)
    if "params" not in group:
        raise ValueError(f"{where} has no 'params' entry")
    group["params"] = _as_param_list(group["params"], f"{where}['params']")
    first = sum(len(g["params"]) for g in param_groups)
    _validation.check_params(group["params"], first)
    existing = {id(p) for g in param_groups for p in g["params"]}
    if any(id(p) in existing for p in group["params"]):
        raise ValueError("some parameters appear in more than one parameter group")
    for key, value in defaults.items():
        group.setdefault(key, value)
    if isinstance(group.get("betas"), list):
        group["betas"] = tuple(group["betas"])
    return group, where, first


class _GroupPlan(NamedTuple):
    """What one group's step needs, worked out (and checked) before anything is written."""

    backend: str
    state_names: tuple
    kind: int
    key: tuple          # the hyperparameter values the checks ran on
    config: tuple       # the same, as _kernels.StepPlan wants them
    scalars: tuple      # functional.adam_scalars of this step
    n_threads: int


class _ParamState:
    """``optimizer.state``: per-parameter state dicts, looked up by the param array itself."""

    def __init__(self):
        self._by_id = {}

    def __getitem__(self, param):
        return self._by_id[id(param)][1]

    def __contains__(self, param):
        return id(param) in self._by_id

    def __len__(self):
        return len(self._by_id)

    def __iter__(self):
        return (param for param, _ in self._by_id.values())

    def get(self, param, default=None):
        entry = self._by_id.get(id(param))
        return default if entry is None else entry[1]

    def _set(self, param, state):
        self._by_id[id(param)] = (param, state)


class Optimizer:
    """Base class: param groups, lazily created state, ``step``, ``state_dict``.

    Subclasses set ``algorithm`` (``"adam"`` or ``"adamax"``) and ``defaults``.
    """

    algorithm = "adam"

    def __init__(self, params, defaults):
        _validation.check_hyperparameters(defaults)
        _validation.check_num_threads(defaults["num_threads"])
        resolve_backend(defaults["backend"])
        self.defaults = defaults
        self.param_groups = []
        self.state = _ParamState()
        self._group_steps = []    # the step count of each group (all its params share it)
        self._group_cache = []    # per group: (GroupStep, hyperparameter key) or None
        self._fast = None         # _kernels.StepPlan: the steady-state step in compiled code
        self._lock = threading.Lock()
        #: Steps skipped because a gradient held NaN or inf (groups with nonfinite="skip").
        self.skipped_steps = 0
        for group in _param_groups_from(params):
            self.add_param_group(group)

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group):
        """Add a group ``{"params": [...], <hyperparameter overrides>}``."""
        self._fast = None
        group, where, _ = _admit_param_group(param_group, self.param_groups, self.defaults)
        _validation.check_hyperparameters(group, f"{where}: ")
        _validation.check_num_threads(group["num_threads"])
        resolve_backend(group["backend"])
        self.param_groups.append(group)
        self._group_steps.append(0)
        self._group_cache.append(None)

    def _state_names(self, amsgrad):
        if self.algorithm == "adamax":
            return ("exp_avg", "exp_inf")
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")

    # ---------------------------------------------------------------- step
    def step(self, grads):
        """Update every parameter in place from ``grads``.

        ``grads`` is one array (when there is one parameter) or a sequence of arrays in
        the order of all params of all groups. Everything is checked first: on an error
        no parameter, state array or step count has changed.

        Raises
        ------
        TypeError, ValueError
            Bad gradients or hyperparameters (the message names them).
        FloatingPointError
            A gradient holds NaN or inf in a group with ``nonfinite="error"``.
        """
        with self._lock:
            fast = self._fast
            if fast is not None:
                status = fast.step(grads)
                if status == 0:
                    return
                if status == 1:
                    self.skipped_steps += 1
                    return
            self._step_checked(grads)

    def _step_checked(self, grads):
        """The step with every check in Python; leaves a StepPlan for the next steps."""
        self._fast = None
        n_params = sum(len(g["params"]) for g in self.param_groups)
        grads = _validation.as_grad_list(grads, n_params)
        plans = [self._plan_group(gi, group) for gi, group in enumerate(self.param_groups)]
        new_state = self._prepare_all(plans, grads)
        group_steps = [self._group_cache[gi][0] for gi in range(len(plans))]
        skip = False
        for gi, plan in enumerate(plans):
            mode = self.param_groups[gi]["nonfinite"]
            if mode == "ignore":
                continue
            found = group_steps[gi].first_nonfinite(plan.n_threads)
            if found is not None:
                if mode == "error":
                    raise nonfinite_error(group_steps[gi], *found)
                skip = True
        if skip:
            self.skipped_steps += 1
            if new_state:       # the groups were built over state that is not kept
                self._group_cache = [None] * len(self.param_groups)
        else:
            for p, st in new_state:
                self.state._set(p, st)
            for gi, plan in enumerate(plans):
                self._group_cache[gi] = (group_steps[gi], plan.key)
                group_steps[gi].run(plan.scalars, plan.n_threads)
                self._group_steps[gi] += 1
        if not new_state or not skip:
            self._fast = self._make_fast_plan(plans, group_steps)

    def _make_fast_plan(self, plans, group_steps):
        if _kernels is None or any(gs.kernel is None for gs in group_steps):
            return None
        keys = _HYPER_KEYS + (("decoupled_weight_decay",) if self.algorithm == "adam" else ())
        if not all(k in g for g in self.param_groups for k in keys):
            return None
        configs = [plan.config for plan in plans]
        return _kernels.StepPlan(self.param_groups, [gs.kernel for gs in group_steps], keys,
                                 self._group_steps, configs)

    def _plan_group(self, gi, group):
        """Check a group's settings; return what its step needs (nothing is written)."""
        if not isinstance(group["params"], list):
            group["params"] = _as_param_list(group["params"], f"param_groups[{gi}]['params']")
        if isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        key = tuple(group[k] for k in _HYPER_KEYS)
        cached = self._group_cache[gi]
        if cached is None or cached[1] != key:
            _validation.check_hyperparameters(group, f"param_groups[{gi}]: ")
            _validation.check_num_threads(group["num_threads"])
        backend = resolve_backend(group["backend"])
        amsgrad = self.algorithm == "adam" and group["amsgrad"]
        t = self._group_steps[gi] + 1
        lr = learning_rate(group["lr"], t)
        decoupled = bool(self.algorithm == "adam" and group.get("decoupled_weight_decay", False))
        kind = loop_kind(self.algorithm, amsgrad, group["weight_decay"] != 0 and not decoupled)
        beta1, beta2 = group["betas"]
        scalars = adam_scalars(t, lr, beta1, beta2, group["eps"], group["weight_decay"],
                               decoupled, group["maximize"], group["bias_correction"],
                               group["beta1_decay"])
        config = (
            kind, lr, group["lr"] if callable(group["lr"]) else None, float(beta1),
            float(beta2), float(group["eps"]), float(group["weight_decay"]), decoupled,
            bool(group["maximize"]), bool(group["bias_correction"]),
            float(group["beta1_decay"]), ("error", "skip", "ignore").index(group["nonfinite"]),
            group["num_threads"],
        )
        return _GroupPlan(backend, self._state_names(amsgrad), kind, key, config, scalars,
                          effective_num_threads(group["num_threads"]))

    def _prepare_all(self, plans, grads):
        """Check every group's gradients against cached kernels, rebuilding them if stale.

        Returns the state the rebuild had to create (stored by the caller only once every
        group has passed). Raises before anything is written.
        """
        offsets = np.cumsum([0] + [len(g["params"]) for g in self.param_groups]).tolist()

        def prepare(gi, group_step):
            return group_step.prepare(self.param_groups[gi]["params"], grads, offsets[gi],
                                      plans[gi].kind)

        cache = self._group_cache
        if all(cache[gi] is not None
               and (cache[gi][0].backend, cache[gi][0].state_names)
               == (plans[gi].backend, plans[gi].state_names)
               and prepare(gi, cache[gi][0])
               for gi in range(len(plans))):
            return []
        group_steps, new_state = self._build_groups(plans, offsets)
        for gi, group_step in enumerate(group_steps):
            if not prepare(gi, group_step):
                raise RuntimeError("fusedadam internal error: fresh group rejected its params")
        for gi, group_step in enumerate(group_steps):
            cache[gi] = (group_step, None)
        return new_state

    def _build_groups(self, plans, offsets):
        """Fresh GroupSteps for all groups over one optimizer-wide memory map."""
        all_params, all_states, new_state, per_group = [], [], [], []
        for gi, group in enumerate(self.param_groups):
            names = plans[gi].state_names
            states = [[] for _ in names]
            for k, p in enumerate(group["params"]):
                st = self.state.get(p)
                if st is None and self._group_steps[gi] != 0:
                    raise ValueError(
                        f"params[{offsets[gi] + k}] has no state, but its group is at step "
                        f"{self._group_steps[gi]}; add new parameters as a new group"
                    )
                missing = [name for name in names if st is None or name not in st]
                if missing:
                    # New state (or max_exp_avg_sq when amsgrad was switched on) starts at 0.
                    _validation.check_params([p], offsets[gi] + k)
                    st = dict(st or {})
                    for name in missing:
                        st[name] = np.zeros_like(p, order="C")
                    new_state.append((p, st))
                for i, name in enumerate(names):
                    states[i].append(st[name])
                all_params.append(p)
                all_states.append({name: st[name] for name in names})
            per_group.append(states)
        _validation.check_params(all_params)
        written = _validation.check_state(all_params, all_states)
        group_steps = [
            GroupStep(group["params"], states, plans[gi].state_names, plans[gi].backend,
                      offsets[gi], written)
            for gi, (group, states) in enumerate(zip(self.param_groups, per_group))
        ]
        return group_steps, new_state

    # ---------------------------------------------------------------- state dict
    def state_dict(self):
        """Plain dict of Python scalars and NumPy arrays, keyed like ``torch.optim``.

        ``{"state": {i: {"step": t, "exp_avg": ..., ...}}, "param_groups": [{..., "params":
        [i, ...]}]}`` with ``i`` the param's position over all groups. The arrays are the
        optimizer's own (no copy, as in torch): copy them to keep a snapshot while training
        goes on. Picklable; :func:`fusedadam.flatten_state_dict` makes it ``np.savez``-able.
        """
        with self._lock:
            state, groups, index = {}, [], 0
            for gi, group in enumerate(self.param_groups):
                packed = {k: v for k, v in group.items() if k != "params"}
                packed["params"] = list(range(index, index + len(group["params"])))
                groups.append(packed)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st is not None:
                        state[index] = {"step": self._group_steps[gi], **st}
                    index += 1
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a ``state_dict()``: checked whole, then copied in; resumes exactly.

        Raises ``ValueError``/``TypeError`` (and changes nothing) when the groups, sizes,
        shapes, dtypes, keys or steps do not fit this optimizer.
        """
        with self._lock:
            new_groups, new_state, new_steps = self._check_state_dict(state_dict)
            for group, saved in zip(self.param_groups, new_groups):
                group.update(saved)
            self.state = _ParamState()
            for p, st in new_state:
                self.state._set(p, st)
            self._group_steps = new_steps
            self._group_cache = [None] * len(self.param_groups)
            self._fast = None

    def _check_state_dict(self, state_dict):
        saved_state, saved_groups = _validation.check_state_dict_layout(
            state_dict, self.param_groups)
        new_groups, new_state, new_steps, used, index = [], [], [], set(), 0
        for group, (where, saved, hyper) in zip(self.param_groups, saved_groups):
            merged = {**group, **hyper}
            _validation.check_hyperparameters(merged, f"{where}: ")
            _validation.check_num_threads(merged["num_threads"])
            names = self._state_names(self.algorithm == "adam" and merged["amsgrad"])
            steps = set()
            for k, (saved_id, p) in enumerate(zip(saved["params"], group["params"])):
                pname = f"state_dict['state'][{saved_id!r}] (params[{index + k}])"
                if saved_id not in saved_state:
                    steps.add(0)
                    continue
                if saved_id in used:
                    raise ValueError(f"{pname} is listed in two groups")
                used.add(saved_id)
                step, st = _validation.check_saved_state(
                    saved_state[saved_id], p, names, pname)
                steps.add(step)
                new_state.append((p, st))
            if len(steps) > 1:
                raise ValueError(
                    f"{where}: its params are at different steps {sorted(steps)}; fusedadam "
                    "steps a group together"
                )
            new_steps.append(steps.pop() if steps else 0)
            new_groups.append(hyper)
            index += len(group["params"])
        return new_groups, new_state, new_steps


def _defaults(lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction, beta1_decay,
              num_threads, backend, nonfinite, **extra):
    return dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                bias_correction=bias_correction, beta1_decay=beta1_decay,
                num_threads=num_threads, backend=backend, nonfinite=nonfinite, **extra)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2014), with AMSGrad (Reddi et al., 2018) as an option.

    For step ``t`` of each element, with ``g`` its gradient::

        g     = -g if maximize else g
        g     = g + weight_decay * p                  (L2 weight decay, coupled)
        b1_t  = beta1 * beta1_decay**(t - 1)
        m     = b1_t * m + (1 - b1_t) * g
        v     = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                         (amsgrad; then v_max is used for v)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t         (1, 1 without bias_correction)
        p     = p - (lr_t / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    ``lr_t`` is ``lr`` or ``lr(t)``. eps is added outside the square root and the
    AMSGrad maximum is taken over the raw ``v`` (not the bias-corrected one), as in
    ``torch.optim.Adam``.

    Parameters
    ----------
    params : ndarray, sequence of ndarray, or sequence of dict
        Arrays to optimize (float32/float64, C-contiguous, writeable), or param groups
        ``{"params": [...], "lr": ...}`` overriding any hyperparameter below.
    lr : float or callable, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad, maximize : bool, default False
    bias_correction : bool, default True
    beta1_decay : float in (0, 1], default 1
    num_threads : int or None
        None follows OpenMP (``OMP_NUM_THREADS``, threadpoolctl); -1 all processors.
    backend : {"auto", "compiled", "numpy"}
    nonfinite : {"error", "skip", "ignore"}, default "error"
        What a step does when a gradient holds NaN or inf: raise ``FloatingPointError``
        naming the parameter and the count, changing nothing; skip the whole step
        (``skipped_steps`` counts them, as AMP loss scaling does); or no check at all
        (fastest; NaN propagates, as in torch).
    """

    algorithm = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, bias_correction=True, beta1_decay=1.0,
                 num_threads=None, backend="auto", nonfinite="error"):
        super().__init__(params, _defaults(
            lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction, beta1_decay,
            num_threads, backend, nonfinite, decoupled_weight_decay=self._decoupled))

    _decoupled = False


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    As :class:`Adam`, except that the gradient gets no L2 term; instead, before the
    update, ``p = p * (1 - lr_t * weight_decay)``. Default ``weight_decay=1e-2``.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, bias_correction=True, beta1_decay=1.0,
                 num_threads=None, backend="auto", nonfinite="error"):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize,
                         bias_correction, beta1_decay, num_threads, backend, nonfinite)


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2014, Algorithm 2), with torch's eps.

    For step ``t`` of each element::

        g    = -g if maximize else g
        g    = g + weight_decay * p
        b1_t = beta1 * beta1_decay**(t - 1)
        m    = b1_t * m + (1 - b1_t) * g
        u    = max(beta2 * u, |g| + eps)
        p    = p - (lr_t / (1 - beta1**t)) * m / u

    Parameters are as for :class:`Adam` (no ``amsgrad``); default ``lr=2e-3``.
    """

    algorithm = "adamax"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 maximize=False, bias_correction=True, beta1_decay=1.0, num_threads=None,
                 backend="auto", nonfinite="error"):
        super().__init__(params, _defaults(
            lr, betas, eps, weight_decay, False, maximize, bias_correction, beta1_decay,
            num_threads, backend, nonfinite))
