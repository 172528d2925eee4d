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
``_bridge.py`` holds the tensor checks and views, ``_torch_api.py`` torch.optim's own flag
checks and hooks, ``_state_dict.py`` the state dicts, ``_schedule_free.py`` the
Schedule-Free base, ``_offload.py`` :class:`Offload`. The classes below are generated
(``_thin``): a registry entry's defaults in the torch class's argument layout.

Importing this module imports torch (``pip install torch``; 2.13 is the tested version);
``import fusedadam`` alone never does.
"""

import inspect

from fusedadam import _algorithms, _validation
from fusedadam.torch._bridge import TORCH_WORKERS_SPIN as _TORCH_WORKERS_SPIN
from fusedadam.torch._bridge import numpy_view as _numpy
from fusedadam.torch._offload import Offload
from fusedadam.torch._optimizer import Optimizer
from fusedadam.torch import _schedule_free

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

# Kept importable for tests and tools: the NumPy view of a tensor, and whether torch's
# OpenMP workers spin (the default thread count steps aside for them).
_ = (_numpy, _TORCH_WORKERS_SPIN)


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


# The thin classes: per class, its registry entry (defaults, algorithm), the torch class
# whose argument layout it follows (positional, then keyword-only) and its docstring.
_TORCH_ONLY = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
# fusedadam's own options, keyword-only in every class (after torch's)
_OURS = "num_threads nonfinite state_dtype max_grad_norm master"


def _thin(name, mirrors, positional, keywords, doc, base=Optimizer, fixed=None,
          prepare=None, extra=""):  # fmt: skip
    """The class ``name``: an ``__init__`` with the signature of ``mirrors`` (the
    registry's defaults, torch's for its implementation flags) that validates nothing
    itself and hands its arguments to ``Optimizer._setup``."""
    defaults = _algorithms.DEFAULTS[name][1]
    P = inspect.Parameter
    parameters = [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
    for names, kind in ((positional, P.POSITIONAL_OR_KEYWORD), (keywords, P.KEYWORD_ONLY)):
        parameters += [
            P(k, kind, default=_TORCH_ONLY.get(k, defaults.get(k))) for k in names.split()
        ]
    signature = inspect.Signature(parameters)

    def __init__(self, params, *args, **kwargs):
        arguments = signature.bind(self, params, *args, **kwargs)
        arguments.apply_defaults()
        if prepare is not None:
            prepare(arguments.arguments)
        self._setup(params, arguments.arguments)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {"__init__": __init__, "__doc__": doc, "__module__": __name__, "_name": name}
    if fixed:
        namespace["_FIXED"] = fixed
    return _doc(type(name, (base,), namespace), mirrors, extra)


def _stable_adamw_max_lr(arguments):
    arguments["max_lr"] = _validation.stable_adamw_max_lr(
        arguments["lr"], arguments["decouple_lr"], arguments["max_lr"]
    )


Adam = _thin(
    "Adam",
    "torch.optim.Adam",
    "lr betas eps weight_decay amsgrad",
    f"foreach maximize capturable differentiable fused decoupled_weight_decay {_OURS} cautious",
    ("Adam and AMSGrad (:class:`fusedadam.Adam` runs the step) for CPU tensors."),
)

AdamW = _thin(
    "AdamW",
    "torch.optim.AdamW",
    "lr betas eps weight_decay amsgrad",
    f"maximize foreach capturable differentiable fused {_OURS} cautious",
    (
        "AdamW: Adam with decoupled weight decay (:class:`fusedadam.Adam` with "
        "``decoupled_weight_decay=True`` runs the step) for CPU tensors."
    ),
    base=Adam,
    fixed={"decoupled_weight_decay": True},
)

Adamax = _thin(
    "Adamax",
    "torch.optim.Adamax",
    "lr betas eps weight_decay foreach",
    f"maximize differentiable capturable {_OURS}",
    ("Adamax (:class:`fusedadam.Adamax` runs the step) for CPU tensors."),
)

NAdam = _thin(
    "NAdam",
    "torch.optim.NAdam",
    "lr betas eps weight_decay momentum_decay decoupled_weight_decay",
    f"foreach maximize capturable differentiable {_OURS}",
    (
        "NAdam (:class:`fusedadam.NAdam` runs the step) for CPU tensors. ``mu_product`` is kept "
        "in float64 (torch: the default dtype); a torch state dict's loads exactly."
    ),
)

RAdam = _thin(
    "RAdam",
    "torch.optim.RAdam",
    "lr betas eps weight_decay decoupled_weight_decay",
    f"foreach maximize capturable differentiable {_OURS}",
    ("RAdam (:class:`fusedadam.RAdam` runs the step) for CPU tensors."),
)

AdaBelief = _thin(
    "AdaBelief",
    "torch.optim.Adam",
    "lr betas eps eps_root weight_decay decoupled_weight_decay",
    f"maximize foreach capturable differentiable {_OURS}",
    (
        "AdaBelief (:class:`fusedadam.AdaBelief` runs the step; optax's defaults) for CPU "
        "tensors. torch.optim has no AdaBelief: the state is ``exp_avg``, ``exp_avg_var``."
    ),
)

Lion = _thin(
    "Lion",
    "torch.optim.Adam",
    "lr betas weight_decay",
    f"maximize foreach capturable differentiable {_OURS} cautious",
    (
        "Lion (:class:`fusedadam.Lion` runs the step; optax's defaults) for CPU tensors. "
        "torch.optim has no Lion: the state is ``exp_avg``."
    ),
)

ADOPT = _thin(
    "ADOPT",
    "timm.optim.Adopt",
    "lr betas eps clip_exp weight_decay decoupled_weight_decay",
    f"maximize foreach capturable differentiable {_OURS} cautious",
    (
        "ADOPT (:class:`fusedadam.ADOPT` runs the step; timm's ``Adopt`` defaults and clip) for "
        "CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` as timm's; timm's ``decoupled`` is "
        "``decoupled_weight_decay`` here, its ``caution`` is ``cautious``, and its "
        "``corrected_weight_decay`` is not offered."
    ),
)

AdamAtan2 = _thin(
    "AdamAtan2",
    "adam_atan2_pytorch.AdamAtan2",
    "lr betas weight_decay a b",
    f"maximize foreach capturable differentiable {_OURS}",
    (
        "Adam-atan2 (:class:`fusedadam.AdamAtan2` runs the step; adam_atan2_pytorch's "
        "``AdamAtan2`` defaults) for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` (that "
        "package also keeps an int ``steps``; here it is ``step``)."
    ),
)

AdEMAMix = _thin(
    "AdEMAMix",
    "pytorch_optimizer.AdEMAMix",
    "lr betas alpha t_alpha_beta3 eps weight_decay decoupled_weight_decay",
    f"maximize foreach capturable differentiable {_OURS}",
    (
        "AdEMAMix (:class:`fusedadam.AdEMAMix` runs the step; pytorch_optimizer's defaults and "
        "state names: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow``) for CPU tensors."
    ),
    extra=(
        "Its ``weight_decouple`` is ``decoupled_weight_decay`` here; ``fixed_decay`` is not "
        "offered (docs/algorithms_ademamix_adan.md)."
    ),
)

Adan = _thin(
    "Adan",
    "timm.optim.Adan",
    "lr betas eps weight_decay no_prox",
    f"maximize foreach capturable differentiable {_OURS}",
    (
        "Adan (:class:`fusedadam.Adan` runs the step; timm's defaults and state names: "
        "``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``neg_pre_grad``) for CPU tensors."
    ),
    extra=(
        "``maximize`` is fusedadam's (timm has none); timm's ``caution`` is not offered "
        "(docs/algorithms_ademamix_adan.md)."
    ),
)

Lamb = _thin(
    "Lamb",
    "timm.optim.Lamb",
    "lr bias_correction betas eps weight_decay grad_averaging max_grad_norm trust_clip "
    "always_adapt",
    "decoupled_weight_decay maximize foreach capturable differentiable num_threads nonfinite "
    "state_dtype master",
    (
        "LAMB (:class:`fusedadam.Lamb` runs the step; timm's ``Lamb`` defaults, its "
        "``decoupled_decay`` named ``decoupled_weight_decay``, its global ``max_grad_norm=1.0`` "
        "not applied: ``max_grad_norm`` is the per-group rule of ``clip_grad_norm_``) for CPU "
        "tensors. The state is timm's: ``exp_avg``, ``exp_avg_sq``."
    ),
)

StableAdamW = _thin(
    "StableAdamW",
    "optimi.StableAdamW",
    "lr betas weight_decay eps decouple_lr max_lr",
    f"maximize foreach capturable differentiable {_OURS}",
    (
        "StableAdamW (:class:`fusedadam.StableAdamW` runs the step; torch-optimi's defaults, its "
        "``beta1, beta2`` as ``betas``) for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` "
        "(optimi also keeps ``eps_sq`` and a Kahan buffer; here a low-precision param keeps a "
        "float32 master instead)."
    ),
    prepare=_stable_adamw_max_lr,
)

AdamWScheduleFree = _thin(
    "AdamWScheduleFree",
    "schedulefree.AdamWScheduleFree",
    "lr betas eps weight_decay warmup_steps r weight_lr_power foreach",
    f"maximize {_OURS}",
    _schedule_free.ADAMW_DOC,
    base=_schedule_free.ScheduleFree,
)
RAdamScheduleFree = _thin(
    "RAdamScheduleFree",
    "schedulefree.RAdamScheduleFree",
    "lr betas eps weight_decay r weight_lr_power foreach silent_sgd_phase",
    f"maximize {_OURS}",
    _schedule_free.RADAM_DOC,
    base=AdamWScheduleFree,
)
