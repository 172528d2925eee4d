"""The base of the torch front end: a ``torch.optim.Optimizer`` whose step is the engine's.

The state lives in torch's own ``opt.state[p]`` as tensors; the engine's plans hold NumPy
views of the same memory, so a step writes the tensors the user sees. Per step the front
end collects the params that have a ``grad`` and plans, per torch group, those params in
parts of equal step count (torch keeps a step per param; the engine steps a group at one
step); a plan is kept while the groups, the params' memory, the state dicts and which
params have a grad stay as they were, so a steady training loop plans once.
"""

import itertools
import math
import operator
from itertools import chain
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.optim.optimizer as _torch_optimizer

from fusedadam import _algorithms, _dtensor, _precision, _validation
from fusedadam.engine import Engine, Outcome, Positions
from fusedadam.engine._plan import group_spec, hyper_spec
from fusedadam.torch import _bridge
from fusedadam.torch._state_dict import StateDicts

_profiler = torch.autograd.profiler
_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_NONES = itertools.repeat(None)
_NUMPY = torch.Tensor.numpy
_SHAPE = operator.attrgetter("shape")
_STRIDE = torch.Tensor.stride
# The steady state keeps its grads' views for the next step while the params hold at most
# this many elements: the views keep the grads alive (one set of grads more, at most 8 MiB).
_CACHED_GRAD_ELEMENTS = 1 << 20
_TORCH_THREADS = torch.get_num_threads
# torch's global step hooks: dicts it adds to and removes from, never rebinds.
_GLOBAL_PRE_HOOKS = _torch_optimizer._global_optimizer_pre_hooks
_GLOBAL_POST_HOOKS = _torch_optimizer._global_optimizer_post_hooks


class Optimizer(StateDicts, torch.optim.Optimizer):
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
        self._check_torch_flags(defaults)
        self._check_group(defaults, "")
        super().__init__(params, defaults)
        if defaults.get("fused"):
            # torch.optim.Adam's checks of its own implementation flags, in its order.
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _check_torch_flags(self, defaults):
        """torch.optim.Adam's (and AdamW's) checks of a tensor lr and tensor betas against
        its ``foreach``/``capturable`` flags: the same errors, though one implementation
        runs here whatever the flags say."""
        if "fused" not in defaults:
            return  # Adamax, NAdam, RAdam: torch checks only the lr tensor's size
        foreach = defaults.get("foreach") and not defaults.get("capturable")
        lr, betas = defaults["lr"], defaults["betas"]
        if isinstance(lr, torch.Tensor) and foreach:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            return  # fusedadam's own check names the problem
        tensors = [isinstance(b, torch.Tensor) for b in betas]
        if not (all(tensors) or all(isinstance(b, float) for b in betas)):
            raise ValueError("betas must be either both floats or both Tensors")
        if all(tensors):
            for k, b in enumerate(betas):
                if foreach:
                    raise ValueError(
                        f"betas[{k}] as a Tensor is not supported for capturable=False and "
                        "foreach=True"
                    )
                if b.numel() != 1:
                    raise ValueError(f"Tensor betas[{k}] must be 1-element")
            # torch keeps them as 0-d tensors in the group.
            defaults["betas"] = tuple(b.squeeze() if b.dim() else b for b in betas)

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

    @staticmethod
    def _check_torch_only(group, where):
        for key in ("capturable", "differentiable"):
            if group.get(key, False):
                raise ValueError(
                    f"{where}{key}=True is not supported by fusedadam.torch (CPU tensors, "
                    "no autograd through the step); leave it False"
                )

    def _check_group(self, group, where):
        """torch's flags and the hyperparameters a group has (the engine re-validates the
        whole group when it plans)."""
        self._check_torch_only(group, where)
        _dtensor.check_group({**getattr(self, "defaults", {}), **group}, where)
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
            return self._hooked_step(closure, grad_scale, found_inf)
        if self._steady and closure is None and grad_scale is None and found_inf is None:
            grads = self._steady_grads()
            if grads is not None:
                outcome = self._engine.step(grads)
                if outcome == Outcome.RAN or outcome == Outcome.RAN_NEW_STATE:
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

    def _hooked_step(self, closure, grad_scale, found_inf):
        args: Tuple[Any, ...] = (self,) if closure is None else (self, closure)
        kwargs: Dict[str, Any] = {}
        if grad_scale is not None:
            kwargs["grad_scale"] = grad_scale
        if found_inf is not None:
            kwargs["found_inf"] = found_inf
        with _profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
            for pre_hook in chain(
                _GLOBAL_PRE_HOOKS.values(), self._optimizer_step_pre_hooks.values()
            ):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(
                            "a step pre-hook must return None or a tuple of (new_args, "
                            f"new_kwargs), but got {result}."
                        )
            out = self._step(*args[1:], **kwargs)
            self._optimizer_step_code()
            for post_hook in chain(
                self._optimizer_step_post_hooks.values(), _GLOBAL_POST_HOOKS.values()
            ):
                post_hook(self, args, kwargs)
            return out

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
        for _ in range(3):  # a replan and a hyperparameter refresh at most, then a step
            if outcome == Outcome.PLAN:
                self._plan(self._mask)
            elif outcome == Outcome.HYPER:
                self._refresh_hyper()
            else:
                break
            outcome = self._engine.step(grads, grad_scale)
        else:
            raise RuntimeError(f"fusedadam internal error: the engine still asks for {outcome!r}")
        if outcome == Outcome.SKIPPED:
            self._skipped += 1
        elif outcome == Outcome.RAN_NEW_STATE:
            self._install()
            self._engine.snapshot()
        return outcome

    def _steady_grads(self):
        """The steady state: the grads as the engine reads them when nothing the plans
        depend on changed (groups, params and their memory, state dicts, hyperparameters,
        torch's thread count) and every param has a plain gradient; else None. One
        function: each call saved is ~0.07 us of a ~2 us step."""
        d = self.__dict__
        seen = self._seen
        groups = self.param_groups
        if seen is None or "grad_scale" in d or "found_inf" in d or groups is not seen[0]:
            return None
        if len(groups) != len(seen[1]) or d["state"] is not seen[2]:
            return None
        for g, (group, params, n) in zip(groups, seen[1]):
            if g is not group or g.get("params") is not params or len(params) != n:
                return None
        values, watched = seen[2].values(), self._watched
        if len(values) != len(watched) or not all(map(operator.is_, values, watched)):
            return None
        if _bridge.TORCH_WORKERS_SPIN and (_TORCH_THREADS() > 1) != self._torch_parallel:
            return None
        getter = self._getter
        for part in self._parts:
            if getter(part[1]) != part[2]:
                return None
        params = self._params
        if list(map(_DATA_PTR, params)) != self._ptrs:
            return None
        found = list(map(_GRAD, params))
        cache = self._grad_views
        # The same grad tensors at the same address, shape and strides as last step's
        # (a loop that keeps its grads: zero_grad(set_to_none=False)): their views.
        if (
            cache
            and all(map(operator.is_, found, cache[0]))
            and list(map(_DATA_PTR, found)) == cache[1]
            and list(map(_SHAPE, found)) == cache[2]
            and list(map(_STRIDE, found)) == cache[3]
        ):
            return cache[4]
        try:
            # Tensor.numpy(None), of a bfloat16 or of a grad that requires grad, raises
            views = list(map(_NUMPY, found))
        except (TypeError, RuntimeError):
            return None
        if self._cache_grads:
            self._grad_views = (
                found, list(map(_DATA_PTR, found)), list(map(_SHAPE, found)),
                list(map(_STRIDE, found)), views,
            )  # fmt: skip
        return views

    def _state_unchanged(self):
        """No param's state dict was replaced, added or removed since the plans were made
        (the plans watch each dict's entries themselves). Compares the map's values by
        identity: looking params up would hash tensors in Python, ~0.5 us each."""
        values, watched = self.__dict__["state"].values(), self._watched
        return len(values) == len(watched) and all(map(operator.is_, values, watched))

    def _fits(self):
        """The groups, params and state map are the ones the members were taken from."""
        seen = self._seen
        groups = self.param_groups
        if seen is None or groups is not seen[0] or len(groups) != len(seen[1]):
            return False
        if self.__dict__.get("state") is not seen[2]:
            return False
        for g, (group, params, n) in zip(groups, seen[1]):
            if g is not group or g.get("params") is not params or len(params) != n:
                return False
        if self._dtensor is not None and self._dtensor.moved():
            return False  # a DTensor's local shard was replaced: new views
        return True

    def _sync(self):
        """Take the members of every group (checked), and convert the state of a param
        whose dtype changed; the next step plans again."""
        groups = self.param_groups
        for gi, g in enumerate(groups):
            self._check_group(g, f"param_groups[{gi}]: ")
        members = [self._members(g) for g in groups]
        flat = [p for ps in members for p in ps]
        if len(set(map(id, flat))) != len(flat):
            raise ValueError("some parameters appear in more than one parameter group")
        for i, p in enumerate(flat):
            _bridge.check_tensor(p, f"params[{i}]")
        if not isinstance(self.__dict__.get("state"), dict):
            raise TypeError("opt.state must be a dict")
        dtensors = any(_dtensor.is_dtensor(p) for p in flat)
        self._dtensor = _dtensor.Plan(self) if dtensors else None
        self._params = flat
        self._owner = [gi for gi, ps in enumerate(members) for _ in ps]
        self._low = [p.dtype in _bridge.LOW_PRECISION or dtensors for p in flat]
        self._views = []
        self._shadows = []
        for i, p in enumerate(flat):
            if _dtensor.local(p).is_contiguous():
                self._views.append(_bridge.numpy_view(p))
            else:
                shadow = p.detach().contiguous()
                self._shadows.append((i, p, shadow))
                self._views.append(_bridge.numpy_view(shadow))
        self._ptrs = list(map(_DATA_PTR, flat))
        self._grad_views: Any = None
        self._cache_grads = sum(p.numel() for p in flat) <= _CACHED_GRAD_ELEMENTS
        self._any_low = any(self._low) or bool(self._shadows)
        self._seen = (
            groups,
            [(g, g["params"], len(g["params"])) for g in groups],
            self.__dict__["state"],
        )
        self._mask = False  # plan at the next step
        self._full = False
        if not self._state_fits_dtypes():
            # A param changed dtype under the optimizer (model.float() on a bfloat16 model,
            # model.bfloat16(), model.double()): its state is converted as
            # load_state_dict(..., convert=True) converts a saved one, all of it, or nothing.
            self._load(self._state_dict(), convert=True)
            self._sync()

    def _state_fits_dtypes(self):
        """Whether every param's state is laid out for the param's dtype: a master exactly
        for bfloat16/float16 params, and (without ``state_dtype``, for a param whose dtype
        changed since the last step) moments in the dtype of a float32/float64 param."""
        state_map = self.__dict__["state"]
        slots = self.algorithm.all_state_names()
        before, self._dtypes = self._dtypes, {id(p): p.dtype for p in self._params}
        for gi, p in zip(self._owner, self._params):
            st = dict.get(state_map, p)
            if not st:
                continue
            low = p.dtype in _bridge.LOW_PRECISION
            if low != any(name in st for name in _bridge.MASTERS):
                return False
            changed = before.get(id(p), p.dtype) != p.dtype
            if changed and not low and self.param_groups[gi].get("state_dtype") is None:
                for name in slots:
                    value = st.get(name)
                    if isinstance(value, torch.Tensor) and value.dtype != p.dtype:
                        return False
        return True

    def _collect(self):
        """NumPy views of the grads (None where a param has none), or None when a param's
        memory moved. Sets ``_full``: every param has one."""
        params = self._params
        if list(map(_DATA_PTR, params)) != self._ptrs:
            return None
        found = list(map(_GRAD, params))
        # (not ``None in found``: that compares tensors with ==, ~40 us a tensor)
        self._full = not any(map(operator.is_, found, _NONES))
        if self._any_low or not self._full:
            return self._collect_each(found)
        try:
            return list(map(_NUMPY, found))
        except Exception:
            return self._collect_each(found)  # names the bad gradient

    def _collect_each(self, found):
        grads: List[Any] = []
        for i, (g, low) in enumerate(zip(found, self._low)):
            if g is None:
                grads.append(None)
                continue
            try:
                if not g.is_contiguous() and g.layout is torch.strided and not g.requires_grad:
                    g = g.contiguous()  # torch steps any strided grad: the step reads a copy
                # A bfloat16/float16 param may have a float32, bfloat16 or float16 grad;
                # a DTensor's is read through its local shard.
                grads.append(_bridge.numpy_view(g) if low else g.numpy())
            except Exception as error:
                raise self._grad_error(i, g, error) from None
        return grads

    @staticmethod
    def _grad_error(i, g, error):
        try:
            _bridge.check_tensor(g, f"params[{i}].grad", "gradient")
        except (TypeError, ValueError) as clear:
            return type(clear)(str(clear))
        if g.requires_grad:
            return RuntimeError(
                f"params[{i}].grad requires grad (a create_graph=True backward?); "
                "fusedadam.torch does not differentiate through the step"
            )
        return type(error)(f"params[{i}].grad: {error}")

    # ------------------------------------------------------------------ plans
    def _engine_group(self, group, views):
        """The engine's group dict for some of a torch group's params (their views)."""
        engine_group = dict(self._numpy_defaults)
        engine_group.update(zip(self._keys, self._plain(self._getter(group))))
        engine_group["params"] = views
        return engine_group

    def _plain(self, values):
        return tuple(
            _bridge.plain_betas(v) if k == "betas" else _bridge.lr_value(v, "") if k == "lr" else v
            for k, v in zip(self._keys, values)
        )

    def _plan(self, mask):
        """Plan, per torch group, its params that have a grad, in parts of equal step."""
        state_map = self.__dict__["state"]
        self._mask = False  # until the plans are made: a failed plan is made again
        self._engine.invalidate()
        parts = []  # [engine group, torch group, values pushed, volatile, gi, positions]
        for gi, g in enumerate(self.param_groups):
            buckets: Dict[int, List[int]] = {}
            for i in range(len(self._params)):
                if self._owner[i] == gi and (mask is None or mask[i]):
                    st = dict.get(state_map, self._params[i])
                    step = st.get("step") if isinstance(st, dict) else None
                    bucket = int(step) if isinstance(step, (torch.Tensor, int, float)) else 0
                    buckets.setdefault(bucket, []).append(i)
            for step in sorted(buckets):
                group = self._engine_group(g, [self._views[i] for i in buckets[step]])
                parts.append([group, g, None, False, gi, buckets[step]])
        aside = self._torch_parallel and (
            sum(self._params[i].numel() for part in parts for i in part[5]) < _bridge.STEP_ASIDE
        )
        for part in parts:
            part[2], part[3] = self._getter(part[1]), self._volatile(part[1])
            if aside and part[0]["num_threads"] is None:
                part[0]["num_threads"] = 1  # (see _bridge.STEP_ASIDE)
        self._aside = aside
        self._parts = parts
        order = [i for part in parts for i in part[5]]
        self._order = None if order == list(range(len(self._params))) else order
        self._stepped = [self._params[i] for i in order]
        by_view = {id(self._views[i]): self._params[i] for part in parts for i in part[5]}
        self._split_clip = [
            (gi, [k for k, part in enumerate(parts) if part[4] == gi])
            for gi in sorted({part[4] for part in parts})
            if sum(part[4] == gi for part in parts) > 1
            and self.param_groups[gi].get("max_grad_norm") is not None
        ]
        self._norms = {}
        specs = []
        named: List[Tuple[str, np.ndarray]] = []
        numpy_state = {}
        for part in parts:
            for i in part[5]:
                numpy_state[id(self._views[i])] = self._numpy_state(i, state_map)
        for group, _, _, _, gi, positions in parts:
            hyper = hyper_spec(self.algorithm, group, self._numpy_defaults, f"param_groups[{gi}]: ")
            spec = group_spec(
                self.algorithm, gi, group, hyper, Positions(positions), named,
                lambda view: numpy_state[id(view)], lambda view: (),
            )  # fmt: skip
            specs.append(self._own_counters(spec, by_view, state_map))
        written = _validation.written_intervals(named)
        self._engine.set_plans(
            [part[0] for part in parts],
            [self._engine.new_plan(spec._replace(written=written)) for spec in specs],
        )
        self._installs = []
        for spec in specs:
            dicts = {id(v): st for v, st in zip(spec.params, spec.state_dicts)}
            self._installs += [(by_view[id(v)], dicts[id(v)], e) for v, _, e in spec.installs]
        self._watched = tuple(state_map.values())
        self._mask = mask

    def _numpy_state(self, i, state_map):
        """Param ``i``'s state as the engine reads it: NumPy views of its known tensors
        (a counter that is not an int64/float64 0-d tensor as its number)."""
        st = dict.get(state_map, self._params[i])
        if st is None or not st:
            return st
        if not isinstance(st, dict):
            raise TypeError(f"opt.state of params[{i}] must be a dict, got {type(st).__name__}")
        entries = {}
        for key, value in st.items():
            if key not in self._known_state:
                continue  # a user's or a library's entry: kept, not the step's
            if key in self._counters:
                array, new = _bridge.counter(
                    value, np.int64 if key == "step" else np.float64,
                    f"opt.state of params[{i}]", key,
                )  # fmt: skip
                entries[key] = array.item() if new else array
            elif isinstance(value, torch.Tensor):
                _bridge.check_tensor(value, f"opt.state of params[{i}]['{key}']", "state tensor")
                entries[key] = _bridge.numpy_view(value)
            else:
                entries[key] = value
        return entries

    def _own_counters(self, spec, by_view, state_map):
        """The spec with torch's dicts as the state the plan watches, and each new param's
        own counters (the engine gives a group's new params one: torch keeps one per param,
        since a param without a grad skips steps)."""
        fresh = {}
        for view, _, entries in spec.installs:
            for name in self._counters:
                if name in entries:
                    entries[name] = entries[name].copy()
            fresh[id(view)] = entries
        steps, mus, dicts = [], [], []
        for k, view in enumerate(spec.params):
            entries = fresh.get(id(view), {})
            steps.append(entries.get("step", spec.step_arrays[k]))
            if spec.mu_arrays is not None:
                mus.append(
                    tuple(entries.get(n, a) for n, a in zip(self._counters[1:], spec.mu_arrays[k]))
                )
            st = dict.get(state_map, by_view[id(view)])
            dicts.append(st if st is not None else {})
        return spec._replace(
            step_arrays=tuple(steps),
            mu_arrays=tuple(mus) if spec.mu_arrays is not None else None,
            state_dicts=tuple(dicts),
        )

    def _install(self):
        """Attach the state a committed step created to ``opt.state`` (tensor views of the
        arrays the engine wrote), in the dicts the plans watch."""
        state_map = self.__dict__["state"]
        for p, st, entries in self._installs:
            if dict.get(state_map, p) is not st:
                dict.__setitem__(state_map, p, st)
            for name, array in entries.items():
                st[name] = self._state_tensor(p, name, array)
        self._installs = []
        self._watched = tuple(state_map.values())

    def _state_tensor(self, p, name, array):
        """``opt.state`` tensor over a state array (same memory): a DTensor like ``p`` for
        a DTensor param's tensors shaped like its shard."""
        return _dtensor.state_tensor(p, name, _bridge.tensor_view(array), self._counters)

    @staticmethod
    def _volatile(group):
        lr, betas = group.get("lr"), group.get("betas")
        return isinstance(lr, torch.Tensor) or (
            isinstance(betas, (tuple, list)) and any(isinstance(b, torch.Tensor) for b in betas)
        )

    def _push_hyper(self, part, values):
        """Copy a torch group's hyperparameters into its engine group (the engine then
        validates them again: Outcome.HYPER)."""
        part[0].update(zip(self._keys, self._plain(values)))
        if self._aside and part[0]["num_threads"] is None:
            part[0]["num_threads"] = 1  # (see _bridge.STEP_ASIDE)
        part[2] = values

    def _refresh_hyper(self):
        """Validate the parts whose hyperparameters changed; plan again if their state
        layout changed with them."""
        for k in self._engine.stale_groups():
            group, _, _, _, gi, _ = self._parts[k]
            spec = hyper_spec(self.algorithm, group, self._numpy_defaults, f"param_groups[{gi}]: ")
            plan = self._engine.plans[k]
            if (spec.state_names, spec.state_dtype, spec.master) != (
                plan.state_names, plan.state_dtype, plan.master,
            ):  # fmt: skip
                self._plan(self._mask)
                return
            self._engine.set_hyper(k, spec)

    def _clip_whole_groups(self, grads, grad_scale):
        """A torch group stepped in several parts (params at different steps) is clipped
        by its whole norm, as clip_grad_norm_ clips: the parts' own clipping off, the
        coefficient folded into each part's ``grad_scale``."""
        scale = 1.0 if grad_scale is None else float(grad_scale)
        starts = [0]
        for part in self._parts:
            starts.append(starts[-1] + len(part[5]))
        for gi, ks in self._split_clip:
            total = math.fsum(
                float(np.dot(a.reshape(-1), a.reshape(-1).astype(np.float64)))
                for k in ks
                for a in grads[starts[k] : starts[k + 1]]
            )
            norm = math.sqrt(total) / scale
            self._norms[gi] = norm
            coef = float(self.param_groups[gi]["max_grad_norm"]) / (norm + 1e-6)
            for k in ks:
                # A non-finite norm leaves the grads as they are: the non-finite policy
                # then sees them.
                self._parts[k][0]["grad_scale"] = (
                    scale / coef if math.isfinite(norm) and coef < 1.0 else scale
                )
                self._parts[k][0]["max_grad_norm"] = None
        for k, part in enumerate(self._parts):
            if not any(k in ks for _, ks in self._split_clip):
                part[0]["grad_scale"] = scale
        return None

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
