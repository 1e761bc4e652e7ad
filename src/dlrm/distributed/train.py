"""The distributed training step, whole-split evaluation, and the shared loop's rank strategy.

Every rank reads the same global batch of B samples from the ``DataSource``: the dense
features and labels of its ``rank_slice`` and the sparse ids of all B samples (for the tables
it holds). The single-process loss is the batch mean, so rank r minimises

    loss_r = mean_{i in slice r} BCE(logit_i, y_i) * b_r / B

and the gradients summed over ranks (all-to-all for embedding shards, all-reduce for MLPs
and replicated tables) equal the single-process gradients, also when B % W != 0. The summed
loss_r (the global batch loss) rides along in the gradient all-reduce.
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

from dlrm.config import DLRMConfig
from dlrm.data.source import DataSource, rank_slice
from dlrm.distributed.checkpoint import load_sharded, save_sharded
from dlrm.distributed.launch import Watchdog, device_and_backend, local_rank
from dlrm.distributed.planner import ShardingPlan, plan_tables
from dlrm.distributed.sharded import CommStats, DistributedDLRM
from dlrm.features import Batch, SparseFeatures
from dlrm.training.loop import TrainConfig, autocast, run_loop
from dlrm.training.metrics import MetricAccumulator
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


def train_step(model: DistributedDLRM, optimizer: HybridOptimizer, batch: Batch,
               precision: str = "fp32") -> float:
    """One hybrid-parallel SGD step on a GLOBAL batch; returns the global batch-mean loss.

    ``batch`` may sit on the CPU: this rank's dense/label slice and the sparse ids go to the
    model's device (the ids of all B samples are needed for the shards held here)."""
    global_batch = len(batch)
    part = rank_slice(global_batch, model.rank, model.world_size)
    dense, sparse = _rank_inputs(model, batch, part)
    labels = batch.labels[part].to(model.device, non_blocking=True)
    with autocast(str(model.device), precision):
        logits = model(dense, sparse)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    weighted = loss * (labels.numel() / global_batch)
    weighted.backward()
    total = model.sync_gradients(extra=weighted.detach().reshape(1))
    global_loss = float(total) if total is not None else float(weighted.detach())
    if not math.isfinite(global_loss):  # the all-reduced loss: every rank stops together
        raise FloatingPointError(f"training diverged: the global loss is {global_loss}; lower "
                                 f"--lr or use --optimizer adagrad")
    optimizer.step()
    optimizer.zero_grad()
    return global_loss


def _rank_inputs(model: DistributedDLRM, batch: Batch, part: slice
                 ) -> tuple[torch.Tensor, SparseFeatures]:
    """The dense rows of this rank's slice and the global sparse ids, on the model's device.

    Slicing before the copy sends only b_r of the B dense rows to the GPU."""
    return (batch.dense[part].to(model.device, non_blocking=True),
            batch.sparse.to(model.device))


def _gather_scores(model: DistributedDLRM, values: torch.Tensor, global_batch: int
                   ) -> torch.Tensor:
    """Concatenate every rank's slice (rank order) of a per-sample tensor on all ranks."""
    world = model.world_size
    if world == 1:
        return values
    sizes = [len(range(global_batch)[rank_slice(global_batch, q, world)]) for q in range(world)]
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=model.group)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


@torch.no_grad()
def evaluate_distributed(model: DistributedDLRM, data: DataSource, split: str = "val",
                         batch_size: int = 8192, precision: str = "fp32",
                         watchdog: Watchdog | None = None) -> dict[str, float]:
    """Exact metrics over the WHOLE split: each rank scores its slice of every batch and the
    scores are gathered, so every rank returns the metrics of all samples."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    for batch in data.batches(split, batch_size):
        part = rank_slice(len(batch), model.rank, model.world_size)
        dense, sparse = _rank_inputs(model, batch, part)
        with autocast(str(model.device), precision):
            logits = model(dense, sparse)
        # Labels stay on the CPU, where the accumulator keeps every score anyway.
        acc.update(_gather_scores(model, logits.float(), len(batch)), batch.labels)
        if watchdog is not None:
            watchdog.beat()
    model.train(was_training)
    metrics = acc.compute()
    optimal = getattr(data, "optimal_metrics", lambda _s: None)(split)
    if optimal:
        metrics["optimal_auc"] = optimal["auc"]
        metrics["optimal_logloss"] = optimal["logloss"]
    return metrics


def build_distributed_model(model_config: dict[str, Any], rank: int, world_size: int,
                            placement: str = "auto", seed: int = 0,
                            plan: ShardingPlan | None = None,
                            device: str | torch.device = "cpu") -> DistributedDLRM:
    """``DistributedDLRM`` for a config dict on ``device``; MLPs seeded by ``seed`` identically
    on all ranks. Built on the CPU (the seeded draws do not depend on the device), then moved."""
    config = DLRMConfig.from_dict(model_config)
    if plan is None:
        plan = plan_tables(config.table_sizes, config.embedding_dim, world_size, placement)
    torch.manual_seed(seed)
    return DistributedDLRM(config, plan, rank, seed=seed).to(device)


class HybridParallelStrategy:
    """``run_loop``'s strategy on one rank of a hybrid-parallel job.

    Steps, evaluations and checkpoints are collective: every rank runs each of them, in the
    same order (``run_loop`` guarantees it). Rank 0 writes the run's files; every rank writes
    its part of the sharded checkpoints ``run_dir/last`` and ``run_dir/best``
    (``dlrm.distributed.checkpoint``). Collective failures become ``PeerFailure`` naming the
    step; the watchdog is fed per step and per evaluation batch and paused while saving.
    """

    def __init__(self, model: DistributedDLRM, optimizer: HybridOptimizer, data: DataSource,
                 config: TrainConfig, run_dir: Path, watchdog: Watchdog | None = None) -> None:
        self.model, self.optimizer, self.data, self.config = model, optimizer, data, config
        self.run_dir, self.watchdog = run_dir, watchdog
        self.rank, self.world_size = model.rank, model.world_size
        self.device = str(model.device)
        self.writes_files = self.rank == 0

    def train_step(self, batch: Batch, step: int) -> float:
        with _peers_checked(self.rank, f"training step {step}"):
            loss = train_step(self.model, self.optimizer, batch, self.config.precision)
        if self.watchdog is not None:
            self.watchdog.beat()
        return loss

    def evaluate(self, split: str) -> dict[str, float]:
        # Evaluation traffic goes to a throwaway counter: the summary's communication times
        # and bytes per step are those of training steps (as train_seconds is).
        training_stats, self.model.stats = self.model.stats, CommStats()
        try:
            with _peers_checked(self.rank, f"evaluation of the {split} split"):
                return evaluate_distributed(self.model, self.data, split,
                                            self.config.eval_batch_size, self.config.precision,
                                            self.watchdog)
        finally:
            self.model.stats = training_stats

    def _paused(self) -> contextlib.AbstractContextManager:
        return self.watchdog.paused() if self.watchdog is not None else contextlib.nullcontext()

    def save(self, name: str, loop_state: dict[str, Any]) -> None:
        with self._paused(), _peers_checked(self.rank, f"saving the sharded checkpoint {name}"):
            save_sharded(self.model, self.run_dir / name, optimizer=self.optimizer, extra={
                "step": loop_state["step"], "loop_state": dict(loop_state),
                "data_spec": self.data.spec(), "train_config": asdict(self.config)})

    def resume(self) -> dict[str, Any]:
        last = self.run_dir / "last"
        if not (last / "meta.pt").is_file():
            raise FileNotFoundError(f"--resume {self.run_dir}: no sharded checkpoint {last}")
        with self._paused():
            meta = load_sharded(self.model, last, self.optimizer)
        log.info("rank %d: resuming %s at step %d (saved by %d ranks)", self.rank, self.run_dir,
                 meta["loop_state"]["step"], meta["plan"]["world_size"])
        return meta["loop_state"]

    def restore_weights(self, name: str) -> int:
        with self._paused():
            return load_sharded(self.model, self.run_dir / name)["step"]

    def summary_extra(self, steps_this_session: int) -> dict[str, Any]:
        stats, steps = self.model.stats, max(steps_this_session, 1)
        return {
            "world_size": self.world_size, "all_to_all_seconds": stats.all_to_all_seconds,
            "all_reduce_seconds": stats.all_reduce_seconds,
            "all_to_all_bytes_sent_per_step": stats.all_to_all_bytes_sent / steps,
            "all_reduce_bytes_per_step": stats.all_reduce_bytes / steps,
            "checkpoint": str(self.run_dir / "last")}


def train_distributed(model_config: dict[str, Any], data: DataSource, config: TrainConfig,
                      run_dir: str | Path, placement: str = "auto", resume: bool = False,
                      init_checkpoint: str | Path | None = None,
                      watchdog: Watchdog | None = None, progress: Progress | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train DLRM on all ranks of the default process group; returns the summary.

    Call on every rank inside ``dlrm.distributed.launch.distributed_session``. The loop is the
    single-process one (``dlrm.training.loop.run_loop``): the same evaluation and checkpoint
    cadence, ``lr_schedule``, ``patience`` and exact resume. Rank 0 writes ``config.json``
    (with the plan), ``metrics.jsonl`` and ``summary.json``; all ranks write the sharded
    checkpoint ``run_dir/last`` (and ``run_dir/best`` with ``patience``). The model lives on
    ``config.device``: the CPU, or ``cuda:LOCAL_RANK``.
    ``progress`` is called on every rank (events carry ``rank``); render only rank 0's.

    Args:
        resume: continue from ``run_dir/last`` (saved by any number of ranks): weights,
            optimizer state and loop position, so the run ends as an uninterrupted one.
        init_checkpoint: start a new run from the weights of this sharded checkpoint (any
            world size) instead of a fresh initialisation.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(run_dir)
    device, _ = device_and_backend(config.device, local_rank())  # as distributed_session
    if config.batch_size < world:
        raise ValueError(f"batch size {config.batch_size} is smaller than the {world} ranks")
    model = build_distributed_model(model_config, rank, world, placement, config.seed,
                                    device=device)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    if init_checkpoint is not None and not resume:
        load_sharded(model, init_checkpoint)

    def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            progress({**event, "rank": rank})

    emit({"event": "plan", "plan": str(model.plan)})
    log.info("rank %d/%d on %s: %d local shards, %d replicated tables", rank, world, device,
             len(model.local_shards), len(model.replicated_tables))
    run_record = {"model_kind": "dlrm", "model_config": model_config, "train": asdict(config),
                  "data": data.spec(), "world_size": world, "placement": placement,
                  "plan": model.plan.to_dict()}
    strategy = HybridParallelStrategy(model, optimizer, data, config, run_dir, watchdog)
    model.stats.reset()
    summary = run_loop(strategy, data, config, run_dir, resume=resume, run_record=run_record,
                       progress=emit, extra=extra)
    log.info("rank %d: done at step %d, last training loss %r, val AUC %r", rank,
             summary["steps"], summary["final_train_loss"], summary["val_auc"])
    return summary  # the model goes with this frame; distributed_session collects it
