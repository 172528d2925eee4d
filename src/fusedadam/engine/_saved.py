"""Loading a ``state_dict``: the saved state checked whole against a front end's groups.

Every front end that loads the single-process ``state_dict`` format (``optim.Optimizer``,
``distributed.ShardedOptimizer``) checks it here, with its own groups passed in; nothing
is written: the caller installs what this returns.
"""

import numpy as np

from fusedadam import _precision, _validation
from fusedadam.engine._plan import state_dtypes

__all__ = ["checked_entry", "checked_state"]


def checked_state(algorithm, param_groups, state_dict, convert, check_group_hyper):
    """``(new_groups, new_state)`` of ``state_dict`` for ``param_groups``, checked whole.

    ``new_groups``: per group, the saved hyperparameters to apply (without
    ``state_dtype`` and ``master``, which stay the front end's). ``new_state``: ``[(param,
    state dict)]`` with the arrays in this front end's dtypes (cast with ``convert``) and
    each group's counters as shared 0-d arrays; an entry ``_validation.NEW_PARAM`` holds a
    param's new value where a conversion to ``master_residual`` rewrites it.
    ``check_group_hyper(group, where)`` validates a group's hyperparameters in place.
    """
    saved_state, saved_groups = _validation.check_state_dict_layout(state_dict, param_groups)
    new_groups, new_state, index = [], [], 0
    scalar_state = algorithm.scalar_state
    for group, (where, saved, hyper) in zip(param_groups, saved_groups):
        # The state's dtype is this optimizer's choice, as the params' dtypes are: a
        # saved state of another dtype is converted (convert=True) or refused.
        hyper.pop("state_dtype", None)
        hyper.pop("master", None)
        merged = {**group, **hyper}
        check_group_hyper(merged, f"{where}: ")
        if "betas" in hyper:
            hyper["betas"] = merged["betas"]
        entries = _saved_entries(algorithm, saved, saved_state, group, merged, index, convert)
        counters = {(step, tuple(scalars.values())) for _, step, _, scalars in entries}
        if len(counters) > 1:
            raise ValueError(
                f"{where}: its params are at different steps "
                f"{sorted(c[0] for c in counters)}; fusedadam steps a group together"
            )
        if entries:
            step, scalars = entries[0][1], entries[0][3]
            shared = {"step": np.array(step, dtype=np.int64)}
            shared.update(
                {name: np.array(scalars[name], dtype=np.float64) for name, _ in scalar_state}
            )
            for p, _, arrays, _ in entries:
                new_state.append((p, {**arrays, **shared}))
        new_groups.append(hyper)
        index += len(group["params"])
    return new_groups, new_state


def checked_entry(algorithm, entry, p, group, pname, where, convert, size=None):
    """``(step, arrays, scalars)`` of one param's saved state ``entry``, checked against
    param ``p`` (an ndarray) under ``group``'s options (its optional-state flags,
    ``state_dtype`` and ``master``): the arrays in this front end's dtypes (cast with
    ``convert``). ``pname`` names the entry in messages, ``where`` the param; ``size``:
    the size the 8-bit rule sees (``state_dtypes``)."""
    required = algorithm.state_names
    required = required + tuple(name for name, flag in algorithm.optional_state if group.get(flag))
    optional = tuple(name for name, _ in algorithm.optional_state if name not in required)
    dtypes = state_dtypes(algorithm, p, group.get("state_dtype"), where, group.get("master"), size)
    master = tuple(n for n in (_precision.MASTER, _precision.MASTER_RESIDUAL) if n in dtypes)
    scales = [_precision.scale_name(name) for name in required + optional]
    signed = algorithm.signed_state(algorithm.all_state_names())
    return _validation.check_saved_state(
        entry,
        p,
        required + master + tuple(s for s in scales[: len(required)] if s in dtypes),
        optional + tuple(s for s in scales[len(required) :] if s in dtypes),
        algorithm.scalar_state,
        dtypes,
        convert,
        pname,
        dict(zip(algorithm.all_state_names(), signed)),
    )


def _saved_entries(algorithm, saved, saved_state, group, merged, index, convert):
    """Checked ``(param, step, arrays, scalars)`` of one group's saved entries."""
    entries = []
    for k, (saved_id, p) in enumerate(zip(saved["params"], group["params"])):
        if saved_id not in saved_state:
            continue
        pname = f"state_dict['state'][{saved_id!r}] (params[{index + k}])"
        step, arrays, scalars = checked_entry(
            algorithm, saved_state[saved_id], p, merged, pname, f"params[{index + k}]", convert
        )
        entries.append((p, step, arrays, scalars))
    if entries and len(entries) != len(group["params"]) and any(e[1] for e in entries):
        raise ValueError(
            f"state_dict: a group at step {entries[0][1]} has params without state; "
            "fusedadam steps a group together"
        )
    return entries
