import pytest
import torch
from torch import nn

from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag


def per_table_reference(fused: FusedEmbeddingBag) -> nn.ModuleList:
    tables = nn.ModuleList()
    for k, n in enumerate(fused.table_sizes):
        bag = nn.EmbeddingBag(n, fused.embedding_dim, mode="sum")
        with torch.no_grad():
            bag.weight.copy_(fused.table(k))
        tables.append(bag)
    return tables


def reference_forward(tables: nn.ModuleList, sparse: SparseFeatures) -> torch.Tensor:
    batch = sparse.batch_size
    outs = []
    for f, table in enumerate(tables):
        start, stop = int(sparse.offsets[f * batch]), int(sparse.offsets[(f + 1) * batch])
        offs = sparse.offsets[f * batch:(f + 1) * batch] - start
        outs.append(table(sparse.values[start:stop], offs))
    return torch.stack(outs, dim=1)  # (B, F, D)


def random_multi_hot(sizes, batch, gen, max_len=4):
    lengths = torch.randint(0, max_len + 1, (len(sizes) * batch,), generator=gen)
    values = []
    for f, n in enumerate(sizes):
        count = int(lengths[f * batch:(f + 1) * batch].sum())
        values.append(torch.randint(0, n, (count,), generator=gen))
    return SparseFeatures.from_lengths(torch.cat(values), lengths, len(sizes))


def dense_grad(weight_grad: torch.Tensor) -> torch.Tensor:
    return weight_grad.to_dense() if weight_grad.is_sparse else weight_grad


def test_fused_equals_per_table_forward_and_backward_multi_hot():
    gen = torch.Generator().manual_seed(0)
    sizes = [7, 3, 11, 5]
    fused = FusedEmbeddingBag(sizes, 6).double()
    tables = per_table_reference(fused).double()
    sparse = random_multi_hot(sizes, batch=9, gen=gen)  # includes empty bags and duplicates
    assert not sparse.one_hot
    upstream = torch.randn(9, 4, 6, generator=gen, dtype=torch.float64)
    ours = fused(sparse)
    ref = reference_forward(tables, sparse)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    grad = dense_grad(fused.weight.grad)
    for k, table in enumerate(tables):
        start = int(fused.table_offsets[k])
        torch.testing.assert_close(grad[start:start + sizes[k]], table.weight.grad,
                                   rtol=0, atol=1e-12)


def test_fused_one_hot_path_with_duplicates():
    sizes = [4, 6]
    fused = FusedEmbeddingBag(sizes, 3).double()
    tables = per_table_reference(fused).double()
    ids = torch.tensor([[1, 5], [1, 0], [3, 5], [1, 5]])  # id 1 and 5 repeat
    sparse = SparseFeatures.from_ids(ids)
    assert sparse.one_hot
    ours, ref = fused(sparse), reference_forward(tables, sparse)
    torch.testing.assert_close(ours, ref)
    ours.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    grad = dense_grad(fused.weight.grad)
    torch.testing.assert_close(grad[:4], tables[0].weight.grad)
    torch.testing.assert_close(grad[4:], tables[1].weight.grad)
    assert fused.weight.grad.is_sparse


def test_reference_initialization_bounds():
    torch.manual_seed(0)
    fused = FusedEmbeddingBag([4, 10000], 8)
    assert float(fused.table(0).detach().abs().max()) <= 0.5
    assert float(fused.table(1).detach().abs().max()) <= 0.01
    # Uniform on [-a, a] has std a/sqrt(3).
    assert abs(float(fused.table(1).detach().std()) - 0.01 / 3 ** 0.5) < 2e-4


def test_backward_accepts_every_gradient_layout():
    """Sample-major, feature-major and strided pooled gradients all give the per-table grads.

    Consumers hand the lookup's backward different layouts (the dot interaction a
    sample-major one, ``pooled.sum`` a broadcast, a slice of a wider tensor a strided one);
    the backward permutes ids instead of copying where it can, and must stay exact.
    """
    gen = torch.Generator().manual_seed(3)
    sizes = [7, 3, 11, 5]
    batch, dim = 9, 6
    one_hot = SparseFeatures.from_ids(torch.stack(
        [torch.randint(0, n, (batch,), generator=gen) for n in sizes], dim=1))
    multi_hot = random_multi_hot(sizes, batch, gen)
    wide = torch.randn(batch, len(sizes), 2 * dim, generator=gen, dtype=torch.float64)
    layouts = {
        "sample-major": lambda g: g.contiguous(),
        "feature-major": lambda g: g.transpose(0, 1).contiguous().transpose(0, 1),
        "strided": lambda g: torch.cat([g, wide[..., dim:]], dim=2)[..., :dim],
    }
    for sparse in (one_hot, multi_hot):
        for name, layout in layouts.items():
            fused = FusedEmbeddingBag(sizes, dim).double()
            tables = per_table_reference(fused).double()
            upstream = torch.randn(batch, len(sizes), dim, generator=gen, dtype=torch.float64)
            grad_in = layout(upstream)
            assert torch.equal(grad_in, upstream)
            fused(sparse).backward(grad_in)
            reference_forward(tables, sparse).backward(upstream)
            grad = dense_grad(fused.weight.grad)
            for k, table in enumerate(tables):
                start = int(fused.table_offsets[k])
                torch.testing.assert_close(grad[start:start + sizes[k]], table.weight.grad,
                                           rtol=0, atol=1e-12, msg=f"{name}, table {k}")


def test_wrong_number_of_features_is_refused_by_name():
    fused = FusedEmbeddingBag([4, 6, 8], 2)
    two_features = SparseFeatures.from_ids(torch.tensor([[1, 2], [0, 3]]))
    with pytest.raises(ValueError, match="got 2 sparse features, the model has 3 tables"):
        fused(two_features)
