"""SparseAdam: lazy Adam updates of the rows of 2-D tables (embeddings) a step touches.

The gradient of a table is given as ``(indices, values)``; only the listed rows of the
table and of its two moment arrays change, in one compiled pass whose cost is
proportional to ``len(indices) * dim``, never to the number of rows of the table.
"""

import functools
from typing import Any, Sequence

import numpy as np

from fusedadam import _validation, reference
from fusedadam._algorithms import ALGORITHMS
from fusedadam._backend import _kernels
from fusedadam.engine import Outcome, needs_scan, nonfinite_outcome
from fusedadam.engine import _rules
from fusedadam.engine._plan import plan_entries
from fusedadam.optim import (
    Backend,
    Betas,
    LearningRate,
    NonFinite,
    Optimizer,
    Params,
    Threads,
    _documented,
    _hyperparameters,
)

__all__ = ["SparseAdam", "group_rows"]

# The one scalar rule (_scalars.h), or its twin where the extension is not built.
_step_scalars = _kernels.step_scalars if _kernels is not None else reference.step_scalars


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
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], cuts, [ordered.size])).astype(np.intp, copy=False)
    return ordered[starts[:-1]], order, starts


@_documented
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

    Examples
    --------
    >>> import numpy as np, fusedadam as fa
    >>> W = np.zeros((1000, 8), dtype=np.float32)
    >>> opt = fa.SparseAdam([W], lr=1e-2)
    >>> opt.step([(np.array([3, 7, 3]), np.ones((3, 8), dtype=np.float32))])
    >>> int(np.count_nonzero(W.any(axis=1)))
    2
    """

    algorithm = ALGORITHMS["sparse_adam"]

    # fmt: off
    def __init__(self, params: Params, lr: LearningRate = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False, num_threads: Threads = None,
                 backend: Backend = "auto", nonfinite: NonFinite = "error") -> None:
        super().__init__(params, _hyperparameters(locals()))
    # fmt: on

    def _check_params(self, params, first):
        for k, p in enumerate(params):
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(
                    f"params[{first + k}] has dtype {p.dtype}; SparseAdam takes float32 and "
                    "float64 tables"
                )
            if p.ndim != 2:
                raise ValueError(
                    f"params[{first + k}] has shape {p.shape}; SparseAdam needs 2-D tables "
                    "(rows, dim)"
                )

    def step(self, grads: Sequence[Any]) -> None:  # type: ignore[override]
        """Update the touched rows of every table from ``grads``, in place.

        ``grads`` is a sequence with one entry per parameter (over all groups, in order):
        ``(indices, values)`` with integer ``indices`` of shape ``(k,)`` and ``values`` of
        shape ``(k, dim)`` and the table's dtype, or ``None`` to leave that table (and its
        step count) alone. Everything is checked before anything is written.
        """
        with self._lock:
            prepared = self._prepare(grads)
            for plan in prepared:
                if not needs_scan(plan["nonfinite"], False):
                    continue
                values = plan["values"]
                found = (
                    _kernels.sparse_first_nonfinite(values)
                    if plan["compiled"]
                    else reference.first_nonfinite([values])
                )
                if found >= 0:
                    index = plan["index"]
                    outcome = nonfinite_outcome(
                        plan["nonfinite"],
                        functools.partial(_validation.nonfinite_error, [values], index, 0, found),
                    )
                    if outcome == Outcome.SKIPPED:
                        self.skipped_steps += 1
                        return
            for plan in prepared:
                self._run(plan)

    def _group_hyper(self, gi, group):
        """Group ``gi``'s validated hyperparameters, validated again only when one of its
        values is no longer the object last validated (the dense engine's rule)."""
        cache = self.__dict__.setdefault("_hyper_cache", {})
        cached = cache.get(id(group))
        if cached is not None and cached[0] is group:
            spec = cached[1]
            if all(group.get(k) is v for k, v in zip(spec.keys, spec.values)):
                return spec
        spec = self._check_hyper(gi)
        cache[id(group)] = (group, spec)
        return spec

    def _prepare(self, grads):
        """Check every group, table, state entry and gradient; return what each touched
        table's step needs. Writes nothing."""
        params = [p for g in self.param_groups for p in g["params"]]
        if isinstance(grads, (np.ndarray, set, frozenset, dict)):
            raise TypeError(
                "grads must be a sequence with one (indices, values) pair or None per parameter"
            )
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(
                f"expected {len(params)} gradients (one per parameter), got {len(grads)}"
            )
        _validation.check_params(params)
        self._check_params(params, 0)
        named, states = [], {}
        for k, p in enumerate(params):
            pname = f"params[{k}]"
            named.append((pname, p))
            st = self.state.get(p)
            if st is not None:
                names = self.algorithm.state_names
                dtypes = {name: p.dtype for name in names}
                states[k] = plan_entries(self.algorithm, st, p, pname, names, (), (), [], dtypes)
                named += [(f"{n} of {pname}", states[k][n]) for n in self.algorithm.state_names]
        written_lo, written_hi = _validation.written_intervals(named)
        prepared, k = [], 0
        for gi, group in enumerate(self.param_groups):
            spec = self._group_hyper(gi, group)
            for p in group["params"]:
                if grads[k] is not None:
                    indices, values = _validation.check_sparse_grad(
                        grads[k], p, written_lo, written_hi, k
                    )
                    entries = states.get(k)
                    t = (int(entries["step"]) if entries is not None else 0) + 1
                    lr = _rules.learning_rate(spec.lr, t)
                    _, scalars, _ = _step_scalars(spec.hyper, t, lr)
                    prepared.append(
                        {
                            "param": p,
                            "entries": entries,
                            "values": values,
                            "rows": group_rows(indices),
                            "scalars": scalars,
                            "index": k,
                            "compiled": spec.backend == "compiled",
                            "nonfinite": spec.nonfinite,
                            "num_threads": spec.num_threads,
                        }
                    )
                k += 1
        return prepared

    def _run(self, plan):
        p, entries = plan["param"], plan["entries"]
        st = self.state.get(p)
        if st is None:
            st = {
                "step": np.zeros((), dtype=np.int64),
                "exp_avg": np.zeros_like(p, order="C"),
                "exp_avg_sq": np.zeros_like(p, order="C"),
            }
            self.state._set(p, st)
        else:
            st.update({key: entries[key] for key in entries if st.get(key) is not entries[key]})
        rows, order, starts = plan["rows"]
        arrays = (p, st["exp_avg"], st["exp_avg_sq"], plan["values"], rows, order, starts)
        if plan["compiled"]:
            _kernels.sparse_adam_step(*arrays, plan["scalars"], plan["num_threads"])
        else:
            reference.sparse_adam_update(*arrays, plan["scalars"])
        _rules.count([st["step"]])
