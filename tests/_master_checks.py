"""Helpers shared by the tests of the bfloat16 master layouts (test_master_residual.py,
test_master_compact.py): bit comparisons, seeded bfloat16 runs, the exhaustive C proofs
in tools/ and the small MLP both train."""

import copy
import os
import shutil
import subprocess
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fusedadam as fa

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
ROOT = Path(__file__).resolve().parents[1]


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same_bits(x, y):
    np.testing.assert_array_equal(bits(x), bits(y))


def make(n, seed, dtype=BF16, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(F32).astype(dtype)


def run(cls, options, sizes, steps, master, backend="auto", seed=0):
    """``steps`` steps of ``cls`` on seeded bfloat16 params of ``sizes``: (optimizer,
    params)."""
    params = [make(n, seed + k) for k, n in enumerate(sizes)]
    opt = cls(params, master=master, backend=backend, **options)
    for t in range(steps):
        opt.step([make(n, 100 * t + k, F32, 0.5) for k, n in enumerate(sizes)])
    return opt, params


def assert_same_runs(a, b):
    """Two ``run`` results: the same param bits, state names and state bits."""
    for x, y in zip(a[1], b[1]):
        assert_same_bits(x, y)
        assert a[0].state[x].keys() == b[0].state[y].keys()
        for name, value in a[0].state[x].items():
            assert_same_bits(value, b[0].state[y][name])


def straight_and_resumed(master, state_dtype):
    """Two AdamW steps of two params, then two more: straight on, and in a new optimizer
    loaded from a deep copy of the state dict: (straight run, resumed run), as ``run``'s."""
    a = run(fa.AdamW, {"state_dtype": state_dtype}, [5000, 3], 2, master)
    sd = copy.deepcopy(a[0].state_dict())
    params = [p.copy() for p in a[1]]
    b = fa.AdamW(params, master=master, state_dtype=state_dtype)
    b.load_state_dict(sd)
    for t in range(2):
        grads = [make(p.size, 50 + t, F32) for p in params]
        a[0].step([g.copy() for g in grads])
        b.step(grads)
    return a, (b, params)


def zero_step_keeps_every_master(master, state_dtype, lows, decode, expected):
    """Every bfloat16 param with each of ``lows`` (the master's low part) through a step
    that leaves the master as it is (lr 0, zero gradients), on the compiled and the NumPy
    backend: the master after it, ``decode(param, low)``, is ``expected(master before)``
    wherever that was not NaN, and both backends leave the same bits."""
    hi = np.arange(1 << 16, dtype=np.uint16)
    out = []
    for backend in ("compiled", "numpy"):
        p = np.repeat(hi, lows.size).view(BF16)
        low = np.tile(lows, 1 << 16)
        opt = fa.Adam(
            [p], lr=0.0, master=master, backend=backend, nonfinite="ignore",
            state_dtype=state_dtype,
        )  # fmt: skip
        moment = {None: F32, "8bit": np.uint8, "8bit_companded": np.int8}[state_dtype]
        opt.state[p] = {
            "step": np.zeros((), np.int64),
            "exp_avg": np.zeros(p.shape, moment),
            "exp_avg_sq": np.zeros(p.shape, moment),
            "master_residual": low,
        }
        if state_dtype:
            for name in ("exp_avg_absmax", "exp_avg_sq_absmax"):
                opt.state[p][name] = np.zeros(p.size // 256, F32)
        before = decode(p, low)
        opt.step([np.zeros(p.shape, F32)])
        out.append((p, low))
        nan = np.isnan(before)
        assert_same_bits(decode(p, low)[~nan], expected(before)[~nan])
    assert_same_bits(out[0][0], out[1][0])
    assert_same_bits(out[0][1], out[1][1])


def exhaustive_proof(source, tmp_path, libs=()):
    """Build tools/``source`` against src/fusedadam's headers (-O3 -ffp-contract=off) and
    run it; its output is printed with the time taken. Asserts it exits 0 having printed
    PROOF OK; returns the finished process."""
    proof = ROOT / "tools" / source
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None or not proof.is_file():
        pytest.skip(f"needs a C compiler and the source tree's tools/{source}")
    exe = tmp_path / proof.stem
    subprocess.run(
        [cc, "-O3", "-ffp-contract=off", "-I", str(ROOT / "src" / "fusedadam"), str(proof),
         "-o", str(exe), *libs],
        check=True,
    )  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([str(exe)], capture_output=True, text=True)
    print(done.stdout, f"{time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stdout
    assert "PROOF OK" in done.stdout
    return done


def digits_problem(seed):
    """A synthetic 10-class problem (512 samples of 64 features) and the two bfloat16 layers
    of an MLP for it: (rng, x, labels, w1, w2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 64)).astype(F32)
    labels = (x[:, :10] @ rng.standard_normal((10, 10)).astype(F32)).argmax(1)
    w1 = (rng.standard_normal((64, 128)) / 8).astype(F32).astype(BF16)
    w2 = (rng.standard_normal((128, 10)) / 11).astype(F32).astype(BF16)
    return rng, x, labels, w1, w2


def minibatch_loss_and_grads(rng, x, labels, w1, w2):
    """A batch of 64 drawn from ``rng``; the forward and backward in float32 from the
    bfloat16 params (bf16_digits-style): (cross-entropy loss, [grad w1, grad w2])."""
    batch = rng.integers(0, 512, 64)
    xb, yb = x[batch], labels[batch]
    a1, a2 = w1.astype(F32), w2.astype(F32)
    h = np.maximum(xb @ a1, 0)
    z = h @ a2
    z -= z.max(1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(1, keepdims=True)
    loss = float(-np.log(prob[np.arange(64), yb]).mean())
    dz = prob
    dz[np.arange(64), yb] -= 1
    dz /= 64
    return loss, [xb.T @ ((dz @ a2.T) * (h > 0)), h.T @ dz]
