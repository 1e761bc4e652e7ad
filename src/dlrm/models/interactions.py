"""Feature interactions: the DLRM paper's pairwise dot products, and plain concatenation."""

from __future__ import annotations

import torch
from torch import nn


def dot_pairs(num_vectors: int, self_interaction: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-by-row lower-triangle pairs (i, j), j < i (j <= i with self): (1,0), (2,0), (2,1), ..."""
    offset = 0 if self_interaction else -1
    pairs = torch.tril_indices(num_vectors, num_vectors, offset=offset)
    return pairs[0], pairs[1]


class DotInteraction(nn.Module):
    """Pairwise dot products of T = [x, e_1, ..., e_F], concatenated after x.

    Math: out = [x, (T_i . T_j) for i in 1..F, j in 0..i-1] (j <= i with ``self_interaction``),
    ordered row by row as the reference DLRM: (1,0), (2,0), (2,1), (3,0), ...

    Args:
        num_features: F sparse features (so F+1 vectors with x).
        self_interaction: include T_i . T_i.

    Call: ``forward(dense (B, D), pooled (B, F, D)) -> (B, D + P)`` with P = (F+1)F/2
    (or (F+1)(F+2)/2 with self).

    Example:
        >>> DotInteraction(26)(torch.randn(8, 16), torch.randn(8, 26, 16)).shape
        torch.Size([8, 367])
    """

    def __init__(self, num_features: int, self_interaction: bool = False) -> None:
        super().__init__()
        n = num_features + 1
        rows, cols = dot_pairs(n, self_interaction)
        # Flat positions in the (n, n) Gram matrix, so one index_select picks all pairs.
        self.register_buffer("pair_index", rows * n + cols, persistent=False)
        self.num_vectors = n

    @staticmethod
    def output_width(num_features: int, dim: int, self_interaction: bool = False) -> int:
        n = num_features + 1
        return dim + (n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        batch, dim = dense.shape
        vectors = torch.cat([dense.unsqueeze(1), pooled], dim=1)  # (B, F+1, D)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, F+1, F+1)
        pairs = gram.reshape(batch, -1).index_select(1, self.pair_index)  # (B, P)
        return torch.cat([dense, pairs], dim=1)


class CatInteraction(nn.Module):
    """Concatenation [x, e_1, ..., e_F]: ``(B, D), (B, F, D) -> (B, (F+1) D)``."""

    @staticmethod
    def output_width(num_features: int, dim: int) -> int:
        return (num_features + 1) * dim

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, pooled.reshape(pooled.shape[0], -1)], dim=1)


def build_interaction(config) -> tuple[nn.Module, int]:
    """The interaction a ``DLRMConfig`` names and the top MLP's input width it produces."""
    num_features, dim = config.num_sparse, config.embedding_dim
    if config.interaction == "dot":
        return (DotInteraction(num_features, config.interaction_self),
                DotInteraction.output_width(num_features, dim, config.interaction_self))
    return CatInteraction(), CatInteraction.output_width(num_features, dim)
