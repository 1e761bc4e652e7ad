"""The distributed training step, whole-split evaluation, and the shared loop's rank strategy.

Every rank builds the same model (any kind) with the same seed, its embedding tables deferred,
and shards them (``shard_model``): the dense part starts identical on every rank and equal to
a single-process build, every table row equal to the same row built in one process. Every
rank reads the same global batch of B samples from the ``DataSource``: the dense features and
labels of its ``rank_slice`` and the sparse ids of all B samples (for the tables it holds). The
single-process loss is the batch mean, so rank r minimises

    loss_r = mean_{i in slice r} BCE(logit_i, y_i) * b_r / B

and the gradients summed over ranks (all-to-all for embedding shards, all-reduce for the rest)
equal the single-process gradients, also when B % W != 0. The summed loss_r (the global batch
loss) rides along in the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlrm.data.prefetch import prefetched
from dlrm.data.source import DataSource
from dlrm.distributed.checkpoint import load_sharded, load_state_into, save_sharded
from dlrm.distributed.data_parallel import (
    RankContext,
    all_reduce_,
    comm_summary,
    gather_scores,
    reset_comm_stats,
    sync_gradients,
)
from dlrm.distributed.launch import Watchdog, device_and_backend, local_rank
from dlrm.distributed.planner import ShardingPlan
from dlrm.distributed.sharding import (
    plan_model,
    plans_text,
    rank_memory,
    shard_model,
    sharded_modules,
)
from dlrm.features import Batch, SparseFeatures
from dlrm.metrics import MetricAccumulator
from dlrm.models import build_model, deferred_tables
from dlrm.models.memory import check_memory
from dlrm.training import checkpoint as ckpt_io
from dlrm.training.data_identity import data_identity
from dlrm.training.loop import (
    TrainConfig,
    autocast,
    check_before_training,
    check_distributable,
    resolve_batch_size,
    run_loop,
)
from dlrm.training.optim import HybridOptimizer, build_optimizer

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or crashed."""


@contextlib.contextmanager
def _peers_checked(rank: int, what: str) -> Iterator[None]:
    """Turn gloo/nccl's low-level errors into one that says what happened and where."""
    tick = time.perf_counter()
    try:
        yield
    except (RuntimeError, dist.DistBackendError) as err:
        if isinstance(err, PeerFailure) or not _looks_like_comm_error(err):
            raise
        raise PeerFailure(
            f"rank {rank}: {what} failed after {time.perf_counter() - tick:.1f} s waiting for "
            f"the other ranks — one of them died, hung past the timeout or crashed (see its "
            f"own error above). Backend said: {str(err).strip().splitlines()[0]}") from err


def _looks_like_comm_error(err: BaseException) -> bool:
    text = str(err).lower()
    return any(word in text for word in ("gloo", "nccl", "timed out", "timeout", "connection",
                                         "peer", "socket", "closed"))


def train_step(model: nn.Module, ctx: RankContext, optimizer: HybridOptimizer, batch: Batch,
               precision: str = "fp32") -> float:
    """One hybrid-parallel optimizer step on a GLOBAL batch; returns the global batch-mean loss.

    The global loss is summed over ranks *before* the backward, where the embedding shards
    update their rows: a loss that is not finite on any rank stops every rank before any
    update. ``batch`` may sit on the CPU: this rank's dense/label slice and the sparse ids go
    to the model's device (the ids of all B samples are needed for the shards held here)."""
    global_batch = len(batch)
    part = ctx.batch_slice(global_batch)
    dense, sparse, labels = _rank_inputs(model, batch, part)
    with autocast(str(dense.device), precision):
        logits = model(dense, sparse)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    weighted = loss * (labels.numel() / global_batch)
    global_loss = float(all_reduce_(weighted.detach().clone(), ctx))
    if not math.isfinite(global_loss):  # the summed loss: every rank stops together
        raise FloatingPointError(f"training diverged: the global loss is {global_loss}; lower "
                                 f"--lr or use --optimizer adagrad")
    weighted.backward()
    sync_gradients(model, ctx)
    optimizer.step()
    optimizer.zero_grad()
    return global_loss


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live: inputs go there."""
    return next(model.parameters()).device


def _rank_inputs(model: nn.Module, batch: Batch, part: slice
                 ) -> tuple[torch.Tensor, SparseFeatures, torch.Tensor]:
    """The dense rows and labels of this rank's slice and the global sparse ids, on the
    model's device. Slicing before the copy sends only b_r of the B dense rows to a GPU."""
    device = model_device(model)
    return (batch.dense[part].to(device, non_blocking=True), batch.sparse.to(device),
            batch.labels[part].to(device, non_blocking=True))


@torch.no_grad()
def evaluate_distributed(model: nn.Module, ctx: RankContext, data: DataSource,
                         split: str = "val", batch_size: int = 8192, precision: str = "fp32",
                         watchdog: Watchdog | None = None) -> dict[str, float]:
    """Exact metrics over the WHOLE split: each rank scores its slice of every batch and the
    scores are gathered, so every rank returns the metrics of all samples."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    with prefetched(data.batches(split, batch_size), model_device(model)) as batches:
        for batch in batches:
            dense, sparse, _ = _rank_inputs(model, batch, ctx.batch_slice(len(batch)))
            with autocast(str(dense.device), precision):
                logits = model(dense, sparse)
            # Labels stay on the CPU, where the accumulator keeps every score anyway.
            acc.update(gather_scores(logits.float(), len(batch), ctx), batch.labels)
            if watchdog is not None:
                watchdog.beat()
    model.train(was_training)
    metrics = acc.compute()
    optimal = getattr(data, "optimal_metrics", lambda _s: None)(split)
    if optimal:
        metrics["optimal_auc"] = optimal["auc"]
        metrics["optimal_logloss"] = optimal["logloss"]
    return metrics


def build_sharded_model(kind: str, model_config: dict[str, Any], ctx: RankContext,
                        placement: str = "auto", seed: int = 0,
                        plans: dict[str, ShardingPlan] | None = None,
                        device: str | torch.device = "cpu",
                        row_wise_min_rows: int | None = None,
                        before_allocating: Callable[[nn.Module, dict[str, ShardingPlan]],
                                                    None] | None = None) -> nn.Module:
    """A ``kind`` model with its tables sharded over ``ctx``'s ranks, on ``device``.

    Built exactly as in one process (``torch.manual_seed(seed)`` then the registry's
    builder) but with the tables deferred, so no rank allocates a table it does not hold:
    the dense part and every table row equal a single-process build with the same seed.
    ``before_allocating(deferred model, plans)`` runs before any table row exists (the memory
    check)."""
    torch.manual_seed(seed)
    with deferred_tables():
        model = build_model(kind, model_config)
    plans = {**plan_model(model, ctx.world_size, placement, row_wise_min_rows), **(plans or {})}
    if before_allocating is not None:
        before_allocating(model, plans)
    shard_model(model, ctx.world_size, ctx.rank, placement, ctx.group, plans, device)
    return model.to(device)


class HybridParallelStrategy:
    """``run_loop``'s strategy on one rank of a hybrid-parallel job.

    Steps, evaluations and checkpoints are collective: every rank runs each of them, in the
    same order (``run_loop`` guarantees it). Rank 0 writes the run's files; every rank writes
    its part of the sharded checkpoints ``run_dir/last`` and ``run_dir/best``
    (``dlrm.distributed.checkpoint``). Collective failures become ``PeerFailure`` naming the
    step; the watchdog is fed per step and per evaluation batch and paused while saving.
    """

    def __init__(self, kind: str, model_config: dict[str, Any], model: nn.Module,
                 ctx: RankContext, optimizer: HybridOptimizer, data: DataSource,
                 config: TrainConfig, run_dir: Path, watchdog: Watchdog | None = None) -> None:
        self.kind, self.model_config = kind, model_config
        self.model, self.ctx, self.optimizer, self.data = model, ctx, optimizer, data
        self.config, self.run_dir, self.watchdog = config, run_dir, watchdog
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.device = str(model_device(model))
        self.writes_files = self.rank == 0
        self.data_identity = data_identity(data)

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the run directory's decisions are rank 0's)."""
        box = [value]
        with _peers_checked(self.rank, "sharing rank 0's run directory state"):
            dist.broadcast_object_list(box, src=0, group=self.ctx.group)
        return box[0]

    def train_step(self, batch: Batch, step: int) -> float:
        with _peers_checked(self.rank, f"training step {step}"):
            loss = train_step(self.model, self.ctx, self.optimizer, batch,
                              self.config.precision)
        if self.watchdog is not None:
            self.watchdog.beat()
        return loss

    def evaluate(self, split: str) -> dict[str, float]:
        # The summary's communication times and bytes per step are those of training steps
        # (as train_seconds is): evaluation traffic is taken back out.
        before = comm_summary(self.model, self.ctx)
        try:
            with _peers_checked(self.rank, f"evaluation of the {split} split"):
                return evaluate_distributed(self.model, self.ctx, self.data, split,
                                            self.config.eval_batch_size, self.config.precision,
                                            self.watchdog)
        finally:
            _restore_comm_stats(self.model, self.ctx, before)

    def _paused(self) -> contextlib.AbstractContextManager:
        return self.watchdog.paused() if self.watchdog is not None else contextlib.nullcontext()

    def save(self, name: str, loop_state: dict[str, Any]) -> None:
        with self._paused(), _peers_checked(self.rank, f"saving the sharded checkpoint {name}"):
            save_sharded(self.model, self.ctx, self.run_dir / name, self.kind,
                         self.model_config, optimizer=self.optimizer, extra={
                             "step": loop_state["step"], "loop_state": dict(loop_state),
                             "data_spec": self.data.spec(), "data_identity": self.data_identity,
                             "train_config": asdict(self.config),
                             "rng": torch.get_rng_state()})

    def resume(self) -> dict[str, Any] | None:
        last = self.run_dir / "last"
        if not (last / "meta.pt").is_file():
            if (self.run_dir / "last.pt").exists():
                raise ValueError(f"{self.run_dir} is a single-process run (last.pt); resume "
                                 f"it in one process (without --nproc)")
            return None  # stopped before its first checkpoint: the run starts again
        with self._paused():
            meta = load_sharded(self.model, last, self.optimizer, self.kind, self.model_config)
        if "rng" in meta:
            torch.set_rng_state(meta["rng"])
        log.info("rank %d: resuming %s at step %d (saved by %d ranks)", self.rank, self.run_dir,
                 meta["loop_state"]["step"], meta["world_size"])
        return meta["loop_state"]

    def restore_weights(self, name: str) -> int:
        with self._paused():
            return load_sharded(self.model, self.run_dir / name)["step"]

    def summary_extra(self, steps_this_session: int) -> dict[str, Any]:
        stats, steps = comm_summary(self.model, self.ctx), max(steps_this_session, 1)
        return {
            "world_size": self.world_size, "all_to_all_seconds": stats["all_to_all_seconds"],
            "all_reduce_seconds": stats["all_reduce_seconds"],
            "all_to_all_bytes_sent_per_step": stats["all_to_all_bytes_sent"] / steps,
            "all_reduce_bytes_per_step": stats["all_reduce_bytes"] / steps,
            "checkpoint": str(self.run_dir / "last")}


def _restore_comm_stats(model: nn.Module, ctx: RankContext, before: dict[str, float]) -> None:
    """Put the communication counters back to ``before`` (what ``comm_summary`` said)."""
    reset_comm_stats(model, ctx)
    modules = list(sharded_modules(model).values())
    if modules:
        modules[0].stats.all_to_all_seconds = before["all_to_all_seconds"]
        modules[0].stats.all_to_all_bytes_sent = int(before["all_to_all_bytes_sent"])
    ctx.stats.all_reduce_seconds = before["all_reduce_seconds"]
    ctx.stats.all_reduce_bytes = int(before["all_reduce_bytes"])


def train_distributed(kind: str, model_config: dict[str, Any], data: DataSource,
                      config: TrainConfig, run_dir: str | Path, placement: str = "auto",
                      resume: bool = False, init_checkpoint: str | Path | None = None,
                      watchdog: Watchdog | None = None, progress: Progress | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a ``kind`` model on all ranks of the default process group; returns the summary.

    Call on every rank inside ``dlrm.distributed.launch.distributed_session``. The loop is the
    single-process one (``dlrm.training.loop.run_loop``): the same evaluation and checkpoint
    cadence, ``lr_schedule``, ``patience`` and exact resume, and the same model: built from the
    same seed, so 1, 2 or 3 processes train the same weights. Rank 0 writes ``config.json``
    (with the plans), ``metrics.jsonl`` and ``summary.json``; all ranks write the sharded
    checkpoint ``run_dir/last`` (and ``run_dir/best`` with ``patience``). The model lives on
    ``config.device``: the CPU, or ``cuda:LOCAL_RANK``.
    ``progress`` is called on every rank (events carry ``rank``); render only rank 0's.

    Args:
        resume: continue from ``run_dir/last`` (saved by any number of ranks): weights,
            optimizer state and loop position, so the run ends as an uninterrupted one.
        init_checkpoint: start a new run from the weights of this checkpoint: a sharded
            folder (any world size) or a single-process ``.pt`` file of the same model.
    """
    ctx = RankContext(dist.get_rank(), dist.get_world_size())
    run_dir = Path(run_dir)
    device, _ = device_and_backend(config.device, local_rank())  # as distributed_session
    check_distributable(config.optimizer)
    check_before_training(data, config)  # the same on every rank: all stop, before building
    config = resolve_batch_size(config, data)
    if config.batch_size < ctx.world_size:
        raise ValueError(f"batch size {config.batch_size} is smaller than the "
                         f"{ctx.world_size} ranks")

    def check(deferred: nn.Module, plans: dict[str, ShardingPlan]) -> None:
        report = rank_memory(deferred, plans, ctx.rank, config.optimizer,
                             config.sparse_optimizer)
        if progress is not None:
            progress({"event": "memory", "rank": ctx.rank, **report.summary()})
        check_memory(report, device)

    model = build_sharded_model(kind, model_config, ctx, placement, config.seed, device=device,
                                before_allocating=check)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    if init_checkpoint is not None and not resume:
        source = Path(init_checkpoint)
        if source.is_dir():
            load_sharded(model, source, kind=kind, config=model_config)
        else:
            saved = ckpt_io.load(source)
            if saved["model_kind"] != kind or saved["model_config"] != model_config:
                raise ValueError(f"{source}: holds another model than this run's")
            load_state_into(model, saved["model"], str(source))

    def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            progress({**event, "rank": ctx.rank})

    emit({"event": "plan", "plan": plans_text(model)})
    log.info("rank %d/%d on %s: %s", ctx.rank, ctx.world_size, device, ", ".join(
        f"{name}: {len(m.local_shards)} local shards, {len(m.replicated_tables)} replicated"
        for name, m in sharded_modules(model).items()))
    run_record = {"model_kind": kind, "model_config": model_config, "train": asdict(config),
                  "data": data.spec(), "data_identity": data_identity(data),
                  "world_size": ctx.world_size, "placement": placement,
                  "plans": {n: m.plan.to_dict() for n, m in sharded_modules(model).items()}}
    strategy = HybridParallelStrategy(kind, model_config, model, ctx, optimizer, data, config,
                                      run_dir, watchdog)
    reset_comm_stats(model, ctx)
    summary = run_loop(strategy, data, config, run_dir, resume=resume, run_record=run_record,
                       progress=emit, extra=extra)
    log.info("rank %d: done at step %d, last training loss %r, val AUC %r", ctx.rank,
             summary["steps"], summary["final_train_loss"], summary["val_auc"])
    return summary  # the model goes with this frame; distributed_session collects it
