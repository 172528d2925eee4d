"""Every check that runs before compiled code is entered, with the error messages.

Arrays are named the way users see them: ``params[i]`` and ``grads[i]`` with ``i`` the
parameter's position over all groups, and state as ``exp_avg of params[i]``.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONFINITE_MODES = ("error", "skip", "ignore")


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_lr(lr, where=""):
    """Check a learning rate value (not a callable): a finite real >= 0."""
    if not _is_real(lr):
        raise TypeError(f"{where}Invalid learning rate: {lr!r} (expected a real number or a callable)")
    if not math.isfinite(lr) or lr < 0.0:
        raise ValueError(f"{where}Invalid learning rate: {lr}")
    return float(lr)


def check_hyperparameters(group, where=""):
    """Validate one parameter group's hyperparameters (a dict), raising on the first bad one.

    ``where`` prefixes messages, e.g. ``"param_groups[1]: "``.
    """
    lr = group["lr"]
    if not callable(lr):
        check_lr(lr, where)
    betas = group["betas"]
    try:
        n_betas = len(betas)
    except TypeError:
        n_betas = -1
    if n_betas != 2:
        raise ValueError(f"{where}Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        if not _is_real(beta):
            raise TypeError(f"{where}Invalid beta parameter at index {i}: {beta!r}")
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"{where}Invalid beta parameter at index {i}: {beta}")
    eps = group["eps"]
    if not _is_real(eps):
        raise TypeError(f"{where}Invalid epsilon value: {eps!r}")
    # eps > 0 keeps every denominator positive: sqrt(v)/sqrt(bc2) + eps >= eps (Adam) and
    # u >= |g| + eps (Adamax), so the kernels never divide by zero.
    if not math.isfinite(eps) or eps <= 0.0:
        raise ValueError(f"{where}Invalid epsilon value: {eps} (must be finite and > 0)")
    wd = group["weight_decay"]
    if not _is_real(wd):
        raise TypeError(f"{where}Invalid weight_decay value: {wd!r}")
    if not math.isfinite(wd) or wd < 0.0:
        raise ValueError(f"{where}Invalid weight_decay value: {wd}")
    decay = group["beta1_decay"]
    if not _is_real(decay):
        raise TypeError(f"{where}Invalid beta1_decay value: {decay!r}")
    if not (0.0 < decay <= 1.0):
        raise ValueError(f"{where}Invalid beta1_decay value: {decay} (must be in (0, 1])")
    for flag in ("amsgrad", "maximize", "bias_correction"):
        if flag in group and not isinstance(group[flag], (bool, np.bool_)):
            raise TypeError(f"{where}{flag} must be a bool, got {group[flag]!r}")
    mode = group.get("nonfinite", "ignore")
    if mode not in NONFINITE_MODES:
        raise ValueError(f"{where}Invalid nonfinite mode {mode!r}; expected one of {NONFINITE_MODES}")


def check_num_threads(num_threads):
    """None, -1 or a positive int; 0 and other negatives are errors."""
    if num_threads is None:
        return
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be None or an int, got {num_threads!r}")
    if num_threads == 0 or num_threads < -1:
        raise ValueError(
            f"Invalid num_threads: {num_threads} (use None for the OpenMP default, "
            "-1 for all processors, or a positive count)"
        )


def _address(a):
    return a.__array_interface__["data"][0]


def _check_written_array(a, name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {a.dtype}; only float32 and float64 are supported")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place and must be writeable")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; it is updated in place and must be")
    if not a.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype; it must be")


def check_params(params, first_index=0):
    """Check a list of parameter arrays: float, writeable, contiguous, no duplicates."""
    seen = {}
    for k, p in enumerate(params):
        name = f"params[{first_index + k}]"
        _check_written_array(p, name)
        if id(p) in seen:
            raise ValueError(
                f"{name} is the same array as params[{seen[id(p)]}]; a parameter may "
                "appear only once in an optimizer"
            )
        seen[id(p)] = first_index + k


def check_state(params, states, first_index=0):
    """Check state arrays against their params and return the sorted written intervals.

    ``states`` is a list parallel to ``params`` of dicts ``{state name: array}``.
    Returns ``(lo, hi)``: sorted, disjoint byte intervals of every param and state array,
    as uint64 arrays. Raises if any two of them overlap.
    """
    owners, lows, highs = [], [], []
    for k, (p, state) in enumerate(zip(params, states)):
        pname = f"params[{first_index + k}]"
        named = [(pname, p)]
        for state_name, a in state.items():
            name = f"{state_name} of {pname}"
            _check_written_array(a, name)
            if a.dtype != p.dtype:
                raise TypeError(f"{name} has dtype {a.dtype}, but {pname} has {p.dtype}")
            if a.shape != p.shape:
                raise ValueError(f"{name} has shape {a.shape}, but {pname} has {p.shape}")
            named.append((name, a))
        for name, a in named:
            if a.nbytes:
                owners.append(name)
                lows.append(_address(a))
                highs.append(_address(a) + a.nbytes)
    lo = np.array(lows, dtype=np.uint64)
    hi = np.array(highs, dtype=np.uint64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    clash = np.flatnonzero(hi[:-1] > lo[1:])
    if clash.size:
        i = clash[0]
        a, b = owners[order[i]], owners[order[i + 1]]
        raise ValueError(
            f"{a} and {b} share memory; every parameter and state array must own its "
            "memory (was one array passed twice, or a view of another?)"
        )
    return lo, hi


def _byte_bounds(a):
    try:
        from numpy.lib.array_utils import byte_bounds
    except ImportError:  # NumPy < 2
        byte_bounds = np.byte_bounds
    return byte_bounds(a)


def check_grads(grads, params, written_lo, written_hi, first_index=0):
    """Check gradients against their params; return a list the kernels can read.

    A gradient must be an ndarray of its param's dtype and shape that shares no memory with
    any param or state array. A non-contiguous or unaligned gradient is copied once into a
    contiguous array (the only case in which a step allocates).
    """
    checked = []
    for k, (g, p) in enumerate(zip(grads, params)):
        name = f"grads[{first_index + k}]"
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(g).__name__}")
        if g.dtype != p.dtype:
            raise TypeError(
                f"{name} has dtype {g.dtype}, but params[{first_index + k}] has {p.dtype}"
            )
        if g.shape != p.shape:
            raise ValueError(
                f"{name} has shape {g.shape}, but params[{first_index + k}] has {p.shape}"
            )
        if g.size and written_lo.size:
            g_lo, g_hi = _byte_bounds(g)
            j = np.searchsorted(written_lo, np.uint64(g_hi), side="left") - 1
            if j >= 0 and int(written_hi[j]) > g_lo:
                raise ValueError(
                    f"{name} shares memory with a parameter or state array of the "
                    "optimizer; pass a separate gradient array"
                )
        if not (g.flags.c_contiguous and g.flags.aligned):
            g = np.array(g, order="C", copy=True)
        checked.append(g)
    return checked


def as_grad_list(grads, n_params):
    """Turn ``step()``'s argument into a list of length ``n_params``."""
    if isinstance(grads, np.ndarray):
        if n_params != 1:
            raise ValueError(
                f"step() got one gradient array, but the optimizer has {n_params} parameters; "
                "pass a sequence of gradients in parameter order"
            )
        return [grads]
    if isinstance(grads, (set, frozenset, dict)):
        raise TypeError("grads must be an ndarray or an ordered sequence of ndarrays")
    try:
        grads = list(grads)
    except TypeError:
        raise TypeError(
            f"grads must be an ndarray or a sequence of ndarrays, got {type(grads).__name__}"
        ) from None
    if len(grads) != n_params:
        raise ValueError(f"expected {n_params} gradients (one per parameter), got {len(grads)}")
    return grads


def check_saved_state(entry, param, names, where):
    """Check one param's entry of a saved state dict; return ``(step, copies)``.

    ``entry`` must hold an int ``step >= 0`` and, for each of ``names``, an ndarray of the
    param's dtype and shape. The copies are C-contiguous arrays the optimizer can own.
    """
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a dict")
    missing = [key for key in ("step",) + tuple(names) if key not in entry]
    if missing:
        raise ValueError(f"{where} is missing {missing}")
    step = entry["step"]
    if isinstance(step, np.ndarray) and step.ndim == 0:
        step = step.item()
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{where}: step must be an int, got {step!r}")
    if step < 0:
        raise ValueError(f"{where}: step must be >= 0, got {step}")
    copies = {}
    for name in names:
        a = entry[name]
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{where}['{name}'] must be an ndarray")
        if a.dtype != param.dtype:
            raise TypeError(f"{where}['{name}'] has dtype {a.dtype}, the param has {param.dtype}")
        if a.shape != param.shape:
            raise ValueError(f"{where}['{name}'] has shape {a.shape}, the param has {param.shape}")
        copies[name] = np.array(a, order="C", copy=True)
    return int(step), copies


def check_state_dict_layout(state_dict, param_groups):
    """Check a state dict's outer layout against an optimizer's groups.

    Returns ``(saved_state, [(where, saved_group, hyperparameters), ...])``, one entry per
    group, after checking that it is ``{"state": dict, "param_groups": list}`` with as many
    groups as the optimizer and as many params in each.
    """
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        raise ValueError("state_dict must be a dict with exactly 'state' and 'param_groups'")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
        raise TypeError("state_dict['param_groups'] must be a list and ['state'] a dict")
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"state_dict has {len(saved_groups)} parameter groups, the optimizer has "
            f"{len(param_groups)}"
        )
    groups = []
    for gi, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        where = f"state_dict['param_groups'][{gi}]"
        if not isinstance(saved, dict) or "params" not in saved:
            raise ValueError(f"{where} must be a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"{where} has {len(saved['params'])} params, the optimizer's group has "
                f"{len(group['params'])}"
            )
        groups.append((where, saved, {k: v for k, v in saved.items() if k != "params"}))
    return saved_state, groups
