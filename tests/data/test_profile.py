"""Data profiles: what they hold (no rows), and that profile-generated data reproduces them
(popularity and, on the real Criteo head rows in file order, the LRU stack distances);
stack distances against a naive LRU stack; ArrayDataSource's batches against a naive
row-by-row reference."""

import json

import numpy as np
import pytest
import torch
from criteo_samples import KAGGLE_HEAD, require

from dlrm.cli import main
from dlrm.data.arrays import ArrayDataSource
from dlrm.data.loader import MemmapDataSource
from dlrm.data.profile import (
    ProfileData,
    count_smaller_before,
    count_spectrum,
    fit_profile,
    id_lifetimes,
    load_profile,
    reuse_distances,
    stack_distances,
)
from dlrm.data.synthetic import SyntheticConfig, SyntheticData


def naive_reuse(ids):
    last, out = {}, []
    for pos, i in enumerate(ids):
        if i in last:
            out.append(pos - last[i])
        last[i] = pos
    return sorted(out)


def test_reuse_distances_and_spectrum_against_naive():
    ids = np.random.default_rng(0).integers(0, 20, 300)
    assert sorted(reuse_distances(ids).tolist()) == naive_reuse(ids.tolist())
    _, counts = np.unique(ids, return_counts=True)
    spectrum = count_spectrum(np.sort(counts)[::-1])
    assert sum(c * k for c, k in spectrum) == 300
    assert sum(k for _, k in spectrum) == len(set(ids.tolist()))


@pytest.fixture(scope="module")
def planted():
    return SyntheticData(SyntheticConfig(table_sizes=[1000, 50000, 20], rows_cap=None,
                                         train_samples=16384, zipf=1.1, seed=1))


def test_profile_reveals_no_rows(planted, tmp_path):
    profile = fit_profile(planted, "train")
    text = json.dumps(profile)
    assert len(text) < 60_000  # small, whatever the row count
    assert set(profile["features"][0]) == {
        "table_size", "cardinality", "accesses", "zipf", "singleton_share", "rank_buckets",
        "count_spectrum", "bag_sizes", "reuse", "stack_distance", "lifetimes"}
    assert profile["rows"] == 16384 and abs(profile["click_rate"] - 0.25) < 0.03
    # the planted data's power law: exponent near 1.1 on the 1000-row table
    assert profile["features"][0]["zipf"] == pytest.approx(1.1, abs=0.15)
    path = tmp_path / "p.json"
    path.write_text(text)
    assert load_profile(path) == profile
    path.write_text("{}")
    with pytest.raises(ValueError, match="format"):
        load_profile(path)


def test_profile_generated_data_matches_profile(planted):
    profile = fit_profile(planted, "train")
    generated = ProfileData(profile, rows=20480, seed=5)  # train split: 16384 rows
    again = fit_profile(generated, "train")
    assert again["click_rate"] == pytest.approx(profile["click_rate"], abs=0.02)
    for a, b in zip(profile["features"], again["features"]):
        assert b["cardinality"] == pytest.approx(a["cardinality"], rel=0.15)
        assert b["zipf"] == pytest.approx(a["zipf"], abs=0.15)
        assert b["reuse"]["repeat_share"] == pytest.approx(a["reuse"]["repeat_share"], abs=0.05)
        assert b["reuse"]["distance"][2] == pytest.approx(a["reuse"]["distance"][2], rel=0.3)
    for a, b in zip(profile["dense"], again["dense"]):
        assert b["zero_share"] == pytest.approx(a["zero_share"], abs=0.02)
        np.testing.assert_allclose(b["quantiles"][1:-1], a["quantiles"][1:-1], rtol=0.1,
                                   atol=0.1)
    # uniform ids over the same tables would not: far more distinct ids, almost no reuse
    uniform = SyntheticData(SyntheticConfig(kind="random", table_sizes=[1000, 50000, 20],
                                            rows_cap=None, train_samples=16384))
    flat = fit_profile(uniform, "train")["features"][1]
    assert flat["reuse"]["repeat_share"] < profile["features"][1]["reuse"]["repeat_share"] - 0.3


def test_profile_multi_hot_bags_round_trip():
    rng = np.random.default_rng(0)
    n = 4000
    lengths = np.stack([rng.choice([1, 2, 5], n, p=[0.5, 0.3, 0.2]), np.ones(n, int)], 1)
    ids = [rng.integers(0, 300, lengths[:, 0].sum()), rng.integers(0, 9, n)]
    data = ArrayDataSource(rng.random((n, 2)), ids, rng.random(n) < 0.3, [300, 9], lengths,
                           split_fractions=(("train", 1.0),))
    profile = fit_profile(data, "train")
    sizes, shares = zip(*profile["features"][0]["bag_sizes"])
    assert sizes == (1, 2, 5) and shares == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    generated = ProfileData(profile, n, seed=1, split_fractions=(("train", 1.0),))
    again_sizes, again_shares = zip(*fit_profile(generated, "train")["features"][0]["bag_sizes"])
    assert again_sizes == sizes and again_shares == pytest.approx(shares, abs=0.03)


def test_array_data_source_against_naive_rows():
    rng = np.random.default_rng(1)
    n = 50
    lengths = rng.integers(0, 4, (n, 3))
    ids = [rng.integers(0, 10, lengths[:, f].sum()) for f in range(3)]
    dense, labels = rng.random((n, 2)), rng.random(n) < 0.5
    data = ArrayDataSource(dense, ids, labels, [10, 10, 10], lengths)
    assert data.splits() == ["train", "val", "test"] and data.num_samples("train") == 40
    starts = [np.concatenate([[0], np.cumsum(lengths[:, f])]) for f in range(3)]
    batches = list(data.batches("val", 3))
    assert [len(b) for b in batches] == [3, 2]
    rows = list(range(40, 45))
    values = []
    for f in range(3):  # feature-major: all bags of feature 0 first
        for r in rows:
            values += ids[f][starts[f][r]:starts[f][r + 1]].tolist()
    got = torch.cat([torch.cat([b.sparse.values[b.sparse.offsets[f * len(b)]:
                                                 b.sparse.offsets[(f + 1) * len(b)]]
                                for b in batches]) for f in range(3)])
    assert got.tolist() == values
    torch.testing.assert_close(torch.cat([b.dense for b in batches]),
                               torch.tensor(dense[40:45], dtype=torch.float32))
    with pytest.raises(ValueError, match="feature 1: id 10 outside its table of 10"):
        ArrayDataSource(dense, [ids[0], ids[1] + 1, ids[2]], labels, [10, 10, 10], lengths)


def test_cli_synth_profile_and_bench_on_profile(tmp_path):
    out = tmp_path / "profile.json"
    rc = main(["synth", "profile", "synthetic:planted", "--out", str(out), "--max-rows", "5000"])
    assert rc == 0 and load_profile(out)["rows"] == 5000
    folder = tmp_path / "generated"
    rc = main(["synth", "--profile", str(out), "--rows", "4000", "--out", str(folder),
               "--quiet"])
    assert rc == 0
    generated = MemmapDataSource(folder)
    assert sum(generated.num_samples(s) for s in generated.splits()) == 4000
    assert generated.table_sizes == [f["table_size"] for f in load_profile(out)["features"]]
    batch = next(generated.batches("train", 100))
    assert batch.sparse.one_hot and len(batch) == 100
    rc = main(["bench", "--profile", str(out), "--profile-rows", "3000", "--preset", "tiny",
               "--rows-cap", "5000", "--batch-size", "256", "--warmup", "0",
               "--trials", "1", "--steps", "1", "--no-ceilings", "--quiet",
               "--json", str(tmp_path / "b.json")])
    assert rc == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["data"].startswith("profile:") and len(result["model"]["table_sizes"]) == 26


# --- LRU stack distances and locality (issue 17) ---

def naive_stack_distances(ids):
    """An LRU stack walked access by access: 0 for a first access, else the id's depth
    (1 = the most recently used id), after which it moves to the top."""
    stack, out = [], []
    for x in ids:
        if x in stack:
            depth = len(stack) - stack.index(x)
            stack.remove(x)
            out.append(depth)
        else:
            out.append(0)
        stack.append(x)
    return out


def test_stack_distances_against_naive_lru_stack():
    rng = np.random.default_rng(0)
    cases = [[], [7], [3, 3, 3], [1, 2, 3, 4], [1, 2, 1, 3, 2, 1], [5, 1, 5, 1, 9, 9, 1]]
    cases += [rng.integers(0, rng.integers(1, 40), rng.integers(1, 300)).tolist()
              for _ in range(100)]
    for ids in cases:
        got = stack_distances(np.array(ids, dtype=np.int64))
        assert got.tolist() == naive_stack_distances(ids), ids
    a = rng.integers(0, 1000, 500)
    naive = [int((a[:i] < a[i]).sum()) for i in range(a.size)]
    assert count_smaller_before(a).tolist() == naive
    # the stack distance never exceeds the reuse distance (accesses in between + 1)
    ids = rng.integers(0, 50, 2000)
    hits = stack_distances(ids)
    assert sorted(hits[hits > 0].tolist()) <= sorted(reuse_distances(ids).tolist())


def test_lifetimes_of_a_known_sequence():
    # id 0 at 0, 2, 5 (lifetime 5/6); id 1 at 1, 4 (3/6); id 2 once; id 3 at 6, 7 (1/8)...
    ids = np.array([0, 1, 0, 2, 1, 0, 3, 3])
    (bucket,) = id_lifetimes(ids)  # counts 2 and 3: one bucket [2, 4)
    assert bucket["counts"] == [2, 4] and bucket["ids"] == 3
    spans = np.array([5, 3, 1]) / 8
    np.testing.assert_allclose(bucket["lifetime"], np.quantile(spans, bucket_levels()))
    # id 0's gaps 2 and 3 relative to its mean gap 2.5
    np.testing.assert_allclose(bucket["gaps"], np.quantile([0.8, 1.2], bucket_levels()))


def bucket_levels():
    from dlrm.data.profile import LIFETIME_QUANTILES

    return LIFETIME_QUANTILES


def read_criteo_head(path, rows=None):
    """The raw Criteo TSV rows in file order: dense log1p'd, each categorical column's distinct
    values numbered (a plain Python parse, independent of the preprocessing code)."""
    lines = path.read_text().splitlines()[:rows]
    fields = [line.split("\t") for line in lines]
    labels = np.array([float(f[0]) for f in fields])
    dense = np.log1p(np.maximum(np.array([[float(x) if x else 0.0 for x in f[1:14]]
                                          for f in fields]), 0.0))
    ids = np.stack([np.unique(np.array([f[14 + k] for f in fields]), return_inverse=True)[1]
                    for k in range(26)], 1)
    return ArrayDataSource(dense, ids, labels, split_fractions=(("train", 1.0),))


@pytest.fixture(scope="module")
def criteo_head():
    real = read_criteo_head(require(KAGGLE_HEAD))
    return real, fit_profile(real, "train")


def within(generated, source, rel=0.10):
    """Quantiles within ``rel`` of the source's; stack distances are whole positions, so a
    quantile below 10 may be one position off (one position is more than 10% there)."""
    g, s = np.asarray(generated), np.asarray(source)
    return np.abs(g - s) <= np.maximum(rel * s, 1.0)


def test_profile_locality_reproduces_real_stack_distances(criteo_head):
    """The issue's criterion: data generated from the profile of the real Criteo head rows,
    in file order, at the same row count, has each feature's stack-distance quantiles within
    10% of the source's, and exactly its popularity spectrum. (Seeds 0-9: 2 of 1,560
    quantiles miss, by up to 14%, `benchmarks/profile_locality.py`; this test uses seed 0.)"""
    real, profile = criteo_head
    rows = profile["rows"]
    generated = ProfileData(profile, rows, seed=0, split_fractions=(("train", 1.0),))
    again = fit_profile(generated, "train")
    for f, (a, b) in enumerate(zip(profile["features"], again["features"])):
        assert b["count_spectrum"] == a["count_spectrum"], f  # same popularity, exactly
        assert b["rank_buckets"] == a["rank_buckets"], f
        assert b["stack_distance"]["cold_share"] == a["stack_distance"]["cold_share"]
        ok = within(b["stack_distance"]["distance"], a["stack_distance"]["distance"])
        assert ok.all(), (f, a["stack_distance"]["distance"], b["stack_distance"]["distance"])
    # the profile stores statistics, not the log: it is small next to the ids it describes
    assert len(json.dumps(profile)) < 8 * rows * 26


def test_iid_locality_is_todays_behaviour(criteo_head):
    """``locality="iid"`` draws what "profile" draws (dense, labels, bags, the multiset of
    ids) in random order: its stack distances are those of the real rows shuffled, and miss
    the file order's where locality matters, unlike the profile's."""
    real, profile = criteo_head
    rows = profile["rows"]
    kw = dict(seed=3, split_fractions=(("train", 1.0),))
    iid, local = ProfileData(profile, rows, locality="iid", **kw), ProfileData(profile, rows, **kw)
    torch.testing.assert_close(iid.dense, local.dense)
    torch.testing.assert_close(iid.labels, local.labels)
    for a, b in zip(iid.values, local.values):
        assert torch.equal(a.sort().values, b.sort().values)
        assert not torch.equal(a, b) or a.unique().numel() == 1
    shuffled = ArrayDataSource(
        real.dense.numpy(), np.stack([v.numpy() for v in real.values], 1)[
            np.random.default_rng(4).permutation(rows)], real.labels.numpy(),
        split_fractions=(("train", 1.0),))
    iid_sd = [f["stack_distance"]["distance"] for f in fit_profile(iid, "train")["features"]]
    shuffled_sd = [f["stack_distance"]["distance"]
                   for f in fit_profile(shuffled, "train")["features"]]
    real_sd = [f["stack_distance"]["distance"] for f in profile["features"]]
    local_sd = [f["stack_distance"]["distance"] for f in fit_profile(local, "train")["features"]]
    misses = {name: sum(int((~within(sd, base, 0.10)).sum()) for sd, base in zip(got, ref))
              for name, got, ref in (("iid vs shuffled", iid_sd, shuffled_sd),
                                     ("iid vs file order", iid_sd, real_sd),
                                     ("profile vs file order", local_sd, real_sd))}
    assert misses["iid vs shuffled"] <= 2, misses
    assert misses["iid vs file order"] >= 5, misses
    assert misses["profile vs file order"] < misses["iid vs file order"], misses


def test_locality_survives_other_row_counts(criteo_head):
    """Twice the rows: every id is drawn twice as often (the count spectrum scaled exactly)
    and takes the lifetime of its count's bucket at the profiled scale. A format-1 profile
    (no locality statistics) refuses locality "profile" and by default draws what "iid"
    draws from a new profile."""
    _, profile = criteo_head
    big = fit_profile(ProfileData(profile, 2 * profile["rows"], seed=1,
                                  split_fractions=(("train", 1.0),)), "train")
    for a, b in zip(profile["features"], big["features"]):
        assert b["count_spectrum"] == [[2 * c, k] for c, k in a["count_spectrum"]]
        assert b["stack_distance"]["cold_share"] == pytest.approx(
            a["stack_distance"]["cold_share"] / 2)
    old = json.loads(json.dumps(profile))
    old["format"] = "dlrm-data-profile/1"
    for f in old["features"]:
        del f["stack_distance"], f["lifetimes"]
    with pytest.raises(ValueError, match="no locality statistics.*iid"):
        ProfileData(old, 100, locality="profile")
    kw = dict(seed=2, split_fractions=(("train", 1.0),))
    default = ProfileData(old, 100, **kw)  # no statistics: random order, as before
    assert all(torch.equal(a, b) for a, b in zip(
        default.values, ProfileData(profile, 100, locality="iid", **kw).values))


def test_cli_bench_locality_side_by_side(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["synth", "profile", "synthetic:planted", "--out", str(out),
                 "--max-rows", "3000"]) == 0
    rc = main(["bench", "--profile", str(out), "--profile-rows", "3000", "--locality", "iid",
               "--preset", "tiny", "--rows-cap", "5000", "--batch-size", "256",
               "--warmup", "0", "--trials", "1", "--steps", "1", "--no-ceilings", "--quiet"])
    assert rc == 0
    json_out = tmp_path / "loc.json"
    rc = main(["bench", "locality", "--data", "synthetic:planted", "--profile-rows", "3000",
               "--preset", "tiny", "--batch-size", "256", "--warmup", "0", "--trials", "1",
               "--steps", "1", "--rounds", "1", "--no-ceilings", "--quiet",
               "--json", str(json_out)])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("source", "profile", "iid"):
        assert f"\n{name} " in text
    result = json.loads(json_out.read_text())
    sources = result["sources"]
    assert result["rows"] == 3000 and set(sources) == {"source", "profile", "iid"}
    # same popularity in all three, so the same number of distinct ids
    assert len({s["locality"]["distinct_ids"] for s in sources.values()}) == 1
    for s in sources.values():
        assert s["lookup_ms"] > 0 and 0 < s["locality"]["lru_1024_hit_rate"] < 1
        assert 0 < s["locality"]["distinct_rows_per_batch"] <= 256 * 26


def test_distinct_rows_per_batch_against_naive():
    from dlrm.bench.locality import distinct_rows_per_batch

    rng = np.random.default_rng(5)
    n, batch = 60, 8
    lengths = rng.integers(1, 4, (n, 3))
    ids = [rng.integers(0, 12, lengths[:, f].sum()) for f in range(3)]
    data = ArrayDataSource(np.zeros((n, 1)), ids, np.zeros(n), [12] * 3, lengths,
                           split_fractions=(("train", 1.0),))
    starts = [np.r_[0, np.cumsum(lengths[:, f])] for f in range(3)]
    naive = [sum(len(set(ids[f][starts[f][b * batch]:starts[f][(b + 1) * batch]].tolist()))
                 for f in range(3)) for b in range(n // batch)]
    assert distinct_rows_per_batch(data, batch) == pytest.approx(np.mean(naive))


def test_save_profile_replaces_a_profile_whole_or_not_at_all(tmp_path):
    """A profile write that fails half-way (here: a value JSON cannot hold) leaves the earlier
    profile as it was, and no temporary file beside it."""
    from dlrm.data.profile import save_profile

    path = tmp_path / "profile.json"
    data = SyntheticData(SyntheticConfig(table_sizes=[50, 20], train_samples=500,
                                         val_samples=100, test_samples=0))
    profile = fit_profile(data)
    save_profile(profile, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_profile({**profile, "broken": object()}, path)
    assert path.read_bytes() == before and load_profile(path)["rows"] == 500
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]
