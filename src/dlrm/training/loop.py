"""Train and evaluate any registered model on any ``DataSource``; resumable, logged.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per log/eval
event), checkpoints ``last.pt`` (and ``best.pt`` with early stopping) and, at the end,
``summary.json``. Every batch is a pure function of (seed, epoch, batch index), and the
checkpoint holds everything else the loop carries, so ``resume=True`` after a kill at any
moment continues from the last complete checkpoint and ends with the exact metrics of an
uninterrupted run.

``run_loop`` is the one training loop of the project: ``train`` runs it with a
``SingleProcessStrategy``, ``dlrm.distributed.train.train_distributed`` on every rank with a
``HybridParallelStrategy``; a strategy supplies only the step, the evaluation and the
checkpoints, so both paths get the same cadence, lr schedule, early stopping and resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dlrm import ops
from dlrm.allocator import tune_cpu_allocator
from dlrm.data.source import DataSource
from dlrm.features import Batch
from dlrm.metrics import MetricAccumulator
from dlrm.models import build_model
from dlrm.models.memory import check_memory, parameter_memory
from dlrm.timing import synchronized_clock
from dlrm.training import checkpoint as ckpt_io
from dlrm.training.optim import HybridOptimizer, build_optimizer
from dlrm.training.schedule import build_schedule

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """How to train.

    Args:
        batch_size: samples per step (the reference Kaggle recipe: 128).
        lr: learning rate of dense parameters and (unless ``sparse_lr``) embedding rows.
        optimizer: ``sgd``, ``adagrad`` or ``adam`` for dense parameters.
        sparse_optimizer: ``sgd`` or ``rowwise_adagrad`` for embedding rows (None: matching).
        epochs: passes over the training split; ``max_samples`` stops earlier.
        eval_every: evaluate on validation every this many steps (0: only at the end).
        eval_batch_size: evaluation batch size (kept fixed so metrics are reproducible).
        checkpoint_every: also checkpoint every this many steps (0: at evals and the end).
        log_every: steps per logged training-loss record.
        patience: stop after this many evaluations without a better validation AUC and
            report the best checkpoint's metrics (0: never stop early).
        precision: ``fp32`` or ``bf16`` (autocast; fp32 master weights).
        device: ``cpu`` or ``cuda``.
        threads: torch intra-op threads (None: torch's default).
        tune_allocator: on CPU, keep freed memory mapped (``dlrm.allocator``): steps stop
            paying page faults for their temporaries; speed only, results are unchanged.
        seed: initialization and data order.
        lr_schedule: None (constant lr) or ``{"kind": "mlperf", "warmup_steps": W,
            "decay_start": S, "decay_steps": K, "end_lr": 0.0}``
            (``dlrm.training.schedule``), applied to the dense and the sparse lr alike.
    """

    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    sparse_optimizer: str | None = None
    sparse_lr: float | None = None
    weight_decay: float = 0.0
    epochs: int = 1
    max_samples: int | None = None
    eval_every: int = 0
    eval_batch_size: int = 8192
    checkpoint_every: int = 0
    log_every: int = 100
    patience: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    tune_allocator: bool = True
    seed: int = 0
    lr_schedule: dict[str, Any] | None = None  # issue 7: MLPerf warmup/decay schedule

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size {self.batch_size}: must be positive")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r}: expected fp32 or bf16")
        if self.epochs <= 0:
            raise ValueError(f"epochs {self.epochs}: must be positive")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"max_samples {self.max_samples}: must be positive")
        build_schedule(self.lr_schedule)  # raises on a bad schedule


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast context for ``precision == 'bf16'``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSource, split: str = "val", batch_size: int = 8192,
             precision: str = "fp32", device: str = "cpu") -> dict[str, float]:
    """Exact AUC, log loss and accuracy of ``model`` on a whole split (plus Bayes-optimal
    values ``optimal_auc`` / ``optimal_logloss`` when the data source knows them)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    for batch in data.batches(split, batch_size):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(batch.dense, batch.sparse)
        acc.update(logits.float(), batch.labels)
    model.train(was_training)
    metrics = acc.compute()
    optimal = getattr(data, "optimal_metrics", lambda _s: None)(split)
    if optimal:
        metrics["optimal_auc"] = optimal["auc"]
        metrics["optimal_logloss"] = optimal["logloss"]
    return metrics


class _RunLog:
    """Append-only JSON lines; on resume, lines past the checkpoint's step are dropped.

    Disabled (writes nothing) on processes that do not write the run's files."""

    def __init__(self, path: Path, keep_until_step: int | None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if keep_until_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif keep_until_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class TrainingStrategy(Protocol):
    """What differs between training in one process and on the ranks of a distributed job.

    ``run_loop`` owns everything else: step counting, logging, the evaluation and checkpoint
    cadence, the lr schedule, early stopping, resume state and the summary. Checkpoints are
    named ``"last"`` (resume) and ``"best"`` (early stopping). Implementations:
    ``SingleProcessStrategy`` here, ``dlrm.distributed.train.HybridParallelStrategy``.
    """

    model: nn.Module
    optimizer: HybridOptimizer
    device: str
    writes_files: bool  # config.json, metrics.jsonl, summary.json: one process of the job

    def train_step(self, batch: Batch, step: int) -> float:
        """One optimizer step on ``batch`` (step number ``step``, from 1); the batch-mean loss.
        Raises ``FloatingPointError`` before any update when the loss is not finite."""
        ...

    def evaluate(self, split: str) -> dict[str, float]:
        """Exact metrics over the whole ``split`` (the same on every process)."""
        ...

    def save(self, name: str, loop_state: dict[str, Any]) -> None:
        """Write checkpoint ``name`` with the weights, optimizer state and ``loop_state``."""
        ...

    def resume(self) -> dict[str, Any]:
        """Restore weights, optimizer (and RNG) state from ``"last"``; return its loop state."""
        ...

    def restore_weights(self, name: str) -> int:
        """Load only the weights of checkpoint ``name``; return the step it was saved at."""
        ...

    def summary_extra(self, steps_this_session: int) -> dict[str, Any]:
        """Facts this kind of run adds to the summary (e.g. communication times)."""
        ...


class SingleProcessStrategy:
    """Any registered model on one device; checkpoints ``run_dir/last.pt`` and ``best.pt``."""

    writes_files = True

    def __init__(self, model_kind: str, model_config: dict[str, Any], model: nn.Module,
                 optimizer: HybridOptimizer, data: DataSource, config: TrainConfig,
                 run_dir: Path) -> None:
        self.model_kind, self.model_config = model_kind, model_config
        self.model, self.optimizer, self.data, self.config = model, optimizer, data, config
        self.device = config.device
        self.run_dir = run_dir
        self.loss_fn = nn.BCEWithLogitsLoss()

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pt"

    def train_step(self, batch: Batch, step: int) -> float:
        batch = batch.to(self.device)
        with autocast(self.device, self.config.precision):
            logits = self.model(batch.dense, batch.sparse)
        loss = self.loss_fn(logits.float(), batch.labels)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"training diverged: the loss is {float(loss.detach())} at step {step}; lower "
                f"--lr or use --optimizer adagrad. The last checkpoint, if any, is "
                f"{self.path('last')}")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())

    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.data, split, self.config.eval_batch_size,
                        self.config.precision, self.device)

    def save(self, name: str, loop_state: dict[str, Any]) -> None:
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT, "model_kind": self.model_kind,
            "model_config": self.model_config, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
            "loop_state": dict(loop_state), "train_config": asdict(self.config),
            "data_spec": self.data.spec(), "step": loop_state["step"]}, self.path(name))

    def resume(self) -> dict[str, Any]:
        if not self.path("last").exists():
            raise FileNotFoundError(f"--resume {self.run_dir}: no checkpoint last.pt there yet")
        saved = ckpt_io.load(self.path("last"), self.device)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        return saved["loop_state"]

    def restore_weights(self, name: str) -> int:
        saved = ckpt_io.load(self.path(name), self.device)
        self.model.load_state_dict(saved["model"])
        return saved["step"]

    def summary_extra(self, steps_this_session: int) -> dict[str, Any]:
        return {}


def train(model_kind: str, model_config: dict[str, Any], data: DataSource, config: TrainConfig,
          run_dir: str | Path, resume: bool = False, progress: Progress | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a model in this process; returns the summary (also in ``run_dir/summary.json``).

    Args:
        model_kind, model_config: what ``dlrm.models.build_model`` builds (any registered
            kind); the model's weights are drawn after ``torch.manual_seed(config.seed)``,
            as ``dlrm.distributed.train_distributed`` draws them on every rank.
        data: the data source; its ``spec()`` goes into checkpoints for ``dlrm eval``.
        config: a ``TrainConfig``.
        run_dir: the run directory (created).
        resume: continue from ``run_dir/last.pt``.
        progress: called with event dicts: ``memory``, ``start``, ``step``, ``eval``, ``end``.
        extra: JSON-able facts stored in config.json and the summary (e.g. the CLI line).
    """
    run_dir = Path(run_dir)
    emit = progress or (lambda _event: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = config.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")

    # Refuse what cannot fit, before allocating anything (any model kind: a meta build).
    report = parameter_memory(model_kind, model_config, config.optimizer,
                              config.sparse_optimizer)
    emit({"event": "memory", **report.summary()})
    check_memory(report, device)
    torch.manual_seed(config.seed)
    model = build_model(model_kind, model_config).to(device)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    strategy = SingleProcessStrategy(model_kind, model_config, model, optimizer, data, config,
                                     run_dir)
    run_record = {"model_kind": model_kind, "model_config": model_config,
                  "train": asdict(config), "data": data.spec()}
    return run_loop(strategy, data, config, run_dir, resume=resume, run_record=run_record,
                    progress=progress, extra=extra)


def run_loop(strategy: TrainingStrategy, data: DataSource, config: TrainConfig,
             run_dir: str | Path, *, resume: bool = False,
             run_record: dict[str, Any] | None = None, progress: Progress | None = None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training loop of every run, single-process or distributed; returns the summary.

    Runs ``config``'s steps over ``data``'s training split (batch k of an epoch is a pure
    function of the seed, so a resumed run sees the batches an uninterrupted one saw), logs the
    windowed training loss every ``log_every`` steps, evaluates every ``eval_every`` steps and
    at the end, checkpoints at every evaluation, every ``checkpoint_every`` steps and at the
    end, sets the lr of each step from ``lr_schedule``, and with ``patience`` stops after that
    many evaluations without a better validation AUC and reports the best checkpoint.

    On a distributed job every rank calls it: all decisions depend only on the step counter
    and on metrics that are identical on all ranks, so the ranks stay in lockstep.

    Args:
        strategy: how to step, evaluate and checkpoint (``TrainingStrategy``).
        run_dir: the run directory; ``strategy.writes_files`` decides who writes in it.
        resume: continue from the strategy's ``"last"`` checkpoint.
        run_record: what ``config.json`` holds for a new run (``extra`` is added).
        progress: called with event dicts: ``start`` (``step``, ``total_steps``,
            ``batch_size``, ``steps_per_epoch``), ``step`` (``step``, windowed ``loss``,
            ``samples``, ``lr``, ``epoch``, ``samples_seen``), ``eval_start`` and ``eval``
            (``step``, ``samples_seen``; ``eval`` adds the metrics), ``end`` (the summary).
            Observers such as the MLPerf log and TensorBoard consume them.
        extra: JSON-able facts added to config.json and the summary.
    """
    run_dir = Path(run_dir)
    emit = progress or (lambda _event: None)
    writer = strategy.writes_files
    if config.tune_allocator and config.device == "cpu":
        tune_cpu_allocator()  # before the first step; process-wide, for every strategy
    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "batch_in_epoch": 0, "samples_seen": 0, "history": [],
        "best_auc": -math.inf, "evals_since_best": 0, "window_loss": 0.0, "window_steps": 0}
    if resume:
        state.update(strategy.resume())
        log.info("resumed %s at step %d", run_dir, state["step"])
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "config.json").write_text(json.dumps(
                {**(run_record or {}), **(extra or {})}, indent=2))
    run_log = _RunLog(run_dir / "metrics.jsonl", state["step"] if resume else None,
                      enabled=writer)

    batch_size = config.batch_size
    steps_per_epoch = data.num_samples("train") // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"training split has {data.num_samples('train')} samples, fewer than "
                         f"one batch of {batch_size}")
    total_steps = steps_per_epoch * config.epochs
    if config.max_samples:
        total_steps = min(total_steps, max(1, config.max_samples // batch_size))
    schedule = build_schedule(config.lr_schedule)
    device = strategy.device

    def run_eval() -> dict[str, float]:
        emit({"event": "eval_start", "step": state["step"],
              "samples_seen": state["samples_seen"]})
        metrics = strategy.evaluate("val")
        record = {"event": "eval", "split": "val", "step": state["step"],
                  "samples_seen": state["samples_seen"], **metrics}
        run_log.write(record)
        state["history"].append(record)
        emit(record)
        if metrics["auc"] > state["best_auc"]:
            state["best_auc"] = metrics["auc"]
            state["evals_since_best"] = 0
            if config.patience:
                strategy.save("best", state)
        else:
            state["evals_since_best"] += 1
        return metrics

    emit({"event": "start", "step": state["step"], "total_steps": total_steps,
          "batch_size": batch_size, "steps_per_epoch": steps_per_epoch})
    strategy.model.train()
    train_time = 0.0
    steps_this_session = 0
    last_loss: float | None = None
    stopped_early = False
    while state["step"] < total_steps and not stopped_early:
        epoch = state["epoch"]
        batches = data.batches("train", batch_size, start_batch=state["batch_in_epoch"],
                               epoch=epoch, shuffle=True, seed=config.seed, drop_last=True)
        tick = synchronized_clock(device)
        for batch in batches:
            lr = config.lr
            if schedule is not None:  # lr is a pure function of the step: exact on resume
                step_now, sparse_lr = state["step"], config.sparse_lr
                lr = schedule.lr(step_now, config.lr)
                strategy.optimizer.set_lr(
                    lr, None if sparse_lr is None else schedule.lr(step_now, sparse_lr))
            loss = strategy.train_step(batch, state["step"] + 1)
            state["step"] += 1
            state["batch_in_epoch"] += 1
            state["samples_seen"] += len(batch)
            state["window_loss"] += loss
            state["window_steps"] += 1
            last_loss = loss
            steps_this_session += 1
            emit({"event": "step", "step": state["step"], "loss": state["window_loss"]
                  / state["window_steps"], "samples": len(batch), "lr": lr, "epoch": epoch,
                  "samples_seen": state["samples_seen"]})
            step = state["step"]
            if step % config.log_every == 0 or step == total_steps:
                run_log.write({"event": "train", "step": step, "epoch": epoch,
                               "samples_seen": state["samples_seen"],
                               "loss": state["window_loss"] / state["window_steps"]})
                state["window_loss"], state["window_steps"] = 0.0, 0
            boundary = state["batch_in_epoch"] >= steps_per_epoch
            if boundary:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            evaluated = False
            if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                train_time += synchronized_clock(device) - tick
                run_eval()
                evaluated = True
                if config.patience and state["evals_since_best"] >= config.patience:
                    stopped_early = True
            if evaluated or (config.checkpoint_every and step % config.checkpoint_every == 0):
                if not evaluated:
                    train_time += synchronized_clock(device) - tick
                strategy.save("last", state)
                tick = synchronized_clock(device)
            if step >= total_steps or stopped_early or boundary:
                break
        train_time += synchronized_clock(device) - tick

    final_val = run_eval()
    reported_step = state["step"]
    # The state is the same on every rank, so all of them take this branch or none.
    if config.patience and state["best_auc"] > final_val["auc"]:
        reported_step = strategy.restore_weights("best")
        final_val = strategy.evaluate("val")
    strategy.save("last", state)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": state["step"], "samples_seen": state["samples_seen"],
        "reported_step": reported_step, "stopped_early": stopped_early,
        **{f"val_{k}": v for k, v in final_val.items()},
        "samples_per_s": (steps_this_session * batch_size / train_time) if train_time else None,
        "train_seconds": train_time, "final_train_loss": last_loss,
        "native_kernels": ops.active_on(config.device),
        **strategy.summary_extra(steps_this_session), **(extra or {}),
    }
    if "test" in data.splits() and data.num_samples("test") > 0:
        test = strategy.evaluate("test")
        summary.update({f"test_{k}": v for k, v in test.items()})
    for key in ("auc", "logloss"):
        if f"val_optimal_{key}" in summary:
            summary[f"optimal_{key}"] = summary.pop(f"val_optimal_{key}")
    if writer:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    emit({"event": "end", **summary})
    return summary
