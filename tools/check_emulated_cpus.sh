#!/usr/bin/env bash
# Run an installed fusedadam on emulated older CPUs (qemu-user) and check that it picks the
# right loops and runs: SandyBridge (AVX without AVX2: a stray AVX2 or AVX-512 instruction
# is SIGILL there) must use "baseline", Haswell (AVX2, no AVX-512) must use "avx2".
# (Nehalem, with no AVX at all, was the first CPU until NumPy 2.4.6's wheel itself stopped
# running on qemu's Nehalem and Westmere models: SIGILL at `import numpy`.)
#
# Usage: tools/check_emulated_cpus.sh PYTHON     (the python of a venv with fusedadam)
# Needs qemu-x86_64 (Debian: apt-get install qemu-user); installs it when run as root with
# apt-get, else says it skipped. x86-64 hosts only.
set -euo pipefail
cd "$(dirname "$0")/.."
python="$1"
if [ "$(uname -m)" != x86_64 ]; then
    echo "check_emulated_cpus: not an x86-64 host: skipped"
    exit 0
fi
if ! command -v qemu-x86_64 > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "installing qemu-user (Debian)"
        if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq qemu-user) > /dev/null; then
            # tools/check_isa.py (the disassembly check) still guards the wheel.
            echo "check_emulated_cpus: SKIPPED: qemu-user could not be installed"
            exit 0
        fi
    else
        echo "check_emulated_cpus: SKIPPED: no qemu-x86_64 (apt-get install qemu-user)"
        exit 0
    fi
fi
for pair in SandyBridge:baseline Haswell:avx2; do
    cpu="${pair%%:*}" expected="${pair##*:}"
    echo "== emulated $cpu: expect '$expected'"
    # qemu warns about CPUID bits TCG cannot emulate (pcid, x2apic, ...): not ours.
    qemu-x86_64 -cpu "$cpu" "$python" tools/isa_probe.py "$expected" \
        2> >(grep -v "TCG doesn't support requested feature" >&2)
done
