"""Planning: a group's hyperparameters and arrays, validated into the specs the engine runs.

Every front end plans through these functions with its own containers passed in
explicitly (a param's state dict, the optional state it was given); nothing here knows an
optimizer object. A plan creates the state a param lacks but attaches nothing: the
``installs`` of a ``GroupSpec`` are the caller's to attach when a step commits, so that a
failed step leaves nothing behind.
"""

from typing import Any, List, Tuple

import numpy as np

from fusedadam import _algorithms, _precision, _validation, reference
from fusedadam._backend import resolve_backend
from fusedadam.engine._policy import NonFinitePolicy
from fusedadam.engine._spec import GroupSpec, HyperSpec

__all__ = [
    "check_group_hyper",
    "hyper_spec",
    "group_spec",
    "state_dtypes",
    "new_state",
    "plan_entries",
]


def check_group_hyper(group, defaults, where, n_betas=2):
    """Validate a group's hyperparameters in place; a mutable betas container (list,
    array) becomes the tuple of its values, so that editing it later cannot change a
    validated value behind the step's back."""
    _validation.check_hyperparameters(group, defaults, where, n_betas)
    _validation.check_option_combinations(group, where)
    resolve_backend(group["backend"], where)
    betas = group.get("betas")
    if betas is not None and type(betas) is not tuple:
        group["betas"] = tuple(float(b) if isinstance(b, np.generic) else b for b in betas)


def hyper_spec(algorithm, group, defaults, where):
    """Validate ``group``'s hyperparameters (the keys of ``defaults``); its ``HyperSpec``."""
    check_group_hyper(group, defaults, where, algorithm.n_betas)
    keys = tuple(defaults)
    lr = group["lr"]
    max_grad_norm = group.get("max_grad_norm")
    return HyperSpec(
        keys,
        tuple(group[k] for k in keys),
        _algorithms.hyper_dict(algorithm, group),
        lr if callable(lr) else float(lr),
        group["num_threads"],
        NonFinitePolicy.of(group["nonfinite"]),
        resolve_backend(group["backend"], where),
        algorithm.slot_names(group),
        group.get("state_dtype"),
        group.get("grad_scale", 1.0),
        None if max_grad_norm is None else float(max_grad_norm),
        group.get("master", "float32"),
    )


def group_spec(algorithm, gi, group, hyper_spec, first, named, state_of, created_of, size_of=None):
    """Group ``gi``'s validated arrays as a ``GroupSpec`` (nothing is written).

    ``state_of(p)`` is param ``p``'s state dict or None, ``created_of(p)`` the optional
    state names it got while their flag was on; ``size_of(p)``, when given, the size the
    8-bit rule sees for ``p`` (``state_dtypes``). State a param lacks is made here (zeros,
    step 0) and listed in ``installs`` for the caller to attach when a step commits;
    ``named`` collects ``(name, array)`` of every array the step writes.
    """
    names = hyper_spec.state_names
    optional = {name for name, _ in algorithm.optional_state}
    scalar_state = algorithm.scalar_state
    state_dicts: List[dict] = []
    arrays: List[List[np.ndarray]] = [[] for _ in names]
    scales: List[List[Any]] = [[] for _ in names]
    steps: List[np.ndarray] = []
    mus: List[Any] = []
    installs: List[tuple] = []
    new_step = np.zeros((), dtype=np.int64)  # shared by the group's new params
    new_mu = {name: np.array(init, dtype=np.float64) for name, init in scalar_state}
    stepped, fresh, masters = set(), [], []
    for k, p in enumerate(group["params"]):
        pname = f"params[{first + k}]"
        dtypes = state_dtypes(
            algorithm, p, hyper_spec.state_dtype, pname, hyper_spec.master,
            None if size_of is None else size_of(p),
        )  # fmt: skip
        master = _master_name(dtypes)
        st = state_of(p)
        if st is None or (type(st) is dict and not st):
            # None, or the empty dict of a read before the first step (torch's habit):
            # filled at commit, not before.
            target, st = st, fresh_state(algorithm, names, p, dtypes)
            st["step"] = new_step
            st.update(new_mu)
            installs.append((p, target, st))
            fresh.append(pname)
            entries = st
            st = st if target is None else target
        else:
            entries = plan_entries(
                algorithm, st, p, pname, names, optional, created_of(p), installs, dtypes
            )
            stepped.add(int(entries["step"]))
        for i, name in enumerate(names):
            arrays[i].append(entries[name])
            named.append((f"{name} of {pname}", entries[name]))
            scale = _precision.scale_name(name)
            scales[i].append(entries[scale] if scale in dtypes else None)
            if scale in dtypes:
                named.append((f"{scale} of {pname}", entries[scale]))
        masters.append(entries.get(master) if master is not None else None)
        if masters[-1] is not None:
            named.append((f"{master} of {pname}", masters[-1]))
        named.append((pname, p))
        state_dicts.append(st)
        steps.append(entries["step"])
        mus.append(tuple(entries[name] for name, _ in scalar_state) if scalar_state else None)
    if len(stepped) > 1 or (stepped and fresh and stepped != {0}):
        if fresh:
            raise ValueError(
                f"{fresh[0]} has no state, but its group is at step {max(stepped)}; add "
                "new parameters as a new group"
            )
        raise ValueError(
            f"param_groups[{gi}]: its params are at different steps {sorted(stepped)}; "
            "fusedadam steps a group together"
        )
    for j, (name, _) in enumerate(scalar_state):
        values = {float(m[j]) for m in mus}
        if len(values) > 1:
            raise ValueError(
                f"param_groups[{gi}]: its params have different {name} values {sorted(values)}"
            )
    slots = (tuple(group["params"]), None) + tuple(tuple(a) for a in arrays)
    return GroupSpec(
        group,
        hyper_spec,
        names,
        group["params"],
        tuple(state_dicts),
        slots,
        tuple(masters),
        tuple(tuple(per_param) for per_param in scales),
        algorithm.signed_state(names),
        tuple(steps),
        tuple(mus) if scalar_state else None,
        None,
        first,
        installs,
        tuple(name for name, _ in scalar_state),
    )


def state_dtypes(algorithm, p, option, pname, master="float32", size=None):
    """The dtype of each state array of param ``p`` (its master_param or master_residual
    included) for the group's ``state_dtype`` and ``master`` options. ``size``: the size
    the 8-bit rule (``_precision.state_dtype``) sees, ``p.size`` by default; a front end
    that steps a shard of a larger param passes the rule's size for the whole param, so
    that every shard of it keeps the same dtypes."""
    size = p.size if size is None else size
    dtype = _precision.state_dtype(p.dtype, option, pname, size)
    dtypes = {name: dtype for name in algorithm.all_state_names()}
    if _precision.is_q8(dtype):
        for name in algorithm.all_state_names():
            dtypes[_precision.scale_name(name)] = _precision.FLOAT32
    entry = _precision.master_entry(p.dtype, master, pname)
    if entry is not None:
        dtypes[entry[0]] = entry[1]
    return dtypes


def fresh_state(algorithm, names, p, dtypes):
    """The arrays of a param's first step (without its counters): each state array of
    ``names`` at its start (``new_state``) and its master, if ``dtypes`` has one: the
    float32 copy, or the residual 0 (the param is its master exactly)."""
    st = {}
    for name in names:
        st.update(new_state(p, name, dtypes, name in algorithm.from_param))
    master = _master_name(dtypes)
    if master == _precision.MASTER:
        st[master] = p.astype(np.float32)
    elif master is not None:
        st[master] = np.zeros(p.shape, dtype=dtypes[master])
    return st


def _master_name(dtypes):
    """The name of the master entry in ``dtypes``, or None."""
    for name in (_precision.MASTER, _precision.MASTER_RESIDUAL):
        if name in dtypes:
            return name
    return None


def new_state(p, name, dtypes, from_param=False):
    """State array ``name`` of ``p`` at zero, with its 8-bit scales when it has them; with
    ``from_param``, a copy of the param's value instead (rounded to nearest even to a
    bfloat16 state; quantized with the signed map to an 8-bit one, the companded map's to
    an int8 one; a low-precision param's
    value is its master's, which is the param itself at the first step)."""
    scale = _precision.scale_name(name)
    if not from_param:
        new = {name: np.zeros(p.shape, dtype=dtypes[name])}
        if scale in dtypes:
            new[scale] = np.zeros(_precision.state_shape(scale, p), dtype=dtypes[scale])
        return new
    if scale in dtypes:
        companded = _precision.is_companded(dtypes[name])
        codes, absmax = reference.q8_quantize(p.astype(np.float32), True, companded)
        return {name: codes, scale: absmax.astype(dtypes[scale], copy=False)}
    return {name: np.array(p, dtype=dtypes[name], copy=True)}


def plan_entries(algorithm, st, p, pname, names, optional, created, installs, dtypes):
    """The state entries of a param that has state: checked, the missing optional ones
    (and non-array counters) prepared for install at commit."""
    if not isinstance(st, dict):
        raise TypeError(f"opt.state of {pname} must be a dict, got {type(st).__name__}")
    add = {}
    master = _master_name(dtypes)
    scales = tuple(_precision.scale_name(n) for n in names if _precision.scale_name(n) in dtypes)
    for name in names + scales + ((master,) if master is not None else ()):
        if name in st:
            _validation.check_state_array(
                st[name], f"{name} of {pname}", p, pname, dtypes[name],
                _precision.state_shape(name, p),
            )  # fmt: skip
        elif name in add:
            continue
        elif name in optional and name not in created:
            # the option was just switched on
            add.update(new_state(p, name, dtypes))
        else:
            raise ValueError(
                f"{name} of {pname} is missing from opt.state; the optimizer keeps it from "
                "the first step on (restore it, or load a state_dict)"
            )
    counters: List[Tuple[str, Any]] = [("step", np.int64)]
    counters += [(n, np.float64) for n, _ in algorithm.scalar_state]
    for name, dtype in counters:
        if name not in st:
            raise ValueError(f"{name} of {pname} is missing from opt.state")
        value = st[name]
        if (
            type(value) is np.ndarray
            and value.shape == ()
            and value.dtype == dtype
            and value.flags.writeable
        ):
            continue
        # A plain number (st["step"] = 10): stored as the 0-d array the engine updates.
        where = f"opt.state of {pname}"
        number = _validation._saved_counter(value, where, name, integral=dtype == np.int64)
        add[name] = np.array(number, dtype=dtype)
    if add:
        installs.append((p, st, add))
    return {**st, **add}
