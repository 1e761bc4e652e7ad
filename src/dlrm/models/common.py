"""Parts shared by DLRM and the baseline CTR models: input checks and the [dense, embeddings]
input.

Every model in ``dlrm.models`` takes the same call ``forward(dense (B, num_dense), sparse
SparseFeatures with F features) -> logits (B,)``, so the training loop, checkpoints, ``dlrm
eval`` and ``dlrm compare`` treat them alike.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm.features import SparseFeatures


class CTRModel(nn.Module):
    """Base class of every model: stores the shape facts and checks inputs.

    Args:
        table_sizes: rows of each categorical feature's table (F tables).
        num_dense: dense features per sample.
        check_inputs: check every batch for NaN/inf dense values and out-of-range ids.
    """

    def __init__(self, table_sizes: list[int], num_dense: int, check_inputs: bool = True) -> None:
        super().__init__()
        self.table_sizes = [int(n) for n in table_sizes]
        self.num_dense = int(num_dense)
        self.check_inputs = check_inputs
        self.register_buffer("_table_sizes", torch.tensor(self.table_sizes), persistent=False)

    def validate_inputs(self, dense: torch.Tensor, sparse: SparseFeatures) -> None:
        """Raise ``ValueError`` naming the bad input (shape, NaN, id out of range)."""
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"dense input has shape {tuple(dense.shape)}; "
                             f"expected (B, {self.num_dense})")
        if sparse.num_features != len(self.table_sizes):
            raise ValueError(f"got {sparse.num_features} sparse features; "
                             f"the model has {len(self.table_sizes)} tables")
        if sparse.batch_size != dense.shape[0]:
            raise ValueError(f"sparse batch size {sparse.batch_size} != dense batch size "
                             f"{dense.shape[0]}")
        if not bool(torch.isfinite(dense).all()):
            bad = (~torch.isfinite(dense)).nonzero()[0].tolist()
            raise ValueError(f"dense input has a NaN or infinite value at sample {bad[0]}, "
                             f"dense feature {bad[1]}")
        if sparse.values.numel() == 0:
            return
        if sparse.one_hot:
            ids = sparse.values.view(sparse.num_features, -1)
            if bool((ids.amax(1) >= self._table_sizes).any() | (ids.amin(1) < 0).any()):
                sparse.validate(self.table_sizes)  # names the feature and id
        else:
            sparse.validate(self.table_sizes)

    def maybe_validate(self, dense: torch.Tensor, sparse: SparseFeatures) -> None:
        if self.check_inputs:
            self.validate_inputs(dense, sparse)


def flat_input(dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """x_0 = [dense, e_1, ..., e_F]: ``(B, num_dense), (B, F, D) -> (B, num_dense + F*D)``.

    ``pooled`` may have any dtype and strides (a one-hot lookup is contiguous, a multi-hot one
    a transposed view); it is cast to ``dense.dtype`` and flattened in one copy.
    """
    batch, num_features, dim = pooled.shape
    if pooled.dtype == dense.dtype and pooled.is_contiguous():
        flat = pooled.view(batch, num_features * dim)
    else:
        flat = pooled.new_empty((batch, num_features * dim), dtype=dense.dtype)
        flat.view(batch, num_features, dim).copy_(pooled)
    return torch.cat([dense, flat], dim=1)


def first_order(wide: nn.Module, dense_linear: nn.Linear, dense: torch.Tensor,
                sparse: SparseFeatures) -> torch.Tensor:
    """A linear model: ``b + a . dense + sum_f sum_{i in bag f} w_f[i]`` -> (B,).

    ``wide`` is a ``FusedEmbeddingBag(table_sizes, 1)`` (one weight per id, sparse rows).
    """
    per_feature = wide(sparse)  # (B, F, 1)
    return dense_linear(dense).squeeze(1) + per_feature.sum(dim=(1, 2)).to(dense.dtype)
