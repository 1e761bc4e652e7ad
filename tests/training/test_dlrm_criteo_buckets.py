"""DLRM on Criteo head10k with the counts also as categories, as a user runs it: `dlrm
preprocess table` with the shipped buckets schema, then `dlrm train --recipe small`, which
resolves to the recipe tuned on that data set (docs/results.md: 0.7556 / 0.7551 / 0.7531 on
the spread rows for seeds 0-2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
HEAD = SHARED / "criteo-kaggle-head10k" / "train.txt"
SPREAD = SHARED / "criteo-kaggle-spread4k" / "rows.txt"
SCHEMA = ROOT / "benchmarks" / "schemas" / "criteo-tsv-buckets.json"


def dlrm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlrm", *args], check=True,
                          capture_output=True, text=True)


@pytest.mark.skipif(not (HEAD.exists() and SPREAD.exists()),
                    reason=f"the real Criteo samples are not at {SHARED}")
def test_small_dlrm_on_criteo_buckets_through_the_cli(tmp_path):
    data = tmp_path / "criteo-buckets"
    dlrm("preprocess", "table", "--schema", str(SCHEMA), "--input", str(HEAD),
         "--test-input", str(SPREAD), "--out", str(data), "--quiet")
    meta = json.loads((data / "metadata.json").read_text())
    assert meta["dataset"] == "criteo-tsv-buckets"
    assert meta["rows"] == {"train": 9000, "val": 1000, "test": 4370}
    assert len(meta["table_sizes"]) == 39 and meta["rows_skipped"] == 0
    run = tmp_path / "run"
    trained = dlrm("train", "--model", "dlrm", "--recipe", "small", "--data", str(data),
                   "--seed", "0", "--threads", "1", "--quiet", "--out", str(run))
    assert "small-criteo-tsv-buckets, the one tuned on this data's data set" in trained.stderr
    model = json.loads((run / "config.json").read_text())["model_config"]
    assert (model["interaction"], model["top_mlp"]) == ("cat", [64, 1])  # after 40 x 16 inputs
    summary = json.loads((run / "summary.json").read_text())
    # Seed 0 scored 0.7556 where it was measured; the bound leaves room for another CPU's
    # rounding to move its early-stopping point, and still fails a broken schema or recipe
    # (the plain features' DLRM scores 0.7463 on average, the reference recipe 0.698).
    assert summary["test_auc"] >= 0.748, summary
    assert summary["val_auc"] >= 0.75, summary
