"""DLRM: Naumov et al. 2019, "Deep Learning Recommendation Model for Personalization and
Recommendation Systems" (arXiv:1906.00091), and MLPerf's DLRM-DCNv2 (the same model with a
low-rank DCN-v2 cross network as its interaction).

Math, for dense features d (B, 13) and F bags of categorical ids:
    x       = BottomMLP(d)                             (B, D), ReLU after every layer
    e_f     = sum of table f's rows over the bag        (B, F, D)
    z       = [x, <T_i, T_j> for j < i] with T = [x, e_1..e_F]   (B, D + F(F+1)/2)
              (``cross``: z = CrossNetV2([x, e_1..e_F]), (B, (F+1) D))
    logit   = TopMLP(z)                                 (B,), no activation at the end
    p(click) = sigmoid(logit); trained with BCE-with-logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlrm.config import DLRMConfig, Preset, dlrm_config_for_data, parse_arch
from dlrm.features import SparseFeatures
from dlrm.models.common import CTRModel
from dlrm.models.embeddings import FusedEmbeddingBag, RowInit
from dlrm.models.hashing import hash_ids
from dlrm.models.interactions import build_interaction
from dlrm.models.mixed_dim import MixedDimEmbeddingBag, md_dimensions
from dlrm.models.mlp import MLP
from dlrm.models.qr_embeddings import QREmbeddingBag
from dlrm.models.registry import (
    INIT_SEARCH_SPACE,
    TRAINING_SEARCH_SPACE,
    ModelSpec,
    register,
)
from dlrm.models.tuned_recipes import TUNED_RECIPES


def build_embeddings(config: DLRMConfig) -> nn.Module:
    """The embedding module that ``config``'s options ask for; all map SparseFeatures to
    (B, F, D). Plain fused tables unless QR or mixed dimensions are on."""
    sizes = config.lookup_table_sizes
    dim = config.embedding_dim
    init = RowInit.parse(config.embedding_init)
    if config.qr_threshold:
        return QREmbeddingBag(sizes, dim, config.qr_threshold, config.qr_collisions,
                              config.qr_operation, init=init)
    if config.md_alpha is not None:
        dims = md_dimensions(sizes, dim, config.md_alpha, config.md_round_dims)
        return MixedDimEmbeddingBag(sizes, dim, dims, init=init)
    return FusedEmbeddingBag(sizes, dim, init=init)


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


_DLRM_OPTIONS = {
    "embedding_dim": "D (the bottom MLP's last width follows it)",
    "bottom_mlp": "bottom MLP widths, e.g. 512-256-64-16 (ends at D)",
    "top_mlp": "top MLP widths, e.g. 512-256-1",
    "interaction": "dot, cat or cross",
    "interaction_self": "dot: include each vector's dot product with itself",
    "cross_layers": "cross: layers of the cross network",
    "low_rank": "cross: rank of each cross layer",
    "embedding_init": "uniform (reference), normal:SCALE, constant:VALUE",
    "qr_threshold": "quotient-remainder tables above this many rows (0: off)",
    "qr_collisions": "QR: remainder table rows",
    "qr_operation": "QR: mult, add or concat",
    "md_alpha": "mixed dimensions, power-law temperature",
    "md_round_dims": "mixed dimensions rounded to powers of two",
    "max_ind_range": "hash ids modulo this many rows (0: off)",
}
_SHAPE_KEYS = ("embedding_dim", "bottom_mlp", "top_mlp", "interaction", "interaction_self")


def _dlrm_config_for(preset: Preset, table_sizes: list[int], num_dense: int,
                     over: dict[str, Any]) -> dict[str, Any]:
    cfg = dlrm_config_for_data(preset.name, table_sizes, num_dense, over.get("embedding_dim"),
                               over.get("bottom_mlp"), over.get("top_mlp"),
                               over.get("interaction"), bool(over.get("interaction_self")))
    for key, value in over.items():
        if key not in _SHAPE_KEYS:
            setattr(cfg, key, value)
    return DLRMConfig.from_dict(cfg.to_dict()).to_dict()  # validates


def _dcnv2_config_for(preset: Preset, table_sizes: list[int], num_dense: int,
                      over: dict[str, Any]) -> dict[str, Any]:
    """MLPerf DLRM-DCNv2: the preset's D and MLPs, a cross network of rank at most a quarter of
    its width (F+1) D (512 of 3456 in MLPerf), so small presets stay low-rank."""
    dim = int(over.get("embedding_dim", preset.embedding_dim))
    bottom = parse_arch(over.get("bottom_mlp", list(preset.bottom_mlp[:-1]) or [dim]))
    if bottom[0] != num_dense:
        bottom = [num_dense, *bottom]
    if bottom[-1] != dim:
        bottom = [*bottom, dim]
    width = (len(table_sizes) + 1) * dim
    cfg = DLRMConfig(table_sizes=table_sizes, embedding_dim=dim, bottom_mlp=bottom,
                     top_mlp=parse_arch(over.get("top_mlp", list(preset.top_mlp))),
                     interaction="cross", cross_layers=int(over.get("cross_layers", 3)),
                     low_rank=over.get("low_rank", min(512, max(1, width // 4))))
    for key, value in over.items():
        if key not in ("embedding_dim", "bottom_mlp", "top_mlp", "cross_layers", "low_rank"):
            setattr(cfg, key, value)
    return DLRMConfig.from_dict(cfg.to_dict()).to_dict()


def _build_dcnv2(config: dict[str, Any]) -> DLRM:
    model = DLRM(DLRMConfig.from_dict({**config, "interaction": "cross"}))
    # Checkpoints of the former separate DLRMDCNv2 class named the cross network `cross.*`.
    model._register_load_state_dict_pre_hook(_rename_cross_keys)
    return model


def _rename_cross_keys(state_dict, prefix, *_args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "cross.")]:
        state_dict[prefix + "interaction." + key[len(prefix):]] = state_dict.pop(key)


register(ModelSpec(
    "dlrm", "DLRM (Naumov et al. 2019): bottom MLP, embeddings, dot interaction, top MLP",
    build=lambda cfg: DLRM(DLRMConfig.from_dict(cfg)), config_for=_dlrm_config_for,
    options=_DLRM_OPTIONS, search_space={**TRAINING_SEARCH_SPACE, **INIT_SEARCH_SPACE},
    recipes=TUNED_RECIPES.get("dlrm", {})))
register(ModelSpec(
    "dlrm_dcnv2", "MLPerf DLRM-DCNv2: DLRM with a low-rank DCN-v2 cross network as interaction",
    build=_build_dcnv2, config_for=_dcnv2_config_for,
    options={k: v for k, v in _DLRM_OPTIONS.items()
             if k not in ("interaction", "interaction_self")},
    search_space={**TRAINING_SEARCH_SPACE, **INIT_SEARCH_SPACE},
    recipes=TUNED_RECIPES.get("dlrm_dcnv2", {})))
