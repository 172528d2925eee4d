"""How the torch front end plans: torch's groups and ``opt.state`` as the engine's plans.

Per torch group, the params that have a grad, in parts of equal step count (torch keeps a
step per param and skips a param without a grad; the engine steps a group at one step).
Each part is an engine group (the registry's defaults, the torch group's values, NumPy
views of its params) planned through ``engine._plan`` over NumPy views of the state
tensors; the plans watch torch's own state dicts. State a first step creates is attached
to ``opt.state`` as tensor views of the engine's arrays when the step commits.
"""

import math
import operator
from typing import Dict, List, Tuple

import numpy as np
import torch

from fusedadam import _dtensor, _validation
from fusedadam.engine import Positions
from fusedadam.engine._plan import group_spec, hyper_spec
from fusedadam.torch import _bridge

_DATA_PTR = torch.Tensor.data_ptr
# The steady state keeps its grads' views for the next step while the params hold at most
# this many elements: the views keep the grads alive (one set of grads more, at most 8 MiB).
_CACHED_GRAD_ELEMENTS = 1 << 20


class Plans:
    """The planning half of :class:`fusedadam.torch.Optimizer`."""

    def _engine_group(self, group, views):
        """The engine's group dict for some of a torch group's params (their views)."""
        engine_group = dict(self._numpy_defaults)
        engine_group.update(zip(self._keys, self._plain(self._getter(group))))
        engine_group["params"] = views
        return engine_group

    def _plain(self, values):
        return tuple(
            _bridge.plain_betas(v) if k == "betas" else _bridge.lr_value(v, "") if k == "lr" else v
            for k, v in zip(self._keys, values)
        )

    def _plan(self, mask):
        """Plan, per torch group, its params that have a grad, in parts of equal step."""
        state_map = self.__dict__["state"]
        self._mask = False  # until the plans are made: a failed plan is made again
        self._engine.invalidate()
        parts = []  # [engine group, torch group, values pushed, volatile, gi, positions]
        for gi, g in enumerate(self.param_groups):
            buckets: Dict[int, List[int]] = {}
            for i in range(len(self._params)):
                if self._owner[i] == gi and (mask is None or mask[i]):
                    st = dict.get(state_map, self._params[i])
                    step = st.get("step") if isinstance(st, dict) else None
                    bucket = int(step) if isinstance(step, (torch.Tensor, int, float)) else 0
                    buckets.setdefault(bucket, []).append(i)
            for step in sorted(buckets):
                group = self._engine_group(g, [self._views[i] for i in buckets[step]])
                parts.append([group, g, None, False, gi, buckets[step]])
        aside = self._torch_parallel and (
            sum(self._params[i].numel() for part in parts for i in part[5]) < _bridge.STEP_ASIDE
        )
        for part in parts:
            part[2], part[3] = self._getter(part[1]), self._volatile(part[1])
            if aside and part[0]["num_threads"] is None:
                part[0]["num_threads"] = 1  # (see _bridge.STEP_ASIDE)
        self._aside = aside
        self._parts = parts
        order = [i for part in parts for i in part[5]]
        self._order = None if order == list(range(len(self._params))) else order
        self._stepped = [self._params[i] for i in order]
        by_view = {id(self._views[i]): self._params[i] for part in parts for i in part[5]}
        self._split_clip = [
            (gi, [k for k, part in enumerate(parts) if part[4] == gi])
            for gi in sorted({part[4] for part in parts})
            if sum(part[4] == gi for part in parts) > 1
            and self.param_groups[gi].get("max_grad_norm") is not None
        ]
        self._norms = {}
        specs = []
        named: List[Tuple[str, np.ndarray]] = []
        numpy_state = {}
        # A DTensor's 8-bit rule is decided on the whole param (_dtensor.q8_size).
        q8_sizes = {id(self._views[i]): self._q8_sizes[i] for i in range(len(self._params))}
        for part in parts:
            for i in part[5]:
                numpy_state[id(self._views[i])] = self._numpy_state(i, state_map)
        for group, _, _, _, gi, positions in parts:
            hyper = hyper_spec(self.algorithm, group, self._numpy_defaults, f"param_groups[{gi}]: ")
            spec = group_spec(
                self.algorithm, gi, group, hyper, Positions(positions), named,
                lambda view: numpy_state[id(view)], lambda view: (),
                lambda view: q8_sizes.get(id(view)),
            )  # fmt: skip
            specs.append(self._own_counters(spec, by_view, state_map))
        written = _validation.written_intervals(named)
        self._engine.set_plans(
            [part[0] for part in parts],
            [self._engine.new_plan(spec._replace(written=written)) for spec in specs],
        )
        self._installs = []
        for spec in specs:
            dicts = {id(v): st for v, st in zip(spec.params, spec.state_dicts)}
            self._installs += [(by_view[id(v)], dicts[id(v)], e) for v, _, e in spec.installs]
        self._watched = tuple(state_map.values())
        self._mask = mask

    def _numpy_state(self, i, state_map):
        """Param ``i``'s state as the engine reads it: NumPy views of its known tensors
        (a counter that is not an int64/float64 0-d tensor as its number)."""
        st = dict.get(state_map, self._params[i])
        if st is None or not st:
            return st
        if not isinstance(st, dict):
            raise TypeError(f"opt.state of params[{i}] must be a dict, got {type(st).__name__}")
        entries = {}
        for key, value in st.items():
            if key not in self._known_state:
                continue  # a user's or a library's entry: kept, not the step's
            if key in self._counters:
                array, new = _bridge.counter(
                    value, np.int64 if key == "step" else np.float64,
                    f"opt.state of params[{i}]", key,
                )  # fmt: skip
                entries[key] = array.item() if new else array
            elif isinstance(value, torch.Tensor):
                _bridge.check_tensor(value, f"opt.state of params[{i}]['{key}']", "state tensor")
                entries[key] = _bridge.numpy_view(value)
                if value.dim() == 2 and _dtensor.is_scale(key):
                    # a DTensor's 8-bit scales, one row per param row: the kernel's flat
                    # array (contiguous: a view)
                    entries[key] = entries[key].reshape(-1)
            else:
                entries[key] = value
        return entries

    def _own_counters(self, spec, by_view, state_map):
        """The spec with torch's dicts as the state the plan watches, and each new param's
        own counters (the engine gives a group's new params one: torch keeps one per param,
        since a param without a grad skips steps)."""
        fresh = {}
        for view, _, entries in spec.installs:
            for name in self._counters:
                if name in entries:
                    entries[name] = entries[name].copy()
            fresh[id(view)] = entries
        steps, mus, dicts = [], [], []
        for k, view in enumerate(spec.params):
            entries = fresh.get(id(view), {})
            steps.append(entries.get("step", spec.step_arrays[k]))
            if spec.mu_arrays is not None:
                mus.append(
                    tuple(entries.get(n, a) for n, a in zip(self._counters[1:], spec.mu_arrays[k]))
                )
            st = dict.get(state_map, by_view[id(view)])
            dicts.append(st if st is not None else {})
        return spec._replace(
            step_arrays=tuple(steps),
            mu_arrays=tuple(mus) if spec.mu_arrays is not None else None,
            state_dicts=tuple(dicts),
        )

    def _install(self):
        """Attach the state a committed step created to ``opt.state`` (tensor views of the
        arrays the engine wrote), in the dicts the plans watch."""
        state_map = self.__dict__["state"]
        for p, st, entries in self._installs:
            if dict.get(state_map, p) is not st:
                dict.__setitem__(state_map, p, st)
            for name, array in entries.items():
                st[name] = self._state_tensor(p, name, array)
        self._installs = []
        self._watched = tuple(state_map.values())

    def _state_tensor(self, p, name, array):
        """``opt.state`` tensor over a state array (same memory): a DTensor like ``p`` for
        a DTensor param's tensors shaped like its shard."""
        return _dtensor.state_tensor(p, name, _bridge.tensor_view(array), self._counters)

    @staticmethod
    def _volatile(group):
        lr, betas = group.get("lr"), group.get("betas")
        return isinstance(lr, torch.Tensor) or (
            isinstance(betas, (tuple, list)) and any(isinstance(b, torch.Tensor) for b in betas)
        )

    def _push_hyper(self, part, values):
        """Copy a torch group's hyperparameters into its engine group (the engine then
        validates them again: Outcome.HYPER)."""
        part[0].update(zip(self._keys, self._plain(values)))
        if self._aside and part[0]["num_threads"] is None:
            part[0]["num_threads"] = 1  # (see _bridge.STEP_ASIDE)
        part[2] = values

    def _refresh_hyper(self):
        """Validate the parts whose hyperparameters changed; plan again if their state
        layout changed with them."""
        for k in self._engine.stale_groups():
            group, _, _, _, gi, _ = self._parts[k]
            spec = hyper_spec(self.algorithm, group, self._numpy_defaults, f"param_groups[{gi}]: ")
            plan = self._engine.plans[k]
            if (spec.state_names, spec.state_dtype, spec.master) != (
                plan.state_names, plan.state_dtype, plan.master,
            ):  # fmt: skip
                self._plan(self._mask)
                return
            self._engine.set_hyper(k, spec)

    def _clip_whole_groups(self, grads, grad_scale):
        """A torch group stepped in several parts (params at different steps) is clipped
        by its whole norm, as clip_grad_norm_ clips: the parts' own clipping off, the
        coefficient folded into each part's ``grad_scale``."""
        scale = 1.0 if grad_scale is None else float(grad_scale)
        starts = [0]
        for part in self._parts:
            starts.append(starts[-1] + len(part[5]))
        for gi, ks in self._split_clip:
            total = math.fsum(
                float(np.dot(a.reshape(-1), a.reshape(-1).astype(np.float64)))
                for k in ks
                for a in grads[starts[k] : starts[k + 1]]
            )
            norm = math.sqrt(total) / scale
            self._norms[gi] = norm
            coef = float(self.param_groups[gi]["max_grad_norm"]) / (norm + 1e-6)
            for k in ks:
                # A non-finite norm leaves the grads as they are: the non-finite policy
                # then sees them.
                self._parts[k][0]["grad_scale"] = (
                    scale / coef if math.isfinite(norm) and coef < 1.0 else scale
                )
                self._parts[k][0]["max_grad_norm"] = None
        for k, part in enumerate(self._parts):
            if not any(k in ks for _, ks in self._split_clip):
                part[0]["grad_scale"] = scale
        return None

    def _sync(self):
        """Take the members of every group (checked), and convert the state of a param
        whose dtype changed; the next step plans again."""
        groups = self.param_groups
        for gi, g in enumerate(groups):
            self._check_group(g, f"param_groups[{gi}]: ")
        members = [self._members(g) for g in groups]
        flat = [p for ps in members for p in ps]
        if len(set(map(id, flat))) != len(flat):
            raise ValueError("some parameters appear in more than one parameter group")
        for i, p in enumerate(flat):
            _bridge.check_tensor(p, f"params[{i}]")
        if not isinstance(self.__dict__.get("state"), dict):
            raise TypeError("opt.state must be a dict")
        dtensors = any(_dtensor.is_dtensor(p) for p in flat)
        self._dtensor = _dtensor.Plan(self) if dtensors else None
        self._params = flat
        self._q8_sizes = [_dtensor.q8_size(p) for p in flat]
        self._owner = [gi for gi, ps in enumerate(members) for _ in ps]
        self._low = [p.dtype in _bridge.LOW_PRECISION or dtensors for p in flat]
        self._views = []
        self._shadows = []
        for i, p in enumerate(flat):
            if _dtensor.local(p).is_contiguous():
                self._views.append(_bridge.numpy_view(p))
            else:
                shadow = p.detach().contiguous()
                self._shadows.append((i, p, shadow))
                self._views.append(_bridge.numpy_view(shadow))
        self._ptrs = list(map(_DATA_PTR, flat))
        # the views of the grads last read (see Optimizer._steady_grads): one list for
        # many params; per param [grad, its address, shape, strides, view] for a few
        few = len(flat) <= _bridge.FEW_GRADS
        self._grad_views = [[False, 0, None, None, None] for _ in flat] if few else None
        self._cache_grads = sum(p.numel() for p in flat) <= _CACHED_GRAD_ELEMENTS
        self._any_low = any(self._low) or bool(self._shadows)
        self._seen = (
            groups,
            [(g, g["params"], len(g["params"])) for g in groups],
            self.__dict__["state"],
        )
        self._mask = False  # plan at the next step
        self._full = False
        if not self._state_fits_dtypes():
            # A param changed dtype under the optimizer (model.float() on a bfloat16 model,
            # model.bfloat16(), model.double()): its state is converted as
            # load_state_dict(..., convert=True) converts a saved one, all of it, or nothing.
            self._load(self._state_dict(), convert=True)
            self._sync()

    def _state_fits_dtypes(self):
        """Whether every param's state is laid out for the param's dtype: a master exactly
        for bfloat16/float16 params, and (without ``state_dtype``, for a param whose dtype
        changed since the last step) moments in the dtype of a float32/float64 param."""
        state_map = self.__dict__["state"]
        slots = self.algorithm.all_state_names()
        before, self._dtypes = self._dtypes, {id(p): p.dtype for p in self._params}
        for gi, p in zip(self._owner, self._params):
            st = dict.get(state_map, p)
            if not st:
                continue
            low = p.dtype in _bridge.LOW_PRECISION
            if low != any(name in st for name in _bridge.MASTERS):
                return False
            changed = before.get(id(p), p.dtype) != p.dtype
            if changed and not low and self.param_groups[gi].get("state_dtype") is None:
                for name in slots:
                    value = st.get(name)
                    if isinstance(value, torch.Tensor) and value.dtype != p.dtype:
                        return False
        return True

    def _fits(self):
        """The groups, params and state map are the ones the members were taken from."""
        seen = self._seen
        groups = self.param_groups
        if seen is None or groups is not seen[0] or len(groups) != len(seen[1]):
            return False
        if self.__dict__.get("state") is not seen[2]:
            return False
        for g, (group, params, n) in zip(groups, seen[1]):
            if g is not group or g.get("params") is not params or len(params) != n:
                return False
        if self._dtensor is not None and self._dtensor.moved():
            return False  # a DTensor's local shard was replaced: new views
        return True

    def _state_unchanged(self):
        """No param's state dict was replaced, added or removed since the plans were made
        (the plans watch each dict's entries themselves). Compares the map's values by
        identity: looking params up would hash tensors in Python, ~0.5 us each."""
        values, watched = self.__dict__["state"].values(), self._watched
        return len(values) == len(watched) and all(map(operator.is_, values, watched))
