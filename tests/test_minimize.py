"""fusedadam.minimize: convergence, stopping rules, shapes, dtypes, bad arguments."""

import numpy as np
import pytest

import fusedadam as fa
from fusedadam.minimize import METHODS


def bowl(x):
    return float(np.sum(x * x)), 2 * x


def rosen(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


@pytest.mark.parametrize("method", ["adam", "adamw", "amsgrad", "adamax", "sparse"])
def test_bowl_converges_with_every_method(method):
    options = {"lr": 0.05}
    if method == "adamw":
        options["weight_decay"] = 0.0
    res = fa.minimize(
        bowl,
        np.array([1.0, -0.5, 0.25]),
        jac=True,
        method=method,
        options=options,
        maxiter=5000,
        tol=1e-5,
    )
    assert res.success and res.status == 0, res
    assert res.fun < 1e-9
    assert res.nfev == res.njev == res.nit + 1


@pytest.mark.parametrize("method", METHODS)
def test_every_method_descends(method):
    """Every optimizer class is a method (the registry's names): each brings the bowl from 0.3
    to below 1e-4 of that with a decaying lr (sign-based Lion needs the decay to settle)."""
    x0 = np.array([1.0, -0.5, 0.25])
    options = {"lr": fa.schedules.CosineDecay(0.05, 3000)}
    if method not in ("sparse",):
        options["weight_decay"] = 0.0
    res = fa.minimize(bowl, x0, jac=True, method=method, options=options, maxiter=3000)
    assert res.nit == 3000
    assert res.fun < 1e-4 * bowl(x0)[0]


@pytest.mark.parametrize("method", ["adamwschedulefree", "radamschedulefree"])
def test_schedule_free_methods_return_the_average(method):
    """The iterations step y; the result is the optimizer's x after eval(), its f and g."""
    x0 = np.array([1.0, -0.5, 0.25])
    res = fa.minimize(bowl, x0, jac=True, method=method, options={"lr": 0.05}, maxiter=50)
    cls = {"adamwschedulefree": fa.AdamWScheduleFree, "radamschedulefree": fa.RAdamScheduleFree}
    x = x0.copy()
    opt = cls[method]([x], lr=0.05)
    for _ in range(50):
        opt.step([bowl(x)[1]])
    opt.eval()
    np.testing.assert_array_equal(res.x, x)
    assert res.fun == bowl(x)[0] and res.nfev == 52 and res.nit == 50


def test_rosenbrock_to_1e_minus_6():
    res = fa.minimize(
        rosen, np.array([-1.2, 1.0]), jac=True, options={"lr": 0.02}, maxiter=20000, tol=1e-6
    )
    assert res.success, res
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-5)
    assert res.fun < 1e-10
    assert np.linalg.norm(res.jac) <= 1e-6


def test_maxiter_stops_and_counts():
    res = fa.minimize(bowl, np.ones(2), jac=True, maxiter=7, return_history=True)
    assert res.nit == 7 and res.status == 1 and res.success  # no tol: maxiter was asked
    assert len(res.x_history) == len(res.fun_history) == 8
    np.testing.assert_array_equal(res.x_history[0], np.ones(2))
    np.testing.assert_array_equal(res.x_history[-1], res.x)
    assert res.fun_history[-1] == res.fun
    res = fa.minimize(bowl, np.ones(2), jac=True, maxiter=7, tol=1e-12)
    assert res.status == 1 and not res.success
    res = fa.minimize(bowl, np.ones(2), jac=True, maxiter=0)
    assert res.nit == 0 and np.array_equal(res.x, np.ones(2)) and res.fun == 2.0


def test_tol_stops_at_start_point():
    res = fa.minimize(bowl, np.zeros(3), jac=True, tol=0.0)
    assert res.nit == 0 and res.status == 0 and res.success


def test_callback_stops_and_sees_each_point():
    seen = []

    def callback(xk):
        seen.append(xk)
        return len(seen) == 3

    res = fa.minimize(bowl, np.ones(2), jac=True, callback=callback, maxiter=100)
    assert res.nit == 3 and res.status == 2 and res.message == "stopped by callback"
    np.testing.assert_array_equal(seen[-1], res.x)
    assert seen[0] is not seen[1]


def test_result_is_dict_and_attributes():
    res = fa.minimize(bowl, np.ones(2), jac=True, maxiter=3)
    assert isinstance(res, dict) and res["nit"] == res.nit == 3
    assert set(res) >= {"x", "fun", "jac", "nit", "nfev", "success", "message"}
    assert "message" in repr(res)
    with pytest.raises(AttributeError):
        res.nope


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 1, 2)])
@pytest.mark.parametrize("method", ["adam", "sparse"])
def test_shapes_and_dtypes(dtype, shape, method):
    x0 = np.full(shape, 0.5, dtype=dtype)
    res = fa.minimize(bowl, x0, jac=True, method=method, options={"lr": 0.05}, maxiter=300)
    assert res.x.shape == shape and res.x.dtype == dtype
    assert res.jac.shape == shape and res.jac.dtype == dtype
    assert res.fun < 1e-3
    np.testing.assert_array_equal(x0, 0.5)  # x0 not modified


def test_int_x0_becomes_float64():
    res = fa.minimize(bowl, [3, 4], jac=True, maxiter=2)
    assert res.x.dtype == np.float64


def test_jac_callable_and_finite_differences_agree():
    f = lambda x, a: float(np.sum(a * x**2))  # noqa: E731
    g = lambda x, a: 2 * a * x  # noqa: E731
    a = np.array([1.0, 3.0])
    exact = fa.minimize(f, np.ones(2), jac=g, args=(a,), options={"lr": 0.1}, maxiter=50)
    fd = fa.minimize(f, np.ones(2), options={"lr": 0.1}, args=(a,), maxiter=50)
    named = fa.minimize(f, np.ones(2), jac="2-point", options={"lr": 0.1}, args=(a,), maxiter=50)
    np.testing.assert_array_equal(named.x, fd.x)
    assert exact.njev == 51 and fd.njev == 0
    assert fd.nfev == 51 * 3  # f(x) plus one forward difference per coordinate
    np.testing.assert_allclose(fd.x, exact.x, atol=1e-5)


def test_sparse_method_skips_rows_with_zero_gradient():
    def fun(x):
        g = 2 * x
        g[1] = 0.0
        return float(np.sum(x * x)), g

    res = fa.minimize(fun, np.ones((3, 2)), jac=True, method="sparse", maxiter=10)
    np.testing.assert_array_equal(res.x[1], 1.0)
    assert np.all(res.x[0] < 1.0)


def test_options_reach_the_optimizer():
    slow = fa.minimize(bowl, np.ones(1), jac=True, options={"lr": 1e-4}, maxiter=10)
    fast = fa.minimize(bowl, np.ones(1), jac=True, options={"lr": 1e-1}, maxiter=10)
    assert fast.fun < slow.fun
    # Adam's first step moves by lr (up to eps): the options were used.
    one = fa.minimize(bowl, np.ones(1), jac=True, options={"lr": 0.25}, maxiter=1)
    np.testing.assert_allclose(one.x, 0.75, rtol=1e-6)


def test_nonfinite_objective_stops():
    res = fa.minimize(lambda x: (float("nan"), x), np.ones(2), jac=True)
    assert res.status == 3 and not res.success and res.nit == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="lbfgs"), ValueError, "Unknown method"),
        (dict(options={"learning_rate": 1}), TypeError, "options for method='adam'"),
        (dict(options={"lr": -1.0}), ValueError, "Invalid learning rate"),
        (dict(maxiter=-1), ValueError, "maxiter"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(tol="small"), TypeError, "tol"),
        (dict(jac="3-point"), ValueError, "jac must be"),
        (dict(jac=np.ones(2)), ValueError, "jac must be"),
        (dict(callback=3), TypeError, "callback"),
        (dict(method="amsgrad", options={"amsgrad": False}), ValueError, "amsgrad"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault("jac", True)
    with pytest.raises(error, match=match):
        fa.minimize(bowl, np.ones(2), **kwargs)


def test_bad_function_outputs():
    with pytest.raises(TypeError, match="must return a pair"):
        fa.minimize(lambda x: 1.0, np.ones(2), jac=True)
    with pytest.raises(ValueError, match="gradient has shape"):
        fa.minimize(lambda x: (1.0, np.ones(3)), np.ones(2), jac=True)
    with pytest.raises(ValueError, match="must return a scalar"):
        fa.minimize(lambda x: (x, x), np.ones(2), jac=True)
    with pytest.raises(TypeError, match="fun must be callable"):
        fa.minimize(3, np.ones(2))
    with pytest.raises(TypeError, match="x0 must be real"):
        fa.minimize(bowl, np.ones(2, dtype=complex), jac=True)


def test_scipy_solver_options_maxiter_and_disp(capsys):
    res = fa.minimize(bowl, np.ones(2), jac=True, options={"lr": 0.1, "maxiter": 20, "disp": True})
    assert res.nit == 20 and res.status == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["iter", "f(x)", "|g|"]
    assert [int(line.split()[0]) for line in lines[1:-5]] == list(range(0, 21, 2))
    assert "Optimization terminated: maximum number of iterations reached." in out
    assert "Iterations: 20" in out
    quiet = fa.minimize(bowl, np.ones(2), jac=True, options={"lr": 0.1, "maxiter": 20})
    np.testing.assert_array_equal(quiet.x, res.x)
    assert capsys.readouterr().out == ""


def test_maxiter_given_twice_must_agree():
    res = fa.minimize(bowl, np.ones(2), jac=True, maxiter=4, options={"maxiter": 4})
    assert res.nit == 4
    with pytest.raises(ValueError, match="disagree"):
        fa.minimize(bowl, np.ones(2), jac=True, maxiter=4, options={"maxiter": 5})
    with pytest.raises(TypeError, match="disp"):
        fa.minimize(bowl, np.ones(2), jac=True, options={"disp": "yes"})


def test_a_schedule_as_lr():
    from fusedadam import schedules

    lr = schedules.warmup_cosine_decay(0.0, 0.1, warmup_steps=10, decay_steps=400)
    res = fa.minimize(bowl, np.ones(2), jac=True, options={"lr": lr}, maxiter=400)
    assert float(np.linalg.norm(res.x)) < 1e-2
