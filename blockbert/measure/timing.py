"""Timing, in one place: side-by-side calls and the clock of a training loop's steps.

- :func:`time_side_by_side`: every compared call runs in one process, in rotating order, after warm-up. Each call's
  times are kept; the report gives the median, the spread (interquartile range) and the ratio of medians to a
  baseline measured in the same run, so machine noise hits all models alike.
- :func:`time_in_order`: the phases of one step (forward + backward, then the optimizer's step), each timed, in
  their order, after warm-up (``blockbert plan``).
- :class:`StepClock`: the wall time between a training loop's optimizer steps and what each step counted (tokens,
  examples), for whole runs (:mod:`blockbert.measure.run_benchmark`).
- :func:`timing_summary`: median, IQR and the samples, for both.
- :class:`OthersLoad`: the share of the CPU time of our cores that other processes took while a measurement ran: a
  time measured beside them is too long (``blockbert plan`` times such a step again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch

OOM = "OOM"


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OthersLoad:
    """``with OthersLoad() as load: ...`` then ``load.share``: the share of the CPU time of the cores this process may
    run on (its affinity) that other processes took while the block ran. Not seen: a CPU quota (cgroup ``cpu.max``)
    shared with others within these cores."""

    def __enter__(self) -> OthersLoad:
        self.cores = usable_cores()
        self._start = self._clocks()
        self.share = 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = (end - start for end, start in zip(self._clocks(), self._start))
        self.share = max(0.0, (busy - own) / (wall * len(self.cores))) if wall > 0 else 0.0

    def _clocks(self) -> tuple[float, float, float]:
        """(wall seconds, busy CPU seconds of our cores, this process's CPU seconds)."""
        per_core = psutil.cpu_times(percpu=True)
        busy = sum(_busy(per_core[core]) for core in self.cores if core < len(per_core))
        own = psutil.Process().cpu_times()
        return time.perf_counter(), busy, own.user + own.system


def usable_cores() -> list[int]:
    """The cores this process may run on (all of them where the platform does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy(times) -> float:
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def time_side_by_side(
    calls: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float] | str]:
    """{label: [seconds per repeat] or "OOM"}; repeat r starts with the r-th call (rotation)."""
    times: dict[str, list[float] | str] = {label: [] for label in calls}
    labels = list(calls)
    for label in labels:
        for _ in range(warmup):
            _guarded(label, calls, times, device)
    for r in range(repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            if times[label] == OOM:
                continue
            start = time.perf_counter()
            if _guarded(label, calls, times, device):
                times[label].append(time.perf_counter() - start)
    return times


def time_in_order(phases: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int) -> dict:
    """{phase: median seconds}: the phases run in their order ``warmup + repeats`` times, the first ``warmup``
    untimed; each phase timed alone (the device synchronised around it)."""
    times: dict[str, list[float]] = {name: [] for name in phases}
    for r in range(warmup + repeats):
        for name, call in phases.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def _guarded(label, calls, times, device) -> bool:
    if times[label] == OOM:
        return False
    try:
        calls[label]()
        synchronize(device)
        return True
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not is_oom(err):
            raise
        times[label] = OOM
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False


class StepClock:
    """Wall time between optimizer steps (the first from :meth:`start`) and the units each step counted."""

    def __init__(self):
        self.times: list[float] = []
        self.units: list[int] = []
        self.pending, self.last = 0, None

    def start(self) -> None:
        self.last = time.perf_counter()

    def count(self, units: int) -> None:
        """A micro-batch's units (several join one step under gradient accumulation)."""
        self.pending += units

    def step(self) -> float:
        """An optimizer step ended: its time and units are recorded; returns the time it ends at."""
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.units.append(self.pending)
        self.last, self.pending = now, 0
        return now


def timing_summary(samples: list[float] | str) -> dict:
    if samples == OOM or not samples:
        status = OOM if samples == OOM else "no samples"
        return {"status": status, "median_s": None, "mean_s": None, "iqr_s": None, "times_s": []}
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {
        "status": "ok",
        "median_s": float(median),
        "mean_s": float(np.mean(samples)),  # the Hugging Face benchmark script's statistic (Table 5's source)
        "iqr_s": float(q3 - q1),
        "times_s": [float(t) for t in samples],
    }
