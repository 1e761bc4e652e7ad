"""Learning-rate schedules as pure functions of the step, so resumed runs match exactly.

MLPerf's DLRM schedule (the reference's ``LRPolicyScheduler``), for optimizer step s = 0, 1, ...
and t = s + 1 (the reference counts the steps from 1):

    warmup    t <  W:                   lr = base * t / W
    constant  W <= t < S:               lr = base
    decay     S <= t < S + K:           lr = end + (base - end) * ((K - (t - S)) / K) ** power
    after     t >= S + K:               lr = end

with W = ``warmup_steps``, S = ``decay_start``, K = ``decay_steps``, power 2 and end ``end_lr``
(MLPerf: 0). Two reference quirks are not copied: between warmup and decay it holds the last
warmup lr, base (W-1)/W, instead of base; and after the decay it holds its last decayed lr
(floored at 1e-7) instead of the end lr.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("constant", "mlperf")


@dataclass
class MLPerfSchedule:
    """Linear warmup, constant, then polynomial decay to ``end_lr`` (see the module doc).

    Args:
        warmup_steps: W (0: no warmup).
        decay_start: S, the step count where the decay starts (0 with decay_steps 0: never).
        decay_steps: K, the decay's length in steps (0: no decay).
        end_lr: the lr after the decay.
        power: the decay polynomial's degree (MLPerf: 2).

    Example:
        >>> s = MLPerfSchedule(warmup_steps=4, decay_start=6, decay_steps=2)
        >>> [s.lr(step, 1.0) for step in range(9)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.25, 0.0, 0.0]
    """

    warmup_steps: int = 0
    decay_start: int = 0
    decay_steps: int = 0
    end_lr: float = 0.0
    power: float = 2.0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "decay_start", "decay_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 0")
        if self.decay_steps and self.decay_start < self.warmup_steps:
            raise ValueError(f"decay_start = {self.decay_start} is before the end of the warmup "
                             f"(warmup_steps = {self.warmup_steps})")
        if self.end_lr < 0:
            raise ValueError(f"end_lr = {self.end_lr}: must be >= 0")

    def lr(self, step: int, base_lr: float) -> float:
        """The lr of optimizer step ``step`` (0-based) for a base lr ``base_lr``."""
        t = step + 1
        if t < self.warmup_steps:
            return base_lr * t / self.warmup_steps
        if not self.decay_steps or t < self.decay_start:
            return base_lr
        decayed = t - self.decay_start
        if decayed >= self.decay_steps:
            return self.end_lr
        remaining = (self.decay_steps - decayed) / self.decay_steps
        return self.end_lr + (base_lr - self.end_lr) * remaining ** self.power


def build_schedule(spec: dict[str, Any] | None) -> MLPerfSchedule | None:
    """A schedule from ``TrainConfig.lr_schedule``: None or ``{"kind": "constant"}`` -> None,
    ``{"kind": "mlperf", "warmup_steps": ..., ...}`` -> ``MLPerfSchedule``."""
    if not spec:
        return None
    spec = dict(spec)
    kind = spec.pop("kind", "mlperf")
    if kind == "constant":
        return None
    if kind != "mlperf":
        raise ValueError(f"lr schedule {kind!r}: expected one of {SCHEDULES}")
    try:
        return MLPerfSchedule(**spec)
    except TypeError as err:
        raise ValueError(f"lr schedule mlperf: {err}") from err


def schedule_spec(schedule: MLPerfSchedule) -> dict[str, Any]:
    return {"kind": "mlperf", **asdict(schedule)}
