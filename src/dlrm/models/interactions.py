"""Feature interactions: the DLRM paper's pairwise dot products, plain concatenation, and
MLPerf DLRM-DCNv2's low-rank cross network.

Every interaction takes ``dense (B, D)`` and ``pooled (B, F, D)`` of any dtype and strides
(the fused embedding lookup hands over float32, contiguous for one-hot bags and a transposed
view for multi-hot ones) and computes in ``dense.dtype``, so the cast to bf16 under autocast
happens inside the one copy that builds the interaction's input.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm.models.common import flat_input
from dlrm.models.cross import CrossNetV2
from dlrm.ops import dot_interaction, num_pairs

INTERACTIONS = ("dot", "cat", "cross")


class DotInteraction(nn.Module):
    """Pairwise dot products of T = [x, e_1, ..., e_F], concatenated after x.

    Math: out = [x, (T_i . T_j) for i in 1..F, j in 0..i-1] (j <= i with ``self_interaction``),
    ordered row by row as the reference DLRM: (1,0), (2,0), (2,1), (3,0), ... One
    ``dlrm::dot_interaction`` operator (``dlrm.ops.interaction``) computes it and its gradient.

    Args:
        num_features: F sparse features (so F+1 vectors with x).
        self_interaction: include T_i . T_i.

    Call: ``forward(dense (B, D), pooled (B, F, D)) -> (B, D + P)`` with P = (F+1)F/2
    (or (F+1)(F+2)/2 with self), in ``dense.dtype``; ``pooled`` may be any dtype and strides.

    Example:
        >>> DotInteraction(26)(torch.randn(8, 16), torch.randn(8, 26, 16)).shape
        torch.Size([8, 367])
    """

    def __init__(self, num_features: int, self_interaction: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.self_interaction = self_interaction

    @staticmethod
    def output_width(num_features: int, dim: int, self_interaction: bool = False) -> int:
        return dim + num_pairs(num_features, self_interaction)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.shape[1] != self.num_features:
            raise ValueError(f"got {pooled.shape[1]} pooled features, the interaction was "
                             f"built for {self.num_features}")
        return dot_interaction(dense, pooled, self.self_interaction)  # (B, D + P)


class CatInteraction(nn.Module):
    """Concatenation [x, e_1, ..., e_F]: ``(B, D), (B, F, D) -> (B, (F+1) D)`` in dense's dtype."""

    @staticmethod
    def output_width(num_features: int, dim: int) -> int:
        return (num_features + 1) * dim

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return flat_input(dense, pooled)


class CrossInteraction(nn.Module):
    """MLPerf DLRM-DCNv2's interaction: a (low-rank) DCN-v2 cross network over
    z_0 = [x, e_1, ..., e_F] (``dlrm.models.cross.CrossNetV2``).

    Args:
        num_features: F.
        dim: D.
        num_layers: cross layers (3 in MLPerf).
        low_rank: their rank r (512 in MLPerf), None for full rank.

    Call: ``forward(dense (B, D), pooled (B, F, D)) -> (B, (F+1) D)``.
    """

    def __init__(self, num_features: int, dim: int, num_layers: int = 3,
                 low_rank: int | None = 512) -> None:
        super().__init__()
        self.cross = CrossNetV2((num_features + 1) * dim, num_layers, low_rank)

    @staticmethod
    def output_width(num_features: int, dim: int) -> int:
        return (num_features + 1) * dim

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.cross(flat_input(dense, pooled))


def build_interaction(config) -> tuple[nn.Module, int]:
    """The interaction a ``DLRMConfig`` names and the top MLP's input width it produces."""
    num_features, dim = config.num_sparse, config.embedding_dim
    if config.interaction == "dot":
        return (DotInteraction(num_features, config.interaction_self),
                DotInteraction.output_width(num_features, dim, config.interaction_self))
    if config.interaction == "cross":
        return (CrossInteraction(num_features, dim, config.cross_layers, config.low_rank),
                CrossInteraction.output_width(num_features, dim))
    return CatInteraction(), CatInteraction.output_width(num_features, dim)
