"""How much memory a model's parameters and optimizer state take, computed before allocating.

``parameter_memory(kind, config, optimizer, sparse_optimizer)`` builds the model of any
registered kind on the ``meta`` device (shapes only: no memory, no initialisation) and counts:

- every embedding table as stored (after hashing; QR tables as their quotient and remainder
  tables, mixed-dimension tables at their own dimension), 4 bytes per value, and its
  row-sparse optimizer state (row-wise Adagrad: one float per row; SGD: none);
- every other parameter (MLPs, cross networks, mixed-dimension projections), its gradient
  and its dense optimizer state (SGD: none, Adagrad: one float per parameter, Adam: two).

So the count is the model's own, whatever the kind (a test checks it against what a real
build and one optimizer step allocate). Per-batch activations and the embeddings' sparse
gradients (one row per looked-up id) are not counted: they scale with the batch, not the
tables. ``check_memory`` compares the total with the memory available on the device
(``/proc/meminfo`` MemAvailable, or ``torch.cuda.mem_get_info``) and raises
``InsufficientMemoryError`` naming the largest tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dlrm.models.embeddings import TableModule
from dlrm.models.registry import build_model

FLOAT_BYTES = 4
GIB = 1024 ** 3
DENSE_STATE_FLOATS = {"sgd": 0, "adagrad": 1, "adam": 2}
# Full-batch L-BFGS (dlrm.training.optim.FullBatchLBFGS) holds, per parameter, embedding rows
# included: a dense gradient, 10 curvature pairs (20 floats), the direction, the previous
# gradient and the flat gradient it gathers: 24 floats.
LBFGS_STATE_FLOATS = 24


class InsufficientMemoryError(RuntimeError):
    """The configuration would not fit in the device's memory."""


@dataclass
class TableMemory:
    """One categorical feature's embedding storage in one embedding module.

    Attributes:
        feature: its index f.
        rows: rows of the data's table of this feature (before hashing).
        shapes: (rows, dim) of each stored table (two for QR).
        param_bytes: bytes of those tables.
        optimizer_bytes: bytes of their row-sparse optimizer state.
        module: the embedding module's name in the model (``embeddings``, ``wide``, ...).
    """

    feature: int
    rows: int
    shapes: list[tuple[int, int]]
    param_bytes: int
    optimizer_bytes: int
    module: str = "embeddings"

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.optimizer_bytes

    def label(self, qualified: bool) -> str:
        return f"{self.module} table {self.feature}" if qualified else f"table {self.feature}"


@dataclass
class MemoryReport:
    """Parameter + optimizer memory of a model; see ``parameter_memory``."""

    tables: list[TableMemory] = field(default_factory=list)
    dense_param_bytes: int = 0
    dense_grad_bytes: int = 0
    dense_optimizer_bytes: int = 0

    @property
    def embedding_bytes(self) -> int:
        return sum(t.total_bytes for t in self.tables)

    @property
    def dense_bytes(self) -> int:
        return self.dense_param_bytes + self.dense_grad_bytes + self.dense_optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return self.embedding_bytes + self.dense_bytes

    @property
    def qualified(self) -> bool:
        """Whether the tables come from several embedding modules (then labels name them)."""
        return len({t.module for t in self.tables}) > 1

    def largest(self, k: int = 3) -> list[TableMemory]:
        return sorted(self.tables, key=lambda t: t.total_bytes, reverse=True)[:k]

    def lines(self, per_table: bool = True) -> list[str]:
        """A human-readable report (one string per line)."""
        out = []
        if per_table:
            out.append(f"{'table':>16} {'rows':>12} {'stored as':>28} {'params':>11} "
                       f"{'optimizer':>11}")
            for t in self.tables:
                shapes = " + ".join(f"{r}x{d}" for r, d in t.shapes)
                name = t.label(self.qualified).removeprefix("table ")
                out.append(f"{name:>16} {t.rows:>12,} {shapes:>28} "
                           f"{format_bytes(t.param_bytes):>11} "
                           f"{format_bytes(t.optimizer_bytes):>11}")
        out.append(f"embeddings {format_bytes(self.embedding_bytes)} (incl. optimizer state), "
                   f"dense {format_bytes(self.dense_bytes)} (params, grads, optimizer state), "
                   f"total {format_bytes(self.total_bytes)}")
        return out

    def summary(self) -> dict[str, int]:
        return {"embedding_bytes": self.embedding_bytes, "dense_bytes": self.dense_bytes,
                "total_bytes": self.total_bytes}


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # unreachable; keeps type checkers quiet


def embedding_containers(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost table modules of ``model`` (``TableModule``: sparse features to pooled
    vectors), by name: ``{"embeddings": ..., "wide": ...}``."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, TableModule) and not any(
                name.startswith(outer + ".") for outer in found):
            found[name] = module
    return found


def report_for_model(model: nn.Module, optimizer: str = "sgd",
                     sparse_optimizer: str | None = None) -> MemoryReport:
    """The memory of an already built model (on any device, ``meta`` included)."""
    states = {**DENSE_STATE_FLOATS, "lbfgs": LBFGS_STATE_FLOATS}
    if optimizer not in states:
        raise ValueError(f"optimizer {optimizer!r}: expected one of {sorted(states)}")
    if sparse_optimizer is None:
        sparse_optimizer = "sgd" if optimizer == "sgd" else "rowwise_adagrad"
    per_row = FLOAT_BYTES if sparse_optimizer == "rowwise_adagrad" else 0
    per_value = 0  # optimizer bytes per table value (not per row): L-BFGS's dense state
    if optimizer == "lbfgs":
        per_row, per_value = 0, LBFGS_STATE_FLOATS * FLOAT_BYTES
    report = MemoryReport()
    data_rows = getattr(model, "table_sizes", None)  # the data's tables, before any hashing
    for name, container in embedding_containers(model).items():
        rows = data_rows if data_rows and len(data_rows) == container.num_features \
            else container.table_sizes
        for f, shapes in enumerate(container.feature_storage()):
            report.tables.append(TableMemory(
                f, int(rows[f]), shapes,
                sum(r * d for r, d in shapes) * FLOAT_BYTES,
                sum(r * per_row + r * d * per_value for r, d in shapes), name))
    dense = sum(p.numel() for p in model.parameters() if not getattr(p, "sparse_rows", False))
    report.dense_param_bytes = report.dense_grad_bytes = dense * FLOAT_BYTES
    report.dense_optimizer_bytes = states[optimizer] * dense * FLOAT_BYTES
    return report


def parameter_memory(kind: str, config: dict[str, Any], optimizer: str = "sgd",
                     sparse_optimizer: str | None = None) -> MemoryReport:
    """Bytes of a ``kind`` model's parameters and optimizer state, from a build on the meta
    device (see the module doc).

    Args:
        optimizer: the dense optimizer, ``sgd``, ``adagrad`` or ``adam``; or ``lbfgs``
            (``LBFGS_STATE_FLOATS`` per value of every parameter).
        sparse_optimizer: ``sgd`` or ``rowwise_adagrad``; None picks as ``build_optimizer``.
    """
    with torch.device("meta"):
        model = build_model(kind, config)
    return report_for_model(model, optimizer, sparse_optimizer)


def available_memory(device: str = "cpu") -> int:
    """Bytes free for new allocations: MemAvailable on CPU, ``mem_get_info`` on CUDA."""
    if torch.device(device).type == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(report: MemoryReport, device: str = "cpu", available: int | None = None,
                 fraction: float = 0.9) -> None:
    """Raise ``InsufficientMemoryError`` when ``report.total_bytes`` exceeds ``fraction`` of
    the device's available memory (``available`` overrides the measurement, for tests)."""
    if available is None:
        available = available_memory(device)
    budget = int(available * fraction)
    if report.total_bytes <= budget:
        return
    largest = ", ".join(
        f"{t.label(report.qualified)} ({t.rows:,} rows as "
        f"{' + '.join(f'{r}x{d}' for r, d in t.shapes)}: {format_bytes(t.total_bytes)})"
        for t in report.largest(3))
    raise InsufficientMemoryError(
        f"the model needs {format_bytes(report.total_bytes)} for parameters and optimizer "
        f"state (embeddings {format_bytes(report.embedding_bytes)}, dense "
        f"{format_bytes(report.dense_bytes)}), more than {fraction:.0%} of the "
        f"{format_bytes(available)} available on {device}; largest tables: {largest}. "
        f"Shrink the tables (--rows-cap, --max-ind-range, --qr-threshold, --md-alpha) or the "
        f"embedding dimension.")
