"""SparseAdam: lazy Adam updates of the rows of 2-D tables (embeddings) a step touches.

The gradient of a table is given as ``(indices, values)``; only the listed rows of the
table and of its two moment arrays change, in one compiled pass whose cost is
proportional to ``len(indices) * dim``, never to the number of rows of the table.
"""
import math
import numbers
import threading
import warnings

import numpy as np

from fusedadam import _validation, reference
from fusedadam._threads import effective_num_threads
from fusedadam.functional import learning_rate, resolve_backend
from fusedadam.optim import Optimizer, _admit_param_group, _param_groups_from, _ParamState

try:
    from fusedadam import _kernels, _sparse
except ImportError:  # the extension was not built: the NumPy reference is the backend
    _sparse = None

__all__ = ["SparseAdam", "group_rows"]

_STATE_NAMES = ("exp_avg", "exp_avg_sq")
_HYPER_KEYS = ("lr", "betas", "eps", "maximize", "num_threads", "backend")
_warned_fallback = False


def _resolve_backend(backend):
    """``functional.resolve_backend``, then the same rule for the ``_sparse`` extension."""
    global _warned_fallback
    resolved = resolve_backend(backend)
    if resolved == "compiled" and _sparse is None:
        if backend == "compiled":
            raise RuntimeError(
                "backend='compiled' but fusedadam's _sparse extension is not built; "
                "rebuild with a C compiler, or use backend='numpy'"
            )
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "fusedadam's compiled _sparse extension is not available; SparseAdam uses "
                "the (slower) NumPy reference backend",
                RuntimeWarning,
                stacklevel=3,
            )
        return "numpy"
    return resolved


def _check_hyperparameters(group, where=""):
    # The dense checker's messages ("Invalid beta parameter at index 0: 1.0") for the keys
    # SparseAdam has; it has no weight decay and no beta1 schedule.
    _validation.check_hyperparameters(
        {**group, "weight_decay": 0.0, "beta1_decay": 1.0}, where
    )
    _validation.check_num_threads(group["num_threads"])


def group_rows(indices):
    """Group gradient rows by table row: ``(rows, order, starts)``.

    ``rows`` are the distinct values of ``indices`` in increasing order; the gradient rows
    of ``rows[u]`` are ``order[starts[u]:starts[u + 1]]``, in order of appearance (stable
    sort), which is the order both backends sum duplicates in. All three are ``np.intp``.
    """
    indices = np.asarray(indices, dtype=np.intp)
    k = indices.size
    if k <= 1 or bool(np.all(indices[1:] > indices[:-1])):
        # Already distinct and increasing (one index, or np.unique's output): no sort.
        steps = np.arange(k + 1, dtype=np.intp)
        return indices, steps[:k], steps
    order = np.argsort(indices, kind="stable").astype(np.intp, copy=False)
    ordered = indices[order]
    if ordered.size == 0:
        return ordered, order, np.zeros(1, dtype=np.intp)
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], cuts, [ordered.size])).astype(np.intp, copy=False)
    return ordered[starts[:-1]], order, starts


def _check_sparse_grad(grad, param, written, k):
    """Validate ``grads[k]`` against ``params[k]``; return ``(rows, order, starts, values)``."""
    name = f"grads[{k}]"
    if not isinstance(grad, (tuple, list)) or len(grad) != 2:
        raise TypeError(
            f"{name} must be a pair (indices, values) or None, got {type(grad).__name__}"
        )
    indices, values = grad
    if not isinstance(indices, np.ndarray):
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_))
                   for i in np.ravel(np.asarray(indices, dtype=object))):
            raise TypeError(f"{name}: indices must be integers, got {indices!r}")
        indices = np.asarray(indices, dtype=np.int64)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{name}: indices have dtype {indices.dtype}; expected an integer dtype")
    if indices.ndim != 1:
        raise ValueError(f"{name}: indices must be 1-D (k,), got shape {indices.shape}")
    n_rows, dim = param.shape
    if not isinstance(values, np.ndarray):
        raise TypeError(f"{name}: values must be a numpy.ndarray, got {type(values).__name__}")
    if values.dtype != param.dtype:
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
    if values.size and any(np.may_share_memory(values, a) for a in written):
        raise ValueError(
            f"{name}: values share memory with params[{k}] or its state; pass a separate "
            "array (e.g. a copy)"
        )
    if not (values.flags.c_contiguous and values.flags.aligned):
        values = np.array(values, order="C", copy=True)
    rows, order, starts = group_rows(indices)
    return rows, order, starts, values


class SparseAdam(Optimizer):
    r"""Lazy Adam for 2-D tables whose gradient touches few rows, as ``torch.optim.SparseAdam``.

    ``step(grads)`` takes one ``(indices, values)`` pair per table (or ``None``): row
    ``indices[i]`` of the table has gradient row ``values[i]``; duplicate indices are
    summed (left to right, in order of appearance). With ``t`` the table's step count
    (incremented by every step that gives it a pair, even an empty one) and ``g`` the
    summed gradient of a touched row, every element of that row does::

        g         = -g if maximize else g
        m         = m + (g - m) * (1 - beta1)
        v         = v + (g * g - v) * (1 - beta2)
        step_size = lr_t * sqrt(1 - beta2**t) / (1 - beta1**t)
        p         = p - step_size * (m / (sqrt(v) + eps))

    Rows not in ``indices`` keep their ``p``, ``m`` and ``v`` unchanged (their moments do
    not decay). ``eps`` is added outside the square root and is not bias-corrected, and
    ``step_size`` is computed in double and then cast to the table's dtype, exactly as
    torch does. One compiled pass over the touched rows, parallel over rows (each row
    written by one thread: 1 and N threads give identical bits).

    Parameters
    ----------
    params : ndarray, sequence of ndarray, or sequence of dict
        2-D tables ``(rows, dim)``, float32/float64, C-contiguous, writeable; or param
        groups ``{"params": [...], "lr": ...}`` overriding the hyperparameters below.
    lr : float or callable, default 1e-3
        Learning rate, or ``lr(t)`` returning it.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    maximize : bool, default False
    num_threads : int or None
        None follows OpenMP (``OMP_NUM_THREADS``, threadpoolctl); -1 all processors.
    backend : {"auto", "compiled", "numpy"}

    Examples
    --------
    >>> import numpy as np, fusedadam as fa
    >>> W = np.zeros((1000, 8), dtype=np.float32)
    >>> opt = fa.SparseAdam([W], lr=1e-2)
    >>> opt.step([(np.array([3, 7, 3]), np.ones((3, 8), dtype=np.float32))])
    >>> int(np.count_nonzero(W.any(axis=1)))
    2
    """

    algorithm = "sparse_adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False,
                 num_threads=None, backend="auto"):
        # Optimizer.__init__ checks the dense hyperparameters; SparseAdam has its own set.
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, maximize=maximize, num_threads=num_threads, backend=backend)
        _check_hyperparameters(defaults)
        _resolve_backend(backend)
        self.defaults = defaults
        self.param_groups = []
        self._checked_keys = []  # per group: the hyperparameters last validated
        self.state = _ParamState()
        self._lock = threading.Lock()
        for group in _param_groups_from(params):
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group ``{"params": [...], <hyperparameter overrides>}`` of 2-D tables."""
        group, where, first = _admit_param_group(param_group, self.param_groups,
                                                 self.defaults)
        for k, p in enumerate(group["params"]):
            if p.ndim != 2:
                raise ValueError(
                    f"params[{first + k}] has shape {p.shape}; SparseAdam needs 2-D tables "
                    "(rows, dim)"
                )
        _check_hyperparameters(group, f"{where}: ")
        _resolve_backend(group["backend"])
        self.param_groups.append(group)
        self._checked_keys.append(self._group_key(group))

    @staticmethod
    def _group_key(group):
        key = []
        for name in _HYPER_KEYS:
            value = group.get(name)
            if name == "betas" and not isinstance(value, tuple):
                try:  # a list or an array: compare its items, not the container
                    value = tuple(value)
                except TypeError:
                    pass
            key.append(value)
        return tuple(key)

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def step(self, grads):
        """Update the touched rows of every table from ``grads``, in place.

        ``grads`` is a sequence with one entry per parameter (over all groups, in order):
        ``(indices, values)`` with integer ``indices`` of shape ``(k,)`` and ``values`` of
        shape ``(k, dim)`` and the table's dtype, or ``None`` to leave that table (and its
        step count) alone. Everything is checked before anything is written.
        """
        with self._lock:
            params = self._params()
            if isinstance(grads, (np.ndarray, set, frozenset, dict)):
                raise TypeError(
                    "grads must be a sequence with one (indices, values) pair or None per "
                    "parameter"
                )
            grads = list(grads)
            if len(grads) != len(params):
                raise ValueError(
                    f"expected {len(params)} gradients (one per parameter), got {len(grads)}"
                )
            prepared = []
            k = 0
            for gi, group in enumerate(self.param_groups):
                key = self._group_key(group)
                if key != self._checked_keys[gi]:
                    # A group edited since its last step (lr schedules do this): recheck.
                    _check_hyperparameters(group, f"param_groups[{gi}]: ")
                    self._checked_keys[gi] = key
                backend = _resolve_backend(group["backend"])
                n_threads = effective_num_threads(group["num_threads"])
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    grad = grads[k]
                    if grad is not None:
                        _validation.check_params([p], k)
                        if p.ndim != 2:
                            raise ValueError(
                                f"params[{k}] has shape {p.shape}; SparseAdam needs 2-D tables"
                            )
                        st = self.state.get(p)
                        if st:
                            # State arrays can be swapped by hand between steps; the
                            # compiled loop trusts them, so check them before any write.
                            _validation.check_state(
                                [p], [{name: st[name] for name in _STATE_NAMES}], k)
                        written = [p] + ([st[n] for n in _STATE_NAMES] if st else [])
                        checked = _check_sparse_grad(grad, p, written, k)
                        t = (st["step"] if st else 0) + 1
                        lr_t = learning_rate(group["lr"], t)
                        step_size = lr_t * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                        scalars = (-1.0 if group["maximize"] else 1.0, 1.0 - beta1,
                                   1.0 - beta2, step_size, float(group["eps"]))
                        prepared.append((p, checked, scalars, backend, n_threads))
                    k += 1
            for p, (rows, order, starts, values), scalars, backend, n_threads in prepared:
                st = self.state.get(p)
                if st is None:
                    st = {"step": 0, "exp_avg": np.zeros_like(p, order="C"),
                          "exp_avg_sq": np.zeros_like(p, order="C")}
                    self.state._set(p, st)
                if backend == "compiled":
                    _sparse.sparse_adam_step(p, st["exp_avg"], st["exp_avg_sq"], values,
                                             rows, order, starts, scalars, n_threads,
                                             _kernels.isa_index())
                else:
                    reference.sparse_adam_update(p, st["exp_avg"], st["exp_avg_sq"], values,
                                                 rows, order, starts, scalars)
                st["step"] += 1

    # ---------------------------------------------------------------- state dict
    def state_dict(self):
        """``{"state": {i: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}``.

        The layout of :meth:`fusedadam.Optimizer.state_dict`, with ``step`` per table
        (as in torch, a table's count advances only on steps that give it a gradient).
        The arrays are the optimizer's own, not copies.
        """
        with self._lock:
            state, groups, index = {}, [], 0
            for group in self.param_groups:
                packed = {k: v for k, v in group.items() if k != "params"}
                packed["params"] = list(range(index, index + len(group["params"])))
                groups.append(packed)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st is not None:
                        state[index] = dict(st)
                    index += 1
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a ``state_dict()``: checked whole, then copied in; raises and changes
        nothing when groups, sizes, shapes, dtypes, keys or steps do not fit."""
        with self._lock:
            new_groups, new_state = self._check_state_dict(state_dict)
            for group, saved in zip(self.param_groups, new_groups):
                group.update(saved)
            self._checked_keys = [self._group_key(g) for g in self.param_groups]
            self.state = _ParamState()
            for p, st in new_state:
                self.state._set(p, st)

    def _check_state_dict(self, state_dict):
        saved_state, saved_groups = _validation.check_state_dict_layout(
            state_dict, self.param_groups)
        new_groups, new_state, index = [], [], 0
        for group, (where, saved, hyper) in zip(self.param_groups, saved_groups):
            _check_hyperparameters({**group, **hyper}, f"{where}: ")
            for k, (saved_id, p) in enumerate(zip(saved["params"], group["params"])):
                if saved_id not in saved_state:
                    continue
                pname = f"state_dict['state'][{saved_id!r}] (params[{index + k}])"
                step, st = _validation.check_saved_state(
                    saved_state[saved_id], p, _STATE_NAMES, pname)
                st["step"] = step
                new_state.append((p, st))
            new_groups.append(hyper)
            index += len(group["params"])
        return new_groups, new_state
