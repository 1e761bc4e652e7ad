"""Hybrid-parallel DLRM: model-parallel embedding shards, data-parallel MLPs, one all-to-all.

Each rank r holds the shards ``plan.rank_shards(r)`` stacked in one ``FusedEmbeddingBag`` and
every replicated table in another. With a global batch of B samples split into contiguous
slices ``rank_slice(B, q, W)`` of b_q samples:

    local   = lookup of r's shards for all B samples          (B, S_r, D)
    a2a     : rank r sends rows rank_slice(B, q, W) of local to rank q
    recv    = [pooled shards of rank 0 | ... | rank W-1] for r's slice   (b_r, sum_p S_p, D)
    pooled  = sum of the shard columns of each table (row-wise partial sums)   (b_r, F, D)
              + replicated tables looked up on r's slice
    logits  = TopMLP(interaction(BottomMLP(dense_r), pooled))  (b_r,)

Backward runs the reverse all-to-all of the pooled gradients, so every shard receives the
gradient of the whole global batch and keeps the project's sparse-row gradient (the sparse
optimizers of ``dlrm.training.optim`` update it unchanged). MLP and replicated-table gradients
are summed over ranks by ``sync_gradients`` (one flat all-reduce).

Row-wise shards look up only the ids inside their row range (shifted to local rows); ids
outside pool to zero, so summing the W partial bags gives the full bag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from dlrm.bench.timing import synchronized_clock
from dlrm.config import DLRMConfig
from dlrm.data.source import rank_slice
from dlrm.distributed.planner import ShardingPlan
from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.interactions import build_interaction
from dlrm.models.mlp import MLP

# Embedding rows are initialised in blocks with their own seeds, so any row range of a table
# can be drawn alone and a table's values do not depend on how it is sharded.
INIT_BLOCK_ROWS = 1 << 16


@dataclass
class CommStats:
    """Seconds and bytes spent in collectives since the last ``reset`` (this rank's view)."""

    all_to_all_seconds: float = 0.0
    all_to_all_bytes_sent: int = 0
    all_reduce_seconds: float = 0.0
    all_reduce_bytes: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.all_to_all_seconds = self.all_reduce_seconds = 0.0
        self.all_to_all_bytes_sent = self.all_reduce_bytes = 0
        self.calls = {}


def feature_bags(sparse: SparseFeatures, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, lengths (B,)) of one feature's B bags."""
    batch = sparse.batch_size
    offsets = sparse.offsets[feature * batch: (feature + 1) * batch + 1]
    values = sparse.values[int(offsets[0]): int(offsets[-1])]
    return values, offsets[1:] - offsets[:-1]


def select_features(sparse: SparseFeatures, features: list[int],
                    samples: slice | None = None) -> SparseFeatures:
    """The bags of ``features`` (in that order) for ``samples`` (default all)."""
    if not features:
        raise ValueError("select_features needs at least one feature")
    batch = sparse.batch_size
    if sparse.one_hot:
        ids = sparse.values.view(sparse.num_features, batch)[features]
        if samples is not None:
            ids = ids[:, samples]
        return SparseFeatures.from_ids(ids.t())
    values, lengths = [], []
    for f in features:
        v, n = feature_bags(sparse, f)
        if samples is not None:
            starts = torch.cumsum(n, 0) - n
            lo = int(starts[samples.start]) if samples.start < batch else v.numel()
            hi = int(starts[samples.stop]) if samples.stop < batch else v.numel()
            v, n = v[lo:hi], n[samples]
        values.append(v)
        lengths.append(n)
    return SparseFeatures.from_lengths(torch.cat(values), torch.cat(lengths), len(features))


def restrict_rows(values: torch.Tensor, lengths: torch.Tensor, row_start: int, row_end: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ids in [row_start, row_end), shifted to 0-based shard rows; new bag lengths."""
    keep = (values >= row_start) & (values < row_end)
    bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    new_lengths = torch.bincount(bag[keep], minlength=lengths.numel())
    return values[keep] - row_start, new_lengths


class _PooledAllToAll(torch.autograd.Function):
    """(B, S_r, D) shard lookups for the global batch -> (b_r, sum_p S_p, D) for r's slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, batch_splits: list[int], shards_per_rank: list[int],
                rank: int, group, stats: CommStats) -> torch.Tensor:  # type: ignore[override]
        dim = local.shape[2]
        my_shards, my_batch = shards_per_rank[rank], batch_splits[rank]
        send = local.contiguous().view(-1)  # batch-major: rank q's rows are contiguous
        in_splits = [b * my_shards * dim for b in batch_splits]
        out_splits = [my_batch * s * dim for s in shards_per_rank]
        recv = local.new_empty(sum(out_splits))
        tick = synchronized_clock(local.device)
        dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
        stats.all_to_all_seconds += synchronized_clock(local.device) - tick
        stats.all_to_all_bytes_sent += (send.numel() - in_splits[rank]) * send.element_size()
        ctx.meta = (batch_splits, shards_per_rank, rank, group, stats, dim)
        pieces = [p.view(my_batch, s, dim) for p, s in zip(recv.split(out_splits),
                                                            shards_per_rank)]
        return torch.cat(pieces, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        batch_splits, shards_per_rank, rank, group, stats, dim = ctx.meta
        my_shards = shards_per_rank[rank]
        send = torch.cat([g.contiguous().view(-1) for g in grad.split(shards_per_rank, dim=1)])
        in_splits = [batch_splits[rank] * s * dim for s in shards_per_rank]
        out_splits = [b * my_shards * dim for b in batch_splits]
        recv = grad.new_empty(sum(out_splits))
        tick = synchronized_clock(grad.device)
        dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
        stats.all_to_all_seconds += synchronized_clock(grad.device) - tick
        stats.all_to_all_bytes_sent += (send.numel() - in_splits[rank]) * send.element_size()
        return recv.view(sum(batch_splits), my_shards, dim), None, None, None, None, None


def init_rows(table_size: int, row_start: int, row_end: int, dim: int, seed: int,
              table: int) -> torch.Tensor:
    """Rows [row_start, row_end) of table ``table`` drawn from U(-sqrt(1/n), sqrt(1/n)) as the
    reference, block by block with seeds (seed, table, block): the same values whatever the
    sharding."""
    bound = math.sqrt(1.0 / table_size)
    out = torch.empty(row_end - row_start, dim)
    first, last = row_start // INIT_BLOCK_ROWS, (row_end - 1) // INIT_BLOCK_ROWS
    for block in range(first, last + 1):
        # An explicit mix (not hash()) so the values are the same on every Python version.
        gen = torch.Generator().manual_seed(
            (seed * 0x9E3779B1 + table * 0x85EBCA77 + block * 0xC2B2AE3D) % (1 << 63))
        lo = block * INIT_BLOCK_ROWS
        n = min(INIT_BLOCK_ROWS, table_size - lo)
        rows = torch.empty(n, dim).uniform_(-bound, bound, generator=gen)
        a, b = max(row_start, lo), min(row_end, lo + n)
        out[a - row_start: b - row_start] = rows[a - lo: b - lo]
    return out


class DistributedDLRM(nn.Module):
    """DLRM with sharded embeddings (model parallel) and replicated MLPs (data parallel).

    Args:
        config: the ``DLRMConfig`` (same meaning as for ``DLRM``).
        plan: a ``ShardingPlan`` for ``config.table_sizes`` and ``config.embedding_dim``.
        rank: this process's rank; ``plan.world_size`` is the world size.
        group: the process group (None: the default group). Unused when W == 1.
        seed: embedding initialisation seed (see ``init_rows``); the MLPs draw from torch's
            global generator, so seed it identically on every rank.
        check_inputs: check ids against the table sizes.

    Call: ``forward(dense (b_r, num_dense), sparse SparseFeatures of the GLOBAL batch B)`` with
    ``b_r = len(rank_slice(B, rank, W))`` returns this rank's logits ``(b_r,)``. Every rank must
    call it with the same global sparse batch (it runs collectives).

    State: ``bottom_mlp.*``, ``top_mlp.*``, ``shards.weight`` (local shards stacked),
    ``replicated.weight``; ``load_full_state_dict`` / ``full_state_dict`` speak the single-process
    ``DLRM`` layout.

    Example (on each of W ranks, after ``init_process_group``):
        >>> plan = plan_tables(cfg.table_sizes, cfg.embedding_dim, W)   # doctest: +SKIP
        >>> model = DistributedDLRM(cfg, plan, rank)                     # doctest: +SKIP
        >>> logits = model(dense[rank_slice(B, rank, W)], sparse)        # doctest: +SKIP
    """

    def __init__(self, config: DLRMConfig, plan: ShardingPlan, rank: int, group=None,
                 seed: int = 0, check_inputs: bool = True) -> None:
        super().__init__()
        config.validate()
        if plan.table_sizes != config.table_sizes or plan.embedding_dim != config.embedding_dim:
            raise ValueError("the sharding plan was made for other tables or another D")
        self.config, self.plan, self.rank, self.group = config, plan, rank, group
        self.world_size = plan.world_size
        self.check_inputs = check_inputs
        dim = config.embedding_dim
        self.bottom_mlp = MLP(config.bottom_mlp, final_activation=True)
        self.interaction, top_in = build_interaction(config)
        self.top_mlp = MLP([top_in, *config.top_mlp], final_activation=False)

        self.local_shards = plan.rank_shards(rank)
        self.replicated_tables = plan.replicated_tables
        self.shards_per_rank = [len(plan.rank_shards(r)) for r in range(self.world_size)]
        self.shards = FusedEmbeddingBag([s.rows for s in self.local_shards] or [1], dim)
        self.replicated = FusedEmbeddingBag(
            [config.table_sizes[t] for t in self.replicated_tables] or [1], dim)
        self.replicated.weight.replicated = True  # its gradient is all-reduced
        self.register_buffer("shard_table", torch.tensor(
            [s.table for s in plan.shards], dtype=torch.int64), persistent=False)
        self.stats = CommStats()
        self.reset_embeddings(seed)

    @property
    def device(self) -> torch.device:
        """Where the parameters live: inputs go there, helper tensors are made there."""
        return self.shards.weight.device

    @torch.no_grad()
    def reset_embeddings(self, seed: int) -> None:
        sizes, dim = self.config.table_sizes, self.config.embedding_dim
        for k, s in enumerate(self.local_shards):
            self.shards.table(k).copy_(init_rows(sizes[s.table], s.row_start, s.row_end, dim,
                                                 seed, s.table))
        for k, t in enumerate(self.replicated_tables):
            self.replicated.table(k).copy_(init_rows(sizes[t], 0, sizes[t], dim, seed, t))

    def _check(self, dense: torch.Tensor, sparse: SparseFeatures, local_batch: int) -> None:
        if sparse.num_features != self.config.num_sparse:
            raise ValueError(f"got {sparse.num_features} sparse features; the model has "
                             f"{self.config.num_sparse} tables")
        if dense.dim() != 2 or dense.shape != (local_batch, self.config.num_dense):
            raise ValueError(f"rank {self.rank}: dense input has shape {tuple(dense.shape)}; "
                             f"expected its slice of the global batch "
                             f"({local_batch}, {self.config.num_dense})")
        if not bool(torch.isfinite(dense).all()):
            raise ValueError(f"rank {self.rank}: dense input has a NaN or infinite value")
        sparse.validate(self.config.table_sizes)

    def local_lookup_features(self, sparse: SparseFeatures) -> SparseFeatures:
        """The global batch's bags for this rank's shards, row-restricted, one per shard."""
        if all(self.plan.kinds[s.table] == "table" for s in self.local_shards):
            return select_features(sparse, [s.table for s in self.local_shards])
        values, lengths = [], []
        for s in self.local_shards:
            v, n = feature_bags(sparse, s.table)
            if self.plan.kinds[s.table] == "row":
                v, n = restrict_rows(v, n, s.row_start, s.row_end)
            values.append(v)
            lengths.append(n)
        return SparseFeatures.from_lengths(torch.cat(values), torch.cat(lengths),
                                           len(self.local_shards))

    def pooled_embeddings(self, sparse: SparseFeatures) -> torch.Tensor:
        """(b_r, F, D): every table's pooled vectors for this rank's slice of the batch."""
        batch, dim = sparse.batch_size, self.config.embedding_dim
        splits = [len(range(batch)[rank_slice(batch, q, self.world_size)])
                  for q in range(self.world_size)]
        mine = rank_slice(batch, self.rank, self.world_size)
        local_batch = splits[self.rank]
        pooled = torch.zeros(local_batch, self.config.num_sparse, dim,
                             device=sparse.values.device)
        if self.plan.shards:
            if self.local_shards:
                local = self.shards(self.local_lookup_features(sparse))  # (B, S_r, D)
            else:
                # No shards here, but the backward all-to-all is collective: keep this rank in
                # the autograd graph with an empty lookup of its 1-row placeholder table.
                device = sparse.values.device
                empty = SparseFeatures.from_lengths(
                    torch.empty(0, dtype=torch.int64, device=device),
                    torch.zeros(batch, dtype=torch.int64, device=device), 1)
                local = self.shards(empty)[:, :0]  # (B, 0, D)
            if self.world_size > 1:
                recv = _PooledAllToAll.apply(local, splits, self.shards_per_rank, self.rank,
                                             self.group, self.stats)  # (b_r, sum S_p, D)
            else:
                recv = local
            pooled = pooled.index_add(1, self.shard_table, recv)
        if self.replicated_tables:
            rep = self.replicated(select_features(sparse, self.replicated_tables, mine))
            index = torch.tensor(self.replicated_tables, device=pooled.device)
            pooled = pooled.index_copy(1, index, rep)
        return pooled

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        local_batch = len(range(sparse.batch_size)[rank_slice(sparse.batch_size, self.rank,
                                                               self.world_size)])
        if self.check_inputs:
            self._check(dense, sparse, local_batch)
        x = self.bottom_mlp(dense)  # (b_r, D)
        pooled = self.pooled_embeddings(sparse)  # (b_r, F, D)
        if local_batch == 0:  # a last evaluation batch smaller than W leaves some ranks idle
            return x.new_zeros(0) + 0 * pooled.sum()
        return self.top_mlp(self.interaction(x, pooled)).squeeze(1)  # (b_r,)

    # -- gradients ------------------------------------------------------------------------
    def sync_gradients(self, extra: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum MLP and replicated-table gradients over ranks in one flat all-reduce.

        ``extra`` (e.g. the weighted loss) rides along and comes back summed. Call after
        ``backward`` and before the optimizer step.
        """
        params = [p for p in self.parameters()
                  if p.grad is not None and not getattr(p, "sparse_rows", False)]
        rep = self.replicated.weight
        grads = [p.grad.reshape(-1) for p in params]
        if self.replicated_tables and rep.grad is not None:
            grads.append(rep.grad.to_dense().reshape(-1))
        if extra is not None:
            grads.append(extra.detach().reshape(-1).to(torch.float32))
        if self.world_size == 1 or not grads:
            return extra
        flat = torch.cat(grads)
        tick = synchronized_clock(flat.device)
        dist.all_reduce(flat, group=self.group)
        self.stats.all_reduce_seconds += synchronized_clock(flat.device) - tick
        self.stats.all_reduce_bytes += flat.numel() * flat.element_size()
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
            offset += n
        if self.replicated_tables and rep.grad is not None:
            n = rep.numel()
            dense_grad = flat[offset: offset + n].view_as(rep)
            rep.grad = dense_grad.to_sparse(sparse_dim=1)  # touched rows, for the row optimizers
            offset += n
        if extra is not None:
            return flat[offset: offset + extra.numel()].view_as(extra)
        return None

    # -- state in the single-process layout --------------------------------------------------
    def table_offsets(self) -> list[int]:
        offsets = [0]
        for n in self.config.table_sizes:
            offsets.append(offsets[-1] + n)
        return offsets

    @torch.no_grad()
    def load_full_state_dict(self, full: dict[str, torch.Tensor]) -> None:
        """Load a single-process ``DLRM`` state dict (fused ``embeddings.weight``)."""
        offsets = self.table_offsets()
        weight = full["embeddings.weight"]
        for k, s in enumerate(self.local_shards):
            start = offsets[s.table]
            self.shards.table(k).copy_(weight[start + s.row_start: start + s.row_end])
        for k, t in enumerate(self.replicated_tables):
            self.replicated.table(k).copy_(weight[offsets[t]: offsets[t + 1]])
        dense = {k: v for k, v in full.items() if k.startswith(("bottom_mlp.", "top_mlp."))}
        missing = [k for k in self.dense_state_dict() if k not in dense]
        if missing:
            raise ValueError(f"state dict lacks {missing}")
        self.load_state_dict({**self.state_dict(), **dense})

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(("bottom_mlp.", "top_mlp."))}

    def shard_tensors(self) -> dict[str, torch.Tensor]:
        """This rank's shards as ``{"table:row_start:row_end": (rows, D)}``, copied to the CPU
        (checkpoints and gathers should not depend on the GPU they came from)."""
        return {f"{s.table}:{s.row_start}:{s.row_end}": cpu_copy(self.shards.table(k))
                for k, s in enumerate(self.local_shards)}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The single-process ``DLRM`` state dict on the CPU, gathered from all ranks
        (collective; small models only: every rank receives every table)."""
        pieces: list[dict[str, torch.Tensor]] = [{} for _ in range(self.world_size)]
        mine = self.shard_tensors()
        if self.world_size > 1:
            dist.all_gather_object(pieces, mine, group=self.group)
        else:
            pieces = [mine]
        offsets = self.table_offsets()
        weight = torch.empty(offsets[-1], self.config.embedding_dim)
        for part in pieces:
            for key, rows in part.items():
                t, lo, hi = (int(x) for x in key.split(":"))
                weight[offsets[t] + lo: offsets[t] + hi] = rows
        for k, t in enumerate(self.replicated_tables):
            weight[offsets[t]: offsets[t + 1]] = cpu_copy(self.replicated.table(k))
        return {**{k: cpu_copy(v) for k, v in self.dense_state_dict().items()},
                "embeddings.weight": weight}


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy on the CPU (a fresh tensor also when ``tensor`` is already there)."""
    return tensor.detach().to("cpu", copy=True)
