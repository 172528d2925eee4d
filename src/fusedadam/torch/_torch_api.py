"""torch.optim's own rules that the torch front end follows: its checks of the
implementation flags (``foreach``, ``fused``, ``capturable``, ``differentiable``) against a
tensor lr and betas, and the profiler range and hooks around a step."""

from itertools import chain
from typing import Any, Dict, Tuple

import torch
import torch.optim.optimizer as _torch_optimizer

__all__ = [
    "check_torch_flags",
    "check_torch_only",
    "hooked_step",
    "GLOBAL_PRE_HOOKS",
    "GLOBAL_POST_HOOKS",
]

_profiler = torch.autograd.profiler
# torch's global step hooks: dicts it adds to and removes from, never rebinds.
GLOBAL_PRE_HOOKS = _torch_optimizer._global_optimizer_pre_hooks
GLOBAL_POST_HOOKS = _torch_optimizer._global_optimizer_post_hooks


def check_torch_flags(defaults):
    """torch.optim.Adam's (and AdamW's) checks of a tensor lr and tensor betas against
    its ``foreach``/``capturable`` flags: the same errors, though one implementation
    runs here whatever the flags say."""
    if "fused" not in defaults:
        return  # Adamax, NAdam, RAdam: torch checks only the lr tensor's size
    foreach = defaults.get("foreach") and not defaults.get("capturable")
    lr, betas = defaults["lr"], defaults["betas"]
    if isinstance(lr, torch.Tensor) and foreach:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        return  # fusedadam's own check names the problem
    tensors = [isinstance(b, torch.Tensor) for b in betas]
    if not (all(tensors) or all(isinstance(b, float) for b in betas)):
        raise ValueError("betas must be either both floats or both Tensors")
    if all(tensors):
        for k, b in enumerate(betas):
            if foreach:
                raise ValueError(
                    f"betas[{k}] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if b.numel() != 1:
                raise ValueError(f"Tensor betas[{k}] must be 1-element")
        # torch keeps them as 0-d tensors in the group.
        defaults["betas"] = tuple(b.squeeze() if b.dim() else b for b in betas)


def check_torch_only(group, where):
    for key in ("capturable", "differentiable"):
        if group.get(key, False):
            raise ValueError(
                f"{where}{key}=True is not supported by fusedadam.torch (CPU tensors, "
                "no autograd through the step); leave it False"
            )


def hooked_step(opt, closure, grad_scale, found_inf):
    """``opt``'s step as torch.optim runs a step: in a profiler range, between the global
    and the optimizer's pre- and post-hooks (a pre-hook may replace the arguments)."""
    args: Tuple[Any, ...] = (opt,) if closure is None else (opt, closure)
    kwargs: Dict[str, Any] = {}
    if grad_scale is not None:
        kwargs["grad_scale"] = grad_scale
    if found_inf is not None:
        kwargs["found_inf"] = found_inf
    with _profiler.record_function(f"Optimizer.step#{type(opt).__name__}.step"):
        for pre_hook in chain(GLOBAL_PRE_HOOKS.values(), opt._optimizer_step_pre_hooks.values()):
            result = pre_hook(opt, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        "a step pre-hook must return None or a tuple of (new_args, "
                        f"new_kwargs), but got {result}."
                    )
        out = opt._step(*args[1:], **kwargs)
        opt._optimizer_step_code()
        for post_hook in chain(opt._optimizer_step_post_hooks.values(), GLOBAL_POST_HOOKS.values()):
            post_hook(opt, args, kwargs)
        return out
