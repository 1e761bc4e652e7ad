"""TensorBoard scalars of training runs, written with ``torch.utils.tensorboard`` from the
training loop's progress events.

``TensorBoardWriter(log_dir)`` is a progress callback (``dlrm.training.loop.run_loop``
events). Per run it writes, against the optimizer step:

- ``train/loss`` (the loop's windowed training loss), ``train/lr`` and ``train/samples_per_s``
  (samples over wall-clock time since the previous point, evaluations excluded) every
  ``every`` steps;
- ``val/auc``, ``val/logloss``, ``val/accuracy`` (and ``val/optimal_auc`` on planted data) at
  every evaluation.

Several runs share one writer: events that carry a ``run`` label (``dlrm compare`` adds
``"dcn adagrad seed 1"``; a tuner would add its trial) go to ``log_dir/<label>`` so TensorBoard
overlays them; unlabelled events go to ``log_dir`` itself. ``add_hparams(run, hparams,
metrics)`` records a run's settings beside its final metrics for TensorBoard's HParams tab,
for a search (``dlrm tune``) to call once per trial. A resumed run (``start`` at step k > 0)
purges the points after step k that the killed run had written, so its curves continue
without a fold.

Example:
    >>> with TensorBoardWriter("runs/tb") as tb:  # doctest: +SKIP
    ...     train(kind, model_config, data, config, run_dir, progress=tb)
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from dlrm.extras import require

EVAL_METRICS = ("auc", "logloss", "accuracy", "optimal_auc")


def _summary_writer_class():
    return require("torch.utils.tensorboard", "--tensorboard", "tensorboard").SummaryWriter


def run_folder(label: str) -> str:
    """A folder name for a run label: ``"dcn adagrad seed 1"`` -> ``"dcn-adagrad-seed-1"``."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", label).strip("-") or "run"


class _Run:
    """One run's SummaryWriter and its rate clock."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.last_time: float | None = None
        self.samples = 0


class TensorBoardWriter:
    """Writes the scalars of the runs whose progress events it receives (see the module doc).

    Args:
        log_dir: the TensorBoard log folder (created; event files are added, none replaced).
        every: write the training scalars every this many steps (evaluations: always).
        flush_secs: how often the event files are flushed while training.
    """

    def __init__(self, log_dir: str | Path, every: int = 10, flush_secs: int = 30) -> None:
        if every < 1:
            raise ValueError(f"every = {every}: must be at least 1")
        self.summary_writer = _summary_writer_class()
        self.log_dir = Path(log_dir)
        self.every, self.flush_secs = every, flush_secs
        self.runs: dict[str, _Run] = {}

    def _folder(self, run: str | None) -> Path:
        return self.log_dir / run_folder(run) if run else self.log_dir

    def _open(self, run: str | None, purge_step: int | None = None) -> _Run:
        key = run or ""
        if key in self.runs:
            self.runs[key].writer.close()
        self.runs[key] = _Run(self.summary_writer(
            log_dir=str(self._folder(run)), purge_step=purge_step, flush_secs=self.flush_secs))
        return self.runs[key]

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        run = event.get("run")
        if kind == "start":
            # a resumed run (start at step k > 0) writes from k + 1: drop what was written there
            state = self._open(run, purge_step=event["step"] + 1 if event["step"] else None)
            state.last_time = time.perf_counter()
            return
        if kind not in ("step", "eval_start", "eval", "end"):
            return  # e.g. "memory", "plan": not scalars
        state = self.runs.get(run or "") or self._open(run)
        w = state.writer
        if kind == "step":
            step = event["step"]
            state.samples += event["samples"]
            if step % self.every:
                return
            now = time.perf_counter()
            w.add_scalar("train/loss", event["loss"], step)
            if "lr" in event:
                w.add_scalar("train/lr", event["lr"], step)
            if state.last_time is not None and now > state.last_time:
                w.add_scalar("train/samples_per_s", state.samples / (now - state.last_time),
                             step)
            state.last_time, state.samples = now, 0
        elif kind == "eval_start":
            state.last_time = None  # the evaluation's time is not training time
        elif kind == "eval":
            for name in EVAL_METRICS:
                if name in event:
                    w.add_scalar(f"{event.get('split', 'val')}/{name}", event[name],
                                 event["step"])
            w.flush()
            state.last_time, state.samples = time.perf_counter(), 0
        elif kind == "end":
            w.flush()

    def add_hparams(self, run: str | None, hparams: dict[str, Any],
                    metrics: dict[str, float]) -> None:
        """A run's settings and final metrics for the HParams tab (one call per trial)."""
        state = self.runs.get(run or "") or self._open(run)
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in hparams.items()}
        state.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()},
                                 run_name=".")
        state.writer.flush()

    def close(self) -> None:
        for state in self.runs.values():
            state.writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
