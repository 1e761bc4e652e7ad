"""Split ``SparseFeatures`` by feature, for embedding variants that treat tables differently.

QR and mixed-dimension embeddings send some features to one set of tables and the rest to
another; ``select_features`` cuts the sub-batch of a list of features (still feature-major)
and ``FeatureOrder`` puts the pooled groups back in feature order.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm.features import SparseFeatures


def select_features(sparse: SparseFeatures, features: list[int]) -> SparseFeatures:
    """The bags of ``features`` (in that order) as a ``SparseFeatures`` of len(features)."""
    num_features = sparse.num_features
    if features == list(range(num_features)):
        return sparse
    batch = sparse.batch_size
    if sparse.one_hot:
        index = torch.tensor(features, dtype=torch.int64, device=sparse.values.device)
        values = sparse.values.view(num_features, batch).index_select(0, index).reshape(-1)
        return SparseFeatures.from_ids(values.view(len(features), batch).t())
    # Multi-hot: keep the values of the chosen features with one mask (no Python loop, no
    # host sync, so torch.export can trace it); the order of ``features`` must be ascending
    # for the kept values to stay feature-major.
    if features != sorted(features):
        raise ValueError(f"features {features} must be ascending for multi-hot selection")
    index = torch.tensor(features, dtype=torch.int64, device=sparse.values.device)
    chosen = torch.zeros(num_features, dtype=torch.bool, device=sparse.values.device)
    chosen[index] = True
    bounds = sparse.offsets[::batch]
    feature_of_value = torch.repeat_interleave(chosen, bounds[1:] - bounds[:-1])
    values = sparse.values[feature_of_value]
    lengths = sparse.lengths.view(num_features, batch).index_select(0, index).reshape(-1)
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    return SparseFeatures(values, offsets, len(features), one_hot=False)


class FeatureOrder(nn.Module):
    """Reassemble pooled groups (B, F_g, D) given in ``groups`` order into (B, F, D).

    Args:
        groups: the feature indices of each group, together a permutation of 0..F-1.
    """

    def __init__(self, groups: list[list[int]]) -> None:
        super().__init__()
        order = [f for group in groups for f in group]
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"groups {groups} are not a partition of 0..{len(order) - 1}")
        position = [0] * len(order)
        for pos, f in enumerate(order):
            position[f] = pos
        self.identity = order == list(range(len(order)))
        self.register_buffer("position", torch.tensor(position, dtype=torch.int64),
                             persistent=False)

    def forward(self, pooled_groups: list[torch.Tensor]) -> torch.Tensor:
        pooled = pooled_groups[0] if len(pooled_groups) == 1 else torch.cat(pooled_groups, 1)
        return pooled if self.identity else pooled.index_select(1, self.position)
