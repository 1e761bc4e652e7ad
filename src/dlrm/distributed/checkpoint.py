"""Sharded checkpoints of any model kind: saved from N ranks, loaded into any M ranks (or one
process).

A checkpoint is a folder:

- ``meta.pt`` (rank 0): format, model kind and config, the sharding plan of every embedding
  module, the rest of the model's state (MLPs, interactions, projections: identical on all
  ranks) under its single-process names, every replicated table, and what the caller adds
  (loop state, data spec, train config).
- ``shards-rank{r}.pt`` (rank r): its shards as ``{module: {"table:row_start:row_end": rows}}``
  and, when saved with the optimizer, their row-wise Adagrad accumulators beside them.

So the state of a sharded model is the single-process model's state dict with each embedding
module's weight split into row pieces. Loading copies, for each shard of the NEW plan (or each
table of a plain model), the rows of every saved piece that overlaps it, reading the saved
shards memory-mapped: any N -> M resharding (table-wise <-> row-wise <-> replicated) works, and
``load_single_process`` reassembles the plain model (M = 1, no process group). A
single-process checkpoint (``last.pt``) is a piece source too: its fused weights are split by
table. Checkpoints written by the former DLRM-only layout (``dlrm-sharded-checkpoint-v1``) load
as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlrm.distributed.data_parallel import RankContext
from dlrm.distributed.planner import ShardingPlan
from dlrm.distributed.sharding import ShardedEmbeddingBag, cpu_copy, sharded_modules, table_modules
from dlrm.models import build_model, deferred_tables
from dlrm.models.embeddings import FusedEmbeddingBag, materialize_tables
from dlrm.training.checkpoint import save_atomic
from dlrm.training.optim import HybridOptimizer, RowWiseAdagrad

FORMAT = "dlrm-sharded-checkpoint-v2"
FORMAT_V1 = "dlrm-sharded-checkpoint-v1"  # DLRM only: one plan, pieces of `embeddings`


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of everything but the embedding tables, under single-process names."""
    tables = table_modules(model)
    return {k: v for k, v in model.state_dict().items()
            if not any(k.startswith(name + ".") for name in tables)}


def _accumulators(model: nn.Module, optimizer: HybridOptimizer | None
                  ) -> dict[int, torch.Tensor]:
    """Row-wise Adagrad accumulator of each sparse parameter, by ``id(param)``."""
    if optimizer is None or not isinstance(optimizer.sparse, RowWiseAdagrad):
        return {}
    return {id(p): a for p, a in zip(optimizer.sparse.params, optimizer.sparse.accumulators)}


def _table_rows(fused: FusedEmbeddingBag, k: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows of table k of a ``FusedEmbeddingBag`` within a per-row tensor (weight or
    accumulator)."""
    start = sum(fused.table_sizes[:k])
    return rows[start: start + fused.table_sizes[k]]


def _barrier(ctx: RankContext) -> None:
    if ctx.world_size > 1:
        dist.barrier(group=ctx.group)


def save_sharded(model: nn.Module, ctx: RankContext, folder: str | Path, kind: str,
                 config: dict[str, Any], extra: dict[str, Any] | None = None,
                 optimizer: HybridOptimizer | None = None) -> Path:
    """Every rank writes its shards; rank 0 also writes ``meta.pt``. Collective (barriers).

    With ``optimizer``, its state is saved too: row-wise Adagrad accumulators beside the
    rows they belong to (so they reshard like the weights) and the dense optimizer's state
    (identical on all ranks) in ``meta.pt``.
    """
    folder = Path(folder)
    if ctx.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    _barrier(ctx)
    accumulators = _accumulators(model, optimizer)
    modules = sharded_modules(model)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    shard_acc: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in modules.items():
        shards[name] = {f"{s.table}:{s.row_start}:{s.row_end}": cpu_copy(module.shards.table(k))
                        for k, s in enumerate(module.local_shards)}
        acc = accumulators.get(id(module.shards.weight))
        if acc is not None:
            shard_acc[name] = {
                f"{s.table}:{s.row_start}:{s.row_end}": cpu_copy(_table_rows(module.shards, k,
                                                                             acc))
                for k, s in enumerate(module.local_shards)}
    record: dict[str, Any] = {"format": FORMAT, "rank": ctx.rank, "shards": shards}
    if accumulators:
        record["accumulators"] = shard_acc
    save_atomic(record, folder / f"shards-rank{ctx.rank}.pt")
    if ctx.rank == 0:
        replicated, rep_acc = {}, {}
        for name, module in modules.items():
            replicated[name] = {
                f"{t}:0:{module.table_sizes[t]}": cpu_copy(module.replicated.table(k))
                for k, t in enumerate(module.replicated_tables)}
            acc = accumulators.get(id(module.replicated.weight))
            if acc is not None:
                rep_acc[name] = {
                    f"{t}:0:{module.table_sizes[t]}": cpu_copy(_table_rows(module.replicated,
                                                                           k, acc))
                    for k, t in enumerate(module.replicated_tables)}
        meta: dict[str, Any] = {
            "format": FORMAT, "model_kind": kind, "model_config": config,
            "world_size": ctx.world_size,
            "plans": {name: m.plan.to_dict() for name, m in modules.items()},
            "dense": {k: cpu_copy(v) for k, v in dense_state(model).items()},
            "replicated": replicated, **(extra or {})}
        if optimizer is not None:
            meta["optimizer"] = {
                "dense": optimizer.dense.state_dict() if optimizer.dense is not None else None,
                "sparse_lr": optimizer.sparse.lr if optimizer.sparse is not None else None}
            if accumulators:
                meta["replicated_accumulators"] = rep_acc
        save_atomic(meta, folder / "meta.pt")
    _barrier(ctx)
    return folder


def load_meta(folder: str | Path) -> dict[str, Any]:
    """``meta.pt`` of a sharded checkpoint, in the current layout (v1 files are converted)."""
    folder = Path(folder)
    path = folder / "meta.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a sharded checkpoint (no meta.pt)")
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{path}: expected format {FORMAT!r}, got "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta)!r}")
    if meta["format"] == FORMAT_V1:
        meta["plans"] = {"embeddings": meta.pop("plan")}
        meta["world_size"] = meta["plans"]["embeddings"]["world_size"]
        meta["replicated"] = {"embeddings": meta.get("replicated", {})}
        if "replicated_accumulators" in meta:
            meta["replicated_accumulators"] = {"embeddings": meta["replicated_accumulators"]}
    return meta


class _SavedPieces:
    """Every saved row range of every table of every embedding module:
    ``(module, table) -> [(lo, hi, rows)]``; shard files are memory-mapped."""

    def __init__(self) -> None:
        self.pieces: dict[tuple[str, int], list[tuple[int, int, torch.Tensor]]] = {}
        self.source = ""

    @classmethod
    def from_folder(cls, folder: Path, meta: dict[str, Any], field: str = "shards",
                    replicated_field: str = "replicated") -> _SavedPieces:
        out = cls()
        out.source = str(folder)
        for name, pieces in meta.get(replicated_field, {}).items():
            out._add_all(name, pieces)
        for r in range(int(meta["world_size"])):
            path = folder / f"shards-rank{r}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{folder}: {path.name} is missing (the checkpoint was "
                                        f"saved by {meta['world_size']} ranks)")
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if field not in saved:
                raise ValueError(f"{path}: holds no {field!r} (saved without that state)")
            by_module = saved[field]
            if saved.get("format") == FORMAT_V1:
                by_module = {"embeddings": by_module}
            for name, pieces in by_module.items():
                out._add_all(name, pieces)
        return out

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict[str, torch.Tensor],
                        source: str) -> _SavedPieces:
        """Pieces of a single-process state dict: each table module's fused weight split by
        the tables of ``model``'s module of the same name."""
        out = cls()
        out.source = source
        for name, module in table_modules(model).items():
            key = f"{name}.weight"
            if key not in state:
                raise ValueError(f"{source}: the state has no {key!r}")
            weight, start = state[key], 0
            for t, n in enumerate(module.table_sizes):
                out.pieces[(name, t)] = [(0, n, weight[start: start + n])]
                start += n
        return out

    def _add_all(self, name: str, pieces: dict[str, torch.Tensor]) -> None:
        for key, rows in pieces.items():
            t, lo, hi = (int(x) for x in key.split(":"))
            self.pieces.setdefault((name, t), []).append((lo, hi, rows))

    def rows(self, name: str, table: int, row_start: int, row_end: int,
             out: torch.Tensor) -> None:
        """Copy rows [row_start, row_end) of ``table`` of module ``name`` into ``out``."""
        covered = 0
        for lo, hi, rows in self.pieces.get((name, table), []):
            a, b = max(lo, row_start), min(hi, row_end)
            if a < b:
                out[a - row_start: b - row_start].copy_(rows[a - lo: b - lo])
                covered += b - a
        if covered != row_end - row_start:
            raise ValueError(f"{self.source}: covers {covered} of rows {row_start}..{row_end} "
                             f"of table {table} of {name}")

    @torch.no_grad()
    def fill(self, model: nn.Module, accumulators: dict[int, torch.Tensor] | None = None
             ) -> None:
        """Fill every table module of ``model`` (plain or sharded) from these pieces; with
        ``accumulators`` (``id(param) -> per-row tensor``), fill those instead."""
        for name, module in table_modules(model).items():
            if isinstance(module, ShardedEmbeddingBag):
                parts = [(module.shards, [(s.table, s.row_start, s.row_end)
                                          for s in module.local_shards]),
                         (module.replicated, [(t, 0, module.table_sizes[t])
                                              for t in module.replicated_tables])]
            else:
                parts = [(module, [(t, 0, n) for t, n in enumerate(module.table_sizes)])]
            for fused, ranges in parts:
                target = fused.weight if accumulators is None \
                    else accumulators.get(id(fused.weight))
                if target is None:
                    continue
                for k, (t, lo, hi) in enumerate(ranges):
                    self.rows(name, t, lo, hi, _table_rows(fused, k, target))


def _check_same_model(folder: Path, meta: dict[str, Any], kind: str | None,
                      config: dict[str, Any] | None) -> None:
    if kind is not None and meta["model_kind"] != kind:
        raise ValueError(f"{folder}: holds a {meta['model_kind']!r} model, not {kind!r}")
    if config is not None and meta["model_config"] != config:
        raise ValueError(f"{folder}: saved model config {meta['model_config']} differs from "
                         f"this model's {config}")


@torch.no_grad()
def load_sharded(model: nn.Module, folder: str | Path, optimizer: HybridOptimizer | None = None,
                 kind: str | None = None, config: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Fill ``model`` (sharded by any plan on any world size) from a sharded checkpoint;
    returns its meta. ``kind``/``config``, when given, must match the saved ones.

    With ``optimizer`` (built for ``model``), also restore its saved state, resharded."""
    folder = Path(folder)
    meta = load_meta(folder)
    _check_same_model(folder, meta, kind, config)
    _SavedPieces.from_folder(folder, meta).fill(model)
    model.load_state_dict({**model.state_dict(), **meta["dense"]})
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"{folder}: saved without optimizer state")
        saved = meta["optimizer"]
        if optimizer.dense is not None and saved["dense"] is not None:
            optimizer.dense.load_state_dict(saved["dense"])
        if optimizer.sparse is not None and saved.get("sparse_lr") is not None:
            optimizer.sparse.lr = saved["sparse_lr"]
        accumulators = _accumulators(model, optimizer)
        if accumulators:
            _SavedPieces.from_folder(folder, meta, "accumulators",
                                     "replicated_accumulators").fill(model, accumulators)
    return meta


@torch.no_grad()
def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Fill a (sharded) model from a single-process state dict of the same model kind."""
    _SavedPieces.from_state_dict(model, state, source).fill(model)
    dense = {k: v for k, v in state.items() if not any(
        k.startswith(name + ".") for name in table_modules(model))}
    model.load_state_dict({**model.state_dict(), **dense})


@torch.no_grad()
def load_single_process(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The plain model (any kind, eval mode) of a sharded checkpoint saved by any number of
    ranks, and the checkpoint's meta."""
    folder = Path(folder)
    meta = load_meta(folder)
    with deferred_tables():
        model = build_model(meta["model_kind"], meta["model_config"])
    materialize_tables(model, draw=False)
    _SavedPieces.from_folder(folder, meta).fill(model)
    model.load_state_dict({**model.state_dict(), **meta["dense"]})
    model.eval()
    return model, meta


def saved_plans(meta: dict[str, Any]) -> dict[str, ShardingPlan]:
    return {name: ShardingPlan.from_dict(plan) for name, plan in meta["plans"].items()}


@torch.no_grad()
def full_state_dict(model: nn.Module, ctx: RankContext) -> dict[str, torch.Tensor]:
    """The single-process state dict of a sharded model, on the CPU, on every rank
    (collective; for small models: every rank receives every table)."""
    mine = {name: module.pieces(replicated=ctx.rank == 0)
            for name, module in sharded_modules(model).items()}
    everyone: list[dict[str, dict[str, torch.Tensor]]] = [mine]
    if ctx.world_size > 1:
        everyone = [{} for _ in range(ctx.world_size)]
        dist.all_gather_object(everyone, mine, group=ctx.group)
    pieces = _SavedPieces()
    pieces.source = "the ranks' shards"
    for part in everyone:
        for name, rows in part.items():
            pieces._add_all(name, rows)
    state = {k: cpu_copy(v) for k, v in dense_state(model).items()}
    for name, module in sharded_modules(model).items():
        weight = torch.empty(sum(module.table_sizes), module.embedding_dim)
        start = 0
        for t, n in enumerate(module.table_sizes):
            pieces.rows(name, t, 0, n, weight[start: start + n])
            start += n
        state[f"{name}.weight"] = weight
    return state
