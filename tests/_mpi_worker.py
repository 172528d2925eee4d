"""Scenarios run by tests/test_distributed.py under ``mpiexec -n N python -m mpi4py``.

Each scenario checks itself on every rank (against the single-process optimizer built in
the same process) and raises on a mismatch, so that the job exits non-zero. Usage::

    mpiexec -n N python -m mpi4py tests/_mpi_worker.py SCENARIO [ARGS...]
"""

import functools
import operator
import os
import pickle
import sys

import numpy as np
from mpi4py import MPI

import fusedadam as fa
from fusedadam.distributed import ShardedOptimizer, consolidate_checkpoint

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()


def exact_grads(shapes, dtypes, step, source):
    """Multiples of 2**-7 in [-0.5, 0.5]: sums over up to 64 ranks are exact."""
    rng = np.random.default_rng([step, source, 12345])
    return [
        (rng.integers(-64, 65, size=shape) * 2.0**-7).astype(dt)
        for shape, dt in zip(shapes, dtypes)
    ]


def same_array(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def describe(value):
    return repr(value) if callable(value) else value


def check_same_state_dict(got, want, where):
    assert sorted(got["state"]) == sorted(want["state"]), (
        where,
        sorted(got["state"]),
        sorted(want["state"]),
    )
    for key, entry in want["state"].items():
        mine = got["state"][key]
        assert sorted(mine) == sorted(entry), (where, key, sorted(mine), sorted(entry))
        assert int(mine["step"]) == int(entry["step"]), (where, key)
        for name, value in entry.items():
            if name != "step":
                assert same_array(mine[name], value), (where, key, name)
    assert len(got["param_groups"]) == len(want["param_groups"]), where
    for g, w in zip(got["param_groups"], want["param_groups"]):
        assert {k: describe(v) for k, v in g.items()} == {k: describe(v) for k, v in w.items()}, (
            where,
            g,
            w,
        )


# lr(t) = 1e-2 / t, picklable by reference (checkpoints pickle callable hyperparameters).
schedule = functools.partial(operator.truediv, 1e-2)


CASES = {
    # name: (groups as [(shapes, dtype or dtypes, overrides)], bucket_elements)
    "one group": ([([(37, 5), (3,), (200,)], "f", {})], 1 << 22),
    "uneven, empty param, tiny buckets": ([([(7,), (0,), (131,), (1,), (64, 3)], "f", {})], 40),
    "several groups, mixed dtypes": (
        [
            ([(10, 10), (9,)], "f", {"lr": 5e-3}),
            ([(33,), (2, 2)], ["f", "d"], {"weight_decay": 0.1}),
            ([(0,)], "d", {}),
        ],
        64,
    ),
    "fewer elements than ranks": ([([(1,), (2,)], "d", {})], 1 << 22),
}
OPTIMIZERS = [
    (fa.Adam, {}),
    (fa.AdamW, {"lr": schedule}),
    (fa.Adamax, {}),
    (fa.Adam, {"amsgrad": True, "weight_decay": 0.01}),
]


def build(spec, dtype):
    groups, shapes, dtypes = [], [], []
    rng = np.random.default_rng(7)
    for g_shapes, g_dtypes, overrides in spec:
        if isinstance(g_dtypes, str):
            g_dtypes = [g_dtypes] * len(g_shapes)
        g_dtypes = [dtype if dt == "f" else np.float64 for dt in g_dtypes]
        params = [rng.standard_normal(s).astype(dt) for s, dt in zip(g_shapes, g_dtypes)]
        groups.append({"params": params, **overrides})
        shapes += g_shapes
        dtypes += g_dtypes
    return groups, shapes, dtypes


def copy_groups(groups):
    return [{**g, "params": [p.copy() for p in g["params"]]} for g in groups]


def scenario_exact():
    """Bit-identical params and state vs the single-process optimizer, every case."""
    n = 0
    for case, (spec, bucket) in CASES.items():
        for dtype in (np.float32, np.float64):
            for cls, kwargs in OPTIMIZERS:
                for reduction in ("sum", "mean"):
                    groups, shapes, dtypes = build(spec, dtype)
                    ref = cls(copy_groups(groups), **kwargs)
                    opt = ShardedOptimizer(
                        cls,
                        copy_groups(groups),
                        comm,
                        grad_reduction=reduction,
                        bucket_elements=bucket,
                        **kwargs,
                    )
                    for step in range(1, 5):
                        local = exact_grads(shapes, dtypes, step, rank)
                        total = [
                            sum(parts)
                            for parts in zip(
                                *(exact_grads(shapes, dtypes, step, r) for r in range(world))
                            )
                        ]
                        if reduction == "mean":
                            total = [np.divide(t, world).astype(t.dtype) for t in total]
                        ref.step(total)
                        if step % 2:
                            opt.step(local)  # packed from other arrays
                        else:
                            for view, g in zip(opt.grads, local):
                                view[...] = g  # zero copy: written in place
                            opt.step()
                        if step == 2:  # a scheduler edits a group
                            for g_ref, g_opt in zip(ref.param_groups, opt.param_groups):
                                g_ref["eps"] = g_opt["eps"] = 1e-6
                    where = f"{case}/{np.dtype(dtype).name}/{cls.__name__}{kwargs}/{reduction}"
                    for got, want in zip(
                        opt.params, (p for g in ref.param_groups for p in g["params"])
                    ):
                        assert same_array(got, want), where
                    full = opt.consolidated_state_dict(root=0)
                    if rank == 0:
                        check_same_state_dict(full, ref.state_dict(), where)
                    else:
                        assert full is None
                    check_memory(opt, where)
                    n += 1
    n += check_collective_cap()
    if rank == 0:
        print(f"exact: {n} configurations bit-identical at world size {world}")


def check_collective_cap():
    """With the per-collective cap lowered to 64 elements, a group given one huge bucket
    is still cut into capped buckets, and steps exactly (the path that keeps counts of
    groups above 2**31 elements below 2**31 per collective)."""
    from fusedadam.distributed import _layout

    saved, _layout.MAX_COLLECTIVE_ELEMENTS = _layout.MAX_COLLECTIVE_ELEMENTS, 64
    try:
        groups, shapes, dtypes = build([([(300,), (41, 3)], "f", {})], np.float32)
        ref = fa.Adam(copy_groups(groups))
        opt = ShardedOptimizer(
            fa.Adam, copy_groups(groups), comm, grad_reduction="sum", bucket_elements=1 << 40
        )
    finally:
        _layout.MAX_COLLECTIVE_ELEMENTS = saved
    (segment,) = opt._segments
    assert len(segment.buckets()) >= 423 // 64, segment.buckets()
    assert all(stop - start <= 64 for start, stop in segment.buckets())
    for step in range(1, 4):
        opt.step(exact_grads(shapes, dtypes, step, rank))
        ref.step(
            [
                sum(parts)
                for parts in zip(*(exact_grads(shapes, dtypes, step, r) for r in range(world)))
            ]
        )
    for got, want in zip(opt.params, (p for g in ref.param_groups for p in g["params"])):
        assert same_array(got, want), "capped buckets"
    return 1


def check_memory(opt, where):
    """Each rank holds 1/N of the state (plus tail padding to 64-byte shards), no more."""
    shard = opt.state_dict()
    held = sum(v.nbytes for s in shard["shards"] for k, v in s.items() if k != "param")
    state_names = shard["meta"]["state_names"]
    expected = sum(
        s.shard_size * s.dtype.itemsize * len(state_names[s.group]) for s in opt._segments
    )
    assert held == expected, (where, held, expected)
    real = sum(s.size * s.dtype.itemsize * len(state_names[s.group]) for s in opt._segments)
    padding = sum(s.padded - s.size for s in opt._segments)
    assert held * world >= real and padding < sum(world * 64 for _ in opt._segments), where


def two_groups(dtype=np.float32):
    rng = np.random.default_rng(3)
    return [
        {
            "params": [
                rng.standard_normal((13, 3)).astype(dtype),
                rng.standard_normal(5).astype(dtype),
            ],
            "nonfinite": "error",
        },
        {"params": [rng.standard_normal(40).astype(dtype)], "nonfinite": "skip"},
    ]


def snapshot(opt):
    params = [p.copy() for p in opt.params]
    state = [{k: v.copy() for k, v in s.items()} for s in opt.state_dict()["shards"]]
    return params, state, list(opt._steps), opt.skipped_steps


def same_snapshot(a, b):
    return (
        all(same_array(x, y) for x, y in zip(a[0], b[0]))
        and all(
            sorted(x) == sorted(y) and all(same_array(x[k], y[k]) for k in x)
            for x, y in zip(a[1], b[1])
        )
        and a[2] == b[2]
    )


def scenario_nonfinite():
    """One rank's NaN/inf or bad input: every rank raises or skips; nothing changes."""
    groups = two_groups()
    shapes = [p.shape for g in groups for p in g["params"]]
    dtypes = [np.float32] * 3
    opt = ShardedOptimizer(fa.AdamW, groups, comm, bucket_elements=32)
    opt.step(exact_grads(shapes, dtypes, 1, rank))
    culprit = world - 1
    cases = [
        (0, np.nan, FloatingPointError, "params[0]"),  # "error" group
        (1, np.inf, FloatingPointError, "params[1]"),
        (2, np.nan, None, None),
    ]  # "skip" group
    for param, value, exc, text in cases:
        before = snapshot(opt)
        grads = exact_grads(shapes, dtypes, 2, rank)
        if rank == culprit:
            grads[param].reshape(-1)[-1] = value
        try:
            opt.step(grads)
        except FloatingPointError as e:
            assert exc is FloatingPointError and text in str(e), (param, e)
        else:
            assert exc is None, (param, "no error")
            assert opt.skipped_steps == before[3] + 1
        assert same_snapshot(snapshot(opt), before), param
    # Bad input on one rank: it raises its own error, the others a ValueError naming it.
    before = snapshot(opt)
    grads = exact_grads(shapes, dtypes, 3, rank)
    if rank == culprit:
        grads[1] = np.zeros(6, np.float32)
    try:
        opt.step(grads)
    except ValueError as e:
        assert ("grads[1]" in str(e)) if rank == culprit else (f"rank {culprit}" in str(e)), e
    else:
        raise AssertionError("a rank with bad gradients did not stop the step")
    assert same_snapshot(snapshot(opt), before)
    opt.step(exact_grads(shapes, dtypes, 3, rank))  # still in step with each other
    assert opt._steps == [2, 2] and opt.skipped_steps == 1
    # A mode changed in param_groups applies from the next step on.
    opt.param_groups[0]["nonfinite"] = "skip"
    before = snapshot(opt)
    grads = exact_grads(shapes, dtypes, 4, rank)
    if rank == culprit:
        grads[0][0, 0] = np.nan
    opt.step(grads)
    assert opt.skipped_steps == 2 and same_snapshot(snapshot(opt), before)
    if rank == 0:
        print(f"nonfinite: all ranks agreed at world size {world}")


def full_snapshot(opt):
    """``snapshot`` plus the flat gradient buffers (``opt.grads``) and the per-group
    hyperparameters: everything a step could write."""
    params, state, steps, skipped = snapshot(opt)
    grads = [g.copy() for g in opt.grads]
    return params, state, steps, skipped, grads


def same_full_snapshot(a, b):
    return (
        same_snapshot(a[:4], b[:4])
        and a[3] == b[3]
        and all(same_array(x, y) for x, y in zip(a[4], b[4]))
    )


def scenario_atomic():
    """A step that raises has changed nothing on any rank: params, state, counters and the
    flat gradient buffers (``opt.grads``), whether the cause is one rank's gradients, one
    rank's settings, every rank's lr(t), or (after the reduction) a NaN in an "error"
    group; in the last case ``opt.grads`` holds the gradients the step was given (they are
    its input, packed before the reduce-scatter) and nothing else changed."""
    last = rank == world - 1
    groups = two_groups()
    groups[1]["lr"] = lambda t: 1e-3 if t < 3 else float("nan")
    shapes = [p.shape for g in groups for p in g["params"]]
    dtypes = [np.float32] * 3
    opt = ShardedOptimizer(fa.AdamW, groups, comm, bucket_elements=32)
    opt.step(exact_grads(shapes, dtypes, 1, rank))
    for view, g in zip(opt.grads, exact_grads(shapes, dtypes, 7, rank)):
        view[...] = g  # what a backward pass left there

    def bad_grads(grads):
        if last:
            grads[1] = np.zeros(6, np.float32)
        return grads

    def bad_lr():
        if last:
            opt.param_groups[0]["lr"] = -1.0

    def other_betas():
        if last or world == 1:
            opt.param_groups[0]["betas"] = (0.8, 0.9) if world > 1 else (1.5, 0.9)

    cases = [
        ("bad gradient on one rank", bad_grads, None, ValueError),
        ("bad lr on one rank", lambda g: g, bad_lr, ValueError),
        ("betas differ (or invalid)", lambda g: g, other_betas, ValueError),
    ]
    for what, edit_grads, edit_groups, exc in cases:
        saved = [dict(g) for g in opt.param_groups]
        before = full_snapshot(opt)
        if edit_groups is not None:
            edit_groups()
        try:
            opt.step(edit_grads(exact_grads(shapes, dtypes, 2, rank)))
        except exc:
            pass
        else:
            raise AssertionError(f"{what}: the step ran")
        assert same_full_snapshot(full_snapshot(opt), before), what
        for g, s in zip(opt.param_groups, saved):
            g.update(s)
    opt.step(exact_grads(shapes, dtypes, 2, rank))  # the ranks are still in step
    # lr(t) of group 1 fails at step 3, on every rank: nothing changes.
    before = full_snapshot(opt)
    try:
        opt.step(exact_grads(shapes, dtypes, 3, rank))
    except ValueError as e:
        assert "lr" in str(e), str(e)
    else:
        raise AssertionError("a NaN lr(t) ran")
    assert same_full_snapshot(full_snapshot(opt), before), "lr(t)"
    # A NaN in an "error" group, found in the reduced gradient: every rank raises.
    opt.param_groups[1]["lr"] = 1e-3
    before = full_snapshot(opt)
    grads = exact_grads(shapes, dtypes, 3, rank)
    if last:
        grads[0][0, 0] = np.nan
    try:
        opt.step(grads)
    except FloatingPointError as e:
        assert "params[0]" in str(e), str(e)
    else:
        raise AssertionError("a NaN in an error group ran")
    after = full_snapshot(opt)
    assert same_snapshot(after[:4], before[:4]), "nonfinite"
    assert all(same_array(x, y) for x, y in zip(after[4], grads)), "nonfinite grads"
    opt.step(exact_grads(shapes, dtypes, 3, rank))
    assert opt._steps == [3, 3] and opt.skipped_steps == 0, opt._steps
    if rank == 0:
        print(f"atomic: nothing changed on any rank at world size {world}")


def scenario_mismatch():
    """Construction with ranks that disagree fails on every rank, without hanging."""
    assert world > 1, "needs at least two ranks"
    last = rank == world - 1

    def expect(make, text):
        try:
            make()
        except (ValueError, TypeError) as e:
            assert text in str(e), (text, str(e))
        else:
            raise AssertionError(f"no error for {text}")

    shape = (5, 4) if last else (4, 5)
    expect(
        lambda: ShardedOptimizer(fa.Adam, [np.zeros(shape, np.float32)], comm),
        f"rank {world - 1} differs from rank 0 in signature['groups'][0]['params'][0]",
    )
    count = 2 if last else 1
    expect(
        lambda: ShardedOptimizer(fa.Adam, [np.zeros(3) for _ in range(count)], comm),
        f"rank {world - 1} differs from rank 0 in signature['groups'][0]['params']",
    )
    dtype = np.float64 if last else np.float32
    expect(lambda: ShardedOptimizer(fa.Adam, [np.zeros(3, dtype)], comm), "'<f8'")
    lr = 2e-3 if last else 1e-3
    expect(
        lambda: ShardedOptimizer(fa.Adam, [np.zeros(3)], comm, lr=lr), "signature['kwargs']['lr']"
    )
    expect(
        lambda: ShardedOptimizer(fa.AdamW if last else fa.Adam, [np.zeros(3)], comm),
        "signature['optimizer_class']",
    )
    bucket = 64 if last else 128
    expect(
        lambda: ShardedOptimizer(fa.Adam, [np.zeros(3)], comm, bucket_elements=bucket),
        "signature['bucket_elements']",
    )
    bad_lr = -1.0 if last else 1e-3
    expect(
        lambda: ShardedOptimizer(fa.Adam, [np.zeros(3)], comm, lr=bad_lr),
        "Invalid learning rate: -1.0"
        if last
        else f"construction failed on rank(s) [{world - 1}]: ValueError: Invalid learning",
    )
    if rank == 0:
        print(f"mismatch: every rank raised at world size {world}")


def exact_run_grads(shapes, dtypes, step):
    """Rank 0 contributes the step's gradient, the rest zeros: the sum is world-free."""
    grads = exact_grads(shapes, dtypes, step, 0)
    return grads if rank == 0 else [np.zeros_like(g) for g in grads]


RESUME_SPEC = [
    ([(19, 7), (0,), (301,)], "f", {"nonfinite": "skip"}),
    ([(5,), (77,)], ["d", "f"], {"lr": 3e-3}),
]


def resume_setup(bucket):
    groups, shapes, dtypes = build(RESUME_SPEC, np.float32)
    opt = ShardedOptimizer(
        fa.AdamW,
        copy_groups(groups),
        comm,
        grad_reduction="sum",
        bucket_elements=bucket,
        lr=schedule,
    )
    return opt, groups, shapes, dtypes


def scenario_save(directory, reference):
    """Train 3 steps, save, train to step 6; rank 0 writes the step-6 reference."""
    opt, groups, shapes, dtypes = resume_setup(bucket=96)
    for step in range(1, 4):
        opt.step(exact_run_grads(shapes, dtypes, step))
    opt.save(directory)
    for step in range(4, 7):
        opt.step(exact_run_grads(shapes, dtypes, step))
    full = opt.consolidated_state_dict()
    if rank == 0:
        # The single-process optimizer agrees with the sharded run at this world size.
        ref = fa.AdamW(copy_groups(groups), lr=schedule)
        for step in range(1, 7):
            ref.step(exact_grads(shapes, dtypes, step, 0))
        check_same_state_dict(full, ref.state_dict(), "save")
        with open(reference, "wb") as f:
            pickle.dump({"params": [p.copy() for p in opt.params], "state_dict": full}, f)


def scenario_resume(directory, reference):
    """Load a checkpoint saved at any world size, train to step 6, match the reference."""
    opt, _, shapes, dtypes = resume_setup(bucket=200)  # other buckets than the save's
    opt.load(directory)
    assert opt._steps == [3, 3], opt._steps
    for step in range(4, 7):
        opt.step(exact_run_grads(shapes, dtypes, step))
    with open(reference, "rb") as f:
        want = pickle.load(f)
    for got, expected in zip(opt.params, want["params"]):
        assert same_array(got, expected)
    full = opt.consolidated_state_dict()
    if rank == 0:
        check_same_state_dict(full, want["state_dict"], "resume")
    # The single-process route: consolidate the files, load the state_dict, resume.
    params, state_dict = consolidate_checkpoint(directory)
    again, *_ = resume_setup(bucket=64)
    for view, p in zip(again.params, params):
        view[...] = p
    again.load_state_dict(state_dict)
    for step in range(4, 7):
        again.step(exact_run_grads(shapes, dtypes, step))
    for got, expected in zip(again.params, want["params"]):
        assert same_array(got, expected)
    if rank == 0:
        print(f"resume: checkpoint resumed bit-identically at world size {world}")


def scenario_load_refused(directory):
    """A checkpoint that one rank cannot read, or that does not fit: every rank raises."""
    opt, *_ = resume_setup(bucket=96)
    before = snapshot(opt)
    try:
        opt.load(directory)
    except ValueError as e:
        assert "SHA-256" in str(e) or "failed on rank(s)" in str(e), e
    else:
        raise AssertionError("a corrupt checkpoint was loaded")
    assert same_snapshot(snapshot(opt), before)
    other = ShardedOptimizer(fa.AdamW, [np.zeros(5, np.float32)], comm)
    try:
        other.load(directory)
    except ValueError as e:
        assert (
            "other groups, shapes or dtypes" in str(e)
            or "SHA-256" in str(e)
            or "failed on rank(s)" in str(e)
        ), e
    else:
        raise AssertionError("a checkpoint of other params was loaded")
    # Adamax's state offered to AdamW: refused before any bucket is written.
    params = opt.params
    wrong = {
        "state": {
            i: {"step": 1, "exp_avg": np.ones_like(p), "exp_inf": np.ones_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [
            {"params": [int(i) for i in range(a, a + len(g["params"]))]}
            for a, g in zip((0, 3), opt.param_groups)
        ],
    }
    try:
        opt.load_state_dict(wrong)
    except ValueError as e:
        assert "exp_inf" in str(e) or "missing ['exp_avg_sq']" in str(e), e
    else:
        raise AssertionError("Adamax state was loaded into AdamW")
    assert same_snapshot(snapshot(opt), before)
    try:
        opt.load_state_dict({"state": {}, "param_groups": []})
    except ValueError as e:
        assert "param groups" in str(e) or "parameter groups" in str(e), e
    else:
        raise AssertionError("a state_dict of no groups was loaded")
    if rank == 0:
        print(f"load refused on every rank at world size {world}")


def scenario_interrupted_save(directory):
    """Load, step once, then die inside the next save just before its manifest commits."""
    from fusedadam.distributed import _checkpoint

    opt, _, shapes, dtypes = resume_setup(bucket=96)
    opt.load(directory)
    opt.step(exact_run_grads(shapes, dtypes, 4))

    def killed(temporary, final):
        os._exit(17)  # as a SIGKILL would: no cleanup, no flush

    _checkpoint._commit_manifest = killed
    opt.save(directory)
    raise AssertionError("the save should have been killed")


# ------------------------------------------------------------ features (mixed precision, ...)
# name: (class, param dtype, constructor options, grad_reduction)
FEATURES = {
    "bf16 state": (fa.Adam, np.float32, {"state_dtype": "bfloat16"}, "mean"),
    "bf16 state amsgrad": (
        fa.Adam,
        np.float32,
        {"state_dtype": "bfloat16", "amsgrad": True},
        "sum",
    ),
    "nadam": (fa.NAdam, np.float32, {"weight_decay": 0.01}, "mean"),
    "f16 params (master)": (fa.AdamW, np.float16, {}, "mean"),
    "f16 params, bf16 state": (fa.Adam, np.float16, {"state_dtype": "bfloat16"}, "sum"),
    "array grad_scale": (fa.Adam, np.float32, {"grad_scale": np.array([0.25])}, "sum"),
    "schedule lr, callable grad_scale": (
        fa.AdamW,
        np.float64,
        {"lr": fa.schedules.CosineDecay(1e-2, 10), "grad_scale": fa.schedules.Constant(4.0)},
        "mean",
    ),
}
FEATURE_SHAPES = [(37, 5), (0,), (3,), (200,)]


def feature_setup(name, bucket):
    cls, dtype, options, reduction = FEATURES[name]
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(s).astype(dtype) for s in FEATURE_SHAPES]
    opt = ShardedOptimizer(
        cls, [p.copy() for p in params], comm, grad_reduction=reduction,
        bucket_elements=bucket, **options,
    )  # fmt: skip
    return opt, cls, params, options


def feature_grads(name, step):
    """``(local, reduced)``: the same gradients on every rank for a mean, rank 0's and
    zeros for a sum: the reduced gradient does not depend on the world size."""
    _, dtype, _, reduction = FEATURES[name]
    grads = exact_grads(FEATURE_SHAPES, [dtype] * len(FEATURE_SHAPES), step, 0)
    if reduction == "sum" and rank != 0:
        return [np.zeros_like(g) for g in grads], grads
    return grads, grads


def scenario_features():
    """Every feature bit-identical to single-process (params and state, dtype for dtype);
    a grad_scale overflow, a schedule or setting that differs on one rank, and settings a
    sharded step cannot apply: refused on every rank, nothing changed."""
    n = 0
    for name in FEATURES:
        opt, cls, params, options = feature_setup(name, bucket=64)
        ref = cls([p.copy() for p in params], **options)
        for step in range(1, 5):
            local, total = feature_grads(name, step)
            ref.step(total)
            opt.step(local)
        for got, want in zip(opt.params, ref.param_groups[0]["params"]):
            assert same_array(got, want), name
        full = opt.consolidated_state_dict(root=world - 1)
        if rank == world - 1:
            check_same_state_dict(full, ref.state_dict(), name)
            for key, entry in ref.state_dict()["state"].items():
                for array, value in entry.items():
                    assert np.asarray(full["state"][key][array]).dtype == np.asarray(value).dtype
        n += 1
    # A sum that overflows once unscaled: single-process raises (or skips); so does this.
    for mode in ("error", "skip"):
        ref = fa.Adam([np.ones(50, np.float32)], grad_scale=1e-30, nonfinite=mode)
        opt = ShardedOptimizer(
            fa.Adam, [np.ones(50, np.float32)], comm, grad_scale=1e-30, nonfinite=mode,
            grad_reduction="sum", bucket_elements=8,
        )  # fmt: skip
        big = np.full(50, 1e30 / world, np.float32)
        outcome = []
        for o, g in ((ref, np.full(50, np.float32(1e30 / world) * world, np.float32)), (opt, big)):
            try:
                o.step([g])
                outcome.append(("ran", o.skipped_steps))
            except FloatingPointError:
                outcome.append(("raised", o.skipped_steps))
        assert outcome[0] == outcome[1] == (("raised", 0) if mode == "error" else ("ran", 1)), (
            mode,
            outcome,
        )
        assert (opt.params[0] == 1).all() and opt._steps == [0], mode
        # The step argument grad_scale, as single-process step(grads, grad_scale=...).
        opt.step([big], grad_scale=1.0)
        ref.step([np.full(50, np.float32(1e30 / world) * world, np.float32)], grad_scale=1.0)
        assert same_array(opt.params[0], ref.param_groups[0]["params"][0]), mode
        n += 1
    # Settings that differ on one rank, or that a sharded step cannot apply.
    last = rank == world - 1
    for what, edit, exc, text in [
        ("lr on one rank", lambda g: g.update(lr=0.5) if last else None, ValueError, "differ"),
        ("betas on one rank", lambda g: g.update(betas=(0.8, 0.9)) if last else None,
         ValueError, "differ"),
        ("max_grad_norm", lambda g: g.update(max_grad_norm=1.0), ValueError, "max_grad_norm"),
        ("8-bit state", lambda g: g.update(state_dtype="8bit"), ValueError, "8bit"),
        ("bf16 state", lambda g: g.update(state_dtype="bfloat16"), ValueError, "state_dtype"),
        ("bad lr(t) in group 1", None, ValueError, "lr"),
        ("bad grad_scale", lambda g: g.update(grad_scale=-1.0), ValueError, "grad_scale"),
    ]:  # fmt: skip
        if "one rank" in what and world == 1:
            continue
        groups = two_groups()
        groups[1]["lr"] = lambda t: 1e-3 if t < 2 else float("nan")
        opt = ShardedOptimizer(fa.AdamW, groups, comm, bucket_elements=32)
        shapes = [p.shape for g in groups for p in g["params"]]
        opt.step(exact_grads(shapes, [np.float32] * 3, 1, rank))
        before = snapshot(opt)
        if edit is not None:
            opt.param_groups[1]["lr"] = 1e-3
            edit(opt.param_groups[-1])
        try:
            opt.step(exact_grads(shapes, [np.float32] * 3, 2, rank))
        except exc as e:
            assert text in str(e) or f"rank {world - 1}" in str(e), (what, str(e))
        else:
            raise AssertionError(f"{what}: the step ran")
        assert same_snapshot(snapshot(opt), before), what
        n += 1
    # A state_dict refused on one rank only: every rank raises, none changes.
    if world > 1:
        opt = ShardedOptimizer(fa.Adam, [np.zeros(40, np.float32)], comm, bucket_elements=16)
        opt.step([np.ones(40, np.float32)])
        good = fa.Adam([np.zeros(40, np.float32)])
        good.step([np.full(40, 2.0, np.float32)])
        sd = good.state_dict()
        if last:
            sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"][:-1]
        before = snapshot(opt)
        try:
            opt.load_state_dict(sd)
        except ValueError as e:
            assert "shape" in str(e) or f"rank(s) [{world - 1}]" in str(e), str(e)
        else:
            raise AssertionError("a state_dict refused on one rank loaded on the others")
        assert same_snapshot(snapshot(opt), before)
        n += 1
    # Schedules compare by value at construction.
    for lr in () if world == 1 else (fa.schedules.CosineDecay(1e-3 if not last else 1e-1, 100),
               schedule if not last else functools.partial(operator.truediv, 1e-1)):  # fmt: skip
        try:
            ShardedOptimizer(fa.Adam, [np.zeros(4, np.float32)], comm, lr=lr)
        except ValueError as e:
            assert "differs from rank 0" in str(e), str(e)
        else:
            raise AssertionError(f"ranks with lr={lr!r} on the last rank were accepted")
        n += 1
    if rank == 0:
        print(f"features: {n} cases agree with single-process at world size {world}")


def scenario_features_save(directory):
    """Every feature: 2 steps, save (one directory per feature)."""
    for k, name in enumerate(FEATURES):
        opt, *_ = feature_setup(name, bucket=96)
        for step in range(1, 3):
            opt.step(feature_grads(name, step)[0])
        opt.save(os.path.join(directory, f"feature-{k}"))


def scenario_features_resume(directory):
    """Load each feature's checkpoint (saved at any world size), 2 more steps: equal to the
    single-process run of 4 steps; the consolidated files load single-process too."""
    for k, name in enumerate(FEATURES):
        opt, cls, params, options = feature_setup(name, bucket=40)
        path = os.path.join(directory, f"feature-{k}")
        opt.load(path)
        ref = cls([p.copy() for p in params], **options)
        for step in range(1, 5):
            ref.step(feature_grads(name, step)[1])
            if step > 2:
                opt.step(feature_grads(name, step)[0])
        for got, want in zip(opt.params, ref.param_groups[0]["params"]):
            assert same_array(got, want), name
        full = opt.consolidated_state_dict()
        if rank == 0:
            check_same_state_dict(full, ref.state_dict(), name)
            saved_params, state_dict = consolidate_checkpoint(path)
            single = cls(saved_params, **options)
            single.load_state_dict(state_dict)
            for step in range(3, 5):
                single.step(feature_grads(name, step)[1])
            for got, want in zip(saved_params, ref.param_groups[0]["params"]):
                assert same_array(got, want), name
    if rank == 0:
        print(f"features resume: {len(FEATURES)} features resumed at world size {world}")


# ------------------------------------------------------------ fuzz: sharded vs single-process
FUZZ_CLASSES = [fa.Adam, fa.AdamW, fa.Adamax, fa.NAdam, fa.RAdam, fa.AdaBelief, fa.Lion]


def _fuzz_config(rng):
    """A random sharded configuration (the same on every rank: one seed)."""
    groups = []
    for _ in range(int(rng.integers(1, 4))):
        dtype = [np.float32, np.float32, np.float64, np.float16][int(rng.integers(4))]
        shapes = [
            tuple(int(d) for d in rng.integers(0, 9, size=int(rng.integers(0, 3))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        options = {"nonfinite": ["error", "skip", "ignore"][int(rng.integers(3))]}
        if dtype != np.float64 and rng.random() < 0.4:
            options["state_dtype"] = "bfloat16"
        form = int(rng.integers(5))
        if form == 1:
            options["grad_scale"] = np.array([0.5])
        elif form == 2:
            options["grad_scale"] = fa.schedules.Constant(4.0)
        elif form == 3:
            options["grad_scale"] = 2.0**-100  # a finite sum can overflow once unscaled
        if rng.random() < 0.3:
            options["lr"] = fa.schedules.CosineDecay(1e-2, 8)
        groups.append((shapes, dtype, options))
    cls = FUZZ_CLASSES[int(rng.integers(len(FUZZ_CLASSES)))]
    reduction = ["sum", "mean"][int(rng.integers(2))]
    bucket = int([8, 32, 64, 1 << 22][int(rng.integers(4))])
    return cls, groups, reduction, bucket


def _fuzz_params(groups, seed):
    rng = np.random.default_rng(seed)
    return [
        {"params": [rng.standard_normal(s).astype(dt) for s in shapes], **options}
        for shapes, dt, options in groups
    ]


def _arrays(shapes, dtypes, step, source):
    """``exact_grads`` as arrays (a 0-d param's gradient too)."""
    return [np.array(g) for g in exact_grads(shapes, dtypes, step, source)]


def scenario_fuzz(seed, examples):
    """Random configurations stepped sharded and single-process side by side: every step
    takes the same decision (ran, skipped, raised) and gives bit-identical params; bad
    input injected on one rank (NaN/inf, a huge value, a wrong shape, an lr set there only)
    stops the step on every rank with nothing changed; checkpoints round trip in between."""
    import tempfile

    seed, examples = int(seed), int(examples)
    n_steps = injected = round_trips = 0
    decisions = {"ran": 0, "skipped": 0, "FloatingPointError": 0, "refused": 0}
    tmp = comm.bcast(tempfile.mkdtemp(prefix="fa-fuzz-") if rank == 0 else None, root=0)
    for example in range(examples):
        rng = np.random.default_rng([seed, example])  # the same draws on every rank
        cls, groups, reduction, bucket = _fuzz_config(rng)
        where = f"example {example}: {cls.__name__} {groups} {reduction} {bucket}"
        ref = cls(_fuzz_params(groups, example))
        opt = ShardedOptimizer(
            cls, _fuzz_params(groups, example), comm, grad_reduction=reduction,
            bucket_elements=bucket,
        )  # fmt: skip
        shapes = [s for g_shapes, _, _ in groups for s in g_shapes]
        dtypes = [dt for g_shapes, dt, _ in groups for _ in g_shapes]
        for step in range(1, 6):
            local = _arrays(shapes, dtypes, step * 1000 + example, rank)
            total = [
                sum(parts)
                for parts in zip(
                    *(_arrays(shapes, dtypes, step * 1000 + example, r) for r in range(world))
                )
            ]
            if reduction == "mean":
                total = [np.divide(t, world).astype(t.dtype) for t in total]
            culprit = int(rng.integers(world))
            bad = ["none"] * 6 + ["nan", "inf", "huge", "shape", "lr"]
            k = next((i for i, s in enumerate(shapes) if int(np.prod(s))), None)
            bad = bad[int(rng.integers(len(bad)))] if k is not None else "none"
            if bad in ("nan", "inf", "huge"):
                value = {"nan": np.nan, "inf": np.inf, "huge": 6e4 / world}[bad]
                if dtypes[k] != np.float16:
                    value = {"nan": np.nan, "inf": np.inf, "huge": 1e30 / world}[bad]
                if rank == culprit:
                    local[k].reshape(-1)[0] = value
                parts = [_arrays(shapes, dtypes, step * 1000 + example, r)[k] for r in range(world)]
                parts[culprit].reshape(-1)[0] = value
                with np.errstate(all="ignore"):
                    total[k] = sum(parts)
                    if reduction == "mean":
                        total[k] = np.divide(total[k], world).astype(total[k].dtype)
            elif bad == "shape" and rank == culprit:
                local[k] = np.zeros(int(np.prod(shapes[k])) + 1, dtypes[k])
            elif bad == "lr" and rank == culprit and world > 1:
                opt.param_groups[0]["lr"] = 0.25
            total = [np.array(t) for t in total]  # sums of 0-d arrays are scalars
            injected += bad != "none"
            before = ([p.copy() for p in opt.params], list(opt._steps), opt.skipped_steps)
            outcome = []
            for o, g in ((ref, total), (opt, local)):
                if o is ref and (bad == "shape" or (bad == "lr" and world > 1)):
                    outcome.append("refused")  # a local error: single-process never sees it
                    continue
                try:
                    with np.errstate(all="ignore"):
                        o.step(g)
                    outcome.append(("ran", o.skipped_steps))
                except FloatingPointError:
                    outcome.append(("FloatingPointError", o.skipped_steps))
                except (ValueError, TypeError) as e:
                    if os.environ.get("FA_FUZZ_DEBUG"):
                        print("refused:", type(o).__name__, bad, str(e)[:150], flush=True)
                    outcome.append("refused")
            if (
                outcome[1] == "refused"
                or outcome[1][0] == "FloatingPointError"
                or (outcome[1][1] > before[2])
            ):
                assert all(same_array(a, b) for a, b in zip(opt.params, before[0])), where
                assert opt._steps == before[1], where
            if outcome[0] == "refused":
                assert outcome[1] == "refused", (where, step, bad, outcome)
                opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"]
            else:
                assert outcome[0] == outcome[1], (where, step, bad, outcome)
            for got, want in zip(opt.params, (p for g in ref.param_groups for p in g["params"])):
                assert same_array(got, want), (where, step, bad)
            n_steps += 1
            if outcome[1] == "refused" or outcome[1][0] == "FloatingPointError":
                decisions[outcome[1] if outcome[1] == "refused" else "FloatingPointError"] += 1
            else:
                decisions["skipped" if outcome[1][1] > before[2] else "ran"] += 1
            if step == 3:  # a checkpoint round trip, through files or the consolidated dict
                if example % 2:
                    path = os.path.join(tmp, f"ex{example}")
                    opt.save(path)
                    opt.load(path)
                else:
                    full = opt.consolidated_state_dict(root=0)
                    opt.load_state_dict(comm.bcast(full, root=0))
                round_trips += 1
        full = opt.consolidated_state_dict(root=0)
        if rank == 0:
            check_same_state_dict(full, ref.state_dict(), where)
    if rank == 0:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"fuzz: {examples} examples, {n_steps} steps ({injected} with bad input on one "
            f"rank), {round_trips} checkpoint round trips: sharded == single-process at "
            f"world size {world}; decisions {decisions}"
        )


def scenario_die(how):
    """Rank 1 leaves mid-training; the others are in a collective."""
    opt = ShardedOptimizer(fa.Adam, [np.zeros(1000, np.float32)], comm)
    opt.step([np.ones(1000, np.float32)])
    if rank == 1:
        if how == "exit":
            os._exit(3)
        if how == "hang":
            import time

            time.sleep(3600)  # stuck: only MPIEXEC_TIMEOUT ends the job
        raise RuntimeError("rank 1 fails between steps")
    opt.step([np.ones(1000, np.float32)])
    opt.step([np.ones(1000, np.float32)])


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    globals()[f"scenario_{name}"](*args)
