"""The distributed training step, loop and whole-split evaluation.

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
import json
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
from dlrm.distributed.sharded import DistributedDLRM
from dlrm.features import Batch, SparseFeatures
from dlrm.training.loop import TrainConfig, autocast
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
    dense, labels, sparse = _rank_inputs(model, batch, part)
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
                 ) -> tuple[torch.Tensor, torch.Tensor, SparseFeatures]:
    """(dense, labels) of this rank's slice and the global sparse ids, on the model's device.

    Slicing before the copy sends only b_r of the B dense rows to the GPU."""
    device = model.device
    return (batch.dense[part].to(device, non_blocking=True),
            batch.labels[part].to(device, non_blocking=True), batch.sparse.to(device))


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
        dense, _, sparse = _rank_inputs(model, batch, part)
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


def train_distributed(model_config: dict[str, Any], data: DataSource, config: TrainConfig,
                      run_dir: str | Path, placement: str = "auto", resume: bool = False,
                      init_checkpoint: str | Path | None = None,
                      watchdog: Watchdog | None = None, progress: Progress | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train DLRM on all ranks of the default process group; returns the summary.

    Call on every rank inside ``dlrm.distributed.launch.distributed_session``. Rank 0 writes
    ``config.json`` (with the plan), ``metrics.jsonl`` and ``summary.json``; all ranks write
    the sharded checkpoint ``run_dir/last`` (see ``dlrm.distributed.checkpoint``) at every
    evaluation, every ``checkpoint_every`` steps and at the end.
    ``progress`` is called on every rank (events carry ``rank``); render only rank 0's.

    Args:
        resume: continue from ``run_dir/last`` (saved by any number of ranks): weights,
            optimizer state and loop position, so the run ends as an uninterrupted one.
        init_checkpoint: start a new run from the weights of this sharded checkpoint (any
            world size) instead of a fresh initialisation.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(run_dir)
    last_path = run_dir / "last"
    emit = progress or (lambda _event: None)
    device, _ = device_and_backend(config.device, local_rank())  # as distributed_session
    if config.batch_size < world:
        raise ValueError(f"batch size {config.batch_size} is smaller than the {world} ranks")
    model = build_distributed_model(model_config, rank, world, placement, config.seed,
                                    device=device)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "window_loss": 0.0,
                             "window_steps": 0}
    if resume:
        if not (last_path / "meta.pt").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no sharded checkpoint {last_path}")
        meta = load_sharded(model, last_path, optimizer)
        state.update(meta["loop_state"])
        log.info("rank %d: resumed %s at step %d (saved by %d ranks)", rank, run_dir,
                 state["step"], meta["plan"]["world_size"])
    elif init_checkpoint is not None:
        load_sharded(model, init_checkpoint)
    emit({"event": "plan", "rank": rank, "plan": str(model.plan)})
    log.info("rank %d/%d: %d local shards, %d replicated tables", rank, world,
             len(model.local_shards), len(model.replicated_tables))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        if resume and metrics_path.exists():  # drop records written after the checkpoint
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= state["step"]]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        else:
            metrics_path.write_text("")
        if not resume:
            (run_dir / "config.json").write_text(json.dumps(
                {"model_kind": "dlrm", "model_config": model_config, "train": asdict(config),
                 "data": data.spec(), "world_size": world, "placement": placement,
                 "plan": model.plan.to_dict(), **(extra or {})}, indent=2))

    def write(record: dict[str, Any]) -> None:
        if rank == 0:
            with (run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def save() -> None:
        pause = watchdog.paused() if watchdog is not None else contextlib.nullcontext()
        with pause, _peers_checked(rank, "saving the sharded checkpoint"):
            save_sharded(model, last_path, optimizer=optimizer, extra={
                "step": state["step"], "loop_state": dict(state), "data_spec": data.spec(),
                "train_config": asdict(config)})

    batch_size = config.batch_size
    steps_per_epoch = data.num_samples("train") // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"training split has {data.num_samples('train')} samples, fewer than "
                         f"one batch of {batch_size}")
    total_steps = steps_per_epoch * config.epochs
    if config.max_samples:
        total_steps = min(total_steps, max(1, config.max_samples // batch_size))
    emit({"event": "start", "rank": rank, "step": state["step"], "total_steps": total_steps,
          "batch_size": batch_size})
    model.train()
    losses: list[float] = []
    train_time = 0.0
    model.stats.reset()
    while state["step"] < total_steps:
        epoch = state["epoch"]
        tick = time.perf_counter()
        for batch in data.batches("train", batch_size, start_batch=state["batch_in_epoch"],
                                  epoch=epoch, shuffle=True, seed=config.seed, drop_last=True):
            with _peers_checked(rank, f"training step {state['step'] + 1}"):
                loss = train_step(model, optimizer, batch, config.precision)
            state["step"] += 1
            state["batch_in_epoch"] += 1
            step = state["step"]
            losses.append(loss)
            state["window_loss"] += loss
            state["window_steps"] += 1
            if watchdog is not None:
                watchdog.beat()
            emit({"event": "step", "rank": rank, "step": step, "samples": len(batch),
                  "loss": state["window_loss"] / state["window_steps"]})
            if step % config.log_every == 0 or step == total_steps:
                write({"event": "train", "step": step, "epoch": epoch,
                       "samples_seen": step * batch_size,
                       "loss": state["window_loss"] / state["window_steps"]})
                state["window_loss"], state["window_steps"] = 0.0, 0
            boundary = state["batch_in_epoch"] >= steps_per_epoch
            if boundary:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            evaluated = False
            if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                train_time += time.perf_counter() - tick
                with _peers_checked(rank, f"evaluation at step {step}"):
                    metrics = evaluate_distributed(model, data, "val", config.eval_batch_size,
                                                   config.precision, watchdog)
                record = {"event": "eval", "split": "val", "step": step, **metrics}
                write(record)
                emit({**record, "rank": rank})
                evaluated = True
            if evaluated or (config.checkpoint_every and step % config.checkpoint_every == 0):
                if not evaluated:
                    train_time += time.perf_counter() - tick
                save()
                tick = time.perf_counter()
            if step >= total_steps or boundary:
                break
        train_time += time.perf_counter() - tick
    step = state["step"]
    stats = model.stats
    with _peers_checked(rank, "final evaluation"):
        final = evaluate_distributed(model, data, "val", config.eval_batch_size,
                                     config.precision, watchdog)
    write({"event": "eval", "split": "val", "step": step, **final})
    save()
    steps_here = len(losses)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "world_size": world, "steps": step,
        "samples_seen": step * batch_size, **{f"val_{k}": v for k, v in final.items()},
        "samples_per_s": steps_here * batch_size / train_time if train_time else None,
        "train_seconds": train_time, "all_to_all_seconds": stats.all_to_all_seconds,
        "all_reduce_seconds": stats.all_reduce_seconds,
        "all_to_all_bytes_sent_per_step": stats.all_to_all_bytes_sent / max(steps_here, 1),
        "all_reduce_bytes_per_step": stats.all_reduce_bytes / max(steps_here, 1),
        "checkpoint": str(last_path), "final_train_loss": losses[-1] if losses else None,
        **(extra or {}),
    }
    for key in ("auc", "logloss"):
        if f"val_optimal_{key}" in summary:
            summary[f"optimal_{key}"] = summary.pop(f"val_optimal_{key}")
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    emit({"event": "end", "rank": rank, **summary})
    return summary  # the model goes with this frame; distributed_session collects it
