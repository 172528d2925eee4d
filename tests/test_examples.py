"""Run every example script in --fast mode so they cannot rot.

Each runs in a subprocess with ``-W error`` and ``MPLBACKEND=Agg``, importing the same
fusedadam as this test session. The PNG is checked when matplotlib is installed; the
digits example needs scikit-learn and is skipped without it.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedadam

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
# Warnings are errors in the examples too, except the one notice that a build without the
# extension runs on the NumPy reference (expected in that mode).
WARNINGS = ["-W", "error"] + (
    []
    if fusedadam.backend_info()["compiled"]
    else ["-W", "ignore:fusedadam's compiled extension is not available:RuntimeWarning"]
)
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ not shipped here")

CASES = [
    ("amsgrad_bowl.py", "amsgrad_bowl.png", ">9 f(["),
    ("elliptic_bowl.py", "elliptic_bowl.png", "final f ="),
    ("rosenbrock.py", "rosenbrock.png", "effective learning rate"),
    ("sparse_gradients.py", "sparse_gradients.png", "SparseAdam (lr=0.01)"),
    ("adamax_logistic.py", "adamax_logistic.png", "lowest training loss"),
    pytest.param(
        "digits_mlp.py",
        "digits_mlp.png",
        "bit-identical between the two backends: True",
        marks=pytest.mark.skipif(not HAVE_SKLEARN, reason="needs scikit-learn"),
    ),
    ("random_search.py", "random_search.png", "best: lr="),
    pytest.param(
        "state8bit.py",
        "state8bit.png",
        "8-bit minus float32: train loss",
        marks=pytest.mark.skipif(not HAVE_SKLEARN, reason="needs scikit-learn"),
    ),
    pytest.param(
        "bf16_digits.py",
        "bf16_digits.png",
        "bfloat16 + float32 master: final training loss",
        marks=pytest.mark.skipif(not HAVE_SKLEARN, reason="needs scikit-learn"),
    ),
]


def run_example(script, out_dir):
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    package_root = str(Path(fusedadam.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *WARNINGS, str(EXAMPLES / script), "--fast", "--out", str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("script, png, expected", CASES)
def test_example_runs_fast(script, png, expected, tmp_path):
    proc = run_example(script, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout
    if HAVE_MPL:
        path = tmp_path / png
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in proc.stdout


# Run under mpiexec by tests/test_distributed.py instead.
MPI_EXAMPLES = {"distributed_mlp.py"}


def test_examples_all_listed():
    scripts = {
        p.name
        for p in EXAMPLES.glob("*.py")
        if not p.name.startswith("_") and p.name not in MPI_EXAMPLES
    }
    listed = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES}
    assert scripts == listed


def _tutorial_amsgrad(n_iter=100, alpha=0.007, beta1=0.9, beta2=0.99):
    """The tutorial's from-scratch AMSGrad loop, element by element."""
    np.random.seed(1)
    x = -1.0 + np.random.rand(2) * 2.0
    m, v, vhat = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for t in range(n_iter):
        g = [2.0 * x[0], 2.0 * x[1]]
        for i in range(2):
            m[i] = beta1 ** (t + 1) * m[i] + (1.0 - beta1 ** (t + 1)) * g[i]
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] ** 2
            vhat[i] = max(vhat[i], v[i])
            x[i] = x[i] - alpha * m[i] / (np.sqrt(vhat[i]) + 1e-8)
    return x


def test_amsgrad_bowl_follows_the_tutorial(monkeypatch):
    """beta1_decay=beta1 with bias_correction=False is the tutorial's beta1**t AMSGrad."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import amsgrad_bowl

    solutions, scores = amsgrad_bowl.run(verbose=False)
    np.testing.assert_allclose(solutions[-1], _tutorial_amsgrad(), rtol=1e-9, atol=1e-15)
    assert scores[-1] < 1e-5


def test_example_without_matplotlib_still_prints(tmp_path):
    """A stub ``matplotlib`` that fails to import stands in for a missing install."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib blocked for a test')\n")
    env = dict(os.environ)
    package_root = str(Path(fusedadam.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), package_root])
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            *WARNINGS,
            str(EXAMPLES / "elliptic_bowl.py"),
            "--fast",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matplotlib is not installed" in proc.stdout and "final f =" in proc.stdout
    assert not out.exists()
