"""QR, mixed-dimension and hashed embeddings against naive per-bag loops in float64."""

import math

import pytest
import torch

from dlrm.config import DLRMConfig, preset
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.models.feature_groups import select_features
from dlrm.models.hashing import hash_ids
from dlrm.models.mixed_dim import MixedDimEmbeddingBag, md_dimensions
from dlrm.models.qr_embeddings import QREmbeddingBag

SIZES = [7, 300, 40, 1000, 2]


def random_bags(sizes, batch, gen, max_len=3, one_hot=False):
    if one_hot:
        ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in sizes], 1)
        return SparseFeatures.from_ids(ids)
    lengths = torch.randint(0, max_len + 1, (len(sizes) * batch,), generator=gen)
    values = [torch.randint(0, n, (int(lengths[f * batch:(f + 1) * batch].sum()),),
                            generator=gen) for f, n in enumerate(sizes)]
    return SparseFeatures.from_lengths(torch.cat(values), lengths, len(sizes))


def bags(sparse):
    """[f][b] -> list of ids, the naive way."""
    batch, offsets, values = sparse.batch_size, sparse.offsets.tolist(), sparse.values.tolist()
    return [[values[offsets[f * batch + b]: offsets[f * batch + b + 1]] for b in range(batch)]
            for f in range(sparse.num_features)]


@pytest.mark.parametrize("one_hot", [True, False])
def test_select_features_matches_bags(one_hot):
    sparse = random_bags(SIZES, 6, torch.Generator().manual_seed(0), one_hot=one_hot)
    picked = select_features(sparse, [1, 3, 4])
    assert bags(picked) == [bags(sparse)[f] for f in (1, 3, 4)]


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("one_hot", [True, False])
def test_qr_matches_naive(operation, one_hot):
    torch.manual_seed(0)
    c, threshold, dim = 8, 45, 6
    emb = QREmbeddingBag(SIZES, dim, threshold, c, operation).double()
    with torch.no_grad():  # random remainder rows, so "mult" is not the identity
        emb.remainder.weight.normal_()
    sparse = random_bags(SIZES, 5, torch.Generator().manual_seed(1), one_hot=one_hot)
    out = emb(sparse)
    assert out.shape == (5, len(SIZES), dim)
    assert emb.small == [0, 2, 4] and emb.large == [1, 3]
    assert emb.quotient.table_sizes == [math.ceil(300 / c), math.ceil(1000 / c)]
    expected = torch.zeros(5, len(SIZES), dim, dtype=torch.float64)
    for f, feature_bags in enumerate(bags(sparse)):
        for b, ids in enumerate(feature_bags):
            if f in emb.small:
                table = emb.full.table(emb.small.index(f))
                expected[b, f] = sum((table[i] for i in ids), torch.zeros(dim, dtype=torch.float64))
                continue
            k = emb.large.index(f)
            q_table, r_table = emb.quotient.table(k), emb.remainder.table(k)
            q = sum((q_table[i // c] for i in ids), torch.zeros(q_table.shape[1]).double())
            r = sum((r_table[i % c] for i in ids), torch.zeros(r_table.shape[1]).double())
            if operation == "mult":
                expected[b, f] = q * r
            elif operation == "add":
                expected[b, f] = q + r
            else:
                expected[b, f] = torch.cat([q, r])
    torch.testing.assert_close(out, expected)


def test_qr_distinct_rows_and_sparse_grads():
    """Every id of a QR table gets its own (quotient, remainder) pair; grads are sparse."""
    emb = QREmbeddingBag([100], 4, threshold=10, collisions=7, operation="mult")
    with torch.no_grad():
        emb.remainder.weight.normal_()
    ids = torch.arange(100).unsqueeze(1)
    rows = emb(SparseFeatures.from_ids(ids))[:, 0]
    assert torch.unique(rows, dim=0).shape[0] == 100
    rows.sum().backward()
    assert emb.quotient.weight.grad.is_sparse and emb.remainder.weight.grad.is_sparse


def test_md_dimensions_power_law():
    # Hand-computed: lambda = 16 * 10**0.3; d = round(lambda * n**-0.3).
    assert md_dimensions([1000, 10, 100000], 16, 0.3) == [4, 16, 1]
    assert md_dimensions([10, 1000, 50], 16, 0.0) == [16, 16, 16]
    assert md_dimensions([10, 1000, 50], 16, 0.5, round_dims=True) == [16, 2, 8]
    # Popularity divides the size: equal n but a 100x more popular table gets more columns.
    assert md_dimensions([1000, 1000], 16, 0.5, popularity=[1.0, 100.0]) == [2, 16]


@pytest.mark.parametrize("one_hot", [True, False])
def test_mixed_dim_matches_naive(one_hot):
    torch.manual_seed(0)
    dims = [8, 2, 4, 2, 8]
    emb = MixedDimEmbeddingBag(SIZES, 8, dims).double()
    sparse = random_bags(SIZES, 5, torch.Generator().manual_seed(2), one_hot=one_hot)
    out = emb(sparse)
    expected = torch.zeros(5, len(SIZES), 8, dtype=torch.float64)
    for f, feature_bags in enumerate(bags(sparse)):
        g = next(i for i, group in enumerate(emb.groups) if f in group)
        table = emb.tables[g].table(emb.groups[g].index(f))
        k = emb._projection_of_group[g]
        for b, ids in enumerate(feature_bags):
            pooled = sum((table[i] for i in ids), torch.zeros(dims[f], dtype=torch.float64))
            if k is not None:
                pooled = pooled @ emb.projections[k][emb.groups[g].index(f)]
            expected[b, f] = pooled
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(t.weight.grad.is_sparse for t in emb.tables)
    assert all(p.grad is not None and not p.grad.is_sparse for p in emb.projections)


def test_hash_ids_is_modulo():
    sparse = random_bags([50, 9], 4, torch.Generator().manual_seed(3))
    hashed = hash_ids(sparse, 10)
    assert bags(hashed) == [[[i % 10 for i in ids] for ids in fb] for fb in bags(sparse)]


def test_dlrm_hashing_equals_small_tables_on_folded_ids():
    """A DLRM with max_ind_range M is a DLRM with min(n, M)-row tables fed ids mod M."""
    torch.manual_seed(0)
    config = preset("tiny")
    hashed = DLRM(DLRMConfig.from_dict({**config.to_dict(), "max_ind_range": 64}))
    assert hashed.embeddings.table_sizes == [min(n, 64) for n in config.table_sizes]
    plain = DLRM(DLRMConfig.from_dict({**config.to_dict(),
                                       "table_sizes": [min(n, 64) for n in config.table_sizes]}))
    plain.load_state_dict(hashed.state_dict())
    ids = torch.stack([torch.randint(0, n, (16,)) for n in config.table_sizes], 1)
    dense = torch.rand(16, 13)
    torch.testing.assert_close(hashed(dense, SparseFeatures.from_ids(ids)),
                               plain(dense, SparseFeatures.from_ids(ids % 64)))
    with pytest.raises(ValueError, match="out of range"):  # ids still checked against n
        bad = ids.clone()
        bad[0, 4] = 1000
        hashed(dense, SparseFeatures.from_ids(bad))


@pytest.mark.parametrize("options", [{"qr_threshold": 100, "qr_operation": "concat"},
                                     {"md_alpha": 0.4}, {}])
def test_dlrm_options_train_with_sparse_optimizer(options):
    """The options plug into DLRM and the hybrid optimizer updates every table."""
    from dlrm.training.optim import build_optimizer

    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_dict({**preset("tiny").to_dict(), **options}))
    opt = build_optimizer(model, "adagrad", 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.stack([torch.randint(0, n, (32,)) for n in model.config.table_sizes], 1)
    logits = model(torch.rand(32, 13), SparseFeatures.from_ids(ids))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(32)).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} was not updated"


def test_config_rejects_bad_options():
    base = preset("tiny").to_dict()
    with pytest.raises(ValueError, match="qr_operation"):
        DLRMConfig.from_dict({**base, "qr_threshold": 10, "qr_operation": "max"})
    with pytest.raises(ValueError, match="cannot be combined"):
        DLRMConfig.from_dict({**base, "qr_threshold": 10, "md_alpha": 0.3})
    with pytest.raises(ValueError, match="max_ind_range"):
        DLRMConfig.from_dict({**base, "max_ind_range": -1})
