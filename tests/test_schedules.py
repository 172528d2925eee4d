"""Learning-rate schedules: values, composition, validation, and checkpoint round trips."""

import math
import pickle

import numpy as np
import pytest

import fusedadam as fa
from fusedadam import schedules as S
from conftest import BACKENDS

ALL = [
    S.Constant(1e-3),
    S.StepDecay(1e-2, step_size=3, gamma=0.5),
    S.ExponentialDecay(1e-2, 0.9, transition_steps=2, staircase=True, end_value=1e-3),
    S.LinearDecay(1e-2, 1e-4, decay_steps=7),
    S.CosineDecay(1e-2, decay_steps=9, end_value=1e-4),
    S.LinearWarmup(0.0, 1e-2, warmup_steps=4),
    S.OneCycle(1e-2, total_steps=20),
    S.warmup_cosine_decay(0.0, 1e-2, warmup_steps=3, decay_steps=12),
]


def test_values_follow_the_documented_formulas():
    # t is the optimizer's step number; count = t - 1 steps were taken before it.
    assert S.Constant(0.5)(1) == S.Constant(0.5)(10**9) == 0.5
    step = S.StepDecay(1.0, step_size=3, gamma=0.5)
    assert [step(t) for t in range(1, 8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    exp = S.ExponentialDecay(1.0, 0.5, transition_steps=2)
    assert exp(1) == 1.0 and exp(3) == 0.5 and exp(2) == pytest.approx(0.5**0.5)
    floor = S.ExponentialDecay(1.0, 0.5, end_value=0.2)
    assert floor(3) == 0.25 and floor(4) == 0.2 and floor(100) == 0.2
    lin = S.LinearDecay(1.0, 0.0, decay_steps=4)
    assert [lin(t) for t in range(1, 7)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    cos = S.CosineDecay(2.0, decay_steps=4, end_value=1.0)
    assert cos(1) == 2.0 and cos(3) == pytest.approx(1.5) and cos(5) == cos(50) == 1.0
    warm = S.LinearWarmup(0.0, 1.0, warmup_steps=4)
    assert [warm(t) for t in range(1, 7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_join_starts_each_schedule_at_its_own_count_zero():
    join = S.JoinSchedules([S.Constant(3.0), S.LinearDecay(1.0, 0.0, 2), S.Constant(7.0)], [2, 4])
    assert [join(t) for t in range(1, 7)] == [3.0, 3.0, 1.0, 0.5, 7.0, 7.0]
    wc = S.warmup_cosine_decay(0.0, 1.0, warmup_steps=2, decay_steps=6, end_value=0.1)
    assert [wc(t) for t in (1, 2, 3)] == [0.0, 0.5, 1.0]
    assert wc(7) == pytest.approx(0.1) and wc(1000) == pytest.approx(0.1)


def test_one_cycle_rises_to_the_peak_then_falls_to_the_final_rate():
    sched = S.OneCycle(1.0, total_steps=10, pct_start=0.3, div_factor=10, final_div_factor=100)
    values = [sched(t) for t in range(1, 12)]
    assert values[0] == pytest.approx(0.1)
    assert max(values) == values[3] == 1.0  # count 3 = round(0.3 * 10)
    assert values[10] == pytest.approx(0.1 / 100)  # count 10 = total_steps
    assert all(a <= b for a, b in zip(values[:4], values[1:4]))
    assert all(a >= b for a, b in zip(values[3:], values[4:]))


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_pickle_json_repr_round_trip(sched):
    assert pickle.loads(pickle.dumps(sched)) == sched
    again = S.from_json(sched.to_json())
    assert again == sched and repr(again) == repr(sched)
    assert [again(t) for t in range(1, 30)] == [sched(t) for t in range(1, 30)]


def test_schedule_state_dict_round_trips_through_npz_and_pickle(tmp_path):
    sched = S.warmup_cosine_decay(0.0, 1e-2, warmup_steps=3, decay_steps=12)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(33).astype(np.float32)
    grads = [rng.standard_normal(33).astype(np.float32) for _ in range(10)]

    ref = fa.AdamW(w.copy(), lr=sched)
    ref_w = ref.param_groups[0]["params"][0]
    for g in grads:
        ref.step(g)

    first = fa.AdamW(w.copy(), lr=sched)
    for g in grads[:5]:
        first.step(g)
    np.savez(tmp_path / "ckpt.npz", **fa.flatten_state_dict(first.state_dict()))
    pickled = pickle.loads(pickle.dumps(first.state_dict()))

    for saved in (fa.unflatten_state_dict(np.load(tmp_path / "ckpt.npz")), pickled):
        resumed_w = first.param_groups[0]["params"][0].copy()
        resumed = fa.AdamW(resumed_w, lr=1.0)  # the checkpoint restores the schedule
        resumed.load_state_dict(saved)
        assert resumed.param_groups[0]["lr"] == sched
        for g in grads[5:]:
            resumed.step(g)
        np.testing.assert_array_equal(resumed_w, ref_w)


def test_a_lambda_still_cannot_go_into_an_npz():
    opt = fa.Adam(np.zeros(3), lr=lambda t: 1e-3)
    with pytest.raises(TypeError, match="fusedadam.schedules"):
        fa.flatten_state_dict(opt.state_dict())


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: S.Constant(-1.0), ValueError),
        (lambda: S.Constant(math.nan), ValueError),
        (lambda: S.Constant("1e-3"), TypeError),
        (lambda: S.StepDecay(1.0, step_size=0), ValueError),
        (lambda: S.CosineDecay(1.0, decay_steps=2.5), TypeError),
        (lambda: S.OneCycle(1.0, 10, pct_start=1.0), ValueError),
        (lambda: S.JoinSchedules([S.Constant(1.0)], [3]), ValueError),
        (lambda: S.JoinSchedules([S.Constant(1.0), lambda t: 1.0], [3]), TypeError),
        (lambda: S.JoinSchedules([S.Constant(1.0)] * 3, [4, 4]), ValueError),
        (lambda: S.warmup_cosine_decay(0.0, 1.0, 10, 10), ValueError),
        (lambda: S.from_config({"type": "Nope"}), ValueError),
    ],
)
def test_invalid_arguments_are_rejected(make, error):
    with pytest.raises(error):
        make()


@pytest.mark.parametrize("t, error", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_step_numbers_start_at_one(t, error):
    with pytest.raises(error):
        S.Constant(1.0)(t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_last_lr_is_the_rate_of_the_next_step(backend):
    """torch users read the current rate from the scheduler's get_last_lr(): the optimizer
    gives the rate each group's next step uses (a float lr as is, a schedule at t + 1)."""
    p, q = np.ones(3), np.ones(2)
    schedule = fa.schedules.warmup_cosine_decay(0.0, 1e-2, 4, 20)
    opt = fa.Adam([{"params": [p], "lr": schedule}, {"params": [q], "lr": 0.5}], backend=backend)
    assert opt.get_last_lr() == [schedule(1), 0.5]
    for t in range(1, 6):
        opt.step([np.ones(3), np.ones(2)])
        assert opt.get_last_lr() == [schedule(t + 1), 0.5]
    assert opt.param_groups[0]["lr"] is schedule
