"""Checks shared by the tests of the element-wise algorithms that follow a reference package
(test_algo_adan.py, test_algo_ademamix.py: closed-loop parity, compiled == reference under
hypothesis, 8-bit state dicts, refused groups; test_algo_adam_atan2.py, test_algo_adopt.py:
per-step parity, compiled == reference byte for byte, state dicts, refused hyperparameters).
Each test keeps its own parametrization and strategies; these hold the bodies."""

import copy

import numpy as np
import pytest

from fusedadam import _algorithms, reference
from conftest import BACKENDS, assert_unchanged, snapshot

# ---------------------------------------------------------------- Adan, AdEMAMix

CLOSED_LOOP_SHAPES = [(3, 7), (11,), (1,)]


def closed_loop_problem(seed=0, steps=100):
    """Start params and the noise of every step."""
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s) for s in CLOSED_LOOP_SHAPES]
    noise = [[rng.standard_normal(s) * 0.3 for s in CLOSED_LOOP_SHAPES] for _ in range(steps)]
    return p0, noise


def closed_loop_grad(p, n):
    """A closed-loop gradient (of a quadratic, plus noise): a drift between two
    implementations would feed back into their later gradients."""
    return 0.5 * p + n


def run_closed_loop(cls, options, p0, noise, state_names, backend="compiled"):
    params = [p.copy() for p in p0]
    opt = cls(params, backend=backend, **options)
    for step_noise in noise:
        opt.step([closed_loop_grad(p, n) for p, n in zip(params, step_noise)])
    return params, [{k: opt.state[p][k] for k in state_names} for p in params]


def run_package_closed_loop(make_package, p0, noise, state_names, grad_sign=1.0):
    """The same loop through a package's torch optimizer, ``make_package(params)``; the
    gradient times ``grad_sign`` (-1 where the package has no maximize)."""
    torch = pytest.importorskip("torch")

    params = [torch.tensor(p, dtype=torch.float64) for p in p0]
    opt = make_package(params)
    for step_noise in noise:
        for p, n in zip(params, step_noise):
            p.grad = grad_sign * closed_loop_grad(p, torch.from_numpy(n))
        opt.step()
    return [p.numpy() for p in params], [
        {k: opt.state[p][k].numpy() for k in state_names} for p in params
    ]


def matches_package_over_100_float64_steps(
    cls, options, backend, make_package, state_names, grad_sign=1.0
):
    """100 closed-loop float64 steps of ``cls`` and of the package: params to rtol 1e-10,
    every state to rtol 1e-10 (atol 1e-12 of its largest value)."""
    p0, noise = closed_loop_problem()
    ours = run_closed_loop(cls, options, p0, noise, state_names, backend)
    theirs = run_package_closed_loop(make_package, p0, noise, state_names, grad_sign)
    moved = max(np.max(np.abs(a - b)) for a, b in zip(ours[0], p0))
    assert moved > 1e-2  # the 100 steps did move the params
    for p, q in zip(ours[0], theirs[0]):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-300)
    for s, r in zip(ours[1], theirs[1]):
        for k in state_names:
            np.testing.assert_allclose(s[k], r[k], rtol=1e-10, atol=1e-12 * np.max(np.abs(r[k])))


def scalar_fields_agree(algorithm, group, t, lr, expected_kind=None):
    """The compiled scalar rule and the Python one give the same loop kind (``expected_kind``
    when given) and every scalar field bit for bit."""
    from fusedadam import _kernels

    hyper = _algorithms.hyper_dict(_algorithms.ALGORITHMS[algorithm], group)
    kind_c, scalars_c, _ = _kernels.step_scalars(hyper, t, lr)
    kind_p, scalars_p, _ = reference.step_scalars(hyper, t, lr)
    if expected_kind is None:
        assert kind_c == kind_p
    else:
        assert kind_c == kind_p == expected_kind
    for field in _kernels.SCALAR_FIELDS:
        assert np.float64(scalars_c[field]).tobytes() == np.float64(scalars_p[field]).tobytes()


def compiled_steps_are_numpy_steps(
    cls, state_names, dtype, size, steps, state_dtype, seed, **options
):
    """``steps`` steps of one param of ``size`` elements: the compiled backend's param and
    state are the NumPy backend's, bit for bit."""
    if dtype == np.float64 and state_dtype == "bfloat16":
        state_dtype = None  # float64 params keep float64 state
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    out = []
    for backend in ("compiled", "numpy"):
        p = p0.copy()
        opt = cls(p, backend=backend, state_dtype=state_dtype, **options)
        for g in grads:
            opt.step(g)
        out.append((p, snapshot(opt)[1]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for k in state_names:
        np.testing.assert_array_equal(out[0][1][0][k], out[1][1][0][k])


def state_dict_round_trip_resumes_exactly(cls, options, state_dtype, backend, eight_bit_state):
    """Ten float32 steps straight, or five, a save, a load into a new optimizer and five:
    the same params and state dict. With 8-bit state, ``eight_bit_state`` is saved as
    uint8."""
    rng = np.random.default_rng(7)
    shapes = [(4096 + 33,), (70, 3)]  # the first has 8-bit state, the second float32
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
    options = dict(options, state_dtype=state_dtype, backend=backend)
    straight = [p.copy() for p in p0]
    opt = cls(straight, **options)
    for g in grads:
        opt.step(g)
    resumed = [p.copy() for p in p0]
    first = cls(resumed, **options)
    for g in grads[:5]:
        first.step(g)
    saved = first.state_dict()
    if state_dtype == "8bit":
        assert saved["state"][0][eight_bit_state].dtype == np.uint8
    second = cls(resumed, **options)
    second.load_state_dict(saved)
    for g in grads[5:]:
        second.step(g)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    for k, v in opt.state_dict()["state"][0].items():
        np.testing.assert_array_equal(v, second.state_dict()["state"][0][k])


def torch_state_dict_round_trip(torch_cls, options, state_names):
    """The torch front end saved and reloaded after 4 of 8 steps ends where it would have
    without; its state holds ``step`` and ``state_names``."""
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(8)
    grads = [torch.from_numpy(rng.standard_normal(12)) for _ in range(8)]
    a = torch.nn.Parameter(torch.zeros(12, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(12, dtype=torch.float64))
    oa = torch_cls([a], **options)
    ob = torch_cls([b], **options)
    for k, g in enumerate(grads):
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        if k == 3:
            ob2 = torch_cls([b], **options)
            ob2.load_state_dict(ob.state_dict())
            ob = ob2
    assert torch.equal(a, b)
    assert sorted(oa.state[a]) == sorted(("step",) + state_names)


def constructors_refuse(cls, torch_cls, bad, error, message):
    """The NumPy and the torch class refuse ``bad`` at construction, naming it."""
    torch = pytest.importorskip("torch")

    with pytest.raises(error, match=message):
        cls(np.zeros(3), **bad)
    with pytest.raises(error, match=message):
        torch_cls([torch.nn.Parameter(torch.zeros(3))], **bad)


def a_bad_group_value_changes_nothing(cls, options, bad, error, message, backend):
    """After two steps, ``bad`` set on the group: the step raises and changes nothing."""
    p = np.linspace(-1, 1, 10)
    opt = cls(p, backend=backend, **options)
    opt.step(np.cos(p))
    opt.step(np.sin(p))
    before = snapshot(opt)
    opt.param_groups[0].update(bad)
    with pytest.raises(error, match=message):
        opt.step(np.ones(10))
    assert_unchanged(opt, before)


# ---------------------------------------------------------------- Adam-atan2, ADOPT

EVERY_STEP_SHAPES = [(7,), (33, 5), (1,), (0,)]


def parity_every_step(cls, make_ref, options, backend):
    """Run ``cls`` and a torch reference, ``make_ref(tensors)``, side by side for 100 float64
    steps; compare the params and both moments after every step to rtol 1e-10 (no atol)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s) for s in EVERY_STEP_SHAPES]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    ref = make_ref(theirs)
    ours = [a.copy() for a in init]
    opt = cls(ours, backend=backend, **options)
    for t in range(1, 101):
        grads = [rng.standard_normal(s) for s in EVERY_STEP_SHAPES]
        for p, g in zip(theirs, grads):
            p.grad = torch.tensor(g)
        ref.step()
        opt.step(grads)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=0, err_msg=f"t={t}")
            for name in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_allclose(
                    opt.state[a][name], ref.state[b][name].numpy(), rtol=1e-10, atol=0,
                    err_msg=f"{name} t={t}",
                )  # fmt: skip


def compiled_bytes_are_numpy_bytes(cls, options, dtype, size, n_threads, scales):
    """A param of ``size`` elements and one of 3, one step per gradient scale in ``scales``:
    the compiled backend's params and both moments are the NumPy backend's, byte for byte."""
    results = []
    for backend in ("compiled", "numpy"):
        r = np.random.default_rng(size)
        p = [r.standard_normal(size).astype(dtype), r.standard_normal(3).astype(dtype)]
        opt = cls(p, **options, backend=backend, num_threads=n_threads)
        for scale in scales:
            opt.step([(r.standard_normal(a.shape) * scale).astype(dtype) for a in p])
        results.append([a.tobytes() for a in p] + [
            opt.state[a][k].tobytes() for a in p for k in ("exp_avg", "exp_avg_sq")
        ])  # fmt: skip
    assert results[0] == results[1]


def scalar_rule_twins_agree(hyper, expected_kind=None):
    """At steps 1, 2, 3, 1000 and 10**9 the compiled scalar rule and the Python one give
    the same loop kind (``expected_kind`` when given) and the same scalars, bit for bit."""
    from fusedadam import _kernels

    for t in (1, 2, 3, 1000, 10**9):
        c = _kernels.step_scalars(hyper, t, 0.01)
        p = reference.step_scalars(hyper, t, 0.01)
        if expected_kind is None:
            assert c[0] == p[0]
        else:
            assert c[0] == p[0] == expected_kind
        assert {k: np.float64(v).tobytes() for k, v in c[1].items()} == {
            k: np.float64(v).tobytes() for k, v in p[1].items()
        }


def low_precision_backends_alike(cls, state_dtype):
    """Four steps of a bfloat16 param on every backend: the same param and state bytes.
    Returns the last backend's param list."""
    import ml_dtypes

    results = []
    for backend in BACKENDS:
        r = np.random.default_rng(5)
        p = [r.standard_normal(5000).astype(ml_dtypes.bfloat16)]
        opt = cls(p, lr=1e-2, state_dtype=state_dtype, backend=backend)
        for _ in range(4):
            opt.step([r.standard_normal(5000).astype(np.float32)])
        st = opt.state[p[0]]
        results.append([p[0].tobytes()] + [st[k].tobytes() for k in sorted(st)
                                           if isinstance(st[k], np.ndarray)])  # fmt: skip
    assert all(r == results[0] for r in results)
    return p


def state_dict_resumes_byte_for_byte(cls, options, backend, save_after):
    """Eight float32 steps straight, or ``save_after``, a deep-copied save and a load into a
    new optimizer and the rest: the same param bytes. Returns the resumed optimizer and its
    params."""
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(s).astype(np.float32) for s in EVERY_STEP_SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in EVERY_STEP_SHAPES]
             for _ in range(8)]  # fmt: skip
    straight = [a.copy() for a in init]
    opt = cls(straight, **options, backend=backend)
    for g in grads:
        opt.step(g)
    first = [a.copy() for a in init]
    opt1 = cls(first, **options, backend=backend)
    for g in grads[:save_after]:
        opt1.step(g)
    saved = copy.deepcopy(opt1.state_dict())
    resumed = [a.copy() for a in first]
    opt2 = cls(resumed, **options, backend=backend)
    opt2.load_state_dict(saved)
    for g in grads[save_after:]:
        opt2.step(g)
    for a, b in zip(straight, resumed):
        assert a.tobytes() == b.tobytes()
    return opt2, resumed


def refused_and_nothing_changes(cls, functional, bad, error, match, warm_up, functional_step):
    """``bad`` is refused at construction; set on the group after steps with the gradients
    ``warm_up`` (each a fill value), the step raises and changes nothing; the functional form
    (at step ``functional_step``) raises before writing anything."""
    with pytest.raises(error, match=match):
        cls([np.zeros(3)], **bad)
    p = [np.ones(4)]
    opt = cls(p, lr=1e-2)
    for fill in warm_up:
        opt.step([np.full(4, fill)])
    before = snapshot(opt)
    opt.param_groups[0].update(bad)
    with pytest.raises(error, match=match):
        opt.step([np.full(4, 0.5)])
    assert_unchanged(opt, before)
    options = dict(bad)
    if "betas" in options:
        options["beta1"], options["beta2"] = options.pop("betas")
    with pytest.raises(error, match=match):
        functional(p, [np.ones(4)], [np.zeros(4)], [np.zeros(4)], step=functional_step, **options)
    assert_unchanged(opt, before)
