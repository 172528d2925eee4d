"""The timing protocol every benchmark scenario uses, and the machine it ran on.

Every implementation is a zero-argument callable doing one optimizer step. Each is warmed
up (page faults, lazily built state, the OpenMP team's start), then its number of calls
per sample is calibrated so that one sample lasts at least ``min_sample_s`` (timer
resolution and loop overhead then cost < 0.1%). Samples of all implementations are taken
round-robin, so drifting machine load hits them alike, and summarised by their median
(robust to a busy neighbour) and minimum. The load average is recorded before and after:
a fork-join step waits for its slowest thread, so numbers taken on a busy machine say so.
"""

import os
import platform
import statistics
import time
from typing import Dict, List

import numpy as np

__all__ = ["calibrate", "measure_interleaved", "environment", "load_average", "cpu_name"]

MIN_REPEATS = 5


def calibrate(fn, min_sample_s):
    """Calls per sample so that one sample of ``fn`` lasts at least ``min_sample_s`` seconds.

    Calls ``fn`` once first as its warm-up.
    """
    fn()
    number = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        elapsed = (time.perf_counter_ns() - t0) * 1e-9
        if elapsed >= min_sample_s:
            return number
        # Aim 20% past the target, growing at most x10 per round.
        grow = 1.2 * min_sample_s / elapsed if elapsed > 0 else 10.0
        number = max(number + 1, int(number * min(10.0, grow)))


def _sample(fn, number):
    """Wall and calling-thread CPU seconds per call of ``fn`` over ``number`` calls."""
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(number):
        fn()
    c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
    return (t1 - t0) * 1e-9 / number, (c1 - c0) * 1e-9 / number


def measure_interleaved(fns, repeats=MIN_REPEATS, min_sample_s=0.05):
    """Time each callable of the dict ``fns``, samples interleaved.

    Parameters
    ----------
    fns : dict of str to callable
        Implementations, each doing one step per call.
    repeats : int, default 5
        Samples per implementation (at least 5: a median of fewer is noise on a shared
        machine).
    min_sample_s : float, default 0.05
        Shortest sample, in seconds.

    Returns
    -------
    dict
        ``{name: {"median": s, "min": s, "samples": [s, ...], "thread_median": s,
        "calls_per_sample": k}}``, seconds per call; ``thread_median`` is the median CPU
        time of the calling thread (``time.thread_time``): what a call costs the caller
        itself, without the time it waited for other threads or other processes (a
        loaded machine inflates the wall clock, hardly this). Round ``r`` samples every
        implementation once before round ``r + 1`` starts.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS}, got {repeats}")
    numbers = {name: calibrate(fn, min_sample_s) for name, fn in fns.items()}
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    thread: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = _sample(fn, numbers[name])
            samples[name].append(wall)
            thread[name].append(cpu)
    return {
        name: {
            "median": statistics.median(s),
            "min": min(s),
            "samples": s,
            "thread_median": statistics.median(thread[name]),
            "calls_per_sample": numbers[name],
        }
        for name, s in samples.items()
    }


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_bytes():
    """Memory available to new allocations (``MemAvailable``), 4 GiB where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def environment(peer_versions=None):
    """What the numbers depend on: versions, CPU, backend, load average, time (UTC)."""
    import fusedadam as fa

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "nproc": os.cpu_count(),
        "fusedadam": fa.backend_info(),
        "peers": dict(peer_versions or {}),
        "loadavg_at_start": load_average(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
