"""A torch tensor given to the NumPy optimizers: a TypeError that names fusedadam.torch,
raised before anything is written."""

import numpy as np
import pytest

import fusedadam as fa

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("make", [
    lambda m: fa.AdamW(m.parameters()),
    lambda m: fa.Adam([m.weight]),
    lambda m: fa.Lion([{"params": list(m.parameters())}]),
], ids=["parameters()", "list", "group"])  # fmt: skip
def test_tensor_params_name_the_torch_front_end(make):
    model = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match=r"fusedadam\.torch"):
        make(model)


@pytest.mark.parametrize("grads", [
    lambda: torch.zeros(64),
    lambda: [torch.zeros(64)],
    lambda: [np.zeros(64, np.float32), torch.zeros(2, 3)],
], ids=["tensor", "list", "second"])  # fmt: skip
def test_tensor_grads_name_the_torch_front_end_and_change_nothing(grads):
    w, w2 = np.ones(64, np.float32), np.ones((2, 3), np.float32)
    opt = fa.Adam([w, w2])
    opt.step([np.ones_like(w), np.ones_like(w2)])
    before = [w.copy(), w2.copy()]
    g = grads()
    if isinstance(g, list) and len(g) == 1:
        g = g + [np.zeros((2, 3), np.float32)]
    with pytest.raises(TypeError, match=r"fusedadam\.torch"):
        opt.step(g)
    np.testing.assert_array_equal(w, before[0])
    np.testing.assert_array_equal(w2, before[1])
    assert int(opt.state[w]["step"]) == 1
