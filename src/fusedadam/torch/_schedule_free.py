"""Schedule-Free AdamW and RAdam for torch: train/eval modes and the group counters.

The package keeps ``k``, ``lr_max`` and ``weight_sum`` per group and counts every step for
every group; torch keeps state per param and skips a param whose grad is None. The classes
here keep the two in step: a param's first step joins its group's counters, and after a
step the params that skipped it follow the group's.
"""

import itertools
import operator
from typing import Any, Dict

import numpy as np
import torch

from fusedadam import _algorithms, _dtensor, _schedule_free, reference
from fusedadam.engine._plan import fresh_state, state_dtypes
from fusedadam.torch import _bridge
from fusedadam.torch._optimizer import Optimizer


class ScheduleFree(Optimizer):
    """Base of the Schedule-Free classes: train/eval modes and the group counters."""

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
            any(
                map(
                    operator.is_,
                    map(operator.attrgetter("grad"), group["params"]),
                    itertools.repeat(None),
                )
            )
            for group in self.param_groups
        )
        check = missing or self.__dict__.get("_partial", True) or not self._fits()
        joined = self._join_group_counters() if check else []
        skipped = self._skipped
        try:
            super()._step(None, grad_scale, found_inf)
        except BaseException:
            state_map = self.__dict__["state"]
            for p in joined:  # the state made for this step goes with it
                state_map.pop(p, None)
            raise
        if check and self._skipped == skipped:
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
        algorithm = self.algorithm
        joined = []
        for group, members, entries, lead in self._groups_with_counters():
            if lead is None or int(lead["step"]) == 0:
                continue
            for k, (p, st) in enumerate(zip(members, entries)):
                if st or p.grad is None or p.device.type == "meta":
                    continue
                view = _bridge.numpy_view(_dtensor.local(p).detach().contiguous())
                # a DTensor's 8-bit rule is decided on the whole param, as the plans decide it
                dtypes = state_dtypes(
                    algorithm, view, group.get("state_dtype"), f"params[{k}]",
                    group.get("master", "float32"), size=_dtensor.q8_size(p),
                )  # fmt: skip
                fresh = fresh_state(algorithm, algorithm.slot_names(group), view, dtypes)
                # (a DTensor param's are DTensors over this memory, as the plans make them)
                state = {
                    name: self._state_tensor(p, name, np.ascontiguousarray(a))
                    for name, a in fresh.items()
                }
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
        algorithm = self.algorithm
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
                hyper = _algorithms.hyper_dict(
                    algorithm, {**group, "betas": _bridge.plain_betas(group["betas"])}
                )
                carry = (float(lead["lr_max"]), float(lead["weight_sum"]))
                _, _, after = reference.step_scalars(
                    hyper, t, _bridge.lr_value(group["lr"], ""), carry
                )
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
            weight = _schedule_free.mode_weight(_bridge.plain_betas(group["betas"]), train, where)
            for p in self._members(group):
                st = dict.get(state_map, p)
                if not st or "z" not in st:
                    continue
                views = {
                    key: _bridge.numpy_view(value)
                    for key, value in st.items()
                    if key in ("z", "z_absmax", "master_param") and isinstance(value, torch.Tensor)
                }
                writes.append(_schedule_free.move(_bridge.numpy_view(p), views, weight))
                moved.append(p)
        for write in writes:
            write()
        if moved:
            _bridge.bump(moved)
        for group in self.param_groups:
            group["train_mode"] = train
