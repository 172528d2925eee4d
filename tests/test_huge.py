"""64-bit indexing: a step over more than 2**31 elements (opt-in: FUSEDADAM_TEST_HUGE=1).

The kernels index with Py_ssize_t/ptrdiff_t. This test proves it on the largest array this
machine can hold: 2**31 + 17 float32 elements (8.6 GB per array, 34 GB for p, g, m, v),
backed by sparse memory-mapped files so it fits in 24 GB of RAM. Elements on both sides of
2**31 (where a 32-bit element index would wrap) and of 2**32 bytes are checked against the
NumPy reference computed on the same values.
"""

import os
import tempfile

import numpy as np
import pytest

import fusedadam as fa
from conftest import requires_compiled

pytestmark = [
    requires_compiled,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("FUSEDADAM_TEST_HUGE") != "1",
        reason="set FUSEDADAM_TEST_HUGE=1 (needs ~40 GB of free disk)",
    ),
]

N = 2**31 + 17
PROBES = [0, 2**30 + 3, 2**31 - 1, 2**31, 2**31 + 5, N - 1]


def test_step_over_more_than_two_to_the_31_elements():
    with tempfile.TemporaryDirectory(dir=os.environ.get("FUSEDADAM_HUGE_DIR")) as tmp:
        arrays = {
            name: np.memmap(f"{tmp}/{name}", dtype=np.float32, mode="w+", shape=(N,))
            for name in ("p", "g", "m", "v")
        }
        p, g, m, v = (arrays[k] for k in "pgmv")
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal(len(PROBES)).astype(np.float32)
        g0 = rng.standard_normal(len(PROBES)).astype(np.float32)
        p[PROBES] = p0
        g[PROBES] = g0
        fa.functional.adam([p], [g], [m], [v], step=1, lr=0.1, num_threads=2, backend="compiled")
        expected = p0.copy()
        fa.functional.adam(
            [expected],
            [g0],
            [np.zeros_like(p0)],
            [np.zeros_like(p0)],
            step=1,
            lr=0.1,
            backend="numpy",
        )
        np.testing.assert_array_equal(np.asarray(p[PROBES]), expected)
        assert np.all(np.asarray(m[PROBES]) == np.float32(0.1) * g0)
        del p, g, m, v, arrays
