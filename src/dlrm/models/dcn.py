"""DCN (Wang et al. 2017) and DCN-v2 (Wang et al. 2020). (MLPerf's DLRM-DCNv2 is a DLRM
with the ``cross`` interaction: ``dlrm.models.dlrm``.)

Both read the same inputs as DLRM (dense (B, num_dense), F bags of ids) through the same
``FusedEmbeddingBag``, and return logits (B,).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlrm.config import Preset, parse_arch
from dlrm.features import SparseFeatures
from dlrm.models.common import CTRModel, flat_input
from dlrm.models.cross import CrossNet, CrossNetV2
from dlrm.models.embeddings import FusedEmbeddingBag, RowInit
from dlrm.models.mlp import MLP
from dlrm.models.registry import (
    INIT_SEARCH_SPACE,
    TRAINING_SEARCH_SPACE,
    ModelSpec,
    deep_widths,
    register,
)
from dlrm.models.tuned_recipes import TUNED_RECIPES


@dataclass
class DCNConfig:
    """Shape of a DCN or DCN-v2.

    Args:
        table_sizes: rows of each table (F tables).
        num_dense: dense features per sample.
        embedding_dim: D of every table.
        cross_layers: L cross layers.
        deep_mlp: hidden widths of the deep network, e.g. ``[512, 256]`` (ReLU after each).
        low_rank: DCN-v2 only: rank r of W_l = U_l V_l^T (None: full rank).
        structure: DCN-v2 only: ``parallel`` (cross and deep side by side, as DCN) or
            ``stacked`` (the deep network on top of the cross network).
        embedding_init: how embedding rows start (``RowInit.parse``).
    """

    table_sizes: list[int]
    num_dense: int = 13
    embedding_dim: int = 16
    cross_layers: int = 6
    deep_mlp: list[int] = field(default_factory=lambda: [512, 256])
    low_rank: int | None = None
    structure: str = "parallel"
    embedding_init: str = "uniform"

    def __post_init__(self) -> None:
        self.table_sizes = [int(n) for n in self.table_sizes]
        self.deep_mlp = parse_arch(self.deep_mlp)
        if self.cross_layers < 0:
            raise ValueError(f"cross_layers {self.cross_layers}: must be >= 0")
        if self.structure not in ("parallel", "stacked"):
            raise ValueError(f"structure {self.structure!r}: expected parallel or stacked")
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim {self.embedding_dim}: must be positive")

    @property
    def input_width(self) -> int:
        return self.num_dense + len(self.table_sizes) * self.embedding_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCNConfig:
        return cls(**d)


class DCN(CTRModel):
    """Deep & Cross Network (Wang et al. 2017, arXiv:1708.05123).

    Math, with x_0 = [dense, e_1, ..., e_F] (B, d), d = num_dense + F*D:
        x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l       (cross network, L layers, see CrossNet)
        h       = DeepMLP(x_0)                         (ReLU after every layer)
        logit   = w_out . [x_L, h] + b_out             (B,)

    The paper feeds raw dense values; here they are whatever the data source gives (Criteo:
    log(1+x)), and every table has the same D rather than the paper's 6 n_f^(1/4).

    Args:
        config: a ``DCNConfig`` (``low_rank`` and ``structure`` are ignored).

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> model = DCN(DCNConfig(table_sizes=[10, 20], num_dense=3, embedding_dim=4,
        ...                       cross_layers=2, deep_mlp=[8]))
        >>> model(torch.randn(5, 3), SparseFeatures.from_ids(torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    def __init__(self, config: DCNConfig, check_inputs: bool = True) -> None:
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        d = config.input_width
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim,
                                            init=RowInit.parse(config.embedding_init))
        self.cross = CrossNet(d, config.cross_layers)
        self.deep = MLP([d, *config.deep_mlp], final_activation=True)
        self.out = MLP([d + config.deep_mlp[-1], 1], final_activation=False)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        x0 = flat_input(dense, self.embeddings(sparse))  # (B, d)
        both = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, d + H)
        return self.out(both).squeeze(1)


class DCNv2(CTRModel):
    """DCN-v2 (Wang et al. 2020, arXiv:2008.13535).

    Math, with x_0 = [dense, e_1, ..., e_F] (B, d):
        x_{l+1} = x_0 * (W_l x_l + b_l) + x_l          (CrossNetV2; W_l = U_l V_l^T if low-rank)
        parallel: logit = w . [x_L, DeepMLP(x_0)] + b
        stacked:  logit = w . DeepMLP(x_L) + b

    Args:
        config: a ``DCNConfig``.

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> model = DCNv2(DCNConfig(table_sizes=[10, 20], num_dense=3, embedding_dim=4,
        ...                         cross_layers=2, deep_mlp=[8], low_rank=2))
        >>> model(torch.randn(5, 3), SparseFeatures.from_ids(torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    def __init__(self, config: DCNConfig, check_inputs: bool = True) -> None:
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        d = config.input_width
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim,
                                            init=RowInit.parse(config.embedding_init))
        self.cross = CrossNetV2(d, config.cross_layers, config.low_rank)
        self.deep = MLP([d, *config.deep_mlp], final_activation=True)
        out_in = config.deep_mlp[-1] + (d if config.structure == "parallel" else 0)
        self.out = MLP([out_in, 1], final_activation=False)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        x0 = flat_input(dense, self.embeddings(sparse))  # (B, d)
        if self.config.structure == "stacked":
            return self.out(self.deep(self.cross(x0))).squeeze(1)
        both = torch.cat([self.cross(x0), self.deep(x0)], dim=1)
        return self.out(both).squeeze(1)


def _dcn_config_for(kind: str):
    def config_for(preset: Preset, table_sizes: list[int], num_dense: int,
                   over: dict[str, Any]) -> dict[str, Any]:
        """The preset's D and deep widths; DCN 6 cross layers (the paper's Criteo setup),
        DCN-v2 3, full rank, parallel."""
        cfg = DCNConfig(table_sizes=table_sizes, num_dense=num_dense,
                        embedding_dim=int(over.get("embedding_dim", preset.embedding_dim)),
                        cross_layers=int(over.get("cross_layers", 6 if kind == "dcn" else 3)),
                        deep_mlp=deep_widths(preset, over),
                        embedding_init=over.get("embedding_init", "uniform"))
        if kind == "dcnv2":
            cfg.low_rank = over.get("low_rank")
            cfg.structure = over.get("structure", "parallel")
        return DCNConfig.from_dict(cfg.to_dict()).to_dict()
    return config_for


_DCN_OPTIONS = {"embedding_dim": "D of every table", "deep_mlp": "deep network widths",
                "cross_layers": "cross layers", "embedding_init": "how embedding rows start"}
register(ModelSpec("dcn", "Deep & Cross Network (Wang et al. 2017)",
                   build=lambda cfg: DCN(DCNConfig.from_dict(cfg)),
                   config_for=_dcn_config_for("dcn"), options=_DCN_OPTIONS,
                   search_space={**TRAINING_SEARCH_SPACE, **INIT_SEARCH_SPACE},
                   recipes=TUNED_RECIPES.get("dcn", {})))
register(ModelSpec("dcnv2", "DCN-v2 (Wang et al. 2020): matrix cross layers, full or low rank",
                   build=lambda cfg: DCNv2(DCNConfig.from_dict(cfg)),
                   config_for=_dcn_config_for("dcnv2"),
                   options={**_DCN_OPTIONS, "low_rank": "rank of W_l (none: full rank)",
                            "structure": "parallel or stacked"},
                   search_space={**TRAINING_SEARCH_SPACE, **INIT_SEARCH_SPACE},
                   recipes=TUNED_RECIPES.get("dcnv2", {})))
