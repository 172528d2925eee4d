"""Build and run tests/c/test_rows.c: every row of the dispatch table this CPU runs
(x86-64: baseline, avx2, avx512; aarch64: baseline, neon, sve) against the baseline row,
bit for bit, with the build's own flags.

Needs only a C compiler (`cc` on PATH); the Python package is not imported.
tools/check_aarch64.sh runs the same program cross-compiled for aarch64 under qemu.
"""

import pathlib
import shutil
import sys

import pytest

from conftest import compile_and_run_c

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "c" / "test_rows.c"
HEADER_DIR = ROOT / "src" / "fusedadam"
# setup.py's flags for the extension (no FMA contraction, no fast-math, no -march)
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or sys.platform == "win32",
    reason="needs a POSIX C compiler `cc` on PATH",
)


def test_rows_c(tmp_path):
    flags = [*FLAGS, "-Wall", "-Wno-unused-function"]
    run = compile_and_run_c(SOURCE, HEADER_DIR, tmp_path, flags, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all row tests passed" in run.stdout
    assert run.stdout.count("bit-identical to baseline") >= 1
