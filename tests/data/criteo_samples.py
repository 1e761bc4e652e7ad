"""Shared helpers for the data tests: paths of the real Criteo samples, small raw files.

(A plain module, not conftest.py, so that `import` cannot pick up another conftest.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The repository root is parents[2] of tests/data/conftest.py; the shared data sits beside it.
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
KAGGLE_HEAD = SHARED_DATA / "criteo-kaggle-head10k" / "train.txt"
KAGGLE_HEAD_TEST = SHARED_DATA / "criteo-kaggle-head10k" / "test.txt"
KAGGLE_SPREAD = SHARED_DATA / "criteo-kaggle-spread4k" / "rows.txt"
LOW_CTR = SHARED_DATA / "criteo-1k-lowctr" / "sample.txt"


def require(path: Path) -> Path:
    """Skip (with the reason) when the shared real data is not present."""
    if not path.is_file():
        pytest.skip(f"real Criteo sample {path} is absent (../shared/data not checked out)")
    return path


GOOD_ROW = "\t".join(["1", "5", "-3", "", "0", "12"] + ["1"] * 8
                     + ["68fd1e64", "", "ABCDEF01"] + ["0000000a"] * 23)


def write_lines(path: Path, lines: list[str], newline: str = "\n", final_newline: bool = True
                ) -> Path:
    text = newline.join(lines) + (newline if final_newline and lines else "")
    path.write_bytes(text.encode())
    return path


def read_part(root: Path, part: str):
    """(labels, dense, ids (N, F)) of a part of a preprocessed folder, as plain arrays."""
    import json

    import numpy as np

    from dlrm.data.format import open_part

    features = json.loads((Path(root) / "metadata.json").read_text())["features"]
    arrays = open_part(root, part, features)
    ids = np.stack([np.asarray(a) for a in arrays.ids], axis=1)
    return np.asarray(arrays.labels), np.asarray(arrays.dense), ids
