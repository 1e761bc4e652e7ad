"""DLRM: Naumov et al. 2019, "Deep Learning Recommendation Model for Personalization and
Recommendation Systems" (arXiv:1906.00091).

Math, for dense features d (B, 13) and F bags of categorical ids:
    x       = BottomMLP(d)                             (B, D), ReLU after every layer
    e_f     = sum of table f's rows over the bag        (B, F, D)
    z       = [x, <T_i, T_j> for j < i] with T = [x, e_1..e_F]   (B, D + F(F+1)/2)
    logit   = TopMLP(z)                                 (B,), no activation at the end
    p(click) = sigmoid(logit); trained with BCE-with-logits.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm.config import DLRMConfig
from dlrm.features import SparseFeatures
from dlrm.models.common import CTRModel
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.hashing import hash_ids
from dlrm.models.interactions import build_interaction
from dlrm.models.mlp import MLP


def build_embeddings(config: DLRMConfig) -> nn.Module:
    """The embedding module that ``config``'s options ask for; all map SparseFeatures to
    (B, F, D). Plain fused tables unless QR or mixed dimensions are on (issue 7)."""
    sizes = config.lookup_table_sizes
    dim = config.embedding_dim
    if config.qr_threshold:
        from dlrm.models.qr_embeddings import QREmbeddingBag

        return QREmbeddingBag(sizes, dim, config.qr_threshold, config.qr_collisions,
                              config.qr_operation)
    if config.md_alpha is not None:
        from dlrm.models.mixed_dim import MixedDimEmbeddingBag, md_dimensions

        dims = md_dimensions(sizes, dim, config.md_alpha, config.md_round_dims)
        return MixedDimEmbeddingBag(sizes, dim, dims)
    return FusedEmbeddingBag(sizes, dim)


class DLRM(CTRModel):
    """The DLRM model.

    Args:
        config: a ``DLRMConfig`` (see ``dlrm.config.preset`` for the reference recipes). The
            top MLP's input width is computed from the interaction and prepended here.
        check_inputs: check every batch for NaN/inf dense values and out-of-range ids (a few
            cheap reductions); benchmarks turn it off.

    Call: ``forward(dense (B, num_dense) float, sparse SparseFeatures with F features)``
    returns logits ``(B,)``.

    Example:
        >>> model = DLRM(preset("tiny"))
        >>> ids = torch.zeros(4, 8, dtype=torch.long)
        >>> model(torch.randn(4, 13), SparseFeatures.from_ids(ids)).shape
        torch.Size([4])
    """

    def __init__(self, config: DLRMConfig, check_inputs: bool = True) -> None:
        config.validate()
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        self.bottom_mlp = MLP(config.bottom_mlp, final_activation=True)
        self.embeddings = build_embeddings(config)
        self.interaction, top_in = build_interaction(config)
        self.top_mlp = MLP([top_in, *config.top_mlp], final_activation=False)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        if self.config.max_ind_range:
            sparse = hash_ids(sparse, self.config.max_ind_range)  # ids mod M
        x = self.bottom_mlp(dense)  # (B, D)
        pooled = self.embeddings(sparse)  # (B, F, D)
        interactions = self.interaction(x, pooled)  # (B, D + P)
        return self.top_mlp(interactions).squeeze(1)  # (B,)
