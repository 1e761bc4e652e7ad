"""Wide & Deep (Cheng et al. 2016), DeepFM (Guo et al. 2017) and logistic regression.

The linear ("wide", "first-order") parts keep one weight per categorical id in a
``FusedEmbeddingBag(table_sizes, 1)``, so they get the same sparse row updates as embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dlrm.config import Preset, parse_arch
from dlrm.features import SparseFeatures
from dlrm.models.common import CTRModel, first_order, flat_input
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
class LinearDeepConfig:
    """Shape of Wide & Deep, DeepFM (both use every field) and logistic regression (only
    ``table_sizes`` and ``num_dense``).

    Args:
        table_sizes: rows of each table (F tables).
        num_dense: dense features per sample.
        embedding_dim: D of the deep part's embeddings.
        deep_mlp: hidden widths of the deep network (ReLU after each; a logit layer follows).
        embedding_init: how the deep part's embedding rows start (``RowInit.parse``); the
            first-order weights always start at zero.
    """

    table_sizes: list[int]
    num_dense: int = 13
    embedding_dim: int = 16
    deep_mlp: list[int] = field(default_factory=lambda: [512, 256])
    embedding_init: str = "uniform"

    def __post_init__(self) -> None:
        self.table_sizes = [int(n) for n in self.table_sizes]
        self.deep_mlp = parse_arch(self.deep_mlp)
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim {self.embedding_dim}: must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearDeepConfig:
        return cls(**d)


def _linear_parts(module: CTRModel, table_sizes: list[int], num_dense: int) -> None:
    """Adds ``wide`` (one zero-initialized weight per id) and ``dense_linear`` (a . d + b)."""
    module.wide = FusedEmbeddingBag(table_sizes, 1, init=RowInit("constant", 0.0))
    module.dense_linear = nn.Linear(num_dense, 1)
    with torch.no_grad():
        module.dense_linear.weight.zero_()
        module.dense_linear.bias.zero_()


class LogisticRegression(CTRModel):
    """Logistic regression on one-hot ids and dense values.

    Math: ``logit = b + a . dense + sum_f sum_{i in bag f} w_f[i]``; p = sigmoid(logit).

    Args:
        config: a ``LinearDeepConfig`` (only ``table_sizes`` and ``num_dense`` are used).

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> model = LogisticRegression(LinearDeepConfig(table_sizes=[10, 20], num_dense=3))
        >>> model(torch.randn(5, 3), SparseFeatures.from_ids(torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    def __init__(self, config: LinearDeepConfig, check_inputs: bool = True) -> None:
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        _linear_parts(self, config.table_sizes, config.num_dense)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        return first_order(self.wide, self.dense_linear, dense, sparse)


class WideAndDeep(CTRModel):
    """Wide & Deep (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems",
    arXiv:1606.07792, eq. 3).

    Math:
        wide  = b + a . dense + sum_f sum_{i in bag f} w_f[i]     (one weight per raw id)
        deep  = DeepMLP([dense, e_1, ..., e_F])                   (ends in one logit)
        logit = wide + deep
    The paper's wide part also has hand-picked cross-product features; here it has the raw
    ids only (no feature engineering), which is how the baseline is usually run on Criteo.

    Args:
        config: a ``LinearDeepConfig``.

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> model = WideAndDeep(LinearDeepConfig(table_sizes=[10, 20], num_dense=3,
        ...                                      embedding_dim=4, deep_mlp=[8]))
        >>> model(torch.randn(5, 3), SparseFeatures.from_ids(torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    def __init__(self, config: LinearDeepConfig, check_inputs: bool = True) -> None:
        super().__init__(config.table_sizes, config.num_dense, check_inputs)
        self.config = config
        _linear_parts(self, config.table_sizes, config.num_dense)
        self.embeddings = FusedEmbeddingBag(config.table_sizes, config.embedding_dim,
                                            init=RowInit.parse(config.embedding_init))
        width = config.num_dense + len(config.table_sizes) * config.embedding_dim
        self.deep = MLP([width, *config.deep_mlp, 1], final_activation=False)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        wide = first_order(self.wide, self.dense_linear, dense, sparse)  # (B,)
        deep = self.deep(flat_input(dense, self.embeddings(sparse))).squeeze(1)  # (B,)
        return wide + deep


class DeepFM(WideAndDeep):
    """DeepFM (Guo et al. 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
    Prediction", arXiv:1703.04247, eqs. 1-2).

    Math, with e_f the pooled embedding of field f (B, F, D):
        first = b + a . dense + sum_f sum_{i in bag f} w_f[i]
        fm    = sum_{f<g} <e_f, e_g> = 1/2 sum_d [(sum_f e_fd)^2 - sum_f e_fd^2]
        deep  = DeepMLP([dense, e_1, ..., e_F])                  (ends in one logit)
        logit = first + fm + deep
    The FM shares its embeddings with the deep part, as in the paper. Dense features enter the
    first-order term and the deep part (not the FM), as DeepCTR does for Criteo.

    Args:
        config: a ``LinearDeepConfig``.

    Call: ``forward(dense (B, num_dense), sparse with F features) -> logits (B,)``.

    Example:
        >>> model = DeepFM(LinearDeepConfig(table_sizes=[10, 20], num_dense=3,
        ...                                 embedding_dim=4, deep_mlp=[8]))
        >>> model(torch.randn(5, 3), SparseFeatures.from_ids(torch.zeros(5, 2).long())).shape
        torch.Size([5])
    """

    # Same parts as Wide & Deep (first-order weights, shared embeddings, deep MLP): only the
    # forward adds the FM term.
    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        self.maybe_validate(dense, sparse)
        pooled = self.embeddings(sparse).to(dense.dtype)  # (B, F, D)
        first = first_order(self.wide, self.dense_linear, dense, sparse)  # (B,)
        fm = 0.5 * (pooled.sum(1).pow(2) - pooled.pow(2).sum(1)).sum(1)  # (B,)
        deep = self.deep(flat_input(dense, pooled)).squeeze(1)  # (B,)
        return first + fm + deep


def _linear_config_for(preset: Preset, table_sizes: list[int], num_dense: int,
                       over: dict[str, Any]) -> dict[str, Any]:
    """The preset's D and deep widths (logistic regression uses neither)."""
    return LinearDeepConfig(table_sizes=table_sizes, num_dense=num_dense,
                            embedding_dim=int(over.get("embedding_dim", preset.embedding_dim)),
                            deep_mlp=deep_widths(preset, over),
                            embedding_init=over.get("embedding_init", "uniform")).to_dict()


_DEEP_OPTIONS = {"embedding_dim": "D of the deep part's tables",
                 "deep_mlp": "deep network widths", "embedding_init": "how embedding rows start"}
_DEEP_SPACE = {**TRAINING_SEARCH_SPACE, **INIT_SEARCH_SPACE}
# Logistic regression is convex: full-batch L-BFGS (batch_size 0) reaches the optimum of the
# L2-penalized loss, so the L2 strength is all there is to choose on validation (as one
# chooses scikit-learn's C); tests/training/test_lr_optimum.py checks the optimum against
# scikit-learn's on the same one-hot features.
_LR_SPACE = {"optimizer": {"choices": ["lbfgs"]}, "lr": {"choices": [1.0]},
             "batch_size": {"choices": [0]},
             "weight_decay": {"float": [1e-7, 0.1], "log": True}}
register(ModelSpec("wdl", "Wide & Deep (Cheng et al. 2016)",
                   build=lambda cfg: WideAndDeep(LinearDeepConfig.from_dict(cfg)),
                   config_for=_linear_config_for, options=_DEEP_OPTIONS,
                   search_space=_DEEP_SPACE, recipes=TUNED_RECIPES.get("wdl", {})))
register(ModelSpec("deepfm", "DeepFM (Guo et al. 2017)",
                   build=lambda cfg: DeepFM(LinearDeepConfig.from_dict(cfg)),
                   config_for=_linear_config_for, options=_DEEP_OPTIONS,
                   search_space=_DEEP_SPACE, recipes=TUNED_RECIPES.get("deepfm", {})))
# Its trials run to the optimum: 30 steps of up to 10 L-BFGS iterations, an evaluation after
# each, no early stopping or pruning (a convex run's early AUCs say little about its end).
_LR_TUNE = {"epochs": 30, "evals_per_epoch": 1, "patience": 0, "pruner": "none"}
register(ModelSpec("lr", "logistic regression on one-hot ids and dense values",
                   build=lambda cfg: LogisticRegression(LinearDeepConfig.from_dict(cfg)),
                   config_for=_linear_config_for, search_space=_LR_SPACE,
                   recipes=TUNED_RECIPES.get("lr", {}), tune_settings=_LR_TUNE))
