"""Timing protocol shared by the fusedadam benchmarks.

Every implementation is a zero-argument callable doing one optimizer step. Each is
warmed up, then its number of calls per sample is calibrated so one sample lasts at
least ``min_sample_s``; samples of all implementations are then taken round-robin
(interleaved, so drifting machine load hits them alike) and summarised as the median
and the minimum time per call over ``repeats`` samples.
"""
import statistics
import time

__all__ = ["calibrate", "measure_interleaved"]


def calibrate(fn, min_sample_s):
    """Calls per sample so that one sample of ``fn`` lasts at least ``min_sample_s``."""
    fn()  # warm-up: page faults, lazily built kernels, OpenMP team start
    number = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        elapsed = (time.perf_counter_ns() - t0) * 1e-9
        if elapsed >= min_sample_s:
            return number
        # Aim 20% past the target, at most x10 per round.
        grow = 1.2 * min_sample_s / elapsed if elapsed > 0 else 10.0
        number = max(number + 1, int(number * min(10.0, grow)))


def _sample(fn, number):
    t0 = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - t0) * 1e-9 / number


def measure_interleaved(fns, repeats=5, min_sample_s=0.05):
    """Time each callable of the dict ``fns``; returns ``{name: {median, min, samples}}``.

    Seconds per call. Samples are interleaved: round r times every implementation once
    before round r + 1 starts.
    """
    numbers = {name: calibrate(fn, min_sample_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_sample(fn, numbers[name]))
    return {
        name: {"median": statistics.median(s), "min": min(s), "samples": s,
               "calls_per_sample": numbers[name]}
        for name, s in samples.items()
    }
