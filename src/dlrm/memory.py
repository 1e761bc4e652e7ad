"""How much memory a DLRM's parameters and optimizer state take, computed before allocating.

``parameter_memory(config, optimizer, sparse_optimizer)`` counts, from the config alone:

- each embedding table's rows x dims x 4 bytes (after hashing; QR tables as their quotient and
  remainder tables, mixed-dimension tables at their own dimension) and its row-sparse optimizer
  state (row-wise Adagrad: one float per row; SGD: none);
- the dense parameters (MLPs, mixed-dimension projections), their gradients and their dense
  optimizer state (SGD: none, Adagrad: one float per parameter, Adam: two).

Per-batch activations and the embeddings' sparse gradients (one row per looked-up id) are not
counted: they scale with the batch, not the tables. ``check_memory`` compares the total with
the memory available on the device (``/proc/meminfo`` MemAvailable, or
``torch.cuda.mem_get_info``) and raises ``InsufficientMemoryError`` naming the largest tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dlrm.config import DLRMConfig

FLOAT_BYTES = 4
GIB = 1024 ** 3


class InsufficientMemoryError(RuntimeError):
    """The configuration would not fit in the device's memory."""


@dataclass
class TableMemory:
    """One categorical feature's embedding storage.

    Attributes:
        feature: its index f.
        rows: rows of the data's table (before hashing or QR).
        shapes: (rows, dim) of each stored table (two for QR).
        param_bytes: bytes of those tables.
        optimizer_bytes: bytes of their row-sparse optimizer state.
    """

    feature: int
    rows: int
    shapes: list[tuple[int, int]]
    param_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.optimizer_bytes


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

    def largest(self, k: int = 3) -> list[TableMemory]:
        return sorted(self.tables, key=lambda t: t.total_bytes, reverse=True)[:k]

    def lines(self, per_table: bool = True) -> list[str]:
        """A human-readable report (one string per line)."""
        out = []
        if per_table:
            out.append(f"{'table':>5} {'rows':>12} {'stored as':>28} {'params':>11} "
                       f"{'optimizer':>11}")
            for t in self.tables:
                shapes = " + ".join(f"{r}x{d}" for r, d in t.shapes)
                out.append(f"{t.feature:>5} {t.rows:>12,} {shapes:>28} "
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


def _mlp_params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def parameter_memory(config: DLRMConfig, optimizer: str = "sgd",
                     sparse_optimizer: str | None = None) -> MemoryReport:
    """Bytes of ``config``'s parameters and optimizer state (see the module doc).

    Args:
        optimizer: the dense optimizer, ``sgd``, ``adagrad`` or ``adam``.
        sparse_optimizer: ``sgd`` or ``rowwise_adagrad``; None picks as ``build_optimizer``.
    """
    from dlrm.models.interactions import CatInteraction, DotInteraction
    from dlrm.models.mixed_dim import md_dimensions
    from dlrm.models.qr_embeddings import qr_table_shapes

    if sparse_optimizer is None:
        sparse_optimizer = "sgd" if optimizer == "sgd" else "rowwise_adagrad"
    dim = config.embedding_dim
    sizes = config.lookup_table_sizes
    md_dims = (md_dimensions(sizes, dim, config.md_alpha, config.md_round_dims)
               if config.md_alpha is not None else None)
    report = MemoryReport()
    dense_params = 0
    for f, (rows, n) in enumerate(zip(config.table_sizes, sizes)):
        if config.qr_threshold and n > config.qr_threshold:
            shapes = qr_table_shapes(n, dim, config.qr_collisions, config.qr_operation)
        elif md_dims is not None:
            shapes = [(n, md_dims[f])]
            if md_dims[f] != dim:
                dense_params += md_dims[f] * dim  # projection
        else:
            shapes = [(n, dim)]
        param_bytes = sum(r * d for r, d in shapes) * FLOAT_BYTES
        state = sum(r for r, _ in shapes) * FLOAT_BYTES if sparse_optimizer == "rowwise_adagrad" \
            else 0
        report.tables.append(TableMemory(f, rows, shapes, param_bytes, state))
    if config.interaction == "dot":
        top_in = DotInteraction.output_width(config.num_sparse, dim, config.interaction_self)
    else:
        top_in = CatInteraction.output_width(config.num_sparse, dim)
    dense_params += _mlp_params(config.bottom_mlp) + _mlp_params([top_in, *config.top_mlp])
    report.dense_param_bytes = dense_params * FLOAT_BYTES
    report.dense_grad_bytes = dense_params * FLOAT_BYTES
    states = {"sgd": 0, "adagrad": 1, "adam": 2}
    if optimizer not in states:
        raise ValueError(f"optimizer {optimizer!r}: expected one of {sorted(states)}")
    report.dense_optimizer_bytes = states[optimizer] * dense_params * FLOAT_BYTES
    return report


def available_memory(device: str = "cpu") -> int:
    """Bytes free for new allocations: MemAvailable on CPU, ``mem_get_info`` on CUDA."""
    import torch

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
        f"table {t.feature} ({t.rows:,} rows as {' + '.join(f'{r}x{d}' for r, d in t.shapes)}: "
        f"{format_bytes(t.total_bytes)})" for t in report.largest(3))
    raise InsufficientMemoryError(
        f"the model needs {format_bytes(report.total_bytes)} for parameters and optimizer "
        f"state (embeddings {format_bytes(report.embedding_bytes)}, dense "
        f"{format_bytes(report.dense_bytes)}), more than {fraction:.0%} of the "
        f"{format_bytes(available)} available on {device}; largest tables: {largest}. "
        f"Shrink the tables (--rows-cap, --max-ind-range, --qr-threshold, --md-alpha) or the "
        f"embedding dimension.")
