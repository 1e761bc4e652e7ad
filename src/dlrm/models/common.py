"""Parts shared by DLRM and the baseline CTR models: input checks and the [dense, embeddings]
input.

Every model in ``dlrm.models`` takes the same call ``forward(dense (B, num_dense), sparse
SparseFeatures with F features) -> logits (B,)``, so the training loop, checkpoints, ``dlrm
eval`` and ``dlrm compare`` treat them alike.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm.features import SparseFeatures, slice_length


class CTRModel(nn.Module):
    """Base class of every model: stores the shape facts and checks inputs.

    Args:
        table_sizes: rows of each categorical feature's table (F tables).
        num_dense: dense features per sample.
        check_inputs: check every batch for NaN/inf dense values and out-of-range ids.

    Once its tables are sharded over W processes (``dlrm.distributed.shard_model`` sets
    ``batch_slice = (rank, W)``), the model takes the dense rows of this rank's slice of a
    global batch of B samples and the sparse features of all B samples, and returns the
    logits of its slice.
    """

    def __init__(self, table_sizes: list[int], num_dense: int, check_inputs: bool = True) -> None:
        super().__init__()
        self.table_sizes = [int(n) for n in table_sizes]
        self.num_dense = int(num_dense)
        self.check_inputs = check_inputs
        self.batch_slice: tuple[int, int] | None = None
        self.register_buffer("_table_sizes", torch.tensor(self.table_sizes), persistent=False)

    def local_batch(self, global_batch: int) -> int:
        """How many dense rows this process takes for a sparse batch of ``global_batch``."""
        if self.batch_slice is None:
            return global_batch
        return slice_length(global_batch, *self.batch_slice)

    def validate_inputs(self, dense: torch.Tensor, sparse: SparseFeatures) -> None:
        """Raise ``ValueError`` naming the bad input (shape, NaN, id out of range)."""
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"dense input has shape {tuple(dense.shape)}; "
                             f"expected (B, {self.num_dense})")
        if sparse.num_features != len(self.table_sizes):
            raise ValueError(f"got {sparse.num_features} sparse features; "
                             f"the model has {len(self.table_sizes)} tables")
        if self.local_batch(sparse.batch_size) != dense.shape[0]:
            where = "" if self.batch_slice is None else \
                f" (rank {self.batch_slice[0]} of {self.batch_slice[1]}: its slice of the batch)"
            raise ValueError(f"dense batch size {dense.shape[0]} != "
                             f"{self.local_batch(sparse.batch_size)} expected for a sparse batch "
                             f"of {sparse.batch_size}{where}")
        if torch.compiler.is_compiling():
            # Inside a compiled graph: checks without a Python branch on tensor values, so
            # the graph does not break (the message cannot name the sample).
            torch._assert_async(torch.isfinite(dense).all(),
                                "dense input has a NaN or infinite value")
            ids, sizes = sparse.values, self._table_sizes
            if sparse.one_hot:
                limit = sizes[:, None].expand(sparse.num_features, sparse.batch_size)
            else:
                bounds = sparse.offsets[:: sparse.batch_size]
                limit = torch.repeat_interleave(sizes, bounds[1:] - bounds[:-1],
                                                output_size=ids.numel())
            torch._assert_async(((ids >= 0) & (ids < limit.reshape(-1))).all(),
                                "a sparse id is outside its table")
            return
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
