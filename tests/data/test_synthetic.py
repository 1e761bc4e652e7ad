import torch

from dlrm.config import preset
from dlrm.data import open_data
from dlrm.data.synthetic import SyntheticConfig, SyntheticData


def test_planted_is_deterministic_and_batch_size_independent():
    data = SyntheticData(SyntheticConfig(table_sizes=[50, 1000, 7], val_samples=5000, seed=3))
    big = next(data.batches("train", 1000))
    again = SyntheticData(SyntheticConfig(table_sizes=[50, 1000, 7], val_samples=5000, seed=3))
    small = list(again.batches("train", 250))[:4]
    torch.testing.assert_close(torch.cat([b.dense for b in small]), big.dense, rtol=0, atol=0)
    assert torch.equal(torch.cat([b.labels for b in small]), big.labels)
    # Feature-major values: feature 0 ids of the 4 small batches = first 1000 of the big one.
    assert torch.equal(torch.cat([b.sparse.values[:250] for b in small]),
                       big.sparse.values[:1000])
    other_seed = SyntheticData(SyntheticConfig(table_sizes=[50, 1000, 7], seed=4))
    assert not torch.equal(next(other_seed.batches("train", 1000)).labels, big.labels)


def test_rank_slices_partition_the_global_batch():
    data = SyntheticData(SyntheticConfig(table_sizes=[30, 40], seed=1))
    full = next(data.batches("train", 10))
    parts = [next(data.batches("train", 10, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    torch.testing.assert_close(torch.cat([p.dense for p in parts]), full.dense)


def test_planted_statistics_and_optimal_metrics():
    data = SyntheticData(SyntheticConfig(table_sizes=preset("tiny").table_sizes,
                                         val_samples=50_000, seed=0))
    labels = torch.cat([b.labels for b in data.batches("val", 8192)])
    assert labels.numel() == 50_000
    assert abs(float(labels.mean()) - 0.25) < 0.02
    optimal = data.optimal_metrics("val")
    assert 0.75 <= optimal["auc"] <= 0.85
    # The optimal log loss beats the constant predictor's (the entropy of the click rate).
    ctr = float(labels.mean())
    constant = -(ctr * torch.log(torch.tensor(ctr)) + (1 - ctr) * torch.log(torch.tensor(1 - ctr)))
    assert optimal["logloss"] < float(constant) - 0.05
    # Power law: the most frequent id of a 1000-row table takes far more than 1/1000.
    ids = torch.cat([b.sparse.values.view(8, -1)[4] for b in data.batches("val", 8192)])
    assert float(torch.bincount(ids).max()) / ids.numel() > 0.05


def test_random_kind_and_open_data():
    data = open_data("synthetic:random", table_sizes=[5, 100000], rows_cap=1000)
    assert data.table_sizes == [5, 1000]
    batch = next(data.batches("train", 4096))
    ids = batch.sparse.values.view(2, -1)
    assert int(ids[1].max()) < 1000 and int(ids[0].max()) == 4
    assert 0.4 < float(batch.labels.mean()) < 0.6
    assert data.optimal_metrics("val") is None
    rebuilt = open_data(data.spec())
    assert torch.equal(next(rebuilt.batches("train", 4096)).labels, batch.labels)
