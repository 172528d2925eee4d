"""bench/convergence.py and bench/master_speed.py in a few steps.

Smoke runs only (the real runs take minutes): each script runs end to end in a
subprocess with ``-W error`` and writes its JSON; the convergence run's residual shadows
were checked at every step; and the exactness check itself fails on a residual that is
one bit off and on a param that differs off a tie.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fusedadam
from fusedadam import reference

BENCH = Path(__file__).resolve().parent.parent / "bench"
HAVE = {m: importlib.util.find_spec(m) is not None for m in ("sklearn", "torch")}

pytestmark = [
    pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ not shipped here"),
    pytest.mark.skipif(not fusedadam.backend_info()["compiled"], reason="needs the extension"),
]


def run_script(args, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(fusedadam.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", *args], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(not all(HAVE.values()), reason="needs scikit-learn and torch")
def test_convergence_smoke(tmp_path):
    out = tmp_path / "c.json"
    text = run_script(
        [str(BENCH / "convergence.py"), "--digits-seeds", "0", "1", "--lm-seeds", "0",
         "--digits-epochs", "1", "--lm-steps", "3", "--lm-eval-every", "2",
         "--modes", "float32", "bf16 + f32 master, 8-bit", "bf16 + residual, 8-bit",
         "--json", str(out)],
        tmp_path,
    )  # fmt: skip
    assert "shadow exact over" in text
    results = json.loads(out.read_text())["results"]
    for task, steps in (("digits", 43), ("lm", 3)):
        summary = results[task]["summary"]
        assert summary["bf16 + residual, 8-bit"]["shadow_steps"] == steps, task


def test_master_speed_smoke(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "s.json"
    run_script(
        [str(BENCH / "master_speed.py"), "--sizes", "4096", "--threads", "1", "--repeats", "5",
         "--json", str(out)],
        tmp_path,
    )  # fmt: skip
    (row,) = json.loads(out.read_text())["rows"]
    assert row["bytes_per_element"]["bf16 + residual, 8-bit"] == 14.0 + 16 / 256
    assert all(t > 0 for t in row["median_s"].values())


def test_exactness_check_can_fail():
    sys.path.insert(0, str(BENCH))
    try:
        from convergence import check_exact
    finally:
        sys.path.remove(str(BENCH))
    rng = np.random.default_rng(0)
    master = rng.standard_normal(1000).astype(np.float32)
    master.view(np.uint32)[7] = (master.view(np.uint32)[7] & 0xFFFE0000) | 0x8000  # even tie
    param, residual = reference.residual_encode(master)
    twin = master.astype(ml_dtypes.bfloat16)  # round to nearest even
    assert check_exact(master, twin, param, residual) == 1
    off = residual.copy()
    off[3] ^= 1
    with pytest.raises(AssertionError, match="master differs"):
        check_exact(master, twin, param, off)
    moved = twin.copy()
    moved.view(np.uint16)[5] += 1
    with pytest.raises(AssertionError, match="off a tie"):
        check_exact(master, moved, param, residual)
