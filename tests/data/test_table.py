"""Generic tables: schema -> memory-mapped arrays -> batches, against a naive Python parse."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm.data import open_data
from dlrm.data.loader import MemmapDataSource
from dlrm.data.pipeline.vocabulary import Vocabulary
from dlrm.data.table import TableSchema, load_schema, preprocess_table

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

ROWS = [  # label, count, price, color, city, tags, when
    ("1", "3", "1.5", "red", "paris", "a|b", "14102100"),
    ("0", "", "2.5", "blue", "rome", "b", "14102213"),
    ("1", "-4", "0.5", "red", "oslo", "", "14102305"),
    ("0", "10", "3.5", "green", "paris", "c|a|a", "14102423"),
    ("1", "7", "4.5", "blue", "rome", "a", "14102500"),
    ("0", "2", "5.5", "red", "paris", "b|c", "14102601"),
]

SCHEMA = {
    "name": "toy", "reader": "csv", "delimiter": ",", "header": True,
    "label": {"column": "label"},
    "dense": [{"column": "count", "transform": "log1p"},
              {"column": "price", "transform": "standardize"}],
    "categorical": [{"column": "color"}, {"column": "city", "transform": "prefix", "length": 2},
                    {"column": "tags", "separator": "|"},
                    {"name": "hour", "column": "when", "transform": "yymmddhh_hour"},
                    {"name": "weekday", "column": "when", "transform": "yymmddhh_weekday"}],
    "split": {"order": "file", "fractions": {"train": 4, "val": 2}},
}


def idx(value, vocab):
    """The id the preprocessor must give ``value``: 1 + its place in the sorted vocabulary."""
    return vocab.index(value) + 1 if value in vocab else 0


def vocabularies(folder):
    """Feature name -> its sorted kept values, from the folder's vocab/."""
    vocab = Vocabulary.load(Path(folder) / "vocab")
    return {n: k.to_pylist() for n, k in zip(vocab.names, vocab.kept)}


def part_file(folder, split, name):
    meta = json.loads((Path(folder) / "metadata.json").read_text())
    return Path(folder) / "parts" / meta["splits"][split][0]["part"] / name


def write_csv(path, rows, extra_lines=()):
    lines = ["label,count,price,color,city,tags,when"] + [",".join(r) for r in rows]
    lines += list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_toy_table_matches_a_naive_parse(tmp_path):
    src = write_csv(tmp_path / "toy.csv", ROWS)
    meta = preprocess_table(TableSchema.from_dict(SCHEMA), src, tmp_path / "out")
    assert meta["format"] == "dlrm-memmap" and meta["format_version"] == 2
    assert meta["rows"] == {"train": 4, "val": 2} and meta["positives"] == {"train": 2, "val": 1}
    vocab = vocabularies(tmp_path / "out")
    train, val = ROWS[:4], ROWS[4:]
    # Vocabularies from the training rows only, sorted, id 0 = unseen.
    colors = sorted({r[3] for r in train})
    cities = sorted({r[4][:2] for r in train})
    tags = sorted({t for r in train for t in r[5].split("|") if t})
    assert vocab["color"] == colors and vocab["tags"] == tags
    assert meta["table_sizes"] == [len(colors) + 1, len(cities) + 1, len(tags) + 1, 5, 5]
    prices = np.array([float(r[2]) for r in train])
    data = open_data(str(tmp_path / "out"))
    assert isinstance(data, MemmapDataSource) and data.num_dense == 2
    for split, rows in (("train", train), ("val", val)):
        batch = next(data.batches(split, 10))
        for b, r in enumerate(rows):
            assert batch.labels[b] == float(r[0])
            count = max(float(r[1] or 0), 0.0)
            assert batch.dense[b, 0] == pytest.approx(math.log1p(count), abs=1e-6)
            assert batch.dense[b, 1] == pytest.approx(
                (float(r[2]) - prices.mean()) / prices.std(), abs=1e-5)
        sparse = batch.sparse
        n = len(rows)

        def bag(f, b, sparse=sparse, n=n):
            lo, hi = int(sparse.offsets[f * n + b]), int(sparse.offsets[f * n + b + 1])
            return sparse.values[lo:hi].tolist()

        for b, r in enumerate(rows):
            assert bag(0, b) == [idx(r[3], colors)]
            assert bag(1, b) == [idx(r[4][:2], cities)]
            assert bag(2, b) == [idx(t, tags) for t in r[5].split("|") if t]
            hour = int(r[6][6:8])
            weekday = __import__("datetime").date(2000 + int(r[6][:2]), int(r[6][2:4]),
                                                  int(r[6][4:6])).weekday()
            assert vocab["hour"][bag(3, b)[0] - 1] == str(hour) or bag(3, b) == [0]
            if bag(4, b) != [0]:
                assert vocab["weekday"][bag(4, b)[0] - 1] == str(weekday)
    # Row 2 of train has an empty tags cell: an empty bag.
    batch = next(data.batches("train", 10))
    f, b = 2, 2
    assert int(batch.sparse.offsets[f * 4 + b + 1] - batch.sparse.offsets[f * 4 + b]) == 0
    assert open_data(data.spec()).num_samples("val") == 2


def test_bad_rows_are_skipped_counted_and_located(tmp_path):
    extra = ["1,5,1.0,red,paris",                    # line 8: too few fields
             "2,5,1.0,red,paris,a,14102100",         # line 9: label not 0/1
             "0,abc,1.0,red,paris,a,14102100",       # line 10: dense not a number
             "0,1,1.0,red,paris,a,notatime"]         # line 11: bad time stamp
    src = write_csv(tmp_path / "bad.csv", ROWS, extra)
    meta = preprocess_table(TableSchema.from_dict(SCHEMA), src, tmp_path / "out")
    assert meta["rows_skipped"] == 4 and meta["rows_read"] == len(ROWS) + 4
    assert sum(meta["rows"].values()) == meta["rows_written"] == len(ROWS)
    assert meta["skip_reasons"] == {"wrong number of fields": 1, "label is not 0 or 1": 1,
                                    "not a number": 1, "yymmddhh_hour value is invalid": 1}
    text = "\n".join(f"{e['file']}:{e['line']}: {e['reason']}" for e in meta["skipped_examples"])
    for line in (8, 9, 10, 11):
        assert f"bad.csv:{line}:" in text
    assert "'abc'" in text and "label '2'" in text
    with pytest.raises(ValueError, match=r"bad.csv:8: 5 fields, expected 7"):
        preprocess_table(TableSchema.from_dict(SCHEMA), src, tmp_path / "strict", strict=True)


def test_schema_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="transform 'log2'"):
        TableSchema.from_dict({**SCHEMA, "dense": [{"column": "count", "transform": "log2"}]})
    with pytest.raises(ValueError, match="unknown fields \\['labels'\\]"):
        TableSchema.from_dict({**SCHEMA, "labels": {}})
    src = write_csv(tmp_path / "toy.csv", ROWS)
    schema = TableSchema.from_dict({**SCHEMA, "categorical": [{"column": "nope"}]})
    with pytest.raises(ValueError, match="nope"):
        preprocess_table(schema, src, tmp_path / "out")
    (tmp_path / "s.json").write_text("{\n  \"name\": ,\n}")
    with pytest.raises(ValueError, match="s.json:2"):
        load_schema(tmp_path / "s.json")


def test_random_and_column_splits_and_shuffled_batches(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    rows = [(str(int(rng.random() < 0.3)), str(int(rng.integers(0, 50))), str(1000 - k),
             f"c{int(rng.integers(0, 9))}", "xx", "a", "14102100") for k in range(n)]
    src = write_csv(tmp_path / "t.csv", rows)
    by_time = {**SCHEMA, "split": {"order": "column", "by": "price",
                                   "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}}
    preprocess_table(TableSchema.from_dict(by_time), src, tmp_path / "time")
    data = MemmapDataSource(tmp_path / "time")
    assert [data.num_samples(s) for s in ("train", "val", "test")] == [100, 50, 50]
    # Sorted by price ascending: the training split holds the 100 rows with the lowest price,
    # i.e. the last 100 lines of the file (price 1000 - k).
    labels = np.load(part_file(tmp_path / "time", "train", "labels.npy"))
    want = [float(r[0]) for r in rows[::-1][:100]]
    assert labels.tolist() == want
    rand = {**SCHEMA, "split": {"order": "random", "seed": 3,
                                "fractions": {"train": 0.8, "val": 0.2}}}
    preprocess_table(TableSchema.from_dict(rand), src, tmp_path / "rand")
    data = MemmapDataSource(tmp_path / "rand")
    assert data.num_samples("train") == 160 and data.num_samples("val") == 40
    first = [b.labels for b in data.batches("train", 32, shuffle=True, seed=1, epoch=2)]
    again = [b.labels for b in data.batches("train", 32, shuffle=True, seed=1, epoch=2,
                                            start_batch=2)]
    assert all(torch.equal(a, b) for a, b in zip(first[2:], again))
    other = [b.labels for b in data.batches("train", 32, shuffle=True, seed=1, epoch=3)]
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(other).tolist())
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


@needs_data
def test_movielens_schema_joins_users_items_and_genres(tmp_path):
    meta = preprocess_table(load_schema("movielens-100k"), DATA / "movielens-100k",
                            tmp_path / "ml")
    ratings = np.loadtxt(DATA / "movielens-100k" / "u.data", dtype=np.int64)
    assert sum(meta["rows"].values()) == 100_000 and meta["rows_skipped"] == 0
    assert sum(meta["positives"].values()) == int((ratings[:, 2] >= 4).sum())
    assert meta["rows"] == {"train": 80_000, "val": 10_000, "test": 10_000}
    # Timestamp-ordered: every training rating is no newer than every test rating.
    order = np.argsort(ratings[:, 3], kind="stable")
    cut = ratings[order[79_999], 3]
    assert ratings[order[80_000:], 3].min() >= cut
    data = MemmapDataSource(tmp_path / "ml")
    assert [f["name"] for f in data.features] == ["user", "item", "age_bucket", "gender",
                                                   "occupation", "zip_prefix", "genres"]
    # The first training row is the oldest rating; check its joined attributes by hand.
    first = order[0]
    user, item = int(ratings[first, 0]), int(ratings[first, 1])
    users = {int(line.split("|")[0]): line.split("|") for line in
             (DATA / "movielens-100k" / "u.user").read_text().splitlines()}
    items = {int(line.split("|")[0]): line.split("|") for line in
             (DATA / "movielens-100k" / "u.item").read_text(encoding="latin-1").splitlines()}
    genre_names = [line.split("|")[0] for line in
                   (DATA / "movielens-100k" / "u.genre").read_text().splitlines() if line]
    batch = next(data.batches("train", 1))
    vocab = vocabularies(tmp_path / "ml")
    values, offsets = batch.sparse.values.tolist(), batch.sparse.offsets.tolist()
    bags = [values[offsets[f]:offsets[f + 1]] for f in range(7)]
    assert vocab["user"][bags[0][0] - 1] == str(user)
    assert vocab["item"][bags[1][0] - 1] == str(item)
    assert vocab["gender"][bags[3][0] - 1] == users[user][2]
    assert vocab["zip_prefix"][bags[5][0] - 1] == users[user][4][:3]
    want_genres = sorted(g for g, flag in zip(genre_names, items[item][5:]) if flag == "1")
    assert sorted(vocab["genres"][i - 1] for i in bags[6]) == want_genres
    assert batch.labels.item() == float(ratings[first, 2] >= 4)


@needs_data
def test_avazu_and_criteo_schemas_read_the_samples(tmp_path):
    meta = preprocess_table(load_schema("avazu"), DATA / "avazu-9k" / "train.csv",
                            tmp_path / "avazu")
    assert sum(meta["rows"].values()) == 8999 and meta["rows_skipped"] == 0
    assert len(meta["table_sizes"]) == 23 and meta["dense_names"] == ["constant_one"]
    clicks = sum(line.split(",")[1] == "1" for line in
                 (DATA / "avazu-9k" / "train.csv").read_text().splitlines()[1:])
    assert sum(meta["positives"].values()) == clicks
    vocab = vocabularies(tmp_path / "avazu")
    assert vocab["hour_of_day"] == ["0"]  # 14102100: hour 0 of a Tuesday
    assert vocab["weekday"] == ["1"]
    # Criteo through the table entry is the same pipeline as `dlrm preprocess criteo-kaggle`.
    from dlrm.data.criteo import preprocess_kaggle

    head = DATA / "criteo-kaggle-head10k" / "train.txt"
    table = preprocess_table(load_schema("criteo-kaggle"), head, tmp_path / "criteo")
    kaggle = preprocess_kaggle(head, tmp_path / "kaggle")
    assert table["rows"] == kaggle["rows"] == {"train": 8572, "val": 714, "test": 714}
    assert table["table_sizes"] == kaggle["table_sizes"]
    for f in ("labels.npy", "dense.npy", "ids/C1.npy", "ids/C26.npy"):
        assert np.array_equal(np.load(tmp_path / "criteo" / "parts" / "main" / f),
                              np.load(tmp_path / "kaggle" / "parts" / "all" / f))
    first = head.read_text().split("\n", 1)[0]
    fields = first.split("\t")
    dense = np.load(tmp_path / "criteo" / "parts" / "main" / "dense.npy")[0]
    want = [math.log1p(max(int(x), 0)) if x else 0.0 for x in fields[1:14]]
    assert dense.tolist() == pytest.approx(want, abs=1e-6)
    vocab = vocabularies(tmp_path / "criteo")
    for k, value in enumerate(fields[14:]):
        column = np.load(tmp_path / "criteo" / "parts" / "main" / "ids" / f"C{k + 1}.npy")
        assert column[0] == (0 if not value else 1 + vocab[f"C{k + 1}"].index(int(value, 16)))


def test_parquet_and_tsv_inputs_give_the_same_arrays_as_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = write_csv(tmp_path / "toy.csv", ROWS)
    names = ["label", "count", "price", "color", "city", "tags", "when"]
    pq.write_table(pa.table({n: [r[k] for r in ROWS] for k, n in enumerate(names)}),
                   tmp_path / "toy.parquet")
    (tmp_path / "toy.tsv").write_text(src.read_text().replace(",", "\t"))
    schema = TableSchema.from_dict(SCHEMA)
    a = preprocess_table(schema, src, tmp_path / "a")
    no_delimiter = TableSchema.from_dict({k: v for k, v in SCHEMA.items() if k != "delimiter"})
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "parts").rglob(
        "*.npy"))
    assert len(files) == 8  # one part (file order): labels, dense, 4 one-hot, 1 multi-hot (2)
    for other in ("toy.parquet", "toy.tsv"):
        folder = tmp_path / other.split(".")[1]
        b = preprocess_table(no_delimiter, tmp_path / other, folder)
        assert vocabularies(tmp_path / "a") == vocabularies(folder) and a["rows"] == b["rows"]
        for f in files:
            assert np.array_equal(np.load(tmp_path / "a" / f), np.load(folder / f))
