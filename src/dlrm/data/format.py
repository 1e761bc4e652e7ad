"""The on-disk format of a preprocessed data set: memory-mappable ``.npy`` arrays + metadata.json.

Layout, format version 2 (documented for users in docs/data-format.md)::

    OUT/
      metadata.json                    splits, rows, table sizes, schema, skips, inputs
      vocab/vocab.json, <feature>.arrow   sorted kept values per feature (exact, min-count)
      parts/<part>/labels.npy          (N,)     uint8    0 or 1
      parts/<part>/dense.npy           (N, D)   float32  transformed dense features
      parts/<part>/ids/<feature>.npy   (N,)     int32    one id per row (one-hot feature)
      parts/<part>/ids/<feature>.values.npy, .offsets.npy   a multi-hot feature's bags:
                                       row r's ids are values[offsets[r]:offsets[r + 1]]

One file per feature keeps every feature contiguous (the vocabulary pass writes a feature at
a time, and a batch's ids are feature-major, as ``SparseFeatures`` wants them). Version 1
(Criteo only) had one ``sparse.npy`` (N, 26) per part instead of ``ids/``; it still opens.

A split is a list of row ranges of parts (``metadata["splits"][name] = [{"part", "start",
"stop"}, ...]``), so the Kaggle reference split (consecutive rows of one file) and the Terabyte
split (one part per day) need no copying. Every array is a plain ``.npy`` file that
``np.load(path, mmap_mode="r")`` opens; files are written by appending rows to a file whose
fixed-size header is rewritten with the final row count when the writer closes, so writing
needs no knowledge of the row count in advance and only one chunk in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "dlrm-memmap"
FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
ARRAY_NAMES = ("labels", "dense", "sparse")
# Every .npy written here has a header of exactly this many bytes (magic + dict + padding), so
# the header can be rewritten in place once the row count is known.
_HEADER_BYTES = 128


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header of exactly ``_HEADER_BYTES`` bytes for a C-order array."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    pad = _HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {_HEADER_BYTES}-byte .npy header")
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class NpyAppender:
    """Write a ``.npy`` file row chunk by row chunk; ``close()`` fixes the row count.

    Args:
        path: the file to write (replaced if it exists).
        dtype: element type, e.g. ``np.float32``.
        row_shape: shape of one row, ``()`` for a vector, ``(13,)`` for (N, 13).
    """

    def __init__(self, path: str | Path, dtype: Any, row_shape: tuple[int, ...] = ()) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        """Append rows of shape ``(n, *row_shape)`` (converted to the file's dtype)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, "
                             f"expected {self.row_shape}")
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        """Rewrite the header with the final row count, flush to disk and close."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def npy_file_size(dtype: Any, shape: tuple[int, ...]) -> int:
    """Bytes of a ``.npy`` written by ``NpyAppender`` (used to verify finished files)."""
    return _HEADER_BYTES + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def open_array(path: str | Path) -> np.ndarray:
    """Memory-map one array read-only, seen as a plain ndarray (slicing an ``np.memmap``
    runs Python code per slice; a loader slices every feature file for every batch)."""
    arr = np.load(path, mmap_mode="r")
    return arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr


@dataclass
class PartArrays:
    """The arrays of one part, memory-mapped read-only.

    ``ids`` holds one (N,) array per one-hot feature (version 1: the columns of its (N, F)
    ``sparse.npy``); ``bags`` maps a multi-hot feature's index to ``(values, offsets)``.
    """

    labels: np.ndarray
    dense: np.ndarray
    ids: list[np.ndarray]
    bags: dict[int, tuple[np.ndarray, np.ndarray]]
    sparse: np.ndarray | None = None  # version 1 only

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def single_ids(self, lo: int, hi: int) -> np.ndarray:
        """(F_single, hi - lo) ids of rows [lo, hi), feature-major, a fresh array."""
        if self.sparse is not None:
            return np.ascontiguousarray(self.sparse[lo:hi].T)
        if not self.ids:
            return np.zeros((0, hi - lo), dtype=np.int32)
        return np.stack([a[lo:hi] for a in self.ids])


def part_dir(root: str | Path, part: str) -> Path:
    return Path(root) / "parts" / part


def open_part(root: str | Path, part: str, features: list[dict[str, Any]] | None = None
              ) -> PartArrays:
    """Open a part's arrays (``features``: the metadata's feature list; None: version 1)
    and check that their row counts agree."""
    folder = part_dir(root, part)
    labels = open_array(folder / "labels.npy")
    dense = open_array(folder / "dense.npy")
    counts = {"labels": labels.shape[0], "dense": dense.shape[0]}
    if features is None:
        sparse = open_array(folder / "sparse.npy")
        counts["sparse"] = sparse.shape[0]
        arrays = PartArrays(labels, dense, [], {}, sparse)
    else:
        ids, bags = [], {}
        for k, f in enumerate(features):
            if f.get("multi_hot"):
                offsets = open_array(folder / "ids" / f"{f['name']}.offsets.npy")
                bags[k] = (open_array(folder / "ids" / f"{f['name']}.values.npy"), offsets)
                counts[f["name"]] = offsets.shape[0] - 1
            else:
                ids.append(open_array(folder / "ids" / f"{f['name']}.npy"))
                counts[f["name"]] = ids[-1].shape[0]
        arrays = PartArrays(labels, dense, ids, bags)
    if len(set(counts.values())) != 1:
        raise ValueError(f"{folder}: arrays disagree on the row count: {counts}")
    return arrays


def write_metadata(root: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``metadata.json`` atomically (a reader never sees a half-written file)."""
    path = Path(root) / METADATA_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_metadata(root: str | Path) -> dict[str, Any]:
    """Read and check ``metadata.json`` of a preprocessed folder."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {root} the output of `dlrm preprocess`?")
    meta = json.loads(path.read_text())
    if meta.get("format") == "dlrm-table-v1":
        raise ValueError(f"{path}: format dlrm-table-v1 (an older `dlrm preprocess table`); "
                         "this version reads it only through dlrm.data.open_data. Re-run "
                         "`dlrm preprocess table` to get the current format")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta['format_version']} is newer than this "
                         f"tool reads ({FORMAT_VERSION}); upgrade dlrm")
    return meta


def write_data_source(data: Any, out: str | Path, batch_size: int = 65536,
                      progress: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Write every split of a one-hot ``DataSource`` as a preprocessed folder.

    Lets any generator (a data profile, the planted model) produce a folder that
    ``dlrm train --data`` and ``dlrm bench`` read like preprocessed Criteo. Built beside
    ``out`` and published with one rename, like ``dlrm preprocess``. ``progress`` gets
    ``dlrm.data.pipeline.metadata.Progress`` events. Returns the metadata.
    """
    from dlrm.data.pipeline.io import BuildFolder
    from dlrm.data.pipeline.metadata import Progress

    names = [f"C{k + 1}" for k in range(len(data.table_sizes))]
    splits: dict[str, list[dict[str, Any]]] = {}
    rows: dict[str, int] = {}
    positives: dict[str, int] = {}
    total = sum(data.num_samples(split) for split in data.splits())
    done = 0
    with BuildFolder(out, {"source": _describe(data), "batch_size": batch_size},
                     overwrite) as build:
        for split in data.splits():
            folder = part_dir(build.path, split)
            (folder / "ids").mkdir(parents=True, exist_ok=True)
            count = clicks = 0
            labels = NpyAppender(folder / "labels.npy", np.uint8)
            dense = NpyAppender(folder / "dense.npy", np.float32, (data.num_dense,))
            ids = [NpyAppender(folder / "ids" / f"{n}.npy", np.int32) for n in names]
            for batch in data.batches(split, batch_size):
                if not batch.sparse.one_hot:
                    raise ValueError(f"split {split!r} has multi-hot bags; write_data_source "
                                     "takes one id per feature")
                n = len(batch)
                labels.append(batch.labels.numpy().astype(np.uint8))
                dense.append(batch.dense.numpy().astype(np.float32))
                values = batch.sparse.values.view(-1, n).numpy()
                for k, out_k in enumerate(ids):
                    out_k.append(values[k])
                count += n
                clicks += int(batch.labels.sum())
                done += n
                if progress is not None:
                    progress(Progress("write", done, total, "rows"))
            for appender in [labels, dense, *ids]:
                appender.close()
            splits[split] = [{"part": split, "start": 0, "stop": count}]
            rows[split] = count
            positives[split] = clicks
        features = [{"name": n, "column": n, "kind": "generated", "multi_hot": False,
                     "table_size": int(size)} for n, size in zip(names, data.table_sizes)]
        metadata = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "num_dense": data.num_dense, "num_sparse": len(names), "sparse_names": names,
            "features": features, "table_sizes": [int(s) for s in data.table_sizes],
            "splits": splits, "rows": rows, "positives": positives,
            "vocab_mode": "generated", "rows_read": done, "rows_written": done,
            "rows_skipped": 0, "skip_reasons": {}, "skipped_examples": [],
            "source": _describe(data),
        }
        write_metadata(build.path, metadata)
        build.publish()
    return metadata


def _describe(data: Any) -> dict[str, Any]:
    """The source's spec, or its class name when it has none (in-memory sources)."""
    try:
        return data.spec()
    except (ValueError, NotImplementedError):
        return {"kind": type(data).__name__}
