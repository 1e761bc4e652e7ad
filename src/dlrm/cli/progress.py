"""tqdm progress bars driven by the library's progress events, and the other observers of the
training events (``--mlperf-log``, ``--tensorboard``) combined with them by ``fan_out``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm


class TrainProgress:
    """Renders ``dlrm.training.loop`` events: a bar in samples with rate and ETA."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: tqdm | None = None
        self.disable = disable

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            batch = event["batch_size"]
            self.bar = tqdm(total=event["total_steps"] * batch, initial=event["step"] * batch,
                            unit="samples", unit_scale=True, dynamic_ncols=True,
                            disable=self.disable, file=sys.stderr, desc="train")
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["samples"])
            if event["step"] % 50 == 0:
                self.bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
        elif kind == "eval" and self.bar is not None:
            self.bar.write(f"step {event['step']}: val auc {event['auc']:.4f} "
                           f"logloss {event['logloss']:.4f} acc {event['accuracy']:.4f}")
        elif kind == "end" and self.bar is not None:
            self.bar.close()


# --- issue 17: observers of the training events (MLPerf log, TensorBoard) ---

Callback = Callable[[dict[str, Any]], None]


def fan_out(*callbacks: Callback | None) -> Callback:
    """One progress callback that hands every event to each of ``callbacks`` in order."""
    active = [cb for cb in callbacks if cb is not None]

    def progress(event: dict[str, Any]) -> None:
        for cb in active:
            cb(event)

    return progress


def add_observer_args(p: argparse.ArgumentParser, mlperf: bool = True) -> None:
    """``--tensorboard`` (and, for single runs, ``--mlperf-log`` and its submission keys)."""
    g = p.add_argument_group("observers (docs/ecosystem.md)")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard scalars (loss, lr, samples/s, evaluations) to DIR")
    g.add_argument("--tensorboard-every", type=int, default=10, metavar="STEPS",
                   help="training scalars every this many steps (default 10)")
    if not mlperf:
        return
    g.add_argument("--mlperf-log", default=None, metavar="FILE",
                   help="write the MLPerf Training log (:::MLLOG lines) of this run to FILE")
    g.add_argument("--mlperf-benchmark", default=None,
                   help="submission_benchmark (default: dlrm_dcnv2 for --model dlrm_dcnv2, "
                        "dlrm for dlrm)")
    g.add_argument("--mlperf-division", choices=["open", "closed"], default="open")
    g.add_argument("--mlperf-org", default="dlrm", help="submission_org")
    g.add_argument("--mlperf-platform", default=None,
                   help="submission_platform (default: this CPU's model and cores)")
    g.add_argument("--mlperf-target-auc", type=float, default=None,
                   help="validation AUC that ends the run with status success (default: "
                        "MLPerf's, 0.80275 for dlrm_dcnv2)")


def open_observers(args: argparse.Namespace, stack: contextlib.ExitStack, kind: str,
                   config: Any, data: Any, resume: bool = False) -> list[Callback]:
    """The observers the flags ask for, entered on ``stack`` (closed when it closes)."""
    observers: list[Callback] = []
    if getattr(args, "mlperf_log", None):
        from dlrm.training.mlperf_log import MLPerfLogger, mlperf_hyperparameters

        if resume:
            raise ValueError("--mlperf-log: an MLPerf log covers one uninterrupted run; it "
                             "cannot continue a resumed one")
        benchmark = args.mlperf_benchmark or {"dlrm_dcnv2": "dlrm_dcnv2",
                                              "dlrm": "dlrm"}.get(kind)
        if benchmark is None:
            raise ValueError(f"--mlperf-log: MLPerf has no benchmark for --model {kind}; "
                             f"give --mlperf-benchmark")
        observers.append(stack.enter_context(MLPerfLogger(
            args.mlperf_log, mlperf_hyperparameters(config, data), benchmark=benchmark,
            division=args.mlperf_division, org=args.mlperf_org,
            platform=args.mlperf_platform, target_auc=args.mlperf_target_auc)))
    if getattr(args, "tensorboard", None):
        from dlrm.training.tensorboard import TensorBoardWriter

        observers.append(stack.enter_context(
            TensorBoardWriter(args.tensorboard, every=args.tensorboard_every)))
    return observers
