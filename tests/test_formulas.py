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
from conftest import reference_package


def literal_adam(
    p,
    grads,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay=0.0,
    decoupled=False,
    amsgrad=False,
    maximize=False,
    bias_correction=True,
    beta1_decay=1.0,
):
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


def literal_adamax(
    p,
    grads,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay=0.0,
    maximize=False,
    bias_correction=True,
    beta1_decay=1.0,
):
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
        fa.functional.adam(
            [p],
            [g],
            [m],
            [v],
            [v_max] if amsgrad else None,
            step=t,
            decoupled_weight_decay=decoupled,
            backend="numpy",
            **options,
        )
    # Through weight decay, p's last-ulp differences reach m and v too.
    for got, want in ((p, expected_p), (m, expected_m), (v, expected_v)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize(
    "options",
    [{}, {"weight_decay": 0.1, "maximize": True}, {"bias_correction": False, "beta1_decay": 0.9}],
)
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


def literal_adabelief(p, grads, lr, beta1, beta2, eps, eps_root):
    """AdaBelief, Algorithm 2 of Zhuang et al. (2020) with optax's two epsilons."""
    p = [float(x) for x in p]
    m = [0.0] * len(p)
    s = [0.0] * len(p)
    for t, grad in enumerate(grads, start=1):
        for i in range(len(p)):
            g = float(grad[i])
            m[i] = beta1 * m[i] + (1 - beta1) * g
            s[i] = beta2 * s[i] + (1 - beta2) * (g - m[i]) ** 2 + eps_root
            m_hat = m[i] / (1 - beta1**t)
            s_hat = s[i] / (1 - beta2**t)
            p[i] = p[i] - lr * m_hat / (math.sqrt(s_hat) + eps)
    return np.array(p), np.array(m), np.array(s)


def literal_lion(p, grads, lr, beta1, beta2, weight_decay):
    """Lion, Algorithm 2 of Chen et al. (2023) (optax.lion's order)."""
    p = [float(x) for x in p]
    m = [0.0] * len(p)
    for grad in grads:
        for i in range(len(p)):
            g = float(grad[i])
            c = beta1 * m[i] + (1 - beta1) * g
            sign = (c > 0) - (c < 0)
            p[i] = p[i] - lr * (sign + weight_decay * p[i])
            m[i] = beta2 * m[i] + (1 - beta2) * g
    return np.array(p), np.array(m)


@pytest.mark.parametrize(
    "backend", ["numpy", "compiled"] if fa.backend_info()["compiled"] else ["numpy"]
)
@pytest.mark.parametrize(
    "options",
    [
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, eps_root=1e-12),
        dict(lr=3e-3, betas=(0.5, 0.99), eps=1e-16, eps_root=1e-16),
    ],
)
def test_adabelief_matches_the_paper(backend, options):
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal(64)
    grads = [rng.standard_normal(64) for _ in range(40)]
    p = p0.copy()
    opt = fa.AdaBelief(p, backend=backend, **options)
    for g in grads:
        opt.step(g)
    want_p, want_m, want_s = literal_adabelief(
        p0, grads, options["lr"], *options["betas"], options["eps"], options["eps_root"]
    )
    np.testing.assert_allclose(opt.state[p]["exp_avg"], want_m, rtol=1e-13)
    np.testing.assert_allclose(opt.state[p]["exp_avg_var"], want_s, rtol=1e-12)
    np.testing.assert_allclose(p, want_p, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "backend", ["numpy", "compiled"] if fa.backend_info()["compiled"] else ["numpy"]
)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, 0.5])
def test_lion_matches_the_paper(backend, weight_decay):
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(64)
    grads = [rng.standard_normal(64) for _ in range(40)]
    grads[3][:5] = 0.0  # sign(0) = 0 at the first steps: no move
    p = p0.copy()
    opt = fa.Lion(p, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay, backend=backend)
    for g in grads:
        opt.step(g)
    want_p, want_m = literal_lion(p0, grads, 1e-2, 0.9, 0.99, weight_decay)
    np.testing.assert_allclose(opt.state[p]["exp_avg"], want_m, rtol=1e-13)
    np.testing.assert_allclose(p, want_p, rtol=1e-13, atol=1e-15)


def test_optax_parity_where_installed():
    """optax is not a dependency; where it is installed, compare with it directly (CI
    installs it and requires this test to run)."""
    optax = reference_package("optax")
    jnp = reference_package("jax.numpy")
    rng = np.random.default_rng(13)
    p0 = rng.standard_normal(32)
    grads = [rng.standard_normal(32) for _ in range(20)]
    for ours, theirs in ((fa.AdaBelief, optax.adabelief(1e-2)), (fa.Lion, optax.lion(1e-3))):
        p = p0.copy()
        opt = ours(p, lr=1e-2 if ours is fa.AdaBelief else 1e-3)
        q = jnp.asarray(p0)
        state = theirs.init(q)
        for g in grads:
            opt.step(g)
            updates, state = theirs.update(jnp.asarray(g), state, q)
            q = optax.apply_updates(q, updates)
        np.testing.assert_allclose(p, np.asarray(q), rtol=1e-5, atol=1e-6)
