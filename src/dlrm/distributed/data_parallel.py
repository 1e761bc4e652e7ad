"""The data-parallel half of hybrid parallelism: gradient sums and score gathers over ranks.

After ``shard_model``, every parameter that is not an embedding shard (MLPs, interactions,
cross networks, mixed-dimension projections, replicated tables) has a copy on every rank.
Each rank's loss is its slice's share of the global batch mean,

    loss_r = mean_{i in slice r} BCE(logit_i, y_i) * b_r / B,

so the *sum* over ranks of the gradients of these copies is the single-process gradient of the
batch mean, also when B % W != 0. ``sync_gradients`` forms that sum in one flat all-reduce
(TorchRec and DDP average instead, which needs the loss scaled by W; a sum keeps the loss the
user sees the plain batch mean). Embedding shards are left alone: the all-to-all's backward
already handed them the gradient of the whole global batch, and their lookup's backward
applied it (``dlrm.training.optim``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlrm.distributed.sharding import CommStats, sharded_modules
from dlrm.features import slice_length
from dlrm.timing import synchronized_clock


@dataclass
class RankContext:
    """This process's place in a job: rank, world size, process group, all-reduce counters."""

    rank: int
    world_size: int
    group: Any = None
    stats: CommStats = field(default_factory=CommStats)

    def local_batch(self, global_batch: int) -> int:
        return slice_length(global_batch, self.rank, self.world_size)

    def batch_slice(self, global_batch: int) -> slice:
        start = sum(slice_length(global_batch, q, self.world_size) for q in range(self.rank))
        return slice(start, start + self.local_batch(global_batch))


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter with a copy on each rank (all but the embedding shards), in
    ``model.parameters()`` order — the same list on every rank."""
    return [p for p in model.parameters()
            if p.requires_grad and not getattr(p, "sharded", False)]


def all_reduce_(tensor: torch.Tensor, ctx: RankContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (counted in ``ctx.stats``); returns it."""
    if ctx.world_size > 1:
        tick = synchronized_clock(tensor.device)
        dist.all_reduce(tensor, group=ctx.group)
        ctx.stats.all_reduce_seconds += synchronized_clock(tensor.device) - tick
        ctx.stats.all_reduce_bytes += tensor.numel() * tensor.element_size()
    return tensor


def sync_gradients(model: nn.Module, ctx: RankContext) -> None:
    """Sum the gradients of every replicated parameter over ranks in one flat all-reduce.

    Dense gradients are summed as they are; a replicated table's sparse row gradient is summed
    densely (replicated tables are small) and given back as rows. Call after ``backward``,
    before the optimizer.
    """
    params = replicated_parameters(model)
    pieces = []
    for p in params:
        if p.grad is None:
            pieces.append(torch.zeros(p.numel(), device=p.device))
        elif p.grad.is_sparse:
            pieces.append(p.grad.to_dense().reshape(-1).float())
        else:
            pieces.append(p.grad.reshape(-1).float())
    if ctx.world_size == 1 or not pieces:
        return
    flat = all_reduce_(torch.cat(pieces), ctx)
    offset = 0
    for p in params:
        summed = flat[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            continue
        if p.grad.is_sparse:  # touched rows, for the row optimizers
            p.grad = summed.to(p.dtype).to_sparse(sparse_dim=1)
        else:
            p.grad.copy_(summed)


def gather_scores(values: torch.Tensor, global_batch: int, ctx: RankContext) -> torch.Tensor:
    """Concatenate every rank's slice (rank order) of a per-sample tensor, on all ranks."""
    if ctx.world_size == 1:
        return values
    sizes = [slice_length(global_batch, q, ctx.world_size) for q in range(ctx.world_size)]
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded, group=ctx.group)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


def comm_summary(model: nn.Module, ctx: RankContext) -> dict[str, float]:
    """All-to-all (every sharded module) and all-reduce seconds and bytes of this rank."""
    modules = sharded_modules(model).values()
    return {"all_to_all_seconds": sum(m.stats.all_to_all_seconds for m in modules),
            "all_to_all_bytes_sent": sum(m.stats.all_to_all_bytes_sent for m in modules),
            "all_reduce_seconds": ctx.stats.all_reduce_seconds,
            "all_reduce_bytes": ctx.stats.all_reduce_bytes}


def reset_comm_stats(model: nn.Module, ctx: RankContext) -> None:
    for module in sharded_modules(model).values():
        module.stats.reset()
    ctx.stats.reset()
