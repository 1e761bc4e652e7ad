"""Models: DLRM and the shared parts (fused embeddings, MLPs, interactions)."""

from dlrm.models.dlrm import DLRM
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.interactions import CatInteraction, DotInteraction
from dlrm.models.mlp import MLP

__all__ = ["DLRM", "FusedEmbeddingBag", "DotInteraction", "CatInteraction", "MLP"]
