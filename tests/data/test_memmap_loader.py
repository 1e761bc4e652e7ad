"""MemmapDataSource: protocol, exact coverage, determinism, resumption, ranks, workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from criteo_samples import KAGGLE_HEAD, read_part, require, write_lines

from dlrm.data.criteo import preprocess_kaggle, preprocess_terabyte
from dlrm.data.loader import MemmapDataSource
from dlrm.data.source import DataSource
from dlrm.features import SparseFeatures


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> MemmapDataSource:
    out = tmp_path_factory.mktemp("loader") / "head"
    preprocess_kaggle(require(KAGGLE_HEAD), out, hash_buckets=5000)
    return MemmapDataSource(out, block_rows=64)


@pytest.fixture(scope="module")
def multipart(tmp_path_factory) -> MemmapDataSource:
    """Three day parts, so batches cross part boundaries."""
    real = require(KAGGLE_HEAD).read_text().splitlines()
    root = tmp_path_factory.mktemp("days")
    for day, (a, b) in zip((0, 1, 2, 23), ((0, 333), (333, 700), (700, 1001), (1001, 1100)),
                           strict=True):
        write_lines(root / f"day_{day}", real[a:b])
    preprocess_terabyte(root, root / "out", days=[0, 1, 2, 23], hash_buckets=100)
    return MemmapDataSource(root / "out", block_rows=50)


def _key(batch) -> list[tuple]:
    """Each sample as a hashable tuple of (label, dense bits, ids)."""
    ids = batch.sparse.values.view(batch.sparse.num_features, len(batch)).t()
    return [tuple([float(lab)] + d.view(torch.int32).tolist() + i.tolist())
            for lab, d, i in zip(batch.labels, batch.dense, ids, strict=True)]


def test_protocol_and_spec(source):
    assert isinstance(source, DataSource)
    assert source.splits() == ["train", "val", "test"]
    assert [source.num_samples(s) for s in source.splits()] == [8572, 714, 714]
    assert source.num_dense == 13 and source.table_sizes == [5001] * 26
    assert source.spec() == {"kind": "memmap", "path": str(source.path), "block_rows": 64}
    assert source.path.is_absolute()


def test_unshuffled_batches_are_the_arrays_in_order(source):
    labels, dense, sparse = read_part(source.path, "all")
    batches = list(source.batches("test", 100))
    assert [len(b) for b in batches] == [100] * 7 + [14]
    b = batches[2]
    assert b.dense.dtype == torch.float32 and b.labels.dtype == torch.float32
    assert b.sparse.one_hot and b.sparse.values.dtype == torch.int64
    reference = SparseFeatures.from_ids(torch.from_numpy(np.array(sparse[8772:8872])))
    assert torch.equal(b.sparse.values, reference.values)
    assert torch.equal(b.sparse.offsets, reference.offsets)
    b.sparse.validate(source.table_sizes)
    rows = slice(8572 + 200, 8572 + 300)
    np.testing.assert_array_equal(b.dense.numpy(), dense[rows])
    np.testing.assert_array_equal(b.labels.numpy(), labels[rows])
    np.testing.assert_array_equal(b.sparse.values.view(26, 100).t().numpy(), sparse[rows])
    assert len(list(source.batches("test", 100, drop_last=True))) == 7


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_exactly_once_per_epoch(multipart, shuffle):
    n = multipart.num_samples("train")
    assert n == 1001
    seen = [k for b in multipart.batches("train", 96, shuffle=shuffle, seed=3) for k in _key(b)]
    everything = _key(next(multipart.batches("train", n)))
    assert len(seen) == n and sorted(seen) == sorted(everything)
    if shuffle:
        assert seen != everything


def test_batch_k_is_a_pure_function_and_resume_is_exact(multipart):
    full = [_key(b) for b in multipart.batches("train", 96, shuffle=True, seed=7, epoch=2)]
    resumed = [_key(b) for b in multipart.batches("train", 96, start_batch=4, shuffle=True,
                                                  seed=7, epoch=2)]
    assert resumed == full[4:]
    again = [_key(b) for b in MemmapDataSource(multipart.path, block_rows=50).batches(
        "train", 96, shuffle=True, seed=7, epoch=2)]
    assert again == full
    other_epoch = [_key(b) for b in multipart.batches("train", 96, shuffle=True, seed=7)]
    other_seed = [_key(b) for b in multipart.batches("train", 96, shuffle=True, seed=8,
                                                     epoch=2)]
    assert other_epoch != full and other_seed != full


@pytest.mark.parametrize("shuffle", [False, True])
def test_rank_slices_partition_each_global_batch(multipart, shuffle):
    world = 3
    global_batches = [_key(b) for b in multipart.batches("train", 100, shuffle=shuffle, seed=1)]
    per_rank = [[_key(b) for b in multipart.batches("train", 100, shuffle=shuffle, seed=1,
                                                    rank=r, world_size=world)]
                for r in range(world)]
    for k, whole in enumerate(global_batches):
        assert sum((per_rank[r][k] for r in range(world)), []) == whole
    assert [len(x) for x in per_rank[0][:1] + per_rank[2][:1]] == [34, 33]
    with pytest.raises(ValueError, match="rank 3"):
        next(multipart.batches("train", 100, rank=3, world_size=3))


def test_dataloader_workers_give_the_same_batches(multipart):
    clone = pickle.loads(pickle.dumps(multipart))
    assert clone._parts == {} and clone.num_samples("train") == 1001
    expected = [_key(b) for b in multipart.batches("train", 128, shuffle=True, seed=4)]
    dataset = multipart.as_iterable_dataset("train", 128, shuffle=True, seed=4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    assert [_key(b) for b in loader] == expected
    resumed = multipart.as_iterable_dataset("train", 128, shuffle=True, seed=4, start_batch=3)
    assert [_key(b) for b in torch.utils.data.DataLoader(resumed, batch_size=None,
                                                         num_workers=2)] == expected[3:]


def test_unknown_split_names_the_choices(source):
    with pytest.raises(KeyError, match="has"):
        source.num_samples("validation")
