"""Models: DLRM (and MLPerf's DLRM-DCNv2), its baselines (DCN, DCN-v2, Wide & Deep, DeepFM,
logistic regression) and the shared parts (fused embeddings, MLPs, interactions, cross
networks).

Importing this package registers every model kind (``dlrm.models.registry``).
"""

# Each model module registers its kinds when imported; this order is the order of `--model`.
from dlrm.models.dlrm import DLRM  # noqa: I001
from dlrm.models.dcn import DCN, DCNConfig, DCNv2
from dlrm.models.linear import DeepFM, LinearDeepConfig, LogisticRegression, WideAndDeep
from dlrm.models import quantized  # noqa: F401
from dlrm.models import ensemble  # noqa: F401
from dlrm.models.embeddings import FusedEmbeddingBag, RowInit, deferred_tables
from dlrm.models.interactions import CatInteraction, CrossInteraction, DotInteraction
from dlrm.models.mlp import MLP
from dlrm.models.registry import (
    ModelSpec,
    build_model,
    get_spec,
    model_config_for,
    model_kinds,
    parse_model_options,
)

__all__ = ["DLRM", "FusedEmbeddingBag", "RowInit", "deferred_tables", "DotInteraction",
           "CatInteraction", "CrossInteraction", "MLP", "DCN", "DCNv2", "DCNConfig",
           "WideAndDeep", "DeepFM", "LogisticRegression", "LinearDeepConfig", "ModelSpec",
           "build_model", "get_spec", "model_config_for", "model_kinds", "parse_model_options"]
