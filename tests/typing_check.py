"""Checked by mypy (``.ci/run``), never run: the public API as a user's code types it.

Each ``assert_type`` fails the type check when a public signature loses its annotation
(``Any`` would not match) or changes its type.
"""

import pickle
from typing import Any, Dict, List

import numpy as np
from typing_extensions import assert_type

import fusedadam as fa
from fusedadam import schedules
from fusedadam._clip import clip_grad_norm
from fusedadam.minimize import OptimizeResult
from fusedadam.optim import AdaBelief, Adam, Adamax, AdamW, Lion, NAdam, RAdam
from fusedadam.optim import ADOPT, AdamAtan2
from fusedadam.sparse import SparseAdam

w = np.zeros(10, dtype=np.float32)
g = np.ones_like(w)

lr = schedules.warmup_cosine_decay(0.0, 1e-3, warmup_steps=10, decay_steps=100)
assert_type(lr, schedules.JoinSchedules)
assert_type(lr(1), float)
assert_type(lr.to_config(), Dict[str, Any])
assert_type(schedules.from_json(lr.to_json()), schedules.Schedule)

opt = fa.AdamW([w], lr=lr, weight_decay=1e-2, nonfinite="skip", backend="auto")
assert_type(opt, AdamW)
assert_type(opt.step([g]), None)
assert_type(opt.param_groups, List[Dict[str, Any]])
state = opt.state_dict()
assert_type(state, Dict[str, Any])
opt.load_state_dict(pickle.loads(pickle.dumps(state)))
flat = fa.flatten_state_dict(state)
assert_type(flat, Dict[str, np.ndarray])
opt.load_state_dict(fa.unflatten_state_dict(flat))

assert_type(Adam(w, lr=1e-3, amsgrad=True), Adam)
assert_type(Adamax([w], lr=2e-3), Adamax)
assert_type(NAdam([w], momentum_decay=4e-3), NAdam)
assert_type(RAdam([w], decoupled_weight_decay=True), RAdam)
assert_type(AdaBelief([w], eps_root=1e-16), AdaBelief)
assert_type(Lion([w], lr=schedules.CosineDecay(1e-4, 100)), Lion)
assert_type(ADOPT([w], clip_exp=None, decoupled_weight_decay=True), ADOPT)
assert_type(AdamAtan2([w], a=1.27, b=1.0), AdamAtan2)
assert_type(SparseAdam([np.zeros((4, 3))]), SparseAdam)
assert_type(clip_grad_norm([g], max_norm=1.0), float)

result = fa.minimize(lambda x: float(x @ x), np.ones(3), options={"lr": 0.1, "maxiter": 5})
assert_type(result, OptimizeResult)
