"""DTensor params (FSDP2's ``fully_shard``, tensor parallelism) for :mod:`fusedadam.torch`.

A DTensor param is stepped through its local shard: the NumPy views the kernel updates are
views of ``p._local_tensor`` and of ``p.grad._local_tensor``, and every state tensor that
is shaped like the param is kept in ``opt.state`` as a DTensor of the param's mesh and
placements wrapping the kernel's memory, so ``torch.distributed.checkpoint`` and
``get_optimizer_state_dict`` save and reshard it as they do ``torch.optim``'s.

What one rank cannot decide alone is decided here, once per step, by one all-reduce of
the squared local gradient norms of every param group (float64) over the mesh dimensions
the params are sharded on:

* ``max_grad_norm`` clips by the *global* norm (the group's gradients over all ranks), as
  ``torch.nn.utils.clip_grad_norm_`` over the full tensors would: the group's clipping
  coefficient is folded into its gradient scale, so the kernel's single pass applies it;
* the non-finite policy: a NaN/inf gradient on any rank makes every rank raise
  (``nonfinite="error"``) or skip the step (``"skip"``), so the shards never disagree.

Groups with ``nonfinite="ignore"`` and no ``max_grad_norm`` need no communication. Nothing
in this module imports torch.distributed: a DTensor can only exist once it was imported.

8-bit moments (``state_dtype="8bit"``/``"8bit_companded"``): the kernel quantizes the local
shard in blocks of ``Q8_BLOCK`` elements from the shard's first element, and keeps one
float32 scale per block. A param sharded on dim 0 only (FSDP2's ``Shard(0)``, HSDP's
``(Replicate(), Shard(0))``) whose rows (its elements per index of dim 0) are a multiple
of ``Q8_BLOCK`` has every shard boundary on a block boundary, at every number of ranks:
its blocks are the one-process blocks, and its scales are kept as a DTensor of shape
``(rows, elements per row // Q8_BLOCK)`` placed like the param (one row of scales per row
of the param), so ``torch.distributed.checkpoint`` reshards codes and scales alike, to
any number of ranks. Any other DTensor param (rows not a multiple of ``Q8_BLOCK``, such as
a 1-d norm weight, or sharded on another dim) keeps float32 moments, as a param of fewer
than ``Q8_MIN_SIZE`` elements does: its blocks could not follow its shards at every
number of ranks. Which of the two a param gets, and the ``Q8_MIN_SIZE`` rule, are decided
on the whole param's shape (``q8_size``), so every rank, and every number of ranks,
keeps the same dtypes. The one-process front end saves the scales of such a param in the
same 2-d shape (``saved_scales``), so state dicts and checkpoints move between it and
FSDP2; a param whose moments are float32 under FSDP2 and 8-bit in one process converts
on load (``StateDicts._across_layouts``; through DCP with ``fusedadam.torch.LoadPlanner``).
"""

import math
import sys

import numpy as np
import torch

from fusedadam import _constants, _precision

#: Returned by :meth:`Plan.before_step` when every rank skips this step.
SKIP = object()


def _dtensor_class():
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_dtensor(t):
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def local(t):
    """The local shard of a DTensor (the tensor itself otherwise): the same memory."""
    cls = _dtensor_class()
    if cls is not None and isinstance(t, cls):
        return t._local_tensor
    return t


def scale_rows(shape):
    """Scales per row of a param of ``shape`` when its rows (elements per index of dim 0)
    are whole blocks of ``Q8_BLOCK`` elements, else None."""
    if len(shape) < 2:
        return None
    row = math.prod(shape[1:])
    block = _constants.Q8_BLOCK
    return row // block if row and row % block == 0 else None


def _row_sharded(p):
    """Whether DTensor ``p`` is sharded on dim 0 only (Replicate on other mesh dims)."""
    from torch.distributed.tensor import Replicate, Shard

    return all(
        isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0) for pl in p.placements
    )


def q8_size(p):
    """The size the 8-bit rule sees for param ``p`` (``engine._plan.state_dtypes``): None
    for a plain tensor (its own size); for a DTensor the whole param's size when its
    blocks follow its shards at every number of ranks, else 0 (float32 moments)."""
    if not is_dtensor(p):
        return None
    return p.numel() if scale_rows(p.shape) is not None and _row_sharded(p) else 0


#: The state dict entry (a 1-element tensor) of a DTensor param that keeps float32 moments
#: where a plain param of its shape keeps 8-bit codes and scales (``differs_from_plain``).
#: A one-process checkpoint lacks it, so DCP's default planner stops at it ("Missing key")
#: before copying that checkpoint's codes into the float32 moments as numbers. It is never
#: in ``opt.state``: ``state_dict()`` adds it and ``load_state_dict`` drops it.
FLOAT32_MOMENTS_KEY = "dtensor_float32_moments"


def differs_from_plain(p, option):
    """Whether DTensor ``p`` keeps float32 moments under ``state_dtype=option`` where a
    plain param of its shape keeps 8-bit ones (a 1-d param of ``Q8_MIN_SIZE`` elements or
    more, rows that are not whole blocks)."""
    if not is_dtensor(p) or option not in _precision.Q8_CODE_DTYPES:
        return False
    # the size rule of each layout, for the moments (float32 whatever the param's dtype)
    rule = _precision.state_dtype
    plain = rule(_precision.FLOAT32, option, "", p.numel())
    return _precision.is_q8(plain) and not _precision.is_q8(
        rule(_precision.FLOAT32, option, "", q8_size(p))
    )


def is_scale(name):
    return name.endswith(_precision.SCALE_SUFFIX)


def state_tensor(p, name, tensor, counters):
    """A state tensor for ``opt.state[p]``: for a DTensor param, a DTensor of its mesh and
    placements over ``tensor`` (the kernel's memory, not copied) when ``tensor`` is shaped
    like the local shard, or holds its 8-bit scales (shaped ``(rows, scales per row)``);
    counters and other shapes stay plain tensors."""
    if name in counters or not is_dtensor(p):
        return tensor
    if is_scale(name) and tensor.dim() == 1:
        per_row = scale_rows(p.shape)
        rows = p._local_tensor.shape[0]
        if per_row is None or tensor.numel() != rows * per_row:
            return tensor
        return type(p).from_local(
            tensor.view(rows, per_row), p.device_mesh, p.placements, run_check=False,
            shape=(p.shape[0], per_row), stride=(per_row, 1),
        )  # fmt: skip
    if tensor.shape != p._local_tensor.shape:
        return tensor
    return type(p).from_local(
        tensor, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def saved_scales(p, tensor):
    """The 8-bit scales of a plain param as its state dict holds them: shaped ``(rows,
    scales per row)`` when the param's rows are whole blocks (a view, the same memory),
    as an FSDP2 run keeps them, so that a checkpoint moves between the two."""
    per_row = scale_rows(p.shape)
    if per_row is None or tensor.dim() != 1 or tensor.numel() != p.shape[0] * per_row:
        return tensor
    return tensor.view(p.shape[0], per_row)


def localize(p, name, value):
    """A loaded state tensor for param ``p`` as this rank's local shard (a plain tensor).

    A DTensor is redistributed to the param's placements first (a checkpoint resharded by
    ``torch.distributed.checkpoint`` already has them); a plain tensor shaped like the whole
    param (a state dict saved without sharding) is cut to this rank's shard, locally; so are
    8-bit scales saved whole, in either shape (one row per param row, or flat).
    """
    if not is_dtensor(p) or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if is_dtensor(value):
        if value.device_mesh != p.device_mesh:
            raise ValueError(
                f"state_dict: {name} is a DTensor on {value.device_mesh}, the param on "
                f"{p.device_mesh}; load it through torch.distributed.checkpoint, which reshards"
            )
        if tuple(value.placements) != tuple(p.placements):
            if value.dtype in (torch.int16, torch.int8):
                # A master_residual (int16: "residual", int8: "compact"): gloo and NCCL
                # have no 16-bit integer collectives; int32 holds every value exactly.
                dtype = value.dtype
                value = value.to(torch.int32).redistribute(p.device_mesh, p.placements)
                return value.to_local().to(dtype)
            value = value.redistribute(p.device_mesh, p.placements)
        return value.to_local()
    full, mine = p.shape, p._local_tensor.shape
    per_row = scale_rows(p.shape)
    if is_scale(name) and per_row is not None and value.numel() == p.shape[0] * per_row:
        full, mine = (p.shape[0], per_row), (mine[0], per_row)
        value = value.reshape(full)
    if value.shape == full and value.shape != mine:
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
        return value.to_local()
    return value


def _sumsqs(grads):
    """The gradients' squared 2-norms as floats: each norm accumulated in float32 (one
    vectorized pass over all of them; float64 norms cost 6x more), again in float64 only
    where that overflowed or met a NaN/inf, so a huge finite gradient is not taken for one."""
    if not grads:
        return []
    norms = torch.stack(
        [n.float() for n in torch._foreach_norm(grads, 2, dtype=torch.float32)]
    ).double()
    if not bool(torch.isfinite(norms).all()):
        for i in torch.nonzero(~torch.isfinite(norms)).flatten().tolist():
            norms[i] = torch.linalg.vector_norm(grads[i], dtype=torch.float64)
    return norms.square().tolist()


def _shard_dims(p):
    """The mesh dims a DTensor param is sharded over (its norm's reduction dims)."""
    from torch.distributed.tensor import Replicate, Shard

    dims = []
    for d, placement in enumerate(p.placements):
        if isinstance(placement, Shard):
            dims.append(d)
        elif not isinstance(placement, Replicate):
            raise ValueError(
                f"fusedadam.torch steps DTensor params placed with Shard or Replicate, not "
                f"{placement}"
            )
    return tuple(dims)


class Plan:
    """Per optimizer: which params are DTensors, and the global checks of a step."""

    def __init__(self, opt):
        self.groups = []  # per torch group: [(param, reduction key or None)]
        self.locals = {}  # id(param) -> its local tensor when the views were made
        self.keys = {}  # reduction key -> (mesh, dims)
        for group in opt.param_groups:
            members = []
            for p in group["params"]:
                if is_dtensor(p):
                    dims = _shard_dims(p)
                    key = (id(p.device_mesh), dims) if dims else None
                    if key is not None:
                        self.keys[key] = (p.device_mesh, dims)
                    self.locals[id(p)] = p._local_tensor
                    members.append((p, key))
                else:
                    members.append((p, None))
            self.groups.append((group, members))
        self.scales = {}  # id(inner group) -> its one-element grad_scale array
        self.norms = None

    def moved(self):
        """Whether a DTensor param's local shard was replaced (FSDP2 re-pads it after
        ``load_state_dict(assign=True)`` or ``module.to()``): the views must be rebuilt."""
        return any(
            p._local_tensor is not self.locals.get(id(p), p._local_tensor)
            for _, members in self.groups
            for p, _ in members
            if id(p) in self.locals
        )

    def before_step(self, opt, grad_scale):
        """Global norms and the non-finite decision of this step; returns the grad_scale to
        hand the kernel (None when the groups carry it), or SKIP."""
        wanted = [
            g.get("max_grad_norm") is not None or g.get("nonfinite", "error") != "ignore"
            for g, _ in self.groups
        ]
        if not any(wanted):
            self.norms = None
            self._release(opt)
            return grad_scale
        n = len(self.groups)
        grads, slots = [], []  # local gradients, and (reduction key, group index) of each
        for gi, (_, members) in enumerate(self.groups):
            if not wanted[gi]:
                continue
            for p, key in members:
                g = p.grad
                if g is None:
                    continue
                if is_dtensor(p):
                    if not is_dtensor(g) or tuple(g.placements) != tuple(p.placements):
                        raise ValueError(
                            f"param_groups[{gi}]: a DTensor param placed {p.placements} has a "
                            f"gradient placed {getattr(g, 'placements', 'as a plain tensor')}; "
                            "it must match the param's (reduce it first)"
                        )
                    g = g._local_tensor
                if g.numel():
                    grads.append(g)
                    slots.append((key, gi))
        sums = {key: [0.0] * n for key in self.keys}
        plain = [0.0] * n
        for (key, gi), sq in zip(slots, _sumsqs(grads)):
            (plain if key is None else sums[key])[gi] += sq
        import torch.distributed as dist

        total = torch.tensor(plain, dtype=torch.float64)
        for key, (mesh, dims) in self.keys.items():
            part = torch.tensor(sums[key], dtype=torch.float64)
            dims = [d for d in dims if mesh.size(d) > 1]
            if dims and mesh.device_type != "cpu":
                part = part.to(mesh.device_type)  # e.g. an NCCL mesh (FSDP2 CPU offload)
            for d in dims:
                dist.all_reduce(part, group=mesh.get_group(d))
            total = total + part.cpu()
        total = total.tolist()
        scale = 1.0 if grad_scale is None else float(grad_scale)
        for gi, (group, _) in enumerate(self.groups):
            if wanted[gi] and not math.isfinite(total[gi]):
                policy = group.get("nonfinite", "error")
                if policy == "error":
                    raise FloatingPointError(
                        f"param_groups[{gi}]: a gradient holds NaN or inf on this or another "
                        "rank (the group's squared norm over the mesh is "
                        f"{total[gi]}); nothing was changed"
                    )
                if policy == "skip":
                    return SKIP
        coefficients = {}
        norms = []
        for gi, (group, _) in enumerate(self.groups):
            max_norm = group.get("max_grad_norm")
            if max_norm is None or not wanted[gi]:
                norms.append(None)
                continue
            norm = math.sqrt(total[gi]) / scale
            norms.append(norm)
            if math.isfinite(norm):
                coefficients[id(group)] = min(1.0, max_norm / (norm + 1e-6))
        self.norms = norms
        # Checked here over the mesh: the kernel's own scan for NaN/inf would be a second
        # read of every gradient, so those groups step with nonfinite="ignore".
        checked = {
            id(group)
            for gi, (group, _) in enumerate(self.groups)
            if wanted[gi] and math.isfinite(total[gi])
        }
        for inner, group, *_ in opt._parts:
            if id(group) in checked and inner.get("nonfinite") != "ignore":
                inner["nonfinite"] = "ignore"
        if not any(g.get("max_grad_norm") is not None for g, _ in self.groups):
            self._release(opt)
            return grad_scale
        # Every inner group carries its own scale: the step's scale over the group's clipping
        # coefficient, so one pass unscales and clips (its own, per-shard clipping is off).
        for inner, group, *_ in opt._parts:
            array = self.scales.get(id(inner))
            if array is None or inner.get("grad_scale") is not array:
                array = self.scales[id(inner)] = np.ones(1)
                inner["grad_scale"] = array
            inner["max_grad_norm"] = None
            array[0] = scale / coefficients.get(id(group), 1.0)
        return None

    def _release(self, opt):
        """Clipping was switched off (``max_grad_norm`` set to None): the inner groups get
        their plain gradient scale back."""
        if not self.scales:
            return
        for inner, *_ in opt._parts:
            if inner.get("grad_scale") is self.scales.get(id(inner)):
                inner["grad_scale"] = 1.0
        self.scales = {}

    def last_grad_norm(self):
        norms = self.norms if self.norms is not None else [None] * len(self.groups)
        return norms[0] if len(norms) == 1 else list(norms)
