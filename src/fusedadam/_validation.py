"""Every check that runs before compiled code is entered, with the error messages.

Arrays are named the way users see them: ``params[i]`` and ``grads[i]`` with ``i`` the
parameter's position over all groups, and state as ``exp_avg of params[i]``.
"""

import math
import numbers

import numpy as np

from fusedadam import _algorithms, _constants, _precision, reference

FLOAT_DTYPES = _precision.PARAM_DTYPES
#: The smallest eps accepted: times sqrt(1 - beta2) >= 1e-8 it stays above float32's
#: smallest subnormal (1.4e-45).
MIN_EPS = 1e-30
NONFINITE_MODES = ("error", "skip", "ignore")
BACKENDS = ("auto", "compiled", "numpy")


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_lr(lr, where=""):
    """Check a learning rate value (not a callable): a finite real >= 0; return it as float."""
    if not _is_real(lr):
        raise TypeError(
            f"{where}Invalid learning rate: {lr!r} (expected a real number or a callable)"
        )
    if not math.isfinite(lr) or lr < 0.0:
        raise ValueError(f"{where}Invalid learning rate: {lr}")
    return float(lr)


_BETAS_SHAPE = {2: "a pair (beta1, beta2)", 3: "a triple (beta1, beta2, beta3)"}


def _check_betas(betas, where, expected=2):
    try:
        n_betas = len(betas)
    except TypeError:
        n_betas = -1
    if n_betas != expected:
        raise ValueError(f"{where}Invalid betas: {betas!r} (expected {_BETAS_SHAPE[expected]})")
    for i, beta in enumerate(betas):
        if not _is_real(beta):
            raise TypeError(f"{where}Invalid beta parameter at index {i}: {beta!r}")
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"{where}Invalid beta parameter at index {i}: {beta}")


def _real_checker(label, ok, rule):
    def check(value, where):
        if not _is_real(value):
            raise TypeError(f"{where}Invalid {label} value: {value!r}")
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{where}Invalid {label} value: {value}{rule}")

    return check


def _bool_checker(name):
    def check(value, where):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}{name} must be a bool, got {value!r}")

    return check


def _check_warmup_steps(value, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}Invalid warmup_steps value: {value!r} (expected an int >= 0)")
    if not 0 <= int(value) < MAX_STEP:
        raise ValueError(f"{where}Invalid warmup_steps value: {value} (must be in [0, 2**53))")


def check_schedule_free_beta1(betas, where=""):
    """Schedule-Free's ``eval()`` needs beta1 > 0: it recovers x from y with the weight
    ``1 - 1/beta1`` (with beta1 = 0, y is z and x is lost). Training takes any beta1."""
    if betas[0] <= 0.0:
        raise ValueError(
            f"{where}Invalid beta parameter at index 0 for eval(): {betas[0]} (eval() "
            "recovers the average x from y with the weight 1 - 1/beta1; with beta1 = 0 the "
            "params hold z and x is not kept)"
        )


def _check_nonfinite(mode, where):
    if not isinstance(mode, str) or mode not in NONFINITE_MODES:
        raise ValueError(
            f"{where}Invalid nonfinite mode {mode!r}; expected one of {NONFINITE_MODES}"
        )


def _check_backend(backend, where):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{where}Invalid backend {backend!r}; expected one of {BACKENDS}")


def _check_lr_entry(lr, where):
    if not callable(lr):
        check_lr(lr, where)


def _check_num_threads_entry(value, where):
    check_num_threads(value, where)


def _check_state_dtype(value, where):
    if value not in _precision.STATE_DTYPE_OPTIONS or not isinstance(value, (str, type(None))):
        raise ValueError(
            f"{where}Invalid state_dtype {value!r}; expected one of "
            f"{_precision.STATE_DTYPE_OPTIONS}"
        )


def _check_master(value, where):
    if not isinstance(value, str) or value not in _precision.MASTER_OPTIONS:
        raise ValueError(
            f"{where}Invalid master {value!r}; expected one of {_precision.MASTER_OPTIONS}"
        )


def _check_max_grad_norm(value, where):
    if value is None:
        return
    if not _is_real(value):
        raise TypeError(f"{where}Invalid max_grad_norm value: {value!r} (a float > 0, or None)")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{where}Invalid max_grad_norm value: {value} (must be finite and > 0)")


def grad_scale_value(value, t, where=""):
    """This step's gradient scale from a ``grad_scale`` entry: a finite real > 0, a callable
    ``grad_scale(t)`` returning one, or a one-element float array read now (the array of an
    AMP loss scaler, updated in place between steps). Returns it as a float."""
    label = "grad_scale"
    if callable(value) and not isinstance(value, np.ndarray):
        value = value(t)
        label = f"grad_scale({t}) returned"
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind != "f":
            raise ValueError(
                f"{where}Invalid {label}: an array of shape {value.shape} and dtype "
                f"{value.dtype} (expected one floating-point element)"
            )
        value = float(value.reshape(-1)[0])
    if not _is_real(value):
        raise TypeError(f"{where}Invalid {label}: {value!r} (expected a real number > 0)")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{where}Invalid {label}: {value} (must be finite and > 0)")
    return float(value)


def _check_grad_scale(value, where):
    if callable(value) and not isinstance(value, np.ndarray):
        return
    grad_scale_value(value, 0, where)


def _rule_checker(name, rule):
    """The check of an algorithm's hyperparameter from its registry ``Rule``."""
    if not rule.optional:
        return _real_checker(name, rule.ok, rule.text)

    def check(value, where):
        if value is None:
            return
        if not _is_real(value):
            raise TypeError(f"{where}Invalid {name} value: {value!r}{rule.optional}")
        if not (math.isfinite(value) and rule.ok(value)):
            raise ValueError(f"{where}Invalid {name} value: {value}{rule.text}")

    return check


# One checker per hyperparameter key; a group is checked on the keys it has. eps > 0 keeps
# every denominator positive: sqrt(v)/sqrt(bc2) + eps >= eps (Adam) and u >= |g| + eps
# (Adamax), so the kernels never divide by zero. The algorithms' own hyperparameters are
# checked by their registry rules (ranges) or as bools.
HYPERPARAMETER_CHECKS = {
    "lr": _check_lr_entry,
    "betas": _check_betas,
    # eps is folded into the step's scalars (eps * sqrt(1 - beta2**t)) and used in
    # float32: below MIN_EPS it can vanish there, and a zero gradient then gives 0/0 = NaN.
    "eps": _real_checker(
        "epsilon",
        lambda x: x >= MIN_EPS,
        " (must be finite and >= 1e-30: a smaller eps "
        "vanishes in float32 arithmetic, where 0/0 is NaN)",
    ),
    "weight_decay": _real_checker("weight_decay", lambda x: x >= 0.0, ""),
    "nonfinite": _check_nonfinite,
    "backend": _check_backend,
    "num_threads": _check_num_threads_entry,
    "state_dtype": _check_state_dtype,
    "grad_scale": _check_grad_scale,
    "max_grad_norm": _check_max_grad_norm,
    "master": _check_master,
    "warmup_steps": _check_warmup_steps,
    **{name: _rule_checker(name, rule) for name, rule in _algorithms.HYPERPARAMETER_RULES.items()},
    **{
        name: _bool_checker(name)
        for name, (kind, _) in _algorithms.HYPERPARAMETER_DOCS.items()
        if kind == "bool"
    },
}


def stable_adamw_max_lr(lr, decouple_lr, max_lr):
    """StableAdamW's ``max_lr`` as torch-optimi sets it: with ``decouple_lr`` and no
    ``max_lr``, the lr given at construction when it is a positive number (a schedule, a
    tensor or 0 leaves it None, which ``check_option_combinations`` then refuses)."""
    if decouple_lr and max_lr is None and _is_real(lr) and lr > 0:
        return float(lr)
    return max_lr


def check_option_combinations(group, where=""):
    """The rules between one group's options (each already valid on its own)."""
    if group.get("decouple_lr") and group.get("max_lr") is None:
        raise ValueError(
            f"{where}decouple_lr=True needs max_lr (the largest learning rate of the "
            "schedule; the optimizers take their lr at construction)"
        )


def check_hyperparameters(group, keys, where="", n_betas=2):
    """Validate the hyperparameters ``keys`` of one group (a dict), raising on the first bad
    one. ``where`` prefixes messages, e.g. ``"param_groups[1]: "``. ``n_betas`` is how many
    betas the algorithm takes (``Algorithm.n_betas``)."""
    for key in keys:
        if key not in group:
            raise ValueError(f"{where}has no {key!r} entry")
        if key == "betas":
            _check_betas(group[key], where, n_betas)
        else:
            HYPERPARAMETER_CHECKS[key](group[key], where)
    for key in keys:  # the registry's rules between a hyperparameter and the others
        rule = _algorithms.HYPERPARAMETER_RULES.get(key)
        message = rule.across(group) if rule is not None and rule.across is not None else None
        if message is not None:
            raise ValueError(f"{where}{message}")


def check_num_threads(num_threads, where=""):
    """None, -1 or a positive int; 0 and other negatives are errors. Counts above the
    compiled maximum are used as that maximum (``_kernels.MAX_NUM_THREADS``)."""
    if num_threads is None:
        return
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"{where}num_threads must be None or an int, got {num_threads!r}")
    if num_threads == 0 or num_threads < -1:
        raise ValueError(
            f"{where}Invalid num_threads: {num_threads} (use None for the OpenMP default, "
            "-1 for all processors, or a positive count)"
        )


def _address(a):
    return a.__array_interface__["data"][0]


def _check_written_array(a, name, dtypes=FLOAT_DTYPES):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}{torch_hint(a)}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; the mask would be ignored: pass a plain ndarray"
        )
    if a.dtype.newbyteorder("=") not in dtypes:
        raise TypeError(f"{name} has dtype {a.dtype}; supported: {_precision.dtype_names(dtypes)}")
    if not a.dtype.isnative:
        raise TypeError(
            f"{name} has non-native byte order ({a.dtype.str}); it is updated in "
            "place, so convert it first (a.astype(a.dtype.newbyteorder('=')))"
        )
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place and must be writeable")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; it is updated in place and must be")
    if not a.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype; it must be")


def check_params(params, first_index=0):
    """Check a list of parameter arrays: float, native, writeable, contiguous, no duplicates."""
    seen: dict = {}
    for k, p in enumerate(params):
        name = f"params[{first_index + k}]"
        _check_written_array(p, name)
        if id(p) in seen:
            raise ValueError(
                f"{name} is the same array as params[{seen[id(p)]}]; a parameter may "
                "appear only once in an optimizer"
            )
        seen[id(p)] = first_index + k


def check_state_array(a, name, param, pname, dtype, shape=None):
    """A state array the step writes: of ``dtype``, shaped like its param (or ``shape``: an
    8-bit state's scales), writeable, native."""
    _check_written_array(a, name, FLOAT_DTYPES + _precision.Q8_DTYPES + (_precision.INT16,))
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype}, but {pname} ({param.dtype}) keeps it in {dtype} "
            "(load a state_dict with convert=True to change a state's dtype)"
        )
    if shape is not None and tuple(shape) != param.shape:
        if a.shape != tuple(shape):
            raise ValueError(
                f"{name} has shape {a.shape}; {pname} ({param.size} elements) has one scale "
                f"per block of {_constants.Q8_BLOCK}: {tuple(shape)}"
            )
    elif a.shape != param.shape:
        raise ValueError(f"{name} has shape {a.shape}, but {pname} has {param.shape}")


def check_step_array(a, name, dtype):
    """A per-param 0-d counter (``step``: int64, ``mu_product``: float64) the step writes."""
    if (
        type(a) is not np.ndarray
        or a.shape != ()
        or a.dtype != dtype
        or not a.flags.writeable
        or not a.dtype.isnative
    ):
        raise TypeError(
            f"{name} must be a writeable 0-d numpy {np.dtype(dtype).name} array (the "
            f"optimizer updates it in place), got {a!r}; set its value with "
            f"state['...'][...] = value"
        )


def written_intervals(named_arrays):
    """Sorted, disjoint byte intervals ``(lo, hi)`` of ``[(name, array), ...]``.

    Raises if any two arrays overlap (names them). Zero-size arrays take no memory.
    """
    owners, lows, highs = [], [], []
    for name, a in named_arrays:
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
    """``(low, high)`` byte addresses spanned by the elements of ``a`` (any strides)."""
    low = high = _address(a)
    for n, stride in zip(a.shape, a.strides):
        extent = (n - 1) * stride
        if extent < 0:
            low += extent
        else:
            high += extent
    return low, high + a.itemsize


def aliases_written(a, written_lo, written_hi):
    """True when ``a`` overlaps one of the sorted, disjoint byte intervals ``[lo, hi)``."""
    if not a.size or not written_lo.size:
        return False
    a_lo, a_hi = _byte_bounds(a)
    j = np.searchsorted(written_lo, np.uint64(a_hi), side="left") - 1
    return bool(j >= 0 and int(written_hi[j]) > a_lo)


def readable(a, dtype, written_lo, written_hi, name, verb="shares"):
    """A gradient the kernels may read: sharing no memory with a written array (else an
    error naming it), native, contiguous and aligned (else a copy of the same shape: 0-d
    included, which ascontiguousarray would make 1-d)."""
    if aliases_written(a, written_lo, written_hi):
        raise ValueError(
            f"{name} {verb} memory with a parameter or state array of the optimizer; pass "
            "a separate array (e.g. a copy)"
        )
    if not (a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative):
        a = np.array(a, dtype=dtype, order="C", copy=True)
    return a


def as_gradient(g, name):
    """``g`` as a plain ndarray: subclasses (memmap, matrix) viewed as ndarray; a masked
    array or anything else is an error."""
    if type(g) is np.ndarray:
        return g
    if isinstance(g, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; the mask would be ignored: pass "
            "np.ma.filled(g, 0) or a plain ndarray"
        )
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(g).__name__}{torch_hint(g)}")
    return np.asarray(g)


def check_grads(grads, params, written_lo, written_hi, first_index=0):
    """Check gradients against their params; return a list the kernels can read.

    A gradient must be an ndarray of its param's dtype and shape that shares no memory with
    any param or state array. A non-contiguous, unaligned or byte-swapped gradient is copied
    once into a native contiguous array (the only case in which a step allocates).
    """
    written_lo = np.asarray(written_lo, dtype=np.uint64)
    written_hi = np.asarray(written_hi, dtype=np.uint64)
    checked = []
    for k, (g, p) in enumerate(zip(grads, params)):
        name = f"grads[{first_index + k}]"
        g = as_gradient(g, name)
        allowed = _precision.grad_dtypes(p.dtype)
        dtype = g.dtype.newbyteorder("=")
        if dtype not in allowed:
            raise TypeError(
                f"{name} has dtype {g.dtype}, but params[{first_index + k}] ({p.dtype}) "
                f"takes gradients of dtype {_precision.dtype_names(allowed)}"
            )
        if g.shape != p.shape:
            raise ValueError(
                f"{name} has shape {g.shape}, but params[{first_index + k}] has {p.shape}"
            )
        checked.append(readable(g, dtype, written_lo, written_hi, name))
    return checked


def torch_hint(obj):
    """For a torch tensor given to the NumPy front end: where tensors go (else "")."""
    if type(obj).__module__.split(".")[0] != "torch":
        return ""
    return (
        "; fusedadam.Adam & co. take NumPy arrays. For torch tensors use fusedadam.torch, "
        "e.g. fusedadam.torch.AdamW(model.parameters()), a torch.optim.Optimizer"
    )


def as_grad_list(grads, n_params):
    """Turn ``step()``'s argument into a list of length ``n_params``."""
    hint = torch_hint(grads)
    if hint:
        raise TypeError(f"grads must be an ndarray or a sequence of ndarrays, got a tensor{hint}")
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


def nonfinite_error(grads, first_index, k, element):
    """The FloatingPointError for a NaN/inf at flat ``element`` of gradient ``k`` of a group."""
    grad = np.asarray(grads[k])
    count = int(np.count_nonzero(~np.isfinite(grad)))
    index = np.unravel_index(element, grad.shape) if grad.ndim > 1 else element
    return FloatingPointError(
        f"grads[{first_index + k}] has {count} non-finite value"
        f"{'s' if count != 1 else ''} (NaN or inf; the first at index {index}); nothing was "
        "updated. Use nonfinite='skip' to skip such steps or 'ignore' to let them propagate."
    )


#: Step counts run from 0 to below 2**53: the step number ``t`` enters the bias
#: corrections as a float64, exact up to there (and an int64 counter never wraps).
MAX_STEP = 2**53


def _saved_counter(value, where, name, integral):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if integral:
        if (
            isinstance(value, (float, np.floating))
            and math.isfinite(value)
            and float(value).is_integer()
        ):
            value = int(value)  # a whole number kept as a float (torch keeps step so)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where}: {name} must be a whole number, got {value!r}")
        if not 0 <= int(value) < MAX_STEP:
            raise ValueError(f"{where}: {name} must be >= 0 and < 2**53, got {value}")
        return int(value)
    if not _is_real(value) or not math.isfinite(value):
        raise TypeError(f"{where}: {name} must be a finite real number, got {value!r}")
    return float(value)


def convert_8bit(entry, dtypes, signed):
    """``entry`` with its moments moved between 8-bit and other dtypes, for ``convert``:
    8-bit codes saved (with their scales) are dequantized where this optimizer keeps
    another dtype (a float one, or the other 8-bit map); a float moment is quantized
    (through float32) where it keeps 8 bits."""
    entry = dict(entry)
    for name, is_signed in signed.items():
        a, scale = entry.get(name), _precision.scale_name(name)
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
            continue
        target = dtypes.get(name)
        if _precision.is_q8(a.dtype) and target != a.dtype and scale in entry:
            absmax = np.asarray(entry.pop(scale), dtype=np.float32)
            if absmax.shape != (-(-a.size // _constants.Q8_BLOCK),):
                raise ValueError(f"{scale} has shape {absmax.shape} for {a.size} codes")
            a = entry[name] = reference.q8_dequantize(a, absmax, is_signed)
        if _precision.is_q8(target) and a.dtype in FLOAT_DTYPES:
            with np.errstate(over="ignore"):
                entry[name], entry[scale] = reference.q8_quantize(
                    a.astype(np.float32), is_signed, _precision.is_companded(target)
                )
    return entry


# The key under which check_saved_state returns a param's new value (a conversion to the
# master_residual layout rewrites the param as its master encodes); never a saved key.
NEW_PARAM = object()


def _saved_master(entry, name, param, kinds, where):
    """Saved master array ``name`` of ``entry``, checked for a conversion."""
    a = entry.pop(name)
    if not isinstance(a, np.ndarray) or a.dtype.kind not in kinds or a.shape != param.shape:
        raise ValueError(
            f"{where}['{name}'] must be an ndarray of the param's shape {param.shape} to convert it"
        )
    return a


def _convert_master(entry, param, required, where, dtype):
    """``entry`` with its master moved between the float32 ``master_param`` and the
    ``master_residual`` layouts, for ``convert`` (exact both ways for the int16 residual,
    the NaN payloads aside; to the int8 residual of ``master="compact"`` as it rounds): a
    saved float32 master becomes its residual, and the param is rewritten as the master
    encodes (returned under ``NEW_PARAM``: it differs from the rounded param a
    float32-master step wrote only at exact ties); a saved residual becomes the master it
    encodes with the param (a residual of the other width goes through that master); a
    missing master is made from the param. ``dtype`` is the residual's this optimizer
    keeps."""
    f32, res = _precision.MASTER, _precision.MASTER_RESIDUAL
    saved = entry.get(res)
    if (
        res in required
        and isinstance(saved, np.ndarray)
        and saved.dtype != dtype
        and saved.dtype in _precision.RESIDUAL_DTYPES.values()
        and f32 not in entry
        and param.dtype == _precision.BFLOAT16
    ):
        # the other residual width: through the float32 master it encodes
        saved = _saved_master(entry, res, param, "i", where)
        entry[f32] = reference.master_decode(param, saved).reshape(param.shape)
    if res in required and res not in entry:
        if f32 in entry:
            if not param.flags.writeable:
                raise ValueError(f"{where}: converting to master_residual writes the param")
            master = _saved_master(entry, f32, param, "f", where).astype(np.float32)
            entry[NEW_PARAM], entry[res] = reference.master_encode(master, dtype)
            entry[NEW_PARAM] = entry[NEW_PARAM].reshape(param.shape)
            entry[res] = entry[res].reshape(param.shape)
        else:
            entry[res] = np.zeros(param.shape, dtype=dtype)
    if f32 in required and f32 not in entry:
        if res in entry and param.dtype == _precision.BFLOAT16:
            residual = _saved_master(entry, res, param, "iu", where)
            if residual.dtype != np.int8:  # int8: master="compact"'s
                residual = residual.astype(np.int16)
            entry[f32] = reference.master_decode(param, residual).reshape(param.shape)
        else:
            entry[f32] = param.astype(np.float32)
    for name in (f32, res):
        if name not in required:
            entry.pop(name, None)
    return entry


def check_saved_state(
    entry, param, required, optional, scalar_state, dtypes, convert, where, signed=None
):
    """Check one param's entry of a saved state dict.

    ``entry`` must hold an int ``step >= 0``, each of ``required`` (and may hold each of
    ``optional``) as an ndarray of the param's shape and of the dtype ``dtypes[name]`` this
    optimizer keeps it in, and each scalar state; no other key. A state saved in another
    dtype (``state_dtype``, or a param that changed precision) loads only with ``convert``:
    then it is cast (rounded to nearest even), a missing ``master_param`` is made from the
    param and one the param no longer needs is dropped. Returns ``(step, {name:
    C-contiguous copy}, {scalar name: float})``.
    """
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a dict")
    master = _precision.MASTER
    if not convert:
        for name in (*required, *optional):
            a = entry.get(name)
            if (
                isinstance(a, np.ndarray)
                and name in dtypes
                and a.dtype != dtypes[name]
                and (_precision.is_q8(a.dtype) or _precision.is_q8(dtypes[name]))
            ):
                raise TypeError(
                    f"{where}['{name}'] has dtype {a.dtype}, but this optimizer keeps it in "
                    f"{dtypes[name]} (state_dtype '8bit', '8bit_companded' or neither: "
                    "uint8 and int8 codes are those two maps); pass convert=True to "
                    "load_state_dict to convert it"
                )
    if convert:
        entry = convert_8bit(entry, dtypes, signed or {})
        dtype = dtypes.get(_precision.MASTER_RESIDUAL, _precision.INT16)
        entry = _convert_master(entry, param, required, where, dtype)
    residual = _precision.MASTER_RESIDUAL
    scalar_names = tuple(name for name, _ in scalar_state)
    missing = [key for key in ("step",) + tuple(required) + scalar_names if key not in entry]
    if missing:
        hint = (
            " (bfloat16/float16 params keep a float32 master_param: pass convert=True to "
            "make it from the param, or from a saved master_residual)"
            if master in missing
            else " (master='residual'/'compact' keeps a master_residual: pass convert=True "
            "to make "
            "it from a saved master_param, or from the param)"
            if residual in missing
            else ""
        )
        raise ValueError(f"{where} is missing {missing}{hint}")
    known = {"step", NEW_PARAM, *required, *optional, *scalar_names}
    unknown = sorted(str(key) for key in entry if key not in known)
    if unknown:
        hint = " (pass convert=True to drop it)" if unknown in ([master], [residual]) else ""
        raise ValueError(f"{where} has unexpected entries {unknown} for this optimizer{hint}")
    step = _saved_counter(entry["step"], where, "step", integral=True)
    scalars = {
        name: _saved_counter(entry[name], where, name, integral=False) for name in scalar_names
    }
    copies = {}
    for name in tuple(required) + tuple(n for n in optional if n in entry):
        a = entry[name]
        dtype = dtypes[name]
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{where}['{name}'] must be an ndarray")
        saved = a.dtype.newbyteorder("=")
        if saved != dtype and not (convert and saved in FLOAT_DTYPES):
            raise TypeError(
                f"{where}['{name}'] has dtype {a.dtype}, but this optimizer keeps it in "
                f"{dtype}; pass convert=True to load_state_dict to convert it"
            )
        shape = _precision.state_shape(name, param)
        if a.shape != shape and shape == param.shape:
            raise ValueError(f"{where}['{name}'] has shape {a.shape}, the param has {param.shape}")
        if a.shape != shape:
            raise ValueError(f"{where}['{name}'] has shape {a.shape}; expected {shape}")
        with np.errstate(over="ignore"):
            copies[name] = np.array(a, dtype=dtype, order="C", copy=True)
    if NEW_PARAM in entry:
        copies[NEW_PARAM] = entry[NEW_PARAM]
    return step, copies, scalars


def check_state_dict_layout(state_dict, param_groups):
    """Check a state dict's outer layout against an optimizer's groups.

    Returns ``(saved_state, [(where, saved_group, hyperparameters), ...])``, one entry per
    group, after checking that it is ``{"state": dict, "param_groups": list}`` with as many
    groups as the optimizer, as many params in each, and no param listed twice.
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
    groups, used = [], set()
    for gi, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        where = f"state_dict['param_groups'][{gi}]"
        if (
            not isinstance(saved, dict)
            or "params" not in saved
            or not isinstance(saved["params"], (list, tuple))
        ):
            raise ValueError(f"{where} must be a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"{where} has {len(saved['params'])} params, the optimizer's group has "
                f"{len(group['params'])}"
            )
        for saved_id in saved["params"]:
            try:
                hash(saved_id)
            except TypeError:
                raise TypeError(f"{where}['params'] holds an unhashable id {saved_id!r}") from None
            if saved_id in used:
                raise ValueError(f"state_dict['state'][{saved_id!r}] is listed in two groups")
            used.add(saved_id)
        groups.append((where, saved, {k: v for k, v in saved.items() if k != "params"}))
    return saved_state, groups


def check_sparse_grad(grad, param, written_lo, written_hi, k):
    """Validate SparseAdam's ``grads[k]`` against ``params[k]``: ``(indices, values)`` with
    integer 1-D indices in range and ``values`` of shape ``(len(indices), dim)`` and the
    table's dtype, sharing no memory with the table or its state. Returns ``(indices,
    values)`` as native contiguous arrays (a copy only where needed)."""
    name = f"grads[{k}]"
    if not isinstance(grad, (tuple, list)) or len(grad) != 2:
        raise TypeError(
            f"{name} must be a pair (indices, values) or None, got {type(grad).__name__}"
        )
    indices, values = grad
    if not isinstance(indices, np.ndarray):
        if not all(
            isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_))
            for i in np.ravel(np.asarray(indices, dtype=object))
        ):
            raise TypeError(f"{name}: indices must be integers, got {indices!r}")
        indices = np.asarray(indices, dtype=np.int64)
    indices = as_gradient(indices, f"{name}: indices")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{name}: indices have dtype {indices.dtype}; expected an integer dtype")
    if indices.ndim != 1:
        raise ValueError(f"{name}: indices must be 1-D (k,), got shape {indices.shape}")
    n_rows, dim = param.shape
    values = as_gradient(values, f"{name}: values")
    if values.dtype.newbyteorder("=") != param.dtype:
        raise TypeError(
            f"{name}: values have dtype {values.dtype}, but params[{k}] has {param.dtype}"
        )
    if values.shape != (indices.size, dim):
        raise ValueError(
            f"{name}: values have shape {values.shape}; expected (len(indices), dim) = "
            f"({indices.size}, {dim}) for params[{k}] of shape {param.shape}"
        )
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0:
            raise ValueError(f"{name}: index {lo} is negative; rows are 0 .. {n_rows - 1}")
        if hi >= n_rows:
            raise ValueError(
                f"{name}: index {hi} is out of range for params[{k}] with {n_rows} rows"
            )
    return indices, readable(
        values, param.dtype, written_lo, written_hi, f"{name}: values", "share"
    )
