"""Same trajectories as torch.optim (skipped when torch is not installed): Adam, AdamW,
Adamax, NAdam (momentum_decay, decoupled weight decay) and RAdam (both sides of the
rectification switch at rho_t > 5, decoupled weight decay).

torch updates m with lerp (m + (1-b1)(g-m)) where fusedadam computes b1*m + (1-b1)*g, so
the two differ by rounding only: compared with a tolerance, over many steps.
"""

import numpy as np
import pytest

import fusedadam as fa

torch = pytest.importorskip("torch")

CASES = {
    "adam": (fa.Adam, "Adam", {}),
    "adam_l2_amsgrad": (fa.Adam, "Adam", {"weight_decay": 0.05, "amsgrad": True}),
    "adam_maximize": (fa.Adam, "Adam", {"maximize": True}),
    "adamw": (fa.AdamW, "AdamW", {"weight_decay": 0.1}),
    "adamw_amsgrad": (fa.AdamW, "AdamW", {"weight_decay": 0.1, "amsgrad": True}),
    "adamax": (fa.Adamax, "Adamax", {"weight_decay": 0.01}),
    "nadam": (fa.NAdam, "NAdam", {}),
    "nadam_l2_momentum_decay": (fa.NAdam, "NAdam", {"weight_decay": 0.05, "momentum_decay": 0.01}),
    "nadam_decoupled": (fa.NAdam, "NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "nadam_maximize": (fa.NAdam, "NAdam", {"maximize": True}),
    "radam": (fa.RAdam, "RAdam", {}),
    "radam_l2": (fa.RAdam, "RAdam", {"weight_decay": 0.05}),
    "radam_decoupled": (fa.RAdam, "RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "radam_maximize_fast_rectification": (
        fa.RAdam,
        "RAdam",
        {"maximize": True, "betas": (0.9, 0.9)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_optim(case, dtype):
    ours_cls, torch_name, options = CASES[case]
    rng = np.random.default_rng(0)
    shapes = [(17,), (4, 5)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [p.copy() for p in start]
    theirs = [torch.tensor(p.copy(), requires_grad=False) for p in start]
    opt = ours_cls(ours, lr=1e-2, **options)
    # torch keeps NAdam's mu_product and the step count in its default dtype: float64 here,
    # so that the float64 comparison is of the formulas, not of torch's float32 scalars.
    saved_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        topt = getattr(torch.optim, torch_name)(theirs, lr=1e-2, foreach=False, **options)
        for _ in range(100):
            grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
            opt.step(grads)
            for t, g in zip(theirs, grads):
                t.grad = torch.from_numpy(g.copy())
            topt.step()
    finally:
        torch.set_default_dtype(saved_dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.numpy(), rtol=tol, atol=tol)
