"""``minimize(fun, x0, ...)``: fusedadam's optimizers behind ``scipy.optimize.minimize``'s shape.

Each iteration evaluates the gradient at the current point and takes one optimizer step
(one compiled call). There is no line search: the optimizer's learning rate sets the step.
"""

import math
import sys
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from fusedadam import _algorithms

__all__ = ["OptimizeResult", "minimize", "METHODS"]

# Every dense optimizer class of the registry by its name in lower case, then two shorthands:
# "amsgrad" (Adam with amsgrad=True) and "sparse" (SparseAdam over x's rows).
_CLASS_OF_METHOD = {name.lower(): name for name in _algorithms.DEFAULTS}
METHODS = tuple(_CLASS_OF_METHOD) + ("amsgrad", "sparse")
# scipy's solver options that minimize reads itself; the rest go to the optimizer class.
SOLVER_OPTIONS = ("maxiter", "disp")
DEFAULT_MAXITER = 1000


class OptimizeResult(dict):
    """The result of :func:`minimize`: a dict whose keys are also attributes (as scipy's).

    Keys: ``x``, ``fun``, ``jac``, ``nit``, ``nfev``, ``njev``, ``status``, ``success``,
    ``message``, and with ``return_history=True`` also ``x_history`` (``nit + 1`` points,
    ``x0`` first) and ``fun_history`` (the objective at each of them).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __repr__(self):
        keys = ("message", "success", "status", "fun", "x", "nit", "nfev", "njev", "jac")
        width = max(map(len, self.keys())) if self else 0
        lines = []
        for key in keys + tuple(k for k in self if k not in keys):
            if key in self:
                value = self[key]
                if isinstance(value, list):
                    value = f"<list of {len(value)}>"
                lines.append(f"{key.rjust(width)}: {value}")
        return "\n".join(lines)

    def __dir__(self):
        return list(self.keys()) + list(super().__dir__())


def _make_optimizer(method, x, options):
    from fusedadam import optim
    from fusedadam.sparse import SparseAdam

    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}")
    method = method.lower()
    options = dict(options or {})
    if method == "amsgrad":
        if options.get("amsgrad", True) is not True:
            raise ValueError("method='amsgrad' cannot take options={'amsgrad': False}")
        options["amsgrad"] = True
    if method == "sparse":
        cls = SparseAdam
    else:
        cls = getattr(optim, _CLASS_OF_METHOD["adam" if method == "amsgrad" else method])
    try:
        return cls([x], **options)
    except TypeError as exc:
        raise TypeError(f"options for method={method!r}: {exc}") from None


def _finite_difference(fun, x, f0, counter):
    """Forward 2-point differences, scipy's default step ``sqrt(eps) * max(1, |x_i|)``."""
    flat = x.reshape(-1)
    grad = np.empty(flat.size, dtype=np.float64)
    base = np.sqrt(np.finfo(x.dtype).eps)
    probe = x.copy()
    probe_flat = probe.reshape(-1)
    for i in range(flat.size):
        h = base * max(1.0, abs(float(flat[i])))
        probe_flat[i] = flat[i] + h
        h = float(probe_flat[i]) - float(flat[i])  # the step actually representable
        grad[i] = (float(fun(probe.copy())) - f0) / h
        counter[0] += 1
        probe_flat[i] = flat[i]
    return grad.reshape(x.shape)


class _Progress:
    """What ``disp=True`` shows: a tqdm bar on a terminal when tqdm is installed, else lines.

    Lines (about ten per run, as ``iter  f  |g|``) and scipy's closing summary go to
    stdout.
    """

    def __init__(self, maxiter):
        self.every = max(1, maxiter // 10)
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=maxiter, unit="it", leave=False)
        if self.bar is None:
            print(f"{'iter':>8s}  {'f(x)':>14s}  {'|g|':>10s}")

    def update(self, nit, f, g):
        if self.bar is not None:
            self.bar.n = nit
            self.bar.set_postfix(f=f"{f:.6g}", refresh=False)
            self.bar.refresh()
        elif nit % self.every == 0:
            norm = float(np.linalg.norm(g.reshape(-1).astype(np.float64)))
            print(f"{nit:8d}  {f:14.6e}  {norm:10.3e}", flush=True)

    def close(self, result):
        if self.bar is not None:
            self.bar.close()
        print(f"{'Optimization terminated' if result.success else 'Warning'}: {result.message}.")
        print(f"         Current function value: {result.fun:.6g}")
        print(f"         Iterations: {result.nit}")
        print(f"         Function evaluations: {result.nfev}")
        print(f"         Gradient evaluations: {result.njev}", flush=True)


def _solver_options(options, maxiter):
    """Split scipy's ``maxiter``/``disp`` off ``options``; the rest is for the optimizer."""
    options = dict(options or {})
    disp = options.pop("disp", False)
    if "maxiter" in options:
        from_options = options.pop("maxiter")
        if maxiter is not None and maxiter != from_options:
            raise ValueError(
                f"maxiter={maxiter!r} and options['maxiter']={from_options!r} disagree; give one"
            )
        maxiter = from_options
    if not isinstance(disp, (bool, np.bool_)):
        raise TypeError(f"options['disp'] must be True or False, got {disp!r}")
    return options, DEFAULT_MAXITER if maxiter is None else maxiter, bool(disp)


def minimize(
    fun: Callable[..., Any],
    x0: Any,
    jac: Union[None, bool, str, Callable[..., Any]] = None,
    method: str = "adam",
    options: Optional[Dict[str, Any]] = None,
    callback: Optional[Callable[[np.ndarray], Any]] = None,
    tol: Optional[float] = None,
    maxiter: Optional[int] = None,
    args: Any = (),
    return_history: bool = False,
) -> OptimizeResult:
    """Minimize ``fun`` from ``x0`` with a fusedadam optimizer, one step per iteration.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args)`` returns the objective (a real scalar), or ``(f, g)`` with
        ``g`` the gradient (of ``x``'s shape exactly: another shape is an error, never
        reshaped) when ``jac=True``.
    x0 : array_like
        Starting point, any shape. float32 and float64 are kept; any other dtype is
        converted to float64. Never modified.
    jac : bool, callable or None, default None
        True: ``fun`` returns ``(f, g)``. A callable: ``jac(x, *args)`` returns ``g``.
        None, False or ``"2-point"``: forward finite differences, as scipy's ``"2-point"``:
        ``g_i = (f(x + h_i e_i) - f(x)) / h_i`` with ``h_i = sqrt(machine eps of x's
        dtype) * max(1, |x_i|)``; that costs ``x.size`` extra evaluations per iteration,
        so pass a gradient for anything but small problems.
    method : str, default "adam"
        One of ``METHODS``: the name of any fusedadam optimizer class in lower case
        (``"adam"``, ``"adamw"``, ``"adamax"``, ``"nadam"``, ``"radam"``, ``"adabelief"``,
        ``"lion"``, ...), ``"amsgrad"`` (``Adam(amsgrad=True)``), or ``"sparse"``
        (:class:`~fusedadam.SparseAdam`, ``x`` viewed as rows along its first axis, a 1-D
        ``x`` as one element per row; rows whose gradient is all zero are not touched that
        iteration). The Schedule-Free methods take their gradients at the
        optimizer's ``y`` and return its average ``x`` (``eval()``), evaluated once more
        (one more ``nfev``, and one more history entry).
    options : dict, optional
        Keyword arguments of the optimizer class: ``lr`` (a number or a
        :mod:`fusedadam.schedules` object), ``betas``, ``eps``, ..., and scipy's solver
        options ``maxiter`` (as the argument) and ``disp`` (True: show progress, a tqdm
        bar on a terminal when tqdm is installed and otherwise about ten lines of
        ``iter f(x) |g|``, then scipy's summary).
    callback : callable, optional
        ``callback(xk)`` after each iteration with a copy of the new point; returning
        True (or ``np.True_``) or raising ``StopIteration`` stops (``status`` 2,
        ``success`` True).
    tol : float, optional
        Stop when the 2-norm of the gradient at the current point is ``<= tol``
        (``status`` 0). None: no gradient test.
    maxiter : int, optional
        Most optimizer steps, default 1000 (``options["maxiter"]`` is the same);
        ``status`` 1 when reached (``success`` is then False if a
        ``tol`` was given and True otherwise, since running ``maxiter`` steps was the
        request).
    args : tuple
        Extra positional arguments of ``fun`` and ``jac``.
    return_history : bool, default False
        Also return ``x_history`` (every point, ``x0`` first, as copies) and
        ``fun_history`` (the objective at each).

    Returns
    -------
    OptimizeResult
        ``x`` (shape and dtype of ``x0``), ``fun`` and ``jac`` at ``x``, ``nit`` (steps
        taken), ``nfev``/``njev`` (evaluations of ``fun``/gradients, finite differences
        included in ``nfev``), ``status``, ``success``, ``message``. A non-finite
        objective or gradient stops with ``status`` 3 and ``success`` False.

    Examples
    --------
    >>> import numpy as np, fusedadam as fa
    >>> res = fa.minimize(lambda x: (x @ x, 2 * x), np.ones(3), jac=True,
    ...                   options={"lr": 0.1}, maxiter=500, tol=1e-6)
    >>> bool(res.success), bool(np.linalg.norm(res.x) < 1e-5)
    (True, True)
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if isinstance(jac, str) and jac == "2-point":
        jac = None
    if not (jac is None or jac is True or jac is False or callable(jac)):
        raise ValueError(f"jac must be None, True, '2-point' or a callable, got {jac!r}")
    options, maxiter, disp = _solver_options(options, maxiter)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"maxiter must be an int >= 0, got {maxiter!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
            raise TypeError(f"tol must be a real number or None, got {tol!r}")
        if not (tol >= 0.0 and math.isfinite(tol)):
            raise ValueError(f"tol must be finite and >= 0, got {tol!r}")
    if not isinstance(args, tuple):
        args = (args,)
    x0 = np.asarray(x0)
    if x0.dtype.kind not in "biuf":
        raise TypeError(f"x0 must be real, got dtype {x0.dtype}")
    dtype = x0.dtype if x0.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    x = np.array(x0, dtype=dtype, order="C", copy=True)
    if x.size == 0:
        raise ValueError("x0 is empty")
    if method == "sparse" or (isinstance(method, str) and method.lower() == "sparse"):
        table = x.reshape(x.shape[0] if x.ndim > 1 else x.size, -1)
    else:
        table = x
    opt = _make_optimizer(method, table, options)
    sparse = table is not x
    counter = [0, 0]  # nfev, njev

    def evaluate(point):
        if jac is True:
            out = fun(point.copy(), *args)
            try:
                f, g = out
            except (TypeError, ValueError):
                raise TypeError("with jac=True, fun must return a pair (f, g)") from None
            counter[0] += 1
            counter[1] += 1
        else:
            f = fun(point.copy(), *args)
            counter[0] += 1
            f_value = _scalar(f)
            if callable(jac):
                g = jac(point.copy(), *args)
                counter[1] += 1
            else:
                g = _finite_difference(lambda z: _scalar(fun(z, *args)), point, f_value, counter)
        f = _scalar(f)
        g = np.asarray(g)
        if g.shape != point.shape:
            raise ValueError(f"the gradient has shape {g.shape}, but x has shape {point.shape}")
        return f, np.array(g, dtype=point.dtype, order="C")

    x_history, fun_history = [], []
    status, nit = 1, 0
    f, g = evaluate(x)
    progress = _Progress(maxiter) if disp else None
    while True:
        if progress is not None:
            progress.update(nit, f, g)
        if return_history:
            x_history.append(x.copy())
            fun_history.append(f)
        if not (math.isfinite(f) and np.all(np.isfinite(g))):
            status = 3
            break
        if tol is not None and float(np.linalg.norm(g.reshape(-1).astype(np.float64))) <= tol:
            status = 0
            break
        if nit >= maxiter:
            status = 1
            break
        if sparse:
            g_rows = g.reshape(table.shape)
            touched = np.flatnonzero(np.any(g_rows != 0, axis=1))
            opt.step([(touched, g_rows[touched])])
        else:
            opt.step([g])
        nit += 1
        stop = callback is not None and _callback_stops(callback, x)
        f, g = evaluate(x)
        if stop:
            if return_history:
                x_history.append(x.copy())
                fun_history.append(f)
            status = 2
            break
    if hasattr(opt, "eval") and status != 3:
        # Schedule-Free: the gradients were taken at y; the solution is the average x
        opt.eval()
        f, g = evaluate(x)
        if return_history:
            x_history.append(x.copy())
            fun_history.append(f)
    messages = {
        0: "gradient norm <= tol",
        1: "maximum number of iterations reached",
        2: "stopped by callback",
        3: "the objective or the gradient is not finite",
    }
    success = status in (0, 2) or (status == 1 and tol is None)
    result = OptimizeResult(
        x=x,
        fun=f,
        jac=g,
        nit=nit,
        nfev=counter[0],
        njev=counter[1],
        status=status,
        success=success,
        message=messages[status],
    )
    if return_history:
        result["x_history"] = x_history
        result["fun_history"] = fun_history
    if progress is not None:
        progress.close(result)
    return result


def _callback_stops(callback, x):
    """True when the callback asks to stop: it returns True (a Python or NumPy bool), or
    raises StopIteration (scipy's way)."""
    try:
        answer = callback(x.copy())
    except StopIteration:
        return True
    return isinstance(answer, (bool, np.bool_)) and bool(answer)


def _scalar(f):
    f = np.asarray(f)
    if f.size != 1:
        raise ValueError(f"fun must return a scalar, got an array of shape {f.shape}")
    return float(f.reshape(()))
