"""Per-component timers: synchronous wall clock on CPU, CUDA events on GPUs.

On CPU every PyTorch op runs to completion before returning, so ``time.perf_counter`` around a
section measures it. On CUDA kernels run asynchronously: each section records a start and an end
``torch.cuda.Event`` on the current stream and ``end_step`` synchronizes once and reads the
elapsed times, so timing does not insert a synchronization between components.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class ComponentTimer:
    """Accumulates milliseconds per named section, per step, per trial.

    Example:
        >>> timer = ComponentTimer(torch.device("cpu"))
        >>> with timer.section("matmul"):
        ...     _ = torch.randn(64, 64) @ torch.randn(64, 64)
        >>> timer.end_step(); timer.end_trial()
        >>> sorted(timer.summary())
        ['matmul']
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, object, object]] = []
        self._step: dict[str, float] = defaultdict(float)
        self._trial: dict[str, list[float]] = defaultdict(list)
        self.trials: list[dict[str, float]] = []  # per trial: mean ms per step per section

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._step[name] += (time.perf_counter() - t0) * 1e3

    def end_step(self) -> dict[str, float]:
        """Close a step; returns its ms per section."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                self._step[name] += start.elapsed_time(end)  # type: ignore[attr-defined]
            self._pending.clear()
        step = dict(self._step)
        for name, ms in step.items():
            self._trial[name].append(ms)
        self._step.clear()
        return step

    def discard(self) -> None:
        """Forget the current trial's steps (warm-up)."""
        self._trial.clear()

    def end_trial(self) -> None:
        self.trials.append({name: statistics.fmean(v) for name, v in self._trial.items()})
        self._trial.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per section: median, min and max over trials of the per-step mean ms."""
        names = list(dict.fromkeys(n for trial in self.trials for n in trial))
        out = {}
        for name in names:
            values = [trial.get(name, 0.0) for trial in self.trials]
            out[name] = {"ms": statistics.median(values), "ms_min": min(values),
                         "ms_max": max(values)}
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_min_max(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1,
              device: torch.device | None = None, calls: int = 1) -> float:
    """Median wall-clock ms of one call of ``fn``, over ``repeats`` timings after ``warmup``
    untimed calls. On CPU each call has finished when it returns. On CUDA (``device``) the
    clock is read after a synchronization, and each timing covers ``calls`` back-to-back calls
    (divided out), so a short kernel is timed by its run, not by the launch and the sync.
    (Not ``dlrm.timing.synchronized_clock``: its device check adds ~0.5 us inside every timed
    interval, a tenth of the smallest CPU layers' time.)"""
    cuda = device is not None and device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e3
