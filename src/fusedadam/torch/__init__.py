"""``fusedadam.torch``: fusedadam's optimizers as ``torch.optim.Optimizer`` subclasses.

Every optimizer of :mod:`fusedadam` (``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``,
``AdaBelief``, ``Lion``, ``AdEMAMix``, ``Adan``, ``ADOPT``, ``AdamAtan2``,
``AdamWScheduleFree``, ``RAdamScheduleFree``, ...) takes CPU
tensors and behaves like its ``torch.optim`` namesake (or the torch optimizer of the package
its algorithm follows, where torch.optim has none): ``step(closure=None)`` reads
``p.grad``, ``zero_grad()``, param groups, ``add_param_group``, step and state-dict hooks,
``torch.optim.lr_scheduler`` and ``torch.amp.GradScaler`` work unchanged, and state dicts
interchange with ``torch.optim``'s.

Each is a real ``torch.optim.Optimizer`` (``_optimizer.py``) over the step engine
(:mod:`fusedadam.engine`), which owns every rule of the step: validation, lazy state, the
non-finite policy and the compiled, GIL-free pass over all tensors of a group. The state
lives in torch's own ``opt.state[p]`` as tensors; the engine is handed NumPy views of the
params, grads and state tensors (``Tensor.numpy()`` shares memory: nothing is copied), so a
step writes the tensors the user sees, allocates nothing and plans nothing again while the
tensors stay in place. ``_plans.py`` turns torch's groups into the engine's plans,
``_grads.py`` reads the grads as the engine's views,
``_bridge.py`` holds the tensor checks and views, ``_torch_api.py`` torch.optim's own flag
checks and hooks, ``_state_dict.py`` the state dicts, ``_schedule_free.py`` the
Schedule-Free base, ``_offload.py`` :class:`Offload`. The classes are generated from the
registry (``_algorithms.CLASSES``: each entry's ``torch`` layout and its defaults), one per
class of :mod:`fusedadam`.

Importing this module imports torch (``pip install torch``; 2.13 is the tested version);
``import fusedadam`` alone never does.
"""

import inspect
from typing import Any

from fusedadam import _algorithms, _validation
from fusedadam.torch._bridge import TORCH_WORKERS_SPIN as _TORCH_WORKERS_SPIN
from fusedadam.torch._bridge import numpy_view as _numpy
from fusedadam.torch._offload import Offload
from fusedadam.torch._optimizer import Optimizer
from fusedadam.torch import _schedule_free

__all__ = [*_algorithms.CLASSES, "LoadPlanner", "Offload", "Optimizer"]

# Kept importable for tests and tools: the NumPy view of a tensor, and whether torch's
# OpenMP workers spin (the default thread count steps aside for them).
_ = (_numpy, _TORCH_WORKERS_SPIN)


def _doc(cls, follows, extra=""):
    """The class docstring: what it mirrors, the formula's home, the fusedadam options."""
    cls.__doc__ = (
        f"{cls.__doc__.strip()}\n\n"
        f"Same arguments and state as ``{follows.replace(':', '.')}`` (``foreach`` and "
        "``fused`` are checked as torch checks them, then irrelevant: there is one "
        "implementation; ``capturable`` and ``differentiable`` must be False), plus fusedadam's "
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


# torch's implementation flags: their torch defaults (the registry has none for them)
_TORCH_ONLY = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}


def _stable_adamw_max_lr(arguments):
    arguments["max_lr"] = _validation.stable_adamw_max_lr(
        arguments["lr"], arguments["decouple_lr"], arguments["max_lr"]
    )


# What a few classes add to the generated one: their base (the Schedule-Free modes) and a
# rule over their arguments before the optimizer sees them.
_BASES = {"AdamWScheduleFree": _schedule_free.ScheduleFree}
_PREPARE = {"StableAdamW": _stable_adamw_max_lr}


def _thin(name, entry, base):
    """The class ``name``: an ``__init__`` with the signature of the torch class it
    mirrors (``entry.torch``: the registry's defaults, torch's for its implementation
    flags) that validates nothing itself and hands its arguments to ``Optimizer._setup``."""
    layout = entry.torch
    defaults = _algorithms.DEFAULTS[name][1]
    P = inspect.Parameter
    parameters = [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
    for names, kind in (
        (layout.positional, P.POSITIONAL_OR_KEYWORD),
        (layout.keywords, P.KEYWORD_ONLY),
    ):
        parameters += [
            P(k, kind, default=_TORCH_ONLY.get(k, defaults.get(k))) for k in names.split()
        ]
    signature = inspect.Signature(parameters)
    prepare = _PREPARE.get(name)

    def __init__(self, params, *args, **kwargs):
        arguments = signature.bind(self, params, *args, **kwargs)
        arguments.apply_defaults()
        if prepare is not None:
            prepare(arguments.arguments)
        self._setup(params, arguments.arguments)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {"__init__": __init__, "__doc__": layout.doc, "__module__": __name__}
    namespace["_name"] = name
    if entry.fixed:
        namespace["_FIXED"] = {k: defaults[k] for k in entry.fixed}
    return _doc(type(name, (base,), namespace), layout.follows, layout.extra)


for _name, _entry in _algorithms.CLASSES.items():  # a parent comes before its children
    _base = globals()[_entry.parent] if _entry.parent else _BASES.get(_name, Optimizer)
    globals()[_name] = _thin(_name, _entry, _base)
del _name, _entry, _base


def __getattr__(name: str) -> Any:
    # LoadPlanner imports torch.distributed.checkpoint: on first use, not at import.
    # (Type checkers also read this for the classes above, made at import from the registry.)
    if name == "LoadPlanner":
        from fusedadam.torch._dcp import LoadPlanner

        return LoadPlanner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
