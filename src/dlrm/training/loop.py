"""Train and evaluate any registered model on any ``DataSource``; resumable, logged.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per log/eval
event), checkpoints ``last.pt`` (and ``best.pt`` with early stopping) and, at the end,
``summary.json``. Every batch is a pure function of (seed, epoch, batch index), and the
checkpoint holds everything else the loop carries, so ``resume=True`` after a kill at any
moment continues from the last complete checkpoint and ends with the exact metrics of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.allocator import tune_cpu_allocator
from dlrm.data.source import DataSource
from dlrm.training import checkpoint as ckpt_io
from dlrm.training.metrics import MetricAccumulator
from dlrm.training.optim import build_optimizer
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
    """Append-only JSON lines; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif keep_until_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def train(model_kind: str, model_config: dict[str, Any], data: DataSource, config: TrainConfig,
          run_dir: str | Path, resume: bool = False, progress: Progress | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a model; returns the summary (also written to ``run_dir/summary.json``).

    Args:
        model_kind, model_config: what ``dlrm.models.registry.build_model`` builds.
        data: the data source; its ``spec()`` goes into checkpoints for ``dlrm eval``.
        config: a ``TrainConfig``.
        run_dir: the run directory (created).
        resume: continue from ``run_dir/last.pt``.
        progress: called with event dicts: ``start``, ``step``, ``eval``, ``end``.
        extra: JSON-able facts stored in config.json and the summary (e.g. the CLI line).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda _event: None)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.tune_allocator and config.device == "cpu":
        tune_cpu_allocator()
    device = config.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")

    if model_kind == "dlrm":  # issue 7: refuse what cannot fit, before allocating anything
        from dlrm.config import DLRMConfig
        from dlrm.memory import check_memory, parameter_memory

        report = parameter_memory(DLRMConfig.from_dict(model_config), config.optimizer,
                                  config.sparse_optimizer)
        emit({"event": "memory", **report.summary()})
        check_memory(report, device)
    torch.manual_seed(config.seed)
    model = ckpt_io.build_model(model_kind, model_config).to(device)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples_seen": 0, "history": [],
             "best_auc": -math.inf, "evals_since_best": 0, "window_loss": 0.0,
             "window_steps": 0}
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume {run_dir}: no checkpoint last.pt there yet")
        saved = ckpt_io.load(last_path, device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state.update(saved["loop_state"])
        log.info("resumed %s at step %d", run_dir, state["step"])
    else:
        (run_dir / "config.json").write_text(json.dumps(
            {"model_kind": model_kind, "model_config": model_config, "train": asdict(config),
             "data": data.spec(), **(extra or {})}, indent=2))
    run_log = _RunLog(run_dir / "metrics.jsonl", state["step"] if resume else None)

    batch_size = config.batch_size
    steps_per_epoch = data.num_samples("train") // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"training split has {data.num_samples('train')} samples, fewer than "
                         f"one batch of {batch_size}")
    total_steps = steps_per_epoch * config.epochs
    if config.max_samples:
        total_steps = min(total_steps, max(1, config.max_samples // batch_size))
    loss_fn = nn.BCEWithLogitsLoss()
    schedule = build_schedule(config.lr_schedule)

    def save(path: Path) -> None:
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT, "model_kind": model_kind, "model_config": model_config,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "loop_state": dict(state),
            "train_config": asdict(config), "data_spec": data.spec(),
            "step": state["step"]}, path)

    def run_eval() -> dict[str, float]:
        metrics = evaluate(model, data, "val", config.eval_batch_size, config.precision, device)
        record = {"event": "eval", "split": "val", "step": state["step"],
                  "samples_seen": state["samples_seen"], **metrics}
        run_log.write(record)
        state["history"].append(record)
        emit(record)
        if metrics["auc"] > state["best_auc"]:
            state["best_auc"] = metrics["auc"]
            state["evals_since_best"] = 0
            if config.patience:
                save(best_path)
        else:
            state["evals_since_best"] += 1
        return metrics

    emit({"event": "start", "step": state["step"], "total_steps": total_steps,
          "batch_size": batch_size})
    model.train()
    train_time = 0.0
    steps_this_session = 0
    stopped_early = False
    while state["step"] < total_steps and not stopped_early:
        epoch = state["epoch"]
        batches = data.batches("train", batch_size, start_batch=state["batch_in_epoch"],
                               epoch=epoch, shuffle=True, seed=config.seed, drop_last=True)
        tick = time.perf_counter()
        for batch in batches:
            batch = batch.to(device)
            with autocast(device, config.precision):
                logits = model(batch.dense, batch.sparse)
            loss = loss_fn(logits.float(), batch.labels)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(
                    f"training diverged: the loss is {float(loss.detach())} at step "
                    f"{state['step'] + 1} (epoch {epoch}); lower --lr or use --optimizer "
                    f"adagrad. The last checkpoint, if any, is {last_path}")
            loss.backward()
            if schedule is not None:  # lr is a pure function of the step: exact on resume
                step_now, sparse_lr = state["step"], config.sparse_lr
                optimizer.set_lr(schedule.lr(step_now, config.lr),
                                 None if sparse_lr is None else schedule.lr(step_now, sparse_lr))
            optimizer.step()
            optimizer.zero_grad()
            state["step"] += 1
            state["batch_in_epoch"] += 1
            state["samples_seen"] += len(batch)
            state["window_loss"] += float(loss.detach())
            state["window_steps"] += 1
            steps_this_session += 1
            emit({"event": "step", "step": state["step"], "loss": state["window_loss"]
                  / state["window_steps"], "samples": len(batch)})
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
                train_time += time.perf_counter() - tick
                run_eval()
                evaluated = True
                if config.patience and state["evals_since_best"] >= config.patience:
                    stopped_early = True
            if evaluated or (config.checkpoint_every and step % config.checkpoint_every == 0):
                if not evaluated:
                    train_time += time.perf_counter() - tick
                save(last_path)
                tick = time.perf_counter()
            if step >= total_steps or stopped_early or boundary:
                break
        train_time += time.perf_counter() - tick

    final_val = run_eval()
    final_step = state["step"]
    if config.patience and best_path.exists():
        best = ckpt_io.load(best_path, device)
        if best["loop_state"]["best_auc"] > final_val["auc"]:
            model.load_state_dict(best["model"])
            final_val = evaluate(model, data, "val", config.eval_batch_size, config.precision,
                                 device)
            final_step = best["step"]
    save(last_path)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": state["step"], "samples_seen": state["samples_seen"],
        "reported_step": final_step, "stopped_early": stopped_early,
        **{f"val_{k}": v for k, v in final_val.items()},
        "samples_per_s": (steps_this_session * batch_size / train_time) if train_time else None,
        "train_seconds": train_time, **(extra or {}),
    }
    if "test" in data.splits() and data.num_samples("test") > 0:
        test = evaluate(model, data, "test", config.eval_batch_size, config.precision, device)
        summary.update({f"test_{k}": v for k, v in test.items()})
    for key in ("auc", "logloss"):
        if f"val_optimal_{key}" in summary:
            summary[f"optimal_{key}"] = summary.pop(f"val_optimal_{key}")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    emit({"event": "end", **summary})
    return summary
