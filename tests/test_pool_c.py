"""Build and run the C tests of the stall-free pool (src/fusedadam/_pool.h).

Needs only a C compiler (`cc` on PATH); the Python package is not imported. The C program
checks: every chunk runs exactly once (0, 1, 7, 1000 ... chunks, 20000 jobs back to back),
the caller finishes a job alone while helpers are stopped, a helper stalled before its
claim in one job claims nothing in the next, two callers at once, fork after use, and
per-chunk results bit-identical for 1, 2 and 4 threads.
"""

import pathlib
import shutil
import sys

import pytest

from conftest import compile_and_run_c

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "c" / "test_pool.c"
HEADER_DIR = ROOT / "src" / "fusedadam"

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or sys.platform == "win32",
    reason="needs a POSIX C compiler `cc` on PATH",
)


def test_pool_c(tmp_path):
    run = compile_and_run_c(SOURCE, HEADER_DIR, tmp_path, ["-O2", "-pthread", "-Wall"], 120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all pool tests passed" in run.stdout
