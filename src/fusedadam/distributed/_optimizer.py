"""ShardedOptimizer: ZeRO-style sharded steps of any fusedadam dense optimizer over MPI."""

import time

import numpy as np
from mpi4py import MPI

from fusedadam.distributed import _checkpoint
from fusedadam.distributed._consolidate import single_process_state_dict
from fusedadam.distributed._layout import aligned_zeros, copy_overlaps, plan_segments

__all__ = ["ShardedOptimizer"]

#: Default bucket length in elements (16 MiB of float32 over all ranks): small enough that
#: a 100M-parameter group gives enough buckets to pipeline, large enough that per-bucket
#: latency (a few microseconds per collective) stays negligible.
DEFAULT_BUCKET_ELEMENTS = 1 << 22

_NOT_FOUND = np.iinfo(np.int64).max
_GRAD_REDUCTIONS = ("mean", "sum")


def _mpi_datatype(dtype):
    """The predefined MPI datatype of a NumPy dtype (MPI_SUM needs a predefined one)."""
    try:
        return MPI.Datatype.fromcode(np.dtype(dtype).char)
    except (ValueError, KeyError):
        raise TypeError(
            f"params of dtype {np.dtype(dtype)} have no predefined MPI datatype to sum gradients in"
        ) from None


def _describe(value):
    """A rank-independent description of a hyperparameter (callables by name, not id)."""
    if callable(value):
        return (
            f"<callable {getattr(value, '__module__', '?')}."
            f"{getattr(value, '__qualname__', type(value).__name__)}>"
        )
    if isinstance(value, (list, tuple)):
        return type(value)(_describe(v) for v in value)
    return repr(value)


def _param_groups_of(params):
    """``params`` as a list of group dicts (arrays, a sequence of arrays, or of dicts)."""
    if isinstance(params, np.ndarray):
        return [{"params": [params]}]
    if isinstance(params, (set, frozenset, dict)):
        raise TypeError(
            "params must be an array or an ordered sequence of arrays or of param-group dicts"
        )
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        groups = []
        for gi, group in enumerate(params):
            if "params" not in group:
                raise ValueError(f"param_groups[{gi}] has no 'params' entry")
            members = group["params"]
            members = [members] if isinstance(members, np.ndarray) else list(members)
            groups.append({**group, "params": members})
        return groups
    if any(isinstance(p, dict) for p in params):
        raise TypeError("params must be all arrays or all param-group dicts, not a mix")
    return [{"params": params}]


class ShardedOptimizer:
    r"""Shard a fusedadam optimizer over the ranks of an MPI communicator (ZeRO 1/2).

    Every rank holds the full params (in the optimizer's flat buffers) but only ``1/N``
    of the optimizer state. A step reduce-scatters the gradients (each rank receives the
    sum over ranks of its shard), decides globally whether the step runs (non-finite
    gradients, bad input on any rank), updates its shard with one compiled call per
    bucket, and all-gathers the updated params in place.

    **Params are owned by the optimizer.** At construction each rank's params are copied
    once into flat, 64-byte-aligned buffers (one per group and dtype);
    :attr:`params` are views of them, in the order given, and are what the model must use
    from then on (the arrays passed in are never written). :attr:`grads` are views of
    flat gradient buffers of the same shapes: a backward pass that writes into them
    (``np.matmul(..., out=opt.grads[0])``, ``grads[i][...] = ...``) needs no copy, and
    ``step()`` with no argument reduces them as they are. ``step(grads)`` with other
    arrays copies them into those buffers first (one pack copy).

    Parameters
    ----------
    optimizer_class : type
        A dense fusedadam optimizer class (:class:`fusedadam.Adam`, ``AdamW``,
        ``Adamax``, ...), called as ``optimizer_class(params, **kwargs)`` on each shard.
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
    ``nonfinite`` keeps its single-process meaning, decided for all ranks at once: every
    rank scans its reduced gradient shard, the verdicts are combined by one small
    allreduce, and then every rank raises (``"error"``), or skips (``"skip"``), before
    anything is written anywhere. The shards themselves are stepped with
    ``nonfinite="ignore"``.

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

        error, signature, groups, templates = None, None, None, None
        try:
            groups, templates = self._check_local(params, bucket_elements)
            signature = {**self._signature(groups), "bucket_elements": bucket_elements}
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
            flat_grad = aligned_zeros(segment.padded, segment.dtype)
            for index, shape, offset in zip(segment.param_indices, segment.shapes, segment.offsets):
                size = int(np.prod(shape, dtype=np.int64))
                self.params[index] = flat_param[offset : offset + size].reshape(shape)
                self.params[index][...] = user_params[index]  # the one copy
                self.grads[index] = flat_grad[offset : offset + size].reshape(shape)
            self._flat_params.append(flat_param)
            self._flat_grads.append(flat_grad)
            self._reduced.append(aligned_zeros(segment.shard_size, segment.dtype))

        self._group_modes = [t.param_groups[0]["nonfinite"] for t in templates]
        self.param_groups = []
        first = 0
        for group, template in zip(groups, templates):
            hyper = {k: v for k, v in template.param_groups[0].items() if k != "params"}
            hyper["params"] = self.params[first : first + len(group["params"])]
            self.param_groups.append(hyper)
            first += len(group["params"])
        self._overrides = [
            {k: v for k, v in g.items() if k not in ("params", "nonfinite")} for g in groups
        ]
        self._steps = [0] * len(groups)
        # One inner optimizer per (segment, bucket): it owns this rank's chunk of the
        # bucket (a view of the flat param buffer) and the state of that chunk only.
        self._buckets = []
        for si, segment in enumerate(self._segments):
            for (b_start, b_stop), (c_start, c_stop, offset) in zip(
                segment.buckets(), segment.shard_ranges(self.rank)
            ):
                inner = optimizer_class(
                    [
                        {
                            "params": [self._flat_params[si][c_start:c_stop]],
                            **self._overrides[segment.group],
                            "nonfinite": "ignore",
                        }
                    ],
                    **self._kwargs,
                )
                self._buckets.append(
                    (si, b_start, b_stop, c_start, offset, c_stop - c_start, inner)
                )
        self._mpi_types = [_mpi_datatype(s.dtype) for s in self._segments]
        #: Bytes handed to collectives per step by this rank: the flat buffers once to
        #: the reduce-scatter and once to the all-gather (2x the padded param bytes).
        self.comm_bytes_per_step = 2 * sum(s.padded * s.dtype.itemsize for s in self._segments)
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
        groups = _param_groups_of(params)
        seen = set()
        for gi, group in enumerate(groups):
            for k, p in enumerate(group["params"]):
                if not isinstance(p, np.ndarray):
                    raise TypeError(
                        f"param_groups[{gi}]['params'][{k}] is a {type(p).__name__}, not an ndarray"
                    )
                if id(p) in seen:
                    raise ValueError("some parameters appear more than once")
                seen.add(id(p))
                _mpi_datatype(p.dtype)
        # A one-element twin of each group checks its hyperparameters exactly as the
        # class does, and tells the group's defaults-filled settings.
        templates = []
        for group in groups:
            dtypes = list(dict.fromkeys(p.dtype for p in group["params"])) or [np.float64]
            overrides = {k: v for k, v in group.items() if k != "params"}
            templates.append(
                self.optimizer_class(
                    [{"params": [np.zeros(1, dt) for dt in dtypes], **overrides}], **self._kwargs
                )
            )
        for gi, template in enumerate(templates):
            if template.param_groups[0].get("max_grad_norm") is not None:
                # Each inner optimizer sees one bucket of one rank: its norm is not the
                # group's, so clipping there would be silently wrong.
                raise ValueError(
                    f"param_groups[{gi}]: max_grad_norm is not supported by ShardedOptimizer "
                    "(the norm would cover one rank's shard, not the group); clip the "
                    "gradients before step()"
                )
            if template.param_groups[0].get("master", "float32") != "float32":
                # the residual is meaningful only beside its param, which the buckets
                # and checkpoints of the sharded layout do not keep together
                raise ValueError(
                    f"param_groups[{gi}]: master="
                    f"{template.param_groups[0]['master']!r} is not supported by "
                    "ShardedOptimizer; use master='float32'"
                )
            if template.param_groups[0].get("state_dtype") == "8bit":
                # 8-bit blocks and their scales follow each rank's bucket, not the params:
                # checkpoints and resharding would need per-rank conversions.
                raise ValueError(
                    f"param_groups[{gi}]: state_dtype='8bit' is not supported by "
                    "ShardedOptimizer; use None, 'float32' or 'bfloat16'"
                )
        return groups, templates

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
    def step(self, grads=None):
        """One sharded step: reduce-scatter, global decision, shard update, all-gather.

        Parameters
        ----------
        grads : sequence of ndarray, optional
            This rank's local gradients, in param order, shaped and typed like
            :attr:`params`. Omitted (or the :attr:`grads` views themselves): the
            gradients already in :attr:`grads` are used, with no copy.

        Raises
        ------
        TypeError, ValueError
            Bad gradients on this rank; every other rank raises ``ValueError`` naming
            the rank. Nothing changed on any rank.
        FloatingPointError
            The reduced gradient of a param of a ``nonfinite="error"`` group holds NaN
            or inf; raised on every rank, nothing changed on any rank.
        """
        t_start = time.perf_counter()
        error = None
        try:
            self._group_modes = [self._nonfinite_mode(gi) for gi in range(len(self._steps))]
            if grads is not None:
                self._pack(grads)
        except Exception as exc:  # any error, so that the other ranks hear of it
            error = exc
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
            mode = self._group_modes[self._segments[si].group]
            if mode != "ignore":
                bad = self._first_nonfinite_param(si, c_start, reduced)
                if bad is not None:
                    if mode == "error":
                        first_error_param = min(first_error_param, bad)
                    else:
                        skip_found = 0
            t_scan += time.perf_counter() - t0
        t_reduced = time.perf_counter()

        # The global decision: one allreduce of three int64 (min over ranks). Clipping by
        # the global gradient norm will add its squared norm to this same exchange.
        decision = np.array(
            [self.rank if error is not None else _NOT_FOUND, first_error_param, skip_found],
            dtype=np.int64,
        )
        self.comm.Allreduce(MPI.IN_PLACE, decision, op=MPI.MIN)
        bad_rank, bad_param, skip = (int(v) for v in decision)
        if bad_rank != _NOT_FOUND:
            if error is not None:
                raise error
            raise ValueError(
                f"rank {bad_rank} rejected its gradients (see its error); this "
                "step changed nothing on any rank"
            )
        if bad_param != _NOT_FOUND:
            raise FloatingPointError(
                f"the reduced gradient of params[{bad_param}] holds NaN or inf "
                "(nonfinite='error'); this step changed nothing on any rank"
            )
        if skip != _NOT_FOUND:
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
        for si, b_start, b_stop, _, offset, length, inner in self._buckets:
            t0 = time.perf_counter()
            self._sync_hyperparameters(inner, self._segments[si].group)
            inner.step([self._reduced[si][offset : offset + length]])
            t_update += time.perf_counter() - t0
            if len(requests) >= self.max_in_flight:
                requests.pop(0).Wait()
            requests.append(
                self.comm.Iallgather(
                    MPI.IN_PLACE, [self._flat_params[si][b_start:b_stop], self._mpi_types[si]]
                )
            )
            MPI.Request.Testall(requests)  # drive progress of the earlier buckets
        t0 = time.perf_counter()
        MPI.Request.Waitall(requests)
        t_end = time.perf_counter()
        for gi in range(len(self._steps)):
            self._steps[gi] += 1
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

    def _pack(self, grads):
        """Copy ``grads`` into the flat gradient buffers; check everything first."""
        if isinstance(grads, np.ndarray):
            grads = [grads]
        grads = list(grads)
        if len(grads) != len(self.grads):
            raise ValueError(f"step got {len(grads)} gradients for {len(self.grads)} params")
        for i, (g, view) in enumerate(zip(grads, self.grads)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] is a {type(g).__name__}, not an ndarray")
            if g.shape != view.shape or g.dtype != view.dtype:
                raise ValueError(
                    f"grads[{i}] has shape {g.shape} and dtype {g.dtype}; "
                    f"params[{i}] has shape {view.shape} and dtype {view.dtype}"
                )
        for g, view in zip(grads, self.grads):
            if g is not view and not (
                g.ctypes.data == view.ctypes.data and g.strides == view.strides
            ):
                view[...] = g

    def _nonfinite_mode(self, gi):
        mode = self.param_groups[gi].get("nonfinite")
        if mode not in ("error", "skip", "ignore"):
            raise ValueError(
                f"param_groups[{gi}]: Invalid nonfinite mode {mode!r}; expected "
                "one of ('error', 'skip', 'ignore')"
            )
        return mode

    def _first_nonfinite_param(self, si, chunk_start, reduced):
        finite = np.isfinite(reduced)
        if finite.all():
            return None
        return self._segments[si].param_at(chunk_start + int(np.argmin(finite)))

    def _sync_hyperparameters(self, inner, gi):
        """Carry changes of ``param_groups[gi]`` (e.g. a new ``lr``) to a shard's optimizer."""
        target = inner.param_groups[0]
        for key, value in self.param_groups[gi].items():
            if key in ("params", "nonfinite"):
                continue
            if key not in target or target[key] is not value:
                target[key] = value

    # ------------------------------------------------------------ state
    def _state_names(self, gi):
        """The state array names of group ``gi`` (asked of the class itself)."""
        return self._probe(self.param_groups[gi])

    def _probe(self, hyper):
        """State names of the class under the settings ``hyper`` (checked as it checks).

        A one-element optimizer of the class with these settings takes one step: its
        constructor validates them, and its state_dict tells the names.
        """
        probe = self.optimizer_class(
            [
                {
                    "params": [np.zeros(1, np.float64)],
                    **{k: v for k, v in hyper.items() if k != "params"},
                }
            ]
        )
        probe.step([np.zeros(1, np.float64)])
        return tuple(k for k in probe.state_dict()["state"][0] if k != "step")

    def _check_install(self, steps, names, hypers):
        """Raise unless ``_install(steps, names, hypers, ...)`` can complete."""
        for gi, hyper in enumerate(hypers):
            expected = self._probe({**self.param_groups[gi], **hyper})
            if steps[gi] and sorted(names[gi]) != sorted(expected):
                raise ValueError(
                    f"param_groups[{gi}]: the saved state has arrays "
                    f"{sorted(names[gi])}; {self.optimizer_class.__name__} with "
                    f"these settings keeps {sorted(expected)}"
                )

    def _shard_state(self, si):
        """``{name: 1-d array}``: this rank's state of segment ``si`` (its chunks, joined)."""
        gi = self._segments[si].group
        if self._steps[gi] == 0:
            return {}
        names = self._state_names(gi)
        pieces = {name: [] for name in names}
        for b_si, *_, inner in self._buckets:
            if b_si != si:
                continue
            entry = inner.state_dict()["state"][0]
            for name in names:
                pieces[name].append(np.asarray(entry[name]).reshape(-1))
        return {
            name: np.concatenate(arrays) if arrays else np.zeros(0, self._segments[si].dtype)
            for name, arrays in pieces.items()
        }

    def _my_params_shard(self, si):
        ranges = self._segments[si].shard_ranges(self.rank)
        flat = self._flat_params[si]
        if not ranges:
            return np.zeros(0, flat.dtype)
        return np.concatenate([flat[start:stop] for start, stop, _ in ranges])

    def _meta(self):
        return {
            "segments": [s.to_meta() for s in self._segments],
            "steps": list(self._steps),
            "skipped_steps": self.skipped_steps,
            "param_groups": [
                {k: v for k, v in g.items() if k != "params"} for g in self.param_groups
            ],
            "state_names": [
                self._state_names(gi) if self._steps[gi] else ()
                for gi in range(len(self.param_groups))
            ],
            "optimizer_class": f"{self.optimizer_class.__module__}."
            f"{self.optimizer_class.__qualname__}",
            "grad_reduction": self.grad_reduction,
        }

    def state_dict(self):
        """This rank's shard: ``{"rank", "world_size", "meta", "shards"}``.

        ``shards[i]`` holds, for segment ``i`` of ``meta["segments"]`` (one group's params
        of one dtype), this rank's ``"param"`` values and state arrays, each the rank's
        chunks of the flat buffer joined in order (padding included). The layout in
        ``meta`` says which flat positions they are. Copies, not views.
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

        Equal (array for array, bit for bit) to the ``state_dict()`` of the single-process
        optimizer that took the same steps. Rank ``root`` holds the whole state at once.
        """
        shards = [self._shard_state(si) for si in range(len(self._segments))]
        gathered = self.comm.gather(shards, root=root)
        if self.rank != root:
            return None
        full = []
        for si, segment in enumerate(self._segments):
            arrays = {}
            for name in gathered[0][si] if gathered else {}:
                flat = np.zeros(segment.padded, segment.dtype)
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

    def load_state_dict(self, state_dict):
        """Load a single-process ``state_dict`` (of this optimizer class; any world size).

        Every rank passes the same dict; each keeps its shard of it. Params are not part
        of a state_dict and are not changed. Checked before anything is written.
        """
        groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(groups)} param groups, this optimizer "
                f"{len(self.param_groups)}"
            )
        steps, names = [], []
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(
                    f"param_groups[{gi}] has {len(saved['params'])} params in "
                    f"the state_dict, {len(mine['params'])} here"
                )
            group_steps = set()
            for key, p in zip(saved["params"], mine["params"]):
                entry = saved_state.get(key)
                if entry is None:
                    group_steps.add(0)
                    continue
                group_steps.add(int(entry["step"]))
                for name, value in entry.items():
                    if name != "step" and (
                        np.shape(value) != p.shape or np.asarray(value).dtype != p.dtype
                    ):
                        raise ValueError(
                            f"state_dict['state'][{key!r}][{name!r}] has shape "
                            f"{np.shape(value)}, dtype "
                            f"{np.asarray(value).dtype}; its param "
                            f"{p.shape}, {p.dtype}"
                        )
            if len(group_steps) > 1:
                raise ValueError(
                    f"param_groups[{gi}]: its params are at different steps {sorted(group_steps)}"
                )
            steps.append(group_steps.pop() if group_steps else 0)
            present = [saved_state[k] for k in saved["params"] if k in saved_state]
            names.append(tuple(k for k in present[0] if k != "step") if present else ())

        def flat_of(si, name):
            segment = self._segments[si]
            keys = groups[segment.group]["params"]
            first = sum(len(g["params"]) for g in self.param_groups[: segment.group])
            flat = np.zeros(segment.padded, segment.dtype)
            copy_overlaps(
                flat,
                0,
                [
                    (offset, np.asarray(saved_state[keys[index - first]][name]).reshape(-1))
                    for index, offset in zip(segment.param_indices, segment.offsets)
                ],
            )
            return flat

        hypers = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        self._check_install(steps, names, hypers)
        self._install(
            steps,
            names,
            hypers,
            lambda si, name, dst, start: copy_overlaps(dst, start, [(0, flat_of(si, name))]),
        )

    def _install(self, steps, names, hypers, read):
        """Set steps, hyperparameters and every bucket's state from ``read``.

        ``read(si, name, dst, flat_start)`` fills ``dst`` with flat positions
        ``flat_start`` on of segment ``si``'s state ``name``.
        """
        for gi, hyper in enumerate(hypers):
            self.param_groups[gi].update(hyper)
        for si, _, _, c_start, _, length, inner in self._buckets:
            gi = self._segments[si].group
            self._sync_hyperparameters(inner, gi)
            template = inner.state_dict()
            state = {}
            if steps[gi]:
                entry = {"step": steps[gi]}
                for name in names[gi]:
                    chunk = np.zeros(length, self._segments[si].dtype)
                    read(si, name, chunk, c_start)
                    entry[name] = chunk
                state = {0: entry}
            inner.load_state_dict({"state": state, "param_groups": template["param_groups"]})
        self._steps = list(steps)

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
                for name in meta["state_names"][segment.group]:
                    for start, stop, _ in segment.shard_ranges(self.rank):
                        chunk = np.zeros(stop - start, segment.dtype)
                        reader.read_flat(si, name, chunk, start)
                        state[si, name, start] = chunk
            self._check_install(meta["steps"], meta["state_names"], meta["param_groups"])
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
            lambda si, name, dst, start: dst.__setitem__(slice(None), state[si, name, start]),
        )
        self.skipped_steps = meta["skipped_steps"]
        requests = [
            self.comm.Iallgather(
                MPI.IN_PLACE, [self._flat_params[si][b_start:b_stop], self._mpi_types[si]]
            )
            for si, b_start, b_stop, *_ in self._buckets
        ]
        MPI.Request.Waitall(requests)


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
