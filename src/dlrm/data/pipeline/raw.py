"""Raw rows through a data set's own schema and vocabulary (``dlrm predict``).

New rows are parsed with exactly the rules preprocessing used and mapped through the folder's
``vocab/``, so ids match the training data; values the vocabulary lacks get the unseen id.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlrm.data.pipeline.io import DEFAULT_CHUNK_BYTES, BlockReader
from dlrm.data.pipeline.metadata import BadLineError, DataError, SkipLog
from dlrm.data.pipeline.parse import RowParser
from dlrm.data.pipeline.schema import Schema
from dlrm.data.pipeline.vocabulary import Vocabulary


@dataclass
class RawRows:
    """Parsed rows mapped through a vocabulary."""

    dense: np.ndarray  # (n, num_dense) float32
    ids: np.ndarray  # (n, F) int32 (one-hot features)
    labels: np.ndarray | None  # (n,) uint8, None without a label column
    line_numbers: np.ndarray  # (n,) 1-based line of each row
    lines_read: int
    skips: SkipLog
    unseen_values: int

    @property
    def report(self) -> dict[str, Any]:
        return {"rows_read": self.lines_read, "rows_written": int(self.line_numbers.size),
                "unseen_values": self.unseen_values, **self.skips.to_dict()}


def first_line_fields(path: Path, delimiter: str) -> int:
    """Fields in the first non-empty line."""
    for block, _ in BlockReader(path, 1 << 16):
        for line in bytes(block).split(b"\n"):
            if line.strip(b"\r"):
                return line.count(delimiter.encode()) + 1
    return 0


def parse_raw_file(path: str | Path, schema: Schema, vocab: Vocabulary, *,
                   has_label: bool | None = None, strict: bool = False, workers: int = 2,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> RawRows:
    """Parse a whole text file of ``schema``'s rows (with or without the label column;
    ``None``: decided by the first line's field count) and map it through ``vocab``."""
    path = Path(path)
    if schema.reader != "text" or schema.header or any(c.multi_hot for c in schema.categorical):
        raise DataError(f"scoring raw files needs a headerless one-hot text schema; "
                        f"{schema.name} is not one")
    delimiter = schema.delimiter or "\t"
    names = schema.column_names or []
    if has_label is None:
        fields = first_line_fields(path, delimiter)
        if fields not in (len(names), len(names) - 1):
            raise DataError(f"{path}:1: {fields} fields; expected {len(names)} (with "
                            f"{schema.label['column']}) or {len(names) - 1} (without)")
        has_label = fields == len(names)
    if not has_label:
        schema = schema.without_label()
    parser = RowParser(schema)
    reader = BlockReader(path, chunk_bytes)
    skips = SkipLog()
    lines = 0
    parts = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(parser.parse_text, block, str(path), strict, delimiter)
                   for block, _ in reader]
        for future in futures:
            try:
                parsed = future.result()
            except BadLineError as err:
                raise BadLineError(err.source, err.line + lines, err.reason) from None
            parsed.line_numbers = parsed.line_numbers + lines
            parsed.skips.shift_lines(lines)
            lines += parsed.lines_read
            skips.merge(parsed.skips)
            parts.append(parsed)
    if reader.truncated:
        if strict:
            raise BadLineError(str(path), lines + 1, "gzip stream is truncated")
        if reader.partial_tail:
            skips.add(str(path), [lines + 1], "truncated gzip stream",
                      ["incomplete last line of a truncated gzip stream"])
            lines += 1
    num_dense = max(len(schema.dense), 1)
    dense = (np.concatenate([p.dense for p in parts]) if parts
             else np.zeros((0, num_dense), np.float32))
    line_numbers = (np.concatenate([p.line_numbers for p in parts]) if parts
                    else np.zeros(0, np.int64))
    labels = None
    if has_label:
        labels = (np.concatenate([p.labels for p in parts]) if parts
                  else np.zeros(0, np.uint8))
    ids = np.zeros((line_numbers.size, len(schema.categorical)), dtype=np.int32)
    unseen = 0
    start = 0
    for p in parts:
        for k in range(len(schema.categorical)):
            column_ids, missing = vocab.encode(k, p.categorical[k])
            ids[start:start + p.rows, k] = column_ids
            unseen += missing
        start += p.rows
    return RawRows(dense, ids, labels, line_numbers, lines, skips, unseen)
