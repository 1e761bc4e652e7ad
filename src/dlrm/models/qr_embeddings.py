"""Quotient-remainder embeddings: Shi et al. 2019, "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems" (arXiv:1909.02107).

Math: a table of n rows above ``threshold`` is replaced by a quotient table Q of ceil(n/c)
rows and a remainder table R of c rows (c = ``collisions``). For a bag S of ids, as the
reference DLRM's ``QREmbeddingBag`` (pooling first, then combining):

    q = sum_{i in S} Q[i // c],   r = sum_{i in S} R[i mod c]
    e = q * r  (mult),  q + r  (add),  [q, r]  (concat; Q has D - D//2 columns, R has D//2)

Every id keeps a distinct (quotient, remainder) pair, so no two ids share an embedding, with
ceil(n/c) + c rows instead of n. Tables at or below the threshold stay full tables.

Initialization: Q and R rows as the model's ``RowInit`` (default U(-sqrt(1/rows), sqrt(1/rows))
like the fused tables), except ``mult``, whose R starts at 1 so that each id starts from its
quotient row. (The reference draws both from U(sqrt(1/n), 1).)

All tables are ``FusedEmbeddingBag`` weights, so the sparse row optimizers update them.
"""

from __future__ import annotations

import math

import torch

from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag, RowInit, TableModule
from dlrm.models.feature_groups import FeatureOrder, select_features

QR_OPERATIONS = ("mult", "add", "concat")


def qr_table_shapes(num_rows: int, embedding_dim: int, collisions: int, operation: str
                    ) -> list[tuple[int, int]]:
    """(rows, dim) of the quotient and remainder tables replacing a table of ``num_rows``."""
    quotient_dim, remainder_dim = ((embedding_dim - embedding_dim // 2, embedding_dim // 2)
                                   if operation == "concat" else (embedding_dim, embedding_dim))
    return [(math.ceil(num_rows / collisions), quotient_dim),
            (min(collisions, num_rows), remainder_dim)]


class QREmbeddingBag(TableModule):
    """F sum-pooled tables, those above ``threshold`` rows stored as quotient-remainder pairs.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D of every pooled output.
        threshold: tables with n_f > threshold use quotient-remainder tables.
        collisions: c, rows of each remainder table.
        operation: ``mult``, ``add`` or ``concat``.
        init: how the full and quotient tables' rows start (``RowInit``).

    Call: ``forward(sparse)`` with F features and batch B returns ``(B, F, D)``.

    Example:
        >>> emb = QREmbeddingBag([10, 1000], embedding_dim=4, threshold=100, collisions=8)
        >>> emb(SparseFeatures.from_ids(torch.tensor([[1, 999], [0, 3]]))).shape
        torch.Size([2, 2, 4])
        >>> emb.quotient.table_sizes, emb.remainder.table_sizes
        ([125], [8])
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int, threshold: int,
                 collisions: int = 4, operation: str = "mult", init: RowInit | None = None
                 ) -> None:
        super().__init__()
        if operation not in QR_OPERATIONS:
            raise ValueError(f"qr operation {operation!r}: expected one of {QR_OPERATIONS}")
        if collisions < 1:
            raise ValueError(f"qr collisions {collisions}: must be >= 1")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.collisions = int(collisions)
        self.threshold = int(threshold)
        self.operation = operation
        self.small = [f for f, n in enumerate(self.table_sizes) if n <= threshold]
        self.large = [f for f, n in enumerate(self.table_sizes) if n > threshold]
        self.full = FusedEmbeddingBag([self.table_sizes[f] for f in self.small],
                                      embedding_dim, init=init) if self.small else None
        self.quotient: FusedEmbeddingBag | None = None
        self.remainder: FusedEmbeddingBag | None = None
        if self.large:
            shapes = [qr_table_shapes(self.table_sizes[f], embedding_dim, collisions, operation)
                      for f in self.large]
            self.quotient = FusedEmbeddingBag([s[0][0] for s in shapes], shapes[0][0][1],
                                              init=init)
            self.remainder = FusedEmbeddingBag(
                [s[1][0] for s in shapes], shapes[0][1][1],
                init=RowInit("constant", 1.0) if operation == "mult" else init)
        self.order = FeatureOrder([g for g in (self.small, self.large) if g])

    def feature_storage(self) -> list[list[tuple[int, int]]]:
        """Per feature, the (rows, dim) of each table storing it (memory reports)."""
        return [[(n, self.embedding_dim)] if n <= self.threshold else
                qr_table_shapes(n, self.embedding_dim, self.collisions, self.operation)
                for n in self.table_sizes]

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        groups = []
        if self.full is not None:
            groups.append(self.full(select_features(sparse, self.small)))  # (B, F_small, D)
        if self.quotient is not None and self.remainder is not None:
            large = select_features(sparse, self.large)
            quotient_ids = SparseFeatures(torch.div(large.values, self.collisions,
                                                    rounding_mode="floor"),
                                          large.offsets, large.num_features, large.one_hot)
            remainder_ids = SparseFeatures(large.values.remainder(self.collisions),
                                           large.offsets, large.num_features, large.one_hot)
            q = self.quotient(quotient_ids)  # (B, F_large, Dq)
            r = self.remainder(remainder_ids)  # (B, F_large, Dr)
            if self.operation == "mult":
                groups.append(q * r)
            elif self.operation == "add":
                groups.append(q + r)
            else:
                groups.append(torch.cat([q, r], dim=2))
        return self.order(groups)  # (B, F, D)
