"""Flat ``{name: ndarray}`` form of a state_dict, for ``np.savez`` and ``np.load``.

>>> np.savez("ckpt.npz", **fa.flatten_state_dict(opt.state_dict()))
>>> opt.load_state_dict(fa.unflatten_state_dict(np.load("ckpt.npz")))

The ``.npy`` format has no bfloat16: a bfloat16 array (``state_dtype="bfloat16"``) is
stored as the uint16 view of its bits under ``"<key>:bfloat16"`` and viewed back on load,
so it resumes bit for bit. Everything else the file cannot hold without pickle (an object
array, a callable that is not a schedule, another non-native dtype) raises ``TypeError``
when flattening, that is at save time, not at resume.
"""

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from fusedadam import _precision
from fusedadam.schedules import Schedule, from_json

__all__ = ["flatten_state_dict", "unflatten_state_dict"]

# Dtypes the .npy format cannot describe, by tag: stored as the unsigned view of their bits.
_VIEWED = {"bfloat16": (_precision.BFLOAT16, np.dtype(np.uint16))}


def _storable(value: Any, where: str) -> Tuple[np.ndarray, str]:
    """``value`` as an array ``np.savez`` writes without pickle, and its key's tag."""
    array = np.asarray(value)
    for tag, (dtype, bits) in _VIEWED.items():
        if array.dtype == dtype:
            return np.ascontiguousarray(array).view(bits), f":{tag}"
    if array.dtype.hasobject or array.dtype.kind == "V":
        raise TypeError(
            f"{where} has dtype {array.dtype}: an .npz file cannot hold it without pickle "
            f"(its value: {value!r:.80}); pickle the state_dict instead"
        )
    return array, ""


def flatten_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """``state_dict()`` as a flat dict of arrays: ``"state/3/exp_avg"``, ``"param_groups/0/lr"``.

    Scalars become 0-d arrays; ``betas`` and ``params`` 1-d arrays; ``None`` an empty
    array under ``"<key>:none"``; an array hyperparameter (a one-element ``grad_scale``)
    stays an array, under ``"<key>:array"``; a bfloat16 array its uint16 bits under
    ``"<key>:bfloat16"``. A :class:`fusedadam.schedules.Schedule` (as ``lr``) is
    stored as its constructor arguments, a JSON string under ``"<key>:schedule"``, so the
    file loads with ``np.load`` and no pickle.

    Raises
    ------
    TypeError
        A value the file cannot hold without pickle: a callable that is not a schedule,
        an object array (a dict, a list of mixed types), an unsupported dtype. Raised
        here, before anything is written, rather than when the file is loaded.
    """
    flat: Dict[str, np.ndarray] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            where = f"state[{index!r}][{key!r}]"
            array, tag = _storable(value, where)
            flat[f"state/{int(index)}/{key}{tag}"] = array
    for gi, group in enumerate(state_dict["param_groups"]):
        for key, value in group.items():
            where = f"param_groups[{gi}][{key!r}]"
            if isinstance(value, Schedule):
                flat[f"param_groups/{gi}/{key}:schedule"] = np.asarray(value.to_json())
                continue
            if callable(value):
                raise TypeError(
                    f"{where} is a callable; an .npz file cannot hold "
                    "it (use a fusedadam.schedules object, set a number before saving, or pickle "
                    "the state_dict instead)"
                )
            if value is None:
                flat[f"param_groups/{gi}/{key}:none"] = np.zeros(0)
                continue
            array, tag = _storable(value, where)
            if isinstance(value, np.ndarray) and key != "params" and not tag:
                tag = ":array"
            flat[f"param_groups/{gi}/{key}{tag}"] = array
    return flat


def _scalar(a: np.ndarray) -> Any:
    return a.item() if a.ndim == 0 else a.tolist()


def _viewed(value: Any, tag: str) -> np.ndarray:
    dtype, bits = _VIEWED[tag]
    array = np.array(value)
    if array.dtype != bits:
        raise ValueError(f"a {tag} entry must hold {bits} bits, got {array.dtype}")
    return array.view(dtype)


def unflatten_state_dict(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`flatten_state_dict` (accepts the ``NpzFile`` of ``np.load``)."""
    state: Dict[int, Dict[str, Any]] = {}
    groups: Dict[int, Dict[str, Any]] = {}
    for name in flat.keys():
        parts = name.split("/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
        kind, index, key = parts
        key, _, tag = key.partition(":")
        value = flat[name]
        if kind == "state":
            entry = state.setdefault(int(index), {})
            if tag in _VIEWED:
                entry[key] = _viewed(value, tag)
            elif not tag:
                entry[key] = np.array(value)
            else:
                raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
        elif kind == "param_groups":
            group = groups.setdefault(int(index), {})
            if tag == "schedule":
                group[key] = from_json(str(value))
            elif tag == "none":
                group[key] = None
            elif tag == "array":
                group[key] = np.array(value)
            elif tag in _VIEWED:
                group[key] = _viewed(value, tag)
            elif tag:
                raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
            elif key == "betas":
                group[key] = tuple(float(b) for b in value)
            else:
                group[key] = _scalar(value)
        else:
            raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
    return {"state": state, "param_groups": [groups[i] for i in sorted(groups)]}
