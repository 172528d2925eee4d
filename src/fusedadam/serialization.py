"""Flat ``{name: ndarray}`` form of a state_dict, for ``np.savez`` and ``np.load``.

>>> np.savez("ckpt.npz", **fa.flatten_state_dict(opt.state_dict()))
>>> opt.load_state_dict(fa.unflatten_state_dict(np.load("ckpt.npz")))
"""
import numpy as np

__all__ = ["flatten_state_dict", "unflatten_state_dict"]


def flatten_state_dict(state_dict):
    """``state_dict()`` as a flat dict of arrays: ``"state/3/exp_avg"``, ``"param_groups/0/lr"``.

    Scalars become 0-d arrays; ``betas`` and ``params`` 1-d arrays. A callable ``lr`` or
    ``None`` cannot be stored in an ``.npz`` file and raises ``TypeError``.
    """
    flat = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            flat[f"state/{int(index)}/{key}"] = np.asarray(value)
    for gi, group in enumerate(state_dict["param_groups"]):
        for key, value in group.items():
            if callable(value):
                raise TypeError(
                    f"param_groups[{gi}]['{key}'] is a callable; an .npz file cannot hold "
                    "it (set a number before saving, or pickle the state_dict instead)"
                )
            if value is None:
                flat[f"param_groups/{gi}/{key}:none"] = np.zeros(0)
                continue
            flat[f"param_groups/{gi}/{key}"] = np.asarray(value)
    return flat


def _scalar(a):
    return a.item() if a.ndim == 0 else a.tolist()


def unflatten_state_dict(flat):
    """Inverse of :func:`flatten_state_dict` (accepts the ``NpzFile`` of ``np.load``)."""
    state, groups = {}, {}
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
            if key.endswith(":none"):
                group[key[: -len(":none")]] = None
            elif key == "betas":
                group[key] = tuple(float(b) for b in value)
            else:
                group[key] = _scalar(value)
        else:
            raise ValueError(f"unexpected entry {name!r} in a flattened state_dict")
    return {"state": state, "param_groups": [groups[i] for i in sorted(groups)]}
