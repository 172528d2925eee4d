"""fusedadam.functional: every algorithm, one step over explicit arrays through the engine,
bit for bit the class's step (both backends), with the class's checks."""

import inspect

import numpy as np
import pytest

import fusedadam as fa
from fusedadam import _algorithms
from conftest import BACKENDS

# Options beyond its defaults each class's function is stepped with (a class not named here
# is stepped with its defaults).
OPTIONS = {
    "Adam": {"weight_decay": 0.1},
    "Adamax": {"maximize": True},
    "RAdam": {"weight_decay": 0.01},
    "Lion": {"lr": lambda t: 1e-3 / t},
    "AdEMAMix": {"t_alpha_beta3": 5.0, "weight_decay": 0.1},
    "Adan": {"weight_decay": 0.05},
    "ADOPT": {"weight_decay": 0.1},
    "AdamAtan2": {"weight_decay": 0.1},
    "AdamWScheduleFree": {"weight_decay": 0.01, "warmup_steps": 3},
    "RAdamScheduleFree": {"silent_sgd_phase": False, "weight_decay": 0.01},
    "Lamb": {"trust_clip": True},
    "StableAdamW": {"decouple_lr": True, "max_lr": 2e-3},
}


def _function(name):
    """The function of a registry class and the state it takes, in its argument order (the
    arrays, then the per-param scalar state)."""
    algorithm = _algorithms.ALGORITHMS[_algorithms.DEFAULTS[name][0]]
    states = algorithm.state_names + tuple(state for state, _ in algorithm.scalar_state)
    return getattr(fa.functional, _algorithms.CLASSES[name].function), states


# class name -> (functional, state names in the function's argument order, options)
FUNCTIONS = {name: (*_function(name), OPTIONS.get(name, {})) for name in _algorithms.DEFAULTS}

# State a function's caller creates otherwise than at zero: per-param scalars, and
# Schedule-Free's z (a copy of the param).
SCALAR_INITIAL = {"mu_product": 1.0, "lr_max": -1.0, "weight_sum": 0.0}


def test_every_algorithm_has_a_function():
    """Each class of the registry has its public function, whose arrays are named after
    its state (``exp_avgs``, ...), torch's functional form."""
    assert set(OPTIONS) <= set(_algorithms.DEFAULTS)
    for name, (function, states, _) in FUNCTIONS.items():
        assert function.__name__ in fa.functional.__all__, name
        positional = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        algorithm = _algorithms.ALGORITHMS[_algorithms.DEFAULTS[name][0]]
        optional = [f"{state}s" for state, _ in algorithm.optional_state]
        assert positional == ["params", "grads", *(f"{n}s" for n in states), *optional], name


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_functions_beta_defaults_are_the_registrys(name):
    """The functions spell ``betas`` as ``beta1, beta2[, beta3]`` keywords (torch's
    functional form); their defaults are the registry's, not a second copy that drifts."""
    function = FUNCTIONS[name][0]
    parameters = inspect.signature(function).parameters
    betas = _algorithms.DEFAULTS[name][1].get("betas", ())  # a class may have none
    for i, beta in enumerate(betas):
        assert parameters[f"beta{i + 1}"].default == beta, (name, i)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_function_is_the_class_step(name, dtype, backend):
    function, state_names, options = FUNCTIONS[name]
    rng = np.random.default_rng(3)
    shapes = [(7,), (3, 5), (1,), (0,)]
    p_class = [rng.standard_normal(s).astype(dtype) for s in shapes]
    p_func = [p.copy() for p in p_class]
    opt = getattr(fa, name)(p_class, backend=backend, **options)
    states = {n: [np.zeros_like(p) for p in p_func] for n in state_names}
    for n in set(state_names) & set(SCALAR_INITIAL):
        states[n] = [np.full((), SCALAR_INITIAL[n]) for _ in p_func]
    if "z" in state_names:
        states["z"] = [p.copy() for p in p_func]
    betas = _algorithms.DEFAULTS[name][1].get("betas", ())  # a class may have none
    beta_keywords = {f"beta{i + 1}": beta for i, beta in enumerate(betas)}
    for t in range(1, 8):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.step(grads)
        took = function(
            p_func, grads, *(states[n] for n in state_names), step=t, backend=backend,
            **beta_keywords, **options,
        )  # fmt: skip
        assert took is True
    for k, (a, b) in enumerate(zip(p_class, p_func)):
        np.testing.assert_array_equal(a, b)
        for n in state_names:
            np.testing.assert_array_equal(opt.state[p_class[k]][n], states[n][k])


def test_function_skips_and_errors_like_the_class():
    p, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    bad = np.array([1.0, np.nan, 0.0, 0.0])
    before = [a.copy() for a in (p, m, v)]
    assert not fa.functional.adam([p], [bad], [m], [v], step=1, nonfinite="skip")
    with pytest.raises(FloatingPointError, match=r"grads\[0\] has 1 non-finite"):
        fa.functional.adam([p], [bad], [m], [v], step=1)
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a, b)


def test_function_checks_first():
    p, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(TypeError, match="no hyperparameter 'momentum_decay'"):
        fa.functional.adam([p], [np.ones(4)], [m], [v], step=1, momentum_decay=0.1)
    with pytest.raises(ValueError, match="overlap|alias|share"):
        fa.functional.adam([p], [np.ones(4)], [m], [m], step=1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        fa.functional.adam([p], [np.ones(4)], [m], [v], step=1, lr=-1.0)
    with pytest.raises(TypeError, match="mu_products\\[0\\]"):
        fa.functional.nadam([p], [np.ones(4)], [m], [v], [1.0], step=1)
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a, b)
