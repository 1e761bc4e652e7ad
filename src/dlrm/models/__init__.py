"""Models: DLRM, its baselines (DCN, DCN-v2, DLRM-DCNv2, Wide & Deep, DeepFM, logistic
regression) and the shared parts (fused embeddings, MLPs, interactions, cross networks).

Importing this package registers every model kind in ``dlrm.models.registry``.
"""

from dlrm.models.dcn import DCN, DCNConfig, DCNv2, DLRMDCNv2, DLRMDCNv2Config
from dlrm.models.dlrm import DLRM
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.interactions import CatInteraction, DotInteraction
from dlrm.models.linear import DeepFM, LinearDeepConfig, LogisticRegression, WideAndDeep
from dlrm.models.mlp import MLP

__all__ = ["DLRM", "FusedEmbeddingBag", "DotInteraction", "CatInteraction", "MLP", "DCN",
           "DCNv2", "DCNConfig", "DLRMDCNv2", "DLRMDCNv2Config", "WideAndDeep", "DeepFM",
           "LogisticRegression", "LinearDeepConfig"]
