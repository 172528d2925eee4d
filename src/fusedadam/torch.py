"""``fusedadam.torch``: fusedadam's optimizers as ``torch.optim.Optimizer`` subclasses.

Every optimizer of :mod:`fusedadam` (``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``,
``AdaBelief``, ``Lion``, ``AdEMAMix``, ``Adan``, ``ADOPT``, ``AdamAtan2``,
``AdamWScheduleFree``, ``RAdamScheduleFree``, ...) takes CPU
tensors and behaves like its ``torch.optim`` namesake (or the torch optimizer of the package
its algorithm follows, where torch.optim has none): ``step(closure=None)`` reads
``p.grad``, ``zero_grad()``, param groups, ``add_param_group``, step and state-dict hooks,
``torch.optim.lr_scheduler`` and ``torch.amp.GradScaler`` work unchanged, and state dicts
interchange with ``torch.optim``'s.

Each is a thin adapter over the NumPy-facing optimizer of the same name
(:mod:`fusedadam.optim`), which owns every rule of the step: validation, lazy state, the
non-finite policy and the compiled, GIL-free pass over all tensors of a group. The adapter
hands it NumPy views of the tensors (``Tensor.numpy()`` shares memory: nothing is copied),
cached per parameter, so a step allocates nothing and re-plans nothing while the tensors
stay in place. The state tensors in ``opt.state[p]`` are views of the same memory the
kernel updates.

Importing this module imports torch (``pip install torch``; 2.13 is the tested version);
``import fusedadam`` alone never does.
"""

import inspect
import math
import numbers
import operator
import os
import re
from collections import OrderedDict, defaultdict
from copy import deepcopy
import itertools
from itertools import chain
from typing import Any, Dict, List, Tuple

import ml_dtypes
import numpy as np
import torch

from fusedadam import _precision
from fusedadam import optim as _optim
from fusedadam import _dtensor
from fusedadam import _schedule_free
from fusedadam import _validation
from fusedadam import reference

__all__ = [
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "AdaBelief",
    "Lion",
    "ADOPT",
    "AdamAtan2",
    "AdEMAMix",
    "Adan",
    "AdamWScheduleFree",
    "RAdamScheduleFree",
    "Lamb",
    "StableAdamW",
    "Offload",
    "Optimizer",
]

# torch.optim's group keys that select one of its implementations. Accepted (so that its
# state dicts load) and kept, but there is one implementation here: foreach and fused are
# ignored; capturable and differentiable (CUDA graphs, autograd through the step) are not
# supported and must stay False.
_TORCH_ONLY = {"foreach": None, "capturable": False, "differentiable": False, "fused": None}

# The param dtypes the step takes (fusedadam._precision owns which go together).
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# Integer state tensors: the uint8 codes of 8-bit moments, a master="residual" param's
# int16 master_residual.
_STATE_INTS = (torch.uint8, torch.int16)
# The state entries that hold a bfloat16/float16 param's master, one per master mode.
_MASTERS = (_precision.MASTER, _precision.MASTER_RESIDUAL)

# step is exact as a float32 0-d tensor (torch's layout) up to 2**24.
_FLOAT32_EXACT = 2**24

_OFFLOAD_HINT = (
    "fusedadam.torch steps CPU tensors: keep the master params (and the optimizer) on the "
    "CPU, e.g. with fusedadam.torch.Offload(model.parameters(), Adam), which writes the "
    "updated low-precision copy into a CPU buffer for one non-blocking copy to the device"
)


def _numpy(t):
    """The NumPy view of a CPU tensor (same memory; bfloat16 as ``ml_dtypes.bfloat16``);
    of a DTensor's local shard."""
    t = _dtensor.local(t)
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(_BFLOAT16)
    return t.detach().numpy()


def _tensor(a):
    """The tensor view of a NumPy array (same memory)."""
    if a.dtype == _BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _check_tensor(t, name, kind="parameter", meta=False):
    """A tensor the step may read or write by pointer: dense, strided, CPU, contiguous, real
    floating point of a supported dtype. Raises with what is wrong and what to do.

    A param (``kind="parameter"``) may be non-contiguous: the step updates a contiguous copy
    and writes it back. ``meta=True`` accepts the meta device (the construction of an
    optimizer over a model initialised on it; the step refuses it)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    t = _dtensor.local(t)  # a DTensor is stepped through its local shard
    if t.is_sparse or t.layout is not torch.strided:
        raise TypeError(
            f"{name} is a sparse tensor ({t.layout}); fusedadam.torch steps dense tensors "
            "(for sparse embedding gradients use torch.optim.SparseAdam or fusedadam.SparseAdam)"
        )
    if t.device.type == "meta":
        if meta:
            return
        raise ValueError(
            f"{name} is on the meta device: it has no data to update. Materialise it before "
            "the first step (module.to_empty(device='cpu') keeps the param objects only with "
            "torch.__future__.set_swap_module_params_on_conversion(True); otherwise build "
            "the optimizer after to_empty)"
        )
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; {_OFFLOAD_HINT}")
    if t.dtype not in _FLOATS and not (kind == "state tensor" and t.dtype in _STATE_INTS):
        # (uint8: the codes of state_dtype="8bit" moments; int16: master_residual)
        raise TypeError(
            f"{name} has dtype {t.dtype}; fusedadam.torch supports "
            f"{', '.join(str(d) for d in _FLOATS)}"
        )
    if kind != "parameter" and not t.is_contiguous():
        raise ValueError(
            f"{name} is not contiguous (strides {t.stride()} for shape {tuple(t.shape)}); "
            f"the step updates {kind}s in place by pointer: pass a contiguous tensor"
        )
    if t.is_conj() or t.is_neg():
        raise ValueError(f"{name} has a lazy conjugate/negative bit; resolve it first")


class _Flag:
    """Set when ``opt.state`` changed in a way the kernel's views must follow."""

    __slots__ = ("dirty",)

    def __init__(self):
        self.dirty = True


class _WatchedState(dict):
    """A param's state dict (``opt.state[p]``): a plain dict that flags replaced entries.

    In-place edits of its tensors need no flag (they are the kernel's memory). Copies and
    pickles are plain dicts.
    """

    __slots__ = ("_flag",)

    def __init__(self, flag, *args):
        super().__init__(*args)
        self._flag = flag

    def __reduce__(self):
        return (dict, (dict(self),))

    def _touch(self):
        self._flag.dirty = True

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._touch()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._touch()

    def pop(self, *args):
        self._touch()
        return super().pop(*args)

    def popitem(self):
        self._touch()
        return super().popitem()

    def clear(self):
        super().clear()
        self._touch()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._touch()

    def setdefault(self, key, default=None):
        self._touch()
        return super().setdefault(key, default)


class _StateMap(defaultdict):
    """``opt.state``: torch's ``defaultdict(dict)`` whose changes flag a re-sync."""

    def __init__(self, flag):
        super().__init__()
        self._flag = flag

    def __missing__(self, key):
        value = _WatchedState(self._flag)
        dict.__setitem__(self, key, value)  # an empty dict is "no state": nothing to sync
        return value

    def __reduce__(self):
        return (dict, (dict(self),))

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._flag.dirty = True

    def __delitem__(self, key):
        super().__delitem__(key)
        self._flag.dirty = True

    def pop(self, *args):
        self._flag.dirty = True
        return super().pop(*args)

    def clear(self):
        super().clear()
        self._flag.dirty = True

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._flag.dirty = True


def _inner_class(cls):
    """A subclass of fusedadam's ``cls`` that reports the state a committed step created
    (``_install``, called when the engine reports new state) to its torch front end."""

    def _install(self, installs):
        cls._install(self, installs)
        frontend = self._frontend
        if frontend is not None:
            frontend._adopt(installs)

    return type(f"_Torch{cls.__name__}", (cls,), {"_install": _install, "_frontend": None})


def _lr_value(lr, where):
    """A group's lr as the float the kernel takes (torch allows a 1-element tensor)."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{where}Tensor lr must be 1-element")
        return float(lr.item())
    if callable(lr):
        raise TypeError(
            f"{where}lr must be a number or a 1-element tensor; for a schedule use "
            "torch.optim.lr_scheduler (it edits group['lr'])"
        )
    return lr


def _betas(group):
    """A group's betas as the floats the kernel takes (torch allows 1-element tensors)."""
    betas = group["betas"]
    if isinstance(betas, (tuple, list)) and any(isinstance(b, torch.Tensor) for b in betas):
        return tuple(
            float(b.item()) if isinstance(b, torch.Tensor) and b.numel() == 1 else b for b in betas
        )
    return betas


def _counter(value, dtype, where, name):
    """A state counter as the writeable 0-d array the kernel updates: the tensor's own
    memory when it already is one (int64 step, float64 mu_product), else a new array."""
    if (
        isinstance(value, torch.Tensor)
        and value.dtype == (torch.int64 if dtype == np.int64 else torch.float64)
        and value.dim() == 0
        and value.device.type == "cpu"
    ):
        return _numpy(value), False
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{where}: {name} must be a number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if dtype == np.int64:
        # torch keeps step as a float tensor: a whole float is a step count too.
        if isinstance(value, numbers.Integral):
            number = int(value)
        else:
            real = float(value)
            if not (math.isfinite(real) and real.is_integer()):
                raise ValueError(f"{where}: {name} must be a whole number >= 0, got {value!r}")
            number = int(real)
        if number < 0:
            raise ValueError(f"{where}: {name} must be a whole number >= 0, got {value!r}")
        return np.array(number, dtype=np.int64), True
    real = float(value)
    if not math.isfinite(real):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    return np.array(real, dtype=np.float64), True


def _optim_defaults(cls):
    """The hyperparameter keys of a fusedadam.optim class, from its signature."""
    return tuple(
        n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")
    )


_profiler = torch.autograd.profiler
_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_NUMPY = torch.Tensor.numpy
_NONE = itertools.repeat(None)
_BUMP = torch._C._increment_version  # torch.autograd.graph.increment_version, one call

# Inside a torch training loop torch's intra-op OpenMP workers spin after every parallel
# region (libgomp's default wait policy; it read the environment when torch loaded it), so
# they hold cores while the step runs. A helper of the step's pool then shares a core with
# a spinning worker, and the caller waits for a chunk it claimed: on a busy 2-core machine
# a 57k-param step took 10.3 ms with the default threads against 0.2 ms with one, and
# 18.7 against 10.2 ms at 3.2M params (bench/torch_step.py --training-loop; load average
# 40-70). With num_threads=None the step then runs on the calling thread below
# _STEP_ASIDE elements; a group's explicit num_threads is always used as given.
_TORCH_WORKERS_SPIN = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() != "passive" and (
    os.environ.get("GOMP_SPINCOUNT", "").strip() not in ("0",)
)
_STEP_ASIDE = 1 << 22
_TORCH_THREADS = torch.get_num_threads
import torch.optim.optimizer as _optimizer_module  # noqa: E402

# torch's global step hooks: dicts it adds to and removes from, never rebinds.
_GLOBAL_PRE_HOOKS = _optimizer_module._global_optimizer_pre_hooks
_GLOBAL_POST_HOOKS = _optimizer_module._global_optimizer_post_hooks


class Optimizer(torch.optim.Optimizer):
    """Base of the torch front ends: torch's groups, state and hooks; fusedadam's step.

    A subclass sets ``_inner_cls`` (a :mod:`fusedadam.optim` class) and calls
    ``_setup(params, locals())`` from its ``__init__``. The inner optimizer's groups are
    the torch groups (or, while params of a group skip steps because their ``grad`` is
    None, the group's params that have one, split by step count: fusedadam steps a group
    together).
    """

    _inner_cls: Any = None
    #: torch.amp.GradScaler hands ``grad_scale``/``found_inf`` to ``step`` (attributes):
    #: the step skips when found_inf is set and otherwise unscales inside the same pass.
    _step_supports_amp_scaling = True

    # ------------------------------------------------------------------ construction
    def _setup(self, params, arguments):
        defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}
        defaults.update(self._FIXED)
        defaults.setdefault("master", "float32")
        self._init_private()
        self._check_torch_flags(defaults)
        self._check_torch_only(defaults, "")
        _validation.check_hyperparameters(
            {**defaults, "lr": _lr_value(defaults["lr"], ""), "betas": _betas(defaults)},
            self._inner_keys,
            "",
            self._n_betas,
        )
        super().__init__(params, defaults)
        if defaults.get("fused"):
            # torch.optim.Adam's checks of its own implementation flags, in its order.
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._ready = True
        self._rebuild()

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
        self._inner_keys = tuple(
            k for k in _optim_defaults(self._inner_cls) if k != "lr" and k in self._torch_keys()
        )
        self._inner_sub = _inner_class(self._inner_cls)
        self._n_betas = self._inner_cls.algorithm.n_betas
        self._getter = operator.itemgetter(*self._inner_keys, "lr")
        # The NumPy optimizer's options a torch group has no entry for, at their defaults.
        self._inner_only = {
            name: par.default
            for name, par in inspect.signature(self._inner_cls.__init__).parameters.items()
            if name not in ("self", "params", "lr") and name not in self._inner_keys
        }
        algorithm = self._inner_cls.algorithm
        self._known_state = frozenset(
            ("step", *_MASTERS, *algorithm.all_state_names())
            + tuple(_precision.scale_name(name) for name in algorithm.all_state_names())
            + tuple(name for name, _ in algorithm.scalar_state)
        )
        self._flag = _Flag()
        self._views: Dict[int, Tuple[torch.Tensor, np.ndarray, int]] = {}
        self._fa: Any = None
        self._skipped = 0
        self._torch_parallel = _TORCH_WORKERS_SPIN and _TORCH_THREADS() > 1
        self._aside = False
        self._dtypes: Dict[int, torch.dtype] = {}
        self._shadows: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        self._seen: Any = None
        self._layout: Any = None
        self._state_map: Any = None
        self._dtensor: Any = None  # a _dtensor.Plan when some params are DTensors

    @classmethod
    def _torch_keys(cls):
        keys = tuple(
            n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")
        ) + tuple(cls._FIXED)
        # Every group has a master mode (a param group may set it when the constructor
        # has no argument for it).
        return keys if "master" in keys else keys + ("master",)

    #: Group entries a class fixes (AdamW: decoupled_weight_decay=True).
    _FIXED: Dict[str, Any] = {}

    @staticmethod
    def _check_torch_only(group, where):
        for key in ("capturable", "differentiable"):
            if group.get(key, False):
                raise ValueError(
                    f"{where}{key}=True is not supported by fusedadam.torch (CPU tensors, "
                    "no autograd through the step); leave it False"
                )

    def _check_group(self, group, where):
        self._check_torch_only(group, where)
        _dtensor.check_group({**getattr(self, "defaults", {}), **group}, where)
        checked = {k: group[k] for k in self._inner_keys if k in group}
        if "betas" in checked:
            checked["betas"] = _betas(checked)
        keys = tuple(checked)
        if "lr" in group:
            checked["lr"] = _lr_value(group["lr"], where)
            keys += ("lr",)
        _validation.check_hyperparameters(checked, keys, where, self._n_betas)

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
                if not isinstance(p, torch.Tensor):
                    continue  # torch's message
                # A param without requires_grad is kept and skipped while its grad is None
                # (torch's rule: frozen layers of a model passed whole).
                _check_tensor(p, f"params[{first + k}]", meta=True)
        self._check_group(param_group, f"param_groups[{len(self.param_groups)}]: ")
        super().add_param_group(param_group)
        if getattr(self, "_ready", False):
            self._rebuild()

    @staticmethod
    def _members(group):
        """A group's params, each once (torch warns about a duplicate and keeps it; the step
        updates it once)."""
        params = group["params"]
        if len(set(map(id, params))) == len(params):
            return params
        seen: set = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    def _rebuild(self, at_step=False):
        """A fresh inner optimizer over views of every param (state re-synced next step).

        A non-contiguous param's view is a contiguous copy (its "shadow"), refreshed from the
        param before each step and written back after it. While a param is on the meta
        device there is no inner optimizer: the step (``at_step``) refuses it.
        """
        views = {}
        flat = 0
        deferred = False
        for group in self.param_groups:
            for p in self._members(group):
                _check_tensor(p, f"params[{flat}]", meta=not at_step)
                flat += 1
                if p.device.type == "meta":
                    deferred = True
                    continue
                layout = (p.data_ptr(), p.dtype, p.shape, p.stride())
                old = self._views.get(id(p))
                if old is not None and old[0] is p and old[3] == layout:
                    views[id(p)] = old
                elif p.is_contiguous():
                    views[id(p)] = (p, _numpy(p), layout[0], layout, None)
                else:
                    shadow = p.detach().contiguous()
                    views[id(p)] = (p, _numpy(shadow), layout[0], layout, shadow)
        if deferred:
            self._views = {}
            self._by_view = {}
            self._layout = None
            self._seen = None
            self._flag.dirty = True
            if not isinstance(self.__dict__.get("state"), _StateMap):
                self._wrap_state()
            return
        self._views = views
        inner = self._inner_sub(
            [
                self._inner_group(g, [views[id(p)][1] for p in self._members(g)])
                for g in self.param_groups
            ]
        )
        inner._frontend = self
        if self._fa is not None:
            inner.skipped_steps = self._fa.skipped_steps
            self._fa._frontend = None
        elif self._skipped:
            inner.skipped_steps = self._skipped
        self._fa = inner
        self._by_view = {id(v[1]): v[0] for v in views.values()}
        self._layout = None
        self._seen = None
        if not isinstance(self.__dict__.get("state"), _StateMap):
            self._wrap_state()
        self._flag.dirty = True

    def _inner_group(self, group, views):
        g = dict(self._inner_only)
        g.update({k: group[k] for k in self._inner_keys})
        if "betas" in g:
            g["betas"] = _betas(g)
        g["lr"] = _lr_value(group["lr"], "")
        g["params"] = views
        return g

    def _wrap_state(self):
        """Make ``self.state`` a watched map (after torch's __init__ or a pickle load)."""
        old = self.__dict__.get("state") or {}
        new = _StateMap(self._flag)
        for p, st in old.items():
            # A key that is not a param (a user's or a library's entry) is kept as it is.
            if isinstance(p, torch.Tensor) and isinstance(st, dict):
                st = _WatchedState(self._flag, st)
            dict.__setitem__(new, p, st)
        self.__dict__["state"] = new
        self._flag.dirty = True

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
        name = f"Optimizer.step#{type(self).__name__}.step"
        with _profiler.record_function(name):
            for pre_hook in chain(
                _optimizer_module._global_optimizer_pre_hooks.values(),
                self._optimizer_step_pre_hooks.values(),
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
                self._optimizer_step_post_hooks.values(),
                _optimizer_module._global_optimizer_post_hooks.values(),
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
        if self._dtensor is not None and self._dtensor.moved():
            self._views = {}  # a DTensor's local shard was replaced: new views
            self._flag.dirty = True
        if self._flag.dirty or not self._fits():
            self._sync()
        missing = self._collect()
        if missing is None:  # a param's data was replaced (p.data = ...): new views
            self._sync()
            missing = self._collect()
        grads = self._grads
        if _TORCH_WORKERS_SPIN and (_TORCH_THREADS() > 1) != self._torch_parallel:
            self._torch_parallel = not self._torch_parallel
            self._layout = None  # the default thread count follows torch's
        try:
            if self._layout is None or missing or not self._full:
                mask = tuple(g is not None for g in grads) if missing else None
                if mask is not None and not any(mask):
                    return loss  # no param has a grad: nothing to do, as in torch
                if self._layout is None or mask != self._mask:
                    self._relayout(mask)
                inner_grads = grads if self._full else [grads[j] for j in self._order]
            else:
                inner_grads = grads
            getter = self._getter
            for pair in self._pairs:
                values = getter(pair[1])
                # A tensor lr or betas may change in place: read them every step.
                if pair[3] or values != pair[2]:
                    self._push_hyper(pair, values)
            if self._dtensor is not None:  # global norms and non-finite checks
                grad_scale = self._dtensor.before_step(self, grad_scale)
                if grad_scale is _dtensor.SKIP:
                    return loss
            shadows = self._shadows
            for i, p, shadow in shadows:
                if grads[i] is not None:
                    shadow.copy_(p.detach())  # the param may have been edited in place
            skipped = self._fa.skipped_steps
            try:
                if self._dtensor is None and not self._full and self._split_clip:
                    self._clip_split_groups(inner_grads, grad_scale)
                elif grad_scale is not None:
                    self._fa.step(inner_grads, _scale_value(grad_scale))
                else:
                    self._fa.step(inner_grads)
            except (TypeError, ValueError, FloatingPointError) as error:
                if self._full:
                    raise
                raise self._renumbered(error) from None
            if self._fa.skipped_steps == skipped:
                self._written(grads, missing)
        finally:
            grads[:] = self._nones  # no reference to the grads outlives the step
        return loss

    def _written(self, grads, missing):
        """After a committed step: write the non-contiguous params back from their copies and
        bump the version counter of every param written, as an in-place update does (a
        backward that saved one of them then raises instead of using the new values)."""
        for i, p, shadow in self._shadows:
            if grads[i] is not None:
                p.detach().copy_(shadow)
        if missing:
            _BUMP([p for p, g in zip(self._params, grads) if g is not None])
        else:
            _BUMP(self._params)

    def _clip_split_groups(self, inner_grads, grad_scale):
        """Step with every torch group in ``_split_clip`` clipped by its whole norm (the
        parts' own clipping off, the factor folded into each part's ``grad_scale``)."""
        scale = 1.0 if grad_scale is None else float(_scale_value(grad_scale))
        groups = self._fa.param_groups
        starts = list(itertools.accumulate([0] + [len(g["params"]) for g in groups]))
        split = {}
        self._split_norms = {}
        for gi, ks in self._split_clip:
            total = math.fsum(
                float(np.dot(a.reshape(-1), a.reshape(-1).astype(np.float64)))
                for k in ks
                for a in inner_grads[starts[k] : starts[k + 1]]
            )
            norm = math.sqrt(total) / scale
            self._split_norms[gi] = norm
            coef = float(self.param_groups[gi]["max_grad_norm"]) / (norm + 1e-6)
            for k in ks:
                # A non-finite norm leaves the grads as they are: the non-finite policy
                # then sees them.
                split[k] = scale / coef if math.isfinite(norm) and coef < 1.0 else scale
        saved = [(g.get("grad_scale", 1.0), g.get("max_grad_norm")) for g in groups]
        try:
            for k, g in enumerate(groups):
                g["grad_scale"] = split.get(k, scale)
                if k in split:
                    g["max_grad_norm"] = None
            self._fa.step(inner_grads)
        finally:
            for g, (gs, mg) in zip(groups, saved):
                g["grad_scale"] = gs
                g["max_grad_norm"] = mg

    def _renumbered(self, error):
        """The NumPy optimizer's error with its param/grad indices (positions among the
        params stepped now) turned into positions over all params, as the user counts."""
        order = self._order

        def index(match):
            k = int(match.group(2))
            return f"{match.group(1)}[{order[k] if k < len(order) else k}]"

        return type(error)(re.sub(r"\b(params|grads)\[(\d+)\]", index, str(error)))

    def _push_hyper(self, pair, values):
        """Copy a torch group's hyperparameters into its inner group (the NumPy optimizer
        re-validates them at the step, as it does any edited group)."""
        inner = pair[0]
        volatile = type(values[-1]) is torch.Tensor
        for key, value in zip(self._inner_keys, values):
            if key == "betas":
                plain = _betas({"betas": value})
                volatile = volatile or plain is not value
                value = plain
            inner[key] = value
        lr = values[-1]
        inner["lr"] = lr if type(lr) is float else _lr_value(lr, "")
        if self._aside and inner.get("num_threads") is None:
            inner["num_threads"] = 1  # (see _STEP_ASIDE)
        pair[2] = values
        pair[3] = volatile

    def _collect(self):
        """Fill ``self._grads`` with NumPy views of the grads (None where there is none);
        return whether one was missing, or None when a param's memory moved."""
        params = self._params
        if len(params) <= 4:
            return self._collect_few()
        # C-level maps: Tensor.numpy() (~1 us) is then most of the per-tensor cost.
        if list(map(_DATA_PTR, params)) != self._ptrs:
            return None
        found = list(map(_GRAD, params))
        if (
            self._any_low
            or any(map(operator.is_, found, _NONE))
            or not all(map(_IS_CONTIGUOUS, found))
        ):
            return self._collect_each(found)
        try:
            self._grads[:] = map(_NUMPY, found)
        except Exception:
            return self._collect_each(found)  # names the bad gradient
        return False

    def _collect_few(self):
        # A few tensors: one plain loop costs less than the maps' lists.
        grads = self._grads
        missing = False
        entries = self._entries
        # Every pointer first: the low-precision branch below returns early.
        for p, ptr, _ in entries:
            if p.data_ptr() != ptr:
                return None
        for i, (p, _, low) in enumerate(entries):
            g = p.grad
            if g is None:
                missing = True
                grads[i] = None
            elif low or not g.is_contiguous():
                return self._collect_each(list(map(_GRAD, self._params)))
            else:
                try:
                    grads[i] = g.numpy()
                except Exception:
                    return self._collect_each(list(map(_GRAD, self._params)))
        return missing

    def _collect_each(self, found):
        grads = self._grads
        missing = False
        for i, (g, (_, _, low)) in enumerate(zip(found, self._entries)):
            if g is None:
                missing = True
                grads[i] = None
                continue
            try:
                if not g.is_contiguous() and g.layout is torch.strided and not g.requires_grad:
                    g = g.contiguous()  # torch steps any strided grad: the step reads a copy
                # A bfloat16/float16 param may have a float32, bfloat16 or float16 grad;
                # a DTensor's is read through its local shard.
                grads[i] = (
                    _numpy(g)
                    if low and (g.dtype == torch.bfloat16 or self._dtensor is not None)
                    else g.numpy()
                )
            except Exception as error:
                grads[:] = self._nones
                raise self._grad_error(i, g, error) from None
        return missing

    def _grad_error(self, i, g, error):
        try:
            _check_tensor(g, f"params[{i}].grad", "gradient")
        except (TypeError, ValueError) as clear:
            return type(clear)(str(clear))
        if g.requires_grad:
            return RuntimeError(
                f"params[{i}].grad requires grad (a create_graph=True backward?); "
                "fusedadam.torch does not differentiate through the step"
            )
        return type(error)(f"params[{i}].grad: {error}")

    def _fits(self):
        """The torch groups are still the ones the views and layout were built from."""
        seen = self._seen
        groups = self.param_groups
        if seen is None or groups is not seen[0] or len(groups) != len(seen[1]):
            return False
        if self.__dict__.get("state") is not self._state_map:
            return False
        for g, (group, params, n) in zip(groups, seen[1]):
            if g is not group:
                return False
            ps = g.get("params")
            if ps is not params or len(ps) != n:
                return False
        return True

    def _sync(self):
        """Follow the torch side: new groups or params (new views), replaced state."""
        groups = self.param_groups
        if not isinstance(self.__dict__.get("state"), _StateMap):
            self._wrap_state()
        members = [self._members(g) for g in groups]
        ids = [id(p) for ps in members for p in ps]
        for gi, g in enumerate(groups):
            self._check_group(g, f"param_groups[{gi}]: ")
        if len(set(ids)) != len(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        if (
            self._fa is None
            or ids != list(self._views)
            or any(v[0].data_ptr() != v[2] for v in self._views.values())
        ):
            self._rebuild(at_step=True)  # the inner state is re-derived from opt.state below
        state_map = self._state_map = self.__dict__["state"]
        inner = self._fa
        flat = 0
        live = set()
        counters = {"step": np.int64}
        counters.update({n: np.float64 for n, _ in self._inner_cls.algorithm.scalar_state})
        seen_counters: set = set()
        for ps in members:
            for p in ps:
                view = self._views[id(p)][1]
                st = dict.get(state_map, p)
                where = f"opt.state of params[{flat}]"
                flat += 1
                if not st:
                    if view in inner.state:
                        del inner.state[view]
                    continue
                if not isinstance(st, _WatchedState):
                    st = _WatchedState(self._flag, st)
                    dict.__setitem__(state_map, p, st)
                entries = {}
                for key, value in list(st.items()):
                    if key not in self._known_state:
                        continue  # a user's or a library's entry: kept, not the step's
                    if key in counters:
                        array, new = _counter(value, counters[key], where, key)
                        address = (key, array.__array_interface__["data"][0])
                        if address in seen_counters:
                            # A counter shared with another param (the NumPy optimizer gives
                            # a group's new params one): each param gets its own, as in
                            # torch, since params without a grad skip steps.
                            array, new = array.copy(), True
                        seen_counters.add(address)
                        if new:
                            dict.__setitem__(st, key, _tensor(array))
                        entries[key] = array
                    elif isinstance(value, torch.Tensor):
                        _check_tensor(value, f"{where}['{key}']", "state tensor")
                        entries[key] = _numpy(value)
                    else:
                        entries[key] = value
                live.add(id(view))
                inner.state[view] = entries
        for view in list(inner.state):
            if id(view) not in live:
                del inner.state[view]
        dtensors = any(_dtensor.is_dtensor(p) for g in groups for p in g["params"])
        self._dtensor = _dtensor.Plan(self) if dtensors else None
        self._entries = [
            (p, self._views[id(p)][2], p.dtype in _LOW_PRECISION or dtensors)
            for ps in members
            for p in ps
        ]
        self._shadows = [
            (i, e[0], self._views[id(e[0])][4])
            for i, e in enumerate(self._entries)
            if self._views[id(e[0])][4] is not None
        ]
        self._grads: List[Any] = [None] * len(self._entries)
        self._nones = [None] * len(self._entries)
        self._params = [e[0] for e in self._entries]
        self._ptrs = [e[1] for e in self._entries]
        # bfloat16/float16 params and non-contiguous ones take the per-grad path.
        self._any_low = any(e[2] for e in self._entries) or bool(self._shadows)
        self._seen = (groups, [(g, g["params"], len(g["params"])) for g in groups])
        self._layout = None
        self._flag.dirty = False
        if self._state_fits_dtypes(members):
            return
        # A param changed dtype under the optimizer (model.float() on a bfloat16 model,
        # model.bfloat16(), model.double()): its state is converted as load_state_dict(...,
        # convert=True) converts a saved one, all of it before the step, or nothing.
        self._load(self._state_dict(), convert=True)
        self._sync()

    def _state_fits_dtypes(self, members):
        """Whether every param's state is laid out for the param's dtype: a master
        (``master_param``, or ``master_residual`` under ``master="residual"``) exactly for
        bfloat16/float16 params, and (without ``state_dtype``,
        for a param whose dtype changed since the last step) moments in the dtype of a
        float32/float64 param. A state tensor of another dtype set by hand stays an error."""
        state_map = self.__dict__["state"]
        slots = self._inner_cls.algorithm.all_state_names()
        before, self._dtypes = self._dtypes, {id(p): p.dtype for ps in members for p in ps}
        for g, ps in zip(self.param_groups, members):
            for p in ps:
                st = dict.get(state_map, p)
                if not st:
                    continue
                low = p.dtype in _LOW_PRECISION
                if low != any(name in st for name in _MASTERS):
                    return False
                changed = before.get(id(p), p.dtype) != p.dtype
                if changed and not low and g.get("state_dtype") is None:
                    for name in slots:
                        value = st.get(name)
                        if isinstance(value, torch.Tensor) and value.dtype != p.dtype:
                            return False
        return True

    def _relayout(self, mask):
        """Inner groups for this step's params: one per torch group when every param has a
        grad and its group is at one step; else, per torch group, the params with a grad
        split by step count."""
        parts = []  # (torch group, flat indices)
        owners = []  # each part's torch group index
        flat = 0
        full = True
        for gi, g in enumerate(self.param_groups):
            buckets: Dict[int, List[int]] = {}
            for p in self._members(g):
                if mask is None or mask[flat]:
                    st = self._fa.state.get(self._views[id(p)][1])
                    step = int(st["step"]) if st and "step" in st else 0
                    buckets.setdefault(step, []).append(flat)
                else:
                    full = False
                flat += 1
            if len(buckets) > 1:
                full = False
            for step in sorted(buckets):
                parts.append((g, buckets[step]))
                owners.append(gi)
        entries = self._entries
        inner_groups = []
        for g, indices in parts:
            inner_groups.append(
                self._inner_group(g, [self._views[id(entries[j][0])][1] for j in indices])
            )
        self._aside = self._torch_parallel and (
            sum(entries[j][0].numel() for _, indices in parts for j in indices) < _STEP_ASIDE
        )
        if self._aside:
            for ig in inner_groups:
                if ig.get("num_threads") is None:
                    ig["num_threads"] = 1
        self._fa.param_groups = inner_groups
        # [inner group, torch group, values last pushed, whether a tensor lr/betas (which
        # may change in place) makes every step push]
        self._pairs = [[ig, g, None, False] for ig, (g, _) in zip(inner_groups, parts)]
        self._order = [j for _, indices in parts for j in indices]
        self._full = full and len(parts) == len(self.param_groups)
        self._mask = mask
        self._layout = parts
        self._owners = owners
        # Torch groups stepped in several parts (params at different step counts) whose
        # gradients are clipped: clipped here over the whole group, as clip_grad_norm_ does.
        self._split_clip = [
            (gi, [k for k, o in enumerate(owners) if o == gi])
            for gi in sorted(set(owners))
            if owners.count(gi) > 1 and self.param_groups[gi].get("max_grad_norm") is not None
        ]
        self._split_norms: Dict[int, float] = {}

    def _adopt(self, installs):
        """Mirror the state a committed inner step created into ``opt.state`` (tensor views
        of the same memory)."""
        state_map = self.__dict__["state"]
        for view, _, entries in installs:
            p = self._by_view[id(view)]
            st = dict.get(state_map, p)
            if st is None or not isinstance(st, _WatchedState):
                st = _WatchedState(self._flag, st or {})
                dict.__setitem__(state_map, p, st)
            for name, array in entries.items():
                dict.__setitem__(st, name, self._state_tensor(p, name, array))
            if "step" in entries:
                self._flag.dirty = True  # the next step gives each param its own counter

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> Dict[str, Any]:
        """torch.optim's layout: ``{"state": {i: {...}}, "param_groups": [...]}``.

        Per param the state tensors under torch's names (live, as in torch) and ``step`` as
        a float32 0-d tensor (float64 past 2**24, where float32 stops being exact).
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self._state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _state_dict(self):
        mappings: Dict[int, int] = {}
        groups = []
        start = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start):
                mappings.setdefault(id(p), i)
            packed["params"] = [mappings[id(p)] for p in group["params"]]
            start += len(group["params"])
            groups.append(packed)
        packed_state = {}
        for p, st in self.state.items():
            if not isinstance(p, torch.Tensor):
                packed_state[p] = st  # torch keeps a key that is not a param as it is
                continue
            if not st:
                continue
            entry = dict(st)
            if "step" in entry:
                step = float(entry["step"])
                entry["step"] = torch.tensor(
                    step, dtype=torch.float32 if step < _FLOAT32_EXACT else torch.float64
                )
            packed_state[mappings[id(p)] if isinstance(p, torch.Tensor) else p] = entry
        return {"state": packed_state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any], convert: bool = False) -> None:
        """Load a state dict of this class or of the torch.optim class of the same name.

        Checked whole (torch's group checks, then fusedadam's: keys, shapes, dtypes, steps)
        and copied; on an error nothing has changed. For float32/float64 params, floating
        state tensors are cast to the param's dtype, as torch does; ``step`` may be any
        whole number. For bfloat16/float16 params the state is kept in float32 with a
        float32 ``master_param``: a state saved otherwise (torch.optim's bfloat16 moments, no
        master) loads with ``convert=True`` (cast, master made from the param), as
        :meth:`fusedadam.Optimizer.load_state_dict`. A group's ``master`` is this
        optimizer's, not the saved one: ``convert=True`` moves a bfloat16 param's master
        between ``master_param`` and ``master_residual`` exactly both ways (converting to
        the residual rewrites the param as its master encodes, which changes it only where
        the master's low half is exactly 0x8000, and bumps its version counter).
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if self._flag.dirty or not self._fits():
            self._sync()
        self._load(state_dict, convert)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict, convert):
        for _, p, shadow in self._shadows:
            shadow.copy_(p.detach())  # a master_param made by convert=True reads it
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
            )
        )
        new_groups = []
        for gi, (g, saved) in enumerate(zip(groups, saved_groups)):
            new = dict(saved)
            new["params"] = g["params"]
            if "param_names" in g and "param_names" not in new:
                new["param_names"] = g["param_names"]
            for key, value in self.defaults.items():
                new.setdefault(key, value)
            new.update(self._FIXED)
            # How a group keeps its masters is this optimizer's choice, as in
            # fusedadam.Optimizer: a saved state of the other layout is converted
            # (convert=True) or refused.
            new["master"] = g.get("master", "float32")
            self._check_group(new, f"state_dict['param_groups'][{gi}]: ")
            new_groups.append(new)
        by_param = {}
        others = {}
        for key, entry in state_dict["state"].items():
            if key in id_map:
                if not isinstance(entry, dict):
                    raise TypeError(f"state_dict['state'][{key!r}] must be a dict")
                by_param[id(id_map[key])] = entry
            else:
                others[key] = deepcopy(entry)  # torch keeps keys that are not params
        # Inner groups for the saved state: per group, its params split by saved step.
        parts = []
        inner_state = {}
        index = 0
        for g in new_groups:
            buckets: Dict[Any, List[torch.Tensor]] = OrderedDict()
            for p in self._members(g):
                entry = by_param.get(id(p))
                where = f"state_dict['state'] of params[{index}]"
                if entry:
                    step = _counter(entry.get("step", 0), np.int64, where, "step")[0]
                    bucket = int(step)
                else:
                    bucket = None
                buckets.setdefault(bucket, []).append(p)
                index += 1
            for members in buckets.values():
                parts.append((g, members))
        inner_groups, inner_index = [], 0
        rewritten = []  # params whose saved float32 master becomes a residual (convert)
        for g, members in parts:
            ig = self._inner_group(g, [self._views[id(p)][1] for p in members])
            ids = []
            for p in members:
                entry = by_param.get(id(p))
                if entry:
                    known = {k: v for k, v in entry.items() if k in self._known_state}
                    inner_state[inner_index] = self._inner_entry(known, p, inner_index)
                    if (
                        convert
                        and g.get("master") == "residual"
                        and p.dtype == torch.bfloat16
                        and _precision.MASTER in known
                        and _precision.MASTER_RESIDUAL not in known
                    ):
                        rewritten.append(p)
                ids.append(inner_index)
                inner_index += 1
            inner_groups.append(
                (ig, {**{k: v for k, v in ig.items() if k != "params"}, "params": ids})
            )
        previous = self._fa.param_groups
        self._fa.param_groups = [ig for ig, _ in inner_groups]
        try:
            self._fa.load_state_dict(
                {"state": inner_state, "param_groups": [s for _, s in inner_groups]},
                convert=convert,
            )
        except BaseException:
            self._fa.param_groups = previous
            raise
        self._rewritten(rewritten)
        # Committed: torch's groups, and opt.state as views of the inner (copied) state.
        self.param_groups = new_groups
        state_map = _StateMap(self._flag)
        for key, entry in others.items():
            dict.__setitem__(state_map, key, entry)
        for ig, _ in inner_groups:
            for view in ig["params"]:
                ist = self._fa.state.get(view)
                if ist:
                    p = self._by_view[id(view)]
                    dict.__setitem__(
                        state_map,
                        p,
                        _WatchedState(
                            self._flag,
                            {
                                k: self._state_tensor(p, k, v) if isinstance(v, np.ndarray) else v
                                for k, v in ist.items()
                            },
                        ),
                    )
        for p in chain.from_iterable(self._members(g) for g in new_groups):
            # Entries fusedadam does not know (a library's own) are kept, as torch keeps them.
            extra = {k: v for k, v in by_param.get(id(p), {}).items() if k not in self._known_state}
            if extra:
                state_map[p].update(extra)
        self.__dict__["state"] = state_map
        self._flag.dirty = True  # re-derive layout and views from the loaded state

    def _rewritten(self, params):
        """After a load that converted saved float32 masters to residuals: the params it
        rewrote (as their masters encode) get their new values (a non-contiguous one from
        its copy) and a bumped version counter, as after a step."""
        if not params:
            return
        shadows = {id(p): shadow for _, p, shadow in self._shadows}
        plain = []
        for p in params:
            shadow = shadows.get(id(p))
            if shadow is not None:
                p.detach().copy_(shadow)  # bumps the version counter it shares with p
            else:
                plain.append(p)
        if plain:
            _BUMP(plain)

    def _state_tensor(self, p, name, array):
        """``opt.state`` tensor over a state array of the kernel (same memory): a DTensor
        like ``p`` for a DTensor param's tensors shaped like its shard."""
        counters = ("step",) + tuple(n for n, _ in self._inner_cls.algorithm.scalar_state)
        return _dtensor.state_tensor(p, name, _tensor(array), counters)

    def _inner_entry(self, entry, p, index):
        """A torch-layout state entry as the NumPy optimizer's state dict takes it."""
        out = {}
        dtype = p.dtype
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                value = _dtensor.localize(p, key, value.detach())
                if key in ("step",):
                    out[key] = _counter(value, np.int64, f"state of params[{index}]", key)[0]
                    continue
                if key in tuple(n for n, _ in self._inner_cls.algorithm.scalar_state):
                    out[key] = float(value.item())
                    continue
                if value.is_sparse or value.layout is not torch.strided:
                    raise TypeError(f"state_dict: {key} of params[{index}] is sparse")
                value = value.to(device="cpu")
                if dtype not in _LOW_PRECISION and value.is_floating_point():
                    value = value.to(dtype)  # torch's rule for its own state dicts
                if value.dtype not in _FLOATS and value.dtype not in _STATE_INTS:
                    raise TypeError(f"state_dict: {key} of params[{index}] has dtype {value.dtype}")
                # Low precision: the NumPy optimizer decides (convert=True casts).
                out[key] = _numpy(value.resolve_conj().resolve_neg().contiguous())
            elif key == "step":
                # torch's older checkpoints hold a Python number: any whole number loads.
                out[key] = _counter(value, np.int64, f"state of params[{index}]", key)[0]
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------------ copying
    def __getstate__(self):
        return {
            "defaults": self.defaults,
            "state": {
                p: dict(st) if isinstance(p, torch.Tensor) else st
                for p, st in self.state.items()
                if not isinstance(p, torch.Tensor) or st
            },
            "param_groups": self.param_groups,
        }

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_private()
        self._wrap_state()
        self._ready = True
        self._rebuild()

    @property
    def inner(self):
        """The :mod:`fusedadam.optim` optimizer that runs the steps (its groups are views)."""
        return self._fa

    @property
    def last_grad_norm(self):
        """The unscaled gradients' 2-norm of the last step, per group with ``max_grad_norm``
        (what ``torch.nn.utils.clip_grad_norm_`` returns over the group's params that have a
        grad): a float for one group, else a list; see
        :attr:`fusedadam.Optimizer.last_grad_norm`. With DTensor params, the norm over all
        ranks."""
        if self._dtensor is not None:
            return self._dtensor.last_grad_norm()
        if self._fa is None:
            return None
        inner = self._fa.last_grad_norm
        if self._layout is None or self._full:
            return inner
        inner = inner if isinstance(inner, list) else [inner]
        out: List[Any] = [None] * len(self.param_groups)
        for k, gi in enumerate(self._owners):
            out[gi] = self._split_norms.get(gi, inner[k] if k < len(inner) else None)
        return out[0] if len(out) == 1 else out

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"``)."""
        return self._skipped if self._fa is None else self._fa.skipped_steps


def _scale_value(scale):
    """A step's grad_scale as the NumPy optimizer takes it (GradScaler's is a tensor)."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"grad_scale must have one element, got shape {tuple(scale.shape)}")
        return float(scale.item())
    return scale


def _doc(cls, torch_name, extra=""):
    """The class docstring: what it mirrors, the formula's home, the fusedadam options."""
    cls.__doc__ = (
        f"{cls.__doc__.strip()}\n\n"
        f"Same arguments and state as ``{torch_name}`` (``foreach`` and ``fused`` are "
        "checked as torch checks them, then irrelevant: there is one implementation; "
        "``capturable`` and ``differentiable`` must be False), plus fusedadam's "
        "``num_threads`` (None: OpenMP's default) and "
        '``nonfinite`` (``"error"``: a NaN/inf gradient raises and nothing changes; '
        '``"skip"``: the step is skipped and counted in ``skipped_steps``; ``"ignore"``: '
        "no check, as torch). Params must be dense CPU tensors (float32 or float64, or "
        "bfloat16/float16 with a float32 master copy in the state); as in torch, a param "
        'whose grad is None (a frozen one) is skipped. ``state_dtype`` (None, "bfloat16", '
        'or "8bit": uint8 codes plus float32 per-block scales ``<moment>_absmax``, '
        "fusedadam's layout, not torch.optim's) and ``max_grad_norm`` (clip the group's "
        "gradients to this 2-norm, as ``torch.nn.utils.clip_grad_norm_``, inside the step) "
        'are fusedadam\'s mixed-precision options, and ``master`` (``"float32"``: a float32 '
        '``master_param``; ``"residual"``: a bfloat16 param keeps its float32 master '
        "exactly as an int16 ``master_residual``, 2 bytes instead of 4, the param the "
        "master rounded to nearest with ties away from zero; see docs/master_residual.md). "
        "What differs from torch.optim is listed "
        "in docs/torch_differences.md. " + extra
    )
    return cls


class Adam(Optimizer):
    """Adam and AMSGrad (:class:`fusedadam.Adam` runs the step) for CPU tensors."""

    _inner_cls = _optim.Adam

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 num_threads=None, nonfinite="error", state_dtype=None,
                 max_grad_norm=None, master="float32", cautious=False):
        self._setup(params, locals())
    # fmt: on


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (:class:`fusedadam.Adam` with
    ``decoupled_weight_decay=True`` runs the step) for CPU tensors."""

    _FIXED = {"decoupled_weight_decay": True}

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, num_threads=None, nonfinite="error",
                 state_dtype=None, max_grad_norm=None, master="float32",
                 cautious=False):
        self._setup(params, locals())
    # fmt: on


class Adamax(Optimizer):
    """Adamax (:class:`fusedadam.Adamax` runs the step) for CPU tensors."""

    _inner_cls = _optim.Adamax

    # fmt: off
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 num_threads=None, nonfinite="error", state_dtype=None,
                 max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class NAdam(Optimizer):
    """NAdam (:class:`fusedadam.NAdam` runs the step) for CPU tensors. ``mu_product`` is
    kept in float64 (torch: the default dtype); a torch state dict's loads exactly."""

    _inner_cls = _optim.NAdam

    # fmt: off
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, num_threads=None,
                 nonfinite="error", state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class RAdam(Optimizer):
    """RAdam (:class:`fusedadam.RAdam` runs the step) for CPU tensors."""

    _inner_cls = _optim.RAdam

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, num_threads=None, nonfinite="error",
                 state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class AdaBelief(Optimizer):
    """AdaBelief (:class:`fusedadam.AdaBelief` runs the step; optax's defaults) for CPU
    tensors. torch.optim has no AdaBelief: the state is ``exp_avg``, ``exp_avg_var``."""

    _inner_cls = _optim.AdaBelief

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, eps_root=1e-16,
                 weight_decay=0.0, decoupled_weight_decay=False, *, maximize=False,
                 foreach=None, capturable=False, differentiable=False, num_threads=None,
                 nonfinite="error", state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class Lion(Optimizer):
    """Lion (:class:`fusedadam.Lion` runs the step; optax's defaults) for CPU tensors.
    torch.optim has no Lion: the state is ``exp_avg``."""

    _inner_cls = _optim.Lion

    # fmt: off
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-3, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False,
                 num_threads=None, nonfinite="error", state_dtype=None,
                 max_grad_norm=None, master="float32", cautious=False):
        self._setup(params, locals())
    # fmt: on


class ADOPT(Optimizer):
    """ADOPT (:class:`fusedadam.ADOPT` runs the step; timm's ``Adopt`` defaults and clip)
    for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` as timm's; timm's
    ``decoupled`` is ``decoupled_weight_decay`` here, its ``caution`` is ``cautious``, and
    its ``corrected_weight_decay`` is not offered."""

    _inner_cls = _optim.ADOPT

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_exp=0.333,
                 weight_decay=0.0, decoupled_weight_decay=False, *, maximize=False,
                 foreach=None, capturable=False, differentiable=False, num_threads=None,
                 nonfinite="error", state_dtype=None, max_grad_norm=None, master="float32",
                 cautious=False):
        self._setup(params, locals())
    # fmt: on


class AdamAtan2(Optimizer):
    """Adam-atan2 (:class:`fusedadam.AdamAtan2` runs the step; adam_atan2_pytorch's
    ``AdamAtan2`` defaults) for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq``
    (that package also keeps an int ``steps``; here it is ``step``)."""

    _inner_cls = _optim.AdamAtan2

    # fmt: off
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, a=1.27, b=1.0,
                 *, maximize=False, foreach=None, capturable=False, differentiable=False,
                 num_threads=None, nonfinite="error", state_dtype=None, max_grad_norm=None,
                 master="float32"):
        self._setup(params, locals())
    # fmt: on


class AdEMAMix(Optimizer):
    """AdEMAMix (:class:`fusedadam.AdEMAMix` runs the step; pytorch_optimizer's defaults
    and state names: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow``) for CPU tensors."""

    _inner_cls = _optim.AdEMAMix

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0,
                 t_alpha_beta3=None, eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, foreach=None,
                 capturable=False, differentiable=False, num_threads=None, nonfinite="error",
                 state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class Adan(Optimizer):
    """Adan (:class:`fusedadam.Adan` runs the step; timm's defaults and state names:
    ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``neg_pre_grad``) for CPU tensors."""

    _inner_cls = _optim.Adan

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8,
                 weight_decay=0.0, no_prox=False, *, maximize=False, foreach=None,
                 capturable=False, differentiable=False, num_threads=None, nonfinite="error",
                 state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class AdamWScheduleFree(Optimizer):
    """Schedule-Free AdamW (:class:`fusedadam.AdamWScheduleFree` runs the step) for CPU
    tensors, as ``schedulefree.AdamWScheduleFree``: the state is ``z``, ``exp_avg_sq`` and
    the 0-d float64 ``lr_max`` and ``weight_sum``; call :meth:`train` before training and
    :meth:`eval` before evaluating or saving (a step in eval mode raises). A param whose
    grad is None keeps its y and z, and its counters follow its group's, as the package
    keeps them per group."""

    _inner_cls = _optim.AdamWScheduleFree

    # fmt: off
    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, foreach=None, *,
                 maximize=False, num_threads=None, nonfinite="error", state_dtype=None,
                 max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group; it takes the optimizer's mode (train unless :meth:`eval`
        was called)."""
        if isinstance(param_group, dict) and "train_mode" not in param_group:
            train = all(g.get("train_mode", True) for g in getattr(self, "param_groups", ()))
            param_group = {**param_group, "train_mode": train}
        super().add_param_group(param_group)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        _schedule_free.check_mode_entry(group, where)

    _COUNTERS = ("step", "lr_max", "weight_sum")

    def _step(self, closure=None, grad_scale=None, found_inf=None):
        _schedule_free.check_steppable(self.param_groups, type(self).__name__)
        if found_inf is None:
            found_inf = self.__dict__.get("found_inf")
        if found_inf is not None and float(found_inf) != 0.0:
            return super()._step(closure, grad_scale, found_inf)  # skipped: nothing moves
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        else:
            loss = None
        # The group-counter bookkeeping is needed while some param skips steps (grad None),
        # and once after that or after the state changed; not in a plain training loop.
        missing = any(
            any(map(operator.is_, map(_GRAD, group["params"]), _NONE))
            for group in self.param_groups
        )
        check = missing or self._flag.dirty or self.__dict__.get("_partial", True)
        joined = self._join_group_counters() if check else []
        skipped = self._fa.skipped_steps if self._fa is not None else 0
        try:
            super()._step(None, grad_scale, found_inf)
        except BaseException:
            state_map = self.__dict__["state"]
            for p in joined:  # the state made for this step goes with it
                state_map.pop(p, None)
            raise
        if check and (self._fa is None or self._fa.skipped_steps == skipped):
            self._follow_group_counters()
        self._partial = missing
        return loss

    def _groups_with_counters(self):
        """Per group: its members, their state dicts, and the state of a param that has
        counters (the group's, since they agree), or None."""
        state_map = self.__dict__["state"]
        for group in self.param_groups:
            members = self._members(group)
            entries = [dict.get(state_map, p) for p in members]
            lead = next(
                (
                    st
                    for st in entries
                    if st and all(isinstance(st.get(n), torch.Tensor) for n in self._COUNTERS)
                ),
                None,
            )
            yield group, members, entries, lead

    @torch.no_grad()
    def _join_group_counters(self):
        """A param whose first gradient arrives after its group has stepped gets its state
        now, at the group's counters (the package's z = p, v = 0 with the group's k, lr_max
        and weight_sum), instead of starting at step 1 on its own. Returns those params."""
        from fusedadam.engine._plan import new_state, state_dtypes

        algorithm = self._inner_cls.algorithm
        joined = []
        for group, members, entries, lead in self._groups_with_counters():
            if lead is None or int(lead["step"]) == 0:
                continue
            for k, (p, st) in enumerate(zip(members, entries)):
                if st or p.grad is None or p.device.type == "meta":
                    continue
                view = _numpy(p.detach().contiguous())
                dtypes = state_dtypes(algorithm, view, group.get("state_dtype"), f"params[{k}]")
                fresh = {}
                for name in algorithm.state_names:
                    fresh.update(new_state(view, name, dtypes, name in algorithm.from_param))
                if _precision.MASTER in dtypes:
                    fresh[_precision.MASTER] = view.astype(np.float32)
                state = {name: _tensor(np.ascontiguousarray(a)) for name, a in fresh.items()}
                for name in self._COUNTERS:
                    state[name] = lead[name].detach().clone()
                self.state[p] = state
                joined.append(p)
        return joined

    @torch.no_grad()
    def _follow_group_counters(self):
        """After a step that ran: the params of a group that skipped it (grad None) take
        the counters of the group's params that took it, and a group none of whose params
        took it counts the step by the scalar rule itself. The package keeps k, lr_max and
        weight_sum per group and counts every step() call for every group."""
        from fusedadam import _algorithms, reference

        algorithm = self._inner_cls.algorithm
        for group, members, entries, lead in self._groups_with_counters():
            if lead is None or all(p.grad is not None for p in members):
                continue
            stepped = [
                st for p, st in zip(members, entries) if p.grad is not None and st and "step" in st
            ]
            if stepped:
                source = [stepped[0][n] for n in self._COUNTERS]
            else:
                t = int(lead["step"]) + 1
                hyper = _algorithms.hyper_dict(algorithm, {**group, "betas": _betas(group)})
                carry = (float(lead["lr_max"]), float(lead["weight_sum"]))
                _, _, after = reference.step_scalars(hyper, t, _lr_value(group["lr"], ""), carry)
                source = [
                    torch.tensor(t, dtype=torch.int64),
                    torch.tensor(after[0], dtype=torch.float64),
                    torch.tensor(after[1], dtype=torch.float64),
                ]
            for p, st in zip(members, entries):
                if (
                    p.grad is None
                    and st
                    and all(isinstance(st.get(n), torch.Tensor) for n in self._COUNTERS)
                ):
                    for n, value in zip(self._COUNTERS, source):
                        st[n].copy_(value)

    def train(self) -> None:
        """Switch to train mode: each param of a group in eval mode moves from ``x`` to
        ``y = lerp(x, z, 1 - beta1)`` (its master too, the param then its rounding).
        Idempotent."""
        self._set_mode(True)

    def eval(self) -> None:
        """Switch to eval mode: each param of a group in train mode moves from ``y`` to
        ``x = lerp(y, z, 1 - 1/beta1)``. Idempotent."""
        self._set_mode(False)

    @torch.no_grad()
    def _set_mode(self, train):
        state_map = self.__dict__["state"]
        moved, writes = [], []
        for gi, group in enumerate(self.param_groups):
            if bool(group.get("train_mode", True)) == train:
                continue
            where = f"param_groups[{gi}]: "
            self._check_group(group, where)
            weight = _schedule_free.mode_weight(_betas(group), train, where)
            for p in self._members(group):
                st = dict.get(state_map, p)
                if not st or "z" not in st:
                    continue
                views = {
                    key: _numpy(value)
                    for key, value in st.items()
                    if key in ("z", "z_absmax", "master_param") and isinstance(value, torch.Tensor)
                }
                writes.append(_schedule_free.move(_numpy(p), views, weight))
                moved.append(p)
        for write in writes:
            write()
        if moved:
            _BUMP(moved)
        for group in self.param_groups:
            group["train_mode"] = train


class RAdamScheduleFree(AdamWScheduleFree):
    """Schedule-Free RAdam (:class:`fusedadam.RAdamScheduleFree` runs the step) for CPU
    tensors, as ``schedulefree.RAdamScheduleFree``; state, :meth:`train`, :meth:`eval` and
    frozen params as :class:`AdamWScheduleFree`."""

    _inner_cls = _optim.RAdamScheduleFree

    # fmt: off
    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 r=0.0, weight_lr_power=2.0, foreach=None, silent_sgd_phase=True, *,
                 maximize=False, num_threads=None, nonfinite="error", state_dtype=None,
                 max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class Lamb(Optimizer):
    """LAMB (:class:`fusedadam.Lamb` runs the step; timm's ``Lamb`` defaults, its
    ``decoupled_decay`` named ``decoupled_weight_decay``, its global ``max_grad_norm=1.0``
    not applied: ``max_grad_norm`` is the per-group rule of ``clip_grad_norm_``) for CPU
    tensors. The state is timm's: ``exp_avg``, ``exp_avg_sq``."""

    _inner_cls = _optim.Lamb

    # fmt: off
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6,
                 weight_decay=1e-2, grad_averaging=True, max_grad_norm=None,
                 trust_clip=False, always_adapt=False, *, decoupled_weight_decay=False,
                 maximize=False, foreach=None, capturable=False, differentiable=False,
                 num_threads=None, nonfinite="error", state_dtype=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class StableAdamW(Optimizer):
    """StableAdamW (:class:`fusedadam.StableAdamW` runs the step; torch-optimi's defaults,
    its ``beta1, beta2`` as ``betas``) for CPU tensors. The state is ``exp_avg``,
    ``exp_avg_sq`` (optimi also keeps ``eps_sq`` and a Kahan buffer; here a low-precision
    param keeps a float32 master instead)."""

    _inner_cls = _optim.StableAdamW

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-2, eps=1e-6,
                 decouple_lr=False, max_lr=None, *, maximize=False, foreach=None,
                 capturable=False, differentiable=False, num_threads=None,
                 nonfinite="error", state_dtype=None, max_grad_norm=None,
                 master="float32"):
        max_lr = _validation.stable_adamw_max_lr(lr, decouple_lr, max_lr)
        self._setup(params, locals())
    # fmt: on


for _cls, _name in (
    (Adam, "torch.optim.Adam"),
    (AdamW, "torch.optim.AdamW"),
    (Adamax, "torch.optim.Adamax"),
    (NAdam, "torch.optim.NAdam"),
    (RAdam, "torch.optim.RAdam"),
    (AdaBelief, "torch.optim.Adam"),
    (Lion, "torch.optim.Adam"),
    (ADOPT, "timm.optim.Adopt"),
    (AdamAtan2, "adam_atan2_pytorch.AdamAtan2"),
    (AdamWScheduleFree, "schedulefree.AdamWScheduleFree"),
    (RAdamScheduleFree, "schedulefree.RAdamScheduleFree"),
    (Lamb, "timm.optim.Lamb"),
    (StableAdamW, "optimi.StableAdamW"),
):
    _doc(_cls, _name)
del _cls, _name
_doc(
    AdEMAMix,
    "pytorch_optimizer.AdEMAMix",
    "Its ``weight_decouple`` is ``decoupled_weight_decay`` here; ``fixed_decay`` is not "
    "offered (docs/algorithms_ademamix_adan.md).",
)
_doc(
    Adan,
    "timm.optim.Adan",
    "``maximize`` is fusedadam's (timm has none); timm's ``caution`` is not offered "
    "(docs/algorithms_ademamix_adan.md).",
)


class Offload:
    """CPU master weights and optimizer state for a model on any device (ZeRO-Offload style).

    Keeps, per model param, a CPU copy in the param's own dtype (``buffers``; pinned when
    CUDA is available) and a fusedadam.torch optimizer over those copies: for bfloat16 or
    float16 params the optimizer's state holds the float32 ``master_param``, so one step
    reads the CPU gradients (float32, bfloat16 or float16), updates master and moments,
    and writes the rounded low-precision copy into ``buffers`` in the same pass. Sending
    it to the device is the caller's one line, :meth:`copy_to_params` (non-blocking from
    pinned memory).

    Parameters
    ----------
    params : iterable of Tensor or of dict
        The model's parameters (any device), or param groups of them.
    optimizer : fusedadam.torch optimizer class, default :class:`AdamW`
    pin_memory : bool, optional
        Pin ``buffers`` and the gradient staging buffers; default: when CUDA is available.
    **options
        The optimizer's arguments (``lr``, ``weight_decay``, ``max_grad_norm``, ...).

    Examples
    --------
    >>> off = Offload(model.parameters(), AdamW, lr=1e-3)  # doctest: +SKIP
    >>> loss.backward(); off.step(); off.copy_to_params(); model.zero_grad()  # doctest: +SKIP
    """

    def __init__(self, params, optimizer=None, *, pin_memory=None, **options):
        if optimizer is None:
            optimizer = AdamW
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        groups = list(params)
        if not groups:
            raise ValueError("Offload got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.params: List[torch.Tensor] = []
        self.buffers: List[torch.Tensor] = []
        inner_groups = []
        for group in groups:
            members = list(group["params"])
            buffers = []
            for p in members:
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"Offload params must be tensors, got {type(p).__name__}")
                if p.device.type == "meta":
                    raise ValueError("a model param is on the meta device: it has no values")
                b = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin_memory)
                b.copy_(p.detach())
                b.requires_grad_(True)
                if p.dtype in _LOW_PRECISION:
                    b.grad_dtype = None  # its gradient may be float32, bfloat16 or float16
                buffers.append(b)
            self.params += members
            self.buffers += buffers
            inner_groups.append({**group, "params": buffers})
        self.pin_memory = bool(pin_memory)
        self._staging: Dict[int, torch.Tensor] = {}
        self.optimizer = optimizer(inner_groups, **options)

    def step(self, closure=None):
        """Hand the model's gradients to the CPU optimizer (CPU gradients by reference, others
        copied into staging buffers) and step: master, state and ``buffers`` are updated."""
        copied = False
        for i, (p, b) in enumerate(zip(self.params, self.buffers)):
            g = p.grad
            if g is None:
                b.grad = None
            elif g.device.type == "cpu":
                b.grad = g
            else:
                staging = self._staging.get(i)
                if staging is None or staging.dtype != g.dtype:
                    staging = torch.empty(
                        g.shape, dtype=g.dtype, device="cpu", pin_memory=self.pin_memory
                    )
                    self._staging[i] = staging
                staging.copy_(g, non_blocking=True)
                b.grad = staging
                copied = True
        if copied and torch.cuda.is_available():
            torch.cuda.synchronize()
        try:
            return self.optimizer.step(closure)
        finally:
            for b in self.buffers:
                b.grad = None

    def copy_to_params(self, non_blocking=True):
        """Copy ``buffers`` (the updated low-precision params) into the model's params."""
        with torch.no_grad():
            for p, b in zip(self.params, self.buffers):
                p.copy_(b, non_blocking=non_blocking)

    def master_params(self):
        """The float32 master copies (the buffers themselves for float32/float64 params).

        Under ``master="residual"`` a bfloat16 buffer's master is decoded from the buffer and
        its ``master_residual``: a new tensor (a snapshot), not the optimizer's memory."""
        masters = []
        for b in self.buffers:
            st = self.optimizer.state.get(b, {})
            if _precision.MASTER in st:
                masters.append(st[_precision.MASTER])
            elif _precision.MASTER_RESIDUAL in st:
                residual = _numpy(st[_precision.MASTER_RESIDUAL])
                decoded = reference.residual_decode(_numpy(b), residual)
                masters.append(torch.from_numpy(decoded.reshape(b.shape)))
            else:
                masters.append(b)
        return masters

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict, convert=False):
        self.optimizer.load_state_dict(state_dict, convert=convert)
