"""Data profiles: what they hold (no rows), and that profile-generated data reproduces them;
ArrayDataSource's batches against a naive row-by-row reference."""

import json

import numpy as np
import pytest
import torch

from dlrm.cli import main
from dlrm.data.arrays import ArrayDataSource
from dlrm.data.loader import MemmapDataSource
from dlrm.data.profile import (
    ProfileData,
    count_spectrum,
    fit_profile,
    load_profile,
    reuse_distances,
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
    assert len(text) < 50_000  # small, whatever the row count
    assert set(profile["features"][0]) == {
        "table_size", "cardinality", "accesses", "zipf", "singleton_share", "rank_buckets",
        "count_spectrum", "bag_sizes", "reuse"}
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
               "--no-progress"])
    assert rc == 0
    generated = MemmapDataSource(folder)
    assert sum(generated.num_samples(s) for s in generated.splits()) == 4000
    assert generated.table_sizes == [f["table_size"] for f in load_profile(out)["features"]]
    batch = next(generated.batches("train", 100))
    assert batch.sparse.one_hot and len(batch) == 100
    rc = main(["bench", "--profile", str(out), "--profile-rows", "3000", "--preset", "tiny",
               "--table-rows-cap", "5000", "--batch-size", "256", "--warmup", "0",
               "--trials", "1", "--steps", "1", "--no-ceilings", "--quiet",
               "--json", str(tmp_path / "b.json")])
    assert rc == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["data"].startswith("profile:") and len(result["model"]["table_sizes"]) == 26
