"""Sharded embeddings: one module with ``FusedEmbeddingBag``'s contract, swapped into any model.

``shard_model(model, world_size, rank)`` replaces every ``FusedEmbeddingBag`` of a model —
DLRM's tables, DCN's, Wide & Deep's first-order weights, the quotient/remainder tables of QR
embeddings, each dimension group of mixed-dimension embeddings — by a ``ShardedEmbeddingBag``
and leaves everything else as it is (the MLPs, interactions and cross networks become
data-parallel: ``dlrm.distributed.data_parallel``). This is TorchRec's
``DistributedModelParallel`` idea at our size; there is no second copy of any model.

A ``ShardedEmbeddingBag`` for F tables of width D on W ranks holds, on rank r, the shards
``plan.rank_shards(r)`` stacked in one ``FusedEmbeddingBag`` and every replicated table in
another. With a global batch of B samples split into contiguous slices
``rank_slice(B, q, W)`` of b_q samples:

    local   = lookup of r's shards for all B samples          (B, S_r, D)
    a2a     : rank r sends rows rank_slice(B, q, W) of local to rank q
    recv    = [pooled shards of rank 0 | ... | rank W-1] for r's slice   (b_r, sum_p S_p, D)
    pooled  = sum of the shard columns of each table (row-wise partial sums)   (b_r, F, D)
              + replicated tables looked up on r's slice

so its call is ``forward(sparse of the GLOBAL batch) -> pooled (b_r, F, D)`` of this rank's
slice, and every rank must call it with the same global batch (it runs a collective). The
backward runs the reverse all-to-all of the pooled gradients, so every shard receives the
gradient of the whole global batch as the project's sparse row gradient. Row-wise shards look
up only the ids inside their row range (shifted to local rows); ids outside pool to zero, so
summing the W partial bags gives the full bag.

Initial rows are drawn by ``dlrm.models.embeddings.init_rows`` from the replaced module's seed
and init, per (table, block of rows): a sharded table holds exactly the rows the same model
built in one process holds, for any W and any placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from dlrm.allocator import empty_table
from dlrm.distributed.planner import ShardingPlan, plan_tables
from dlrm.features import SparseFeatures, slice_length
from dlrm.models.embeddings import (
    FusedEmbeddingBag,
    RowInit,
    TableModule,
    deferred_tables,
    init_rows,
)
from dlrm.models.memory import MemoryReport, TableMemory, report_for_model
from dlrm.timing import synchronized_clock


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


def _all_to_all(send: torch.Tensor, out_splits: list[int], in_splits: list[int], rank: int,
                group, stats: CommStats) -> torch.Tensor:
    """``all_to_all_single`` of flat ``send`` (``in_splits`` values to each rank), counted in
    ``stats`` (the bytes this rank sends to the others)."""
    recv = send.new_empty(sum(out_splits))
    tick = synchronized_clock(send.device)
    dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
    stats.all_to_all_seconds += synchronized_clock(send.device) - tick
    stats.all_to_all_bytes_sent += (send.numel() - in_splits[rank]) * send.element_size()
    return recv


class _PooledAllToAll(torch.autograd.Function):
    """(B, S_r, D) shard lookups for the global batch -> (b_r, sum_p S_p, D) for r's slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, batch_splits: list[int], shards_per_rank: list[int],
                rank: int, group, stats: CommStats) -> torch.Tensor:  # type: ignore[override]
        dim = local.shape[2]
        my_shards, my_batch = shards_per_rank[rank], batch_splits[rank]
        send = local.contiguous().view(-1)  # batch-major: rank q's rows are contiguous
        out_splits = [my_batch * s * dim for s in shards_per_rank]
        recv = _all_to_all(send, out_splits, [b * my_shards * dim for b in batch_splits], rank,
                           group, stats)
        ctx.meta = (batch_splits, shards_per_rank, rank, group, stats, dim)
        pieces = [p.view(my_batch, s, dim) for p, s in zip(recv.split(out_splits),
                                                            shards_per_rank)]
        return torch.cat(pieces, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        batch_splits, shards_per_rank, rank, group, stats, dim = ctx.meta
        my_shards = shards_per_rank[rank]
        send = torch.cat([g.contiguous().view(-1) for g in grad.split(shards_per_rank, dim=1)])
        recv = _all_to_all(send, [b * my_shards * dim for b in batch_splits],
                           [batch_splits[rank] * s * dim for s in shards_per_rank], rank, group,
                           stats)
        return recv.view(sum(batch_splits), my_shards, dim), None, None, None, None, None


def _fused_with_rows(table_sizes: list[int], dim: int, rows: torch.Tensor) -> FusedEmbeddingBag:
    """A ``FusedEmbeddingBag`` of ``table_sizes`` whose weight is ``rows`` (no drawing)."""
    with deferred_tables():
        fused = FusedEmbeddingBag(table_sizes, dim, seed=0)
    fused.weight = nn.Parameter(rows)
    fused.weight.sparse_rows = True
    fused.table_offsets = fused.table_offsets.to(rows.device)
    return fused


def _joined(pieces: list[torch.Tensor], dim: int, device: torch.device | str | None
            ) -> torch.Tensor:
    """The rows of ``pieces`` (CPU tensors) in one table on ``device``, joined in an
    ``empty_table`` (on the CPU: huge pages); a 1-row placeholder of zeros when there are
    none, which keeps the module usable."""
    if not pieces:
        return torch.zeros(1, dim, device=device)
    return torch.cat(pieces, out=empty_table(sum(len(p) for p in pieces), dim)).to(device)


class ShardedEmbeddingBag(TableModule):
    """F sum-pooled tables of dimension D placed on W ranks by a ``ShardingPlan``.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D.
        plan: where each table (or row range) lives (``plan_tables``).
        rank: this process's rank; ``plan.world_size`` is W.
        group: the process group (None: the default one; unused when W == 1).
        init, seed: the initialisation of the tables (those of the module it replaces), so
            every row starts as it would in one process.
        device: where this rank's shards live.
        draw: draw the initial rows (False: zeros, for a module about to be filled).

    Call: ``forward(sparse)`` with F features of the GLOBAL batch B returns
    ``(b_r, F, D)`` for this rank's slice ``rank_slice(B, rank, W)``.

    Example (on each of W ranks, after ``init_process_group``):
        >>> plan = plan_tables([1000, 20], 8, W)               # doctest: +SKIP
        >>> emb = ShardedEmbeddingBag([1000, 20], 8, plan, rank)  # doctest: +SKIP
        >>> emb(global_sparse).shape  # (b_r, 2, 8)             # doctest: +SKIP
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int, plan: ShardingPlan,
                 rank: int, group=None, init: RowInit | None = None, seed: int = 0,
                 device: torch.device | str | None = None, draw: bool = True) -> None:
        super().__init__()
        if list(plan.table_sizes) != list(table_sizes) or plan.embedding_dim != embedding_dim:
            raise ValueError("the sharding plan was made for other tables or another D")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.plan, self.rank, self.group = plan, rank, group
        self.world_size = plan.world_size
        self.init, self.seed = init or RowInit(), int(seed)
        self.local_shards = plan.rank_shards(rank)
        self.replicated_tables = plan.replicated_tables
        self.shards_per_rank = [len(plan.rank_shards(r)) for r in range(self.world_size)]
        shard_rows = [self._rows(s.table, s.row_start, s.row_end, draw)
                      for s in self.local_shards]
        rep_rows = [self._rows(t, 0, self.table_sizes[t], draw) for t in self.replicated_tables]
        self.shards = _fused_with_rows([s.rows for s in self.local_shards] or [1],
                                       embedding_dim, _joined(shard_rows, embedding_dim, device))
        self.replicated = _fused_with_rows(
            [self.table_sizes[t] for t in self.replicated_tables] or [1], embedding_dim,
            _joined(rep_rows, embedding_dim, device))
        self.shards.weight.sharded = True  # its gradient stays on this rank
        self.replicated.weight.replicated = True  # its gradient is all-reduced
        self.register_buffer("shard_table", torch.tensor(
            [s.table for s in plan.shards], dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("replicated_index", torch.tensor(
            self.replicated_tables, dtype=torch.int64, device=device), persistent=False)
        self.stats = CommStats()

    def _rows(self, table: int, row_start: int, row_end: int, draw: bool) -> torch.Tensor:
        if not draw:
            return torch.zeros(row_end - row_start, self.embedding_dim)
        return init_rows(self.init, self.table_sizes[table], row_start, row_end,
                         self.embedding_dim, self.seed, table)

    @classmethod
    def replacing(cls, fused: FusedEmbeddingBag, plan: ShardingPlan, rank: int, group=None,
                  device: torch.device | str | None = None) -> ShardedEmbeddingBag:
        """The sharded module standing in for ``fused`` (deferred or built): same tables,
        init and seed. A built module's current rows are copied (they may have been
        trained or loaded); a deferred one's are drawn."""
        sharded = cls(fused.table_sizes, fused.embedding_dim, plan, rank, group, fused.init,
                      fused.seed, device, draw=fused.weight.is_meta)
        if not fused.weight.is_meta:
            with torch.no_grad():
                for k, s in enumerate(sharded.local_shards):
                    sharded.shards.table(k).copy_(fused.table(s.table)[s.row_start:s.row_end])
                for k, t in enumerate(sharded.replicated_tables):
                    sharded.replicated.table(k).copy_(fused.table(t))
        return sharded

    def extra_repr(self) -> str:
        return (f"tables={self.num_features}, dim={self.embedding_dim}, rank={self.rank}/"
                f"{self.world_size}, local shards={len(self.local_shards)}, "
                f"replicated={len(self.replicated_tables)}")

    def _local_lookup_features(self, sparse: SparseFeatures) -> SparseFeatures:
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

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        batch, dim, world = sparse.batch_size, self.embedding_dim, self.world_size
        splits = [slice_length(batch, q, world) for q in range(world)]
        start = sum(splits[:self.rank])
        mine = slice(start, start + splits[self.rank])
        device = self.shards.weight.device
        pooled = torch.zeros(splits[self.rank], self.num_features, dim, device=device)
        if self.plan.shards:
            if self.local_shards:
                local = self.shards(self._local_lookup_features(sparse))  # (B, S_r, D)
            else:
                # No shards here, but the backward all-to-all is collective: keep this rank in
                # the autograd graph with an empty lookup of its 1-row placeholder table.
                empty = SparseFeatures.from_lengths(
                    torch.empty(0, dtype=torch.int64, device=device),
                    torch.zeros(batch, dtype=torch.int64, device=device), 1)
                local = self.shards(empty)[:, :0]  # (B, 0, D)
            if world > 1:
                recv = _PooledAllToAll.apply(local, splits, self.shards_per_rank, self.rank,
                                             self.group, self.stats)  # (b_r, sum S_p, D)
            else:
                recv = local
            pooled = pooled.index_add(1, self.shard_table, recv)
        if self.replicated_tables:
            rep = self.replicated(select_features(sparse, self.replicated_tables, mine))
            pooled = pooled.index_copy(1, self.replicated_index, rep)
        return pooled  # (b_r, F, D)

    def pieces(self, replicated: bool = True) -> dict[str, torch.Tensor]:
        """This rank's rows as ``{"table:row_start:row_end": (rows, D)}`` on the CPU: its
        shards and, with ``replicated``, the replicated tables (identical on every rank)."""
        out = {f"{s.table}:{s.row_start}:{s.row_end}": cpu_copy(self.shards.table(k))
               for k, s in enumerate(self.local_shards)}
        for k, t in enumerate(self.replicated_tables if replicated else []):
            out[f"{t}:0:{self.table_sizes[t]}"] = cpu_copy(self.replicated.table(k))
        return out


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy on the CPU (a fresh tensor also when ``tensor`` is already there)."""
    return tensor.detach().to("cpu", copy=True)


def sharded_modules(model: nn.Module) -> dict[str, ShardedEmbeddingBag]:
    """Every ``ShardedEmbeddingBag`` of ``model`` by its name in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ShardedEmbeddingBag)}


def table_modules(model: nn.Module) -> dict[str, FusedEmbeddingBag | ShardedEmbeddingBag]:
    """Every embedding-table module (fused or sharded) by name: what sharding replaces and
    what checkpoints store as row pieces."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, FusedEmbeddingBag | ShardedEmbeddingBag)
            and not any(isinstance(p, ShardedEmbeddingBag) for p in _parents(model, name))}


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:k])) for k in range(1, len(parts))]


def plan_model(model: nn.Module, world_size: int, placement: str = "auto",
               row_wise_min_rows: int | None = None) -> dict[str, ShardingPlan]:
    """A plan for every ``FusedEmbeddingBag`` of ``model`` (built or deferred), by name."""
    return {name: plan_tables(m.table_sizes, m.embedding_dim, world_size, placement,
                              row_wise_min_rows=row_wise_min_rows)
            for name, m in table_modules(model).items() if isinstance(m, FusedEmbeddingBag)}


def rank_memory(model: nn.Module, plans: dict[str, ShardingPlan], rank: int,
                optimizer: str = "sgd", sparse_optimizer: str | None = None) -> MemoryReport:
    """What ``rank`` will hold once ``model`` (deferred) is sharded by ``plans``: the dense
    part whole, of each table the rows placed on this rank (all of a replicated one)."""
    whole = report_for_model(model, optimizer, sparse_optimizer)
    per_row = 4 if (sparse_optimizer or ("sgd" if optimizer == "sgd" else "rowwise_adagrad")) \
        == "rowwise_adagrad" else 0
    report = MemoryReport(dense_param_bytes=whole.dense_param_bytes,
                          dense_grad_bytes=whole.dense_grad_bytes,
                          dense_optimizer_bytes=whole.dense_optimizer_bytes)
    for name, plan in plans.items():
        for t, n in enumerate(plan.table_sizes):
            rows = n if plan.kinds[t] == "replicated" else sum(
                s.rows for s in plan.rank_shards(rank) if s.table == t)
            if rows:
                report.tables.append(TableMemory(t, rows, [(rows, plan.embedding_dim)],
                                                 rows * plan.embedding_dim * 4, rows * per_row,
                                                 name))
    return report


def shard_model(model: nn.Module, world_size: int, rank: int, placement: str = "auto",
                group=None, plans: dict[str, ShardingPlan] | None = None,
                device: torch.device | str | None = None,
                row_wise_min_rows: int | None = None) -> nn.Module:
    """Replace every ``FusedEmbeddingBag`` of ``model`` by a ``ShardedEmbeddingBag`` (in place)
    and return the model, now taking its rank's slice of the dense rows of a global batch.

    Args:
        world_size, rank: W and this process's rank.
        placement: ``auto``, ``table``, ``row`` or ``replicated`` (``plan_tables``) for every
            embedding module without an entry in ``plans``.
        group: the process group (None: the default one).
        plans: ``{module name: ShardingPlan}`` to use instead of planning (e.g. the plans a
            checkpoint was saved with).
        device: where this rank's shards live (the rest of the model is moved by the caller).
        row_wise_min_rows: passed to ``plan_tables`` (tables above it split by rows).

    Build the model under ``dlrm.models.deferred_tables()`` so no process ever allocates
    tables it does not hold; a built model's current rows are kept.
    """
    plans = {**plan_model(model, world_size, placement, row_wise_min_rows), **(plans or {})}
    for name, fused in list(table_modules(model).items()):
        if not isinstance(fused, FusedEmbeddingBag):
            continue
        plan = plans[name]
        if plan.world_size != world_size:
            raise ValueError(f"the plan for {name} is for {plan.world_size} ranks, not "
                             f"{world_size}")
        sharded = ShardedEmbeddingBag.replacing(fused, plan, rank, group, device)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, sharded)
    if hasattr(model, "batch_slice"):
        model.batch_slice = (rank, world_size)
    return model


def sharding_plans(model: nn.Module) -> dict[str, ShardingPlan]:
    """``{module name: plan}`` of a sharded model."""
    return {name: m.plan for name, m in sharded_modules(model).items()}


def plans_text(model: nn.Module) -> str:
    """Every sharded module's plan, for the log."""
    return "\n".join(f"[{name}] {plan}" for name, plan in sharding_plans(model).items())


__all__ = ["CommStats", "ShardedEmbeddingBag", "shard_model", "plan_model", "rank_memory",
           "sharded_modules",
           "table_modules", "sharding_plans", "plans_text", "select_features",
           "restrict_rows", "cpu_copy"]
