"""ShardedOptimizer with bfloat16 params and ``master="residual"``, under real ``mpiexec``.

Each test launches ``mpiexec -n N python -m mpi4py tests/_mpi_residual_worker.py
SCENARIO`` (as tests/test_distributed.py does, skipping without mpi4py/mpiexec unless
``FUSEDADAM_REQUIRE_MPI=1``); the scenarios check themselves against the single-process
optimizers.
"""

from pathlib import Path

import pytest

from test_distributed import mpirun as _mpirun
from test_distributed import pytestmark  # noqa: F401  (skip without MPI, as there)

WORKER = Path(__file__).with_name("_mpi_residual_worker.py")


def mpirun(n, scenario, *args):
    return _mpirun(n, scenario, *args, worker=WORKER)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bit_identical_to_single_process(n):
    """bfloat16 params (gradients reduced in float32) x master float32/residual/compact x state
    float32/bfloat16 x Adam/AdamW/NAdam/Lion x sum/mean x buckets, 5 steps: params on
    every rank and the consolidated state equal the single-process optimizer's."""
    assert f"48 configurations bit-identical at world size {n}" in mpirun(n, "exact").stdout


@pytest.mark.parametrize("n", [1, 2, 3])
def test_load_state_dict_converts_between_master_layouts(n):
    assert f"converted both ways at world size {n}" in mpirun(n, "convert").stdout


@pytest.mark.parametrize("n", [1, 2])
def test_float16_and_changed_master_refused_on_every_rank(n):
    assert f"refused on every rank at world size {n}" in mpirun(n, "refused").stdout


@pytest.mark.parametrize(
    "saved_at, loaded_at, master",
    [(2, 3, "residual"), (3, 1, "residual"), (1, 2, "residual"), (2, 3, "compact")],
)
def test_residual_checkpoint_resumes_at_another_world_size(tmp_path, saved_at, loaded_at, master):
    mpirun(saved_at, "save", tmp_path, master)
    out = mpirun(loaded_at, "resume", tmp_path, master).stdout
    assert f"resumed at world size {loaded_at}" in out
