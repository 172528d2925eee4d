"""Flat ``{name: ndarray}`` form of a state_dict, for ``np.savez`` and ``np.load``.

>>> np.savez("ckpt.npz", **fa.flatten_state_dict(opt.state_dict()))
>>> opt.load_state_dict(fa.unflatten_state_dict(np.load("ckpt.npz")))
"""

from typing import Any, Dict, Mapping

import numpy as np

from fusedadam.schedules import Schedule, from_json

__all__ = ["flatten_state_dict", "unflatten_state_dict"]


def flatten_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """``state_dict()`` as a flat dict of arrays: ``"state/3/exp_avg"``, ``"param_groups/0/lr"``.

    Scalars become 0-d arrays; ``betas`` and ``params`` 1-d arrays; ``None`` an empty
    array under ``"<key>:none"``. A :class:`fusedadam.schedules.Schedule` (as ``lr``) is
    stored as its constructor arguments, a JSON string under ``"<key>:schedule"``, so the
    file loads with ``np.load`` and no pickle. Any other callable raises ``TypeError``.
    """
    flat: Dict[str, np.ndarray] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            flat[f"state/{int(index)}/{key}"] = np.asarray(value)
    for gi, group in enumerate(state_dict["param_groups"]):
        for key, value in group.items():
            if isinstance(value, Schedule):
                flat[f"param_groups/{gi}/{key}:schedule"] = np.asarray(value.to_json())
                continue
            if callable(value):
                raise TypeError(
                    f"param_groups[{gi}]['{key}'] is a callable; an .npz file cannot hold "
                    "it (use a fusedadam.schedules object, set a number before saving, or pickle "
                    "the state_dict instead)"
                )
            if value is None:
                flat[f"param_groups/{gi}/{key}:none"] = np.zeros(0)
                continue
            flat[f"param_groups/{gi}/{key}"] = np.asarray(value)
    return flat


def _scalar(a: np.ndarray) -> Any:
    return a.item() if a.ndim == 0 else a.tolist()


def unflatten_state_dict(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`flatten_state_dict` (accepts the ``NpzFile`` of ``np.load``)."""
    state: Dict[int, Dict[str, Any]] = {}
    groups: Dict[int, Dict[str, Any]] = {}
    for name in flat.keys():
        parts = name.split("/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
        kind, index, key = parts
        value = flat[name]
        if kind == "state":
            entry = state.setdefault(int(index), {})
            entry[key] = np.array(value)
        elif kind == "param_groups":
            group = groups.setdefault(int(index), {})
            if key.endswith(":schedule"):
                group[key[: -len(":schedule")]] = from_json(str(value))
            elif key.endswith(":none"):
                group[key[: -len(":none")]] = None
            elif key == "betas":
                group[key] = tuple(float(b) for b in value)
            else:
                group[key] = _scalar(value)
        else:
            raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
    return {"state": state, "param_groups": [groups[i] for i in sorted(groups)]}
