"""The base of the torch front end: a ``torch.optim.Optimizer`` whose step is the engine's.

The state lives in torch's own ``opt.state[p]`` as tensors; the engine's plans hold NumPy
views of the same memory, so a step writes the tensors the user sees. Per step the front
end reads the params' grads and steps the plans (``_plans.py`` makes them); a plan is kept
while the groups, the params' memory, the state dicts and which params have a grad stay
as they were, so a steady training loop plans once and takes ``_steady_grads``' way
(``_grads.py``).
"""

import operator
from typing import Any, Dict, List

import torch

from fusedadam import _algorithms, _dtensor, _precision, _validation
from fusedadam.engine import Engine, Outcome, _rules
from fusedadam.torch import _bridge
from fusedadam.torch import _torch_api
from fusedadam.torch._grads import Grads
from fusedadam.torch._plans import Plans
from fusedadam.torch._state_dict import StateDicts

_profiler = torch.autograd.profiler
_TORCH_THREADS = torch.get_num_threads
# torch's global step hooks: dicts torch registers into in place (read every step)
_GLOBAL_PRE_HOOKS = _torch_api.GLOBAL_PRE_HOOKS
_GLOBAL_POST_HOOKS = _torch_api.GLOBAL_POST_HOOKS
_BUMP = _bridge.bump


class Optimizer(StateDicts, Plans, Grads, torch.optim.Optimizer):
    """Base of the torch front ends: torch's groups, state and hooks; the engine's step.

    A subclass names its registry entry (``_name``, a key of ``_algorithms.DEFAULTS``) and
    calls ``_setup(params, locals())`` from its ``__init__``.
    """

    _name = ""
    #: Group entries a class fixes (AdamW: decoupled_weight_decay=True).
    _FIXED: Dict[str, Any] = {}
    #: torch.amp.GradScaler hands ``grad_scale``/``found_inf`` to ``step`` (attributes):
    #: the step skips when found_inf is set and otherwise unscales inside the same pass.
    _step_supports_amp_scaling = True

    def _setup(self, params, arguments):
        defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}
        defaults.update(self._FIXED)
        defaults.setdefault("master", "float32")
        self._init_private()
        _torch_api.check_torch_flags(defaults)
        self._check_group(defaults, "")
        super().__init__(params, defaults)
        if defaults.get("fused"):
            # torch.optim.Adam's checks of its own implementation flags, in its order.
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _init_private(self):
        name, numpy_defaults = _algorithms.DEFAULTS[self._name]
        self.algorithm = _algorithms.ALGORITHMS[name]
        torch_keys = set(self._torch_keys())
        # The engine's group: the registry's defaults, the torch group's values where it
        # has the key (lr, betas, ...); the engine validates them all.
        self._numpy_defaults = numpy_defaults
        self._keys = tuple(k for k in numpy_defaults if k in torch_keys)
        self._getter = operator.itemgetter(*self._keys)
        self._known_state = frozenset(
            ("step", *_bridge.MASTERS, *self.algorithm.all_state_names())
            + tuple(_precision.scale_name(n) for n in self.algorithm.all_state_names())
            + tuple(n for n, _ in self.algorithm.scalar_state)
        )
        self._counters = ("step",) + tuple(n for n, _ in self.algorithm.scalar_state)
        self._engine = Engine()
        self._skipped = 0
        self._seen: Any = None  # what the members were taken from (see _fits)
        self._mask: Any = None  # which members had a grad when the plans were made
        self._parts: List[Any] = []
        self._stepped: List[torch.Tensor] = []  # the params the plans step, in plan order
        self._watched: Any = ()  # opt.state's values when planned
        self._installs: List[Any] = []
        self._order: Any = None  # the grads' positions in plan order (None: all, in order)
        self._split_clip: List[Any] = []
        self._shadows: List[Any] = []
        self._aside = False
        self._full = False
        self._steady = False  # the next step may take the steady state's way (_steady_grads)
        self._grad_views: Any = None
        self._few_views: Any = None  # _few_grads' last list of views, when all were kept
        self._cache_grads = False
        self._torch_parallel = _bridge.TORCH_WORKERS_SPIN and _TORCH_THREADS() > 1
        self._dtensor: Any = None  # a _dtensor.Plan when some params are DTensors
        self._dtypes: Dict[int, torch.dtype] = {}
        self._norms: Dict[int, Any] = {}

    @classmethod
    def _torch_keys(cls):
        import inspect

        keys = tuple(
            n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")
        ) + tuple(cls._FIXED)
        return keys if "master" in keys else keys + ("master",)

    def _check_group(self, group, where):
        """torch's flags and the hyperparameters a group has (the engine re-validates the
        whole group when it plans)."""
        _torch_api.check_torch_only(group, where)
        checked = {k: group[k] for k in self._keys if k in group}
        if "betas" in checked:
            checked["betas"] = _bridge.plain_betas(checked["betas"])
        if "lr" in checked:
            checked["lr"] = _bridge.lr_value(checked["lr"], where)
        _validation.check_hyperparameters(checked, tuple(checked), where, self.algorithm.n_betas)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group (torch's rules), after checking its tensors."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        if params is not None and not isinstance(params, (set, list)):
            params = list(params)
        if isinstance(params, list):
            param_group = {**param_group, "params": params}
            first = sum(len(g["params"]) for g in self.param_groups)
            for k, p in enumerate(params):
                if isinstance(p, tuple) and len(p) == 2:
                    p = p[1]  # (name, tensor): torch's named parameters
                if isinstance(p, torch.Tensor):  # else torch's message
                    # A param without requires_grad is kept and skipped while its grad is
                    # None (torch's rule: frozen layers of a model passed whole).
                    _bridge.check_tensor(p, f"params[{first + k}]", meta=True)
        self._check_group(param_group, f"param_groups[{len(self.param_groups)}]: ")
        super().add_param_group(param_group)
        self._seen = None

    @staticmethod
    def _members(group):
        """A group's params, each once (torch warns about a duplicate and keeps it; the step
        updates it once)."""
        params = group["params"]
        if len(set(map(id, params))) == len(params):
            return params
        seen: set = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    # ------------------------------------------------------------------ step

    def step(self, closure=None, *, grad_scale=None, found_inf=None):
        """One optimization step of every param that has a ``grad``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with grad enabled).
        grad_scale, found_inf : tensor, optional
            As torch's fused optimizers take them (``torch.amp.GradScaler`` sets them as
            attributes of the optimizer for the call): gradients are divided by
            ``grad_scale`` inside the step's single pass, and a non-zero ``found_inf``
            skips the step (nothing changes, the step count included).

        On any error nothing has changed: params, grads and state are bit-identical.
        """
        if (
            _profiler._is_profiler_enabled
            or _GLOBAL_PRE_HOOKS
            or _GLOBAL_POST_HOOKS
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
        ):
            return _torch_api.hooked_step(self, closure, grad_scale, found_inf)
        if self._steady and closure is None and grad_scale is None and found_inf is None:
            grads = self._steady_grads()
            if grads is not None:
                outcome = self._engine.step(grads)
                if not outcome:  # Outcome.RAN
                    _BUMP(self._stepped)
                    return None
                if outcome == Outcome.RAN_NEW_STATE:
                    self._install()
                    self._engine.snapshot()
                    _bridge.bump(self._stepped)
                    return None
                self._steady = False  # nothing was written: the full step takes over
        return self._step(closure, grad_scale, found_inf)

    # torch.optim.Optimizer wraps an unmarked step in a profiler range and its hooks
    # (~10 us a call); step runs them itself, and only when there are any.
    step.hooked = True  # type: ignore[attr-defined]

    def _step(self, closure=None, grad_scale=None, found_inf=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        d = self.__dict__
        if grad_scale is None:
            grad_scale = d.get("grad_scale")
        if found_inf is None:
            found_inf = d.get("found_inf")
        if found_inf is not None and float(found_inf) != 0.0:
            return loss  # as torch's fused Adam: the scaler saw inf/NaN, nothing changes
        if not self._fits():
            self._sync()
        grads = self._collect()
        if grads is None:  # a param's data was replaced (p.data = ...): new views
            self._sync()
            grads = self._collect()
        mask = None if self._full else tuple(g is not None for g in grads)
        if _bridge.TORCH_WORKERS_SPIN and (_TORCH_THREADS() > 1) != self._torch_parallel:
            self._torch_parallel = not self._torch_parallel
            self._mask = False  # the default thread count follows torch's
        if mask != self._mask or not self._state_unchanged():
            if mask is not None and not any(mask):
                return loss  # no param has a grad: nothing to do, as in torch
            self._plan(mask)
        stepped = grads if self._order is None else [grads[i] for i in self._order]
        for part in self._parts:
            values = self._getter(part[1])
            # A tensor lr or betas may change in place: read them every step.
            if part[3] or values != part[2]:
                self._push_hyper(part, values)
        if self._dtensor is not None:  # global norms and non-finite checks
            grad_scale = self._dtensor.before_step(self, grad_scale)
            if grad_scale is _dtensor.SKIP:
                self._skipped += 1
                return loss
        for i, p, shadow in self._shadows:
            if grads[i] is not None:
                shadow.copy_(p.detach())  # the param may have been edited in place
        if grad_scale is not None:
            grad_scale = _bridge.scale_value(grad_scale)
        if self._split_clip and self._dtensor is None:
            grad_scale = self._clip_whole_groups(stepped, grad_scale)
        outcome = self._engine.step(stepped, grad_scale)
        if outcome:  # anything but Outcome.RAN
            outcome = self._settle(outcome, stepped, grad_scale)
        self._steady = (
            mask is None
            and self._order is None
            and not self._any_low
            and not self._split_clip
            and self._dtensor is None
            and not any(part[3] for part in self._parts)
        )
        if outcome != Outcome.SKIPPED:
            for i, p, shadow in self._shadows:
                if grads[i] is not None:
                    p.detach().copy_(shadow)
            _bridge.bump(self._stepped)
        return loss

    def _settle(self, outcome, grads, grad_scale):
        """Act on an engine outcome other than RAN: plan again (and step), count a
        skipped step, attach the state a first step created."""
        outcome = _rules.settle(
            self._engine, outcome, grads, grad_scale,
            lambda: self._plan(self._mask), self._refresh_hyper,
        )  # fmt: skip
        if outcome == Outcome.SKIPPED:
            self._skipped += 1
        elif outcome == Outcome.RAN_NEW_STATE:
            self._install()
            self._engine.snapshot()
        return outcome

    @property
    def last_grad_norm(self):
        """The unscaled gradients' 2-norm of the last step, per group with ``max_grad_norm``
        (what ``torch.nn.utils.clip_grad_norm_`` returns over the group's params that have a
        grad): a float for one group, else a list; see
        :attr:`fusedadam.Optimizer.last_grad_norm`. With DTensor params, the norm over all
        ranks."""
        if self._dtensor is not None:
            return self._dtensor.last_grad_norm()
        norms = self._engine.grad_norms()
        out: List[Any] = [None] * len(self.param_groups)
        if len(norms) == len(self._parts):
            for part, norm in zip(self._parts, norms):
                out[part[4]] = self._norms.get(part[4], norm)
        return out[0] if len(out) == 1 else out

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"``)."""
        return self._skipped
