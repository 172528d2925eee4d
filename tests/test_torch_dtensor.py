"""fusedadam.torch with DTensor params in one process (a 1-rank gloo mesh).

The multi-rank behaviour (FSDP2 shards, the global norm, DCP resharding) is tested across
processes in test_engines.py; these check the bridge itself quickly: the step updates the
local shard in place exactly as it updates a plain tensor, the state is DTensors over the
kernel's memory, state dicts load back, and a replaced local shard is followed.
"""

import os
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import fusedadam.torch as ft  # noqa: E402


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def _pair(mesh, dtype=torch.float32, shape=(7, 5)):
    """A plain param and a DTensor param (Shard(0)) with the same values and gradient."""
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(0)
    value = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    plain = torch.nn.Parameter(value.clone())
    plain.grad = grad.clone()
    dt = torch.nn.Parameter(distribute_tensor(value.clone(), mesh, [Shard(0)]))
    dt.grad = distribute_tensor(grad.clone(), mesh, [Shard(0)])
    return plain, dt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_step_equals_plain_tensor(mesh, dtype, clip):
    plain, dt = _pair(mesh, dtype)
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=clip)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=clip)
    local = dt._local_tensor
    for _ in range(3):
        a.step()
        b.step()
    assert dt._local_tensor is local  # updated in place
    # Without clipping the same bits; with it, the norm is summed in another order (over
    # the mesh, as on several ranks it must be) and the coefficient folded into the
    # gradient scale: equal to rounding.
    same = torch.equal if clip is None else _close
    assert same(dt.full_tensor(), plain.detach())
    st = b.state[dt]
    assert type(st["step"]) is torch.Tensor and int(st["step"]) == 3
    for name, value in a.state[plain].items():
        if name == "step":
            continue
        assert type(st[name]).__name__ == "DTensor", name
        assert st[name].placements == dt.placements
        assert same(st[name].full_tensor(), value), name
    if clip is not None:
        assert b.last_grad_norm == pytest.approx(a.last_grad_norm, rel=1e-6)
    # The state DTensors wrap the kernel's memory: an in-place edit is what the next step sees.
    b.state[dt]["exp_avg"].to_local().zero_()
    a.state[plain]["exp_avg"].zero_()
    a.step()
    b.step()
    assert same(dt.full_tensor(), plain.detach())


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-7)
    return True


def test_state_dict_round_trip_and_plain_state(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1)
    b = ft.AdamW([dt], lr=0.1)
    a.step()
    b.step()
    # A DTensor state dict, and a plain one (saved without sharding), both load.
    for saved in (b.state_dict(), a.state_dict()):
        plain2, dt2 = _pair(mesh)
        a2, b2 = ft.AdamW([plain2], lr=0.1), ft.AdamW([dt2], lr=0.1)
        a2.load_state_dict(a.state_dict())
        b2.load_state_dict(saved)
        assert type(b2.state[dt2]["exp_avg"]).__name__ == "DTensor"
        a2.step()
        b2.step()
        assert torch.equal(dt2.full_tensor(), plain2.detach())


def test_replaced_local_shard_is_followed(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1)
    b = ft.AdamW([dt], lr=0.1)
    a.step()
    b.step()
    # FSDP2 re-pads a shard into new memory after load_state_dict(assign=True) or .to().
    dt._local_tensor = dt._local_tensor.clone()
    a.step()
    b.step()
    assert torch.equal(dt.full_tensor(), plain.detach())


def test_gradient_placement_must_match(mesh):
    from torch.distributed.tensor import Replicate, distribute_tensor

    _, dt = _pair(mesh)
    dt.grad = distribute_tensor(dt.grad.full_tensor(), mesh, [Replicate()])
    opt = ft.AdamW([dt], lr=0.1)
    before = dt.full_tensor().clone()
    with pytest.raises(ValueError, match=r"gradient placed \(Replicate\(\),\)"):
        opt.step()
    assert torch.equal(dt.full_tensor(), before) and not opt.state[dt]


# 8-bit state: rows of whole 256-blocks follow the shards (8-bit, the one-process bits);
# a 1-d param and rows of 64 elements keep float32 moments under a DTensor.
SHAPES_8BIT = [(40, 256), (9, 512), (5000,), (64, 64)]
ROWS_8BIT = (True, True, False, False)


def _pairs_8bit(mesh, dtype):
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(1)
    values = [torch.randn(s, generator=g).to(dtype) for s in SHAPES_8BIT]
    plain = [torch.nn.Parameter(v.clone()) for v in values]
    dts = [torch.nn.Parameter(distribute_tensor(v.clone(), mesh, [Shard(0)])) for v in values]
    return plain, dts


def _grads_8bit(plain, dts, step):
    from torch.distributed.tensor import distribute_tensor

    g = torch.Generator().manual_seed(50 + step)
    for p, d in zip(plain, dts):
        grad = torch.randn(p.shape, generator=g).to(p.dtype)
        p.grad = grad.clone()
        d.grad = distribute_tensor(grad.clone(), d.device_mesh, d.placements)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("option", ["8bit", "8bit_companded"])
def test_8bit_step_equals_plain_tensor(mesh, dtype, option):
    plain, dts = _pairs_8bit(mesh, dtype)
    # the one-process twin: the params a DTensor keeps in float32 moments in a group of their own
    a = ft.AdamW(
        [
            {"params": [p for p, r in zip(plain, ROWS_8BIT) if r]},
            {"params": [p for p, r in zip(plain, ROWS_8BIT) if not r], "state_dtype": None},
        ],
        lr=0.05,
        state_dtype=option,
        max_grad_norm=1.0,
    )
    # (the same groups, each clipped by its own norm; both 8-bit here)
    b = ft.AdamW(
        [
            {"params": [d for d, r in zip(dts, ROWS_8BIT) if r]},
            {"params": [d for d, r in zip(dts, ROWS_8BIT) if not r]},
        ],
        lr=0.05,
        state_dtype=option,
        max_grad_norm=1.0,
    )
    for step in range(3):
        _grads_8bit(plain, dts, step)
        a.step()
        b.step()
    codes = torch.uint8 if option == "8bit" else torch.int8
    for p, d, rows in zip(plain, dts, ROWS_8BIT):
        # The clipping norm is summed in another order (over the mesh): equal to rounding,
        # which a bfloat16 param can show as one of its ulps on a few elements.
        if dtype == torch.float32:
            _close(d.full_tensor(), p.detach())
        else:
            diff = (d.full_tensor().float() - p.detach().float()).abs()
            ulp = torch.finfo(torch.bfloat16).eps * p.detach().float().abs().clamp(min=1)
            assert bool((diff <= ulp).all()) and int((diff > 0).sum()) <= diff.numel() // 1000
        st = b.state[d]
        assert st["exp_avg"].dtype == (codes if rows else torch.float32)
        if rows:
            absmax = st["exp_avg_absmax"]
            per_row = d.shape[1:].numel() // 256
            assert type(absmax).__name__ == "DTensor" and absmax.placements == d.placements
            assert absmax.shape == (d.shape[0], per_row)
            # the one-process scales, one row of them per param row
            if dtype == torch.float32:
                _close(absmax.full_tensor().reshape(-1), a.state[p]["exp_avg_absmax"])
    # Without clipping, the same bits.
    plain, dts = _pairs_8bit(mesh, dtype)
    a = ft.AdamW(plain[:2], lr=0.05, state_dtype=option)
    b = ft.AdamW(dts[:2], lr=0.05, state_dtype=option)
    for step in range(3):
        _grads_8bit(plain, dts, step)
        a.step()
        b.step()
    for p, d in zip(plain[:2], dts[:2]):
        assert torch.equal(d.full_tensor(), p.detach())
        for name, value in a.state[p].items():
            if name != "step":
                assert torch.equal(b.state[d][name].full_tensor().reshape(value.shape), value)
    # the scales are the kernel's memory: an edit is what the next step sees
    b.state[dts[0]]["exp_avg_absmax"].to_local().mul_(2)
    a.state[plain[0]]["exp_avg_absmax"].mul_(2)
    _grads_8bit(plain, dts, 3)
    a.step()
    b.step()
    assert torch.equal(dts[0].full_tensor(), plain[0].detach())


def test_8bit_state_dicts_load_both_ways(mesh):
    plain, dts = _pairs_8bit(mesh, torch.float32)
    a = ft.AdamW(plain[:2], lr=0.05, state_dtype="8bit")
    b = ft.AdamW(dts[:2], lr=0.05, state_dtype="8bit")
    _grads_8bit(plain, dts, 0)
    a.step()
    b.step()
    saved_a, saved_b = a.state_dict(), b.state_dict()
    # the one-process state dict holds the scales in the FSDP2 shape: one row per param row
    assert saved_a["state"][0]["exp_avg_absmax"].shape == (40, 1)
    assert a.state[plain[0]]["exp_avg_absmax"].shape == (40,)
    for saved in (saved_a, saved_b):
        plain2, dts2 = _pairs_8bit(mesh, torch.float32)
        a2 = ft.AdamW(plain2[:2], lr=0.05, state_dtype="8bit")
        b2 = ft.AdamW(dts2[:2], lr=0.05, state_dtype="8bit")
        a2.load_state_dict(saved_a)
        b2.load_state_dict(saved)
        assert type(b2.state[dts2[1]]["exp_avg_sq_absmax"]).__name__ == "DTensor"
        _grads_8bit(plain2, dts2, 1)
        a2.step()
        b2.step()
        for p, d in zip(plain2[:2], dts2[:2]):
            assert torch.equal(d.full_tensor(), p.detach())
    # an older one-process state dict, flat scales, loads too
    flat = {
        "state": {
            i: {k: v.reshape(-1) if k.endswith("_absmax") else v for k, v in st.items()}
            for i, st in saved_a["state"].items()
        },
        "param_groups": saved_a["param_groups"],
    }
    for opt in (
        ft.AdamW(_pairs_8bit(mesh, torch.float32)[0][:2], lr=0.05, state_dtype="8bit"),
        ft.AdamW(_pairs_8bit(mesh, torch.float32)[1][:2], lr=0.05, state_dtype="8bit"),
    ):
        opt.load_state_dict(flat)


class _Holder(torch.nn.Module):
    """A model over given params (named p0, p1, ...), for get_state_dict."""

    def __init__(self, params):
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", p)


def _dcp_round(opt, model, dest_opt, dest_model, folder, planner):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dcp.save({"optim": get_state_dict(model, opt)[1]}, checkpoint_id=folder)
    state = {"optim": get_state_dict(dest_model, dest_opt)[1]}
    dcp.load(state, checkpoint_id=folder, planner=planner)
    set_state_dict(dest_model, dest_opt, model_state_dict={}, optim_state_dict=state["optim"])


def _assert_moments_loaded_from_plain(opt, dts, saved_opt, plain):
    """``opt``'s moments of the DTensor params ``dts`` are the one-process optimizer's of
    ``plain``: its 8-bit codes where the DTensor keeps 8-bit (whole rows of blocks), else
    their dequantized float32 values (exact)."""
    from fusedadam import reference

    for p, d, rows in zip(plain, dts, ROWS_8BIT):
        st, saved = opt.state[d], saved_opt.state[p]
        for name in ("exp_avg", "exp_avg_sq"):
            if rows:
                assert torch.equal(st[name].full_tensor(), saved[name])
            else:
                want = reference.q8_dequantize(
                    saved[name].numpy(), saved[name + "_absmax"].numpy(), name == "exp_avg"
                )
                assert st[name].dtype == torch.float32
                assert torch.equal(st[name].full_tensor(), torch.from_numpy(want))


@pytest.mark.parametrize("option", ["8bit", "8bit_companded"])
def test_8bit_dcp_checkpoint_moves_between_dtensor_and_plain(mesh, tmp_path, option):
    """The 1-d and 64-element-row params keep float32 moments as DTensors, 8-bit ones in
    one process: with ft.LoadPlanner a DCP checkpoint of either loads into the other
    (codes and scales dequantized exactly, float32 moments quantized as the kernel does);
    the rows of whole blocks load bit for bit."""
    from fusedadam import reference

    plain, dts = _pairs_8bit(mesh, torch.float32)
    a = ft.AdamW(plain, lr=0.05, state_dtype=option)
    b = ft.AdamW(dts, lr=0.05, state_dtype=option)
    for step in range(2):
        _grads_8bit(plain, dts, step)
        a.step()
        b.step()
    # DTensors -> one process
    plain2, _ = _pairs_8bit(mesh, torch.float32)
    a2 = ft.AdamW(plain2, lr=0.05, state_dtype=option)
    _dcp_round(b, _Holder(dts), a2, _Holder(plain2), str(tmp_path / "dt"), ft.LoadPlanner())
    for d, p, rows in zip(dts, plain2, ROWS_8BIT):
        st, saved = a2.state[p], b.state[d]
        assert int(st["step"]) == 2
        for name in ("exp_avg", "exp_avg_sq"):
            if rows:
                assert torch.equal(st[name], saved[name].full_tensor())
                assert torch.equal(
                    st[name + "_absmax"], saved[name + "_absmax"].full_tensor().reshape(-1)
                )
            else:
                codes, absmax = reference.q8_quantize(
                    saved[name].full_tensor().numpy(), name == "exp_avg", option == "8bit_companded"
                )
                assert torch.equal(st[name], torch.from_numpy(codes))
                assert torch.equal(st[name + "_absmax"], torch.from_numpy(absmax))
    # one process -> DTensors
    _, dts3 = _pairs_8bit(mesh, torch.float32)
    b3 = ft.AdamW(dts3, lr=0.05, state_dtype=option)
    _dcp_round(a, _Holder(plain), b3, _Holder(dts3), str(tmp_path / "plain"), ft.LoadPlanner())
    _assert_moments_loaded_from_plain(b3, dts3, a, plain)
    # both train on
    _grads_8bit(plain2, dts3, 2)
    a2.step()
    b3.step()
    # without the planner, DCP's default one stops at the scales the checkpoint lacks
    plain4, _ = _pairs_8bit(mesh, torch.float32)
    a4 = ft.AdamW(plain4, lr=0.05, state_dtype=option)
    with pytest.raises(BaseException, match=r"Missing key in checkpoint state_dict"):
        _dcp_round(b, _Holder(dts), a4, _Holder(plain4), str(tmp_path / "dt4"), None)


def _full_state(opt, params):
    """Each param's value and state, whole tensors cloned (plain ones for DTensors)."""

    def whole(t):
        return t.full_tensor().clone() if hasattr(t, "full_tensor") else t.clone()

    return [(whole(p.detach()), {k: whole(v) for k, v in opt.state[p].items()}) for p in params]


def _same_full_state(before, after):
    assert len(before) == len(after)
    for (value, state), (value2, state2) in zip(before, after):
        assert torch.equal(value, value2)
        assert state.keys() == state2.keys()
        for k in state:
            assert state[k].dtype == state2[k].dtype and torch.equal(state[k], state2[k]), k


@pytest.mark.parametrize("option", ["8bit", "8bit_companded"])
def test_8bit_dcp_default_planner_refuses_one_process_checkpoint(mesh, tmp_path, option):
    """A one-process 8-bit checkpoint holds codes and scales for the 1-d and 64-element-row
    params that DTensors keep in float32: DCP's default planner would copy the codes into
    the float32 moments as numbers. The DTensor state dict's marker for those params
    (absent from a one-process checkpoint) makes it stop before reading anything; with
    ft.LoadPlanner the checkpoint loads (codes dequantized)."""
    import copy
    import pickle

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        get_state_dict,
        set_optimizer_state_dict,
    )

    marker = "dtensor_float32_moments"  # (the saved format: spelled out)
    plain, dts = _pairs_8bit(mesh, torch.float32)
    a = ft.AdamW(plain, lr=0.05, state_dtype=option)
    b = ft.AdamW(dts, lr=0.05, state_dtype=option)
    for step in range(2):
        _grads_8bit(plain, dts, step)
        a.step()
        b.step()
    folder = str(tmp_path / "plain")
    dcp.save({"optim": get_state_dict(_Holder(plain), a)[1]}, checkpoint_id=folder)
    before = _full_state(b, dts)
    state = {"optim": get_state_dict(_Holder(dts), b)[1]}
    with pytest.raises(
        BaseException,
        match=rf"Missing key in checkpoint state_dict: optim\.state\.p[23]\.{marker}",
    ):
        dcp.load(state, checkpoint_id=folder)
    _same_full_state(before, _full_state(b, dts))
    # the marker is in the DTensor state dict of exactly the params whose layout differs,
    # never in opt.state (the step never sees it) nor in a one-process state dict
    saved_b, saved_a = b.state_dict(), a.state_dict()
    assert [marker in saved_b["state"][i] for i in range(4)] == [not r for r in ROWS_8BIT]
    assert not any(marker in st for st in saved_a["state"].values())
    assert not any(marker in b.state[d] for d in dts)
    for other in (copy.deepcopy(b), pickle.loads(pickle.dumps(b))):
        assert [marker in other.state_dict()["state"][i] for i in range(4)] == [
            not r for r in ROWS_8BIT
        ]
    # a fresh DTensor model refuses it too; with the planner it loads
    _, dts2 = _pairs_8bit(mesh, torch.float32)
    b2 = ft.AdamW(dts2, lr=0.05, state_dtype=option)
    with pytest.raises(BaseException, match=r"Missing key in checkpoint state_dict"):
        _dcp_round(a, _Holder(plain), b2, _Holder(dts2), folder + "2", None)
    _dcp_round(a, _Holder(plain), b, _Holder(dts), folder + "3", ft.LoadPlanner())
    _assert_moments_loaded_from_plain(b, dts, a, plain)
    assert all(marker not in b.state[d] for d in dts)
    # DTensors -> DTensors: the marker is on both sides; the default planner loads it
    _, dts3 = _pairs_8bit(mesh, torch.float32)
    b3 = ft.AdamW(dts3, lr=0.05, state_dtype=option)
    with torch.no_grad():
        for d, d3 in zip(dts, dts3):
            d3.copy_(d)
    _dcp_round(b, _Holder(dts), b3, _Holder(dts3), str(tmp_path / "dt"), None)
    _same_full_state(_full_state(b, dts), _full_state(b3, dts3))
    # state dicts with the marker or without it (saved before it existed) load both ways
    for saved in (b.state_dict(), _without(b.state_dict(), marker)):
        for opt, params in ((b3, dts3), (a, plain)):
            opt.load_state_dict(saved)
            assert not any(marker in opt.state[p] for p in params)
    _same_full_state(_full_state(b, dts), _full_state(b3, dts3))
    # get/set_optimizer_state_dict, sharded and full, between DTensors and to one process
    for full in (False, True):
        options = StateDictOptions(full_state_dict=full)
        osd = get_optimizer_state_dict(_Holder(dts), b, options=options)
        assert [marker in osd["state"][f"p{i}"] for i in range(4)] == [not r for r in ROWS_8BIT]
        set_optimizer_state_dict(_Holder(dts3), b3, osd, options=options)
        _same_full_state(_full_state(b, dts), _full_state(b3, dts3))
        _, dts4 = _pairs_8bit(mesh, torch.float32)
        b4 = ft.AdamW(dts4, lr=0.05, state_dtype=option)
        set_optimizer_state_dict(_Holder(dts4), b4, osd, options=options)
        assert not any(marker in b4.state[d] for d in dts4)
        if full:
            # (torch merges the plain optimizer's own scales into a full state dict of
            # float32 moments, which load_state_dict refuses, marker or not)
            continue
        plain5, _ = _pairs_8bit(mesh, torch.float32)
        a5 = ft.AdamW(plain5, lr=0.05, state_dtype=option)
        set_optimizer_state_dict(_Holder(plain5), a5, osd, options=options)
        assert a5.state[plain5[2]]["exp_avg"].dtype == (
            torch.uint8 if option == "8bit" else torch.int8
        )
        assert not any(marker in a5.state[p] for p in plain5)
    _grads_8bit(plain, dts, 2)
    _grads_8bit(plain, dts3, 2)
    b.step()
    b3.step()
    _same_full_state(_full_state(b, dts), _full_state(b3, dts3))


def _without(saved, key):
    return {
        "state": {i: {k: v for k, v in st.items() if k != key} for i, st in saved["state"].items()},
        "param_groups": saved["param_groups"],
    }


def test_8bit_exception_changes_nothing(mesh):
    plain, dts = _pairs_8bit(mesh, torch.float32)
    b = ft.AdamW(dts, lr=0.05, state_dtype="8bit")
    _grads_8bit(plain, dts, 0)
    dts[0].grad._local_tensor[3, 7] = float("nan")
    with pytest.raises(FloatingPointError):
        b.step()
    assert not any(b.state[d] for d in dts)
    _grads_8bit(plain, dts, 0)
    b.step()
    before = {
        i: {k: v.full_tensor().clone() for k, v in b.state[d].items() if k != "step"}
        for i, d in enumerate(dts)
    }
    params = [d.full_tensor().clone() for d in dts]
    dts[1].grad._local_tensor[0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        b.step()
    for i, d in enumerate(dts):
        assert torch.equal(d.full_tensor(), params[i])
        assert int(b.state[d]["step"]) == 1
        for k, v in before[i].items():
            assert torch.equal(b.state[d][k].full_tensor(), v), k
    # a state dict that does not fit is refused whole
    saved = b.state_dict()
    saved["state"][1]["exp_avg_absmax"] = torch.zeros(3)
    with pytest.raises(ValueError):
        b.load_state_dict(saved)
    for k, v in before[0].items():
        assert torch.equal(b.state[dts[0]][k].full_tensor(), v), k


@pytest.mark.parametrize("cls", ["AdamWScheduleFree", "RAdamScheduleFree"])
@pytest.mark.parametrize("option", ["8bit", "8bit_companded"])
def test_schedule_free_8bit_state_equals_plain_tensor(mesh, cls, option):
    """Schedule-Free with 8-bit state on DTensor params: the layout rule of the other
    algorithms (z and v 8-bit for rows of whole blocks, float32 otherwise), the one-process
    bits given the same gradients, through eval()/train() and a param whose first gradient
    comes after its group stepped (its state made outside the plans)."""
    plain, dts = _pairs_8bit(mesh, torch.float32)
    opt_cls = getattr(ft, cls)
    rows = [p for p, r in zip(plain, ROWS_8BIT) if r]
    others = [p for p, r in zip(plain, ROWS_8BIT) if not r]
    a = opt_cls(
        [{"params": rows}, {"params": others, "state_dtype": None}], lr=0.05, state_dtype=option
    )
    b = opt_cls(
        [
            {"params": [d for d, r in zip(dts, ROWS_8BIT) if r]},
            {"params": [d for d, r in zip(dts, ROWS_8BIT) if not r]},
        ],
        lr=0.05,
        state_dtype=option,
    )

    def same():
        for p, d in zip(plain, dts):
            assert torch.equal(d.full_tensor(), p.detach())
            assert b.state[d].keys() == a.state[p].keys()
            for name, value in a.state[p].items():
                mine = b.state[d][name]
                mine = mine.full_tensor() if hasattr(mine, "full_tensor") else mine
                assert torch.equal(mine.reshape(value.shape), value), name

    for step in range(4):
        _grads_8bit(plain, dts, step)
        if step == 0:
            plain[1].grad = dts[1].grad = None  # joins its group at step 2
        a.step()
        b.step()
        if step == 2:
            a.eval()
            b.eval()
            same()
            a.train()
            b.train()
        same()
    codes = torch.uint8 if option == "8bit" else torch.int8
    for d, r in zip(dts, ROWS_8BIT):
        assert b.state[d]["z"].dtype == (codes if r else torch.float32)
        assert type(b.state[d]["z"]).__name__ == "DTensor"
        if r:
            assert type(b.state[d]["z_absmax"]).__name__ == "DTensor"


def test_clipping_switched_off_mid_run(mesh):
    plain, dt = _pair(mesh)
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=0.5)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=0.5)
    for _ in range(2):  # the second step runs on the inner groups the first one left
        a.step()
        b.step()
    a.param_groups[0]["max_grad_norm"] = None
    b.param_groups[0]["max_grad_norm"] = None
    before_a, before_b = plain.detach().clone(), dt.full_tensor().clone()
    a.step()
    b.step()
    assert b.last_grad_norm is None
    # The unclipped update of the third step is the same on both (to rounding).
    _close(dt.full_tensor() - before_b, plain.detach() - before_a)


def test_huge_finite_gradient_is_not_taken_for_nonfinite(mesh):
    plain, dt = _pair(mesh)
    plain.grad[0, 0] = 1e20  # its square overflows float32; the value itself is finite
    dt.grad._local_tensor[0, 0] = 1e20
    a = ft.AdamW([plain], lr=0.1, max_grad_norm=1.0)
    b = ft.AdamW([dt], lr=0.1, max_grad_norm=1.0)
    a.step()
    b.step()
    assert b.last_grad_norm == pytest.approx(1e20, rel=1e-6)
    _close(dt.full_tensor(), plain.detach())
    dt.grad._local_tensor[0, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]: a gradient holds NaN"):
        b.step()
