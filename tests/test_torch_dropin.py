"""fusedadam.torch as a drop-in for torch.optim: the cases where it used to differ.

Frozen params, params on the meta device, non-contiguous params, entries of ``opt.state``
fusedadam does not know, any whole-number ``step``, duplicate params, tensor betas and
torch's implementation flags, autograd's version counters, a dtype change of the params
under the optimizer, and clipping over a group whose params are at different steps. Each
test failed before the front end was fixed. Skipped without torch.
"""

import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedadam.torch")


def _mlp(dtype=torch.float32, seed=0, frozen=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)]
    model = torch.nn.Sequential(*layers).to(dtype)
    if frozen:
        model[0].requires_grad_(False)
    return model


def _loss(model, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(5, 6, generator=gen).to(dtype)
    return model(x).float().pow(2).mean()


def _train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()


def _assert_close(a_params, b_params, rtol=1e-5, atol=1e-6):
    for a, b in zip(a_params, b_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ frozen params


def test_frozen_layers_are_accepted_and_skipped_like_torch():
    ours, theirs = _mlp(frozen=True), _mlp(frozen=True)
    frozen = [p.detach().clone() for p in ours[0].parameters()]
    opt = ft.AdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    _train(ours, opt, 10)
    _train(theirs, ref, 10)
    _assert_close(ours.parameters(), theirs.parameters())
    for p, before in zip(ours[0].parameters(), frozen):
        assert torch.equal(p, before)
        assert not opt.state.get(p)
    # Unfrozen later, as in staged fine-tuning: stepped from then on.
    ours[0].requires_grad_(True)
    theirs[0].requires_grad_(True)
    _train(ours, opt, 5, start=10)
    _train(theirs, ref, 5, start=10)
    _assert_close(ours.parameters(), theirs.parameters())
    assert int(opt.state[ours[0].weight]["step"]) == 5


def test_add_param_group_takes_a_frozen_param():
    opt = ft.Adam([torch.zeros(3, requires_grad=True)])
    frozen = torch.zeros(2)
    opt.add_param_group({"params": [frozen]})
    opt.step()
    assert len(opt.param_groups) == 2 and torch.equal(frozen, torch.zeros(2))


# ------------------------------------------------------------------ meta params


def test_meta_params_are_accepted_until_the_step():
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    opt = ft.AdamW(model.parameters())
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        opt.step()


def test_meta_init_then_to_empty_trains_like_torch():
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        models, opts = [], []
        for make in (ft.AdamW, torch.optim.AdamW):
            with torch.device("meta"):
                model = _mlp()
            opt = make(model.parameters(), lr=1e-2)
            model.to_empty(device="cpu")
            with torch.no_grad():
                for p, q in zip(model.parameters(), _mlp(seed=3).parameters()):
                    p.copy_(q)
            models.append(model)
            opts.append(opt)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    for model, opt in zip(models, opts):
        _train(model, opt, 8)
    _assert_close(models[0].parameters(), models[1].parameters())


# ------------------------------------------------------------------ non-contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_contiguous_params_step_like_torch(dtype):
    gen = torch.Generator().manual_seed(2)
    ours = [
        torch.randn(5, 4, generator=gen, dtype=dtype).t().requires_grad_(),  # transposed
        torch.randn(6, 3, generator=gen, dtype=dtype)[::2].requires_grad_(),  # strided rows
        torch.randn(7, generator=gen, dtype=dtype).requires_grad_(),
    ]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    assert not ours[0].is_contiguous() and not ours[1].is_contiguous()
    opt = ft.Adam(ours, lr=1e-2, weight_decay=0.1, amsgrad=True)
    ref = torch.optim.Adam(theirs, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    for t in range(20):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in ours]
        grads[0] = grads[0].t().contiguous().t()  # a non-contiguous grad too
        for ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone(memory_format=torch.preserve_format)
        if t == 10:
            with torch.no_grad():  # an in-place edit between steps is seen
                ours[1].mul_(0.5)
                theirs[1].mul_(0.5)
        opt.step()
        ref.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    _assert_close(ours, theirs, rtol=tol, atol=tol)
    assert opt.state[ours[1]]["exp_avg"].shape == ours[1].shape


def test_non_contiguous_param_unchanged_by_a_step_that_raises():
    p = torch.randn(6, 4)[:, ::2].requires_grad_()
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(6, 2)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.full((6, 2), float("nan"))
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(p.detach(), before)


# ------------------------------------------------------------------ unknown state entries


def test_entries_fusedadam_does_not_know_are_kept_like_torch():
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    opt.state["global_step"] = 7  # a key that is not a param
    opt.state[p]["note"] = "kept"  # an entry of a param's state
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    assert saved["state"]["global_step"] == 7 and saved["state"][0]["note"] == "kept"
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        q = twin.param_groups[0]["params"][0]
        assert twin.state["global_step"] == 7 and twin.state[q]["note"] == "kept"
        q.grad = torch.ones(3)
        twin.step()
    q = torch.ones(3, requires_grad=True)
    fresh = ft.Adam([q])
    fresh.load_state_dict(saved)
    assert fresh.state["global_step"] == 7 and fresh.state[q]["note"] == "kept"
    q.grad = torch.ones(3)
    fresh.step()
    assert int(fresh.state[q]["step"]) == 3
    r = torch.ones(3, requires_grad=True)
    ref = torch.optim.Adam([r])
    ref.load_state_dict(saved)
    assert ref.state["global_step"] == 7


# ------------------------------------------------------------------ step values


@pytest.mark.parametrize(
    "step",
    [
        4,
        4.0,
        np.int32(4),
        torch.tensor(4),
        torch.tensor(4, dtype=torch.int32),
        torch.tensor(4.0),
        torch.tensor(4.0, dtype=torch.float64),
        torch.tensor(4.0, dtype=torch.float16),
        torch.tensor(4.0, dtype=torch.bfloat16),
        torch.tensor([4.0]),
    ],
    ids=repr,
)
def test_any_whole_number_step_loads(step):
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["step"] = step
    opt.load_state_dict(saved)
    p.grad = torch.ones(3)
    opt.step()
    assert int(opt.state[p]["step"]) == 5


@pytest.mark.parametrize("step", [4.5, -1, float("nan"), torch.tensor(4.5)], ids=repr)
def test_a_step_that_is_not_a_whole_number_is_refused(step):
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["step"] = step
    with pytest.raises((TypeError, ValueError), match="step"):
        opt.load_state_dict(saved)
    assert int(opt.state[p]["step"]) == 1


# ------------------------------------------------------------------ duplicates, flags


def test_duplicate_params_warn_like_torch_and_are_stepped_once():
    p = torch.ones(3, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = ft.Adam([p, p], lr=0.1)
    q = torch.ones(3, requires_grad=True)
    single = ft.Adam([q], lr=0.1)
    for _ in range(3):
        p.grad = torch.ones(3)
        q.grad = torch.ones(3)
        opt.step()
        single.step()
    assert torch.equal(p, q) and int(opt.state[p]["step"]) == 3
    assert opt.state_dict()["param_groups"][0]["params"] == [0, 0]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_implementation_flags_are_checked_like_torch(cls):
    p = [torch.zeros(2, requires_grad=True)]
    cases = [
        ({"lr": torch.tensor(1e-3), "foreach": True}, ValueError, "lr as a Tensor"),
        ({"betas": (torch.tensor(0.9), 0.99)}, ValueError, "both floats or both Tensors"),
        ({"betas": (0, 0.99)}, ValueError, "both floats or both Tensors"),
        (
            {"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True},
            ValueError,
            r"betas\[0\] as a Tensor",
        ),
        ({"fused": True, "foreach": True}, RuntimeError, "cannot be `True` together"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            getattr(torch.optim, cls)(p, **kwargs)
        with pytest.raises(error, match=match):
            getattr(ft, cls)(p, **kwargs)
    # Accepted as torch accepts them, and irrelevant: one implementation runs.
    for kwargs in ({"foreach": True}, {"fused": True}, {"foreach": False, "fused": False}):
        getattr(ft, cls)(p, **kwargs).step()


def test_tensor_betas_are_read_at_every_step():
    ours = [torch.ones(4, requires_grad=True)]
    theirs = [torch.ones(4, requires_grad=True)]
    betas = (torch.tensor(0.9), torch.tensor(0.99))
    opt = ft.Adam(ours, lr=0.1, betas=betas)
    ref = torch.optim.Adam(theirs, lr=0.1, betas=copy.deepcopy(betas), foreach=False)
    for t in range(6):
        if t == 3:  # edited in place, as a schedule of betas would
            for o in (opt, ref):
                o.param_groups[0]["betas"][0].fill_(0.5)
        for p in ours + theirs:
            p.grad = torch.full((4,), float(t + 1))
        opt.step()
        ref.step()
    _assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ version counters


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "non_contiguous"])
def test_the_step_bumps_version_counters_like_an_in_place_update(kind):
    if kind == "bfloat16":
        w = torch.randn(4, 3).to(torch.bfloat16).requires_grad_()
    elif kind == "non_contiguous":
        w = torch.randn(3, 4).t().requires_grad_()
    else:
        w = torch.randn(4, 3, requires_grad=True)
    frozen = torch.randn(3, requires_grad=True)  # no grad this step: not written
    opt = ft.Adam([w, frozen], lr=0.1)
    x = torch.randn(2, 4).to(w.dtype).requires_grad_()
    out = (x @ w).sum()  # saves w for the gradient of x
    w.grad = torch.ones_like(w)
    versions = (w._version, frozen._version)
    opt.step()
    assert w._version > versions[0] and frozen._version == versions[1]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_a_discriminator_stepped_between_forward_and_backward_raises_like_torch():
    for make in (torch.optim.Adam, ft.Adam):
        torch.manual_seed(0)
        disc = torch.nn.Linear(3, 1)
        opt = make(disc.parameters(), lr=0.1)
        fake = torch.randn(4, 3, requires_grad=True)
        gen_loss = disc(fake).sum()
        disc(torch.randn(4, 3)).sum().backward()
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            gen_loss.backward()


def test_a_skipped_step_bumps_nothing():
    w = torch.ones(3, requires_grad=True)
    opt = ft.Adam([w], nonfinite="skip")
    w.grad = torch.full((3,), float("inf"))
    before = w._version
    opt.step()
    assert w._version == before and opt.skipped_steps == 1


# ------------------------------------------------------------------ dtype changes


@pytest.mark.parametrize(
    "start, convert",
    [
        (torch.bfloat16, "float"),
        (torch.float16, "float"),
        (torch.bfloat16, "double"),
        (torch.float32, "bfloat16"),
        (torch.float32, "double"),
    ],
)
def test_a_dtype_change_under_the_optimizer_converts_its_state(start, convert):
    model = _mlp(start)
    opt = ft.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, 3)
    getattr(model, convert)()
    _train(model, opt, 3, start=3)
    for p in model.parameters():
        st = opt.state[p]
        low = p.dtype in (torch.bfloat16, torch.float16)
        assert ("master_param" in st) == low
        assert st["exp_avg"].dtype == (torch.float32 if low else p.dtype)
        assert int(st["step"]) == 6
    saved = opt.state_dict()
    opt.load_state_dict(copy.deepcopy(saved))
    twin = _mlp(next(model.parameters()).dtype)
    with torch.no_grad():
        for a, b in zip(twin.parameters(), model.parameters()):
            a.copy_(b)
    fresh = ft.AdamW(twin.parameters(), lr=1e-2)
    fresh.load_state_dict(copy.deepcopy(saved))
    _train(model, opt, 2, start=6)
    _train(twin, fresh, 2, start=6)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_a_dtype_change_matches_torch_after_the_conversion():
    # A float32 model turned float64: torch keeps its float32 moments (casts them in its
    # step); fusedadam casts them once. Same trajectory to rounding.
    ours, theirs = _mlp(), _mlp()
    opt = ft.Adam(ours.parameters(), lr=1e-2)
    ref = torch.optim.Adam(theirs.parameters(), lr=1e-2, foreach=False)
    _train(ours, opt, 3)
    _train(theirs, ref, 3)
    ours.double()
    theirs.double()
    ref.load_state_dict(ref.state_dict())  # torch: its load casts the state to the params
    _train(ours, opt, 5, start=3)
    _train(theirs, ref, 5, start=3)
    _assert_close(ours.parameters(), theirs.parameters(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ clipping


def test_max_grad_norm_clips_the_whole_group_when_params_miss_steps():
    gen = torch.Generator().manual_seed(5)
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in (7, 5, 3)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = ft.Adam(ours, lr=1e-2, max_grad_norm=0.5)
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for t in range(20):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ours]
        if t % 3 == 1:
            grads[1] = None  # the group's params end up at different step counts
        for ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        norm = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        opt.step()
        ref.step()
        assert isinstance(opt.last_grad_norm, float)
        assert opt.last_grad_norm == pytest.approx(float(norm), rel=1e-12)
    assert int(opt.state[ours[0]]["step"]) != int(opt.state[ours[1]]["step"])
    _assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_max_grad_norm_per_group_with_grad_scale_and_missed_steps():
    gen = torch.Generator().manual_seed(6)
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in (4, 4, 3)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = ft.Adam([{"params": ours[:2], "max_grad_norm": 0.1}, {"params": ours[2:]}], lr=1e-2)
    ref = torch.optim.Adam([{"params": theirs[:2]}, {"params": theirs[2:]}], lr=1e-2)
    scale = 64.0
    for t in range(12):
        grads = [scale * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ours]
        if t % 4 == 2:
            grads[0] = None
        for ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        for p in theirs:
            if p.grad is not None:
                p.grad /= scale
        norm = torch.nn.utils.clip_grad_norm_(theirs[:2], 0.1)
        opt.step(grad_scale=torch.tensor(scale))
        ref.step()
        assert opt.last_grad_norm[0] == pytest.approx(float(norm), rel=1e-12)
        assert opt.last_grad_norm[1] is None
    _assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ threads inside torch


def _inner_threads(opt):
    """The num_threads of the groups the engine steps (the torch groups' params that have
    a grad)."""
    return [part[0]["num_threads"] for part in opt._parts]


@pytest.mark.skipif(not ft._TORCH_WORKERS_SPIN, reason="OMP_WAIT_POLICY=passive")
def test_a_small_step_steps_aside_while_torch_runs_intra_op_threads(monkeypatch):
    threads = torch.get_num_threads()
    p = torch.ones(1000, requires_grad=True)
    q = torch.ones(1000, requires_grad=True)
    try:
        torch.set_num_threads(2)
        opt = ft.Adam([p])
        explicit = ft.Adam([q], num_threads=2)
        for o, t in ((opt, p), (explicit, q)):
            t.grad = torch.ones(1000)
            o.step()
        assert _inner_threads(opt) == [1] and _inner_threads(explicit) == [2]
        assert opt.param_groups[0]["num_threads"] is None  # the user's value is untouched
        torch.set_num_threads(1)  # no torch workers: the default again
        p.grad = torch.ones(1000)
        opt.step()
        assert _inner_threads(opt) == [None]
        torch.set_num_threads(2)
        monkeypatch.setattr(ft._bridge, "STEP_ASIDE", 1000)  # a step this large keeps the default
        opt.add_param_group({"params": [torch.ones(5, requires_grad=True)]})
        p.grad = torch.ones(1000)
        opt.step()
        assert _inner_threads(opt) == [None]
    finally:
        torch.set_num_threads(threads)
