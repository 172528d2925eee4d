"""fusedadam.distributed: sharded steps, checkpoints and misuse, under real ``mpiexec`` runs.

Each test launches ``mpiexec -n N python -m mpi4py tests/_mpi_worker.py SCENARIO`` (1 to 4
ranks, oversubscribed on small machines, one OpenMP thread per rank, no core binding)
against the installed package; the scenarios check themselves against the single-process
optimizers. Without mpi4py or mpiexec the tests skip, unless ``FUSEDADAM_REQUIRE_MPI=1``
(as in CI), which makes them fail instead.
"""

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_mpi_worker.py")
REQUIRE_MPI = os.environ.get("FUSEDADAM_REQUIRE_MPI") == "1"
TIMEOUT = 240  # seconds per mpiexec run: a hang fails the test, not the suite


def _find_mpiexec():
    beside_python = Path(sys.executable).with_name("mpiexec")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
_missing = [what for what, ok in (("mpi4py", HAVE_MPI4PY), ("mpiexec", MPIEXEC)) if not ok]
if _missing and REQUIRE_MPI:
    raise RuntimeError(
        f"FUSEDADAM_REQUIRE_MPI=1 but {' and '.join(_missing)} not found "
        "(pip install 'fusedadam[mpi]')"
    )
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"needs {' and '.join(_missing)} (pip install 'fusedadam[mpi]')"
)


def _launcher_flags():
    """No core binding, and oversubscription allowed: 4 ranks may share 2 cores."""
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return ["--oversubscribe", "--bind-to", "none"]
    return ["-bind-to", "none"]  # MPICH's Hydra oversubscribes by default


def mpirun(n, scenario, *args, check=True, timeout=TIMEOUT, env=None, worker=WORKER):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error", **(env or {}))
    if os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [
        MPIEXEC,
        "-n",
        str(n),
        *_launcher_flags(),
        sys.executable,
        "-m",
        "mpi4py",
        str(worker),
        scenario,
        *map(str, args),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bit_identical_to_single_process(n):
    """Adam/AdamW/Adamax/AMSGrad x float32/float64 x sum/mean x layouts, 4 steps each;
    and buckets capped per collective (the large-count path, with a lowered cap)."""
    out = mpirun(n, "exact").stdout
    assert f"65 configurations bit-identical at world size {n}" in out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nonfinite_and_bad_gradients_decided_on_every_rank(n):
    assert "all ranks agreed" in mpirun(n, "nonfinite").stdout


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_step_that_raises_changes_nothing_on_any_rank(n):
    """One rank's bad gradient or setting, every rank's bad lr(t), a NaN in an "error"
    group: params, state, counters and the flat gradient buffers unchanged everywhere."""
    assert "nothing changed on any rank" in mpirun(n, "atomic").stdout


@pytest.mark.parametrize("n", [2, 3])
def test_ranks_that_disagree_fail_at_construction(n):
    assert "every rank raised" in mpirun(n, "mismatch").stdout


@pytest.mark.parametrize("n", [1, 2, 3])
def test_features_bit_identical_and_decided_before_any_write(n):
    """bfloat16 state, NAdam, float16 params with masters, array/callable grad_scale and
    schedules: params and state (dtype for dtype) equal single-process; a grad_scale
    overflow, settings that differ on one rank (schedules by value), and settings a sharded
    step cannot apply (max_grad_norm, 8-bit, a changed state_dtype, a bad lr(t) in a later
    group) raise on every rank with nothing changed."""
    assert f"cases agree with single-process at world size {n}" in mpirun(n, "features").stdout


FUZZ_EXAMPLES = 25  # per world size; the soak run: 400


def _fuzz(n, seed, examples):
    out = mpirun(n, "fuzz", seed, examples).stdout
    assert f"sharded == single-process at world size {n}" in out
    print(out.strip().splitlines()[-1])  # the run counts, with -s


@pytest.mark.parametrize("n", [2, 3])
def test_fuzz_sharded_equals_single_process_step_by_step(n):
    """Random classes, groups (float32/float64/float16, bfloat16 state, grad_scale forms
    including overflow once unscaled, schedules, mixed non-finite policies), buckets and
    reductions; bad input injected on one rank; checkpoint round trips."""
    _fuzz(n, 20260 + n, FUZZ_EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize("n", [2, 3])
def test_fuzz_sharded_soak(n):
    _fuzz(n, 7 * n, 400)


@pytest.fixture(scope="module")
def feature_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_checkpoints")
    for n in (1, 3):
        (root / f"saved-at-{n}").mkdir()
        mpirun(n, "features_save", root / f"saved-at-{n}")
    return root


@pytest.mark.parametrize("saved_at", [1, 3])
@pytest.mark.parametrize("loaded_at", [2, 3])
def test_every_feature_resumes_at_any_world_size(feature_checkpoints, saved_at, loaded_at):
    out = mpirun(loaded_at, "features_resume", feature_checkpoints / f"saved-at-{saved_at}")
    assert f"features resumed at world size {loaded_at}" in out.stdout


SAVE_SIZES = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint at step 3 and the step-6 reference, saved at each world size."""
    root = tmp_path_factory.mktemp("checkpoints")
    for n in SAVE_SIZES:
        mpirun(n, "save", root / f"saved-at-{n}", root / f"reference-{n}.pkl")
    return root


@pytest.mark.parametrize("saved_at", SAVE_SIZES)
@pytest.mark.parametrize("loaded_at", [1, 2, 3, 4])
def test_checkpoint_resumes_at_any_world_size(checkpoints, saved_at, loaded_at):
    out = mpirun(
        loaded_at,
        "resume",
        checkpoints / f"saved-at-{saved_at}",
        checkpoints / f"reference-{saved_at}.pkl",
    ).stdout
    assert f"resumed bit-identically at world size {loaded_at}" in out


def test_references_agree_across_world_sizes(checkpoints):
    """The step-6 params and state do not depend on the world size that produced them."""
    refs = []
    for n in SAVE_SIZES:
        with open(checkpoints / f"reference-{n}.pkl", "rb") as f:
            refs.append(pickle.load(f))
    for other in refs[1:]:
        for a, b in zip(refs[0]["params"], other["params"]):
            assert a.tobytes() == b.tobytes()
        for key, entry in refs[0]["state_dict"]["state"].items():
            for name, value in entry.items():
                assert (
                    np.asarray(value).tobytes()
                    == np.asarray(other["state_dict"]["state"][key][name]).tobytes()
                )


def test_interrupted_save_leaves_previous_checkpoint(checkpoints, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "saved-at-2", directory)
    manifest = (directory / "manifest.json").read_text()
    killed = mpirun(2, "interrupted_save", directory, check=False)
    assert killed.returncode != 0
    new_files = {p.name for p in directory.iterdir()} - {
        p.name for p in (checkpoints / "saved-at-2").iterdir()
    }
    assert any(name.startswith("shard-") for name in new_files), new_files  # it got far
    assert (directory / "manifest.json").read_text() == manifest
    out = mpirun(3, "resume", directory, checkpoints / "reference-2.pkl").stdout
    assert "resumed bit-identically" in out
    # The next successful save removes what the killed one left behind.
    mpirun(2, "save", directory, tmp_path / "reference.pkl")
    manifest = json.loads((directory / "manifest.json").read_text())
    named = {manifest["meta"]["file"]} | {entry["file"] for entry in manifest["shards"]}
    assert {p.name for p in directory.iterdir()} == named | {"manifest.json"}


def test_corrupt_or_missing_shard_is_refused(checkpoints, tmp_path):
    from fusedadam.distributed import consolidate_checkpoint

    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "saved-at-3", directory)
    consolidate_checkpoint(directory)  # intact: loads
    shard = sorted(directory.glob("shard-*-00001-of-00003.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        consolidate_checkpoint(directory)
    shard.unlink()
    with pytest.raises(ValueError, match="missing"):
        consolidate_checkpoint(directory)


def test_unreadable_checkpoint_is_refused_on_every_rank(checkpoints, tmp_path):
    """Only rank 2 of 3 reads the corrupt shard (same layout), yet every rank raises."""
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "saved-at-3", directory)
    shard = sorted(directory.glob("shard-*-00002-of-00003.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    assert "load refused on every rank" in mpirun(3, "load_refused", directory).stdout


def test_consolidated_checkpoint_loads_into_single_process_optimizer(checkpoints):
    """consolidate_checkpoint gives a state_dict the ordinary optimizer resumes from."""
    import fusedadam as fa
    from fusedadam.distributed import consolidate_checkpoint

    sys.path.insert(0, str(WORKER.parent))
    try:
        worker = pytest.importorskip("_mpi_worker")
    finally:
        sys.path.pop(0)
    params, state_dict = consolidate_checkpoint(checkpoints / "saved-at-4")
    groups, shapes, dtypes = worker.build(worker.RESUME_SPEC, np.float32)
    for group in groups:
        group["params"] = [params.pop(0) for _ in group["params"]]
    opt = fa.AdamW(groups, lr=worker.schedule)
    opt.load_state_dict(state_dict)
    for step in range(4, 7):
        opt.step(worker.exact_grads(shapes, dtypes, step, 0))
    with open(checkpoints / "reference-4.pkl", "rb") as f:
        want = pickle.load(f)
    got = [p for g in opt.param_groups for p in g["params"]]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want["params"]))


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_dying_rank_ends_the_job_instead_of_hanging(how):
    result = mpirun(3, "die", how, check=False, timeout=120)
    assert result.returncode != 0
    if how == "raise":
        assert "rank 1 fails between steps" in result.stderr


def test_mpiexec_timeout_ends_a_stuck_job():
    """A rank stuck outside MPI leaves the others in a collective; MPIEXEC_TIMEOUT (MPICH's
    Hydra) ends the job. Open MPI's mpiexec spells it --timeout."""
    if "Open MPI" in subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("MPIEXEC_TIMEOUT is MPICH's (Open MPI: mpiexec --timeout)")
    start = time.monotonic()
    result = mpirun(2, "die", "hang", check=False, timeout=120, env={"MPIEXEC_TIMEOUT": "5"})
    # The job cannot finish by itself (rank 1 sleeps for an hour): ending this soon is the
    # timeout's doing. MPICH 5.0.2's Hydra sometimes exits 0 after killing the job on the
    # timeout (its proxy then reports "demux engine error"), so the status alone is not it.
    assert time.monotonic() - start < 60
    assert result.returncode != 0 or "error" in result.stderr.lower(), result.stderr


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_mlp.py"


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="examples/ not shipped here")
def test_sharded_training_example_matches_single_process_accuracy():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            MPIEXEC,
            "-n",
            "4",
            *_launcher_flags(),
            sys.executable,
            "-m",
            "mpi4py",
            str(EXAMPLE),
            "--fast",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(s for s in result.stdout.splitlines() if s.startswith("accuracy difference"))
    assert float(line.split()[2]) <= 1.0, result.stdout


def test_consolidation_command_line(checkpoints, tmp_path):
    from fusedadam.distributed import consolidate_checkpoint

    out = tmp_path / "consolidated.pkl"
    result = subprocess.run(
        [sys.executable, "-m", "fusedadam.distributed", str(checkpoints / "saved-at-3"), str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    with open(out, "rb") as f:
        written = pickle.load(f)
    params, state_dict = consolidate_checkpoint(checkpoints / "saved-at-3")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(written["params"], params))
    assert sorted(written["state_dict"]["state"]) == sorted(state_dict["state"])
    # The checkpoint's lr is a callable: an .npz cannot hold it, and the tool says so.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusedadam.distributed",
            str(checkpoints / "saved-at-3"),
            str(tmp_path / "c.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0 and "callable" in result.stderr


def test_max_grad_norm_is_refused_not_applied_per_shard():
    """Clipping by a shard's norm would be silently wrong: construction refuses it."""
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa

    params = [np.zeros(10, np.float32)]
    with pytest.raises(ValueError, match=r"max_grad_norm is not supported by ShardedOptimizer"):
        ShardedOptimizer(fa.Adam, params, max_grad_norm=1.0)


def test_8bit_state_is_refused():
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa

    params = [np.zeros(10, np.float32)]
    with pytest.raises(ValueError, match=r"state_dtype='8bit' is not supported by ShardedOpt"):
        ShardedOptimizer(fa.Adam, params, state_dtype="8bit")


@pytest.mark.parametrize(
    "cls, options",
    [("Lamb", {}), ("StableAdamW", {}), ("Adam", {"cautious": True}), ("Lion", {"cautious": True})],
)
def test_per_tensor_algorithms_are_refused_with_the_reason(cls, options):
    """Their update reduces over each whole tensor; a rank holds chunks of it."""
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa

    with pytest.raises(ValueError, match=r"per-tensor algorithms .* a rank holds only a chunk"):
        ShardedOptimizer(getattr(fa, cls), [np.zeros(10, np.float32)], **options)


def test_only_dense_optimizer_classes_and_their_hyperparameters_are_taken():
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa

    with pytest.raises(TypeError, match="dense fusedadam optimizer class"):
        ShardedOptimizer(fa.SparseAdam, [np.zeros((4, 3), np.float32)])
    with pytest.raises(TypeError, match="dense fusedadam optimizer class"):
        ShardedOptimizer(object, [np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'amsgrad'"):
        ShardedOptimizer(fa.Adamax, [np.zeros(3, np.float32)], amsgrad=True)


def test_no_optimizer_object_is_built(monkeypatch):
    """State names, defaults and checks come from the registry and the engine: no
    template, probe or checker optimizer is built (construction, steps, state_dict,
    load_state_dict with a conversion, consolidation)."""
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa
    from fusedadam import optim

    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(7, 3), (0,), (50,)]]
    ref = fa.NAdam([p.copy() for p in params], weight_decay=0.1)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(3)]
    for g in grads:
        ref.step(g)
    saved = ref.state_dict()

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a {type(self).__name__} was built")

    monkeypatch.setattr(optim.Optimizer, "__init__", refuse)
    opt = ShardedOptimizer(fa.NAdam, [p.copy() for p in params], bucket_elements=16,
                           weight_decay=0.1)  # fmt: skip
    for g in grads:
        opt.step(g)
    for got, want in zip(opt.params, ref.param_groups[0]["params"]):
        assert got.tobytes() == want.tobytes()
    full = opt.consolidated_state_dict()
    assert all(
        np.asarray(full["state"][k][name]).tobytes() == np.asarray(v).tobytes()
        for k, entry in saved["state"].items()
        for name, v in entry.items()
    )
    opt.load_state_dict(saved, convert=True)
    assert opt._steps == [3] and opt.state_dict()["meta"]["scalars"] == [
        {"mu_product": float(saved["state"][0]["mu_product"])}
    ]


def test_schedule_free_shards_as_single_process_and_refuses_eval_mode():
    from fusedadam.distributed import ShardedOptimizer

    import fusedadam as fa

    rng = np.random.default_rng(6)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(9, 4), (3,)]]
    ref = fa.AdamWScheduleFree([p.copy() for p in params], warmup_steps=2)
    opt = ShardedOptimizer(fa.AdamWScheduleFree, [p.copy() for p in params], warmup_steps=2,
                           bucket_elements=16)  # fmt: skip
    for _ in range(3):
        g = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        ref.step(g)
        opt.step(g)
    for got, want in zip(opt.params, ref.param_groups[0]["params"]):
        assert got.tobytes() == want.tobytes()
    opt.param_groups[0]["train_mode"] = False
    before = [p.copy() for p in opt.params]
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step([np.ones(p.shape, np.float32) for p in params])
    assert all((a == b).all() for a, b in zip(opt.params, before)) and opt._steps == [3]
