"""DCN (Wang et al. 2017), DCN-v2 (Wang et al. 2020) and MLPerf's DLRM-DCNv2.

All three read the same inputs as DLRM (dense (B, num_dense), F bags of ids) through the same
``FusedEmbeddingBag``, and return logits (B,).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlrm.config import parse_arch
from dlrm.features import SparseFeatures
from dlrm.models.common import CTRModel, flat_input
from dlrm.models.cross import CrossNet, CrossNetV2
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.mlp import MLP
from dlrm.models.registry import register


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
    """

    table_sizes: list[int]
    num_dense: int = 13
    embedding_dim: int = 16
    cross_layers: int = 6
    deep_mlp: list[int] = field(default_factory=lambda: [512, 256])
    low_rank: int | None = None
    structure: str = "parallel"

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
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim)
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
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim)
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


@dataclass
class DLRMDCNv2Config:
    """Shape of MLPerf's DLRM-DCNv2 (defaults: the MLPerf Training v3 recipe).

    Args:
        table_sizes: rows of each table (F tables).
        embedding_dim: D (128 in MLPerf).
        bottom_mlp: dense input width to D, e.g. ``[13, 512, 256, 128]``.
        top_mlp: widths after the cross network, ending at 1.
        cross_layers: low-rank cross layers over [x, e_1, ..., e_F] (3 in MLPerf).
        low_rank: their rank r (512 in MLPerf).
    """

    table_sizes: list[int]
    embedding_dim: int = 128
    bottom_mlp: list[int] = field(default_factory=lambda: [13, 512, 256, 128])
    top_mlp: list[int] = field(default_factory=lambda: [1024, 1024, 512, 256, 1])
    cross_layers: int = 3
    low_rank: int | None = 512

    def __post_init__(self) -> None:
        self.table_sizes = [int(n) for n in self.table_sizes]
        self.bottom_mlp = parse_arch(self.bottom_mlp)
        self.top_mlp = parse_arch(self.top_mlp)
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(f"bottom_mlp {self.bottom_mlp} must end at the embedding "
                             f"dimension D={self.embedding_dim}")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp {self.top_mlp}: must end with width 1 (one logit)")

    @property
    def num_dense(self) -> int:
        return self.bottom_mlp[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DLRMDCNv2Config:
        return cls(**d)


class DLRMDCNv2(CTRModel):
    """MLPerf's DLRM-DCNv2: DLRM with its dot interaction replaced by a low-rank cross network.

    Math:
        x     = BottomMLP(dense)                      (B, D), ReLU after every layer
        z_0   = [x, e_1, ..., e_F]                     (B, (F+1) D)
        z_L   = CrossNetV2(z_0), low rank r            (B, (F+1) D)
        logit = TopMLP(z_L)                            (B,)

    Args:
        config: a ``DLRMDCNv2Config``.

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> cfg = DLRMDCNv2Config(table_sizes=[10, 20], embedding_dim=4, bottom_mlp=[3, 4],
        ...                       top_mlp=[8, 1], cross_layers=2, low_rank=2)
        >>> DLRMDCNv2(cfg)(torch.randn(5, 3), SparseFeatures.from_ids(
        ...     torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    def __init__(self, config: DLRMDCNv2Config, check_inputs: bool = True) -> None:
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        width = (len(config.table_sizes) + 1) * config.embedding_dim
        self.bottom_mlp = MLP(config.bottom_mlp, final_activation=True)
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim)
        self.cross = CrossNetV2(width, config.cross_layers, config.low_rank)
        self.top_mlp = MLP([width, *config.top_mlp], final_activation=False)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        x = self.bottom_mlp(dense)  # (B, D)
        z0 = flat_input(x, self.embeddings(sparse))  # (B, (F+1) D)
        return self.top_mlp(self.cross(z0)).squeeze(1)


register("dcn", lambda cfg: DCN(DCNConfig.from_dict(cfg)))
register("dcnv2", lambda cfg: DCNv2(DCNConfig.from_dict(cfg)))
register("dlrm_dcnv2", lambda cfg: DLRMDCNv2(DLRMDCNv2Config.from_dict(cfg)))
