"""All embedding tables in one fused weight, one lookup for all features, sparse row grads.

Math: for feature f and sample b with bag S_fb of ids, ``pooled[b, f] = sum_{i in S_fb} E_f[i]``.

All F tables live in one ``(sum_f n_f, D)`` weight; table f starts at row ``table_offsets[f]``.
A lookup is one ``dlrm::embedding_bag`` operator call for all features (``dlrm.ops.embedding``),
instead of a Python loop over F ``nn.EmbeddingBag`` modules. Only the looked-up rows are
updated, and no dense (rows, D) gradient ever exists: once an optimizer is built
(``dlrm.training.optim``), the lookup's backward applies its row update itself
(``row_update``, FBGEMM's fused update); without one, the weight's gradient is a *sparse* COO
tensor with one row per looked-up id.

Initialisation is defined per (seed, table, block of ``INIT_BLOCK_ROWS`` rows): every block
draws from its own generator, so any row range of a table can be drawn alone and a table's
values do not depend on how its rows are split over processes (``dlrm.distributed``). The seed
is drawn from torch's global generator when the module is built, so ``torch.manual_seed(s)``
before building a model fixes its embeddings as it fixes its other weights, in whatever order
the tables are later materialised.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dlrm.allocator import empty_table
from dlrm.features import SparseFeatures
from dlrm.ops import embedding_bag

INIT_BLOCK_ROWS = 1 << 16
INIT_KINDS = ("uniform", "normal", "constant")


@dataclass(frozen=True)
class RowInit:
    """How embedding rows start.

    Args:
        kind: ``uniform``: U(-scale sqrt(1/n), scale sqrt(1/n)) for a table of n rows, the
            reference DLRM's (scale 1); ``normal``: N(0, scale^2) (DeepCTR's default is
            scale 1e-4); ``constant``: every value equals ``scale``.
        scale: see ``kind``.
    """

    kind: str = "uniform"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INIT_KINDS:
            raise ValueError(f"embedding init {self.kind!r}: expected one of {INIT_KINDS}")
        if not math.isfinite(self.scale) or (self.kind != "constant" and self.scale <= 0):
            raise ValueError(f"embedding init scale {self.scale}: must be a positive number")

    @classmethod
    def parse(cls, text: str) -> RowInit:
        """``"uniform"``, ``"normal:1e-4"``, ``"constant:0"`` -> a ``RowInit``."""
        kind, _, scale = text.partition(":")
        try:
            return cls(kind.strip(), float(scale) if scale else 1.0)
        except ValueError as err:
            raise ValueError(f"embedding init {text!r}: {err}") from err

    def __str__(self) -> str:
        return self.kind if (self.kind, self.scale) == ("uniform", 1.0) \
            else f"{self.kind}:{self.scale:g}"


def _block_seed(seed: int, table: int, block: int) -> int:
    # An explicit mix (not hash()) so the values are the same on every Python version.
    return (seed * 0x9E3779B1 + table * 0x85EBCA77 + block * 0xC2B2AE3D) % (1 << 63)


def init_rows(init: RowInit, table_size: int, row_start: int, row_end: int, dim: int,
              seed: int, table: int) -> torch.Tensor:
    """Rows [row_start, row_end) of table ``table`` (of ``table_size`` rows) on the CPU, drawn
    block by block with generators seeded by (seed, table, block): the same values whatever
    the range asked for."""
    out = torch.empty(row_end - row_start, dim)
    if init.kind == "constant":
        return out.fill_(init.scale)
    if row_end <= row_start:
        return out
    bound = init.scale * math.sqrt(1.0 / table_size)
    first, last = row_start // INIT_BLOCK_ROWS, (row_end - 1) // INIT_BLOCK_ROWS
    for block in range(first, last + 1):
        gen = torch.Generator().manual_seed(_block_seed(seed, table, block))
        lo = block * INIT_BLOCK_ROWS
        n = min(INIT_BLOCK_ROWS, table_size - lo)
        rows = torch.empty(n, dim)
        if init.kind == "uniform":
            rows.uniform_(-bound, bound, generator=gen)
        else:
            rows.normal_(0.0, init.scale, generator=gen)
        a, b = max(row_start, lo), min(row_end, lo + n)
        out[a - row_start: b - row_start] = rows[a - lo: b - lo]
    return out


@dataclass
class RowUpdate:
    """The row optimizer a ``FusedEmbeddingBag`` applies inside its backward, set by
    ``dlrm.training.optim.build_optimizer``: SGD, or row-wise Adagrad with an ``accumulator``
    (one float per row). ``lr`` is a 0-d tensor the optimizer changes in place."""

    lr: torch.Tensor
    accumulator: torch.Tensor | None = None
    eps: float = 1e-8


_deferred = threading.local()


@contextlib.contextmanager
def deferred_tables() -> Iterator[None]:
    """Build models whose embedding weights stay on the ``meta`` device (no memory, no values)
    while everything else is built and initialised as usual; ``materialize_tables`` or
    ``dlrm.distributed.shard_model`` gives them rows later, with the same values as an
    immediate build."""
    before = getattr(_deferred, "on", False)
    _deferred.on = True
    try:
        yield
    finally:
        _deferred.on = before


def materialize_tables(model: nn.Module, device: torch.device | str | None = None,
                       draw: bool = True) -> nn.Module:
    """Allocate every deferred ``FusedEmbeddingBag`` in ``model`` (in place) and draw its
    initial rows (``draw=False``: leave them uninitialised, for tables about to be loaded)."""
    for module in model.modules():
        if isinstance(module, FusedEmbeddingBag) and module.weight.is_meta:
            module.materialize(device, draw)
    return model


class TableModule(nn.Module):
    """What every module holding F sum-pooled tables answers: ``table_sizes`` (rows n_f),
    ``embedding_dim`` (D of its pooled output), ``num_features`` (F), and for memory reports
    ``feature_storage()``, per feature the (rows, dim) of each table storing it (one plain
    table unless a subclass stores it otherwise)."""

    table_sizes: list[int]
    embedding_dim: int

    @property
    def num_features(self) -> int:
        return len(self.table_sizes)

    def feature_storage(self) -> list[list[tuple[int, int]]]:
        return [[(n, self.embedding_dim)] for n in self.table_sizes]


class FusedEmbeddingBag(TableModule):
    """F sum-pooled embedding tables of dimension D in one weight.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D.
        init: how rows start (``RowInit``; default the reference's U(-sqrt(1/n), sqrt(1/n))).
        seed: the tables' initialisation seed (default: drawn from torch's global generator).

    Call: ``forward(sparse)`` with F features and batch B returns ``(B, F, D)`` float32
    (contiguous for one-hot bags, a transposed view of (F, B, D) storage for multi-hot ones).

    Example:
        >>> emb = FusedEmbeddingBag([10, 20], embedding_dim=4)
        >>> emb(SparseFeatures.from_ids(torch.tensor([[1, 19], [0, 3]]))).shape
        torch.Size([2, 2, 4])
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int,
                 init: RowInit | None = None, seed: int | None = None) -> None:
        super().__init__()
        for k, n in enumerate(table_sizes):
            if n <= 0:
                raise ValueError(f"table {k}: size {n}; every table needs at least one row")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.init = init or RowInit()
        self.seed = int(torch.randint(0, 1 << 62, (1,), device="cpu")) if seed is None \
            else int(seed)
        offsets = [0]
        for n in self.table_sizes:
            offsets.append(offsets[-1] + n)
        self.register_buffer("table_offsets", torch.tensor(offsets, dtype=torch.int64),
                             persistent=False)
        deferred = getattr(_deferred, "on", False)
        self.weight = nn.Parameter(empty_table(offsets[-1], self.embedding_dim,
                                               device="meta" if deferred else None))
        self.weight.sparse_rows = True  # tells build_optimizer to use a sparse row update
        self.row_update: RowUpdate | None = None  # the optimizer's, applied in the backward
        if not deferred:
            self.reset_parameters()

    def extra_repr(self) -> str:
        return f"tables={len(self.table_sizes)}, dim={self.embedding_dim}, init={self.init}"

    def table_rows(self, table: int, row_start: int, row_end: int) -> torch.Tensor:
        """Initial rows [row_start, row_end) of ``table`` (CPU), as ``reset_parameters`` draws."""
        return init_rows(self.init, self.table_sizes[table], row_start, row_end,
                         self.embedding_dim, self.seed, table)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight.is_meta:  # deferred, or a whole-model build on the meta device
            return
        for k, n in enumerate(self.table_sizes):
            self.table(k).copy_(self.table_rows(k, 0, n))

    def materialize(self, device: torch.device | str | None = None, draw: bool = True) -> None:
        """Give a deferred weight its memory and (with ``draw``) its initial rows."""
        weight = nn.Parameter(empty_table(*self.weight.shape, device=device))
        weight.sparse_rows = True
        self.weight = weight
        self.table_offsets = self.table_offsets.to(weight.device)
        if draw:
            self.reset_parameters()

    def table(self, k: int) -> torch.Tensor:
        """Table k as a view (n_k, D) of the fused weight."""
        start = sum(self.table_sizes[:k])
        return self.weight[start: start + self.table_sizes[k]]

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        update = self.row_update
        if update is None or not torch.is_grad_enabled():
            pooled, _ids = embedding_bag(self.weight, sparse.values, sparse.offsets,
                                         self.table_offsets, sparse.one_hot)
        else:  # the backward updates the rows (the weight gets no .grad)
            pooled, _ids = embedding_bag(self.weight, sparse.values, sparse.offsets,
                                         self.table_offsets, sparse.one_hot, update.lr,
                                         update.accumulator, update.eps)
        return pooled  # (B, F, D)
