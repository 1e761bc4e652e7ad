"""Shipped schemas are package data: found with importlib.resources, also from a built wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from dlrm.data.pipeline.metadata import DataError, Progress
from dlrm.data.pipeline.schema import Schema, load_schema, shipped_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_schema_loads():
    assert shipped_schemas() == ["avazu", "criteo-kaggle", "criteo-terabyte", "movielens-100k"]
    for name in shipped_schemas():
        schema = load_schema(name)
        assert schema.name == name and Schema.from_dict(schema.to_dict()) == schema
    kaggle = load_schema("criteo-kaggle")
    assert [c.kind for c in kaggle.categorical] == ["hex32"] * 26
    assert [d.type for d in kaggle.dense] == ["int"] * 13
    assert kaggle.vocabulary["from"] == "all" and kaggle.split["order"] == "reference"
    with pytest.raises(DataError, match="shipped schemas: avazu, criteo-kaggle"):
        load_schema("avazoo")


def test_schema_errors_name_the_field():
    base = load_schema("avazu").to_dict()
    with pytest.raises(DataError, match="kind 'hex64'"):
        Schema.from_dict({**base, "categorical": [{"column": "C1", "kind": "hex64"}]})
    with pytest.raises(DataError, match="encoding 'utf16'"):
        Schema.from_dict({**base, "encoding": "utf16"})
    with pytest.raises(DataError, match="split fraction val=-1"):
        Schema.from_dict({**base, "split": {"order": "random", "fractions": {"val": -1}}})


def test_a_built_wheel_ships_the_schemas(tmp_path):
    """Build the wheel, unpack it, and load a schema from it in a process that cannot see
    the source tree (no site hooks: the editable install is invisible)."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("dlrm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in shipped_schemas():
        assert f"dlrm/data/schemas/{name}.json" in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from dlrm.data.pipeline.schema import load_schema, shipped_schemas\n"
            "import dlrm, json\n"
            "print(json.dumps([dlrm.__file__, shipped_schemas(), "
            "load_schema('criteo-terabyte').split]))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(unpacked),
                          sysconfig.get_paths()["purelib"]], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, names, split = json.loads(out.stdout)
    assert where.startswith(str(unpacked))
    assert names == shipped_schemas() and split == {"order": "days", "test_day": 23}


def test_progress_events_cover_the_input_and_the_vocabulary(tmp_path):
    from criteo_samples import KAGGLE_HEAD, require

    from dlrm.data.criteo import preprocess_kaggle

    events: list[Progress] = []
    preprocess_kaggle(require(KAGGLE_HEAD), tmp_path / "o", progress=events.append,
                      chunk_bytes=1 << 18)
    read = [e for e in events if e.stage.startswith("read")]
    assert len(read) >= 5 and read[-1].done == read[-1].total == KAGGLE_HEAD.stat().st_size
    assert all(a.done <= b.done for a, b in zip(read, read[1:]))
    vocab = [e for e in events if e.stage == "vocabulary"]
    assert vocab[0].done == 0 and vocab[-1].done == vocab[-1].total == 26
    assert all(isinstance(e, Progress) for e in events)
