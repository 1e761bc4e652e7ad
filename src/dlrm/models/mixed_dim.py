"""Mixed-dimension embeddings: Ginart et al. 2019, "Mixed Dimension Embeddings with
Application to Memory-Efficient Recommendation Systems" (arXiv:1909.11810).

Math (the power-law rule, as the reference DLRM's ``md_solver`` with ``d0 = D``): with table
sizes n_f (or n_f / popularity_f when popularities are given), sorted so that n_(0) is the
smallest,

    lambda = D * n_(0) ** alpha,   d_f = max(1, round(lambda * n_f ** -alpha)),  d_(0) = D

optionally rounded to the nearest power of two. Small (popular) tables keep D columns, large
ones get fewer; alpha = 0 gives every table D. Table f's pooled vector (B, d_f) is projected
to D by its own matrix P_f (d_f, D) (none when d_f = D):

    e_f = (sum_{i in S} E_f[i]) @ P_f          (B, D)

Tables of equal dimension share one ``FusedEmbeddingBag`` (sparse row updates) and one batched
matmul over their stacked (G, d, D) projections (dense parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag, RowInit, TableModule
from dlrm.models.feature_groups import FeatureOrder, select_features


def md_dimensions(table_sizes: list[int], embedding_dim: int, alpha: float,
                  round_dims: bool = False, popularity: list[float] | None = None) -> list[int]:
    """Per-table dimensions d_f by the power-law rule (see the module doc).

    Example:
        >>> md_dimensions([10, 1000, 100000], 16, alpha=0.3)
        [16, 4, 1]
    """
    if alpha < 0:
        raise ValueError(f"md alpha {alpha}: must be >= 0")
    if not table_sizes:
        return []
    popularity = popularity or [1.0] * len(table_sizes)
    ratios = [n / k for n, k in zip(table_sizes, popularity)]
    smallest = min(ratios)
    lamb = embedding_dim * smallest ** alpha
    dims = []
    for ratio in ratios:
        d = embedding_dim if ratio == smallest else max(1, round(lamb * ratio ** -alpha))
        if round_dims:
            d = 2 ** round(math.log2(d))
        dims.append(min(int(d), embedding_dim))
    return dims


class MixedDimEmbeddingBag(TableModule):
    """F sum-pooled tables of dimensions d_f, each projected to D.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D, the width of every output vector.
        dims: d_f of each table (e.g. from ``md_dimensions``), 1 <= d_f <= D.
        init: how the tables' rows start (``RowInit``).

    Call: ``forward(sparse)`` with F features and batch B returns ``(B, F, D)``.

    Example:
        >>> emb = MixedDimEmbeddingBag([10, 1000], 8, dims=[8, 2])
        >>> emb(SparseFeatures.from_ids(torch.tensor([[1, 999]]))).shape
        torch.Size([1, 2, 8])
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int, dims: list[int],
                 init: RowInit | None = None) -> None:
        super().__init__()
        if len(dims) != len(table_sizes):
            raise ValueError(f"{len(dims)} dimensions for {len(table_sizes)} tables")
        for f, d in enumerate(dims):
            if not 1 <= d <= embedding_dim:
                raise ValueError(f"table {f}: dimension {d} outside 1..{embedding_dim}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.dims = [int(d) for d in dims]
        distinct = sorted(set(self.dims), reverse=True)
        self.groups = [[f for f, d in enumerate(self.dims) if d == dim] for dim in distinct]
        self.tables = nn.ModuleList(
            FusedEmbeddingBag([self.table_sizes[f] for f in group], dim, init=init)
            for group, dim in zip(self.groups, distinct))
        projections = []
        for group, dim in zip(self.groups, distinct):
            if dim == embedding_dim:
                projections.append(None)
                continue
            weight = torch.empty(len(group), dim, embedding_dim)  # (G, d, D)
            for g in range(len(group)):  # xavier-uniform per table, as the reference's proj
                nn.init.xavier_uniform_(weight[g])
            projections.append(nn.Parameter(weight))
        self.projections = nn.ParameterList(p for p in projections if p is not None)
        self._projection_of_group = []
        k = 0
        for p in projections:
            self._projection_of_group.append(None if p is None else k)
            k += p is not None
        self.order = FeatureOrder(self.groups)

    def feature_storage(self) -> list[list[tuple[int, int]]]:
        """Per feature, the (rows, dim) of its table (memory reports; projections are dense)."""
        return [[(n, d)] for n, d in zip(self.table_sizes, self.dims)]

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        pooled_groups = []
        for group, table, k in zip(self.groups, self.tables, self._projection_of_group):
            pooled = table(select_features(sparse, group))  # (B, G, d)
            if k is not None:
                projection = self.projections[k]  # (G, d, D)
                pooled = torch.einsum("bgd,gde->bge", pooled, projection.to(pooled.dtype))
            pooled_groups.append(pooled)  # (B, G, D)
        return self.order(pooled_groups)  # (B, F, D)
