"""``dlrm::embedding_bag`` (all tables in one fused weight, one lookup), and the row updates
``dlrm::sgd_rows_`` and ``dlrm::rowwise_adagrad_rows_``.

``dlrm::embedding_bag(weight (R, D), values (N,), offsets (F*B + 1,), table_offsets (F + 1,),
one_hot) -> (pooled (B, F, D), ids (N,))``: bag (f, b) is
``values[offsets[f*B + b] : offsets[f*B + b + 1]]`` (``SparseFeatures``' feature-major layout),
ids local to table f, whose rows start at ``table_offsets[f]`` of the fused weight;
``pooled[b, f] = sum of weight[table_offsets[f] + i] over the bag``. ``ids`` are the global
row ids the lookup read: sample-major (``b*F + f``) for one-hot bags, in ``values``' order
otherwise. One-hot ``pooled`` is contiguous; multi-hot ``pooled`` is a (B, F, D) view of
feature-major (F, B, D) storage, strides (D, B*D, 1), as ``embedding_bag`` produces it.

The backward forms one gradient row per looked-up id (duplicates left uncoalesced), taking the
pooled gradient in whatever layout the consumer produced (sample-major or feature-major storage
is used in place with the ids permuted to match), and then either

- applies the row update right there, when the call passes ``lr`` (and, for row-wise Adagrad,
  the ``accumulator``): the weight's update is fused into the backward, as FBGEMM's table-batched
  embeddings do, and the weight gets no ``.grad``. This is how the project trains
  (``dlrm.training.optim`` hands the modules their row optimizer); it is also what keeps
  ``torch.compile`` working, since no sparse tensor appears in the compiled backward (Inductor's
  graph passes cannot hold one); or
- returns the rows as a *sparse* COO gradient of the weight (no ``lr``): for code that calls
  the optimizer itself, and for tables whose gradients are summed over ranks first.

Either way no dense (R, D) gradient exists.

``dlrm::sgd_rows_(weight, ids, rows, lr)``: ``weight[ids[k]] -= lr * rows[k]`` for every k in
order, duplicates accumulating, in place. ``dlrm::rowwise_adagrad_rows_(weight, accumulator,
ids, rows, lr, eps)``: row-wise Adagrad (FBGEMM's): with g_i the summed rows of id i,
``a[i] += mean_d(g_i^2)``, ``weight[i] -= lr * g_i / (sqrt(a[i]) + eps)``. ``lr`` is a 0-d
tensor, so an lr schedule changes its value without recompiling a compiled step.

Kernels: on CPU the native one-pass kernels (one-hot lookup: offsets + gather in one pass;
row update: rows split over threads by id, bit for bit ``scatter_add_``'s result) for float32
weights; PyTorch's ``index_select``/``embedding_bag``/``scatter_add_`` for every other case.
"""

from __future__ import annotations

import torch

from dlrm.ops import native
from dlrm.ops.autograd import register_lean_autograd

_lib = torch.library.Library("dlrm", "FRAGMENT")
_lib.define("embedding_bag(Tensor weight, Tensor values, Tensor offsets, Tensor table_offsets, "
            "bool one_hot, Tensor? lr=None, Tensor? accumulator=None, float eps=1e-8) "
            "-> (Tensor, Tensor)")
_lib.define("sgd_rows_(Tensor(a!) weight, Tensor ids, Tensor rows, Tensor lr) -> ()")
_lib.define("rowwise_adagrad_rows_(Tensor(a!) weight, Tensor(b!) accumulator, Tensor ids, "
            "Tensor rows, Tensor lr, float eps) -> ()")


def global_ids(values: torch.Tensor, offsets: torch.Tensor, table_offsets: torch.Tensor,
               one_hot: bool) -> torch.Tensor:
    """Local ids + each value's table offset -> rows of the fused weight, (N,).

    One-hot bags come out sample-major (the id of sample b, feature f at b*F + f);
    multi-hot values keep their feature-major order.
    """
    num_features = table_offsets.numel() - 1
    batch = (offsets.numel() - 1) // num_features
    if one_hot:
        ids = values.view(num_features, batch)
        return (ids + table_offsets[:-1, None]).t().reshape(-1)
    # Values of feature f are the contiguous run offsets[f*B] : offsets[(f+1)*B].
    bounds = offsets[::batch]
    shift = torch.repeat_interleave(table_offsets[:-1], bounds[1:] - bounds[:-1])
    return values + shift


def _lookup_torch(weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                  table_offsets: torch.Tensor, one_hot: bool, lr: torch.Tensor | None = None,
                  accumulator: torch.Tensor | None = None, eps: float = 1e-8
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    num_features, dim = table_offsets.numel() - 1, weight.shape[1]
    ids = global_ids(values, offsets, table_offsets, one_hot)
    if one_hot:  # ids are sample-major: row b*F + f
        return weight.index_select(0, ids).view(-1, num_features, dim), ids
    pooled = torch.nn.functional.embedding_bag(ids, weight, offsets[:-1], mode="sum")  # (F*B, D)
    return pooled.view(num_features, -1, dim).transpose(0, 1), ids  # (B, F, D)


def _lookup_cpu(weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                table_offsets: torch.Tensor, one_hot: bool, lr: torch.Tensor | None = None,
                accumulator: torch.Tensor | None = None, eps: float = 1e-8
                ) -> tuple[torch.Tensor, torch.Tensor]:
    if one_hot and weight.dtype == torch.float32 and weight.dim() == 2 \
            and values.dtype == torch.int64 and native.takes(weight):
        rows, ids = native.lookup_one_hot(weight, values, table_offsets)
        return rows.view(-1, table_offsets.numel() - 1, weight.shape[1]), ids
    return _lookup_torch(weight, values, offsets, table_offsets, one_hot)


def bag_of_values(offsets: torch.Tensor, num_values: int) -> torch.Tensor:
    """(N,) index of the bag holding each value, from (F*B + 1,) offsets (empty bags allowed).

    Counts, for position i, the bag starts at or before i (every offset, the first one 0 too,
    hence the -1): one scatter-add and a cumulative sum, where ``repeat_interleave`` would be a
    loop over bags in ONNX. No slice of ``offsets`` either: ``torch.export`` turns a slice of
    a batch-sized tensor into a guard on the batch size.
    """
    starts = torch.zeros(num_values + 1, dtype=torch.int64, device=offsets.device).index_add(
        0, offsets, torch.ones_like(offsets))  # out of place: decompositions must be functional
    return starts.cumsum(0)[:num_values] - 1


def _lookup_export(weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                   table_offsets: torch.Tensor, one_hot: bool, lr: torch.Tensor | None = None,
                   accumulator: torch.Tensor | None = None, eps: float = 1e-8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The lookup for serving exports (``dlrm.ops.export_decompositions``, forward only): gather
    every value's row, then sum the rows of each bag with one scatter-add.

    The same result as ``_lookup_torch`` (sums in another order: equal to ~1e-7), in ops ONNX
    runs as single kernels: ONNX exporters turn ``embedding_bag`` and ``repeat_interleave``
    into ``Loop``s over bags, which ONNX Runtime runs one bag at a time (~50 us each).
    """
    num_features, dim = table_offsets.numel() - 1, weight.shape[1]
    if one_hot:
        ids = global_ids(values, offsets, table_offsets, one_hot)
        return weight.index_select(0, ids).view(-1, num_features, dim), ids
    num_bags = offsets.numel() - 1
    batch = num_bags // num_features
    bag = bag_of_values(offsets, values.numel())  # (N,), feature-major: bag f*B + b
    ids = values + table_offsets.index_select(0, bag // batch)
    pooled = weight.new_zeros(num_bags, dim).index_add(0, bag, weight.index_select(0, ids))
    return pooled.view(num_features, batch, dim).transpose(0, 1), ids  # (B, F, D)


_lib.impl("embedding_bag", _lookup_cpu, "CPU")
_lib.impl("embedding_bag", _lookup_torch, "CompositeExplicitAutograd")


@torch.library.register_fake("dlrm::embedding_bag", lib=_lib)
def _lookup_fake(weight, values, offsets, table_offsets, one_hot, lr=None, accumulator=None,
                 eps=1e-8):
    num_features, dim = table_offsets.shape[0] - 1, weight.shape[1]
    batch = (offsets.shape[0] - 1) // num_features
    ids = values.new_empty(values.shape)
    if one_hot:
        return weight.new_empty(batch, num_features, dim), ids
    return weight.new_empty_strided((batch, num_features, dim), (dim, batch * dim, 1)), ids


def _lookup_setup(ctx, inputs, output) -> None:
    weight, _values, offsets, _table_offsets, one_hot, lr, accumulator, eps = inputs
    ctx.fused = lr is not None
    if ctx.fused:  # the backward updates the weight (and accumulator) in place
        ctx.save_for_backward(output[1], offsets, weight, lr,
                              accumulator if accumulator is not None else lr)
    else:
        ctx.save_for_backward(output[1], offsets)
    ctx.row_wise_adagrad = accumulator is not None
    ctx.one_hot, ctx.eps = one_hot, eps
    ctx.weight_shape = weight.shape
    ctx.set_materialize_grads(False)


_NO_GRADS = (None,) * 8


def _lookup_backward(ctx, grad_pooled, _grad_ids):
    ids, offsets = ctx.saved_tensors[:2]
    if grad_pooled is None:
        return _NO_GRADS
    batch, num_features, dim = grad_pooled.shape
    feature_major = grad_pooled.transpose(0, 1)  # (F, B, D)
    if feature_major.is_contiguous() and not grad_pooled.is_contiguous():
        bag_grads = feature_major.view(num_features * batch, dim)  # row f*B + b
        sample_major = False
    else:
        bag_grads = grad_pooled.contiguous().view(batch * num_features, dim)  # row b*F + f
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
    if ctx.fused:
        _, _, weight, lr, accumulator = ctx.saved_tensors
        if ctx.row_wise_adagrad:
            torch.ops.dlrm.rowwise_adagrad_rows_(weight, accumulator, row_ids, rows, lr, ctx.eps)
        else:
            torch.ops.dlrm.sgd_rows_(weight, row_ids, rows, lr)
        return _NO_GRADS
    grad_weight = torch.sparse_coo_tensor(row_ids.unsqueeze(0), rows, ctx.weight_shape,
                                          check_invariants=False)
    return (grad_weight, *_NO_GRADS[1:])


register_lean_autograd(_lib, "embedding_bag", _lookup_backward, _lookup_setup)


def _sgd_torch(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, lr: torch.Tensor
               ) -> None:
    index = ids.unsqueeze(1).expand(-1, weight.shape[1])
    # -lr rounded to float32 first, then one rounding per product: as the native kernel.
    weight.scatter_add_(0, index, rows.to(weight.dtype).mul(-float(lr)))


def _sgd_cpu(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, lr: torch.Tensor
             ) -> None:
    if weight.dtype == torch.float32 and weight.dim() == 2 and ids.dtype == torch.int64 \
            and rows.dim() == 2 and native.takes(weight, rows):
        native.sgd_rows_(weight, ids, rows, float(lr))  # the same bits as scatter_add_
        return
    _sgd_torch(weight, ids, rows, lr)


def _rowwise_adagrad(weight: torch.Tensor, accumulator: torch.Tensor, ids: torch.Tensor,
                     rows: torch.Tensor, lr: torch.Tensor, eps: float) -> None:
    unique, inverse = torch.unique(ids, return_inverse=True)  # sorted: a fixed order
    summed = rows.new_zeros(unique.numel(), rows.shape[1], dtype=torch.float32)
    summed.index_add_(0, inverse, rows.float())  # g_i, duplicates summed
    state = accumulator.index_select(0, unique) + summed.pow(2).mean(1)
    accumulator.index_copy_(0, unique, state)
    scale = float(lr) / (state.sqrt() + eps)
    weight.index_add_(0, unique, (summed * scale.unsqueeze(1)).to(weight.dtype), alpha=-1.0)


for _name, _fn in (("sgd_rows_", _sgd_cpu), ("rowwise_adagrad_rows_", _rowwise_adagrad)):
    _lib.impl(_name, _fn, "CPU")
_lib.impl("sgd_rows_", _sgd_torch, "CompositeExplicitAutograd")
_lib.impl("rowwise_adagrad_rows_", _rowwise_adagrad, "CompositeExplicitAutograd")


@torch.library.register_fake("dlrm::sgd_rows_", lib=_lib)
def _sgd_fake(weight, ids, rows, lr):
    return None


@torch.library.register_fake("dlrm::rowwise_adagrad_rows_", lib=_lib)
def _adagrad_fake(weight, accumulator, ids, rows, lr, eps):
    return None


def embedding_bag(weight: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                  table_offsets: torch.Tensor, one_hot: bool, lr: torch.Tensor | None = None,
                  accumulator: torch.Tensor | None = None, eps: float = 1e-8
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (B, F, D), global ids (N,)); with ``lr`` the backward updates the rows itself
    (SGD, or row-wise Adagrad with ``accumulator``); see the module doc."""
    return torch.ops.dlrm.embedding_bag(weight, values, offsets, table_offsets, one_hot, lr,
                                        accumulator, eps)


def sgd_rows_(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor,
              lr: torch.Tensor) -> None:
    """``weight[ids[k]] -= lr * rows[k]`` in order, duplicates accumulating; see the module."""
    torch.ops.dlrm.sgd_rows_(weight, ids, rows, lr)


def rowwise_adagrad_rows_(weight: torch.Tensor, accumulator: torch.Tensor, ids: torch.Tensor,
                          rows: torch.Tensor, lr: torch.Tensor, eps: float = 1e-8) -> None:
    """Row-wise Adagrad on the rows of ``ids`` (duplicates summed first); see the module."""
    torch.ops.dlrm.rowwise_adagrad_rows_(weight, accumulator, ids, rows, lr, eps)
