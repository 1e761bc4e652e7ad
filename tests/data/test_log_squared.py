"""The ``log_squared`` categorical transform: counts as categories, against a naive parse."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dlrm.data.pipeline.parse import log_squared_ids
from dlrm.data.pipeline.vocabulary import Vocabulary
from dlrm.data.table import TableSchema, preprocess_table

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"


def naive_bucket(cell: str) -> str | None:
    """The Criteo Kaggle winners' rule, one Python float at a time."""
    if cell.strip() == "":
        return None
    v = float(cell)
    if v <= 2:
        return f"v:{math.floor(v)}"
    return f"l:{math.floor(math.log(v) ** 2)}"


def test_log_squared_ids_on_edges():
    values = np.array([-3.0, 0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 1096.0, 1097.0, 1176.0,
                       1178.0, 1e9, 0.0])
    empty = np.zeros(len(values), dtype=bool)
    empty[-1] = True
    got = log_squared_ids(values, empty).to_pylist()
    assert got[-1] is None
    assert got[:-1] == [naive_bucket(repr(float(v))) for v in values[:-1]]
    # The boundaries of l:49 are exp(7) = 1096.6 and exp(sqrt(50)) = 1177.4.
    assert got[8:12] == ["l:48", "l:49", "l:49", "l:50"]


@pytest.mark.skipif(not (DATA / "criteo-kaggle-head10k" / "train.txt").exists(),
                    reason=f"the real Criteo samples are not at {DATA}")
def test_criteo_buckets_schema_on_real_rows(tmp_path):
    """Every I*_bucket id of the shipped schema decodes to the naive rule's category."""
    schema = json.loads((ROOT / "benchmarks" / "schemas" / "criteo-tsv-buckets.json")
                        .read_text())
    head = DATA / "criteo-kaggle-head10k" / "train.txt"
    lines = head.read_text().splitlines()[:2000]
    src = tmp_path / "rows.txt"
    src.write_text("\n".join(lines) + "\n")
    meta = preprocess_table(TableSchema.from_dict(schema), src, tmp_path / "out")
    assert meta["rows_skipped"] == 0 and sum(meta["rows"].values()) == 2000
    names = [c["name"] if "name" in c else c["column"] for c in schema["categorical"]]
    assert names[26:] == [f"I{i}_bucket" for i in range(1, 14)]
    vocab = Vocabulary.load(tmp_path / "out" / "vocab")
    kept = {n: k.to_pylist() for n, k in zip(vocab.names, vocab.kept)}
    split = meta["splits"]["train"][0]
    train = lines[split["start"]:split["stop"]]
    part = tmp_path / "out" / "parts" / split["part"] / "ids"
    for i in range(1, 14):
        ids = np.load(part / f"I{i}_bucket.npy")[split["start"]:split["stop"]]
        want = [naive_bucket(line.split("\t")[i]) for line in train]
        # the vocabulary holds the training rows' categories, sorted; id 0 is an empty cell
        # (the pipeline's missing id), never the same id as a count of 0
        assert sorted(kept[f"I{i}_bucket"], key=str) == kept[f"I{i}_bucket"]
        got = [kept[f"I{i}_bucket"][j - 1] if j else None for j in ids.tolist()]
        assert got == want, i
        assert None in want or i == 2  # every column but I2 has empty cells in these rows
    # the dense columns are still there, log1p as before
    dense = np.load(part.parent / "dense.npy")
    first = train[0].split("\t")
    assert dense[0].tolist() == pytest.approx(
        [math.log1p(max(int(x), 0)) if x else 0.0 for x in first[1:14]], abs=1e-6)
