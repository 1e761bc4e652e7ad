"""The on-disk format of a preprocessed data set: memory-mappable ``.npy`` arrays + metadata.json.

Layout (documented for users in docs/data-format.md)::

    OUT/
      metadata.json             rows / positives per split, table sizes, vocab mode, skips, inputs
      vocab/C01.npy ... C26.npy sorted uint32 raw values kept per column (exact and min-count)
      parts/<part>/labels.npy   (N,)     uint8   0 or 1
      parts/<part>/dense.npy    (N, 13)  float32 log(1 + max(x, 0)), empty -> 0
      parts/<part>/sparse.npy   (N, 26)  int32   ids, 0 <= id < table_sizes[f]

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
FORMAT_VERSION = 1
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
    """Memory-map one array read-only (an empty array stays a plain array: mmap needs bytes)."""
    arr = np.load(path, mmap_mode="r")
    return arr


@dataclass
class PartArrays:
    """The three arrays of one part, memory-mapped read-only."""

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


def part_dir(root: str | Path, part: str) -> Path:
    return Path(root) / "parts" / part


def open_part(root: str | Path, part: str) -> PartArrays:
    """Open ``parts/<part>/{labels,dense,sparse}.npy`` and check that their row counts agree."""
    folder = part_dir(root, part)
    arrays = {name: open_array(folder / f"{name}.npy") for name in ARRAY_NAMES}
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{folder}: arrays disagree on the row count: {counts}")
    return PartArrays(**arrays)


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
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta['format_version']} is newer than this "
                         f"tool reads ({FORMAT_VERSION}); upgrade dlrm")
    return meta


def write_data_source(data: Any, out: str | Path, batch_size: int = 65536,
                      progress: Any = None) -> dict[str, Any]:
    """Write every split of a one-hot ``DataSource`` as a preprocessed folder.

    Lets any generator (a data profile, the planted model) produce a folder that
    ``dlrm train --data`` and ``dlrm bench`` read like preprocessed Criteo.
    ``progress(rows_done, rows_total)`` is called after each batch. Returns the metadata.
    """
    out = Path(out)
    if (out / METADATA_FILE).exists():
        raise FileExistsError(f"{out} already holds a data set (metadata.json); choose a new --out")
    id_dtype = np.int32 if max(data.table_sizes) < 2**31 else np.int64
    splits: dict[str, list[dict[str, Any]]] = {}
    rows: dict[str, int] = {}
    positives: dict[str, int] = {}
    total = sum(data.num_samples(split) for split in data.splits())
    done = 0
    for split in data.splits():
        folder = part_dir(out, split)
        folder.mkdir(parents=True, exist_ok=True)
        count = clicks = 0
        with NpyAppender(folder / "labels.npy", np.uint8) as labels, \
                NpyAppender(folder / "dense.npy", np.float32, (data.num_dense,)) as dense, \
                NpyAppender(folder / "sparse.npy", id_dtype, (len(data.table_sizes),)) as sparse:
            for batch in data.batches(split, batch_size):
                if not batch.sparse.one_hot:
                    raise ValueError(f"split {split!r} has multi-hot bags; this format holds "
                                     f"one id per feature")
                n = len(batch)
                labels.append(batch.labels.numpy().astype(np.uint8))
                dense.append(batch.dense.numpy().astype(np.float32))
                sparse.append(batch.sparse.values.view(-1, n).t().numpy().astype(id_dtype))
                count += n
                clicks += int(batch.labels.sum())
                done += n
                if progress is not None:
                    progress(done, total)
        splits[split] = [{"part": split, "start": 0, "stop": count}]
        rows[split] = count
        positives[split] = clicks
    metadata = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "num_dense": data.num_dense,
        "num_sparse": len(data.table_sizes), "table_sizes": list(data.table_sizes),
        "splits": splits, "rows": rows, "positives": positives, "vocab_mode": "generated",
        "rows_skipped": 0, "skipped_examples": [], "source": _describe(data),
    }
    write_metadata(out, metadata)
    return metadata


def _describe(data: Any) -> dict[str, Any]:
    """The source's spec, or its class name when it has none (in-memory sources)."""
    try:
        return data.spec()
    except (ValueError, NotImplementedError):
        return {"kind": type(data).__name__}
