"""Scenarios of tests/test_distributed_residual.py: ShardedOptimizer with bfloat16 params
and ``master="residual"``, under ``mpiexec -n N python -m mpi4py``.

Each scenario checks itself on every rank against the single-process optimizer (built in
the same process, stepping the summed gradients) and raises on a mismatch. Usage::

    mpiexec -n N python -m mpi4py tests/_mpi_residual_worker.py SCENARIO [ARGS...]
"""

import os
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fusedadam as fa  # noqa: E402
from fusedadam import reference as R  # noqa: E402
from fusedadam.distributed import ShardedOptimizer, consolidate_checkpoint  # noqa: E402
from _mpi_worker import check_same_state_dict, comm, exact_grads, rank, same_array, world  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)

# Shapes straddling ranks and buckets: empty, one element, odd, larger than a bucket.
SPEC = [
    ([(19, 7), (0,), (1,), (301,)], {}),
    ([(5,), (77,)], {"lr": 3e-3, "weight_decay": 0.1}),
]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    groups = []
    for shapes, overrides in SPEC:
        params = [rng.standard_normal(s).astype(F32).astype(BF16) for s in shapes]
        groups.append({"params": params, **overrides})
    return groups


def copy_groups(groups, **extra):
    return [{**g, **extra, "params": [p.copy() for p in g["params"]]} for g in groups]


def shapes_of(groups):
    return [p.shape for g in groups for p in g["params"]]


def rank_grads(shapes, step, dtype):
    """This rank's gradients: rank 0 the step's (multiples of 2**-7), the others zeros,
    so the sum over ranks is exact and the same at every world size."""
    grads = exact_grads(shapes, [F32] * len(shapes), step, 0)
    grads = grads if rank == 0 else [np.zeros_like(g) for g in grads]
    return [g.astype(dtype) for g in grads]


def master_of(opt_state, p):
    if "master_residual" in opt_state:
        return R.master_decode(p, opt_state["master_residual"]).reshape(p.shape)
    return np.asarray(opt_state["master_param"])


def check_params(got, want, where):
    for k, (a, b) in enumerate(zip(got, want)):
        assert same_array(a, b), (where, k)


def scenario_exact():
    """bfloat16 params x master float32/residual/compact x state None/bfloat16 x classes x
    reductions x buckets, 5 steps each: params (every rank) and the consolidated state
    equal the single-process optimizer's, bit for bit."""
    count = 0
    for cls in (fa.Adam, fa.AdamW, fa.NAdam, fa.Lion):
        for master in ("float32", "residual", "compact"):
            for state_dtype in (None, "bfloat16"):
                for reduction, bucket, grad_dtype in (
                    ("sum", 40, BF16),
                    ("mean", 1 << 22, F32),
                ):
                    groups = make_params(count)
                    options = {"master": master, "state_dtype": state_dtype}
                    opt = ShardedOptimizer(
                        cls,
                        copy_groups(groups),
                        comm,
                        grad_reduction=reduction,
                        bucket_elements=bucket,
                        **options,
                    )
                    ref = cls(copy_groups(groups), **options)
                    shapes = shapes_of(groups)
                    for step in range(1, 6):
                        opt.step(rank_grads(shapes, step, grad_dtype))
                        grads = exact_grads(shapes, [F32] * len(shapes), step, 0)
                        if reduction == "mean" and world > 1:
                            grads = [g / F32.type(world) for g in grads]
                        ref.step(grads)
                    where = (cls.__name__, master, state_dtype, reduction)
                    ref_params = [p for g in ref.param_groups for p in g["params"]]
                    check_params(opt.params, ref_params, where)
                    full = opt.consolidated_state_dict()
                    if rank == 0:
                        want = ref.state_dict()
                        check_same_state_dict(full, want, where)
                        names = {k for e in full["state"].values() for k in e}
                        assert ("master_residual" in names) == (master != "float32"), names
                    count += 1
    print(f"{count} configurations bit-identical at world size {world}")


def scenario_convert():
    """load_state_dict(convert=True) between the float32-master and residual layouts:
    the masters move exactly (the params rewritten as they encode, on every rank), the
    runs continue as the single-process float32-master run's masters; without convert
    every rank refuses and nothing changes."""
    groups = make_params(7)
    shapes = shapes_of(groups)
    f32 = fa.AdamW(copy_groups(groups), lr=1e-2)
    for step in range(1, 4):
        f32.step(exact_grads(shapes, [F32] * len(shapes), step, 0))
    f32_params = [p for g in f32.param_groups for p in g["params"]]
    # An exact even tie: RNE keeps the param 0x3f80, the residual layout needs 0x3f81.
    f32.state[f32_params[0]]["master_param"].reshape(-1)[0] = np.uint32(0x3F808000).view(F32)
    f32_params[0].reshape(-1)[0] = np.uint16(0x3F80).view(BF16)
    saved = f32.state_dict()

    res = ShardedOptimizer(fa.AdamW, copy_groups(groups), comm, bucket_elements=64, lr=1e-2,
                           master="residual", grad_reduction="sum")  # fmt: skip
    for view, p in zip(res.params, f32_params):
        view[...] = p
    before = [p.copy() for p in res.params]
    try:
        res.load_state_dict(saved)
    except ValueError as exc:
        assert "convert=True" in str(exc), exc
    else:
        raise AssertionError("loaded the float32-master layout without convert")
    check_params(res.params, before, "refused")
    assert res._steps == [0, 0]
    res.load_state_dict(saved, convert=True)
    assert res.params[0].reshape(-1)[:1].view(np.uint16)[0] == 0x3F81  # on every rank
    full = res.consolidated_state_dict()
    if rank == 0:
        for key, entry in saved["state"].items():
            mine = full["state"][key]
            assert "master_param" not in mine
            p = full_param(res, key)
            assert same_array(master_of(mine, p), entry["master_param"]), key
    for step in range(4, 7):
        res.step(rank_grads(shapes, step, F32))
        f32.step(exact_grads(shapes, [F32] * len(shapes), step, 0))
    full = res.consolidated_state_dict()
    if rank == 0:
        for key, entry in f32.state_dict()["state"].items():
            p = full_param(res, key)
            assert same_array(master_of(full["state"][key], p), entry["master_param"]), key

    # and back: a float32-master sharded optimizer loads the residual layout.
    back = ShardedOptimizer(fa.AdamW, copy_groups(groups), comm, bucket_elements=50, lr=1e-2,
                            grad_reduction="sum")  # fmt: skip
    for view, p in zip(back.params, res.params):
        view[...] = p
    residual_sd = comm.bcast(full if rank == 0 else None, root=0)
    try:
        back.load_state_dict(residual_sd)
    except ValueError as exc:
        assert "convert=True" in str(exc), exc
    else:
        raise AssertionError("loaded the residual layout without convert")
    back.load_state_dict(residual_sd, convert=True)
    check_params(back.params, res.params, "back: params unchanged")
    for step in range(7, 10):
        back.step(rank_grads(shapes, step, BF16))
        res.step(rank_grads(shapes, step, BF16))
        f32.step(exact_grads(shapes, [F32] * len(shapes), step, 0))
    full_back, full_res = back.consolidated_state_dict(), res.consolidated_state_dict()
    if rank == 0:
        for key, entry in f32.state_dict()["state"].items():
            assert same_array(full_back["state"][key]["master_param"], entry["master_param"])
            p = full_param(res, key)
            assert same_array(master_of(full_res["state"][key], p), entry["master_param"])
    print(f"converted both ways at world size {world}")


def full_param(opt, key):
    return opt.params[key]


def scenario_refused():
    """float16 params refuse master='residual' and a master changed between steps is
    refused, on every rank, with nothing changed."""
    try:
        ShardedOptimizer(fa.Adam, [np.zeros(10, np.float16)], comm, master="residual")
    except TypeError as exc:
        assert "master='residual' applies to bfloat16 params; params[0]" in str(exc), exc
    else:
        raise AssertionError("float16 params took master='residual'")
    groups = make_params(3)
    shapes = shapes_of(groups)
    opt = ShardedOptimizer(fa.Adam, copy_groups(groups), comm, master="residual")
    opt.step(rank_grads(shapes, 1, F32))
    before = [p.copy() for p in opt.params]
    opt.param_groups[1]["master"] = "float32"
    try:
        opt.step(rank_grads(shapes, 2, F32))
    except ValueError as exc:
        assert "master changed from 'residual' to 'float32'" in str(exc), exc
    else:
        raise AssertionError("a changed master was stepped")
    check_params(opt.params, before, "refused step")
    assert opt._steps == [1, 1]
    # A gradient of another dtype than float32/bfloat16 for a bfloat16 param.
    opt.param_groups[1]["master"] = "residual"
    bad = rank_grads(shapes, 2, F32)
    bad[0] = bad[0].astype(np.float16)
    try:
        opt.step(bad)
    except ValueError as exc:
        assert "(gradients float32 or bfloat16)" in str(exc), exc
    else:
        raise AssertionError("a float16 gradient was taken for a bfloat16 param")
    check_params(opt.params, before, "bad gradient")
    print(f"refused on every rank at world size {world}")


def setup_resume(bucket, master):
    groups = make_params(11)
    opt = ShardedOptimizer(fa.AdamW, copy_groups(groups), comm, grad_reduction="sum",
                           bucket_elements=bucket, lr=1e-2, master=master)  # fmt: skip
    return opt, groups, shapes_of(groups)


def scenario_save(directory, master="residual"):
    """3 steps of a residual (or compact) run, saved."""
    opt, _, shapes = setup_resume(bucket=96, master=master)
    for step in range(1, 4):
        opt.step(rank_grads(shapes, step, BF16))
    opt.save(directory)
    if rank == 0:
        print(f"saved at world size {world}")


def scenario_resume(directory, master="residual"):
    """Load a residual checkpoint saved at another world size, take 3 more steps: params
    and state equal the single-process residual run of 6 steps; the consolidated
    checkpoint resumes a single-process optimizer the same way."""
    opt, groups, shapes = setup_resume(bucket=200, master=master)
    opt.load(directory)
    assert opt._steps == [3, 3], opt._steps
    for step in range(4, 7):
        opt.step(rank_grads(shapes, step, F32))
    ref = fa.AdamW(copy_groups(groups), lr=1e-2, master=master)
    for step in range(1, 7):
        ref.step(exact_grads(shapes, [F32] * len(shapes), step, 0))
    ref_params = [p for g in ref.param_groups for p in g["params"]]
    check_params(opt.params, ref_params, "resume")
    full = opt.consolidated_state_dict()
    if rank == 0:
        check_same_state_dict(full, ref.state_dict(), "resume")
        params, state_dict = consolidate_checkpoint(directory)
        split, first = [], 0
        for g in groups:
            count = len(g["params"])
            split.append({**g, "params": params[first : first + count]})
            first += count
        single = fa.AdamW(split, lr=1e-2, master=master)
        single.load_state_dict(state_dict)
        for step in range(4, 7):
            single.step(exact_grads(shapes, [F32] * len(shapes), step, 0))
        check_params(params, ref_params, "consolidated")
    print(f"resumed at world size {world}")


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    globals()[f"scenario_{name}"](*args)
