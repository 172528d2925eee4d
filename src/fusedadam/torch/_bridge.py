"""Tensors as the engine sees them: NumPy views of tensor memory, the checks a tensor passes
before the engine may write it by pointer, and the conversions of torch's numbers (a tensor
lr, betas, step counters, a GradScaler's scale) to the ones the engine takes."""

import math
import numbers
import os
from typing import Any, List

import ml_dtypes
import numpy as np
import torch

from fusedadam import _dtensor, _precision

__all__ = [
    "FLOATS",
    "LOW_PRECISION",
    "numpy_view",
    "tensor_view",
    "check_tensor",
    "lr_value",
    "plain_betas",
    "counter",
    "scale_value",
    "bump",
    "grad_views",
    "grad_error",
]

# The param dtypes the step takes (fusedadam._precision owns which go together).
FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LOW_PRECISION = (torch.bfloat16, torch.float16)
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# Integer state tensors: the codes of 8-bit moments (uint8: "8bit", int8:
# "8bit_companded") and a bfloat16 param's master_residual (int16: master="residual", int8:
# master="compact").
STATE_INTS = (torch.uint8, torch.int8, torch.int16)
# The state entries that hold a bfloat16/float16 param's master, one per master mode.
MASTERS = (_precision.MASTER, _precision.MASTER_RESIDUAL)
# step is exact as a float32 0-d tensor (torch's layout) up to 2**24.
FLOAT32_EXACT = 2**24

# Bump autograd's version counters of the params a step wrote, as an in-place update does
# (torch.autograd.graph.increment_version, one call for a list).
bump = torch._C._increment_version

# Inside a torch training loop torch's intra-op OpenMP workers spin after every parallel
# region (libgomp's default wait policy; it read the environment when torch loaded it), so
# they hold cores while the step runs. A helper of the step's pool then shares a core with
# a spinning worker, and the caller waits for a chunk it claimed: on a busy 2-core machine
# a 57k-param step took 10.3 ms with the default threads against 0.2 ms with one, and
# 18.7 against 10.2 ms at 3.2M params (bench/torch_step.py --training-loop; load average
# 40-70). With num_threads=None the step then runs on the calling thread below
# STEP_ASIDE elements; a group's explicit num_threads is always used as given.
TORCH_WORKERS_SPIN = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() != "passive" and (
    os.environ.get("GOMP_SPINCOUNT", "").strip() not in ("0",)
)
STEP_ASIDE = 1 << 22
# Up to this many params, the steady step reads the grads in one plain loop (C-level maps'
# lists cost more than they save below ~5 tensors).
FEW_GRADS = 4

OFFLOAD_HINT = (
    "fusedadam.torch steps CPU tensors: keep the master params (and the optimizer) on the "
    "CPU, e.g. with fusedadam.torch.Offload(model.parameters(), Adam), which writes the "
    "updated low-precision copy into a CPU buffer for one non-blocking copy to the device"
)


def numpy_view(t):
    """The NumPy view of a CPU tensor (same memory; bfloat16 as ``ml_dtypes.bfloat16``);
    of a DTensor's local shard."""
    t = _dtensor.local(t)
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(_BFLOAT16)
    return t.detach().numpy()


def tensor_view(a):
    """The tensor view of a NumPy array (same memory)."""
    if a.dtype == _BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def check_tensor(t, name, kind="parameter", meta=False):
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
        raise ValueError(f"{name} is on {t.device}; {OFFLOAD_HINT}")
    if t.dtype not in FLOATS and not (kind == "state tensor" and t.dtype in STATE_INTS):
        # (8-bit codes, master_residual: STATE_INTS)
        raise TypeError(
            f"{name} has dtype {t.dtype}; fusedadam.torch supports "
            f"{', '.join(str(d) for d in FLOATS)}"
        )
    if kind != "parameter" and not t.is_contiguous():
        raise ValueError(
            f"{name} is not contiguous (strides {t.stride()} for shape {tuple(t.shape)}); "
            f"the step updates {kind}s in place by pointer: pass a contiguous tensor"
        )
    if t.is_conj() or t.is_neg():
        raise ValueError(f"{name} has a lazy conjugate/negative bit; resolve it first")


def lr_value(lr, where):
    """A group's lr as the float the engine takes (torch allows a 1-element tensor)."""
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


def plain_betas(betas):
    """A group's betas as the floats the engine takes (torch allows 1-element tensors)."""
    if isinstance(betas, (tuple, list)) and any(isinstance(b, torch.Tensor) for b in betas):
        return tuple(
            float(b.item()) if isinstance(b, torch.Tensor) and b.numel() == 1 else b for b in betas
        )
    return betas


def counter(value, dtype, where, name):
    """A state counter as the writeable 0-d array the engine updates: the tensor's own
    memory when it already is one (int64 step, float64 mu_product), else a new array.
    Returns ``(array, whether it is new)``."""
    if (
        isinstance(value, torch.Tensor)
        and value.dtype == (torch.int64 if dtype == np.int64 else torch.float64)
        and value.dim() == 0
        and value.device.type == "cpu"
    ):
        return numpy_view(value), False
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


def scale_value(scale):
    """A step's grad_scale as the engine takes it (GradScaler's is a tensor)."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"grad_scale must have one element, got shape {tuple(scale.shape)}")
        return float(scale.item())
    return scale


def grad_views(found, low):
    """NumPy views of the grads ``found`` (None where a param has none); ``low[i]``: param
    ``i`` is bfloat16/float16 or a DTensor. Raises naming a grad the step cannot read."""
    grads: List[Any] = []
    for i, (g, low_i) in enumerate(zip(found, low)):
        if g is None:
            grads.append(None)
            continue
        try:
            if not g.is_contiguous() and g.layout is torch.strided and not g.requires_grad:
                g = g.contiguous()  # torch steps any strided grad: the step reads a copy
            # A bfloat16/float16 param may have a float32, bfloat16 or float16 grad;
            # a DTensor's is read through its local shard.
            grads.append(numpy_view(g) if low_i else g.numpy())
        except Exception as error:
            raise grad_error(i, g, error) from None
    return grads


def grad_error(i, g, error):
    """The error for grad ``i``, which ``Tensor.numpy()`` refused with ``error``."""
    try:
        check_tensor(g, f"params[{i}].grad", "gradient")
    except (TypeError, ValueError) as clear:
        return type(clear)(str(clear))
    if g.requires_grad:
        return RuntimeError(
            f"params[{i}].grad requires grad (a create_graph=True backward?); "
            "fusedadam.torch does not differentiate through the step"
        )
    return type(error)(f"params[{i}].grad: {error}")


# ------------------------------------------------------------------ plans
