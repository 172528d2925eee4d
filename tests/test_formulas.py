"""The NumPy reference against a literal, element-by-element transcription of the
formulas in the README (float64, plain Python floats and math.sqrt).

Adamax is evaluated in the same order as the transcription, so in float64 it matches
exactly. The Adam parameter update is evaluated in the algebraically identical
one-division form ``(lr/bc1*sqrt(bc2)) * m / (sqrt(v) + eps*sqrt(bc2))`` (see _loops.h),
so Adam matches the documented form to a few ulp (and, through weight decay, so do m, v).
"""
import math

import numpy as np
import pytest

import fusedadam as fa


def literal_adam(p, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False,
                 amsgrad=False, maximize=False, bias_correction=True, beta1_decay=1.0):
    p = [float(x) for x in p]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    v_max = [0.0] * len(p)
    for t, grad in enumerate(grads, start=1):
        lr_t = lr(t) if callable(lr) else lr
        b1_t = beta1 * beta1_decay ** (t - 1)
        bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if bias_correction else (1, 1)
        for i in range(len(p)):
            g = float(grad[i])
            g = -g if maximize else g
            if decoupled:
                p[i] = p[i] * (1 - lr_t * weight_decay)
            elif weight_decay != 0:
                g = g + weight_decay * p[i]
            m[i] = b1_t * m[i] + (1 - b1_t) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            v_hat = v[i]
            if amsgrad:
                v_max[i] = max(v_max[i], v[i])
                v_hat = v_max[i]
            p[i] = p[i] - (lr_t / bc1) * m[i] / (math.sqrt(v_hat) / math.sqrt(bc2) + eps)
    return np.array(p), np.array(m), np.array(v)


def literal_adamax(p, grads, lr, beta1, beta2, eps, weight_decay=0.0, maximize=False,
                   bias_correction=True, beta1_decay=1.0):
    p = [float(x) for x in p]
    m = [0.0] * len(p)
    u = [0.0] * len(p)
    for t, grad in enumerate(grads, start=1):
        lr_t = lr(t) if callable(lr) else lr
        b1_t = beta1 * beta1_decay ** (t - 1)
        bc1 = 1 - beta1**t if bias_correction else 1
        for i in range(len(p)):
            g = float(grad[i])
            g = -g if maximize else g
            if weight_decay != 0:
                g = g + weight_decay * p[i]
            m[i] = b1_t * m[i] + (1 - b1_t) * g
            u[i] = max(beta2 * u[i], abs(g) + eps)
            p[i] = p[i] - (lr_t / bc1) * m[i] / u[i]
    return np.array(p), np.array(m), np.array(u)


ADAM_CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled": True},
    {"amsgrad": True},
    {"amsgrad": True, "maximize": True, "weight_decay": 0.02},
    {"bias_correction": False, "beta1_decay": 0.95},
    {"lr": lambda t: 0.05 / math.sqrt(t)},
]


@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_reference_adam_matches_literal_formulas(case):
    options = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, **ADAM_CASES[case]}
    rng = np.random.default_rng(case)
    p0 = rng.standard_normal(37)
    grads = [rng.standard_normal(37) for _ in range(40)]
    expected_p, expected_m, expected_v = literal_adam(p0, grads, **options)

    p, m, v, v_max = p0.copy(), np.zeros(37), np.zeros(37), np.zeros(37)
    decoupled = options.pop("decoupled", False)
    amsgrad = options.pop("amsgrad", False)
    for t, g in enumerate(grads, start=1):
        fa.functional.adam([p], [g], [m], [v], [v_max] if amsgrad else None, step=t,
                           decoupled_weight_decay=decoupled, backend="numpy", **options)
    # Through weight decay, p's last-ulp differences reach m and v too.
    for got, want in ((p, expected_p), (m, expected_m), (v, expected_v)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "maximize": True},
                                     {"bias_correction": False, "beta1_decay": 0.9}])
def test_reference_adamax_matches_literal_formulas(options):
    options = {"lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, **options}
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(29)
    grads = [rng.standard_normal(29) for _ in range(40)]
    expected = literal_adamax(p0, grads, **options)
    p, m, u = p0.copy(), np.zeros(29), np.zeros(29)
    for t, g in enumerate(grads, start=1):
        fa.functional.adamax([p], [g], [m], [u], step=t, backend="numpy", **options)
    for got, want in zip((p, m, u), expected):
        np.testing.assert_array_equal(got, want)


def test_float32_follows_the_formulas_closely():
    # In float32 every operation rounds to float32, so only closeness can be asked of it.
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(30)]
    expected, _, _ = literal_adam(p0, grads, 0.01, 0.9, 0.999, 1e-8)
    p = p0.astype(np.float32)
    opt = fa.Adam(p, lr=0.01, backend="numpy")
    for g in grads:
        opt.step(g.astype(np.float32))
    np.testing.assert_allclose(p, expected, rtol=0, atol=2e-5)
