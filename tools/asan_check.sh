#!/usr/bin/env bash
# Build the extension with AddressSanitizer in a scratch copy and run the test suite on it.
#
#   bash tools/asan_check.sh [pytest args]     (default: the whole suite but -m slow)
#
# NumPy allocates array data with malloc, which ASan intercepts when preloaded, so an
# out-of-bounds read or write by a kernel on any test array aborts the run with a report.
# Leak checking is off: CPython keeps interned objects alive at exit by design.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/src" "$root/tests" "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$work/"
cd "$work"
rm -f src/fusedadam/*.so src/fusedadam/*.c
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address" \
    python3 setup.py build_ext --inplace > build.log 2>&1 || { cat build.log; exit 1; }
asan=$(gcc -print-file-name=libasan.so)
n_asan=$(nm -D src/fusedadam/_kernels*.so | grep -c __asan_ || true)
[ "$n_asan" -gt 0 ] || { echo "the extension is not instrumented"; exit 1; }
echo "ASan build: $(ls src/fusedadam/_kernels*.so) ($n_asan ASan symbols); runtime: $asan"
LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
    PYTHONPATH="$work/src" python3 -c "import fusedadam as fa; print(fa.backend_info())"
LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
    PYTHONPATH="$work/src" python3 -m pytest tests -p no:cacheprovider -q -m "not slow" "$@"
