#!/usr/bin/env python3
"""Import the installed fusedadam, check which loops it picked, and step every variant with
the compiled kernel and the NumPy reference (bit-identical results expected).

Run by tools/check_emulated_cpus.sh under qemu-user emulating older CPUs: an instruction
the emulated CPU lacks anywhere on the path (import, dispatch, Cython, OpenMP, loops)
kills the process with SIGILL.

Usage: python tools/isa_probe.py EXPECTED_SIMD
"""

import sys

import numpy as np

import fusedadam as fa


def main(expected):
    info = fa.backend_info()
    print(
        f"fusedadam {fa.__file__}: simd={info['simd']} simd_best={info['simd_best']} "
        f"openmp={info['openmp']}"
    )
    assert info["compiled"] and info["openmp"], info
    assert info["simd"] == info["simd_best"] == expected, (info, expected)
    rng = np.random.default_rng(0)
    variants = [
        (fa.Adam, {}),
        (fa.Adam, {"amsgrad": True, "weight_decay": 0.01}),
        (fa.AdamW, {"weight_decay": 0.1}),
        (fa.Adamax, {"weight_decay": 0.01}),
    ]
    for dtype in (np.float32, np.float64):
        start = rng.standard_normal(70_001).astype(dtype)  # odd size: vector tails too
        grad = rng.standard_normal(70_001).astype(dtype)
        for cls, options in variants:
            a, b = start.copy(), start.copy()
            fast = cls(a, backend="compiled", num_threads=2, **options)
            slow = cls(b, backend="numpy", **options)
            for _ in range(3):
                fast.step(grad)
                slow.step(grad)
            assert np.array_equal(a, b), (cls.__name__, options, dtype)
    # Mixed precision: the staged runner, the conversions and the norm scan of this ISA.
    import ml_dtypes

    for param_dtype, grad_dtype, options in (
        (ml_dtypes.bfloat16, np.float32, {"max_grad_norm": 1.0, "grad_scale": 4.0}),
        (np.float16, ml_dtypes.bfloat16, {"state_dtype": "bfloat16"}),
    ):
        start = rng.standard_normal(70_001).astype(param_dtype)
        grad = rng.standard_normal(70_001).astype(grad_dtype)
        a, b = start.copy(), start.copy()
        fast = fa.AdamW(a, backend="compiled", num_threads=2, **options)
        slow = fa.AdamW(b, backend="numpy", **options)
        for _ in range(3):
            fast.step(grad)
            slow.step(grad)
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), (param_dtype, options)
        assert fast.last_grad_norm == slow.last_grad_norm
    print(f"{expected}: all variants bit-identical to the NumPy reference")


if __name__ == "__main__":
    main(sys.argv[1])
