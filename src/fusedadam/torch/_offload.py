"""``Offload``: CPU master weights and optimizer state for a model on any device."""

from typing import Dict, List

import torch

from fusedadam import _precision, reference
from fusedadam.torch import _bridge


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
            from fusedadam.torch import AdamW as optimizer
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
                if p.dtype in _bridge.LOW_PRECISION:
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

        Under ``master="residual"`` or ``"compact"`` a bfloat16 buffer's master is decoded from
        the buffer and its ``master_residual``: a new tensor (a snapshot), not the optimizer's
        memory."""
        masters = []
        for b in self.buffers:
            st = self.optimizer.state.get(b, {})
            if _precision.MASTER in st:
                masters.append(st[_precision.MASTER])
            elif _precision.MASTER_RESIDUAL in st:
                residual = _bridge.numpy_view(st[_precision.MASTER_RESIDUAL])
                decoded = reference.master_decode(_bridge.numpy_view(b), residual)
                masters.append(torch.from_numpy(decoded.reshape(b.shape)))
            else:
                masters.append(b)
        return masters

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict, convert=False):
        self.optimizer.load_state_dict(state_dict, convert=convert)
