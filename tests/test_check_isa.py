"""tools/check_isa.py fails the modules it must fail: a fused multiply-add in a loop, wide
instructions outside the per-ISA copies (x86: AVX in a baseline function; aarch64: SVE
outside the *_sve functions), and passes the same code built as the extension is built.

Small shared objects compiled here stand in for the extension (its loop functions are
named fa_<kind>_<dtype>_<isa>). Needs gcc and objdump; the aarch64 cases need the cross
toolchain (gcc-aarch64-linux-gnu, which tools/check_aarch64.sh installs).
"""

import pathlib
import platform
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "check_isa.py"
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]

# three copies of a multiply-add loop, as _dispatch.h names them
LOOP = """
#define BODY {{ for (long i = 0; i < n; i++) p[i] = p[i] * a[i] + b[i]; }}
{base} void fa_madd_f32_baseline(float *restrict p, const float *restrict a,
                                 const float *restrict b, long n) BODY
{wide1} void fa_madd_f32_{isa1}(float *restrict p, const float *restrict a,
                               const float *restrict b, long n) BODY
{wide2} void fa_madd_f32_{isa2}(float *restrict p, const float *restrict a,
                               const float *restrict b, long n) BODY
"""


def _build_and_check(tmp_path, cc, source, flags):
    src = tmp_path / "m.c"
    src.write_text(source)
    so = tmp_path / "m.so"
    subprocess.run([cc, *FLAGS, *flags, str(src), "-o", str(so)], check=True)
    return subprocess.run(
        [sys.executable, str(CHECK), str(so)], capture_output=True, text=True, timeout=120
    )


x86 = pytest.mark.skipif(
    platform.machine() != "x86_64" or not (shutil.which("gcc") and shutil.which("objdump")),
    reason="needs an x86-64 gcc and objdump",
)
arm = pytest.mark.skipif(
    not shutil.which("aarch64-linux-gnu-gcc") or not shutil.which("aarch64-linux-gnu-objdump"),
    reason="needs the aarch64 cross toolchain (apt-get install gcc-aarch64-linux-gnu)",
)
X86 = dict(isa1="avx2", isa2="avx512", wide1='__attribute__((target("avx2")))',
           wide2='__attribute__((target("avx512f")))')  # fmt: skip
ARM = dict(isa1="neon", isa2="sve", wide1="", wide2='__attribute__((target("+sve")))')


@x86
def test_x86_clean_build_passes(tmp_path):
    run = _build_and_check(tmp_path, "gcc", LOOP.format(base="", **X86), ["-ffp-contract=off"])
    assert run.returncode == 0, run.stdout + run.stderr


@x86
def test_x86_fma_fails(tmp_path):
    source = LOOP.format(base="", **dict(X86, wide1='__attribute__((target("avx2,fma")))'))
    run = _build_and_check(tmp_path, "gcc", source, ["-ffp-contract=fast"])
    assert run.returncode == 1 and "fused multiply-add" in run.stdout, run.stdout


@x86
def test_x86_avx_in_baseline_fails(tmp_path):
    source = LOOP.format(base='__attribute__((target("avx2")))', **X86)
    run = _build_and_check(tmp_path, "gcc", source, ["-ffp-contract=off"])
    assert run.returncode == 1 and "fa_madd_f32_baseline" in run.stdout, run.stdout


@arm
def test_arm_clean_build_passes(tmp_path):
    run = _build_and_check(
        tmp_path, "aarch64-linux-gnu-gcc", LOOP.format(base="", **ARM), ["-ffp-contract=off"]
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(aarch64)" in run.stdout


@arm
def test_arm_fma_fails(tmp_path):
    run = _build_and_check(
        tmp_path, "aarch64-linux-gnu-gcc", LOOP.format(base="", **ARM), ["-ffp-contract=fast"]
    )
    assert run.returncode == 1 and "fused multiply-add" in run.stdout, run.stdout


@arm
def test_arm_sve_outside_the_sve_row_fails(tmp_path):
    source = LOOP.format(base='__attribute__((target("+sve")))', **ARM)
    run = _build_and_check(tmp_path, "aarch64-linux-gnu-gcc", source, ["-ffp-contract=off"])
    assert run.returncode == 1 and "outside *_sve" in run.stdout, run.stdout
