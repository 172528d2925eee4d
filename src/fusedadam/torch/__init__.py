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
tensors stay in place. ``_bridge.py`` holds the tensor checks and views, ``_state_dict.py``
the state dicts, ``_schedule_free.py`` the Schedule-Free classes, ``_offload.py``
:class:`Offload`.

Importing this module imports torch (``pip install torch``; 2.13 is the tested version);
``import fusedadam`` alone never does.
"""

from fusedadam import _validation
from fusedadam.torch._bridge import TORCH_WORKERS_SPIN as _TORCH_WORKERS_SPIN
from fusedadam.torch._bridge import numpy_view as _numpy
from fusedadam.torch._offload import Offload
from fusedadam.torch._optimizer import Optimizer
from fusedadam.torch._schedule_free import AdamWScheduleFree, RAdamScheduleFree

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


class Adam(Optimizer):
    """Adam and AMSGrad (:class:`fusedadam.Adam` runs the step) for CPU tensors."""

    _name = "Adam"

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

    _name = "AdamW"
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

    _name = "Adamax"

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

    _name = "NAdam"

    # fmt: off
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, num_threads=None,
                 nonfinite="error", state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class RAdam(Optimizer):
    """RAdam (:class:`fusedadam.RAdam` runs the step) for CPU tensors."""

    _name = "RAdam"

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

    _name = "AdaBelief"

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

    _name = "Lion"

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

    _name = "ADOPT"

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

    _name = "AdamAtan2"

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

    _name = "AdEMAMix"

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

    _name = "Adan"

    # fmt: off
    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8,
                 weight_decay=0.0, no_prox=False, *, maximize=False, foreach=None,
                 capturable=False, differentiable=False, num_threads=None, nonfinite="error",
                 state_dtype=None, max_grad_norm=None, master="float32"):
        self._setup(params, locals())
    # fmt: on


class Lamb(Optimizer):
    """LAMB (:class:`fusedadam.Lamb` runs the step; timm's ``Lamb`` defaults, its
    ``decoupled_decay`` named ``decoupled_weight_decay``, its global ``max_grad_norm=1.0``
    not applied: ``max_grad_norm`` is the per-group rule of ``clip_grad_norm_``) for CPU
    tensors. The state is timm's: ``exp_avg``, ``exp_avg_sq``."""

    _name = "Lamb"

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

    _name = "StableAdamW"

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
