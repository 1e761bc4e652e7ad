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
    bounds = sparse.offsets[::batch].tolist()  # (F+1,) start of each feature's values
    lengths = sparse.lengths.view(num_features, batch)
    values = torch.cat([sparse.values[bounds[f]: bounds[f + 1]] for f in features])
    index = torch.tensor(features, dtype=torch.int64, device=lengths.device)
    return SparseFeatures.from_lengths(values, lengths.index_select(0, index).reshape(-1),
                                       len(features))


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
