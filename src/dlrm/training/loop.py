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
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Protocol, Union, get_args, get_origin, get_type_hints

import torch
from torch import nn

from dlrm import ops
from dlrm.allocator import huge_pages_wanted, tune_cpu_allocator
from dlrm.data.prefetch import prefetch_depth, prefetched
from dlrm.data.source import DataSource
from dlrm.features import Batch
from dlrm.files import write_json_atomic
from dlrm.metrics import MetricAccumulator
from dlrm.models import build_model
from dlrm.models.memory import check_memory, parameter_memory
from dlrm.timing import synchronized_clock
from dlrm.training import checkpoint as ckpt_io
from dlrm.training import run_dir as runs
from dlrm.training.data_identity import check_same_data, data_identity
from dlrm.training.optim import (
    DENSE_OPTIMIZERS,
    SPARSE_OPTIMIZERS,
    HybridOptimizer,
    build_optimizer,
)
from dlrm.training.schedule import build_schedule

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


class ConfigError(ValueError):
    """A bad ``TrainConfig`` field. ``field`` names it, so the CLI can name its flag (or the
    config file it came from); the message says what is allowed."""

    def __init__(self, field: str, value: Any, detail: str) -> None:
        super().__init__(f"{field} {value!r}: {detail}")
        self.field, self.value, self.detail = field, value, detail


def _choices(*values: str) -> Any:
    return field(default=values[0], metadata={"choices": values})


@dataclass
class TrainConfig:
    """How to train. The CLI's training flags are generated from these fields
    (``--batch-size`` is ``batch_size``; help from these lines, choices from the metadata).

    Args:
        batch_size: samples per step (the reference Kaggle recipe: 128); 0: the whole
            training split, one full-batch step per epoch.
        lr: learning rate of dense parameters and (unless sparse_lr) embedding rows.
        optimizer: optimizer of the dense parameters; ``lbfgs``: full-batch L-BFGS of every
            parameter (batch_size 0; each step up to 10 iterations; for convex models such as
            ``lr``, where it reaches the optimum of the L2-penalized loss).
        sparse_optimizer: optimizer of the embedding rows (None: the one matching optimizer).
        sparse_lr: learning rate of the embedding rows (None: lr).
        weight_decay: L2 weight decay of the dense parameters (lbfgs: of every weight but
            the biases, embedding rows included; 1 / (C * N) is scikit-learn's C).
        epochs: passes over the training split; max_samples stops earlier.
        max_samples: stop after this many training samples (None: after the epochs).
        eval_every: evaluate on validation every this many steps (0: only at the end).
        eval_batch_size: evaluation batch size (kept fixed so metrics are reproducible).
        checkpoint_every: also checkpoint every this many steps (0: at evals and the end).
        log_every: steps per training-loss record in metrics.jsonl.
        patience: stop after this many evaluations without a better validation AUC and
            report the best checkpoint's metrics (0: never stop early).
        precision: fp32, or bf16 autocast with fp32 master weights.
        device: cpu, cuda or cuda:K.
        threads: torch intra-op threads (None: torch's default).
        tune_allocator: on CPU, keep freed memory mapped (dlrm.allocator) so steps stop
            paying page faults for their temporaries; speed only, results are unchanged.
        seed: initialization and data order.
        lr_schedule: None (constant lr) or ``{"kind": "mlperf", "warmup_steps": W,
            "decay_start": S, "decay_steps": K, "end_lr": 0.0}``
            (``dlrm.training.schedule``), applied to the dense and the sparse lr alike.
    """

    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = _choices(*DENSE_OPTIMIZERS)
    sparse_optimizer: str | None = field(default=None, metadata={"choices": SPARSE_OPTIMIZERS})
    sparse_lr: float | None = None
    weight_decay: float = 0.0
    epochs: int = 1
    max_samples: int | None = None
    eval_every: int = 0
    eval_batch_size: int = 8192
    checkpoint_every: int = 0
    log_every: int = 100
    patience: int = 0
    precision: str = _choices("fp32", "bf16")
    device: str = "cpu"
    threads: int | None = None
    tune_allocator: bool = True
    seed: int = 0
    lr_schedule: dict[str, Any] | None = None  # issue 7: MLPerf warmup/decay schedule

    def __post_init__(self) -> None:
        """Everything checkable before the first step, each error naming its field."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f.name, value, f"expected one of {', '.join(choices)}")
        at_least = {"batch_size": 0, "epochs": 1, "eval_batch_size": 1, "log_every": 1,
                    "eval_every": 0, "checkpoint_every": 0, "patience": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(name, getattr(self, name), f"must be at least {low}")
        for name in ("max_samples", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be at least 1 (or None)")
        for name in ("lr", "sparse_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(name, value, "must be a finite number above 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("weight_decay", self.weight_decay, "must be a finite number >= 0")
        if self.patience and not self.eval_every:
            raise ConfigError("patience", self.patience, "counts evaluations: it needs "
                              "eval_every > 0 (there is only the final evaluation otherwise)")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError("device", self.device, "expected cpu, cuda or cuda:K")
        try:
            build_schedule(self.lr_schedule)
        except ValueError as err:
            raise ConfigError("lr_schedule", self.lr_schedule, str(err)) from None


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Values from JSON files must have the field's type (a number where a number goes)."""
    members = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    allowed = tuple(t for t in (get_origin(m) or m for m in members) if isinstance(t, type))
    if float in allowed:
        allowed = (*allowed, int)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok and not (value is None and type(None) in allowed):
        names = " or ".join(sorted({t.__name__ for t in allowed} - {"NoneType"}))
        raise ConfigError(name, value, f"expected {names}")


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast context for ``precision == 'bf16'``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def score_split(model: nn.Module, data: DataSource, split: str = "val", batch_size: int = 8192,
                precision: str = "fp32", device: str = "cpu") -> MetricAccumulator:
    """``model``'s logits on every row of ``split``, in the split's order, with the labels
    (``.tensors()``: ``(N,)`` float32 each; ``.compute()``: the metrics)."""
    check_split(data, split)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    with prefetched(data.batches(split, batch_size), device) as batches:
        for batch in batches:
            batch = batch.to(device)
            with autocast(device, precision):
                logits = model(batch.dense, batch.sparse)
            acc.update(logits.float(), batch.labels)
    model.train(was_training)
    return acc


def evaluate(model: nn.Module, data: DataSource, split: str = "val", batch_size: int = 8192,
             precision: str = "fp32", device: str = "cpu") -> dict[str, float]:
    """Exact AUC, log loss and accuracy of ``model`` on a whole split (plus Bayes-optimal
    values ``optimal_auc`` / ``optimal_logloss`` when the data source knows them)."""
    metrics = score_split(model, data, split, batch_size, precision, device).compute()
    optimal = getattr(data, "optimal_metrics", lambda _s: None)(split)
    if optimal:
        metrics["optimal_auc"] = optimal["auc"]
        metrics["optimal_logloss"] = optimal["logloss"]
    return metrics




def check_split(data: DataSource, split: str) -> None:
    """Raise ``ValueError`` naming the data's splits unless ``split`` has samples."""
    if split not in data.splits():
        raise ValueError(f"split {split!r}: the data has {', '.join(data.splits())}")
    if data.num_samples(split) <= 0:
        raise ValueError(f"split {split!r} of the data is empty")


def check_before_training(data: DataSource, config: TrainConfig) -> int:
    """What can fail about ``data`` and ``config``, checked before the first step (so a run
    never trains for hours and then fails); returns the steps per epoch."""
    for split in ("train", "val"):
        if split not in data.splits() or data.num_samples(split) <= 0:
            hint = ("every run is evaluated on the validation split (synthetic data: "
                    "--val-samples N; a preprocessed folder: preprocess it with one)"
                    if split == "val" else "there is nothing to train on")
            counts = ", ".join(f"{s} {data.num_samples(s)}" for s in data.splits())
            raise ValueError(f"the data has no {split} samples ({counts}): {hint}")
    rows = data.num_samples("train")
    if config.optimizer == "lbfgs" and config.batch_size not in (0, rows):
        raise ConfigError("batch_size", config.batch_size,
                          f"lbfgs is a full-batch method: use 0 (the whole training split, "
                          f"{rows} rows)")
    steps_per_epoch = rows // (config.batch_size or rows)
    if steps_per_epoch == 0:
        raise ValueError(f"training split has {data.num_samples('train')} samples, fewer than "
                         f"one batch of {config.batch_size}")
    prefetch_depth(config.device)  # a bad DLRM_PREFETCH fails here, not at the first step
    huge_pages_wanted()  # and a bad DLRM_HUGE_PAGES
    return steps_per_epoch


def check_distributable(optimizer: str | None) -> None:
    """Raise ``ConfigError`` for an optimizer that runs in one process only (``lbfgs``: a
    full-batch method over every weight, for small convex models), before any rank starts."""
    if optimizer == "lbfgs":
        raise ConfigError("optimizer", optimizer, "full-batch L-BFGS runs in one process (its "
                          "models are small: logistic regression); leave out --nproc and "
                          "torchrun")


def resolve_batch_size(config: TrainConfig, data: DataSource) -> TrainConfig:
    """``config`` with ``batch_size`` 0 made the training split's number of rows (what the run
    records, so a resumed run compares the real batch)."""
    if config.batch_size:
        return config
    return replace(config, batch_size=data.num_samples("train"))


def total_steps_of(config: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: ``epochs`` passes, or fewer with ``max_samples``."""
    total = steps_per_epoch * config.epochs
    if config.max_samples:
        total = min(total, max(1, config.max_samples // config.batch_size))
    return total


# Fields of TrainConfig a resumed run may change (recorded in config.json's "resumes"):
# a longer run, and settings that change speed only.
RESUMABLE_CHANGES = ("epochs", "max_samples", "threads", "tune_allocator")


class ResumeConflict(ValueError):
    """``resume=True`` with settings that would make it another run."""


class _RunLog:
    """``metrics.jsonl``: append-only JSON lines, counted in ``state["log_records"]`` so a
    checkpoint knows how many records it covers.

    On resume the file is cut back to the records the checkpoint covers (later ones belong to
    steps that will run again); a torn or damaged record is dropped with a warning naming the
    file. Disabled (writes nothing) on processes that do not write the run's files.
    """

    def __init__(self, path: Path, state: dict[str, Any], enabled: bool) -> None:
        self.path, self.state, self.enabled = path, state, enabled

    def restore(self, records: int | None = None, until_step: int | None = None) -> None:
        """Keep the first ``records`` records, or those up to step ``until_step``, or (neither
        given) all readable ones."""
        found = runs.read_jsonl(self.path) if self.path.exists() else []
        kept = found
        if records is not None:
            kept = found[:records]
            if len(found) < records:
                log.warning("%s: %d records, fewer than the %d the checkpoint counted; "
                            "continuing with those", self.path, len(found), records)
        elif until_step is not None:
            kept = [r for r in found if r.get("step", 0) <= until_step]
        if self.path.exists() or kept:
            runs.write_jsonl(self.path, kept)
        self.state["log_records"] = len(kept)

    def write(self, record: dict[str, Any]) -> None:
        self.state["log_records"] = self.state.get("log_records", 0) + 1
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class TrainingStrategy(Protocol):
    """What differs between training in one process and on the ranks of a distributed job.

    ``run_loop`` owns everything else: the run directory, step counting, logging, the
    evaluation and checkpoint cadence, the lr schedule, early stopping, resume state and the
    summary. Checkpoints are named ``"last"`` (resume) and ``"best"`` (early stopping).
    Implementations: ``SingleProcessStrategy`` here, ``dlrm.distributed.train.
    HybridParallelStrategy``.
    """

    model: nn.Module
    optimizer: HybridOptimizer
    device: str
    writes_files: bool  # config.json, metrics.jsonl, summary.json: one process of the job

    def share(self, value: Any) -> Any:
        """The writing process's ``value``, on every process (a broadcast; collective)."""
        ...

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

    def resume(self) -> dict[str, Any] | None:
        """Restore weights, optimizer (and RNG) state from ``"last"``; return its loop state,
        or None when the run has no checkpoint yet (it starts again from step 0)."""
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
        self.data_identity = data_identity(data)

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pt"

    def share(self, value: Any) -> Any:
        return value

    def train_step(self, batch: Batch, step: int) -> float:
        batch = batch.to(self.device)

        def forward_backward() -> torch.Tensor:
            with autocast(self.device, self.config.precision):
                logits = self.model(batch.dense, batch.sparse)
            loss = self.loss_fn(logits.float(), batch.labels)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(
                    f"training diverged: the loss is {float(loss.detach())} at step {step}; "
                    f"lower --lr or use --optimizer adagrad. The last checkpoint, if any, is "
                    f"{self.path('last')}")
            loss.backward()
            return loss.detach()

        return float(self.optimizer.minimize(forward_backward))

    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.data, split, self.config.eval_batch_size,
                        self.config.precision, self.device)

    def save(self, name: str, loop_state: dict[str, Any]) -> None:
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT, "model_kind": self.model_kind,
            "model_config": self.model_config, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
            "loop_state": dict(loop_state), "train_config": asdict(self.config),
            "data_spec": self.data.spec(), "data_identity": self.data_identity,
            "step": loop_state["step"]}, self.path(name))

    def resume(self) -> dict[str, Any] | None:
        path = self.path("last")
        if not path.exists():
            if (self.run_dir / "last" / "meta.pt").exists():
                raise ValueError(f"{self.run_dir} is a distributed run (sharded checkpoint "
                                 f"last/); resume it with `dlrm train --resume`")
            return None  # stopped before its first checkpoint: the run starts again
        saved = ckpt_io.load(path, self.device)
        ckpt_io.require(saved, path, "model", "optimizer", "rng", "loop_state",
                        purpose="resume its run")
        if saved.get("model_kind") != self.model_kind or \
                saved.get("model_config") != self.model_config:
            raise ckpt_io.CheckpointError(
                f"{path} holds another model ({saved.get('model_kind')}) than the run's "
                f"config.json describes ({self.model_kind}); it was replaced by another run's "
                f"checkpoint")
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
        data: the data source; its ``spec()`` and identity go into checkpoints for
            ``dlrm eval``.
        config: a ``TrainConfig``.
        run_dir: the run directory: new or empty for a new run (``dlrm.training.run_dir``).
        resume: continue the run in ``run_dir`` (see ``run_loop``).
        progress: called with event dicts: ``memory``, ``start``, ``step``, ``eval``, ``end``
            (and ``resumed``).
        extra: JSON-able facts stored in config.json and the summary (e.g. the CLI line).
    """
    run_dir = Path(run_dir)
    emit = progress or (lambda _event: None)
    check_before_training(data, config)
    config = resolve_batch_size(config, data)
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
                  "train": asdict(config), "data": data.spec(),
                  "data_identity": strategy.data_identity}
    return run_loop(strategy, data, config, run_dir, resume=resume, run_record=run_record,
                    progress=progress, extra=extra)


def _on_writer(strategy: TrainingStrategy, work: Callable[[], Any]) -> Any:
    """Run ``work`` on the writing process and share its result (or its error) with every
    process, so all of them go on, or all stop with the writer's message."""
    result: Any = None
    error: BaseException | None = None
    if strategy.writes_files:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised
            error = err
    shared = strategy.share({"result": result,
                             "error": None if error is None else str(error)})
    if error is not None:
        raise error
    if shared["error"] is not None:
        raise runs.WriterFailed(shared["error"])
    return shared["result"]


def resume_changes(saved: dict[str, Any], session: dict[str, Any]) -> dict[str, list[Any]]:
    """How ``session`` (what the caller built for this session: ``model_kind``,
    ``model_config``, ``train``, ``data``) differs from the run's ``saved`` ``config.json``:
    ``{field: [before, after]}``. Raises ``ResumeConflict`` naming every change a resumed run
    may not make (only ``RESUMABLE_CHANGES``, and the data's location when its identity is the
    same, may change)."""
    changes: dict[str, list[Any]] = {}
    refused = []
    for key in ("model_kind", "model_config"):
        if key in saved and session.get(key) != saved[key]:
            refused.append(key)
    before, after = saved.get("train", {}), session.get("train", {})
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            if name in RESUMABLE_CHANGES:
                changes[name] = [before.get(name), after.get(name)]
            else:
                refused.append(f"{name} {before.get(name)!r} -> {after.get(name)!r}")
    if "data" in saved and session.get("data") != saved["data"]:
        changes["data"] = [saved["data"], session.get("data")]  # identity checked apart
    if "world_size" in saved and session.get("world_size", saved["world_size"]) != \
            saved["world_size"]:  # a distributed run continues on any number of ranks
        changes["world_size"] = [saved["world_size"], session["world_size"]]
    if refused:
        raise ResumeConflict(
            f"resuming would change the run: {', '.join(refused)}. A resumed run keeps its "
            f"settings (only {', '.join(RESUMABLE_CHANGES)} may change); start a new run for "
            f"other settings")
    return changes


def run_loop(strategy: TrainingStrategy, data: DataSource, config: TrainConfig,
             run_dir: str | Path, *, resume: bool = False,
             run_record: dict[str, Any] | None = None, progress: Progress | None = None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training loop of every run, single-process or distributed; returns the summary.

    Runs ``config``'s steps over ``data``'s training split (batch k of an epoch is a pure
    function of the seed, so a resumed run sees the batches an uninterrupted one saw), logs the
    windowed training loss every ``log_every`` steps, evaluates every ``eval_every`` steps and
    at the end, checkpoints at every evaluation, every ``checkpoint_every`` steps and when the
    training steps are done (before the final evaluation, so nothing that fails late loses the
    trained model), sets the lr of each step from ``lr_schedule``, and with ``patience`` stops
    after that many evaluations without a better validation AUC and reports the best
    checkpoint.

    The run directory belongs to this run (``dlrm.training.run_dir``): the writing process
    holds its lock throughout; a new run needs it new or empty and writes ``config.json``
    before the first step. ``resume=True`` continues the run it holds: the same settings
    (``resume_changes``: a longer run is accepted and recorded in ``config.json``), the same
    data (``data_identity``), from its last checkpoint (or from step 0 when it has none). A
    finished run is left as it is: the returned summary is the saved one, with
    ``already_finished`` set.

    On a distributed job every rank calls it: all decisions depend only on the step counter,
    on metrics that are identical on all ranks, and on what the writer shares, so the ranks
    stay in lockstep.

    Args:
        strategy: how to step, evaluate and checkpoint (``TrainingStrategy``).
        run_dir: the run directory; ``strategy.writes_files`` decides who writes in it.
        resume: continue the run in ``run_dir``.
        run_record: what ``config.json`` holds (``model_kind``, ``model_config``, ``train``,
            ``data``, ``data_identity``; ``extra`` is added); on resume, compared with it.
        progress: called with event dicts: ``start`` (``step``, ``total_steps``,
            ``batch_size``, ``steps_per_epoch``), ``step`` (``step``, windowed ``loss``,
            ``samples``, ``lr``, ``epoch``, ``samples_seen``), ``eval_start`` and ``eval``
            (``step``, ``samples_seen``; ``eval`` adds the metrics), ``end`` (the summary),
            and ``resumed``. Observers such as the MLPerf log and TensorBoard consume them.
        extra: JSON-able facts added to config.json and the summary.
    """
    run_dir = Path(run_dir)
    steps_per_epoch = check_before_training(data, config)
    config = resolve_batch_size(config, data)
    total_steps = total_steps_of(config, steps_per_epoch)
    with contextlib.ExitStack() as owned:
        _on_writer(strategy, lambda: owned.enter_context(runs.claim(run_dir, resume)))
        return _run_owned(strategy, data, config, run_dir, resume, run_record or {},
                          progress, extra or {}, steps_per_epoch, total_steps)


def _prepare_resume(run_dir: Path, run_record: dict[str, Any], data: DataSource
                    ) -> dict[str, Any]:
    """The writer's part of resuming: read and check config.json (the run's settings and
    data); the accepted changes."""
    saved = runs.read_json(run_dir / runs.CONFIG_NAME)
    if not isinstance(saved, dict):
        raise runs.RunDirError(f"{run_dir / runs.CONFIG_NAME}: not a run record")
    changes = resume_changes(saved, run_record)
    for warning in check_same_data(saved.get("data_identity"), data,
                                   str(run_dir / runs.CONFIG_NAME)):
        log.warning("%s", warning)
    summary = None
    if (run_dir / runs.SUMMARY_NAME).is_file():
        try:
            summary = runs.read_json(run_dir / runs.SUMMARY_NAME)
        except runs.RunDirError as err:  # written atomically: damaged by hand; redo the end
            log.warning("%s; the run's end is done again", err)
    return {"saved": saved, "changes": changes, "summary": summary}


def _run_owned(strategy: TrainingStrategy, data: DataSource, config: TrainConfig,
               run_dir: Path, resume: bool, run_record: dict[str, Any],
               progress: Progress | None, extra: dict[str, Any], steps_per_epoch: int,
               total_steps: int) -> dict[str, Any]:
    emit = progress or (lambda _event: None)
    writer = strategy.writes_files
    record: dict[str, Any]
    changes: dict[str, list[Any]] = {}
    saved_summary = None
    if resume:
        prepared = _on_writer(strategy, lambda: _prepare_resume(run_dir, run_record, data))
        record, changes, saved_summary = (prepared["saved"], prepared["changes"],
                                          prepared["summary"])
    else:
        record = {**run_record, **extra}
        _on_writer(strategy, lambda: write_json_atomic(run_dir / runs.CONFIG_NAME,
                                                               record))
    if config.tune_allocator and config.device == "cpu":
        tune_cpu_allocator()  # before the first step; process-wide, for every strategy
    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "batch_in_epoch": 0, "samples_seen": 0, "history": [],
        "best_auc": -math.inf, "evals_since_best": 0, "window_loss": 0.0, "window_steps": 0,
        "log_records": 0, "trained": False, "stopped_early": False}
    run_log = _RunLog(run_dir / runs.METRICS_NAME, state, enabled=writer)
    if resume:
        loop_state = strategy.resume()
        finished = bool(loop_state and loop_state.get("trained") and saved_summary
                        and saved_summary.get("steps") == loop_state["step"])
        if loop_state is not None:
            state.update(loop_state)
        if finished and (state["stopped_early"] or total_steps <= state["step"]):
            done = {**saved_summary, "already_finished": True, "total_steps": total_steps}
            emit({"event": "end", **done})
            return done
        if total_steps < state["step"]:
            raise ConfigError("max_samples", config.max_samples,
                              f"the run is already at step {state['step']} "
                              f"({state['samples_seen']} samples)")
        # The records the checkpoint covers: none without a checkpoint, all of a finished
        # run being extended, those it counted, or (older checkpoints) those up to its step.
        if loop_state is None:
            keep: dict[str, Any] = {"records": 0}
        elif finished:
            keep = {}
        elif "log_records" in loop_state:
            keep = {"records": loop_state["log_records"]}
        else:
            keep = {"until_step": state["step"]}
        _on_writer(strategy, lambda: run_log.restore(**keep))
        state["log_records"] = strategy.share(state["log_records"])
        if finished:  # a longer run: the finished one's summary stays beside it
            state["trained"] = False
            _on_writer(strategy, lambda: os.replace(
                run_dir / runs.SUMMARY_NAME, run_dir / f"summary-step{state['step']}.json"))
        if changes or extra.get("command"):
            record = {**record, "train": asdict(config),
                      **{k: run_record[k] for k in ("data", "world_size", "placement", "plans")
                         if k in run_record},
                      "resumes": [*record.get("resumes", []), {
                          "step": state["step"], "command": extra.get("command"),
                          "changed": changes}]}
            if "args" in extra:
                record["args"] = extra["args"]
            _on_writer(strategy, lambda: write_json_atomic(
                run_dir / runs.CONFIG_NAME, record))
        log.info("resumed %s at step %d", run_dir, state["step"])
        emit({"event": "resumed", "step": state["step"], "changes": changes,
              "from_scratch": loop_state is None})
    else:
        _on_writer(strategy, lambda: run_log.restore(records=0))
    return _train_steps(strategy, data, config, run_dir, state, run_log, record, emit,
                        steps_per_epoch, total_steps)


def _train_steps(strategy: TrainingStrategy, data: DataSource, config: TrainConfig,
                 run_dir: Path, state: dict[str, Any], run_log: _RunLog,
                 record: dict[str, Any], emit: Progress, steps_per_epoch: int,
                 total_steps: int) -> dict[str, Any]:
    writer = strategy.writes_files
    batch_size = config.batch_size
    schedule = build_schedule(config.lr_schedule)
    device = strategy.device

    eval_time = {"seconds": 0.0, "samples": 0}  # this session's validation passes

    def run_eval() -> dict[str, float]:
        emit({"event": "eval_start", "step": state["step"],
              "samples_seen": state["samples_seen"]})
        started = time.perf_counter()
        metrics = strategy.evaluate("val")
        eval_time["seconds"] += time.perf_counter() - started
        eval_time["samples"] += int(metrics.get("samples", 0))
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
    while not state["trained"] and state["step"] < total_steps and not state["stopped_early"]:
        epoch = state["epoch"]
        # On CUDA the next batches are made on a thread while the GPU steps (prefetch.py).
        with prefetched(data.batches("train", batch_size, start_batch=state["batch_in_epoch"],
                                     epoch=epoch, shuffle=True, seed=config.seed,
                                     drop_last=True), device) as batches:
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
                        state["stopped_early"] = True
                ending = step >= total_steps or state["stopped_early"]
                if not ending and (evaluated or (config.checkpoint_every
                                                 and step % config.checkpoint_every == 0)):
                    if not evaluated:
                        train_time += synchronized_clock(device) - tick
                    strategy.save("last", state)
                    tick = synchronized_clock(device)
                elif evaluated:
                    tick = synchronized_clock(device)
                if ending or boundary:
                    break
            train_time += synchronized_clock(device) - tick
    if not state["trained"]:
        # The trained model is saved before anything that can fail late (evaluation, the
        # test split, the summary): a failure there loses no training, and resume only
        # redoes the end.
        state["trained"] = True
        strategy.save("last", state)

    final_val = run_eval()
    reported_step = state["step"]
    # The state is the same on every rank, so all of them take this branch or none.
    if config.patience and state["best_auc"] > final_val["auc"]:
        reported_step = strategy.restore_weights("best")
        final_val = strategy.evaluate("val")
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": state["step"], "samples_seen": state["samples_seen"],
        "reported_step": reported_step, "stopped_early": state["stopped_early"],
        **{f"val_{k}": v for k, v in final_val.items()},
        "samples_per_s": (steps_this_session * batch_size / train_time) if train_time else None,
        "train_seconds": train_time, "final_train_loss": last_loss,
        # Validation passes of this session (the metrics computed included): rate and time.
        "eval_samples_per_s": (eval_time["samples"] / eval_time["seconds"]
                               if eval_time["seconds"] else None),
        "eval_seconds": eval_time["seconds"],
        "native_kernels": ops.active_on(config.device),
        **strategy.summary_extra(steps_this_session),
        **{k: v for k, v in record.items()
           if k not in ("model_kind", "model_config", "train", "data", "data_identity",
                        "world_size", "placement", "plans")},
    }
    if "test" in data.splits() and data.num_samples("test") > 0:
        test = strategy.evaluate("test")
        summary.update({f"test_{k}": v for k, v in test.items()})
    for key in ("auc", "logloss"):
        if f"val_optimal_{key}" in summary:
            summary[f"optimal_{key}"] = summary.pop(f"val_optimal_{key}")
    if writer:
        write_json_atomic(run_dir / runs.SUMMARY_NAME, summary)
    emit({"event": "end", **summary})
    return summary
