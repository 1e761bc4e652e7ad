"""All embedding tables in one fused weight, one lookup for all features, sparse row grads.

Math: for feature f and sample b with bag S_fb of ids, ``pooled[b, f] = sum_{i in S_fb} E_f[i]``.

All F tables live in one ``(sum_f n_f, D)`` weight; table f starts at row ``table_offsets[f]``.
A lookup adds the offsets to the local ids and gathers once (one native pass or
``index_select`` for one-hot bags, ``embedding_bag`` otherwise), instead of a Python loop over
F ``nn.EmbeddingBag`` modules.

The backward pass hands autograd a *sparse* COO gradient ``(ids, rows)`` of the weight — one
row of D values per looked-up id, duplicates left uncoalesced — so the optimizer can update
only the touched rows (``dlrm.training.optim``). For one-hot bags producing it copies no
floats when the consumer hands back a sample-major or feature-major pooled gradient (one copy
otherwise); no (rows, D) dense gradient is ever allocated.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dlrm import kernels
from dlrm.features import SparseFeatures


def global_ids(sparse: SparseFeatures, table_offsets: torch.Tensor) -> torch.Tensor:
    """Local ids + each value's table offset -> rows of the fused weight, (N,).

    One-hot bags come out sample-major (the id of sample b, feature f at b*F + f);
    multi-hot values keep their feature-major order.
    """
    batch = sparse.batch_size
    if sparse.one_hot:
        ids = sparse.values.view(sparse.num_features, batch)
        return (ids + table_offsets[:-1, None]).t().reshape(-1)
    # Values of feature f are the contiguous run offsets[f*B] : offsets[(f+1)*B].
    bounds = sparse.offsets[:: batch]
    per_feature = bounds[1:] - bounds[:-1]
    shift = torch.repeat_interleave(table_offsets[:-1], per_feature)
    return sparse.values + shift


class _FusedLookup(torch.autograd.Function):
    """pooled (B, F, D) = bag-sum of weight rows; grad of weight is a sparse COO tensor.

    One-hot bags are gathered sample-major (ids ordered (b, f)), so the (B, F, D) result is
    contiguous and the interaction reads it without a transposing copy. Multi-hot bags run
    feature-major through ``embedding_bag`` (values are grouped by feature, as
    ``SparseFeatures`` stores them) and come back as a transposed (F, B, D) view. The backward
    takes the pooled gradient in whatever layout the consumer produced: sample-major or
    feature-major storage is used in place with the ids permuted to match (53k int64 instead
    of 53k x D floats), any other layout is copied once.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                table_offsets: torch.Tensor, one_hot: bool, num_features: int
                ) -> torch.Tensor:  # type: ignore[override]
        dim = weight.shape[1]
        ctx.one_hot = one_hot
        ctx.weight_shape = weight.shape
        if one_hot and kernels.supports_rows(weight, values):
            # Global ids and rows in one native pass.
            pooled, ids = kernels.lookup_one_hot(weight, values, table_offsets)
        else:
            ids = global_ids(SparseFeatures(values, offsets, num_features, one_hot),
                             table_offsets)
            if one_hot:  # ids are sample-major: row b*F + f
                pooled = weight.index_select(0, ids)
        ctx.save_for_backward(ids, offsets)
        if one_hot:
            return pooled.view(-1, num_features, dim)  # (B, F, D)
        pooled = torch.nn.functional.embedding_bag(
            ids, weight, offsets[:-1], mode="sum", include_last_offset=False)  # (F*B, D)
        return pooled.view(num_features, -1, dim).transpose(0, 1)  # (B, F, D)

    @staticmethod
    @once_differentiable  # a sparse gradient and a native lookup: differentiating twice must fail
    def backward(ctx, grad_pooled: torch.Tensor):  # type: ignore[override]
        ids, offsets = ctx.saved_tensors
        batch, num_features, dim = grad_pooled.shape
        feature_major = grad_pooled.transpose(0, 1)  # (F, B, D)
        if feature_major.is_contiguous() and not grad_pooled.is_contiguous():
            bag_grads = feature_major.view(num_features * batch, dim)  # row f*B + b
            sample_major = False
        else:
            bag_grads = grad_pooled.contiguous().view(batch * num_features, dim)  # b*F + f
            sample_major = True
        if ctx.one_hot:  # ids are sample-major
            row_ids = ids if sample_major else ids.view(batch, num_features).t().reshape(-1)
            rows = bag_grads  # (N, D): one id per bag
        else:  # ids and bags are feature-major: bag f*B + b holds ids offsets[f*B + b]:...
            lengths = offsets[1:] - offsets[:-1]
            bag_of_value = torch.repeat_interleave(
                torch.arange(lengths.numel(), device=ids.device), lengths)
            if sample_major:  # bag f*B + b sits at row b*F + f
                bag_of_value = (bag_of_value % batch) * num_features + bag_of_value // batch
            row_ids, rows = ids, bag_grads.index_select(0, bag_of_value)  # (N, D)
        grad_weight = torch.sparse_coo_tensor(
            row_ids.unsqueeze(0), rows, ctx.weight_shape, check_invariants=False)
        return grad_weight, None, None, None, None, None


class FusedEmbeddingBag(nn.Module):
    """F sum-pooled embedding tables of dimension D in one weight.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D.
        init: ``"uniform"`` draws table f's rows from U(-sqrt(1/n_f), sqrt(1/n_f)) as the
            reference DLRM does.

    Call: ``forward(sparse)`` with F features and batch B returns ``(B, F, D)``.

    Example:
        >>> emb = FusedEmbeddingBag([10, 20], embedding_dim=4)
        >>> emb(SparseFeatures.from_ids(torch.tensor([[1, 19], [0, 3]]))).shape
        torch.Size([2, 2, 4])
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int) -> None:
        super().__init__()
        for k, n in enumerate(table_sizes):
            if n <= 0:
                raise ValueError(f"table {k}: size {n}; every table needs at least one row")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        offsets = [0]
        for n in self.table_sizes:
            offsets.append(offsets[-1] + n)
        self.register_buffer("table_offsets", torch.tensor(offsets, dtype=torch.int64),
                             persistent=False)
        self.weight = nn.Parameter(torch.empty(offsets[-1], self.embedding_dim))
        self.weight.sparse_rows = True  # tells build_optimizer to use a sparse row update
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        return len(self.table_sizes)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for k, n in enumerate(self.table_sizes):
                bound = math.sqrt(1.0 / n)
                self.table(k).uniform_(-bound, bound)

    def table(self, k: int) -> torch.Tensor:
        """Table k as a view (n_k, D) of the fused weight."""
        start = int(self.table_offsets[k])
        return self.weight[start: start + self.table_sizes[k]]

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        return _FusedLookup.apply(self.weight, sparse.values, sparse.offsets, self.table_offsets,
                                  sparse.one_hot, self.num_features)  # (B, F, D)
