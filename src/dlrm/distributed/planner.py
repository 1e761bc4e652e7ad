"""Where each embedding table lives across W ranks: table-wise, row-wise or replicated.

A plan is a list of ``Shard`` objects (table, rows [row_start, row_end), rank) plus the set of
replicated tables. Three placement kinds:

- ``table``: a whole table on one rank; that rank looks it up for the whole global batch and
  an all-to-all hands every rank the pooled vectors of its batch slice.
- ``row``: the table's rows split into W contiguous ranges, one per rank; each rank looks up
  the ids that fall in its range (others pool to zero) and the all-to-all receiver sums the W
  partial bags. For tables too large for one rank's memory.
- ``replicated``: every rank holds the whole table and looks up only its own batch slice
  (data-parallel); its gradient is all-reduced like an MLP's. For small tables.

``plan_tables(placement="auto")`` replicates tables of at most ``replicate_max_rows`` rows,
splits by rows any table larger than ``row_wise_min_rows`` (default: more than a 1/W share of
all sharded bytes, i.e. one that alone would unbalance the ranks), and places the rest
table-wise largest first, each on the rank with the least cost so far, where cost is
``bytes / total bytes + lookups / total lookups`` (memory and lookup work weighted equally).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PLACEMENTS = ("auto", "table", "row", "replicated")


@dataclass(frozen=True)
class Shard:
    """Rows [row_start, row_end) of table ``table`` held by ``rank``."""

    table: int
    rank: int
    row_start: int
    row_end: int

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start


@dataclass
class ShardingPlan:
    """The placement of F tables of width D on ``world_size`` ranks.

    Attributes:
        table_sizes: rows of each table.
        embedding_dim: D.
        world_size: W.
        kinds: per table, ``table``, ``row`` or ``replicated``.
        shards: every non-replicated shard, sorted by (rank, table, row_start). On each rank
            the local shards are stacked in this order into one fused weight.
    """

    table_sizes: list[int]
    embedding_dim: int
    world_size: int
    kinds: list[str]
    shards: list[Shard] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shards = sorted(self.shards, key=lambda s: (s.rank, s.table, s.row_start))
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every non-replicated table is covered exactly once."""
        if len(self.kinds) != len(self.table_sizes):
            raise ValueError(f"plan has {len(self.kinds)} kinds for {len(self.table_sizes)} "
                             f"tables")
        for t, kind in enumerate(self.kinds):
            shards = sorted((s for s in self.shards if s.table == t), key=lambda s: s.row_start)
            if kind == "replicated":
                if shards:
                    raise ValueError(f"table {t} is replicated but also has shards")
                continue
            if kind not in ("table", "row"):
                raise ValueError(f"table {t}: unknown placement kind {kind!r}")
            row = 0
            for s in shards:
                if s.row_start != row or s.row_end <= s.row_start:
                    raise ValueError(f"table {t}: shards do not tile rows 0..{self.table_sizes[t]}"
                                     f" (gap or overlap at row {row})")
                if not 0 <= s.rank < self.world_size:
                    raise ValueError(f"table {t}: shard on rank {s.rank} outside world "
                                     f"{self.world_size}")
                row = s.row_end
            if row != self.table_sizes[t]:
                raise ValueError(f"table {t}: shards cover {row} of {self.table_sizes[t]} rows")

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    def replicated_tables(self) -> list[int]:
        return [t for t, k in enumerate(self.kinds) if k == "replicated"]

    def rank_shards(self, rank: int) -> list[Shard]:
        """The shards ``rank`` holds, in the order of its fused local weight."""
        return [s for s in self.shards if s.rank == rank]

    def rank_bytes(self, rank: int, bytes_per_value: int = 4) -> int:
        """Embedding bytes on ``rank``: its shards plus every replicated table."""
        rows = sum(s.rows for s in self.rank_shards(rank))
        rows += sum(self.table_sizes[t] for t in self.replicated_tables)
        return rows * self.embedding_dim * bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        return {"table_sizes": self.table_sizes, "embedding_dim": self.embedding_dim,
                "world_size": self.world_size, "kinds": self.kinds,
                "shards": [asdict(s) for s in self.shards]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardingPlan:
        return cls(list(d["table_sizes"]), int(d["embedding_dim"]), int(d["world_size"]),
                   list(d["kinds"]), [Shard(**s) for s in d["shards"]])

    def __str__(self) -> str:
        lines = [f"sharding plan: {self.num_tables} tables, D={self.embedding_dim}, "
                 f"{self.world_size} ranks"]
        lines.append(f"  {'table':>5} {'rows':>11} {'kind':>10}  placement")
        for t, n in enumerate(self.table_sizes):
            kind = self.kinds[t]
            if kind == "replicated":
                where = "all ranks"
            else:
                where = ", ".join(f"r{s.rank}[{s.row_start}:{s.row_end}]" if kind == "row"
                                  else f"r{s.rank}" for s in self.shards if s.table == t)
            lines.append(f"  {t:>5} {n:>11,} {kind:>10}  {where}")
        for r in range(self.world_size):
            shards = self.rank_shards(r)
            lines.append(f"  rank {r}: {len(shards)} shards, "
                         f"{self.rank_bytes(r) / 2**20:,.1f} MiB of fp32 embeddings")
        return "\n".join(lines)


def _row_split(table: int, rows: int, world_size: int) -> list[Shard]:
    base, extra = divmod(rows, world_size)
    shards, start = [], 0
    for r in range(world_size):
        n = base + (1 if r < extra else 0)
        if n:
            shards.append(Shard(table, r, start, start + n))
        start += n
    return shards


def plan_tables(table_sizes: list[int], embedding_dim: int, world_size: int,
                placement: str = "auto", lookups_per_table: list[float] | None = None,
                replicate_max_rows: int = 64, row_wise_min_rows: int | None = None,
                max_bytes_per_rank: int | None = None) -> ShardingPlan:
    """A placement of the tables on ``world_size`` ranks.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D.
        world_size: W ranks.
        placement: ``auto`` (mixed, see the module doc), or ``table`` / ``row`` /
            ``replicated`` to place every table that way.
        lookups_per_table: mean ids per bag of each table (multi-hotness; default 1).
        replicate_max_rows: ``auto`` replicates tables with at most this many rows.
        row_wise_min_rows: ``auto`` splits tables with more rows than this by rows (default:
            more than 1/W of all non-replicated rows).
        max_bytes_per_rank: fp32 embedding memory available per rank; ``auto`` also splits
            by rows any table larger than half of it, and every plan is checked against it
            (``ValueError`` naming the rank that does not fit).

    Example:
        >>> print(plan_tables([1000, 10, 50_000, 300], 16, 2))   # doctest: +SKIP
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: expected one of {PLACEMENTS}")
    if world_size <= 0:
        raise ValueError(f"world_size {world_size}: must be positive")
    num_tables = len(table_sizes)
    lookups = list(lookups_per_table) if lookups_per_table else [1.0] * num_tables
    if len(lookups) != num_tables:
        raise ValueError(f"lookups_per_table has {len(lookups)} entries for {num_tables} tables")
    plan = _plan(list(table_sizes), embedding_dim, world_size, placement, lookups,
                 replicate_max_rows, row_wise_min_rows, max_bytes_per_rank)
    if max_bytes_per_rank is not None:
        for r in range(world_size):
            if plan.rank_bytes(r) > max_bytes_per_rank:
                raise ValueError(
                    f"placement {placement!r} puts {plan.rank_bytes(r) / 2**30:.2f} GiB of "
                    f"embeddings on rank {r}, over the {max_bytes_per_rank / 2**30:.2f} GiB per "
                    f"rank allowed; use more ranks or placement 'auto'/'row'")
    return plan


def _plan(table_sizes: list[int], embedding_dim: int, world_size: int, placement: str,
          lookups: list[float], replicate_max_rows: int, row_wise_min_rows: int | None,
          max_bytes_per_rank: int | None) -> ShardingPlan:
    num_tables = len(table_sizes)
    if placement == "replicated":
        return ShardingPlan(list(table_sizes), embedding_dim, world_size,
                            ["replicated"] * num_tables)
    if placement == "row":
        shards = [s for t, n in enumerate(table_sizes) for s in _row_split(t, n, world_size)]
        return ShardingPlan(list(table_sizes), embedding_dim, world_size, ["row"] * num_tables,
                            shards)
    kinds = ["table"] * num_tables
    if placement == "auto":
        for t, n in enumerate(table_sizes):
            if n <= replicate_max_rows:
                kinds[t] = "replicated"
        sharded_rows = sum(n for t, n in enumerate(table_sizes) if kinds[t] != "replicated")
        threshold = row_wise_min_rows if row_wise_min_rows is not None \
            else sharded_rows / world_size
        if max_bytes_per_rank is not None:
            threshold = min(threshold, max_bytes_per_rank / 2 / (embedding_dim * 4))
        if world_size > 1:
            for t, n in enumerate(table_sizes):
                if kinds[t] == "table" and n > threshold:
                    kinds[t] = "row"
    shards: list[Shard] = []
    # Row-wise tables put n/W rows and (about) lookups/W lookups on every rank.
    load_bytes = [0.0] * world_size
    load_lookups = [0.0] * world_size
    for t, n in enumerate(table_sizes):
        if kinds[t] == "row":
            for s in _row_split(t, n, world_size):
                shards.append(s)
                load_bytes[s.rank] += s.rows
                load_lookups[s.rank] += lookups[t] * s.rows / n
    total_rows = max(1.0, float(sum(table_sizes)))
    total_lookups = max(1e-9, float(sum(lookups)))
    table_wise = sorted((t for t in range(num_tables) if kinds[t] == "table"),
                        key=lambda t: (-table_sizes[t], t))
    for t in table_wise:  # largest first, onto the least loaded rank
        cost = [load_bytes[r] / total_rows + load_lookups[r] / total_lookups
                for r in range(world_size)]
        rank = min(range(world_size), key=lambda r: (cost[r], r))
        shards.append(Shard(t, rank, 0, table_sizes[t]))
        load_bytes[rank] += table_sizes[t]
        load_lookups[rank] += lookups[t]
    return ShardingPlan(list(table_sizes), embedding_dim, world_size, kinds, shards)
