"""The step engine where the compiled extension is not built: the twin of ``_kernels.Engine``.

The same per-step rules in the same order (plans that fit, or the outcome that asks the
caller for new ones; the step number from the per-param counters; ``lr(t)`` called once and
checked; ``reference.step_scalars``; gradients checked; the non-finite policy; the step
counted once per distinct counter), with ``reference.py`` doing the array work. Tests run
both engines on the same optimizer and compare every decision (``last_step``).
"""

import functools
from typing import Any

import numpy as np

from fusedadam import _constants, _precision, _validation, reference
from fusedadam.engine import _rules
from fusedadam.engine._policy import NonFinitePolicy, Outcome, needs_scan, nonfinite_outcome

__all__ = ["Engine", "GroupPlan"]

_STATE0 = 2
_MISSING = object()


class GroupPlan:
    """A validated group (see ``_kernels.GroupPlan``), always run by the NumPy reference."""

    def __init__(self, spec):
        self.group = spec.group
        self.params = spec.group["params"]
        self.state_names = tuple(spec.state_names)
        self.installs = spec.installs or None
        self.first_index = spec.first_index
        self.slots = spec.slots
        self.masters = spec.masters
        self.scales, self.qsigned = spec.scales, spec.qsigned
        self.state_dtype = spec.hyper_spec.state_dtype
        self.master = spec.hyper_spec.master
        self.last_grad_norm = None
        self.state_dicts = spec.state_dicts
        self.step_arrays = spec.step_arrays
        self.mu_arrays = spec.mu_arrays
        self.carry_names = spec.carry_names
        self.written_lo, self.written_hi = spec.written
        self.numpy_backend = True
        self.grads = None
        # The dtype each array was validated with; the arrays are re-checked every step
        # against it (this plan remembers no addresses).
        self.dtypes = [
            {name: a.dtype for name, a in self._named_state(k)} for k in range(len(self.slots[0]))
        ]
        self.snapshot_state()
        self.set_hyper(spec.hyper_spec)

    def _named_state(self, k):
        """``(name, array)`` of every state array of param ``k`` the step writes."""
        named = [(name, self.slots[_STATE0 + i][k]) for i, name in enumerate(self.state_names)]
        for i, name in enumerate(self.state_names):
            if self.scales[i][k] is not None:
                named.append((_precision.scale_name(name), self.scales[i][k]))
        if self.masters[k] is not None:
            named.append((_precision.MASTER, self.masters[k]))
        return named

    def set_hyper(self, spec):
        self.keys, self.values, self.hyper = spec.keys, spec.values, spec.hyper
        self.lr, self.num_threads, self.nonfinite = spec.lr, spec.num_threads, spec.nonfinite
        self.grad_scale, self.max_grad_norm = spec.grad_scale, spec.max_grad_norm
        self.scans = needs_scan(spec.nonfinite, spec.max_grad_norm is not None)

    def hyper_fits(self):
        return all(self.group.get(k, _MISSING) is v for k, v in zip(self.keys, self.values))

    def snapshot_state(self):
        """Remember every entry of every param's state dict (keys and objects, in order)."""
        self.state_entries = [(tuple(st), tuple(st.values())) for st in self.state_dicts]

    def arrays_fit(self):
        """The group's params and every state entry the user sees are the planned objects
        (the arrays themselves are checked again by ``prepare``)."""
        params = self.slots[0]
        if self.group.get("params") is not self.params or len(self.params) != len(params):
            return False
        for k, p in enumerate(params):
            if self.params[k] is not p:
                return False
            keys, values = self.state_entries[k]
            st = self.state_dicts[k]
            if len(st) != len(keys) or any(
                st.get(key, _MISSING) is not value for key, value in zip(keys, values)
            ):
                return False
        return True

    def prepare(self, grads, offset, grad_scale):
        """The scalars, gradient scale and checked gradients of this step; writes nothing."""
        params = self.slots[0]
        steps = {int(s) for s in self.step_arrays}
        mus = (
            {tuple(float(m) for m in per_param) for per_param in self.mu_arrays}
            if self.mu_arrays
            else {(1.0,)}
        )
        if len(steps) > 1 or len(mus) > 1:
            return False
        t = (steps.pop() if steps else 0) + 1
        if not 1 <= t < _validation.MAX_STEP:
            raise ValueError(
                f"step of params[{self.first_index}] is {t - 1}; step counts "
                "run from 0 to below 2**53 (the step number is a float64)"
            )
        lr = _rules.learning_rate(self.lr, t)
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
            _validation.check_step_array(self.step_arrays[k], f"step of {pname}", np.int64)
            if self.mu_arrays is not None:
                for name, mu in zip(self.carry_names, self.mu_arrays[k]):
                    _validation.check_step_array(mu, f"{name} of {pname}", np.float64)
            for name, a in self._named_state(k):
                _validation.check_state_array(
                    a, f"{name} of {pname}", p, pname, self.dtypes[k][name],
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
        _rules.count(self.step_arrays, self.mu_arrays, getattr(self, "mu_after", None))

    def last_step(self):
        return self.kind, dict(self.scalars), self.n_threads


class Engine:
    """The twin of ``_kernels.Engine`` (see there for the outcomes)."""

    def __init__(self):
        self.plans: Any = None  # list of GroupPlan, or None: Outcome.PLAN at the next step
        self.groups: Any = None
        self.norms: list = [None]
        self.stale: list = []

    def invalidate(self):
        self.plans = None

    def set_plans(self, groups, plans):
        self.plans, self.groups = list(plans), groups
        self.n_params = sum(len(p.slots[0]) for p in self.plans)
        if len(self.norms) != len(self.plans):
            self.norms = [None] * len(self.plans)

    def set_hyper(self, gi, spec):
        self.plans[gi].set_hyper(spec)

    def stale_groups(self):
        return list(self.stale)

    def snapshot(self):
        for plan in self.plans or ():
            if plan.installs is not None:
                plan.installs = None
                plan.snapshot_state()

    @staticmethod
    def new_plan(spec):
        return GroupPlan(spec)

    def grad_norms(self):
        return list(self.norms)

    def set_grad_norms(self, norms):
        self.norms = list(norms)

    def _fit(self):
        groups = self.groups if self.plans is not None else None
        if (
            groups is None
            or not isinstance(groups, list)
            or len(groups) != len(self.plans)
            or any(g is not p.group or not p.arrays_fit() for g, p in zip(groups, self.plans))
        ):
            return Outcome.PLAN
        self.stale = [gi for gi, plan in enumerate(self.plans) if not plan.hyper_fits()]
        return Outcome.HYPER if self.stale else Outcome.RAN

    def step(self, grads, grad_scale=None):
        fit = self._fit()
        if fit != Outcome.RAN:
            return fit
        grads = _validation.as_grad_list(grads, self.n_params)
        try:
            offset = 0
            for plan in self.plans:
                if not plan.prepare(grads, offset, grad_scale):
                    self.plans = None  # the caller's checks name the params
                    return Outcome.PLAN
                offset += len(plan.slots[0])
            outcome = Outcome.RAN
            for plan in self.plans:
                if plan.scans:
                    found = plan.scan(_constants.POOL_GRAIN)  # the chunks order the norm's sum
                    if found >= 0 and plan.nonfinite != NonFinitePolicy.IGNORE:
                        error = functools.partial(self._error, plan, found)
                        outcome = nonfinite_outcome(plan.nonfinite, error)
            for gi, plan in enumerate(self.plans):
                plan.note_norm()
                self.norms[gi] = plan.last_grad_norm
            if outcome == Outcome.SKIPPED:
                return outcome
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
                    plan.hyper,
                )
                plan.count()
                if plan.installs is not None:
                    outcome = Outcome.RAN_NEW_STATE
            return outcome
        finally:
            for plan in self.plans or ():
                plan.grads = None

    @staticmethod
    def _error(plan, found):
        sizes = np.cumsum([0] + [g.size for g in plan.grads])
        k = int(np.searchsorted(sizes, found, side="right")) - 1
        return _validation.nonfinite_error(plan.grads, plan.first_index, k, found - int(sizes[k]))
