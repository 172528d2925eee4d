"""fusedadam.torch inside the engines people scale with, each on 2 CPU processes (gloo).

Each test launches ``torchrun --standalone --nproc_per_node 2 tests/_engines_worker.py
SCENARIO`` (one thread per rank), which trains a tiny model inside the engine with
``fusedadam.torch.AdamW`` and with ``torch.optim.AdamW`` and resumes interrupted runs
from the engine's own checkpoints; the test then compares: loss curves and params equal
``torch.optim.AdamW``'s to rounding, resumed runs equal uninterrupted ones bit for bit.
The recipes are the ones docs/engines.md gives. A test whose engine is not installed
skips, unless ``FUSEDADAM_REQUIRE_ENGINES=1`` (as in CI), which makes it fail instead.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedadam.torch as ft  # noqa: E402
from fusedadam import reference  # noqa: E402

WORKER = Path(__file__).with_name("_engines_worker.py")
REQUIRE = os.environ.get("FUSEDADAM_REQUIRE_ENGINES") == "1"
TIMEOUT = 600  # seconds per torchrun launch: a hang fails the test, not the suite
GLOO_ABORT = "terminate called without an active exception"
LAUNCHES = 3  # tries of a launch whose rank aborted from C++ in gloo (see torchrun)

# 20-30 s a launch on an idle 2-core machine: off by default, run with -m slow (CI does).
pytestmark = pytest.mark.slow


def _needs(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing and REQUIRE:
        pytest.fail(f"FUSEDADAM_REQUIRE_ENGINES=1 but {', '.join(missing)} is not installed")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def torchrun(scenario, out, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        scenario,
        str(out),
    ]
    for attempt in range(LAUNCHES):
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"{' '.join(cmd)} timed out after {TIMEOUT} s\n{error.stderr!r:.4000}")
        # A gloo thread torn down unjoined aborts a rank from C++ ("terminate called without
        # an active exception"), seen in CI on the 2-core machine at start-up, once twice in a
        # row: the launch is tried up to LAUNCHES times, each such failure printed. Any other
        # failure (a Python error, a wrong result, a crash with another message) fails at once.
        last = attempt == LAUNCHES - 1
        if result.returncode == 0 or last or GLOO_ABORT not in result.stderr:
            break
        print(f"{' '.join(cmd)}: a rank aborted in C++; launching once more\n{result.stderr}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
        )
    return torch.load(Path(out) / f"{scenario}.pt", weights_only=False)


def close_params(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=atol, err_msg=k)


def equal_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_zero_redundancy_optimizer(tmp_path):
    r = torchrun("zero", tmp_path)
    np.testing.assert_allclose(r["fused"]["losses"], r["torch"]["losses"], rtol=1e-6)
    close_params(r["fused"]["params"], r["torch"]["params"], atol=1e-6)
    assert r["fused"]["owned"] == r["torch"]["owned"] < 6  # rank 0 steps only its share
    # consolidate_state_dict gathers every rank's share: all 6 params, torch's layout.
    for name in ("fused", "torch"):
        full = r[name + "_consolidated"]
        assert sorted(full["state"]) == list(range(6))
        assert {"step", "exp_avg", "exp_avg_sq"} <= set(full["state"][0])
        resumed = r[name + "_resumed"]
        assert resumed["losses"] == r[name]["losses"][3:]
        equal_params(resumed["params"], r[name]["params"])
    # 8-bit moments: the consolidated state holds the uint8 codes and their scales; resumed
    # bit for bit.
    full = r["fused8bit_consolidated"]["state"]
    assert sorted(full) == list(range(6))
    dtypes = {str(st["exp_avg"].dtype) for st in full.values()}
    assert dtypes == {"torch.uint8", "torch.float32"}  # the big weight 8-bit, the rest not
    assert any("exp_avg_absmax" in st for st in full.values())
    assert r["fused8bit_resumed"]["losses"] == r["fused8bit"]["losses"][3:]
    equal_params(r["fused8bit_resumed"]["params"], r["fused8bit"]["params"])


def test_hf_trainer(tmp_path):
    _needs("transformers", "accelerate")
    r = torchrun("hf", tmp_path)
    assert r["fused_cls"]["optimizer"] == r["fused_obj"]["optimizer"] == "fusedadam.torch.AdamW"
    assert r["torch_cls"]["optimizer"] == "torch.optim.adamw.AdamW"
    for fused, ref in (("fused_cls", "torch_cls"), ("fused_obj", "torch_obj")):
        # bf16 autocast forward: rounding differences of the params show more in the loss.
        np.testing.assert_allclose(r[fused]["losses"], r[ref]["losses"], rtol=1e-5)
        close_params(r[fused]["params"], r[ref]["params"], atol=2e-5)
    for name in ("fused_cls", "torch_cls"):
        resumed = r[name + "_resumed"]
        assert resumed["losses"] == r[name]["losses"]  # the first 3 come from the checkpoint
        equal_params(resumed["params"], r[name]["params"])


def test_deepspeed_zero2_cpu_offload(tmp_path):
    _needs("deepspeed")
    r = torchrun("deepspeed", tmp_path)
    assert r["fused"]["optimizer"] == "fusedadam.torch.AdamW"
    np.testing.assert_allclose(r["fused"]["losses"], r["torch"]["losses"], rtol=1e-5)
    for a, b in zip(r["fused"]["masters"], r["torch"]["masters"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)
    close_params(r["fused"]["params"], r["torch"]["params"], atol=1e-2)  # bf16 model copy
    for name in ("fused", "torch"):
        resumed = r[name + "_resumed"]
        assert resumed["losses"] == r[name]["losses"][3:]
        for a, b in zip(resumed["masters"], r[name]["masters"]):
            assert torch.equal(a, b)
        equal_params(resumed["params"], r[name]["params"])
    # 8-bit moments on the offloaded partitions: uint8 codes, per-block scales, resumed exact;
    # the loss curve near float32 AdamW's (quantized moments: not to rounding).
    q8, resumed = r["fused8bit"], r["fused8bit_resumed"]
    assert q8["state_dtypes"]["exp_avg"] == "torch.uint8"
    assert q8["state_dtypes"]["exp_avg_absmax"] == "torch.float32"
    np.testing.assert_allclose(q8["losses"], r["torch128"]["losses"], rtol=2e-2)
    assert resumed["losses"] == q8["losses"][3:]
    for a, b in zip(resumed["masters"], q8["masters"]):
        assert torch.equal(a, b)


def test_lightning_bf16_mixed(tmp_path):
    _needs("lightning")
    r = torchrun("lightning", tmp_path)
    assert "does not allow for gradient clipping" in r["refused"]
    assert r["fused"]["last_grad_norm"] > 0.1  # above max_grad_norm: clipping acted
    np.testing.assert_allclose(r["fused"]["losses"], r["torch"]["losses"], rtol=1e-5)
    close_params(r["fused"]["params"], r["torch"]["params"], atol=1e-6)
    assert r["fused_resumed"]["losses"] == r["fused"]["losses"][3:]
    equal_params(r["fused_resumed"]["params"], r["fused"]["params"])


def test_fsdp2_fully_shard(tmp_path):
    r = torchrun("fsdp2", tmp_path)
    for tag in ("noclip", "clip"):
        single, fsdp = r[f"single_{tag}"], r[f"fsdp_{tag}"]
        # 2 ranks of FSDP2 (uneven shards) == one process on the whole batch, to rounding;
        # with clipping, only a global norm gives that (each rank sees half the gradient).
        np.testing.assert_allclose(fsdp["losses"], single["losses"], rtol=1e-6)
        close_params(fsdp["params"], single["params"], atol=1e-6)
        close_params(fsdp["params"], r[f"fsdp_torch_{tag}"]["params"], atol=1e-6)
        assert fsdp["state_types"] == {
            "step": "Tensor",
            "exp_avg": "DTensor",
            "exp_avg_sq": "DTensor",
        }
        if tag == "clip":
            assert fsdp["norms"][-1] > 0.1  # above max_grad_norm: clipping acted
            np.testing.assert_allclose(fsdp["norms"], single["norms"], rtol=1e-6)
        # DCP checkpoint at step 3, resumed at 2 ranks: bit for bit.
        resumed = r[f"fsdp_{tag}_resumed"]
        assert resumed["losses"] == fsdp["losses"][3:]
        equal_params(resumed["params"], fsdp["params"])
    # HSDP (a 2-D mesh, Replicate on one dimension, Shard on the other) equals it too.
    hsdp = r["hsdp_clip"]
    assert hsdp["placements"] == "(Replicate(), Shard(dim=0))"
    np.testing.assert_allclose(hsdp["losses"], r["single_clip"]["losses"], rtol=1e-6)
    close_params(hsdp["params"], r["single_clip"]["params"], atol=1e-6)
    # Clipped before the step by torch.nn.utils.clip_grad_norm_ instead: the same run.
    outside = r["fsdp_clip_outside"]
    np.testing.assert_allclose(outside["losses"], r["single_clip"]["losses"], rtol=1e-6)
    close_params(outside["params"], r["single_clip"]["params"], atol=1e-6)
    nonfinite = r["nonfinite"]
    for outcome in nonfinite["error"]["outcomes"]:
        assert outcome.startswith("raised: param_groups[0]: a gradient holds NaN or inf")
    assert nonfinite["skip"]["outcomes"] == ["stepped, skipped_steps=1"] * 2
    for policy in ("error", "skip"):
        assert nonfinite[policy]["unchanged"] and nonfinite[policy]["state"] == 0
    # A one-process state dict loaded into the FSDP2 optimizer: each rank cut its shard.
    saved = r["single_clip"]["state_dict"]["state"]
    assert sorted(r["plain_loaded"]) == sorted(saved) == [0, 1, 2, 3]
    for i, entry in saved.items():
        for k, v in entry.items():
            assert torch.equal(r["plain_loaded"][i][k].float(), v.float()), (i, k)
    # The same checkpoints resumed in one process (no FSDP): DCP reshards the state.
    r1 = torchrun("fsdp2_resume1", tmp_path, nproc=1)
    for tag in ("noclip", "clip"):
        np.testing.assert_allclose(r1[tag]["losses"], r[f"fsdp_{tag}"]["losses"][3:], rtol=1e-6)
        close_params(r1[tag]["params"], r[f"fsdp_{tag}"]["params"], atol=1e-6)


def test_fsdp2_bfloat16_params_with_residual_master(tmp_path):
    """bfloat16 params under fully_shard on 2 ranks, master="residual": the residual is a
    DTensor; a DCP checkpoint at step 3 resumes at 2 ranks bit for bit, and in one process
    (DCP reshards the residuals to whole tensors) its masters decode to the saved ones."""
    r = torchrun("fsdp2_residual", tmp_path)
    fsdp, resumed = r["fsdp"], r["resumed"]
    assert fsdp["state_types"] == {
        "step": "Tensor",
        "exp_avg": "DTensor",
        "exp_avg_sq": "DTensor",
        "master_residual": "DTensor",
    }
    assert fsdp["losses"][-1] < fsdp["losses"][0]
    # Its state dict loaded by an optimizer over Replicate copies: residuals all-gathered.
    for k, master in fsdp["final_masters"].items():
        assert torch.equal(
            fsdp["replicated_masters"][k].view(torch.int32), master.view(torch.int32)
        )
    for k, master in fsdp["saved_masters"].items():
        assert torch.equal(resumed["loaded_masters"][k].view(torch.int32), master.view(torch.int32))
    assert resumed["losses"] == fsdp["losses"][3:]
    for k, p in fsdp["params"].items():
        assert torch.equal(resumed["params"][k].view(torch.int16), p.view(torch.int16)), k
    r1 = torchrun("fsdp2_residual_resume1", tmp_path, nproc=1)
    for k, master in fsdp["saved_masters"].items():
        assert torch.equal(r1["loaded_masters"][k].view(torch.int32), master.view(torch.int32))
    # One process on the whole batch from there: the 2-rank run to bfloat16 rounding.
    np.testing.assert_allclose(r1["losses"], fsdp["losses"][3:], rtol=1e-3)
    close_params(
        {k: v.float() for k, v in r1["params"].items()},
        {k: v.float() for k, v in fsdp["params"].items()},
        atol=2**-8,
    )


def test_fsdp2_8bit_state(tmp_path):
    """state_dtype="8bit" under fully_shard on 2 ranks. Rows of whole 256-element blocks
    (a 33-row weight split 17/16, a 1-row one that leaves rank 1 no rows) keep 8-bit
    moments whose blocks are the one-process blocks: fed the same gradients, params,
    codes and scales are the one-process bits. A 1-d param keeps float32 moments under
    FSDP2. A DCP checkpoint resumes at 2 ranks bit for bit and reshards exactly to one
    rank's fully_shard; a plain one-process model, which keeps the 1-d param in 8 bits,
    is refused by DCP's default planner and loads with ft.LoadPlanner, both ways;
    the full state dict loads there as it is. Schedule-Free gives the one-process bits."""
    r = torchrun("fsdp2_8bit", tmp_path)
    for option, codes in (("8bit", torch.uint8), ("8bit_companded", torch.int8)):
        same = r[f"same_{option}"]
        assert same["absmax_type"] == "DTensor" and same["absmax_shape"] == (33, 1)
        assert same["local_rows_w2"] == 1  # rank 0 holds the row; rank 1 none
        equal_params(same["fsdp"]["params"], same["plain"]["params"])
        for name, state in same["plain"]["state"].items():
            fsdp_state = same["fsdp"]["state"][name]
            assert fsdp_state.keys() == state.keys(), name
            for k, v in state.items():
                assert torch.equal(fsdp_state[k], v), (option, name, k)
            want = codes if name in ("w1", "w2") else torch.float32
            assert state["exp_avg"].dtype == want, name
    # Schedule-Free: the same layout rule, the one-process bits, in eval and train mode.
    for cls in ("AdamWScheduleFree", "RAdamScheduleFree"):
        same = r[f"same_{cls}"]
        equal_params(same["fsdp"]["params"], same["plain"]["params"])
        for mode in ("eval", "train"):
            plain_params, fsdp_params = same["modes"][mode]
            equal_params(fsdp_params, plain_params)
        for name, state in same["plain"]["state"].items():
            assert same["fsdp"]["state"][name].keys() == state.keys(), (cls, name)
            for k, v in state.items():
                assert torch.equal(same["fsdp"]["state"][name][k], v), (cls, name, k)
            want = torch.uint8 if name in ("w1", "w2") else torch.float32
            assert state["z"].dtype == want, (cls, name)
        assert same["absmax_type"] == "DTensor" and same["absmax_shape"] == (33, 1)
    # Clipped by the norm over the mesh (summed in another order): equal to rounding.
    clip = r["same_clip"]
    close_params(clip["fsdp"]["params"], clip["plain"]["params"], atol=1e-6)
    # Training on each rank's batch against one process on the whole batch (which keeps
    # the 1-d param in 8 bits): close; the DCP checkpoint resumed at 2 ranks: bit for bit.
    fsdp, single, resumed = r["fsdp"], r["single"], r["resumed"]
    np.testing.assert_allclose(fsdp["losses"], single["losses"], rtol=1e-5)
    for name, state in fsdp["saved_state"].items():
        for k, v in state.items():
            assert torch.equal(resumed["loaded_state"][name][k], v), (name, k)
    assert resumed["losses"] == fsdp["losses"][3:]
    equal_params(resumed["params"], fsdp["params"])
    assert fsdp["absmax"] == ("DTensor", "(Shard(dim=0),)")
    hsdp = r["hsdp"]
    assert hsdp["absmax"] == ("DTensor", "(Replicate(), Shard(dim=0))")
    np.testing.assert_allclose(hsdp["losses"], fsdp["losses"], rtol=1e-6)
    close_params(hsdp["params"], fsdp["params"], atol=1e-6)
    # The one-process checkpoint (the 1-d param in 8 bits) at 2 ranks through
    # ft.LoadPlanner: rows of whole blocks exactly, the 1-d param's codes dequantized to
    # the float32 moments FSDP2 keeps (exact), and it trains on.
    from_plain, saved = r["from_plain"], single["saved_state"]
    for name in ("w1", "w2"):
        for k, v in saved[name].items():
            assert torch.equal(from_plain["loaded_state"][name][k], v), (name, k)
    for k, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        want = reference.q8_dequantize(
            saved["gain"][k].numpy(), saved["gain"][k + "_absmax"].numpy(), signed
        )
        assert torch.equal(from_plain["loaded_state"]["gain"][k], torch.from_numpy(want))
    assert "exp_avg_absmax" not in from_plain["loaded_state"]["gain"]
    np.testing.assert_allclose(from_plain["losses"], single["losses"][3:], rtol=1e-4)
    # DCP's default planner stops at the marker of the 1-d param's float32 moments
    missing = "Missing key in checkpoint state_dict: optim.state.gain.dtensor_float32_moments"
    assert missing in r["from_plain_default"]
    nonfinite = r["nonfinite"]
    assert nonfinite["unchanged"]
    for outcome in nonfinite["outcomes"]:
        assert outcome.startswith("raised: param_groups[0]: a gradient holds NaN or inf")
    # One rank: fully_shard on a 1-rank mesh loads the checkpoint exactly and trains on.
    r1 = torchrun("fsdp2_8bit_resume1", tmp_path, nproc=1)
    for name, state in fsdp["saved_state"].items():
        for k, v in state.items():
            assert torch.equal(r1["fsdp1"]["loaded_state"][name][k], v), (name, k)
    np.testing.assert_allclose(r1["fsdp1"]["losses"], fsdp["losses"][3:], rtol=1e-6)
    close_params(r1["fsdp1"]["params"], fsdp["params"], atol=1e-6)
    assert "Missing key in checkpoint state_dict: optim.state.gain.exp_avg_absmax" in r1["plain"]
    # ft.LoadPlanner loads it: rows of whole blocks exactly, the 1-d param's float32
    # moments quantized as the kernel quantizes them; it trains on.
    loaded = r1["plain_planner"]["loaded_state"]
    for name in ("w1", "w2"):
        for k, v in fsdp["saved_state"][name].items():
            assert torch.equal(loaded[name][k], v), (name, k)
    for k, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        codes, absmax = reference.q8_quantize(fsdp["saved_state"]["gain"][k].numpy(), signed)
        assert torch.equal(loaded["gain"][k], torch.from_numpy(codes))
        assert torch.equal(loaded["gain"][k + "_absmax"], torch.from_numpy(absmax))
    np.testing.assert_allclose(r1["plain_planner"]["losses"], fsdp["losses"][3:], rtol=1e-4)
    # The full (unsharded) state dict in a plain one-process optimizer: scales of one row
    # per param row, the 1-d param's float32 moments quantized (convert=True).
    full = r["full_state_dict"]
    names = list(fsdp["params"])  # the model's params, in order
    params = {n: torch.nn.Parameter(v.clone()) for n, v in fsdp["params"].items()}
    saved = {
        "state": {names.index(n): st for n, st in full["state"].items()},
        "param_groups": [
            {**g, "params": [names.index(n) for n in g["params"]]} for g in full["param_groups"]
        ],
    }
    # Saved under the same state_dtype by the other kind of param: no convert=True needed.
    opt = ft.AdamW(params.values(), lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(saved)
    for name in ("w1", "w2"):
        st = opt.state[params[name]]
        for k, v in fsdp["saved_state"][name].items():
            assert torch.equal(st[k], v), (name, k)
    assert opt.state[params["gain"]]["exp_avg"].dtype == torch.uint8
    for k in ("exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"):
        assert torch.equal(opt.state[params["gain"]][k], loaded["gain"][k]), k
