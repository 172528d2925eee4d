"""The torch front end's state dicts, in torch.optim's layout, and its pickling.

A saved param entry is checked by the rule every front end loads through
(``_validation.check_saved_state``: names, shapes, dtypes, steps, and with ``convert=True``
the casts and masters), as NumPy views of its tensors; the whole dict is checked before
anything is replaced, so a load that raises changes nothing.
"""

from collections import defaultdict
from copy import deepcopy
from itertools import chain
from typing import Any, Dict

import numpy as np
import torch

from fusedadam import _dtensor, _precision, _validation
from fusedadam.engine._plan import state_dtypes
from fusedadam.engine._saved import checked_entry
from fusedadam.torch import _bridge


class StateDicts:
    """``state_dict``, ``load_state_dict`` and pickling of :class:`Optimizer`."""

    def state_dict(self) -> Dict[str, Any]:
        """torch.optim's layout: ``{"state": {i: {...}}, "param_groups": [...]}``.

        Per param the state tensors under torch's names (live, as in torch) and ``step`` as
        a float32 0-d tensor (float64 past 2**24, where float32 stops being exact). A
        DTensor param that keeps float32 moments where a plain one keeps 8-bit ones also
        has ``dtensor_float32_moments``, a one-element tensor a one-process checkpoint
        lacks, so DCP's default planner refuses that checkpoint (``LoadPlanner`` loads it).
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self._state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _state_dict(self):
        mappings: Dict[int, int] = {}
        options: Dict[int, Any] = {}  # each param's group's state_dtype
        groups = []
        start = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start):
                mappings.setdefault(id(p), i)
                options.setdefault(id(p), group.get("state_dtype"))
            packed["params"] = [mappings[id(p)] for p in group["params"]]
            start += len(group["params"])
            groups.append(packed)
        packed_state = {}
        for p, st in self.state.items():
            if not isinstance(p, torch.Tensor):
                packed_state[p] = st  # torch keeps a key that is not a param as it is
                continue
            if not st or id(p) not in mappings:
                continue
            entry = dict(st)
            if not _dtensor.is_dtensor(p):
                for key, value in st.items():
                    if _dtensor.is_scale(key) and isinstance(value, torch.Tensor):
                        entry[key] = _dtensor.saved_scales(p, value)
            elif _dtensor.differs_from_plain(p, options[id(p)]):
                # A one-process checkpoint lacks it: DCP's default planner stops there.
                # One element, not 0-d: set_optimizer_state_dict(full_state_dict=True)
                # adds a 0-d tensor the local state dict lacks without its path (KeyError).
                entry[_dtensor.FLOAT32_MOMENTS_KEY] = torch.ones(
                    1, dtype=torch.uint8, device=_dtensor.local(p).device
                )
            if "step" in entry:
                step = float(entry["step"])
                entry["step"] = torch.tensor(
                    step, dtype=torch.float32 if step < _bridge.FLOAT32_EXACT else torch.float64
                )
            packed_state[mappings[id(p)]] = entry
        return {"state": packed_state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any], convert: bool = False) -> None:
        """Load a state dict of this class or of the torch.optim class of the same name.

        Checked whole (torch's group checks, then fusedadam's: keys, shapes, dtypes, steps)
        and copied; on an error nothing has changed. For float32/float64 params, floating
        state tensors are cast to the param's dtype, as torch does; ``step`` may be any
        whole number. For bfloat16/float16 params the state is kept in float32 with a
        float32 ``master_param``: a state saved otherwise (torch.optim's bfloat16 moments, no
        master) loads with ``convert=True`` (cast, master made from the param), as
        :meth:`fusedadam.Optimizer.load_state_dict`. A group's ``master`` is this
        optimizer's, not the saved one: ``convert=True`` moves a bfloat16 param's master
        between ``master_param`` and ``master_residual`` exactly both ways (converting to
        the residual rewrites the param as its master encodes, which changes it only where
        the master's low half is exactly 0x8000, and bumps its version counter). An 8-bit
        state saved by a param of the other kind (DTensor or plain) converts without
        ``convert=True``; the ``dtensor_float32_moments`` marker, with or without it, is
        dropped.
        """
        if not isinstance(convert, (bool, np.bool_)):
            raise TypeError(f"convert must be a bool, got {convert!r}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if not self._fits():
            self._sync()
        self._load(state_dict, convert)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict, convert):
        for _, p, shadow in self._shadows:
            shadow.copy_(p.detach())  # a master_param made by convert=True reads it
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
            )
        )
        saved_ids = {id(p): i for i, p in id_map.items()}
        new_groups = []
        for gi, (g, saved) in enumerate(zip(groups, saved_groups)):
            new = dict(saved)
            new["params"] = g["params"]
            if "param_names" in g and "param_names" not in new:
                new["param_names"] = g["param_names"]
            for key, value in self.defaults.items():
                new.setdefault(key, value)
            new.update(self._FIXED)
            # How a group keeps its masters is this optimizer's choice, as in
            # fusedadam.Optimizer: a saved state of the other layout is converted
            # (convert=True) or refused.
            new["master"] = g.get("master", "float32")
            self._check_group(new, f"state_dict['param_groups'][{gi}]: ")
            new_groups.append(new)
        by_param, state_map = {}, defaultdict(dict)
        for key, entry in state_dict["state"].items():
            if key in id_map:
                if not isinstance(entry, dict):
                    raise TypeError(f"state_dict['state'][{key!r}] must be a dict")
                # the layout marker: state_dict() makes it from the param and its group
                entry = {k: v for k, v in entry.items() if k != _dtensor.FLOAT32_MOMENTS_KEY}
                by_param[id(id_map[key])] = entry
            else:
                dict.__setitem__(state_map, key, deepcopy(entry))  # torch keeps other keys
        rewritten = []  # (param, its new value): a saved float32 master became a residual
        index = 0
        for g, saved in zip(new_groups, saved_groups):
            engine_group = self._engine_group(g, [])
            # Saved under an 8-bit state_dtype, named by the saved group itself (a
            # torch.optim state dict names none): see _across_layouts.
            across = saved.get("state_dtype") in _precision.Q8_CODE_DTYPES
            for p in self._members(g):
                entry = by_param.get(id(p))
                if entry:
                    if across:
                        entry = self._across_layouts(entry, p, engine_group, index)
                    new_st, new_param = self._loaded_entry(
                        entry, p, engine_group, index, saved_ids[id(p)], convert
                    )
                    dict.__setitem__(state_map, p, new_st)
                    if new_param is not None:
                        rewritten.append((p, new_param))
                index += 1
        # Committed: the params a conversion rewrote, torch's groups, the state.
        for p, value in rewritten:
            # copy_ bumps the version counter p shares with its detached alias
            p.detach().copy_(_bridge.tensor_view(value).reshape(p.shape))
        self.param_groups = new_groups
        self.__dict__["state"] = state_map
        self._seen = None

    def _loaded_entry(self, entry, p, engine_group, index, saved_id, convert):
        """One param's saved entry as its new ``opt.state`` dict (copies), and the value a
        conversion to ``master="residual"`` gives the param (or None)."""
        algorithm = self.algorithm
        pname = f"state_dict['state'][{saved_id!r}] (params[{index}])"
        view = _bridge.numpy_view(p.detach().contiguous()) if not p.is_contiguous() else None
        view = _bridge.numpy_view(p) if view is None else view
        arrays, extra = {}, {}
        for key, value in entry.items():
            if key not in self._known_state:
                extra[key] = value  # a library's own entry: kept, as torch keeps it
            else:
                arrays[key] = self._saved_value(key, value, p, index)
        step, copies, scalars = checked_entry(
            algorithm, arrays, view, engine_group, pname, f"params[{index}]", convert,
            _dtensor.q8_size(p),
        )  # fmt: skip
        new_param = copies.pop(_validation.NEW_PARAM, None)
        st = {name: self._state_tensor(p, name, a) for name, a in copies.items()}
        st["step"] = self._state_tensor(p, "step", np.array(step, dtype=np.int64))
        for name, value in scalars.items():
            st[name] = self._state_tensor(p, name, np.array(value, dtype=np.float64))
        st.update(extra)
        return st, new_param

    def _across_layouts(self, entry, p, group, index):
        """``entry`` with its moments in the layout this optimizer keeps for ``p``, when
        they were saved under the same 8-bit ``state_dtype`` by a param of the other kind.

        The 8-bit rule differs between a DTensor param and a plain one
        (``_dtensor.q8_size``): a 1-d param of 4096 elements or more (a norm weight), or a
        param whose rows are not whole blocks, keeps float32 moments under FSDP2 and 8-bit
        ones in one process. Such a state converts without ``convert=True``, whole (before
        this rank's shard is cut): codes and scales to the float32 values they encode
        (exact: the values the saving run stepped with), float32 moments to codes and scales
        (quantized, as the kernel quantizes them: not exact, as any move to 8 bits).
        """
        view = _bridge.numpy_view(_dtensor.local(p).detach())
        option = group.get("state_dtype")
        where = f"params[{index}]"
        dtypes = state_dtypes(
            self.algorithm, view, option, where, group.get("master"), _dtensor.q8_size(p)
        )
        names = self.algorithm.all_state_names()
        entry = dict(entry)
        for name, signed in zip(names, self.algorithm.signed_state(names)):
            value, scale_key = entry.get(name), _precision.scale_name(name)
            scale = entry.get(scale_key)
            if not isinstance(value, torch.Tensor) or name not in dtypes:
                continue
            target = dtypes[name]
            # Only the move between the two kinds' layouts of one 8-bit state_dtype (a
            # change of state_dtype still needs convert=True); the conversion itself is
            # convert=True's (_validation.convert_8bit), on the whole arrays.
            if _precision.is_q8(target) and value.is_floating_point() and scale is None:
                saved = {name: _bridge.numpy_view(_whole(value))}
            elif (
                not _precision.is_q8(target)
                and isinstance(scale, torch.Tensor)
                and value.dtype == getattr(torch, _precision.Q8_CODE_DTYPES[option].name)
            ):
                codes, absmax = _whole(value), _whole(scale).reshape(-1)
                if absmax.numel() != -(-codes.numel() // _precision.Q8_BLOCK):
                    raise ValueError(
                        f"state_dict: {scale_key} of {where} has {absmax.numel()} scales for "
                        f"{codes.numel()} codes"
                    )
                saved = {name: _bridge.numpy_view(codes), scale_key: _bridge.numpy_view(absmax)}
            else:
                continue
            converted = _validation.convert_8bit(saved, {name: target}, {name: signed})
            entry.pop(scale_key, None)
            entry.update({key: torch.from_numpy(a) for key, a in converted.items()})
        return entry

    def _saved_value(self, key, value, p, index):
        """A saved torch-layout state value as ``check_saved_state`` takes it."""
        where = f"state of params[{index}]"
        if key in self._counters:
            array = _bridge.counter(
                _dtensor.localize(p, key, value.detach())
                if isinstance(value, torch.Tensor)
                else value,
                np.int64 if key == "step" else np.float64,
                where,
                key,
            )[0]
            return int(array) if key == "step" else float(array)
        if not isinstance(value, torch.Tensor):
            return value
        value = _dtensor.localize(p, key, value.detach())
        if value.is_sparse or value.layout is not torch.strided:
            raise TypeError(f"state_dict: {key} of params[{index}] is sparse")
        value = value.to(device="cpu")
        if _dtensor.is_scale(key) and value.dim() == 2:
            value = value.reshape(-1)  # 8-bit scales saved one row per param row
        if p.dtype not in _bridge.LOW_PRECISION and value.is_floating_point():
            value = value.to(p.dtype)  # torch's rule for its own state dicts
        if value.dtype not in _bridge.FLOATS and value.dtype not in _bridge.STATE_INTS:
            raise TypeError(f"state_dict: {key} of params[{index}] has dtype {value.dtype}")
        # Low precision: check_saved_state decides (convert=True casts).
        return _bridge.numpy_view(value.resolve_conj().resolve_neg().contiguous())

    # ------------------------------------------------------------------ copying
    def __getstate__(self):
        return {
            "defaults": self.defaults,
            "state": {
                p: dict(st) if isinstance(p, torch.Tensor) else st
                for p, st in self.state.items()
                if not isinstance(p, torch.Tensor) or st
            },
            "param_groups": self.param_groups,
            "skipped_steps": self._skipped,
        }

    def __setstate__(self, state):
        skipped = state.pop("skipped_steps", 0)
        super().__setstate__(state)
        self._init_private()
        self._skipped = skipped
        if not isinstance(self.state, defaultdict):
            self.state = defaultdict(dict, self.state)


def _whole(value):
    """A saved state tensor whole, plain, contiguous and on the CPU (a DTensor gathered)."""
    value = value.detach()
    if _dtensor.is_dtensor(value):
        value = value.full_tensor()
    return value.to(device="cpu").contiguous()
