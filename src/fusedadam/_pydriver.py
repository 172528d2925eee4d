"""The step driver where the compiled extension is not built: the twin of ``_kernels.Driver``.

The same per-step rules in the same order (plans that fit or are rebuilt through
validation; the step number from the per-param counters; ``lr(t)`` called once and
checked; ``reference.step_scalars``; gradients checked; the non-finite policy; the step
counted once per distinct counter), with ``reference.py`` doing the array work. Tests run
both drivers on the same optimizer and compare every decision (``last_step``).
"""

from typing import Any

import numpy as np

from fusedadam import _precision, _validation, reference

__all__ = ["Driver", "GroupPlan"]

_STATE0 = 2
_MISSING = object()
_GRAIN = 16384  # FA_POOL_GRAIN: elements per chunk, which orders the norm's sum


class GroupPlan:
    """A validated group (see ``_kernels.GroupPlan``), always run by the NumPy reference."""

    def __init__(self, spec, state_dtypes):
        self.state_dtypes = state_dtypes  # the optimizer's _state_dtypes(p, option, pname)
        self.group = spec.group
        self.params = spec.group["params"]
        self.state_names = tuple(spec.state_names)
        self.installs = spec.installs or None
        self.first_index = spec.first_index
        self.slots = spec.slots
        self.masters = spec.masters
        self.scales, self.qsigned = spec.scales, spec.qsigned
        self.state_dtype = spec.hyper_spec.state_dtype
        self.last_grad_norm = None
        self.state_dicts = spec.state_dicts
        self.step_arrays = spec.step_arrays
        self.mu_arrays = spec.mu_arrays
        self.written_lo, self.written_hi = spec.written
        self.numpy_backend = True
        self.grads = None
        self.set_hyper(spec.hyper_spec)

    def set_hyper(self, spec):
        self.keys, self.values, self.hyper = spec.keys, spec.values, spec.hyper
        self.lr, self.num_threads, self.nonfinite = spec.lr, spec.num_threads, spec.nonfinite
        self.grad_scale, self.max_grad_norm = spec.grad_scale, spec.max_grad_norm

    def hyper_fits(self):
        return all(self.group.get(k, _MISSING) is v for k, v in zip(self.keys, self.values))

    def arrays_fit(self):
        params = self.slots[0]
        if self.group.get("params") is not self.params or len(self.params) != len(params):
            return False
        for k, p in enumerate(params):
            if self.params[k] is not p:
                return False
            st = self.state_dicts[k]
            for i, name in enumerate(self.state_names):
                if st.get(name, _MISSING) is not self.slots[_STATE0 + i][k]:
                    return False
                scale = self.scales[i][k]
                if scale is not None and st.get(_precision.scale_name(name), _MISSING) is not scale:
                    return False
            if st.get("step", _MISSING) is not self.step_arrays[k]:
                return False
            if self.masters[k] is not None and st.get("master_param") is not self.masters[k]:
                return False
            if self.mu_arrays is not None and st.get("mu_product") is not self.mu_arrays[k]:
                return False
        return True

    def prepare(self, grads, offset, grad_scale):
        """The scalars, gradient scale and checked gradients of this step; writes nothing."""
        params = self.slots[0]
        steps = {int(s) for s in self.step_arrays}
        mus = {float(m) for m in self.mu_arrays} if self.mu_arrays is not None else {1.0}
        if len(steps) > 1 or len(mus) > 1:
            return False
        t = (steps.pop() if steps else 0) + 1
        if not 1 <= t < _validation.MAX_STEP:
            raise ValueError(
                f"step of params[{self.first_index}] is {t - 1}; step counts "
                "run from 0 to below 2**53 (the step number is a float64)"
            )
        lr = self.lr
        if callable(lr):
            value = lr(t)
            lr = (
                value
                if type(value) is float and np.isfinite(value) and value >= 0.0
                else _validation.check_lr(value, f"lr({t}) returned: ")
            )
        scale = self.grad_scale if grad_scale is None else grad_scale
        self.scale = (
            scale
            if type(scale) is float and np.isfinite(scale) and scale > 0.0
            else _validation.grad_scale_value(scale, t)
        )
        self.clip = 1.0
        # The arrays are re-checked every step (the plan remembers no addresses).
        _validation.check_params(params, self.first_index)
        for k, p in enumerate(params):
            pname = f"params[{self.first_index + k}]"
            dtypes = self.state_dtypes(p, self.state_dtype, pname)
            named = [(name, self.slots[_STATE0 + i][k]) for i, name in enumerate(self.state_names)]
            for i, name in enumerate(self.state_names):
                if self.scales[i][k] is not None:
                    named.append((_precision.scale_name(name), self.scales[i][k]))
            if self.masters[k] is not None:
                named.append(("master_param", self.masters[k]))
            for name, a in named:
                _validation.check_state_array(
                    a, f"{name} of {pname}", p, pname, dtypes.get(name),
                    _precision.state_shape(name, p),
                )  # fmt: skip
        self.kind, self.scalars, self.mu_after = reference.step_scalars(
            self.hyper, t, lr, mus.pop()
        )
        self.n_threads = 1
        self.grads = _validation.check_grads(
            grads[offset : offset + len(params)],
            params,
            self.written_lo,
            self.written_hi,
            self.first_index,
        )
        return True

    def scan(self, grain):
        """First non-finite unscaled gradient value (or -1); sets this step's clipping."""
        want_norm = self.max_grad_norm is not None
        found, sumsq = reference.scan(self.grads, self.scale, want_norm, grain)
        if want_norm:
            self.clip, self.norm = reference.clip_coefficient(sumsq, self.scale, self.max_grad_norm)
        return found

    def note_norm(self):
        self.last_grad_norm = self.norm if self.max_grad_norm is not None else None

    def count(self):
        for k, step in enumerate(self.step_arrays):
            if all(step is not other for other in self.step_arrays[:k]):
                step[...] += 1
            if self.mu_arrays is not None:
                self.mu_arrays[k][...] = self.mu_after

    def last_step(self):
        return self.kind, dict(self.scalars), self.n_threads


class Driver:
    """The twin of ``_kernels.Driver`` (see there for the optimizer's hooks)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.plans: Any = None  # list of GroupPlan, or None: plan at the next step
        self.groups: Any = None
        self.norms: list = [None]

    def invalidate(self):
        self.plans = None

    def new_plan(self, spec):
        return GroupPlan(spec, self.optimizer._state_dtypes)

    def grad_norms(self):
        return list(self.norms)

    def set_grad_norms(self, norms):
        self.norms = list(norms)

    def _replan(self):
        self.plans = None
        plans = self.optimizer._plan_groups()
        self.groups = self.optimizer.param_groups
        self.n_params = sum(len(p.slots[0]) for p in plans)
        self.plans = plans
        if len(self.norms) != len(plans):
            self.norms = [None] * len(plans)

    def _fit(self):
        groups = self.groups if self.plans is not None else None
        if (
            groups is None
            or not isinstance(groups, list)
            or len(groups) != len(self.plans)
            or any(g is not p.group or not p.arrays_fit() for g, p in zip(groups, self.plans))
        ):
            self._replan()
            return
        for gi, plan in enumerate(self.plans):
            if not plan.hyper_fits():
                spec = self.optimizer._check_hyper(gi)
                if spec.state_names != plan.state_names or spec.state_dtype != plan.state_dtype:
                    self._replan()
                    return
                plan.set_hyper(spec)

    def step(self, grads, grad_scale=None):
        self._fit()
        grads = self.optimizer._grad_list(grads, self.n_params)
        try:
            offset = 0
            for plan in self.plans:
                if not plan.prepare(grads, offset, grad_scale):
                    self._replan()
                    raise RuntimeError("fusedadam internal error: steps disagree after planning")
                offset += len(plan.slots[0])
            skip = False
            for plan in self.plans:
                if plan.nonfinite != 2 or plan.max_grad_norm is not None:
                    found = plan.scan(_GRAIN)
                    if found >= 0 and plan.nonfinite != 2:
                        if plan.nonfinite == 0:
                            sizes = np.cumsum([0] + [g.size for g in plan.grads])
                            k = int(np.searchsorted(sizes, found, side="right")) - 1
                            raise self.optimizer._nonfinite_error(
                                plan, plan.grads, k, found - int(sizes[k])
                            )
                        skip = True
            for gi, plan in enumerate(self.plans):
                plan.note_norm()
                self.norms[gi] = plan.last_grad_norm
            if skip:
                self.optimizer.skipped_steps += 1
                return 1
            for plan in self.plans:
                reference.run(
                    plan.kind,
                    plan.slots,
                    plan.grads,
                    plan.scalars,
                    plan.masters,
                    plan.scale,
                    plan.clip,
                    plan.scales,
                    plan.qsigned,
                )
                if plan.installs is not None:
                    self.optimizer._install(plan.installs)
                    plan.installs = None
                plan.count()
            return 0
        finally:
            for plan in self.plans or ():
                plan.grads = None
