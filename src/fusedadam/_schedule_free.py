"""Schedule-Free's modes, one owner for both front ends: the params hold the gradient point
``y`` while training and the average ``x`` after ``eval()``; a step needs train mode.

``fusedadam.AdamWScheduleFree`` and ``fusedadam.torch.AdamWScheduleFree`` (and the RAdam
variants) call these with their own containers (the torch one on NumPy views of its tensors).
"""

import numpy as np

from fusedadam import _precision, _validation, reference

__all__ = ["check_mode_entry", "check_steppable", "mode_weight", "move"]


def check_mode_entry(group, where):
    """A group's ``"train_mode"`` entry (saved in state dicts) is a bool."""
    mode = group.get("train_mode", True)
    if not isinstance(mode, (bool, np.bool_)):
        raise TypeError(f"{where}train_mode must be a bool, got {mode!r}")


def check_steppable(groups, owner):
    """A step in eval mode raises (before anything is written), naming the group."""
    for gi, group in enumerate(groups):
        if not group.get("train_mode", True):
            raise RuntimeError(
                f"{owner}: param_groups[{gi}] is in eval mode (its params hold "
                "the average x); call optimizer.train() before step(), and "
                "optimizer.eval() before evaluating or saving the model"
            )


def mode_weight(betas, train, where):
    """The lerp weight towards ``z`` that moves a param to the other mode: ``1 - beta1`` from
    x to y (``train()``), ``1 - 1/beta1`` from y to x (``eval()``, which needs beta1 > 0)."""
    if not train:
        _validation.check_schedule_free_beta1(betas, where)
    beta1 = float(betas[0])
    return 1.0 - beta1 if train else 1.0 - 1.0 / beta1


def move(param, state, weight):
    """Move one Schedule-Free param between y and x: ``p = lerp(p, z, weight)`` as
    ``torch.lerp`` computes it (``p + w (z - p)`` for ``|w| < 0.5``, else
    ``z - (z - p)(1 - w)``), in the param's dtype, or on its float32 master (then the param
    is its rounding to nearest even; with ``master_residual``, its encoding). ``z`` is
    widened (bfloat16 state) or dequantized (8-bit state) first. Returns a function that
    writes the result: nothing is written until it is called, so a caller moving many
    params checks them all first. Both front ends call it (``fusedadam.torch`` on views of
    its tensors)."""
    z = state["z"]
    master = state.get(_precision.MASTER)
    residual = state.get(_precision.MASTER_RESIDUAL)
    if residual is not None:
        target = reference.master_decode(param, residual)
    else:
        target = master if master is not None else param
    compute = target.dtype
    if _precision.is_q8(z.dtype):
        z = reference.q8_dequantize(z, state[_precision.scale_name("z")], True)
    if z.shape != target.shape:
        raise ValueError(f"z has shape {z.shape}, but its param has {target.shape}")
    z = np.asarray(z, dtype=compute)
    w = compute.type(weight)
    with np.errstate(all="ignore"):
        diff = z - target
        if abs(weight) < 0.5:
            new = target + w * diff
        else:
            new = z - diff * (compute.type(1) - w)

    def write():
        if residual is not None:
            param[...], residual[...] = reference.master_encode(new, residual.dtype)
        elif master is not None:
            master[...] = new
            param[...] = new.astype(param.dtype)
        else:
            param[...] = new

    return write
