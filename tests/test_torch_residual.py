"""fusedadam.torch with ``master="residual"``: a bfloat16 param and its int16 residual.

The torch front end hands the kernel views of the tensors' memory, so the param tensor
and ``opt.state[p]["master_residual"]`` are updated together in the step's one pass. These
check it against the NumPy optimizer with the same option (bit for bit, every class, every
state dtype, many steps), against the float32-master torch optimizer (same master bits),
and the torch-side duties: state dicts (torch.save round trip, ``convert=True`` both ways,
the param rewritten at a tie with its version bumped), failed calls that change nothing,
non-contiguous params, a param's dtype changing under the optimizer, DTensor params and
``Offload``.
"""

import io
import os
import warnings

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedadam as fa  # noqa: E402
import fusedadam.torch as ft  # noqa: E402
from fusedadam import reference as R  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
CLASSES = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "AdaBelief", "Lion"]
# 0, 1, odd, a block boundary + 1, and one large enough for 8-bit moments (>= 4096).
SHAPES = [(0,), (1,), (257,), (70, 73)]
STEPS = 30


def np_view(t):
    """The NumPy array of a tensor's bits (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(BF16)
    return t.contiguous().numpy()


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def same_bits(x, y):
    x = np_view(x) if isinstance(x, torch.Tensor) else np.asarray(x)
    y = np_view(y) if isinstance(y, torch.Tensor) else np.asarray(y)
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(bits(x), bits(y))


def params(dtype=torch.bfloat16, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    for p in out:
        p.grad_dtype = None  # a bfloat16 param may take a float32 gradient
    return out


def clone(ps):
    out = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p in out:
        p.grad_dtype = None
    return out


def grads(shapes, step, dtype):
    gen = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(s, generator=gen) * 0.3).to(dtype) for s in shapes]


def master(opt, p):
    """The float32 master of ``p`` in torch optimizer ``opt`` (decoded from a residual)."""
    st = opt.state[p]
    if "master_residual" in st:
        return R.residual_decode(np_view(p), np_view(st["master_residual"])).reshape(p.shape)
    return np_view(st["master_param"])


def snapshot(opt, ps):
    return (
        [np_view(p).copy() for p in ps],
        {
            i: {k: (np_view(v).copy() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
            for i, st in enumerate(opt.state.get(p, {}) for p in ps)
        },
    )


def assert_same_snapshot(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(same_bits(x, y) for x, y in zip(pa, pb))
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys(), i
        for k in sa[i]:
            assert same_bits(sa[i][k], sb[i][k]), (i, k)


@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
@pytest.mark.parametrize("name", CLASSES)
def test_matches_the_numpy_optimizer_bit_for_bit(name, state_dtype, grad_dtype):
    ps = params()
    arrays = [np_view(p).copy() for p in ps]
    opt = getattr(ft, name)(ps, lr=1e-2, master="residual", state_dtype=state_dtype)
    ref = getattr(fa, name)(arrays, lr=1e-2, master="residual", state_dtype=state_dtype)
    for t in range(STEPS):
        gs = grads(SHAPES, t, grad_dtype)
        for p, g in zip(ps, gs):
            p.grad = g
        versions = [p._version for p in ps]
        opt.step()
        ref.step([np_view(g) for g in gs])
        assert all(p._version > v for p, v in zip(ps, versions))  # as any in-place update
    for p, a in zip(ps, arrays):
        assert same_bits(p, a)
        st = opt.state[p]
        assert "master_param" not in st and st["master_residual"].dtype == torch.int16
        assert sorted(st) == sorted(ref.state[a])
        for key, value in ref.state[a].items():
            assert same_bits(st[key], value), key
    # The state tensors are the kernel's memory.
    planned = opt._engine.plans[0].masters[3]
    assert opt.state[ps[3]]["master_residual"].data_ptr() == planned.ctypes.data


@pytest.mark.parametrize("state_dtype", [None, "8bit"])
def test_master_is_the_float32_master_optimizers_bit_for_bit(state_dtype):
    """Same gradients: the residual optimizer's decoded master is the float32-master
    optimizer's at every step; the params agree except at exact even ties."""
    ps = params(seed=1)
    qs = clone(ps)
    res = ft.AdamW(ps, lr=1e-2, master="residual", state_dtype=state_dtype)
    f32 = ft.AdamW(qs, lr=1e-2, state_dtype=state_dtype)
    for t in range(STEPS):
        gs = grads(SHAPES, t, torch.float32)
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g, g.clone()
        res.step()
        f32.step()
        for p, q in zip(ps, qs):
            m = master(res, p)
            assert same_bits(m, master(f32, q)), t
            u = bits(m)
            tie = ((u & 0xFFFF) == 0x8000) & (((u >> 16) & 1) == 0)
            differ = bits(np_view(p)) != bits(np_view(q))
            assert not (differ & ~tie).any(), t


@pytest.mark.parametrize("cls", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_schedule_free_param_joining_late_gets_the_groups_master(cls):
    """A Schedule-Free param whose first gradient comes after its group has stepped gets
    its state then, at the group's counters: with the group's ``master`` too (its first
    step raised "master_residual ... is missing" before), so the residual run keeps the
    float32-master run's master bits."""
    ps = params(seed=3)
    qs = clone(ps)
    res = getattr(ft, cls)(ps, lr=1e-2, master="residual")
    f32 = getattr(ft, cls)(qs, lr=1e-2)
    for t in range(8):
        gs = grads(SHAPES, t, torch.float32)
        for k, (p, q, g) in enumerate(zip(ps, qs, gs)):
            late = k == len(ps) - 1 and t < 3  # the last param joins at step 4
            p.grad, q.grad = (None, None) if late else (g, g.clone())
        res.step()
        f32.step()
        for p, q in zip(ps, qs):
            if p in res.state:
                assert res.state[p]["master_residual"].dtype == torch.int16
                assert same_bits(master(res, p), master(f32, q)), t


def test_float32_params_ignore_the_option_and_float16_params_refuse_it():
    ps, qs = params(torch.float32), params(torch.float32)
    a = ft.Adam(ps, lr=1e-2, master="residual")
    b = ft.Adam(qs, lr=1e-2)
    for t in range(3):
        for p, q, g in zip(ps, qs, grads(SHAPES, t, torch.float32)):
            p.grad, q.grad = g, g.clone()
        a.step()
        b.step()
    assert all(same_bits(p, q) for p, q in zip(ps, qs))
    assert all("master_residual" not in a.state[p] for p in ps)
    half = params(torch.float16, [(5,)])
    opt = ft.Adam(half, master="residual")
    half[0].grad = torch.ones(5, dtype=torch.float16)
    before = np_view(half[0]).copy()
    with pytest.raises(
        TypeError, match=r"master='residual' applies to bfloat16 params; params\[0\]"
    ):
        opt.step()
    assert same_bits(half[0], before) and len(opt.state) == 0


def test_master_argument_and_groups():
    ps = params(shapes=[(5,), (6,)])
    opt = ft.AdamW([{"params": ps[:1]}, {"params": ps[1:], "master": "residual"}], lr=1e-2)
    assert [g["master"] for g in opt.param_groups] == ["float32", "residual"]
    for p in ps:
        p.grad = torch.ones(p.shape)
    opt.step()
    assert "master_param" in opt.state[ps[0]] and "master_residual" in opt.state[ps[1]]
    with pytest.raises(ValueError, match="Invalid master 'int8'"):
        ft.AdamW(ps, master="int8")


def _trained(master_mode, state_dtype=None, steps=5, seed=2):
    ps = params(seed=seed)
    opt = ft.AdamW(ps, lr=1e-2, master=master_mode, state_dtype=state_dtype)
    for t in range(steps):
        for p, g in zip(ps, grads(SHAPES, t, torch.bfloat16)):
            p.grad = g
        opt.step()
    return opt, ps


def _continue(opt, ps, start, steps=5):
    for t in range(start, start + steps):
        for p, g in zip(ps, grads(SHAPES, t, torch.bfloat16)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "8bit"])
def test_state_dict_round_trip_through_torch_save(state_dtype):
    opt, ps = _trained("residual", state_dtype)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert saved["param_groups"][0]["master"] == "residual"
    assert saved["state"][3]["master_residual"].dtype == torch.int16
    qs = clone(ps)
    again = ft.AdamW(qs, lr=1e-2, master="residual", state_dtype=state_dtype)
    again.load_state_dict(saved)
    _continue(opt, ps, 5)
    _continue(again, qs, 5)
    assert_same_snapshot(snapshot(opt, ps), snapshot(again, qs))


@pytest.mark.parametrize("state_dtype", [None, "8bit"])
def test_convert_float32_master_to_residual_and_back(state_dtype):
    """float32 master -> residual: the residual encodes the saved master exactly (the
    param rewritten as it encodes, version bumped), and the run continues as the float32
    master run's masters; residual -> float32 master: master_param is the decoded master."""
    f32, ps = _trained("float32", state_dtype)
    qs = clone(ps)
    res = ft.AdamW(qs, lr=1e-2, master="residual", state_dtype=state_dtype)
    saved = f32.state_dict()
    before = snapshot(res, qs)
    with pytest.raises(ValueError, match="convert=True"):
        res.load_state_dict(saved)
    assert_same_snapshot(snapshot(res, qs), before)
    res.load_state_dict(saved, convert=True)
    assert res.param_groups[0]["master"] == "residual"
    for p, q in zip(ps, qs):
        assert "master_param" not in res.state[q]
        assert same_bits(master(res, q), master(f32, p))
    _continue(f32, ps, 5)
    _continue(res, qs, 5)
    for p, q in zip(ps, qs):
        assert same_bits(master(res, q), master(f32, p))
    # and back: a float32-master optimizer loads the residual layout.
    rs = clone(qs)
    back = ft.AdamW(rs, lr=1e-2, state_dtype=state_dtype)
    with pytest.raises(ValueError, match="convert=True"):
        back.load_state_dict(res.state_dict())
    assert len(back.state) == 0
    back.load_state_dict(res.state_dict(), convert=True)
    for q, r in zip(qs, rs):
        assert back.state[r]["master_param"].dtype == torch.float32
        assert same_bits(back.state[r]["master_param"], master(res, q))
        assert "master_residual" not in back.state[r]
    _continue(res, qs, 10)
    _continue(back, rs, 10)
    for q, r in zip(qs, rs):
        assert same_bits(master(back, r), master(res, q))


def test_torch_optim_state_dict_loads_with_convert():
    """torch.optim's bfloat16 moments and no master: refused, then converted (moments cast,
    residual 0: the param is its master)."""
    ps = params(shapes=[(6,)], seed=9)
    theirs = clone(ps)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    theirs[0].grad = torch.randn(6).bfloat16()
    ref.step()
    opt = ft.AdamW(ps, lr=1e-2, master="residual")
    with pytest.raises(ValueError, match=r"missing \['master_residual'\].*convert=True"):
        opt.load_state_dict(ref.state_dict())
    assert len(opt.state) == 0
    opt.load_state_dict(ref.state_dict(), convert=True)
    st = opt.state[ps[0]]
    assert st["exp_avg"].dtype == torch.float32 and int(st["step"]) == 1
    assert torch.equal(st["master_residual"], torch.zeros(6, dtype=torch.int16))
    assert same_bits(master(opt, ps[0]), np_view(ps[0]).astype(np.float32))


def test_convert_rewrites_the_param_at_an_even_tie_and_bumps_its_version():
    p, q = clone([torch.zeros(3, dtype=torch.bfloat16)] * 2)
    src = ft.AdamW([p], lr=1e-2)
    p.grad = torch.ones(3)
    src.step()
    # master bits: an even tie (0x3f808000 -> param 0x3f81, away from zero), an odd tie
    # and a plain value.
    words = np.array([0x3F808000, 0x3F818000, 0x3F80_1234], np.uint32)
    src.state[p]["master_param"].copy_(torch.from_numpy(words.view(np.float32)))
    with torch.no_grad():
        p.copy_(src.state[p]["master_param"].bfloat16())  # what a float32-master step writes
    q.data.copy_(p.detach())
    version = q._version
    dst = ft.AdamW([q], lr=1e-2, master="residual")
    dst.load_state_dict(src.state_dict(), convert=True)
    assert bits(np_view(q)).tolist() == [0x3F81, 0x3F82, 0x3F80]
    assert bits(np_view(p)).tolist() == [0x3F80, 0x3F82, 0x3F80]
    assert q._version > version
    assert same_bits(master(dst, q), words.view(np.float32))


@pytest.mark.parametrize(
    "bad", ["residual_shape", "residual_float", "step", "groups", "residual_missing"]
)
def test_bad_state_dict_changes_nothing(bad):
    opt, ps = _trained("residual", "8bit")
    sd = opt.state_dict()
    sd = {
        "state": {k: dict(v) for k, v in sd["state"].items()},
        "param_groups": [dict(g) for g in sd["param_groups"]],
    }
    entry = sd["state"][3]
    if bad == "residual_shape":
        entry["master_residual"] = torch.zeros(5, dtype=torch.int16)
    elif bad == "residual_float":
        entry["master_residual"] = entry["master_residual"].float()
    elif bad == "step":
        entry["step"] = torch.tensor(-1.0)
    elif bad == "groups":
        sd["param_groups"] = sd["param_groups"] * 2
    else:
        del entry["master_residual"]
    before = snapshot(opt, ps)
    with pytest.raises((TypeError, ValueError)):
        opt.load_state_dict(sd)
    # (convert=True makes a missing residual from the param, and casts a float one)
    if bad not in ("residual_missing", "residual_float"):
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(sd, convert=True)
    assert_same_snapshot(snapshot(opt, ps), before)


def test_failed_steps_change_nothing():
    opt, ps = _trained("residual", "8bit")
    before = snapshot(opt, ps)
    versions = [p._version for p in ps]
    for p, g in zip(ps, grads(SHAPES, 9, torch.float32)):
        p.grad = g
    ps[3].grad[5, 7] = float("nan")
    with pytest.raises(FloatingPointError):
        opt.step()
    ps[3].grad = torch.ones(ps[3].shape, dtype=torch.float64)  # a dtype the step refuses
    with pytest.raises(TypeError):
        opt.step()
    ps[3].grad = None
    opt.param_groups[0]["master"] = "int8"
    with pytest.raises(ValueError, match="Invalid master"):
        opt.step()
    opt.param_groups[0]["master"] = "float32"  # the layout changes only through a load
    with pytest.raises(ValueError, match="master_param of params.0. is missing"):
        opt.step()
    assert_same_snapshot(snapshot(opt, ps), before)
    assert [p._version for p in ps] == versions


def test_non_contiguous_param_is_the_contiguous_one():
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(80, 90, generator=gen).bfloat16()
    t = torch.nn.Parameter(base.clone().t())  # non-contiguous
    c = torch.nn.Parameter(base.t().contiguous())
    t.grad_dtype = c.grad_dtype = None
    assert not t.is_contiguous()
    a = ft.AdamW([t], lr=1e-2, master="residual", state_dtype="8bit")
    b = ft.AdamW([c], lr=1e-2, master="residual", state_dtype="8bit")
    for _ in range(4):
        g = torch.randn(90, 80, generator=gen)
        t.grad, c.grad = g, g.clone()
        a.step()
        b.step()
    assert torch.equal(t.detach().view(torch.int16), c.detach().view(torch.int16))
    for k, v in b.state[c].items():
        assert same_bits(a.state[t][k], v), k
    # A load that converts a float32 master writes the non-contiguous param back.
    f32 = ft.AdamW(clone([c]), lr=1e-2, state_dtype="8bit")
    f32.load_state_dict(b.state_dict(), convert=True)
    version = t._version
    a.load_state_dict(f32.state_dict(), convert=True)
    assert t._version > version
    assert same_bits(master(a, t), master(b, c))
    assert torch.equal(t.detach().view(torch.int16), c.detach().view(torch.int16))


def test_param_changing_dtype_under_the_optimizer():
    """model.float() drops the residual (the moments stay); model.bfloat16() back makes
    a residual of 0 (the param is its master), as the float32 master mode does."""
    opt, ps = _trained("residual", steps=2)
    for p in ps:
        p.data = p.data.float()
        p.grad = torch.ones(p.shape)
    opt.step()
    assert all("master_residual" not in opt.state[p] for p in ps)
    for p in ps:
        p.data = p.data.bfloat16()
        p.grad = torch.zeros(p.shape)
    opt.zero_grad(set_to_none=False)
    before = [np_view(p).copy() for p in ps]
    opt.param_groups[0]["lr"] = 0.0
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()
    for p, b in zip(ps, before):
        assert opt.state[p]["master_residual"].dtype == torch.int16
        assert same_bits(p, b)


def test_replaced_data_of_a_later_param_is_followed():
    """``p.data = ...`` on a later param (an earlier bfloat16 one unchanged): the step
    updates the new memory; with a residual the new values are the param's master."""
    ps = params(shapes=[(3,), (3,)])
    opt = ft.AdamW(ps, lr=1e-1, master="residual")
    for _ in range(2):
        for p in ps:
            p.grad = torch.ones(3)
        opt.step()
    ps[1].data = torch.full((3,), 5.0).bfloat16()
    for p in ps:
        p.grad = torch.ones(3)
    opt.step()
    assert float(ps[1].detach()[0]) < 5.0


def test_offload_master_params_decode_the_residual():
    model = params(shapes=[(50,), (5, 4)], seed=7)
    off = ft.Offload(model, ft.AdamW, lr=1e-2, master="residual")
    ref = ft.Offload(clone(model), ft.AdamW, lr=1e-2)
    for t in range(3):
        for p, q, g in zip(model, ref.params, grads([(50,), (5, 4)], t, torch.float32)):
            p.grad_dtype = q.grad_dtype = None
            p.grad, q.grad = g, g.clone()
        off.step()
        ref.step()
    for a, b in zip(off.master_params(), ref.master_params()):
        assert a.dtype == torch.float32 and same_bits(a, b)


# ------------------------------------------------------------------ DTensor (1-rank mesh)


@pytest.fixture(scope="module")
def mesh():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_dtensor_params_step_as_plain_tensors_and_round_trip(mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    gen = torch.Generator().manual_seed(8)
    value = torch.randn(70, 73, generator=gen).bfloat16()
    plain = torch.nn.Parameter(value.clone())
    dt = torch.nn.Parameter(distribute_tensor(value.clone(), mesh, [Shard(0)]))
    plain.grad_dtype = dt.grad_dtype = None
    a = ft.AdamW([plain], lr=1e-2, master="residual", max_grad_norm=1e9)
    b = ft.AdamW([dt], lr=1e-2, master="residual", max_grad_norm=1e9)
    for _ in range(3):
        g = torch.randn(70, 73, generator=gen)
        plain.grad = g.clone()
        dt.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        a.step()
        b.step()
    residual = b.state[dt]["master_residual"]
    assert type(residual).__name__ == "DTensor" and residual.placements == dt.placements
    assert torch.equal(dt.full_tensor().view(torch.int16), plain.detach().view(torch.int16))
    assert torch.equal(residual.full_tensor(), a.state[plain]["master_residual"])
    # A plain (unsharded) state dict loads into the DTensor optimizer, and back.
    again = ft.AdamW(
        [torch.nn.Parameter(distribute_tensor(value.clone(), mesh, [Shard(0)]))],
        lr=1e-2,
        master="residual",
    )
    again.load_state_dict(a.state_dict())
    q = again.param_groups[0]["params"][0]
    assert torch.equal(again.state[q]["master_residual"].full_tensor(), residual.full_tensor())
