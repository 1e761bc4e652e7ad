"""Sharded checkpoints: saved from N ranks, loaded into any M ranks (or one process).

A checkpoint is a folder:

- ``meta.pt`` (rank 0): format, model kind/config, the saving plan, the MLP state, every
  replicated table (``"table:0:n"`` keys), and anything the caller adds (loop state, data spec).
- ``shards-rank{r}.pt`` (rank r): its shards as ``{"table:row_start:row_end": (rows, D)}``.

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
from dlrm.distributed.sharded import DistributedDLRM
from dlrm.models.dlrm import DLRM
from dlrm.training.checkpoint import save_atomic

FORMAT = "dlrm-sharded-checkpoint-v1"


def save_sharded(model: DistributedDLRM, folder: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """Every rank writes its shards; rank 0 also writes ``meta.pt``. Collective (barriers)."""
    folder = Path(folder)
    rank = model.rank
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    _barrier(model)
    save_atomic({"format": FORMAT, "rank": rank, "shards": model.shard_tensors()},
                folder / f"shards-rank{rank}.pt")
    if rank == 0:
        replicated = {f"{t}:0:{model.config.table_sizes[t]}": model.replicated.table(k).clone()
                      for k, t in enumerate(model.replicated_tables)}
        save_atomic({"format": FORMAT, "model_kind": "dlrm",
                     "model_config": model.config.to_dict(), "plan": model.plan.to_dict(),
                     "dense": model.dense_state_dict(), "replicated": replicated,
                     **(extra or {})}, folder / "meta.pt")
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

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        plan = ShardingPlan.from_dict(meta["plan"])
        self.pieces: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for key, rows in meta["replicated"].items():
            self._add(key, rows)
        for r in range(plan.world_size):
            path = folder / f"shards-rank{r}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{folder}: {path.name} is missing (the checkpoint was "
                                        f"saved by {plan.world_size} ranks)")
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            for key, rows in saved["shards"].items():
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
def load_sharded(model: DistributedDLRM, folder: str | Path) -> dict[str, Any]:
    """Fill ``model`` (any plan, any world size) from a sharded checkpoint; returns meta."""
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
