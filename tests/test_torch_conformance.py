"""fusedadam.torch against torch's own optimizer test database.

torch ships, in its wheel, the inputs its optimizer tests run
(``torch.testing._internal.common_optimizers.optim_db``: per optimizer, ``optim_inputs_func``
and ``optim_error_inputs_func``). Every input of the Adam, AdamW, Adamax, NAdam and RAdam
entries (with torch's own ``foreach``/``fused``/``differentiable`` variants) runs here against
``fusedadam.torch`` and the ``torch.optim`` class of the same name (``foreach=False``) on CPU:

- the same trajectories to rounding over 25 steps, float32 and float64, one and two groups;
- the same exception type (and torch's message pattern) for every error input;
- the same state_dict layout, the same hook order, and ``load_state_dict`` across the two in
  both directions.

Where fusedadam deliberately differs (``docs/torch_differences.md``), the test asserts the
documented behaviour instead, so a change on either side fails here. Skipped without torch or
without torch's test helpers (they import ``expecttest``); CI sets
``FUSEDADAM_REQUIRE_TORCH_CONFORMANCE=1``, which turns the skip into a failure.
"""

import copy
import os
import re
import warnings

import pytest

if os.environ.get("FUSEDADAM_REQUIRE_TORCH_CONFORMANCE"):
    import torch
    import torch.testing._internal.common_optimizers as common_optimizers
else:
    torch = pytest.importorskip("torch")
    common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

import torch.optim.optimizer as _optimizer_module  # noqa: E402

import fusedadam.torch as ft  # noqa: E402

NAMES = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam")
INFOS = {
    info.optim_cls.__name__: info
    for info in common_optimizers.optim_db
    if info.optim_cls.__name__ in NAMES and info.optim_cls.__module__.startswith("torch.optim")
}
# torch's implementation selectors: the reference is always torch's single-tensor loop.
CLIQUEY = ("foreach", "fused", "differentiable")
STEPS = 25


def _inputs(name):
    return common_optimizers._get_optim_inputs_including_global_cliquey_kwargs(
        "cpu", None, INFOS[name]
    )


def _extra_inputs(name):
    """CPU inputs torch's database leaves out: its ``foreach`` variant (torch only adds it
    where it has foreach kernels) and the tensor lr/betas of its CUDA configs, without
    ``capturable`` (which torch supports only on accelerators)."""
    Input = common_optimizers.OptimizerInput
    out = [
        Input(params=None, kwargs={**inp.kwargs, "foreach": True}, desc=f"{inp.desc} & foreach")
        for inp in INFOS[name].optim_inputs_func("cpu")
    ]
    out.append(Input(params=None, kwargs={"lr": torch.tensor(0.002)}, desc="Tensor lr"))
    if name in ("Adam", "AdamW"):
        betas = (torch.tensor(0.9), torch.tensor(0.99))
        out.append(
            Input(
                params=None,
                kwargs={"lr": torch.tensor(0.001), "betas": betas, "amsgrad": True},
                desc="Tensor lr, Tensor betas, amsgrad",
            )
        )
    return out


DB_INPUTS = [(name, k, inp) for name in NAMES for k, inp in enumerate(_inputs(name))]
INPUTS = DB_INPUTS + [
    (name, -1 - k, inp) for name in NAMES for k, inp in enumerate(_extra_inputs(name))
]
ERROR_INPUTS = [
    (name, k, err)
    for name in NAMES
    for k, err in enumerate(INFOS[name].optim_error_inputs_func(device="cpu", dtype=None))
]


def _input_id(case):
    name, _, inp = case
    return f"{name}-{inp.desc}".replace(" ", "_")


def _refused(kwargs):
    """Why fusedadam refuses these options (documented), or None."""
    if kwargs.get("differentiable"):
        return "differentiable"
    return None


# The inputs fusedadam steps (the differentiable ones are refused, asserted once above).
STEPPED = [case for case in INPUTS if not _refused(case[2].kwargs)]


def _reference_kwargs(kwargs):
    out = {k: v for k, v in kwargs.items() if k not in CLIQUEY}
    out["foreach"] = False
    return out


def _model(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=gen, dtype=dtype))
    bias = torch.nn.Parameter(torch.randn(10, generator=gen, dtype=dtype))
    scale = torch.nn.Parameter(torch.randn((), generator=gen, dtype=dtype))
    x = torch.randn(5, generator=gen, dtype=dtype)
    return [weight, bias, scale], x


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _closure(opt, params, x):
    weight, bias, scale = params

    def closure():
        opt.zero_grad()
        loss = ((weight.mv(x) + bias) * scale).pow(2).sum()
        loss.backward()
        return loss

    return closure


def _groups(params, kind):
    if kind == "one":
        return params
    return [{"params": params[:1]}, {"params": params[1:], "lr": 3e-3, "weight_decay": 0.0}]


def _pair(name, kwargs, dtype, kind="one"):
    """(fusedadam optimizer, its params), (torch optimizer, its params), and the input."""
    ours, x = _model(dtype)
    theirs = _clone(ours)
    opt = getattr(ft, name)(_groups(ours, kind), **kwargs)
    ref = getattr(torch.optim, name)(_groups(theirs, kind), **_reference_kwargs(kwargs))
    return (opt, ours), (ref, theirs), x


def _run(opt, params, x, steps):
    closure = _closure(opt, params, x)
    for _ in range(steps):
        opt.step(closure)


def _assert_rounding_close(a, b, scalars32=False):
    # 25 steps of rounding differences (torch's lerp against b1*m + (1-b1)*g), relative to
    # the magnitude of squared gradients in the second moments. ``scalars32``: torch computes
    # a per-step scalar in float32 even for float64 params (NAdam's mu_product, a float32
    # tensor lr), where fusedadam uses float64: then they agree to float32 rounding.
    tol = 2e-5 if b.dtype == torch.float32 or scalars32 else 1e-10
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _assert_same_params(ours, theirs, scalars32=False):
    for a, b in zip(ours, theirs):
        _assert_rounding_close(a.detach(), b.detach(), scalars32)


def _scalars32(name, kwargs):
    return name == "NAdam" or any(
        isinstance(v, torch.Tensor) for v in (kwargs.get("lr"), *kwargs.get("betas", ()))
    )


def _assert_same_layout(ours, theirs, scalars32=False):
    """Same per-param state keys, shapes and dtypes (fusedadam's documented exceptions aside),
    same group entries for every torch key."""
    scalars32 = scalars32 or type(theirs).__name__ == "NAdam"
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert sorted(mine["state"]) == sorted(ref["state"])
    for index, entry in ref["state"].items():
        assert sorted(mine["state"][index]) == sorted(entry), index
        for key, value in entry.items():
            got = mine["state"][index][key]
            assert isinstance(got, torch.Tensor) == isinstance(value, torch.Tensor), key
            assert got.shape == value.shape, key
            if key == "mu_product":
                # Documented: fusedadam keeps NAdam's running product in float64.
                assert got.dtype == torch.float64
            else:
                assert got.dtype == value.dtype, key
            _assert_rounding_close(got.to(value.dtype), value, scalars32)
    assert len(mine["param_groups"]) == len(ref["param_groups"])
    for g, r in zip(mine["param_groups"], ref["param_groups"]):
        assert g["params"] == r["params"]
        for key, value in r.items():
            if key in ("foreach", "fused", "differentiable"):
                continue  # the reference is foreach=False by construction
            assert key in g, key
            assert g[key] == value, key
        extra = set(g) - set(r)
        options = {"num_threads", "nonfinite", "state_dtype", "max_grad_norm", "master", "cautious"}
        assert extra <= options, extra


# --------------------------------------------------------------------- inputs


@pytest.mark.parametrize("kind", ["one", "two"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", INPUTS, ids=_input_id)
def test_optim_db_input_matches_torch(case, dtype, kind):
    name, _, inp = case
    refused = _refused(inp.kwargs)
    if refused:
        with pytest.raises(ValueError, match=refused):
            getattr(ft, name)(_model(dtype)[0], **inp.kwargs)
        return
    (opt, ours), (ref, theirs), x = _pair(name, inp.kwargs, dtype, kind)
    _run(opt, ours, x, STEPS)
    _run(ref, theirs, x, STEPS)
    _assert_same_params(ours, theirs, _scalars32(name, inp.kwargs))
    _assert_same_layout(opt, ref, _scalars32(name, inp.kwargs))


@pytest.mark.parametrize("direction", ["torch_to_fusedadam", "fusedadam_to_torch"])
@pytest.mark.parametrize("case", STEPPED, ids=_input_id)
def test_optim_db_input_state_dict_crosses_over(case, direction):
    name, _, inp = case
    dtype = torch.float64
    (opt, ours), (ref, theirs), x = _pair(name, inp.kwargs, dtype, "two")
    source, source_params = (ref, theirs) if direction == "torch_to_fusedadam" else (opt, ours)
    _run(source, source_params, x, 10)
    saved = copy.deepcopy(source.state_dict())
    start = [p.detach().clone() for p in source_params]
    # Both sides resume from the source's params and state.
    a = _clone(start)
    b = _clone(start)
    resumed = getattr(ft, name)(_groups(a, "two"), **inp.kwargs)
    resumed_ref = getattr(torch.optim, name)(_groups(b, "two"), **_reference_kwargs(inp.kwargs))
    resumed.load_state_dict(copy.deepcopy(saved))
    resumed_ref.load_state_dict(copy.deepcopy(saved))
    _run(resumed, a, x, 15)
    _run(resumed_ref, b, x, 15)
    _assert_same_params(a, b, _scalars32(name, inp.kwargs))
    # The loaded dict was not modified by either load.
    again = source.state_dict()
    for index in saved["state"]:
        for key, value in saved["state"][index].items():
            torch.testing.assert_close(again["state"][index][key], value)


# --------------------------------------------------------------------- error inputs


def _error_id(case):
    name, k, err = case
    return f"{name}-{k}-{err.error_type.__name__}"


def _outcome(cls, err, dtype=torch.float32):
    """What constructing (and, for step errors, stepping) gives: ('raises', type, message),
    ('warns', [categories], [messages]) or ('ok',)."""
    given = err.optimizer_error_input
    params = given.params
    if params is None:
        params = _model(dtype)[0]
    else:
        params = copy.deepcopy(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = cls(params, **copy.deepcopy(given.kwargs))
            if err.error_on == common_optimizers.OptimizerErrorEnum.STEP_ERROR:
                for p in opt.param_groups[0]["params"]:
                    p.grad = torch.ones_like(p)
                opt.step()
        except Exception as error:  # noqa: BLE001 - the type is what is compared
            return ("raises", type(error), str(error))
    if caught:
        return ("warns", [w.category for w in caught], [str(w.message) for w in caught])
    return ("ok",)


@pytest.mark.parametrize("case", ERROR_INPUTS, ids=_error_id)
def test_optim_db_error_input_like_torch(case):
    name, _, err = case
    theirs = _outcome(getattr(torch.optim, name), err)
    ours = _outcome(getattr(ft, name), err)
    assert ours[:2] == theirs[:2], (ours, theirs)
    if ours[0] == "raises":
        assert issubclass(ours[1], err.error_type)
        assert re.search(err.error_regex, ours[2]), ours[2]
    elif ours[0] == "warns":
        assert issubclass(ours[1][0], err.error_type)
        assert any(re.search(err.error_regex, m) for m in ours[2]), ours[2]


# --------------------------------------------------------------------- hooks


def _hooked(opt, calls, tag):
    opt.register_step_pre_hook(lambda o, a, k: calls.append((tag, "step_pre")))
    opt.register_step_post_hook(lambda o, a, k: calls.append((tag, "step_post")))
    opt.register_state_dict_pre_hook(lambda o: calls.append((tag, "state_dict_pre")))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append((tag, "state_dict_post")))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append((tag, "load_pre")))
    opt.register_load_state_dict_post_hook(lambda o: calls.append((tag, "load_post")))
    opt.register_step_pre_hook(lambda o, a, k: calls.append((tag, "step_pre_2")))
    opt.register_step_post_hook(lambda o, a, k: calls.append((tag, "step_post_2")))
    # A second state-dict hook of each kind, prepended: torch runs it first.
    opt.register_state_dict_pre_hook(lambda o: calls.append((tag, "sd_pre_0")), prepend=True)
    opt.register_state_dict_post_hook(lambda o, sd: calls.append((tag, "sd_post_0")), prepend=True)
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: calls.append((tag, "load_pre_0")), prepend=True
    )
    opt.register_load_state_dict_post_hook(
        lambda o: calls.append((tag, "load_post_0")), prepend=True
    )


@pytest.mark.parametrize("name", NAMES)
def test_hooks_run_in_torch_order(name):
    sequences = []
    for make in (getattr(ft, name), getattr(torch.optim, name)):
        params, x = _model(torch.float32)
        opt = make(params, **({"foreach": False} if make.__module__.startswith("torch") else {}))
        calls = []
        _hooked(opt, calls, "own")
        handles = [
            _optimizer_module.register_optimizer_step_pre_hook(
                lambda o, a, k, calls=calls: calls.append(("global", "step_pre"))
            ),
            _optimizer_module.register_optimizer_step_post_hook(
                lambda o, a, k, calls=calls: calls.append(("global", "step_post"))
            ),
        ]
        try:
            closure = _closure(opt, params, x)
            opt.step(closure)
            opt.step(closure)
            opt.load_state_dict(opt.state_dict())
            opt.step(closure)
        finally:
            for handle in handles:
                handle.remove()
        sequences.append(calls)
    assert sequences[0] == sequences[1]


# --------------------------------------------------------------------- torch's test bodies


@pytest.mark.parametrize("case", STEPPED, ids=_input_id)
def test_step_is_noop_when_params_have_no_grad(case):
    name, _, inp = case
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    before = [p.clone() for p in params]
    opt = getattr(ft, name)(params, **inp.kwargs)
    opt.step()
    opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert not any(opt.state.values())


@pytest.mark.parametrize("name", NAMES)
def test_frozen_params_among_trainable_ones_like_torch(name):
    (opt, ours), (ref, theirs), x = _pair(name, {}, torch.float64)
    frozen = torch.randn(3, dtype=torch.float64)
    frozen_ref = frozen.clone()
    opt.add_param_group({"params": [frozen]})
    ref.add_param_group({"params": [frozen_ref]})
    _run(opt, ours, x, 5)
    _run(ref, theirs, x, 5)
    _assert_same_params(ours + [frozen], theirs + [frozen_ref], name == "NAdam")
    _assert_same_layout(opt, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", STEPPED, ids=_input_id)
def test_non_contiguous_params_like_torch(case, dtype):
    name, _, inp = case
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(10, 5, 2, generator=gen, dtype=dtype)[..., 0]
    bias = torch.randn(10, 2, generator=gen, dtype=dtype)[..., 0]
    scale = torch.randn(4, generator=gen, dtype=dtype)[2]
    ours = [t.requires_grad_() for t in (weight, bias, scale)]
    assert not ours[0].is_contiguous() and not ours[1].is_contiguous()
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    x = torch.randn(5, generator=gen, dtype=dtype)
    opt = getattr(ft, name)(ours, **inp.kwargs)
    ref = getattr(torch.optim, name)(theirs, **_reference_kwargs(inp.kwargs))
    _run(opt, ours, x, STEPS)
    _run(ref, theirs, x, STEPS)
    _assert_same_params(ours, theirs, _scalars32(name, inp.kwargs))
    _assert_same_layout(opt, ref, _scalars32(name, inp.kwargs))


@pytest.mark.parametrize("name", NAMES)
def test_step_is_noop_for_zero_grads_with_zero_lr(name):
    params, _ = _model(torch.float32)
    before = [p.detach().clone() for p in params]
    opt = getattr(ft, name)(params, lr=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_like_torch(name):
    (opt, ours), (ref, theirs), x = _pair(name, {"lr": torch.tensor(0.01)}, torch.float64)
    _run(opt, ours, x, 10)
    _run(ref, theirs, x, 10)
    _assert_same_params(ours, theirs, True)
    # An in-place edit of the tensor takes effect, as in torch.
    opt.param_groups[0]["lr"].fill_(0.002)
    ref.param_groups[0]["lr"].fill_(0.002)
    _run(opt, ours, x, 10)
    _run(ref, theirs, x, 10)
    _assert_same_params(ours, theirs, True)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_tensor_betas_like_torch(name, shape):
    betas = (torch.full(shape, 0.8), torch.full(shape, 0.95))
    (opt, ours), (ref, theirs), x = _pair(name, {"betas": betas}, torch.float64)
    assert opt.param_groups[0]["betas"][0].shape == ref.param_groups[0]["betas"][0].shape
    _run(opt, ours, x, 10)
    _run(ref, theirs, x, 10)
    _assert_same_params(ours, theirs, True)


@pytest.mark.parametrize("name", NAMES)
def test_can_load_older_state_dict_with_python_number_steps(name):
    (opt, ours), (ref, theirs), x = _pair(name, {}, torch.float64)
    _run(ref, theirs, x, 7)
    saved = ref.state_dict()
    for entry in saved["state"].values():
        entry["step"] = entry["step"].item()  # a float, as torch's older checkpoints hold
    opt.load_state_dict(copy.deepcopy(saved))
    ref.load_state_dict(copy.deepcopy(saved))
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    _run(opt, ours, x, 5)
    _run(ref, theirs, x, 5)
    _assert_same_params(ours, theirs, name == "NAdam")


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_deterministic_and_unmodified_by_loading(name):
    (opt, ours), _, x = _pair(name, {}, torch.float32, "two")
    _run(opt, ours, x, 5)
    twin_params = _clone(ours)
    twin = getattr(ft, name)(_groups(twin_params, "two"))
    saved = copy.deepcopy(opt.state_dict())
    given = copy.deepcopy(saved)
    twin.load_state_dict(given)
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(given["state"][index][key], value)
    mine, its = opt.state_dict(), twin.state_dict()
    assert mine["param_groups"] == its["param_groups"]
    for index, entry in mine["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(its["state"][index][key], value)


@pytest.mark.parametrize("name", NAMES)
def test_named_params_state_dicts_like_torch(name):
    (opt, _), (ref, _), _ = _pair(name, {}, torch.float32)
    params, _ = _model(torch.float32)
    named = [(f"p{k}", p) for k, p in enumerate(params)]
    ours = getattr(ft, name)(named)
    theirs = getattr(torch.optim, name)(_clone(params), foreach=False)
    named_ref = getattr(torch.optim, name)(
        [(f"p{k}", p) for k, p in enumerate(_clone(params))], foreach=False
    )
    assert ours.state_dict()["param_groups"][0]["param_names"] == ["p0", "p1", "p2"]
    assert (
        ours.state_dict()["param_groups"][0]["param_names"]
        == named_ref.state_dict()["param_groups"][0]["param_names"]
    )
    ours.load_state_dict(theirs.state_dict())  # unnamed into named: torch allows it
    named_ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_copies_all_public_attrs(name):
    (opt, ours), _, x = _pair(name, {}, torch.float32)
    _run(opt, ours, x, 2)
    public = {k for k in opt.__dict__ if not k.startswith("_")}
    assert public == {k for k in copy.deepcopy(opt).__dict__ if not k.startswith("_")}


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_can_be_printed(name):
    (opt, _), (ref, _), _ = _pair(name, {}, torch.float32)
    text = repr(opt)
    assert text.startswith(f"{name} (") and "Parameter Group 0" in text


@pytest.mark.parametrize("name", NAMES)
def test_grads_are_never_written_into(name):
    (opt, ours), _, x = _pair(name, {"weight_decay": 0.1, "maximize": True}, torch.float32)
    closure = _closure(opt, ours, x)
    for _ in range(3):
        closure()
        grads = [p.grad.clone() for p in ours]
        opt.step()
        for p, g in zip(ours, grads):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_goes_the_same_way(name):
    (opt, ours), (ref, theirs), x = _pair(name, {"lr": 0.01}, torch.float64, "two")
    schedules = [torch.optim.lr_scheduler.StepLR(o, gamma=0.5, step_size=3) for o in (opt, ref)]
    for _ in range(12):
        for o, params, schedule in ((opt, ours, schedules[0]), (ref, theirs, schedules[1])):
            o.step(_closure(o, params, x))
            schedule.step()
    _assert_same_params(ours, theirs, name == "NAdam")
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]


@pytest.mark.parametrize("name", NAMES)
def test_weights_only_save_and_load(name, tmp_path):
    (opt, ours), _, x = _pair(name, {}, torch.float32)
    _run(opt, ours, x, 3)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    twin_params = _clone(ours)
    twin = getattr(ft, name)(twin_params)
    twin.load_state_dict(loaded)
    _run(opt, ours, x, 3)
    _run(twin, twin_params, x, 3)
    for a, b in zip(ours, twin_params):
        assert torch.equal(a, b)
