"""End-to-end preprocessing: splits, vocabularies, metadata, Terabyte resumability."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from criteo_naive_parser import naive_exact_ids, naive_parse
from criteo_samples import KAGGLE_HEAD, KAGGLE_SPREAD, LOW_CTR, read_part, require, write_lines

from dlrm.data.criteo import (
    parse_days,
    preprocess_kaggle,
    preprocess_terabyte,
    reference_split_sizes,
)
from dlrm.data.format import read_metadata
from dlrm.data.pipeline.vocabulary import Vocabulary


def test_reference_split_sizes_of_full_kaggle():
    # 45,840,617 rows: 7 parts of 6,548,659 (+1 for the first 4); the reference's numbers.
    assert reference_split_sizes(45_840_617) == {"train": 39_291_958, "test": 3_274_330,
                                                 "val": 3_274_329}
    assert reference_split_sizes(10_000) == {"train": 8_572, "test": 714, "val": 714}
    assert reference_split_sizes(15) == {"train": 13, "test": 1, "val": 1}


@pytest.fixture(scope="module")
def head_exact(tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "exact"
    return out, preprocess_kaggle(require(KAGGLE_HEAD), out)


def test_head10k_exact(head_exact):
    out, meta = head_exact
    rows, _ = naive_parse(KAGGLE_HEAD.read_text())
    ids, sizes = naive_exact_ids(rows)
    labels = np.array([r[0] for r in rows])
    assert meta["rows"] == {"train": 8572, "test": 714, "val": 714}
    assert meta["positives"] == {"train": int(labels[:8572].sum()),
                                 "test": int(labels[8572:9286].sum()),
                                 "val": int(labels[9286:].sum())}
    assert sum(meta["positives"].values()) == 2182  # 21.8% of the head rows click
    assert meta["table_sizes"] == sizes
    assert meta["rows_skipped"] == 0 and meta["skipped_examples"] == []
    assert meta["inputs"][0]["name"] == "train.txt"
    assert meta["inputs"][0]["size"] == KAGGLE_HEAD.stat().st_size
    assert meta["vocab_mode"] == "exact" and meta["tool_version"]
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["rows"] == meta["rows"]
    part_labels, dense, sparse = read_part(out, "all")
    assert sparse.dtype == np.int32 and sparse.shape == (10_000, 26)
    assert dense.dtype == np.float32 and dense.shape == (10_000, 13)
    np.testing.assert_array_equal(sparse, np.array(ids))
    np.testing.assert_array_equal(part_labels, labels)
    for k, size in enumerate(meta["table_sizes"]):
        assert sparse[:, k].max() < size
    # Files are plain .npy: np.load memory-maps them.
    assert np.load(out / "parts" / "all" / "labels.npy", mmap_mode="r").shape == (10_000,)
    assert np.load(out / "parts" / "all" / "ids" / "C3.npy", mmap_mode="r").shape == (10_000,)


def test_min_count_and_hash_table_sizes(tmp_path):
    path = require(KAGGLE_HEAD)
    rows, _ = naive_parse(path.read_text())
    meta = preprocess_kaggle(path, tmp_path / "mc", min_count=3)
    expected = []
    for k in range(26):
        counts = Counter(r[2][k] for r in rows if r[2][k] is not None)
        expected.append(sum(1 for c in counts.values() if c >= 3) + 2)
    assert meta["table_sizes"] == expected
    sparse = read_part(tmp_path / "mc", "all")[2]
    # A value seen once shares the rare id 1.
    k = 2
    once = {v for v, c in Counter(r[2][k] for r in rows).items() if c == 1 and v is not None}
    first_rare = next(i for i, r in enumerate(rows) if r[2][k] in once)
    assert sparse[first_rare, k] == 1
    hashed = preprocess_kaggle(path, tmp_path / "h", hash_buckets=997)
    assert hashed["table_sizes"] == [998] * 26
    sparse = read_part(tmp_path / "h", "all")[2]
    raw = rows[0][2]
    assert sparse[0].tolist() == [0 if v is None else 1 + v % 997 for v in raw]


def test_random_split_and_shuffle_keep_every_row_once(tmp_path):
    path = require(LOW_CTR)
    a = preprocess_kaggle(path, tmp_path / "a", split="random:0.8,0.1,0.1", seed=5,
                          hash_buckets=10_000)
    b = preprocess_kaggle(path, tmp_path / "b", split="random:0.8,0.1,0.1", seed=5,
                          hash_buckets=10_000, shuffle=True)
    c = preprocess_kaggle(path, tmp_path / "c", split="random:0.8,0.1,0.1", seed=6,
                          hash_buckets=10_000)
    assert a["rows"] == b["rows"] and sum(a["rows"].values()) == 1000
    assert a["rows"] == c["rows"] == {"train": 800, "val": 100, "test": 100}
    assert not np.array_equal(read_part(tmp_path / "a", "val")[2],
                              read_part(tmp_path / "c", "val")[2])  # another seed, other rows
    assert list(a["rows"]) == ["train", "val", "test"]
    ordered = read_part(tmp_path / "a", "train")
    shuffled = read_part(tmp_path / "b", b["splits"]["train"][0]["part"])
    assert not np.array_equal(ordered[2], shuffled[2])
    def row_set(p):
        return sorted(map(tuple, np.column_stack([p[2], p[1].view(np.int32)])))

    assert row_set(ordered) == row_set(shuffled)


def test_reference_split_with_shuffle(tmp_path):
    meta = preprocess_kaggle(require(KAGGLE_HEAD), tmp_path / "o", shuffle=True, seed=1,
                             hash_buckets=100)
    assert meta["rows"] == {"train": 8572, "test": 714, "val": 714}
    train_labels = read_part(tmp_path / "o", meta["splits"]["train"][0]["part"])[0]
    assert int(train_labels.sum()) == meta["positives"]["train"]


def test_all_real_samples_zero_rejects(tmp_path):
    for path in (KAGGLE_HEAD, KAGGLE_SPREAD, LOW_CTR):
        meta = preprocess_kaggle(require(path), tmp_path / path.parent.name, hash_buckets=100)
        assert meta["rows_skipped"] == 0
        assert meta["rows_written"] == meta["rows_read"] == len(path.read_text().splitlines())


def test_parse_days():
    assert parse_days("0-3,23") == [0, 1, 2, 3, 23]
    assert parse_days(None) == list(range(24))
    with pytest.raises(ValueError, match="days"):
        parse_days("22-24")
    with pytest.raises(ValueError, match="inverted"):
        parse_days("5-3")
    with pytest.raises(ValueError, match="day numbers"):
        parse_days("x")


def test_terabyte_days_splits(tmp_path):
    real = require(KAGGLE_HEAD).read_text().splitlines()
    src = tmp_path / "days"
    src.mkdir()
    write_lines(src / "day_0", real[:300])
    write_lines(src / "day_1", real[300:500] + ["bad"])
    (src / "day_2").write_bytes(b"")  # an empty day is allowed, with a warning
    write_lines(src / "day_23", real[500:601])
    out = tmp_path / "out"
    meta = preprocess_terabyte(src, out, days=[0, 1, 2, 23], min_count=2)
    assert meta["rows"] == {"train": 500, "test": 51, "val": 50}
    assert meta["rows_read"] == 602 and meta["rows_skipped"] == 1
    assert meta["skipped_examples"][0]["line"] == 201
    assert meta["reused_parts"] == [] and meta["resumed"] is False
    assert [i["rows_written"] for i in meta["inputs"]] == [300, 200, 0, 101]
    assert read_metadata(out)["days"] == [0, 1, 2, 23]
    vocab = Vocabulary.load(out / "vocab")
    assert vocab.table_sizes() == meta["table_sizes"]
    # Ids equal a naive min-count vocabulary over all four days.
    rows, _ = naive_parse("\n".join(real[:601]) + "\n")
    for k in (2, 10):
        counts = Counter(r[2][k] for r in rows if r[2][k] is not None)
        kept = sorted(v for v, c in counts.items() if c >= 2)
        want = [0 if r[2][k] is None else (2 + kept.index(r[2][k]) if r[2][k] in kept else 1)
                for r in rows[300:500]]
        assert read_part(out, "day_1")[2][:, k].tolist() == want
