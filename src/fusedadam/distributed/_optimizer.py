"""ShardedOptimizer: ZeRO-style sharded steps of any fusedadam dense optimizer over MPI.

Each rank steps its chunks of the flat buffers through the step engine
(``fusedadam.engine``): one plan per chunk, over arrays this module owns (the chunk of the
flat param buffer, its state, its reduced gradient). What the engine is not told is only
what depends on the other ranks: the settings every rank must share and the non-finite
decision, both agreed on by small allreduces before anything is written.
"""

import functools
import hashlib
import time

import numpy as np
from mpi4py import MPI

from fusedadam import _algorithms, _precision, _schedule_free, _validation, optim, reference
from fusedadam.distributed import _checkpoint
from fusedadam.distributed._consolidate import single_process_state_dict
from fusedadam.distributed._layout import aligned_zeros, copy_overlaps, plan_segments
from fusedadam.engine import Engine, NonFinitePolicy, Outcome, _rules, nonfinite_outcome
from fusedadam.engine._plan import check_group_hyper, group_spec, hyper_spec, state_dtypes
from fusedadam.engine._saved import checked_state
from fusedadam.schedules import Schedule

__all__ = ["ShardedOptimizer"]

#: Default bucket length in elements (16 MiB of float32 over all ranks): small enough that
#: a 100M-parameter group gives enough buckets to pipeline, large enough that per-bucket
#: latency (a few microseconds per collective) stays negligible.
DEFAULT_BUCKET_ELEMENTS = 1 << 22

_NOT_FOUND = np.iinfo(np.int64).max
_MISSING = object()
_GRAD_REDUCTIONS = ("mean", "sum")


def _mpi_datatype(dtype):
    """The predefined MPI datatype of a NumPy dtype (MPI_SUM needs a predefined one)."""
    try:
        return MPI.Datatype.fromcode(np.dtype(dtype).char)
    except (ValueError, KeyError):
        raise TypeError(
            f"params of dtype {np.dtype(dtype)} have no predefined MPI datatype to sum gradients in"
        ) from None


def _grad_dtype(dtype):
    """The dtype a segment's gradients are reduced in: the params' own, or float32 for
    bfloat16 params (MPI has no bfloat16 sum; the step takes float32 gradients for them)."""
    dtype = np.dtype(dtype)
    return _precision.FLOAT32 if dtype == _precision.BFLOAT16 else dtype


def _words(flat):
    """A flat param buffer as the all-gather sends it: bfloat16 as its 16-bit words (MPI
    has no bfloat16 type; gathering moves bits, so any 2-byte type is exact)."""
    return flat.view(np.uint16) if flat.dtype == _precision.BFLOAT16 else flat


def _describe(value):
    """A rank-independent description of a hyperparameter: schedules, partials and arrays
    by value; other callables by name (not id), which is all that can be compared."""
    if isinstance(value, Schedule):
        return f"<schedule {value.to_json()}>"
    if isinstance(value, functools.partial):
        return (
            "<partial>",
            _describe(value.func),
            _describe(value.args),
            _describe(sorted(value.keywords.items())),
        )
    if isinstance(value, np.ndarray):
        return f"<array {value.dtype.str} {value.shape} {value.tobytes().hex()}>"
    if callable(value):
        return (
            f"<callable {getattr(value, '__module__', '?')}."
            f"{getattr(value, '__qualname__', type(value).__name__)}>"
        )
    if isinstance(value, (list, tuple)):
        return type(value)(_describe(v) for v in value)
    return repr(value)


def _class_defaults(optimizer_class, kwargs):
    """``(algorithm, defaults)`` of a dense fusedadam optimizer class from the registry,
    ``kwargs`` applied and validated (as the class's constructor validates them)."""
    entry = None
    if isinstance(optimizer_class, type) and issubclass(optimizer_class, optim.Optimizer):
        for cls in optimizer_class.__mro__:
            if cls.__module__ == optim.__name__ and cls.__name__ in _algorithms.DEFAULTS:
                entry = _algorithms.DEFAULTS[cls.__name__]
                break
    if entry is None:
        raise TypeError(
            "optimizer_class must be a dense fusedadam optimizer class (fusedadam.Adam, "
            f"AdamW, ...; one of {sorted(_algorithms.DEFAULTS)}), got {optimizer_class!r}"
        )
    name, defaults = entry
    algorithm = _algorithms.ALGORITHMS[name]
    for key in kwargs:
        if key not in defaults:
            raise TypeError(
                f"{optimizer_class.__name__} got an unexpected keyword argument {key!r}"
            )
    defaults = {**defaults, **kwargs}
    check_group_hyper(defaults, defaults, "", algorithm.n_betas)
    return algorithm, defaults


class _Unit:
    """One plan of this rank: its chunk of one bucket of one segment (or, for a group whose
    params are all empty, a zero-length stand-in that carries the group's counters), the
    chunk's state (None before its first step) and the engine that steps it."""

    __slots__ = ("group_index", "param", "group", "state", "engine", "layout", "installs")

    def __init__(self, group_index, param):
        self.group_index = group_index
        self.param = param
        self.group = {"params": [param]}  # the container the engine's plan watches
        self.state = None
        self.engine = Engine()
        self.layout = None  # (state names, state_dtype, master) of the current plan
        self.installs = []

    def plan(self, algorithm, spec):
        """Plan the chunk for the validated ``spec`` (a ``HyperSpec``): nothing is written;
        state it lacks is created and attached when a step commits."""
        layout = (spec.state_names, spec.state_dtype, spec.master)
        if self.layout != layout or self.engine.plans is None:
            named = []
            planned = group_spec(
                algorithm, self.group_index, self.group, spec, 0, named,
                lambda p: self.state, lambda p: (),
            )  # fmt: skip
            planned = planned._replace(written=_validation.written_intervals(named))
            self.engine.set_plans([self.group], [self.engine.new_plan(planned)])
            self.layout, self.installs = layout, planned.installs
        self.engine.set_hyper(0, spec)

    def run(self, grad, grad_scale):
        """Step the chunk with its reduced gradient (the decision is taken: it runs)."""
        outcome = self.engine.step([grad], grad_scale)
        if outcome == Outcome.RAN_NEW_STATE:
            for _, target, entries in self.installs:
                if target is None:
                    self.state = entries
                else:
                    target.update(entries)
            self.installs = []
            self.engine.snapshot()
        elif outcome != Outcome.RAN:
            raise RuntimeError(f"fusedadam internal error: a planned shard asked for {outcome!r}")

    def forget(self, state):
        """Hold ``state`` (a load) from now on; the next step plans again."""
        self.state, self.layout, self.installs = state, None, []
        self.engine.invalidate()


class ShardedOptimizer:
    r"""Shard a fusedadam optimizer over the ranks of an MPI communicator (ZeRO 1/2).

    Every rank holds the full params (in the optimizer's flat buffers) but only ``1/N``
    of the optimizer state. A step reduce-scatters the gradients (each rank receives the
    sum over ranks of its shard), decides globally whether the step runs (non-finite
    gradients, bad input on any rank), updates its shard through the step engine
    (``fusedadam.engine``: one engine call per bucket), and all-gathers the updated
    params in place.

    **Params are owned by the optimizer.** At construction each rank's params are copied
    once into flat, 64-byte-aligned buffers (one per group and dtype);
    :attr:`params` are views of them, in the order given, and are what the model must use
    from then on (the arrays passed in are never written). :attr:`grads` are views of
    flat gradient buffers of the same shapes (and dtypes, except for bfloat16 params: MPI
    has no bfloat16 sum, so theirs are float32): a backward pass that writes into them
    (``np.matmul(..., out=opt.grads[0])``, ``grads[i][...] = ...``) needs no copy, and
    ``step()`` with no argument reduces them as they are. ``step(grads)`` with other
    arrays copies them into those buffers first (one pack copy).

    Parameters
    ----------
    optimizer_class : type
        A dense fusedadam optimizer class (:class:`fusedadam.Adam`, ``AdamW``,
        ``Adamax``, ...): its algorithm, state and defaults are the registry's
        (``fusedadam._algorithms``); no optimizer object of it is built.
    params : ndarray, sequence of ndarray, or sequence of dict
        As the class takes them (groups may override any hyperparameter). Every rank
        must pass params of the same count, shapes and dtypes, and the same
        hyperparameters (checked, with an error on every rank).
    comm : mpi4py.MPI.Comm, default ``MPI.COMM_WORLD``
    grad_reduction : {"mean", "sum"}, default "mean"
        ``"sum"``: the step uses the sum over ranks of the gradients; ``"mean"``: that
        sum divided (IEEE division, rounded once) by the world size.
    bucket_elements : int, default 2**22
        Longest bucket, in elements over all ranks (capped at 2**30 so no MPI count
        reaches 2**31). A bucket's all-gather can overlap the next bucket's update
        where the MPI library progresses collectives in the background; each bucket
        also costs a few collectives' latency (see the README's "Scaling").
    **kwargs
        Hyperparameters of ``optimizer_class`` (``lr``, ``betas``, ``nonfinite``, ...).

    Notes
    -----
    A step first validates, on every rank, its settings (every group's hyperparameters,
    ``lr(t)``, ``grad_scale``) and its gradients, and plans its shards; one small
    allreduce then tells every rank whether any rank refused, and compares a digest of
    the settings: ranks that differ raise ``ValueError`` together, as at construction
    (schedules compare by value). Only then is anything written (the gradients packed
    into :attr:`grads`). ``nonfinite`` keeps its single-process meaning, decided for all
    ranks at once: every rank scans its reduced gradient shard, unscaled by the group's
    ``grad_scale`` (a sum that overflows once unscaled is non-finite, as
    single-process), a second small allreduce combines the verdicts, and every rank
    raises (``"error"``) or skips (``"skip"``) before any param or state is written
    (:attr:`grads` then holds the gradients the step was given). The shards themselves
    are stepped with ``nonfinite="ignore"``.
    ``max_grad_norm`` and ``state_dtype="8bit"`` are refused, at construction and when
    set later in ``param_groups``; ``state_dtype`` and ``master`` keep their construction
    values (a load may change them). With ``master="residual"`` each rank keeps the int16
    residual of the param chunks it owns (it is the master together with those chunks,
    which the step updates in place before the all-gather); checkpoints and
    :meth:`consolidated_state_dict` carry it as any state array.

    For the same summed gradients a step is bit-identical to the single-process
    optimizer, at any world size: the update is elementwise, so where an element is
    stepped does not matter. What MPI may change is the sum itself: a reduction over
    ranks adds the ranks' gradients in an order the MPI library chooses (it may depend on
    the world size and the algorithm), so with inexact floating-point sums different
    world sizes give sums that differ in the last bits.
    """

    def __init__(
        self,
        optimizer_class,
        params,
        comm=None,
        *,
        grad_reduction="mean",
        bucket_elements=DEFAULT_BUCKET_ELEMENTS,
        **kwargs,
    ):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.optimizer_class = optimizer_class
        self.grad_reduction = grad_reduction
        self._kwargs = dict(kwargs)
        #: Steps skipped because a reduced gradient held NaN or inf (``nonfinite="skip"``).
        self.skipped_steps = 0
        #: Seconds spent in the last step's phases (see ``bench/distributed.py``).
        self.timings = {}

        error, signature, groups = None, None, None
        try:
            groups, given = self._check_local(params, bucket_elements)
            signature = {**self._signature(given), "bucket_elements": bucket_elements}
        except Exception as exc:  # any error, so that the other ranks hear of it
            error = exc
        self._agree(error, signature)

        self._segments = plan_segments(
            [[(p.shape, p.dtype) for p in g["params"]] for g in groups],
            self.world_size,
            bucket_elements,
        )
        user_params = [p for g in groups for p in g["params"]]
        self.params, self.grads = [None] * len(user_params), [None] * len(user_params)
        self._flat_params, self._flat_grads, self._reduced = [], [], []
        for segment in self._segments:
            flat_param = aligned_zeros(segment.padded, segment.dtype)
            flat_grad = aligned_zeros(segment.padded, _grad_dtype(segment.dtype))
            for index, shape, offset in zip(segment.param_indices, segment.shapes, segment.offsets):
                size = int(np.prod(shape, dtype=np.int64))
                self.params[index] = flat_param[offset : offset + size].reshape(shape)
                self.params[index][...] = user_params[index]  # the one copy
                self.grads[index] = flat_grad[offset : offset + size].reshape(shape)
            self._flat_params.append(flat_param)
            self._flat_grads.append(flat_grad)
            self._reduced.append(aligned_zeros(segment.shard_size, _grad_dtype(segment.dtype)))

        self.param_groups = []
        first = 0
        for group in groups:
            count = len(group["params"])
            self.param_groups.append({**group, "params": self.params[first : first + count]})
            first += count
        #: Per group: the state_dtype its state is kept in (changed only by a load).
        self._state_options = [g.get("state_dtype") for g in self.param_groups]
        #: Per group: how its 16-bit params keep their masters (changed only by a load).
        self._master_options = [g.get("master", "float32") for g in self.param_groups]
        # One plan per (segment, bucket): this rank's chunk of the bucket (a view of the
        # flat param buffer) and the state of that chunk only.
        self._buckets = []
        self._group_units = [[] for _ in groups]
        for si, segment in enumerate(self._segments):
            for (b_start, b_stop), (c_start, c_stop, offset) in zip(
                segment.buckets(), segment.shard_ranges(self.rank)
            ):
                unit = _Unit(segment.group, self._flat_params[si][c_start:c_stop])
                self._group_units[segment.group].append(unit)
                self._buckets.append((si, b_start, b_stop, c_start, offset, c_stop - c_start, unit))
        # A group whose params are all empty has no bucket; a zero-length stand-in steps
        # its counters (and scalar state) as the single-process optimizer does.
        self._idle_units = []
        for gi, units in enumerate(self._group_units):
            if not units:
                dtypes = [s.dtype for s in self._segments if s.group == gi]
                unit = _Unit(gi, np.zeros(0, dtypes[0] if dtypes else np.float32))
                units.append(unit)
                self._idle_units.append(unit)
        self._mpi_types = [_mpi_datatype(_grad_dtype(s.dtype)) for s in self._segments]
        self._gather_types = [_mpi_datatype(_words(f).dtype) for f in self._flat_params]
        #: Bytes handed to collectives per step by this rank: the flat gradient buffers to
        #: the reduce-scatter and the flat param buffers to the all-gather (2x the padded
        #: param bytes; 3x for bfloat16 params, whose gradients are reduced in float32).
        self.comm_bytes_per_step = sum(
            s.padded * (s.dtype.itemsize + _grad_dtype(s.dtype).itemsize) for s in self._segments
        )
        #: Most collectives of one kind in flight at once: bounds MPI's pending requests
        #: (and its internal buffers) when a group has many buckets.
        self.max_in_flight = 4

    # ------------------------------------------------------------ construction checks
    def _check_local(self, params, bucket_elements):
        if self.grad_reduction not in _GRAD_REDUCTIONS:
            raise ValueError(
                f"grad_reduction must be one of {_GRAD_REDUCTIONS}, got {self.grad_reduction!r}"
            )
        if (
            isinstance(bucket_elements, bool)
            or not isinstance(bucket_elements, int)
            or bucket_elements < 1
        ):
            raise ValueError(f"bucket_elements must be a positive int, got {bucket_elements!r}")
        self._algorithm, self._defaults = _class_defaults(self.optimizer_class, self._kwargs)
        groups, overrides, seen, first = [], [], set(), 0
        for gi, given in enumerate(optim._param_groups_from(params)):
            if not isinstance(given, dict):
                raise TypeError(f"a param group must be a dict, got {type(given).__name__}")
            if "params" not in given:
                raise ValueError(f"param_groups[{gi}] has no 'params' entry")
            where = f"param_groups[{gi}]"
            members = optim._as_param_list(given["params"], f"{where}['params']")
            for k, p in enumerate(members):
                if not isinstance(p, np.ndarray):
                    raise TypeError(
                        f"{where}['params'][{k}] is a {type(p).__name__}, not an ndarray"
                    )
                if id(p) in seen:
                    raise ValueError("some parameters appear more than once")
                seen.add(id(p))
                _mpi_datatype(_grad_dtype(p.dtype))
            group = {**self._defaults, **given, "params": members}
            self._check_group(group, f"{where}: ")
            _check_shardable(group, gi, self._algorithm)
            for k, p in enumerate(members):
                _precision.master_entry(p.dtype, group["master"], f"params[{first + k}]")
            first += len(members)
            groups.append(group)
            overrides.append({**given, "params": members})
        return groups, overrides

    def _check_group(self, group, where):
        """Validate a group's hyperparameters in place (the engine's check; Schedule-Free's
        mode entry as its class checks it); return the group's ``HyperSpec``."""
        if self._schedule_free:
            group.setdefault("train_mode", True)
            _schedule_free.check_mode_entry(group, where)
        return hyper_spec(self._algorithm, group, self._defaults, where)

    @property
    def _schedule_free(self):
        return issubclass(self.optimizer_class, optim.AdamWScheduleFree)

    def _signature(self, groups):
        return {
            "optimizer_class": f"{self.optimizer_class.__module__}."
            f"{self.optimizer_class.__qualname__}",
            "grad_reduction": self.grad_reduction,
            "kwargs": {k: _describe(v) for k, v in sorted(self._kwargs.items())},
            "groups": [
                {
                    "hyperparameters": {
                        k: _describe(v) for k, v in sorted(g.items()) if k != "params"
                    },
                    "params": [(tuple(p.shape), p.dtype.str) for p in g["params"]],
                }
                for g in groups
            ],
        }

    def _agree(self, error, signature):
        """Raise on every rank unless every rank built the same optimizer without error."""
        everyone = self.comm.allgather(
            (None if error is None else f"{type(error).__name__}: {error}", signature)
        )
        failed = [r for r, (message, _) in enumerate(everyone) if message is not None]
        if failed:
            if error is not None:
                raise error
            raise ValueError(
                f"ShardedOptimizer construction failed on rank(s) {failed}: "
                f"{everyone[failed[0]][0]}"
            )
        reference = everyone[0][1]
        for r, (_, other) in enumerate(everyone):
            if other != reference:
                raise ValueError(
                    f"ShardedOptimizer: rank {r} differs from rank 0 in "
                    f"{_first_difference(reference, other)}; every rank must pass the same "
                    "optimizer class, param count, shapes, dtypes and hyperparameters"
                )

    # ------------------------------------------------------------ step
    def step(self, grads=None, grad_scale=None):
        """One sharded step: reduce-scatter, global decision, shard update, all-gather.

        Parameters
        ----------
        grads : sequence of ndarray, optional
            This rank's local gradients, in param order, shaped and typed like
            :attr:`params`. Omitted (or the :attr:`grads` views themselves): the
            gradients already in :attr:`grads` are used, with no copy.
        grad_scale : float or one-element array, optional
            Replaces every group's ``grad_scale`` for this step only, as in the
            single-process ``step``. The reduced gradients are divided by it, and the
            non-finite decision is taken on the unscaled values, as there.

        Raises
        ------
        TypeError, ValueError
            Bad gradients on this rank; every other rank raises ``ValueError`` naming
            the rank. Nothing changed on any rank.
        FloatingPointError
            The unscaled reduced gradient of a param of a ``nonfinite="error"`` group
            holds NaN or inf; raised on every rank, nothing changed on any rank.
        ValueError
            The ranks' settings for this step differ (a hyperparameter, ``lr(t)`` or
            ``grad_scale`` set on some ranks only), or a setting was changed to one a
            sharded optimizer does not support; raised on every rank, nothing changed.
        """
        t_start = time.perf_counter()
        error, checked = None, None
        n_groups = len(self._group_units)
        scales, policies, digest = [1.0] * n_groups, [NonFinitePolicy.IGNORE] * n_groups, 0
        try:
            scales, policies, digest = self._prepare(grad_scale)
            if grads is not None:
                checked = self._checked_grads(grads)
        except Exception as exc:  # any error, so that the other ranks hear of it
            error = exc
        # Every rank's input and settings are agreed on before anything is written (the
        # gradient buffers included): one small allreduce (min over ranks); the digest of
        # the step's settings goes in as itself and negated, so min == -max tells that
        # every rank has the same.
        agreement = np.array(
            [self.rank if error is not None else _NOT_FOUND, digest, -digest], dtype=np.int64
        )
        self.comm.Allreduce(MPI.IN_PLACE, agreement, op=MPI.MIN)
        bad_rank, low, minus_high = (int(v) for v in agreement)
        if bad_rank != _NOT_FOUND:
            if error is not None:
                raise error
            raise ValueError(
                f"rank {bad_rank} rejected its gradients or settings (see its error); this "
                "step changed nothing on any rank"
            )
        if low != -minus_high:
            raise ValueError(
                "the ranks' param_groups differ at this step (a hyperparameter, lr(t) or "
                "grad_scale set on some ranks only); every rank must step with the same "
                "settings; this step changed nothing on any rank"
            )
        if checked is not None:
            self._pack(checked)
        t_packed = time.perf_counter()

        # Reduce-scatter with up to max_in_flight buckets posted; scan each bucket as it
        # arrives, while the next ones are in flight.
        n_buckets = len(self._buckets)
        requests = [MPI.REQUEST_NULL] * n_buckets
        for k in range(min(self.max_in_flight, n_buckets)):
            requests[k] = self._reduce_scatter(k)
        posted = min(self.max_in_flight, n_buckets)
        first_error_param, skip_found, t_scan = _NOT_FOUND, _NOT_FOUND, 0.0
        for _ in range(n_buckets):
            k = MPI.Request.Waitany(requests)
            if posted < n_buckets:
                requests[posted] = self._reduce_scatter(posted)
                posted += 1
            t0 = time.perf_counter()
            si, _, _, c_start, offset, length, _ = self._buckets[k]
            reduced = self._reduced[si][offset : offset + length]
            if self.grad_reduction == "mean" and self.world_size > 1:  # x / 1 == x
                np.divide(reduced, self.world_size, out=reduced)
            gi = self._segments[si].group
            if policies[gi] != NonFinitePolicy.IGNORE:
                bad = self._first_nonfinite_param(si, c_start, reduced, scales[gi])
                if bad is not None:
                    if policies[gi] == NonFinitePolicy.ERROR:
                        first_error_param = min(first_error_param, bad)
                    else:
                        skip_found = 0
            t_scan += time.perf_counter() - t0
        t_reduced = time.perf_counter()

        # The non-finite decision, for every rank at once: one allreduce of two int64 (min
        # over ranks), then the engine's policy: "error" raises, "skip" skips the step.
        decision = np.array([first_error_param, skip_found], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, decision, op=MPI.MIN)
        bad_param, skip = (int(v) for v in decision)
        outcome = Outcome.RAN
        if bad_param != _NOT_FOUND:
            nonfinite_outcome(
                NonFinitePolicy.ERROR,
                lambda: FloatingPointError(
                    f"the reduced gradient of params[{bad_param}] holds NaN or inf once "
                    "unscaled (nonfinite='error'); this step changed nothing on any rank"
                ),
            )
        if skip != _NOT_FOUND:
            outcome = nonfinite_outcome(NonFinitePolicy.SKIP, RuntimeError)
        if outcome == Outcome.SKIPPED:
            self.skipped_steps += 1
            self.timings = {
                "pack": t_packed - t_start,
                "reduce_scatter": t_reduced - t_packed,
                "scan": t_scan,
                "update": 0.0,
                "all_gather_wait": 0.0,
            }
            return
        t_decided = time.perf_counter()

        # Update bucket by bucket; each bucket's all-gather is in flight while the next
        # bucket is updated (at most max_in_flight at a time).
        t_update, requests = 0.0, []
        for si, b_start, b_stop, _, offset, length, unit in self._buckets:
            t0 = time.perf_counter()
            unit.run(self._reduced[si][offset : offset + length], scales[unit.group_index])
            t_update += time.perf_counter() - t0
            if len(requests) >= self.max_in_flight:
                requests.pop(0).Wait()
            requests.append(
                self.comm.Iallgather(
                    MPI.IN_PLACE,
                    [_words(self._flat_params[si][b_start:b_stop]), self._gather_types[si]],
                )
            )
            MPI.Request.Testall(requests)  # drive progress of the earlier buckets
        for unit in self._idle_units:
            unit.run(np.zeros(0, _grad_dtype(unit.param.dtype)), scales[unit.group_index])
        t0 = time.perf_counter()
        MPI.Request.Waitall(requests)
        t_end = time.perf_counter()
        self.timings = {
            "pack": t_packed - t_start,
            "reduce_scatter": t_reduced - t_packed,
            "scan": t_scan,
            "decision": t_decided - t_reduced,
            "update": t_update,
            "all_gather_wait": t_end - t0,
            "total": t_end - t_start,
        }

    def _reduce_scatter(self, k):
        si, b_start, b_stop, _, offset, length, _ = self._buckets[k]
        return self.comm.Ireduce_scatter_block(
            [self._flat_grads[si][b_start:b_stop], self._mpi_types[si]],
            [self._reduced[si][offset : offset + length], self._mpi_types[si]],
            op=MPI.SUM,
        )

    def _checked_grads(self, grads):
        """``grads`` as a list, checked against the params (nothing is written)."""
        if isinstance(grads, np.ndarray):
            grads = [grads]
        grads = list(grads)
        if len(grads) != len(self.grads):
            raise ValueError(f"step got {len(grads)} gradients for {len(self.grads)} params")
        for i, (g, view, p) in enumerate(zip(grads, self.grads, self.params)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] is a {type(g).__name__}, not an ndarray")
            # A bfloat16 param's gradient buffer is float32: a bfloat16 gradient is widened.
            if g.shape != view.shape or g.dtype not in (view.dtype, p.dtype):
                takes = "" if view.dtype == p.dtype else f" (gradients {view.dtype} or {p.dtype})"
                raise ValueError(
                    f"grads[{i}] has shape {g.shape} and dtype {g.dtype}; "
                    f"params[{i}] has shape {view.shape} and dtype {p.dtype}{takes}"
                )
        return grads

    def _pack(self, grads):
        """Copy checked ``grads`` into the flat gradient buffers."""
        for g, view in zip(grads, self.grads):
            if g is not view and not (
                g.ctypes.data == view.ctypes.data and g.strides == view.strides
            ):
                view[...] = g

    def _prepare(self, grad_scale):
        """``(scales, policies, digest)``: per group, this step's gradient scale and
        non-finite policy, and a digest of every setting of the step to compare across
        ranks. Every group is validated (the engine's checks) and every chunk planned with
        this step's hyperparameters and ``lr(t)`` (called once per group, as
        single-process); nothing is written.

        Raises on a bad hyperparameter or one a sharded optimizer cannot apply
        (``max_grad_norm``, a changed ``state_dtype``).
        """
        groups = self.param_groups
        if not isinstance(groups, list) or len(groups) != len(self._group_units):
            raise ValueError(
                f"param_groups must stay a list of {len(self._group_units)} group dicts "
                "(a sharded optimizer's groups are fixed at construction)"
            )
        if self._schedule_free:
            _schedule_free.check_steppable(groups, self.optimizer_class.__name__)
        specs, scales, policies, described = [], [], [], []
        for gi, group in enumerate(groups):
            where = f"param_groups[{gi}]: "
            if not isinstance(group, dict):
                raise TypeError(f"param_groups[{gi}] must be a dict, got {type(group).__name__}")
            checked = {k: v for k, v in group.items() if k != "params"}
            spec = self._check_group(checked, where)
            _check_shardable(checked, gi, self._algorithm)
            if checked.get("state_dtype") != self._state_options[gi]:
                raise ValueError(
                    f"{where}state_dtype changed from {self._state_options[gi]!r} to "
                    f"{checked.get('state_dtype')!r}; a sharded optimizer keeps the "
                    "state_dtype it was built with (convert through a single-process "
                    "optimizer's load_state_dict(convert=True))"
                )
            if checked.get("master", "float32") != self._master_options[gi]:
                raise ValueError(
                    f"{where}master changed from {self._master_options[gi]!r} to "
                    f"{checked.get('master')!r}; a sharded optimizer keeps the master "
                    "layout of its state (change it with state_dict and "
                    "load_state_dict(..., convert=True))"
                )
            t = self._step_of(gi) + 1
            lr = _rules.learning_rate(spec.lr, t)
            scale = checked.get("grad_scale", 1.0) if grad_scale is None else grad_scale
            scale = _validation.grad_scale_value(scale, t, where)
            # The shards run what every rank decided together: their own policy ignores.
            specs.append(
                spec._replace(
                    keys=(), values=(), lr=lr, nonfinite=NonFinitePolicy.IGNORE, max_grad_norm=None
                )
            )
            scales.append(scale)
            policies.append(spec.nonfinite)
            if self.world_size > 1:  # one rank has no other to compare with
                described.append(
                    (
                        {k: _describe(v) for k, v in sorted(checked.items()) if k != "grad_scale"},
                        t,
                        lr.hex(),
                        scale.hex(),
                    )
                )
        for gi, units in enumerate(self._group_units):
            for unit in units:
                unit.plan(self._algorithm, specs[gi])
        digest = hashlib.blake2b(repr(described).encode(), digest_size=7).digest()
        return scales, policies, int.from_bytes(digest, "little")

    def _step_of(self, gi):
        """Steps group ``gi`` has taken (its chunks' counters agree)."""
        state = self._group_units[gi][0].state
        return 0 if state is None else int(state["step"])

    @property
    def _steps(self):
        return [self._step_of(gi) for gi in range(len(self._group_units))]

    def _scalars(self, gi):
        """Group ``gi``'s scalar state (NAdam's ``mu_product``): ``{name: float}``."""
        state = self._group_units[gi][0].state
        if state is None:
            return {}
        return {name: float(state[name]) for name, _ in self._algorithm.scalar_state}

    def _first_nonfinite_param(self, si, chunk_start, reduced, scale=1.0):
        """The param holding the first value of a reduced chunk that is not finite once
        unscaled (the engine's scan rule, ``reference.scan``; a finite sum can overflow
        once divided by a grad_scale < 1), or None."""
        if scale == 1.0 and reduced.dtype == _precision.compute_dtype(reduced.dtype):
            if np.isfinite(reduced).all():  # x / 1 == x: the common case, with no copy
                return None
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            found, _ = reference.scan([reduced], scale, False, 1)
        return None if found < 0 else self._segments[si].param_at(chunk_start + found)

    # ------------------------------------------------------------ state
    def _group_names(self, gi):
        """The state arrays shaped like the params of group ``gi`` (the registry's names
        and the optional ones it has created), without ``master_param``."""
        algorithm, state = self._algorithm, self._group_units[gi][0].state or {}
        return algorithm.state_names + tuple(
            name for name, _ in algorithm.optional_state if name in state
        )

    def _array_names(self, si, group_names=None, master=_MISSING):
        """The state arrays of segment ``si``: its group's (``group_names``, by default
        the current ones), and a master for 16-bit params (``master_param``, or
        ``master_residual`` under the ``master`` option, by default the group's)."""
        segment = self._segments[si]
        if group_names is None:
            group_names = self._group_names(segment.group)
        if master is _MISSING:
            master = self._master_options[segment.group]
        names = tuple(group_names)
        entry = _precision.master_entry(segment.dtype, master, f"segment {si}")
        if entry is not None:
            names += (entry[0],)
        return names

    def _array_dtype(self, si, name, option=_MISSING, master=_MISSING):
        """The dtype the single-process optimizer keeps state ``name`` of segment ``si`` in
        (under the state_dtype ``option`` and ``master`` options, by default the group's
        current ones): the engine's rule (``state_dtypes``)."""
        segment = self._segments[si]
        if option is _MISSING:
            option = self._state_options[segment.group]
        if master is _MISSING:
            master = self._master_options[segment.group]
        like = np.empty(0, segment.dtype)
        return np.dtype(state_dtypes(self._algorithm, like, option, f"segment {si}", master)[name])

    def _shard_state(self, si):
        """``{name: 1-d array}``: this rank's state of segment ``si`` (its chunks, joined;
        copies)."""
        gi = self._segments[si].group
        if self._step_of(gi) == 0:
            return {}
        units = [b[-1] for b in self._buckets if b[0] == si]
        return {
            name: np.concatenate([u.state[name].reshape(-1) for u in units])
            if units
            else np.zeros(0, self._array_dtype(si, name))
            for name in self._array_names(si)
        }

    def _my_params_shard(self, si):
        ranges = self._segments[si].shard_ranges(self.rank)
        flat = self._flat_params[si]
        if not ranges:
            return np.zeros(0, flat.dtype)
        return np.concatenate([flat[start:stop] for start, stop, _ in ranges])

    def _meta(self):
        stepped = [bool(s) for s in self._steps]
        return {
            "segments": [s.to_meta() for s in self._segments],
            "steps": list(self._steps),
            "skipped_steps": self.skipped_steps,
            "param_groups": [
                {k: v for k, v in g.items() if k != "params"} for g in self.param_groups
            ],
            "state_names": [
                self._group_names(gi) if stepped[gi] else () for gi in range(len(self.param_groups))
            ],
            # Per segment: its arrays and their dtypes (bfloat16 state, float32 masters).
            "array_names": [
                self._array_names(si) if stepped[s.group] else ()
                for si, s in enumerate(self._segments)
            ],
            "array_dtypes": [
                {name: self._array_dtype(si, name).name for name in self._array_names(si)}
                if stepped[s.group]
                else {}
                for si, s in enumerate(self._segments)
            ],
            "scalars": [self._scalars(gi) if stepped[gi] else {} for gi in range(len(stepped))],
            "optimizer_class": f"{self.optimizer_class.__module__}."
            f"{self.optimizer_class.__qualname__}",
            "grad_reduction": self.grad_reduction,
        }

    def state_dict(self):
        """This rank's shard: ``{"rank", "world_size", "meta", "shards"}``.

        ``shards[i]`` holds, for segment ``i`` of ``meta["segments"]`` (one group's params
        of one dtype), this rank's ``"param"`` values and state arrays, each the rank's
        chunks of the flat buffer joined in order (padding included). The layout in
        ``meta`` says which flat positions they are; ``meta["scalars"]`` the per-group
        scalar state (NAdam's ``mu_product``). Copies, not views.
        """
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "meta": self._meta(),
            "shards": [
                {"param": self._my_params_shard(si), **self._shard_state(si)}
                for si in range(len(self._segments))
            ],
        }

    def consolidated_state_dict(self, root=0):
        """Collective: the single-process ``state_dict()`` on ``root``, None elsewhere.

        Equal (array for array, bit for bit, dtype for dtype) to the ``state_dict()`` of
        the single-process optimizer that took the same steps. Rank ``root`` holds the
        whole state at once.
        """
        shards = [self._shard_state(si) for si in range(len(self._segments))]
        gathered = self.comm.gather(shards, root=root)
        if self.rank != root:
            return None
        full = []
        for si, segment in enumerate(self._segments):
            arrays = {}
            for name in gathered[0][si] if gathered else {}:
                flat = np.zeros(segment.padded, gathered[0][si][name].dtype)
                for r in range(self.world_size):
                    copy_overlaps(
                        flat,
                        0,
                        [
                            (start, gathered[r][si][name][o : o + stop - start])
                            for start, stop, o in segment.shard_ranges(r)
                        ],
                    )
                arrays[name] = flat
            full.append(arrays)
        return single_process_state_dict(
            self._segments, self._steps, self._meta(), lambda si, name: full[si][name]
        )

    def load_state_dict(self, state_dict, convert=False):
        """Collective: load a single-process ``state_dict`` (of this optimizer class; any
        world size).

        Every rank passes the same dict; each keeps its shard of it. Params are not part
        of a state_dict and are not changed, except by a conversion to ``master_residual``.
        Checked whole, by the optimizer class's own ``load_state_dict``, before anything is
        written; if any rank refuses its dict, every rank raises and none changes.
        ``convert=True`` converts as the class's ``load_state_dict`` does (another
        ``state_dtype``; a bfloat16 param's master between ``master_param`` and
        ``master_residual``, exactly both ways: to the residual, the params are rewritten
        as their masters encode, on every rank); it works on a copy of the params.
        """
        if not isinstance(convert, (bool, np.bool_)):
            raise TypeError(f"convert must be a bool, got {convert!r}")
        error, checked = None, None
        try:
            checked = self._checked_state_dict(state_dict, bool(convert))
        except Exception as exc:  # any error, so that the other ranks hear of it
            error = exc
        failed = self.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        bad = [r for r, message in enumerate(failed) if message is not None]
        if bad:
            if error is not None:
                raise error
            raise ValueError(f"load_state_dict failed on rank(s) {bad}: {failed[bad[0]]}")
        *arguments, new_params = checked
        self._install(*arguments)
        for index, value in new_params:
            self.params[index][...] = value

    def _checked_state_dict(self, state_dict, convert=False):
        """``_install``'s arguments for a single-process ``state_dict``, checked whole,
        and ``[(param index, new value)]``: the params a conversion to the residual
        layout rewrote."""
        # The engine checks the dict against params of these shapes and dtypes (zeros:
        # pages never touched cost no memory) and gives back validated copies in this
        # optimizer's dtypes. A conversion reads the params (a residual decodes with its
        # param): it gets copies.
        groups = [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [
                    np.array(p) if convert else np.zeros(p.shape, p.dtype) for p in g["params"]
                ],
            }
            for g in self.param_groups
        ]
        saved_groups, saved = checked_state(
            self._algorithm, groups, state_dict, convert, self._check_group
        )
        index_of = {id(p): i for i, p in enumerate(p for g in groups for p in g["params"])}
        saved_state, new_params = {}, []
        for p, entry in saved:
            new_param = entry.pop(_validation.NEW_PARAM, None)
            if new_param is not None:  # converted to master="residual"
                new_params.append((index_of[id(p)], new_param))
            saved_state[index_of[id(p)]] = entry
        hypers = [
            {**{k: v for k, v in g.items() if k != "params"}, **new}
            for g, new in zip(groups, saved_groups)
        ]
        for gi, hyper in enumerate(hypers):
            _check_shardable(hyper, gi, self._algorithm)
        steps, names, scalars = [], [], []
        scalar_names = tuple(name for name, _ in self._algorithm.scalar_state)
        first = 0
        for gi, group in enumerate(groups):
            indices = range(first, first + len(group["params"]))
            entries = [saved_state[k] for k in indices if k in saved_state]
            step = int(entries[0]["step"]) if entries else 0
            steps.append(step)
            masters = (_precision.MASTER, _precision.MASTER_RESIDUAL)
            found = {
                tuple(sorted(k for k in e if k not in ("step", *masters) + scalar_names))
                for e in entries
            }
            if step and (len(found) > 1 or len(entries) != len(group["params"])):
                raise ValueError(
                    f"param_groups[{gi}]: its params hold different state arrays "
                    f"{sorted(found)}; a sharded optimizer steps a group's params together"
                )
            names.append(found.pop() if step else ())
            scalars.append({n: float(entries[0][n]) for n in scalar_names} if step else {})
            first += len(group["params"])

        def read(si, name, dst, start):
            segment = self._segments[si]
            flat = np.zeros(segment.padded, dst.dtype)
            copy_overlaps(
                flat,
                0,
                [
                    (offset, np.asarray(saved_state[index][name]).reshape(-1))
                    for index, offset in zip(segment.param_indices, segment.offsets)
                ],
            )
            copy_overlaps(dst, start, [(0, flat)])

        return steps, names, hypers, scalars, read, new_params

    def _install(self, steps, names, hypers, scalars, read):
        """Set steps, hyperparameters and every bucket's state from ``read`` (checked).

        ``read(si, name, dst, flat_start)`` fills ``dst`` with flat positions
        ``flat_start`` on of segment ``si``'s state ``name``.
        """
        for gi, hyper in enumerate(hypers):
            self.param_groups[gi].update(hyper)
            self._state_options[gi] = self.param_groups[gi].get("state_dtype")
            self._master_options[gi] = self.param_groups[gi].get("master", "float32")
        for si, _, _, c_start, _, length, unit in self._buckets:
            gi = unit.group_index
            state = None
            if steps[gi]:
                state = {}
                for name in self._array_names(si, names[gi]):
                    state[name] = np.zeros(length, self._array_dtype(si, name))
                    read(si, name, state[name], c_start)
            unit.forget(self._counters(state, steps[gi], scalars[gi]))
        for unit in self._idle_units:  # zero-length arrays of the group's state dtypes
            gi = unit.group_index
            state = None
            if steps[gi]:
                dtypes = state_dtypes(
                    self._algorithm, unit.param, self._state_options[gi], "an empty group",
                    self._master_options[gi],
                )  # fmt: skip
                wanted = (*names[gi], _precision.MASTER, _precision.MASTER_RESIDUAL)
                state = {n: np.zeros(0, dt) for n, dt in dtypes.items() if n in wanted}
            unit.forget(self._counters(state, steps[gi], scalars[gi]))

    def _counters(self, state, step, scalars):
        """``state`` with its step counter and scalar state as the engine keeps them (0-d
        arrays); None stays None."""
        if state is None:
            return None
        state["step"] = np.array(step, dtype=np.int64)
        for name, _ in self._algorithm.scalar_state:
            state[name] = np.array(scalars[name], dtype=np.float64)
        return state

    def _check_checkpoint_state(self, meta):
        """Raise unless the checkpoint's state fits this class under its saved settings."""
        algorithm = self._algorithm
        for gi, hyper in enumerate(meta["param_groups"]):
            _check_shardable(hyper, gi, self._algorithm)
            if not meta["steps"][gi]:
                continue
            names = tuple(meta["state_names"][gi])
            required = algorithm.state_names + tuple(
                name for name, flag in algorithm.optional_state if hyper.get(flag)
            )
            if not set(required) <= set(names) <= set(algorithm.all_state_names()):
                raise ValueError(
                    f"param_groups[{gi}]: the saved state has arrays {sorted(names)}; "
                    f"{self.optimizer_class.__name__} with these settings keeps "
                    f"{sorted(required)}"
                )
            saved_scalars = meta["scalars"][gi] if "scalars" in meta else {}
            missing = [n for n, _ in algorithm.scalar_state if n not in saved_scalars]
            if missing:
                raise ValueError(
                    f"param_groups[{gi}]: the checkpoint lacks the scalar state {missing} "
                    "(saved by an older version of fusedadam)"
                )

    def _checkpoint_arrays(self, meta):
        """Per segment ``{name: dtype}``: the state arrays to read from a checked
        checkpoint, as this optimizer will hold them; raises if the files hold others."""
        arrays = []
        for si, segment in enumerate(self._segments):
            gi = segment.group
            if not meta["steps"][gi]:
                arrays.append({})
                continue
            option = meta["param_groups"][gi].get("state_dtype")
            master = meta["param_groups"][gi].get("master", "float32")
            want = {
                name: self._array_dtype(si, name, option, master)
                for name in self._array_names(si, meta["state_names"][gi], master)
            }
            saved = meta.get("array_dtypes")
            saved = (
                saved[si]
                if saved is not None
                else {name: segment.dtype.name for name in meta["state_names"][gi]}
            )
            if {n: d.name for n, d in want.items()} != saved:
                raise ValueError(
                    f"the checkpoint holds state arrays {saved} for the params of segment "
                    f"{si}; this optimizer keeps { ({n: d.name for n, d in want.items()}) }"
                )
            arrays.append(want)
        return arrays

    # ------------------------------------------------------------ checkpoints
    def save(self, directory):
        """Collective: write this rank's shard (params and state) and, last, a manifest.

        See :mod:`fusedadam.distributed` for the file layout; a save interrupted at any
        point leaves the previous checkpoint in ``directory`` loadable.
        """
        arrays = {}
        for si in range(len(self._segments)):
            arrays[f"s{si}.param"] = self._my_params_shard(si)
            for name, value in self._shard_state(si).items():
                arrays[f"s{si}.{name}"] = value
        _checkpoint.save(self.comm, directory, arrays, self._meta())

    def load(self, directory):
        """Collective: load a checkpoint saved by :meth:`save` at any world size.

        Restores params (:attr:`params`), state, steps and hyperparameters; the next step
        is bit-identical to the one the saving run would have taken.
        """
        error = None
        try:
            reader = _checkpoint.CheckpointReader(directory)
            old = [(s.group, s.dtype, s.param_indices, s.shapes) for s in reader.segments]
            new = [(s.group, s.dtype, s.param_indices, s.shapes) for s in self._segments]
            if old != new:
                raise ValueError(
                    f"checkpoint {directory!r} holds params of other groups, "
                    "shapes or dtypes than this optimizer"
                )
            meta = reader.meta
            self._check_checkpoint_state(meta)
            arrays = self._checkpoint_arrays(meta)
            # Read everything this rank needs before anything is written.
            my_params = []
            for si, segment in enumerate(self._segments):
                pieces = []
                for start, stop, _ in segment.shard_ranges(self.rank):
                    chunk = np.zeros(stop - start, segment.dtype)
                    reader.read_flat(si, "param", chunk, start)
                    pieces.append((start, chunk))
                my_params.append(pieces)
            state = {}
            for si, segment in enumerate(self._segments):
                for name, dtype in arrays[si].items():
                    for start, stop, _ in segment.shard_ranges(self.rank):
                        chunk = np.zeros(stop - start, dtype)
                        reader.read_flat(si, name, chunk, start)
                        state[si, name, start] = chunk
        except Exception as exc:  # any error, so that the other ranks hear of it
            error = exc
        failed = self.comm.allgather(None if error is None else repr(error))
        bad = [r for r, message in enumerate(failed) if message is not None]
        if bad:
            if error is not None:
                raise error
            raise ValueError(f"loading {directory!r} failed on rank(s) {bad}: {failed[bad[0]]}")
        for si, pieces in enumerate(my_params):
            for start, chunk in pieces:
                self._flat_params[si][start : start + chunk.size] = chunk
        self._install(
            meta["steps"],
            meta["state_names"],
            meta["param_groups"],
            meta.get("scalars", [{}] * len(meta["steps"])),
            lambda si, name, dst, start: dst.__setitem__(slice(None), state[si, name, start]),
        )
        self.skipped_steps = meta["skipped_steps"]
        requests = [
            self.comm.Iallgather(
                MPI.IN_PLACE,
                [_words(self._flat_params[si][b_start:b_stop]), self._gather_types[si]],
            )
            for si, b_start, b_stop, *_ in self._buckets
        ]
        MPI.Request.Waitall(requests)


#: The registry's algorithms whose update reduces over each whole tensor.
_PER_TENSOR = ("lamb", "stableadamw")


def _check_shardable(group, gi, algorithm):
    """Raise on the settings a sharded step cannot apply as the single-process one does
    (at construction, and at every step: a group edited later is refused as well)."""
    if algorithm.name in _PER_TENSOR or group.get("cautious"):
        # LAMB's trust ratio, StableAdamW's RMS and the cautious mask's mean reduce over
        # each whole tensor; a rank holds a chunk of a bucket, and the engine's per-tensor
        # reductions cannot yet be summed over ranks between their two phases.
        raise ValueError(
            f"param_groups[{gi}]: the per-tensor algorithms (Lamb, StableAdamW, "
            "cautious=True) are not supported by ShardedOptimizer: their update reduces "
            "over each whole tensor, and a rank holds only a chunk of it"
        )
    if group.get("max_grad_norm") is not None:
        # Each rank steps its chunks of the buckets: their norm is not the group's, so
        # clipping there would be silently wrong.
        raise ValueError(
            f"param_groups[{gi}]: max_grad_norm is not supported by ShardedOptimizer "
            "(the norm would cover one rank's shard, not the group); clip the "
            "gradients before step()"
        )
    if group.get("state_dtype") == "8bit":
        # 8-bit blocks and their scales follow each rank's bucket, not the params:
        # checkpoints and resharding would need per-rank conversions.
        raise ValueError(
            f"param_groups[{gi}]: state_dtype='8bit' is not supported by "
            "ShardedOptimizer; use None, 'float32' or 'bfloat16'"
        )


def _first_difference(a, b, path="signature"):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}[{key!r}] (present on one rank only)"
            if a[key] != b[key]:
                return _first_difference(a[key], b[key], f"{path}[{key!r}]")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} on rank 0, {b!r} here"
