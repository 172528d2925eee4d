"""The extension must be built with OpenMP (skip with FUSEDADAM_SKIP_OPENMP_TEST=1)."""

import os

import pytest

import fusedadam as fa

SKIP = os.environ.get("FUSEDADAM_SKIP_OPENMP_TEST", "0") not in ("", "0")


@pytest.mark.skipif(SKIP, reason="FUSEDADAM_SKIP_OPENMP_TEST is set")
def test_built_with_openmp():
    info = fa.backend_info()
    assert info["compiled"], "the compiled extension is not importable"
    assert info["openmp"], (
        "fusedadam was built without OpenMP: steps run on one thread. Install a compiler "
        "with OpenMP (or set FUSEDADAM_SKIP_OPENMP_TEST=1 to accept a serial build)."
    )


def test_backend_info_fields():
    info = fa.backend_info()
    assert set(info) >= {"compiled", "openmp", "max_threads", "version", "simd"}
    assert info["version"] == fa.__version__
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    if info["compiled"]:
        assert info["simd"] in ("baseline", "avx2", "avx512", "neon", "sve")
