"""Sharded checkpoints: saved from N ranks, loaded into any M ranks (or one process).

A checkpoint is a folder:

- ``meta.pt`` (rank 0): format, model kind/config, the saving plan, the MLP state, every
  replicated table (``"table:0:n"`` keys), and anything the caller adds (loop state, data spec).
- ``shards-rank{r}.pt`` (rank r): its shards as ``{"table:row_start:row_end": (rows, D)}``
  and, when saved with the optimizer, their row-wise Adagrad accumulators (``accumulators``).

Loading reads the saved shards with ``mmap=True`` and copies, for each shard of the NEW plan,
the rows of every saved piece that overlaps it, so a rank touches only the rows it needs and
any N -> M resharding (table-wise <-> row-wise <-> replicated) works. ``load_single_process``
reassembles a plain ``DLRM`` (M = 1, no process group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dlrm.config import DLRMConfig
from dlrm.distributed.planner import ShardingPlan
from dlrm.distributed.sharded import DistributedDLRM, cpu_copy
from dlrm.models.dlrm import DLRM
from dlrm.training.checkpoint import save_atomic
from dlrm.training.optim import HybridOptimizer, RowWiseAdagrad

FORMAT = "dlrm-sharded-checkpoint-v1"


def _accumulators(model: DistributedDLRM, optimizer: HybridOptimizer | None
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Row-wise Adagrad accumulators of (local shards, replicated tables), if any."""
    if optimizer is None or not isinstance(optimizer.sparse, RowWiseAdagrad):
        return None, None
    by_param = {id(p): a for p, a in zip(optimizer.sparse.params, optimizer.sparse.accumulators)}
    return by_param.get(id(model.shards.weight)), by_param.get(id(model.replicated.weight))


def _table_rows(fused: torch.nn.Module, k: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows of local table k of a ``FusedEmbeddingBag`` within a per-row tensor."""
    start = int(fused.table_offsets[k])
    return rows[start: start + fused.table_sizes[k]]


def save_sharded(model: DistributedDLRM, folder: str | Path,
                 extra: dict[str, Any] | None = None,
                 optimizer: HybridOptimizer | None = None) -> Path:
    """Every rank writes its shards; rank 0 also writes ``meta.pt``. Collective (barriers).

    With ``optimizer``, its state is saved too: row-wise Adagrad accumulators beside the
    rows they belong to (so they reshard like the weights) and the dense optimizer's state
    (identical on all ranks) in ``meta.pt``.
    """
    folder = Path(folder)
    rank = model.rank
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    _barrier(model)
    shard_acc, rep_acc = _accumulators(model, optimizer)
    record: dict[str, Any] = {"format": FORMAT, "rank": rank, "shards": model.shard_tensors()}
    if shard_acc is not None:
        record["accumulators"] = {
            f"{s.table}:{s.row_start}:{s.row_end}": cpu_copy(_table_rows(model.shards, k,
                                                                         shard_acc))
            for k, s in enumerate(model.local_shards)}
    save_atomic(record, folder / f"shards-rank{rank}.pt")
    if rank == 0:
        sizes = model.config.table_sizes
        replicated = {f"{t}:0:{sizes[t]}": cpu_copy(model.replicated.table(k))
                      for k, t in enumerate(model.replicated_tables)}
        meta: dict[str, Any] = {
            "format": FORMAT, "model_kind": "dlrm", "model_config": model.config.to_dict(),
            "plan": model.plan.to_dict(),
            "dense": {k: cpu_copy(v) for k, v in model.dense_state_dict().items()},
            "replicated": replicated, **(extra or {})}
        if optimizer is not None:
            meta["optimizer"] = {
                "dense": optimizer.dense.state_dict() if optimizer.dense is not None else None,
                "sparse_lr": optimizer.sparse.lr if optimizer.sparse is not None else None}
        if rep_acc is not None:
            meta["replicated_accumulators"] = {
                f"{t}:0:{sizes[t]}": cpu_copy(_table_rows(model.replicated, k, rep_acc))
                for k, t in enumerate(model.replicated_tables)}
        save_atomic(meta, folder / "meta.pt")
    _barrier(model)
    return folder


def _barrier(model: DistributedDLRM) -> None:
    if model.world_size > 1:
        dist.barrier(group=model.group)


def load_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "meta.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a sharded checkpoint (no meta.pt)")
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    return meta


class _SavedPieces:
    """All saved row ranges of all tables, memory-mapped: (table, lo, hi) -> tensor."""

    def __init__(self, folder: Path, meta: dict[str, Any], field: str = "shards",
                 replicated_field: str = "replicated") -> None:
        plan = ShardingPlan.from_dict(meta["plan"])
        self.pieces: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for key, rows in meta.get(replicated_field, {}).items():
            self._add(key, rows)
        for r in range(plan.world_size):
            path = folder / f"shards-rank{r}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{folder}: {path.name} is missing (the checkpoint was "
                                        f"saved by {plan.world_size} ranks)")
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if field not in saved:
                raise ValueError(f"{path}: holds no {field!r} (saved without that state)")
            for key, rows in saved[field].items():
                self._add(key, rows)
        self.table_sizes = plan.table_sizes

    def _add(self, key: str, rows: torch.Tensor) -> None:
        t, lo, hi = (int(x) for x in key.split(":"))
        self.pieces.setdefault(t, []).append((lo, hi, rows))

    def rows(self, table: int, row_start: int, row_end: int, out: torch.Tensor) -> None:
        """Copy rows [row_start, row_end) of ``table`` into ``out`` ((row_end - row_start, D))."""
        covered = 0
        for lo, hi, rows in self.pieces.get(table, []):
            a, b = max(lo, row_start), min(hi, row_end)
            if a < b:
                out[a - row_start: b - row_start].copy_(rows[a - lo: b - lo])
                covered += b - a
        if covered != row_end - row_start:
            raise ValueError(f"checkpoint covers {covered} of rows {row_start}..{row_end} of "
                             f"table {table}")


@torch.no_grad()
def load_sharded(model: DistributedDLRM, folder: str | Path,
                 optimizer: HybridOptimizer | None = None) -> dict[str, Any]:
    """Fill ``model`` (any plan, any world size) from a sharded checkpoint; returns meta.

    With ``optimizer`` (built for ``model``), also restore its saved state, resharded."""
    folder = Path(folder)
    meta = load_meta(folder)
    saved_config = DLRMConfig.from_dict(meta["model_config"])
    if saved_config.to_dict() != model.config.to_dict():
        raise ValueError(f"{folder}: saved model config {saved_config.to_dict()} differs from "
                         f"this model's {model.config.to_dict()}")
    pieces = _SavedPieces(folder, meta)
    for k, s in enumerate(model.local_shards):
        pieces.rows(s.table, s.row_start, s.row_end, model.shards.table(k))
    for k, t in enumerate(model.replicated_tables):
        pieces.rows(t, 0, model.config.table_sizes[t], model.replicated.table(k))
    model.load_state_dict({**model.state_dict(), **meta["dense"]})
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"{folder}: saved without optimizer state")
        saved = meta["optimizer"]
        if optimizer.dense is not None and saved["dense"] is not None:
            optimizer.dense.load_state_dict(saved["dense"])
        shard_acc, rep_acc = _accumulators(model, optimizer)
        if shard_acc is not None or rep_acc is not None:
            acc = _SavedPieces(folder, meta, "accumulators", "replicated_accumulators")
            for k, s in enumerate(model.local_shards if shard_acc is not None else []):
                acc.rows(s.table, s.row_start, s.row_end, _table_rows(model.shards, k, shard_acc))
            for k, t in enumerate(model.replicated_tables if rep_acc is not None else []):
                acc.rows(t, 0, model.config.table_sizes[t],
                         _table_rows(model.replicated, k, rep_acc))
    return meta


@torch.no_grad()
def load_single_process(folder: str | Path) -> tuple[DLRM, dict[str, Any]]:
    """A plain ``DLRM`` (eval mode) from a sharded checkpoint saved by any number of ranks."""
    folder = Path(folder)
    meta = load_meta(folder)
    config = DLRMConfig.from_dict(meta["model_config"])
    model = DLRM(config)
    pieces = _SavedPieces(folder, meta)
    for t, n in enumerate(config.table_sizes):
        pieces.rows(t, 0, n, model.embeddings.table(t))
    model.load_state_dict({**model.state_dict(), **meta["dense"]})
    model.eval()
    return model, meta
