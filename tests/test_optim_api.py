"""The optimizer API: params forms, groups, threads, backends, in-place updates."""

import numpy as np
import pytest

import fusedadam as fa
from fusedadam import _algorithms
from conftest import COMPILED, requires_compiled


def test_single_array_updated_in_place():
    p = np.ones(8, np.float32)
    before = p.__array_interface__["data"][0]
    opt = fa.Adam(p, lr=0.1)
    opt.step(np.ones(8, np.float32))
    assert p.__array_interface__["data"][0] == before
    # First Adam step moves every element by lr (m_hat / sqrt(v_hat) = 1 for g = 1).
    np.testing.assert_allclose(p, 0.9, rtol=1e-6)


def test_group_overrides_and_defaults():
    a, b = np.zeros(3), np.zeros(3)
    opt = fa.Adam([{"params": [a]}, {"params": [b], "lr": 0.5, "amsgrad": True}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["amsgrad"] and not opt.param_groups[0]["amsgrad"]
    opt.step([np.ones(3), np.ones(3)])
    np.testing.assert_allclose(a, -0.1)
    np.testing.assert_allclose(b, -0.5)
    assert "max_exp_avg_sq" in opt.state[b] and "max_exp_avg_sq" not in opt.state[a]


def test_add_param_group_later():
    a, b = np.zeros(3), np.zeros(2)
    opt = fa.Adam([a], lr=0.1)
    opt.step([np.ones(3)])
    opt.add_param_group({"params": b, "lr": 0.2})
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_allclose(b, -0.2)
    assert opt.state_dict()["state"][0]["step"] == 2
    assert opt.state_dict()["state"][1]["step"] == 1


def test_amsgrad_switched_on_between_steps():
    p = np.zeros(4)
    opt = fa.Adam(p)
    opt.step(np.ones(4))
    opt.param_groups[0]["amsgrad"] = True
    opt.step(np.ones(4))
    np.testing.assert_array_equal(opt.state[p]["max_exp_avg_sq"], opt.state[p]["exp_avg_sq"])


def test_params_replaced_in_group_list():
    a, b = np.zeros(3), np.zeros(3)
    opt = fa.Adam([a], lr=0.1)
    opt.param_groups[0]["params"] = [b]
    opt.step(np.ones(3))
    np.testing.assert_allclose(b, -0.1)
    assert not a.any()


def test_adamw_decays_the_weights_not_the_gradient():
    p = np.full(3, 2.0)
    fa.AdamW(p, lr=0.1, weight_decay=0.5).step(np.zeros(3))
    # g = 0: Adam part is 0/(0+eps)=0, so only the decay p *= 1 - lr * wd remains.
    np.testing.assert_array_equal(p, 2.0 * (1 - 0.1 * 0.5))
    q = np.full(3, 2.0)
    fa.Adam(q, lr=0.1, weight_decay=0.5).step(np.zeros(3))
    np.testing.assert_allclose(q, 2.0 - 0.1, rtol=1e-8)  # L2: g = 0.5 * 2 = 1; eps shifts 1e-9


def test_maximize_ascends():
    p = np.zeros(3)
    fa.Adam(p, lr=0.1, maximize=True).step(np.ones(3))
    np.testing.assert_allclose(p, 0.1)


def test_zero_weight_decay_keeps_inf_params_out_of_the_gradient():
    # weight_decay=0 must skip the L2 term (0 * inf would be NaN), as torch does.
    p = np.array([np.inf, 1.0])
    opt = fa.Adam(p, lr=0.1)
    opt.step(np.array([1.0, 1.0]))
    assert not np.isnan(opt.state[p]["exp_avg"]).any()


@pytest.mark.parametrize("num_threads", [None, -1, 1, 2, 3])
def test_num_threads_forms(num_threads):
    p = np.zeros(100_000, np.float32)
    fa.Adam(p, num_threads=num_threads).step(np.ones_like(p))
    np.testing.assert_allclose(p, -1e-3, rtol=1e-5)


@requires_compiled
def test_effective_threads_follow_openmp(monkeypatch):
    from fusedadam._threads import effective_num_threads
    from fusedadam import _kernels

    assert effective_num_threads(None) == _kernels.max_threads()
    assert effective_num_threads(-1) == _kernels.num_procs()
    assert effective_num_threads(5) == (5 if _kernels.openmp_enabled() else 1)


@pytest.mark.skipif(not COMPILED, reason="extension not built")
def test_backends_agree_and_numpy_backend_is_selectable():
    a, b = np.linspace(-1, 1, 50), np.linspace(-1, 1, 50)
    fa.Adam(a, backend="compiled").step(np.cos(a))
    fa.Adam(b, backend="numpy").step(np.cos(b))
    np.testing.assert_array_equal(a, b)


def test_repr_free_state_access():
    p = np.zeros(2)
    opt = fa.Adam(p)
    assert p not in opt.state
    opt.step(np.ones(2))
    assert p in opt.state and len(opt.state) == 1 and list(opt.state)[0] is p


def test_functional_step_number_must_be_positive():
    p, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        fa.functional.adam([p], [np.ones(2)], [m], [v], step=0)


def test_functional_state_length_mismatch():
    p = np.zeros(2)
    with pytest.raises(ValueError, match="exp_avg arrays"):
        fa.functional.adam([p], [np.ones(2)], [], [np.zeros(2)], step=1)


def test_main_demo_runs(capsys):
    from fusedadam.__main__ import main

    main(["--size", "1000", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "ms/step" in out
    if COMPILED:
        assert "bit-identical: True" in out


@pytest.mark.parametrize("name", sorted(_algorithms.DEFAULTS))
def test_class_defaults_are_the_registry_defaults(name):
    """One owner of the defaults: each class's signature gives exactly the registry's
    hyperparameters and defaults, and its algorithm is the registry's."""
    algorithm, defaults = _algorithms.DEFAULTS[name]
    opt = getattr(fa, name)(np.zeros(2))
    assert opt.defaults == defaults
    assert opt.algorithm is _algorithms.ALGORITHMS[algorithm]


def test_every_registry_class_has_test_variants_each_constructible():
    """The cross-checks run the registry's variants: a class without one would be untested,
    and a name used twice would silently drop a variant from conftest.VARIANTS."""
    names = [name for entry in _algorithms.CLASSES.values() for name, _ in entry.variants]
    assert len(names) == len(set(names)), "a variant name is used twice"
    for class_name, entry in _algorithms.CLASSES.items():
        assert entry.variants, f"{class_name} has no test variants"
        for _name, options in entry.variants:
            getattr(fa, class_name)(np.zeros(3), **options)  # every option is accepted
