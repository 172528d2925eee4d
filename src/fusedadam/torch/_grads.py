"""The torch front end's reading of the grads: the NumPy views the engine steps.

A mixin of ``_optimizer.Optimizer`` (its plans, ``_plans.py``, set the attributes read
here: ``_params``, ``_ptrs``, ``_seen``, ``_watched``, ``_parts``, ``_grad_views``, ...).
``_steady_grads`` is the steady training loop's way: every check that the plans still hold,
in the cheapest form for the common shapes; ``_collect`` is the full step's.
"""

import itertools
import operator

import torch

from fusedadam.torch import _bridge

_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_NONES = itertools.repeat(None)
_NUMPY = torch.Tensor.numpy
_SHAPE = operator.attrgetter("shape")
_STRIDE = torch.Tensor.stride
_TORCH_THREADS = torch.get_num_threads


class Grads:
    """The grads of the planned params, as the engine reads them."""

    def _steady_grads(self):
        """The steady state: the grads as the engine reads them when nothing the plans
        depend on changed (groups, params and their memory, state dicts, hyperparameters,
        torch's thread count) and every param has a plain gradient; else None. One
        function, its checks in the cheapest form for the common shapes (one group, a
        few params): each call saved is ~0.07 us of a ~2 us step."""
        d = self.__dict__
        seen = self._seen
        groups = self.param_groups
        if seen is None or "grad_scale" in d or "found_inf" in d or groups is not seen[0]:
            return None
        if d["state"] is not seen[2]:
            return None
        members = seen[1]
        if len(groups) != len(members):
            return None
        if len(members) == 1:
            group, params, n = members[0]
            g = groups[0]
            if g is not group or g.get("params") is not params or len(params) != n:
                return None
        else:
            for g, (group, params, n) in zip(groups, members):
                if g is not group or g.get("params") is not params or len(params) != n:
                    return None
        values, watched = seen[2].values(), self._watched
        if len(values) != len(watched):
            return None
        if len(watched) == 1:
            if next(iter(values)) is not watched[0]:
                return None
        elif not all(map(operator.is_, values, watched)):
            return None
        if _bridge.TORCH_WORKERS_SPIN and (_TORCH_THREADS() > 1) != self._torch_parallel:
            return None
        getter = self._getter
        for part in self._parts:
            if getter(part[1]) != part[2]:
                return None
        params = self._params
        if len(params) == 1 and self._few_views is not None:  # one param (torchao's way)
            p, kept = params[0], self._grad_views[0]
            g = p.grad
            if (
                p.data_ptr() == self._ptrs[0]
                and g is kept[0]
                and g.data_ptr() == kept[1]
                and g.shape == kept[2]
                and g.stride() == kept[3]
            ):
                return self._few_views
        if len(params) <= _bridge.FEW_GRADS:
            return self._few_grads(params)
        if list(map(_DATA_PTR, params)) != self._ptrs:
            return None
        found = list(map(_GRAD, params))
        cache = self._grad_views
        # The same grad tensors at the same address, shape and strides as last step's
        # (a loop that keeps its grads: zero_grad(set_to_none=False)): their views. (Not
        # the version counter: ``g.data = ...`` moves a tensor without bumping it.)
        if (
            cache
            and all(map(operator.is_, found, cache[0]))
            and list(map(_DATA_PTR, found)) == cache[1]
            and list(map(_SHAPE, found)) == cache[2]
            and list(map(_STRIDE, found)) == cache[3]
        ):
            return cache[4]
        try:
            # Tensor.numpy(None), of a bfloat16 or of a grad that requires grad, raises
            views = list(map(_NUMPY, found))
        except (TypeError, RuntimeError):
            return None
        if self._cache_grads:
            self._grad_views = (
                found, list(map(_DATA_PTR, found)), list(map(_SHAPE, found)),
                list(map(_STRIDE, found)), views,
            )  # fmt: skip
        return views

    def _few_grads(self, params):
        """``_steady_grads``' reading of a few params' grads: one loop (the maps' lists
        cost more than they save below ~5 tensors), each kept grad's view reused under
        the same rule. The views of the last call are kept as one list too
        (``_few_views``), returned as they are while every grad was kept."""
        kept_all = True
        views = []
        for p, ptr, kept in zip(params, self._ptrs, self._grad_views):
            if p.data_ptr() != ptr:
                return None
            g = p.grad
            if (
                g is not kept[0]
                or g.data_ptr() != kept[1]
                or g.shape != kept[2]
                or g.stride() != kept[3]
            ):
                kept_all = False
                try:
                    view = g.numpy()
                except (TypeError, RuntimeError, AttributeError):  # None, bfloat16, ...
                    return None
                if not self._cache_grads:
                    views.append(view)
                    continue
                kept[:] = g, g.data_ptr(), g.shape, g.stride(), view
            views.append(kept[4])
        if kept_all:
            return self._few_views
        if self._cache_grads:
            self._few_views = views
        return views

    def _collect(self):
        """NumPy views of the grads (None where a param has none), or None when a param's
        memory moved. Sets ``_full``: every param has one."""
        params = self._params
        if list(map(_DATA_PTR, params)) != self._ptrs:
            return None
        found = list(map(_GRAD, params))
        # (not ``None in found``: that compares tensors with ==, ~40 us a tensor)
        self._full = not any(map(operator.is_, found, _NONES))
        if self._any_low or not self._full:
            return _bridge.grad_views(found, self._low)
        try:
            return list(map(_NUMPY, found))
        except Exception:
            return _bridge.grad_views(found, self._low)  # names the bad gradient
