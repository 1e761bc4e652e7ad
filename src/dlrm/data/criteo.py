"""Criteo Kaggle / Terabyte preprocessing: raw TSV -> memory-mapped arrays (``dlrm.data.format``).

The raw format: one sample per line, tab-separated, ``label I1..I13 C1..C26`` (40 fields; the
Kaggle ``test.txt`` has 39, no label). Integers may be empty or negative; categoricals are
8 hex digits or empty.

How it is fast and bounded in memory:

- The file is read in byte blocks cut at newlines (``chunk_bytes``, default 16 MiB; ``.gz``
  decompressed as a stream). Each block is parsed by pyarrow's C++ CSV reader in a thread pool
  (``workers``, default 2) -- no Python loop over lines -- and the results are appended in
  order to ``.npy`` files. Peak memory is a few blocks, whatever the input size.
- Line numbers come from one vectorized scan of the block for newlines and tabs, which also
  finds lines with the wrong number of fields; values that do not parse (text in an integer
  field, a categorical that is not 8 hex digits, a label other than 0/1) are found by
  vectorized checks. Bad lines are skipped and counted (or, with ``strict``, raise
  ``BadLineError`` naming file:line); rows read = rows written + rows skipped, always.
- Hex categoricals are decoded with 64-bit SWAR arithmetic in numpy.

Vocabulary modes (ids per column; id 0 is always the empty value):

- ``exact``: every distinct value its own id, ``1 + rank`` in ascending hex order; table size
  = distinct non-empty values + 1. A value never seen (only at predict time) maps to 0.
- ``min-count``: values seen at least ``min_count`` times get ``2 + rank``; rarer values, and
  unseen ones, share id 1; table size = kept values + 2.
- ``hash``: ``1 + value % hash_buckets``; table size ``hash_buckets + 1``; one pass, no
  vocabulary to store (MLPerf uses 40,000,000 buckets).

Counts for ``exact``/``min-count`` are taken over every row read (all splits), as the reference
does. Their memory grows with the number of distinct values (about 12 bytes each), not rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dlrm.data.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NpyAppender,
    npy_file_size,
    open_array,
    part_dir,
    write_metadata,
)

log = logging.getLogger(__name__)

NUM_DENSE = 13
NUM_SPARSE = 26
FIELDS_WITH_LABEL = 1 + NUM_DENSE + NUM_SPARSE  # Kaggle train.txt, Terabyte day_N
FIELDS_WITHOUT_LABEL = NUM_DENSE + NUM_SPARSE  # Kaggle test.txt
DENSE_NAMES = [f"I{k}" for k in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{k}" for k in range(1, NUM_SPARSE + 1)]
EMPTY_ID = 0
RARE_ID = 1  # min-count mode: rare and unseen values
MAX_SKIP_EXAMPLES = 10
DEFAULT_CHUNK_BYTES = 16 << 20
TERABYTE_DAYS = 24

ProgressFn = Callable[[int, int], None]


class BadLineError(ValueError):
    """A bad input line in ``strict`` mode; the message names ``file:line`` and the reason."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


def _tool_version() -> str:
    from dlrm import __version__

    return __version__


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------- skip bookkeeping
@dataclass
class SkipLog:
    """Counts of skipped lines by reason, with the first few as (file, line, reason)."""

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, source: str, lines: np.ndarray, kind: str, reasons: list[str]) -> None:
        """Record skipped 1-based ``lines``; ``reasons[i]`` describes ``lines[i]`` (may be
        shorter: only the first few are kept as examples)."""
        self.count += len(lines)
        self.reasons[kind] += len(lines)
        for line, reason in zip(lines[: MAX_SKIP_EXAMPLES], reasons, strict=False):
            if len(self.examples) < MAX_SKIP_EXAMPLES:
                self.examples.append({"file": source, "line": int(line), "reason": reason})

    def merge(self, other: SkipLog) -> None:
        self.count += other.count
        self.reasons.update(other.reasons)
        for ex in other.examples:
            if len(self.examples) < MAX_SKIP_EXAMPLES:
                self.examples.append(ex)

    def to_dict(self) -> dict[str, Any]:
        return {"rows_skipped": self.count, "skip_reasons": dict(self.reasons),
                "skipped_examples": list(self.examples)}


# --------------------------------------------------------------------------- reading blocks
class BlockReader:
    """Iterate over a plain or gzip file in blocks that end at a newline.

    Yields ``(block, bytes_done)``: ``block`` is a bytes-like object (a memoryview into a
    fresh buffer for plain files: no copy), ``bytes_done`` counts bytes of the file as stored
    (so a progress bar over a ``.gz`` tracks the compressed size). Line numbering is left to
    the consumer (it adds up ``ParsedBlock.lines_read``), which keeps this loop -- the only
    serial part of preprocessing -- to reading. After iteration, ``truncated`` is True when a
    gzip stream ended early; its incomplete last line is then in ``partial_tail`` (not
    yielded), since a cut-off line must not be read as a short valid row.
    """

    def __init__(self, path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.path = Path(path)
        self.chunk_bytes = int(chunk_bytes)
        self.total_bytes = self.path.stat().st_size
        self.truncated = False
        self.partial_tail = b""

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        with open(self.path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if gzipped:
                yield from self._gzip_blocks(f)
            else:
                yield from self._plain_blocks(f)

    def _plain_blocks(self, f: Any) -> Iterator[tuple[Any, int]]:
        carry = b""
        while True:
            buf = bytearray(len(carry) + self.chunk_bytes)
            buf[: len(carry)] = carry
            got = f.readinto(memoryview(buf)[len(carry):])
            size = len(carry) + got
            if got == 0:
                break
            cut = buf.rfind(b"\n", 0, size) + 1
            if cut == 0:  # no newline yet (a line longer than a chunk): read on
                carry = bytes(buf[:size])
                continue
            yield memoryview(buf)[:cut], f.tell()
            carry = bytes(buf[cut:size])
        if carry:
            yield carry, f.tell()

    def _gzip_blocks(self, f: Any) -> Iterator[tuple[Any, int]]:
        decomp = zlib.decompressobj(wbits=47)
        pending: list[bytes] = []
        pending_size = 0
        while True:
            raw = f.read(1 << 22)
            if not raw:
                break
            data = decomp.decompress(raw)
            # Concatenated gzip members: start a new decompressor on the leftover bytes.
            while decomp.eof and decomp.unused_data:
                rest = decomp.unused_data
                decomp = zlib.decompressobj(wbits=47)
                data += decomp.decompress(rest)
            pending.append(data)
            pending_size += len(data)
            if pending_size >= self.chunk_bytes:
                joined = b"".join(pending)
                cut = joined.rfind(b"\n") + 1
                if cut:
                    yield joined[:cut], f.tell()
                    pending, pending_size = [joined[cut:]], len(joined) - cut
        pending.append(decomp.flush())
        joined = b"".join(pending)
        if not decomp.eof:
            self.truncated = True
            cut = joined.rfind(b"\n") + 1
            joined, self.partial_tail = joined[:cut], joined[cut:]
        if joined:
            yield joined, f.tell()


# --------------------------------------------------------------------------- parsing
_U64 = np.uint64


_ONES = _U64(0x0101010101010101)
_HIGH = _U64(0x8080808080808080)


def _all_hex_digits(words: np.ndarray) -> np.ndarray:
    """For uint64 words of 8 ASCII bytes: True where every byte is 0-9, a-f or A-F (SWAR byte
    range tests, no table lookups)."""
    low7 = words & _U64(0x7F7F7F7F7F7F7F7F)

    def between(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        # High bit of each byte set iff lo <= byte <= hi (bytes < 0x80: sums cannot carry).
        return (x + _ONES * _U64(0x80 - lo)) & ~(x + _ONES * _U64(0x7F - hi)) & _HIGH

    ok = between(low7, 0x30, 0x39) | between(low7 | _U64(0x2020202020202020), 0x61, 0x66)
    return (ok & ~words) == _HIGH  # ~words: a byte >= 0x80 is never a hex digit


def decode_hex8(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a binary column of 8-hex-digit strings without a Python loop.

    Returns ``(values uint32, empty bool, bad bool)``: empty marks "" (a legal missing value),
    bad marks anything else that is not exactly 8 hex digits (its value is 0).
    """
    n = len(column)
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=n + 1, offset=column.offset * 4)
    data = (np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None
            else np.zeros(0, np.uint8))
    lengths = np.diff(offsets)
    empty = lengths == 0
    full = lengths == 8
    bad = ~(empty | full)
    if data.size < 8 or not full.any():
        return np.zeros(n, dtype=np.uint32), empty, bad
    # One unaligned 8-byte load per value: a uint64 view of the data at every byte offset.
    words = np.ndarray((data.size - 7,), dtype="<u8", buffer=data, strides=(1,))
    v = words[np.minimum(offsets[:-1], data.size - 8)]
    bad |= full & ~_all_hex_digits(v)
    # Byte i (the i-th character; least significant) -> its nibble: '0'-'9' keep the low 4
    # bits, letters (bit 6 set) add 9 ('a' = 0x61 -> 1 + 9 = 10).
    v = (v & _U64(0x0F0F0F0F0F0F0F0F)) + _U64(9) * ((v >> _U64(6)) & _ONES)
    # Pack the 8 nibbles big-endian (first character most significant).
    v = ((v & _U64(0x00FF00FF00FF00FF)) << _U64(4)) | ((v >> _U64(8)) & _U64(0x00FF00FF00FF00FF))
    v = ((v & _U64(0x0000FFFF0000FFFF)) << _U64(8)) | ((v >> _U64(16)) & _U64(0x0000FFFF0000FFFF))
    v = ((v & _U64(0xFFFFFFFF)) << _U64(16)) | (v >> _U64(32))
    return np.where(full & ~bad, v, _U64(0)).astype(np.uint32), empty, bad


def dense_transform(raw: np.ndarray) -> np.ndarray:
    """The reference's dense transform: negative -> 0, then log(1 + x), as float32."""
    return np.log1p(np.maximum(raw, 0).astype(np.float64)).astype(np.float32)


@dataclass
class ParsedBlock:
    """The good rows of one block, and the bad lines' bookkeeping."""

    lines_read: int
    line_numbers: np.ndarray  # (n,) 1-based line numbers of the good rows
    labels: np.ndarray | None  # (n,) uint8
    dense: np.ndarray  # (n, 13) float32, transformed
    cat_values: np.ndarray  # (26, n) uint32 raw hex values, feature-major (contiguous columns)
    cat_empty: np.ndarray  # (26, n) bool
    skips: SkipLog
    encoded: Any = None  # filled by the worker: hashed ids or per-column value counts


_INT_PATTERN = r"^-?[0-9]{1,18}$"


def _column_names(has_label: bool) -> list[str]:
    return (["label"] if has_label else []) + DENSE_NAMES + SPARSE_NAMES


def _read_table(block: bytes, has_label: bool, typed: bool,
                invalid_rows: list[int] | None = None) -> pa.Table:
    names = _column_names(has_label)
    if typed:
        types = {name: pa.int64() for name in DENSE_NAMES}
        if has_label:
            types["label"] = pa.int8()
    else:
        types = {name: pa.binary() for name in names if not name.startswith("C")}
    types.update({name: pa.binary() for name in SPARSE_NAMES})
    return pacsv.read_csv(
        pa.py_buffer(block),
        read_options=pacsv.ReadOptions(use_threads=False, column_names=names,
                                       block_size=max(len(block) + 1, 1 << 20)),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                          ignore_empty_lines=True,
                                          invalid_row_handler=_skip_and_count(invalid_rows)),
        convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""],
                                             strings_can_be_null=False, check_utf8=False,
                                             quoted_strings_can_be_null=False),
    )


def _skip_and_count(counter: list[int] | None) -> Callable[[Any], str]:
    def handler(row: Any) -> str:
        if counter is not None:
            counter.append(1)
        return "skip"
    return handler


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def parse_block(block: bytes, first_line: int, source: str, has_label: bool = True,
                strict: bool = False) -> ParsedBlock:
    """Parse a block of whole lines; ``first_line`` is the 0-based index of its first line.

    Lines with the wrong number of fields, a label other than 0/1, text in an integer field or
    a categorical that is not 8 hex digits are skipped and recorded (``strict``: the first one
    raises ``BadLineError``).
    """
    expected = FIELDS_WITH_LABEL if has_label else FIELDS_WITHOUT_LABEL
    buf = np.frombuffer(block, dtype=np.uint8)
    n_lines = int(np.count_nonzero(buf == 10)) + (1 if buf.size and buf[-1] != 10 else 0)
    invalid_rows: list[int] = []
    try:
        table = _read_table(block, has_label, True, invalid_rows)
        typed = True
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        invalid_rows.clear()
        table = _read_table(block, has_label, False, invalid_rows)
        typed = False
    skips = SkipLog()
    bad_events: list[tuple[int, str, str]] = []  # (line, kind, reason) for strict mode
    if not invalid_rows and np.count_nonzero(buf == 9) == (expected - 1) * n_lines:
        # Every line has the right number of fields: no per-line scan needed. (An empty line,
        # which the reader drops silently, would make the tab total come out short.)
        good_lines = np.arange(first_line + 1, first_line + 1 + n_lines)
    else:
        ends = np.flatnonzero(buf == 10)
        if buf.size and buf[-1] != 10:
            ends = np.append(ends, buf.size)
        tabs_before_end = np.searchsorted(np.flatnonzero(buf == 9), ends)
        fields = np.diff(tabs_before_end, prepend=0) + 1
        good_shape = fields == expected
        good_lines = first_line + 1 + np.flatnonzero(good_shape)
        bad_shape_lines = first_line + 1 + np.flatnonzero(~good_shape)
        if bad_shape_lines.size:
            idx = np.flatnonzero(~good_shape)[:MAX_SKIP_EXAMPLES]
            starts = np.concatenate([[0], ends[:-1] + 1])
            reasons = [f"{fields[i]} fields, expected {expected}"
                       if bytes(block[starts[i]:ends[i]]).strip(b"\r") else "empty line"
                       for i in idx]
            skips.add(source, bad_shape_lines, "wrong number of fields", reasons)
            bad_events.append((int(bad_shape_lines[0]), "wrong number of fields", reasons[0]))
    if table.num_rows != good_lines.size:
        raise ValueError(f"{source}:{first_line + 1}: the CSV reader found {table.num_rows} "
                         f"rows in a block of {n_lines} lines where {good_lines.size} have "
                         f"{expected} fields (a lone carriage return inside a line?)")
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    kinds: list[tuple[np.ndarray, str, Callable[[int], str]]] = []

    labels = None
    if has_label:
        col = _column(table, "label")
        if typed:
            lab = pc.fill_null(col, -1).to_numpy()
            bad_label = (lab != 0) & (lab != 1)
        else:
            bad_label = ~pc.match_substring_regex(col, r"^[01]$").to_numpy(zero_copy_only=False)
            lab = (pc.equal(col, pa.scalar(b"1", pa.binary()))
                   .to_numpy(zero_copy_only=False).astype(np.int8))
        labels = np.where(bad_label, 0, lab).astype(np.uint8)
        kinds.append((bad_label, "label is not 0 or 1",
                      lambda i, c=col: f"label {c[i].as_py()!r} is not 0 or 1"))
        bad |= bad_label

    raw_dense = np.zeros((n, NUM_DENSE), dtype=np.int64)
    for k, name in enumerate(DENSE_NAMES):
        col = _column(table, name)
        if typed:
            raw_dense[:, k] = pc.fill_null(col, 0).to_numpy()
            continue
        is_int = pc.match_substring_regex(col, _INT_PATTERN).to_numpy(zero_copy_only=False)
        is_empty = (pc.binary_length(col).to_numpy(zero_copy_only=False) == 0)
        bad_int = ~(is_int | is_empty)
        safe = pc.if_else(pa.array(is_int), col, pa.scalar(b"0", pa.binary()))
        raw_dense[:, k] = pc.cast(pc.cast(safe, pa.string()), pa.int64()).to_numpy()
        kinds.append((bad_int, "not an integer",
                      lambda i, c=col, nm=name: f"{nm}={c[i].as_py()!r} is not an integer"))
        bad |= bad_int

    cat_values = np.empty((NUM_SPARSE, n), dtype=np.uint32)
    cat_empty = np.empty((NUM_SPARSE, n), dtype=bool)
    for k, name in enumerate(SPARSE_NAMES):
        col = _column(table, name)
        values, empty, bad_hex = decode_hex8(col)
        cat_values[k] = values
        cat_empty[k] = empty
        if bad_hex.any():
            kinds.append((bad_hex, "categorical is not 8 hex digits",
                          lambda i, c=col, nm=name:
                          f"{nm}={c[i].as_py()!r} is not 8 hex digits"))
            bad |= bad_hex

    if bad.any():
        taken = np.zeros(n, dtype=bool)
        for mask, kind, describe in kinds:
            mine = mask & ~taken
            if not mine.any():
                continue
            taken |= mine
            rows = np.flatnonzero(mine)
            reasons = [describe(int(i)) for i in rows[:MAX_SKIP_EXAMPLES]]
            skips.add(source, good_lines[rows], kind, reasons)
            bad_events.append((int(good_lines[rows[0]]), kind, reasons[0]))
        keep = ~bad
        good_lines = good_lines[keep]
        labels = labels[keep] if labels is not None else None
        raw_dense, cat_values, cat_empty = (raw_dense[keep], cat_values[:, keep],
                                             cat_empty[:, keep])
    if strict and bad_events:
        line, _, reason = min(bad_events)
        raise BadLineError(source, line, reason)
    return ParsedBlock(n_lines, good_lines, labels, dense_transform(raw_dense), cat_values,
                       cat_empty, skips)


def _in_order(future: Any, lines_before: int) -> ParsedBlock:
    """A worker's block parsed with line numbers relative to the block, made absolute now
    that the lines of every earlier block are known."""
    try:
        parsed = future.result()
    except BadLineError as err:
        raise BadLineError(err.source, err.line + lines_before, err.reason) from None
    parsed.line_numbers += lines_before
    for example in parsed.skips.examples:
        example["line"] += lines_before
    return parsed


# --------------------------------------------------------------------------- vocabularies
class _ValueCounter:
    """Distinct uint32 values of one column with their counts, merged lazily from chunks."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=np.uint32)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, values: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((values, counts))
        self._pending_size += values.size
        if self._pending_size > max(1 << 22, self.values.size):
            self.merge()

    def merge(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self.values] + [v for v, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self._pending, self._pending_size = [], 0
        self.values, inverse = np.unique(values, return_inverse=True)
        self.counts = np.bincount(inverse.reshape(-1), weights=counts,
                                  minlength=self.values.size).astype(np.int64)


def _block_value_counts(cat_values: np.ndarray, cat_empty: np.ndarray
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for k in range(NUM_SPARSE):
        values, counts = np.unique(cat_values[k][~cat_empty[k]], return_counts=True)
        out.append((values, counts.astype(np.int64)))
    return out


@dataclass
class Vocabulary:
    """How raw categorical values become ids (see the module docstring for the id layout)."""

    mode: str  # "exact" | "min-count" | "hash"
    hash_buckets: int | None = None
    min_count: int | None = None
    kept: list[np.ndarray] | None = None  # sorted uint32 values per column (not for "hash")

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "min-count", "hash"):
            raise ValueError(f"vocab mode {self.mode!r}: expected exact, min-count or hash")
        if self.mode == "hash" and not (self.hash_buckets and 0 < self.hash_buckets < 2**31 - 1):
            raise ValueError(f"hash_buckets={self.hash_buckets}: need 1 <= N < 2**31 - 1")
        if self.mode == "min-count" and not (self.min_count and self.min_count >= 1):
            raise ValueError(f"min_count={self.min_count}: need an integer >= 1")

    @property
    def first_value_id(self) -> int:
        return 2 if self.mode == "min-count" else 1

    @property
    def unseen_id(self) -> int:
        return RARE_ID if self.mode == "min-count" else EMPTY_ID

    def table_sizes(self) -> list[int]:
        if self.mode == "hash":
            return [int(self.hash_buckets) + 1] * NUM_SPARSE
        assert self.kept is not None
        return [int(k.size) + self.first_value_id for k in self.kept]

    def encode(self, values: np.ndarray, empty: np.ndarray,
               pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, int]:
        """Map raw feature-major (26, n) uint32 values to row-major (n, 26) int32 ids; returns
        ``(ids, unseen_count)`` (values absent from the vocabulary: rare ones in min-count
        mode, or new at predict). Each column is a contiguous array (the feature-major input);
        the one transposition happens at the end. With a thread pool the columns are encoded
        in parallel (the lookups release the GIL).
        """
        ids_t = np.empty(values.shape, dtype=np.int32)

        def one(k: int) -> int:
            ids_t[k], unseen = self._encode_column(k, values[k], empty[k])
            return unseen

        columns = range(values.shape[0])
        unseen = sum(pool.map(one, columns) if pool is not None else map(one, columns))
        return np.ascontiguousarray(ids_t.T), int(unseen)

    def _encode_column(self, k: int, column: np.ndarray, empty: np.ndarray
                       ) -> tuple[np.ndarray, int]:
        if self.mode == "hash":
            ids = (column % np.uint32(self.hash_buckets)).astype(np.int32) + 1
            ids *= ~empty
            return ids, 0
        kept = self.kept[k]  # type: ignore[index]
        if kept.size <= 4 * column.size:
            # A C++ hash-set lookup: several times faster than a binary search while the
            # vocabulary is not much larger than the chunk (the set is rebuilt per call).
            rank = pc.fill_null(pc.index_in(column, value_set=pa.array(kept)), -1).to_numpy()
        else:
            rank = np.searchsorted(kept, column).astype(np.int32)
            found = kept[np.minimum(rank, kept.size - 1)] == column
            rank[~found] = -1
        # Rank -1 (not kept) lands on the unseen id: 0 for exact, 1 (rare) for min-count.
        ids = rank.astype(np.int32, copy=False) + np.int32(self.first_value_id)
        unseen = int(np.count_nonzero(rank < 0)) - int(np.count_nonzero(empty & (rank < 0)))
        ids *= ~empty
        return ids, unseen

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_mode": self.mode, "hash_buckets": self.hash_buckets,
                "min_count": self.min_count}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if self.kept is not None:
            for name, kept in zip(SPARSE_NAMES, self.kept, strict=True):
                np.save(folder / f"{name}.npy", kept)

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        folder = Path(folder)
        spec = json.loads((folder / "vocab.json").read_text())
        kept = None
        if spec["vocab_mode"] != "hash":
            kept = [np.load(folder / f"{name}.npy") for name in SPARSE_NAMES]
        return cls(spec["vocab_mode"], spec.get("hash_buckets"), spec.get("min_count"), kept)

    @classmethod
    def from_counts(cls, mode: str, counters: list[_ValueCounter], min_count: int | None = None
                    ) -> Vocabulary:
        kept = []
        for counter in counters:
            counter.merge()
            if mode == "min-count":
                kept.append(counter.values[counter.counts >= int(min_count or 1)])
            else:
                kept.append(counter.values)
        return cls(mode, None, min_count, kept)


def make_vocab_mode(hash_buckets: int | None, min_count: int | None) -> str:
    if hash_buckets and min_count:
        raise ValueError("choose one of hash_buckets and min_count, not both")
    return "hash" if hash_buckets else "min-count" if min_count else "exact"


# --------------------------------------------------------------------------- staging one file
_STAGE_MARK = "stage.json"


@dataclass
class StageResult:
    """One raw file turned into a part (``parts/<name>``), with its counts."""

    name: str
    input_name: str
    input_size: int
    rows_read: int
    rows_written: int
    positives: int
    skips: SkipLog
    truncated: bool
    seconds: float
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.name, "name": self.input_name, "size": self.input_size,
                "rows_read": self.rows_read, "rows_written": self.rows_written,
                "positives": self.positives, "truncated_gzip": self.truncated,
                "seconds": round(self.seconds, 3), **self.skips.to_dict()}


def _input_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stage_is_complete(folder: Path, fingerprint: dict[str, Any], settings: dict[str, Any]
                       ) -> dict[str, Any] | None:
    """The stage record if ``folder`` holds a finished, size-checked stage of this input."""
    mark = folder / _STAGE_MARK
    if not mark.is_file():
        return None
    try:
        record = json.loads(mark.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("input") != fingerprint or record.get("settings") != settings:
        return None
    rows = int(record["rows_written"])
    if settings["vocab_mode"] != "hash" and not (folder / "value_counts.npz").is_file():
        return None
    for fname, dtype, shape in _stage_files(settings["vocab_mode"], rows):
        path = folder / fname
        if not path.is_file() or path.stat().st_size != npy_file_size(dtype, shape):
            return None
    return record


def _stage_files(mode: str, rows: int) -> list[tuple[str, Any, tuple[int, ...]]]:
    files = [("labels.npy", np.uint8, (rows,)), ("dense.npy", np.float32, (rows, NUM_DENSE))]
    if mode == "hash":
        files.append(("sparse.npy", np.int32, (rows, NUM_SPARSE)))
    else:
        files += [(f"raw_{name}.npy", np.uint32, (rows,)) for name in SPARSE_NAMES]
        files += [(f"empty_{name}.npy", np.bool_, (rows,)) for name in SPARSE_NAMES]
    return [f for f in files if f[1] is not None]


def stage_file(path: str | Path, folder: str | Path, vocab_mode: str,
               hash_buckets: int | None = None, strict: bool = False, workers: int = 2,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: ProgressFn | None = None,
               resume: bool = False) -> StageResult:
    """Parse one raw file (40 fields) into ``folder``: labels.npy, dense.npy, and either
    sparse.npy (hash mode) or raw_C*.npy + empty_C*.npy + value_counts.npz (exact and
    min-count modes, mapped to ids once the vocabulary over all inputs is known).

    With ``resume``, a folder already holding a verified stage of the same input (name, size,
    mtime) and settings is reused; ``stage.json`` is written last, so an interrupted stage is
    redone.
    """
    path, folder = Path(path), Path(folder)
    fingerprint = _input_fingerprint(path)
    settings = {"vocab_mode": vocab_mode, "hash_buckets": hash_buckets,
                "format_version": FORMAT_VERSION}
    if resume:
        record = _stage_is_complete(folder, fingerprint, settings)
        if record is not None:
            skips = SkipLog(record["rows_skipped"], Counter(record["skip_reasons"]),
                            record["skipped_examples"])
            log.info("%s: already staged in %s, reusing it", path, folder)
            if progress:
                progress(fingerprint["size"], fingerprint["size"])
            return StageResult(folder.name, path.name, fingerprint["size"], record["rows_read"],
                               record["rows_written"], record["positives"], skips,
                               record["truncated_gzip"], 0.0, reused=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    source = str(path)
    hashing = vocab_mode == "hash"
    vocab = Vocabulary("hash", hash_buckets) if hashing else None
    reader = BlockReader(path, chunk_bytes)

    def work(block: bytes) -> ParsedBlock:
        parsed = parse_block(block, 0, source, has_label=True, strict=strict)
        if hashing:
            parsed.encoded, _ = vocab.encode(parsed.cat_values, parsed.cat_empty)  # type: ignore[union-attr]
        else:
            parsed.encoded = _block_value_counts(parsed.cat_values, parsed.cat_empty)
        return parsed

    labels_out = NpyAppender(folder / "labels.npy", np.uint8)
    dense_out = NpyAppender(folder / "dense.npy", np.float32, (NUM_DENSE,))
    if hashing:
        sparse_out = NpyAppender(folder / "sparse.npy", np.int32, (NUM_SPARSE,))
    else:
        # One file per column: the worker's feature-major arrays are written without a
        # transposition, and the mapping pass reads each column contiguously.
        values_out = [NpyAppender(folder / f"raw_{name}.npy", np.uint32) for name in SPARSE_NAMES]
        empty_out = [NpyAppender(folder / f"empty_{name}.npy", np.bool_) for name in SPARSE_NAMES]
        counters = [_ValueCounter() for _ in range(NUM_SPARSE)]
    skips = SkipLog()
    rows_read = rows_written = positives = 0

    def consume(future: Any, done: int) -> None:
        nonlocal rows_read, rows_written, positives
        parsed = _in_order(future, rows_read)
        rows_read += parsed.lines_read
        rows_written += parsed.labels.shape[0]  # type: ignore[union-attr]
        positives += int(parsed.labels.sum())  # type: ignore[union-attr]
        skips.merge(parsed.skips)
        labels_out.append(parsed.labels)  # type: ignore[arg-type]
        dense_out.append(parsed.dense)
        if hashing:
            sparse_out.append(parsed.encoded)
        else:
            for k in range(NUM_SPARSE):
                values_out[k].append(parsed.cat_values[k])
                empty_out[k].append(parsed.cat_empty[k])
            for counter, (values, counts) in zip(counters, parsed.encoded, strict=True):
                counter.add(values, counts)
        if progress:
            progress(done, reader.total_bytes)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending: deque = deque()
            for block, done in reader:
                pending.append((pool.submit(work, block), done))
                while len(pending) > 2 * max(1, workers):
                    consume(*pending.popleft())
            while pending:
                consume(*pending.popleft())
    finally:
        appenders = [labels_out, dense_out] + ([sparse_out] if hashing else values_out
                                               + empty_out)
        for appender in appenders:
            appender.close()
    if reader.truncated:
        if strict:
            raise BadLineError(source, rows_read + 1, "gzip stream is truncated (the file ends "
                               "before the end-of-stream marker)")
        log.warning("%s: gzip stream is truncated; rows up to line %d kept", source,
                    rows_read)
        if reader.partial_tail:
            skips.add(source, np.array([rows_read + 1]), "truncated gzip stream",
                      ["incomplete last line of a truncated gzip stream"])
            rows_read += 1
    if rows_read != rows_written + skips.count:
        raise AssertionError(f"{source}: {rows_read} rows read but {rows_written} written and "
                             f"{skips.count} skipped")
    if not hashing:
        arrays = {}
        for k, counter in enumerate(counters):
            counter.merge()
            arrays[f"values_{k}"], arrays[f"counts_{k}"] = counter.values, counter.counts
        np.savez(folder / "value_counts.npz", **arrays)
    result = StageResult(folder.name, path.name, fingerprint["size"], rows_read, rows_written,
                         positives, skips, reader.truncated, time.perf_counter() - start)
    record = {"input": fingerprint, "settings": settings, **result.to_dict()}
    (folder / _STAGE_MARK).write_text(json.dumps(record, indent=2) + "\n")
    return result


def _load_counters(folders: list[Path]) -> list[_ValueCounter]:
    counters = [_ValueCounter() for _ in range(NUM_SPARSE)]
    for folder in folders:
        with np.load(folder / "value_counts.npz") as saved:
            for k, counter in enumerate(counters):
                counter.add(saved[f"values_{k}"], saved[f"counts_{k}"])
    for counter in counters:
        counter.merge()
    return counters


def _vocab_fingerprint(vocab: Vocabulary) -> str:
    import hashlib

    digest = hashlib.sha256(json.dumps(vocab.to_dict(), sort_keys=True).encode())
    for kept in vocab.kept or []:
        digest.update(kept.tobytes())
    return digest.hexdigest()[:16]


def map_stage(folder: Path, vocab: Vocabulary, rows_per_chunk: int = 1 << 20,
              workers: int = 2) -> None:
    """Turn a staged part's raw categorical values into ``sparse.npy`` ids (resumable: skipped
    when ``mapped.json`` names the same vocabulary); the raw arrays are deleted afterwards."""
    mark = folder / "mapped.json"
    fingerprint = _vocab_fingerprint(vocab)
    if mark.is_file() and json.loads(mark.read_text()).get("vocab") == fingerprint:
        return
    values = [open_array(folder / f"raw_{name}.npy") for name in SPARSE_NAMES]
    empty = [open_array(folder / f"empty_{name}.npy") for name in SPARSE_NAMES]
    with NpyAppender(folder / "sparse.npy", np.int32, (NUM_SPARSE,)) as out, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, values[0].shape[0], rows_per_chunk):
            stop = start + rows_per_chunk
            ids, _ = vocab.encode(np.stack([v[start:stop] for v in values]),
                                  np.stack([e[start:stop] for e in empty]), pool)
            out.append(ids)
    mark.write_text(json.dumps({"vocab": fingerprint}) + "\n")


def _drop_raw(folder: Path) -> None:
    for name in SPARSE_NAMES:
        (folder / f"raw_{name}.npy").unlink(missing_ok=True)
        (folder / f"empty_{name}.npy").unlink(missing_ok=True)


# --------------------------------------------------------------------------- splits
def reference_split_sizes(rows: int, days: int = 7) -> dict[str, int]:
    """The reference Kaggle split: ``days`` consecutive parts (the first ``rows % days`` one
    row longer), all but the last for training; the last halved into test (first half, rounded
    up) and validation."""
    base, extra = divmod(rows, days)
    sizes = [base + (1 if j < extra else 0) for j in range(days)]
    last = sizes[-1]
    return {"train": sum(sizes[:-1]), "test": (last + 1) // 2, "val": last // 2}


def parse_random_split(spec: str) -> tuple[float, float, float]:
    """``"random:0.8,0.1,0.1"`` -> fractions for (train, val, test); they must sum to 1."""
    match = re.fullmatch(r"random:([0-9.]+),([0-9.]+),([0-9.]+)", spec.strip())
    if not match:
        raise ValueError(f"split {spec!r}: expected 'reference' or 'random:TRAIN,VAL,TEST' "
                         "fractions, e.g. random:0.8,0.1,0.1")
    fractions = tuple(float(x) for x in match.groups())
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split {spec!r}: fractions sum to {sum(fractions)}, not 1")
    return fractions  # type: ignore[return-value]


def uniform_hash(row_index: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic uniform [0, 1) number per row index (splitmix64 of seed and index), so
    a random split is streaming, needs no permutation in memory, and is reproducible."""
    with np.errstate(over="ignore"):
        z = row_index.astype(np.uint64) + _U64(seed & 0xFFFFFFFFFFFFFFFF) * _U64(
            0x9E3779B97F4A7C15) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        z = z ^ (z >> _U64(31))
    return (z >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _copy_rows(src: Path, dst: Path, rows_per_chunk: int, select: Callable[[int, int], Any]
               ) -> int:
    """Write into ``dst`` the rows of part ``src`` chosen by ``select(start, stop)`` for each
    chunk (a boolean mask or an index array relative to ``start``); returns rows written."""
    dst.mkdir(parents=True, exist_ok=True)
    arrays = {name: open_array(src / f"{name}.npy") for name in ("labels", "dense", "sparse")}
    outs = {"labels": NpyAppender(dst / "labels.npy", np.uint8),
            "dense": NpyAppender(dst / "dense.npy", np.float32, (NUM_DENSE,)),
            "sparse": NpyAppender(dst / "sparse.npy", np.int32, (NUM_SPARSE,))}
    total = arrays["labels"].shape[0]
    for start in range(0, total, rows_per_chunk):
        stop = min(start + rows_per_chunk, total)
        chosen = select(start, stop)
        for name, arr in arrays.items():
            outs[name].append(np.asarray(arr[start:stop])[chosen])
    for out in outs.values():
        out.close()
    return outs["labels"].rows


def _shuffle_part(src: Path, dst: Path, seed: int, rows_per_chunk: int = 1 << 20) -> None:
    """Write a seeded random permutation of part ``src`` into ``dst`` (8 bytes of RAM/row)."""
    dst.mkdir(parents=True, exist_ok=True)
    arrays = {name: open_array(src / f"{name}.npy") for name in ("labels", "dense", "sparse")}
    rows = arrays["labels"].shape[0]
    perm = np.random.default_rng(seed).permutation(rows)
    outs = {"labels": NpyAppender(dst / "labels.npy", np.uint8),
            "dense": NpyAppender(dst / "dense.npy", np.float32, (NUM_DENSE,)),
            "sparse": NpyAppender(dst / "sparse.npy", np.int32, (NUM_SPARSE,))}
    for start in range(0, rows, rows_per_chunk):
        wanted = perm[start:start + rows_per_chunk]
        order = np.argsort(wanted, kind="stable")
        for name, arr in arrays.items():
            gathered = np.empty((wanted.size, *arr.shape[1:]), dtype=arr.dtype)
            gathered[order] = arr[wanted[order]]  # sorted reads, then back to permuted order
            outs[name].append(gathered)
    for out in outs.values():
        out.close()


def _positives(root: Path, ranges: list[dict[str, Any]]) -> int:
    total = 0
    for r in ranges:
        labels = open_array(part_dir(root, r["part"]) / "labels.npy")
        for start in range(r["start"], r["stop"], 1 << 24):
            total += int(np.asarray(labels[start:min(start + (1 << 24), r["stop"])],
                                    dtype=np.int64).sum())
    return total


def _metadata(root: Path, dataset: str, vocab: Vocabulary, stages: list[StageResult],
              splits: dict[str, list[dict[str, Any]]], split_spec: str, seed: int,
              shuffle: bool, extra: dict[str, Any]) -> dict[str, Any]:
    skips = SkipLog()
    for stage in stages:
        skips.merge(stage.skips)
    rows = {name: sum(r["stop"] - r["start"] for r in ranges) for name, ranges in
            splits.items()}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tool": "dlrm",
        "tool_version": _tool_version(),
        "dataset": dataset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_dense": NUM_DENSE,
        "num_sparse": NUM_SPARSE,
        "dense_names": DENSE_NAMES,
        "sparse_names": SPARSE_NAMES,
        "table_sizes": vocab.table_sizes(),
        **vocab.to_dict(),
        "id_layout": {"empty": EMPTY_ID, "first_value": vocab.first_value_id,
                      "unseen": vocab.unseen_id},
        "dense_transform": "log(1 + max(x, 0)); empty -> 0",
        "arrays": {"labels": "uint8 (N,)", "dense": "float32 (N, 13)",
                   "sparse": "int32 (N, 26)"},
        "split": split_spec,
        "seed": seed,
        "shuffle": shuffle,
        "rows": rows,
        "positives": {name: _positives(root, ranges) for name, ranges in splits.items()},
        "rows_read": sum(s.rows_read for s in stages),
        "rows_written": sum(s.rows_written for s in stages),
        **skips.to_dict(),
        "inputs": [s.to_dict() for s in stages],
        "splits": splits,
        **extra,
    }


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").unlink(missing_ok=True)  # a half-finished folder is never "valid"


def _finish_vocab(out: Path, folders: list[Path], vocab_mode: str, hash_buckets: int | None,
                  min_count: int | None) -> Vocabulary:
    if vocab_mode == "hash":
        vocab = Vocabulary("hash", hash_buckets)
    else:
        vocab = Vocabulary.from_counts(vocab_mode, _load_counters(folders), min_count)
        for folder in folders:
            map_stage(folder, vocab)
    if (out / "vocab").exists():
        shutil.rmtree(out / "vocab")
    vocab.save(out / "vocab")
    return vocab


def preprocess_kaggle(input: str | Path, out: str | Path, *, hash_buckets: int | None = None,
                      min_count: int | None = None, split: str = "reference", seed: int = 0,
                      shuffle: bool = False, strict: bool = False, workers: int = 2,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      progress: ProgressFn | None = None) -> dict[str, Any]:
    """Preprocess a Criteo Kaggle ``train.txt`` (plain or .gz) into ``out``.

    Splits: ``"reference"`` (7 consecutive parts; 0-5 train, 6 halved test/val) or
    ``"random:TRAIN,VAL,TEST"`` (each row assigned by a seeded hash of its index). ``shuffle``
    permutes the training split on disk. Returns the metadata dict (also in metadata.json),
    with ``seconds`` and ``peak_rss_bytes`` added.
    """
    start = time.perf_counter()
    input, out = Path(input), Path(out)
    if not input.is_file():
        raise FileNotFoundError(f"{input}: no such file")
    vocab_mode = make_vocab_mode(hash_buckets, min_count)
    fractions = None if split == "reference" else parse_random_split(split)
    _prepare_out(out)
    if (out / "parts").exists():  # parts of an earlier run (another split) would linger
        shutil.rmtree(out / "parts")
    folder = part_dir(out, "all")
    stage = stage_file(input, folder, vocab_mode, hash_buckets, strict, workers, chunk_bytes,
                       progress)
    if stage.rows_written == 0:
        why = " - the file is empty" if stage.rows_read == 0 else ""
        raise ValueError(f"{input}: no rows to preprocess ({stage.rows_read} lines read, "
                         f"{stage.skips.count} skipped){why}")
    vocab = _finish_vocab(out, [folder], vocab_mode, hash_buckets, min_count)
    _drop_raw(folder)
    rows = stage.rows_written
    if fractions is None:
        sizes = reference_split_sizes(rows)
        bounds = np.cumsum([0, sizes["train"], sizes["test"], sizes["val"]])
        splits = {name: [{"part": "all", "start": int(bounds[j]), "stop": int(bounds[j + 1])}]
                  for j, name in enumerate(("train", "test", "val"))}
    else:
        edges = np.cumsum(fractions)[:-1]

        def chooser(which: int) -> Callable[[int, int], np.ndarray]:
            def select(a: int, b: int) -> np.ndarray:
                u = uniform_hash(np.arange(a, b), seed)
                return np.searchsorted(edges, u, side="right") == which
            return select

        splits = {}
        for which, name in enumerate(("train", "val", "test")):
            n = _copy_rows(folder, part_dir(out, name), 1 << 20, chooser(which))
            splits[name] = [{"part": name, "start": 0, "stop": n}]
    if shuffle:
        train = splits["train"][0]
        src = part_dir(out, train["part"])
        if train["part"] == "all":  # reference split: train is rows [0, n) of "all"
            n = train["stop"]
            _copy_rows(folder, part_dir(out, "train_ordered"), 1 << 20,
                       lambda a, b: slice(0, max(0, min(b, n) - a)))
            src = part_dir(out, "train_ordered")
        _shuffle_part(src, part_dir(out, "train_shuffled"), seed)
        shutil.rmtree(src)
        splits["train"] = [{"part": "train_shuffled", "start": 0,
                            "stop": int(splits["train"][0]["stop"] - splits["train"][0]["start"])}]
    if fractions is not None and folder.exists():
        shutil.rmtree(folder)
    meta = _metadata(out, "criteo-kaggle", vocab, [stage], splits, split, seed, shuffle, {})
    meta["seconds"] = round(time.perf_counter() - start, 3)
    meta["peak_rss_bytes"] = peak_rss_bytes()
    write_metadata(out, meta)
    return meta


def parse_days(spec: str | None) -> list[int]:
    """``"0-3,23"`` -> [0, 1, 2, 3, 23]; None -> all 24 days."""
    if not spec:
        return list(range(TERABYTE_DAYS))
    days: set[int] = set()
    for piece in spec.split(","):
        lo, _, hi = piece.strip().partition("-")
        first, last = int(lo), int(hi or lo)
        days.update(range(first, last + 1))
    bad = sorted(d for d in days if not 0 <= d < TERABYTE_DAYS)
    if bad:
        raise ValueError(f"days {bad}: Criteo Terabyte has days 0..{TERABYTE_DAYS - 1}")
    return sorted(days)


def find_day_files(folder: str | Path, days: list[int]) -> dict[int, Path]:
    """``day_N`` or ``day_N.gz`` for each wanted day; raises naming every missing day."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory (expected day_0 ... day_23)")
    found, missing = {}, []
    for day in days:
        for name in (f"day_{day}", f"day_{day}.gz"):
            if (folder / name).is_file():
                found[day] = folder / name
                break
        else:
            missing.append(day)
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing day files for days {missing} (expected day_N or day_N.gz); "
            "pass --days to preprocess a subset, e.g. --days 0-3,23")
    return found


def preprocess_terabyte(input: str | Path, out: str | Path, *, days: list[int] | None = None,
                        test_day: int = 23, hash_buckets: int | None = None,
                        min_count: int | None = None, strict: bool = False, workers: int = 2,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                        progress: ProgressFn | None = None) -> dict[str, Any]:
    """Preprocess Criteo Terabyte day files (``day_0`` ... ``day_23``, plain or .gz).

    Each day becomes one part (``parts/day_N``); days other than ``test_day`` form the training
    split, ``test_day`` is halved into test (first half, rounded up) and validation. Resumable:
    a rerun reuses every day already staged and verified (same input name, size and mtime,
    same settings, array sizes matching the recorded row count).
    """
    start = time.perf_counter()
    out = Path(out)
    days = list(range(TERABYTE_DAYS)) if days is None else sorted(days)
    files = find_day_files(input, days)
    vocab_mode = make_vocab_mode(hash_buckets, min_count)
    _prepare_out(out)
    total = sum(p.stat().st_size for p in files.values())
    done_before = 0
    stages: list[StageResult] = []
    for day in days:
        def day_progress(done: int, _total: int, base: int = done_before) -> None:
            if progress:
                progress(base + done, total)
        result = stage_file(files[day], part_dir(out, f"day_{day}"), vocab_mode, hash_buckets,
                            strict, workers, chunk_bytes, day_progress, resume=True)
        if result.rows_read == 0:
            log.warning("%s: empty file (0 lines)", files[day])
        stages.append(result)
        done_before += files[day].stat().st_size
    if sum(s.rows_written for s in stages) == 0:
        raise ValueError(f"{input}: no rows in any day file")
    folders = [part_dir(out, f"day_{d}") for d in days]
    vocab = _finish_vocab(out, folders, vocab_mode, hash_buckets, min_count)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "val": []}
    for day, stage in zip(days, stages, strict=True):
        n = stage.rows_written
        if day == test_day:
            half = (n + 1) // 2
            splits["test"].append({"part": f"day_{day}", "start": 0, "stop": half})
            splits["val"].append({"part": f"day_{day}", "start": half, "stop": n})
        else:
            splits["train"].append({"part": f"day_{day}", "start": 0, "stop": n})
    splits = {k: v for k, v in splits.items() if v}
    extra = {"days": days, "test_day": test_day,
             "reused_days": [d for d, s in zip(days, stages, strict=True) if s.reused]}
    meta = _metadata(out, "criteo-terabyte", vocab, stages, splits, "reference", 0, False, extra)
    meta["seconds"] = round(time.perf_counter() - start, 3)
    meta["peak_rss_bytes"] = peak_rss_bytes()
    write_metadata(out, meta)
    return meta


# --------------------------------------------------------------------------- raw rows (predict)
@dataclass
class RawRows:
    """Rows of a raw file mapped through a vocabulary (for ``dlrm predict`` / ``dlrm eval``)."""

    dense: np.ndarray  # (n, 13) float32
    ids: np.ndarray  # (n, 26) int32
    labels: np.ndarray | None  # (n,) uint8, None for the 39-field test format
    line_numbers: np.ndarray  # (n,) 1-based line of each row
    lines_read: int
    skips: SkipLog
    unseen_values: int  # categorical values not in the vocabulary

    @property
    def report(self) -> dict[str, Any]:
        return {"rows_read": self.lines_read, "rows_written": int(self.line_numbers.size),
                "unseen_values": self.unseen_values, **self.skips.to_dict()}


def detect_fields(path: str | Path) -> int:
    """Fields in the first non-empty line (40: labeled train format, 39: test format)."""
    reader = BlockReader(path, 1 << 16)
    for block, _ in reader:
        for line in bytes(block).split(b"\n"):
            if line.strip(b"\r"):
                return line.count(b"\t") + 1
    return FIELDS_WITH_LABEL


def parse_raw_file(path: str | Path, vocab: Vocabulary, *, has_label: bool | None = None,
                   strict: bool = False, workers: int = 2,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   progress: ProgressFn | None = None) -> RawRows:
    """Parse a whole raw file (40 fields with label, or 39 without; ``None``: detect from the
    first line) and map it through ``vocab``. Memory grows with the file (it returns arrays)."""
    path = Path(path)
    if has_label is None:
        fields = detect_fields(path)
        if fields not in (FIELDS_WITH_LABEL, FIELDS_WITHOUT_LABEL):
            raise ValueError(f"{path}:1: {fields} fields; expected 40 (label, I1-I13, C1-C26) "
                             "or 39 (no label)")
        has_label = fields == FIELDS_WITH_LABEL
    reader = BlockReader(path, chunk_bytes)
    parts: list[ParsedBlock] = []
    skips = SkipLog()
    lines = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [(pool.submit(parse_block, block, 0, str(path), has_label, strict), done)
                   for block, done in reader]
        for future, done in futures:
            parsed = _in_order(future, lines)
            lines += parsed.lines_read
            skips.merge(parsed.skips)
            parts.append(parsed)
            if progress:
                progress(done, reader.total_bytes)
    if reader.truncated:
        if strict:
            raise BadLineError(str(path), lines + 1, "gzip stream is truncated")
        if reader.partial_tail:
            skips.add(str(path), np.array([lines + 1]), "truncated gzip stream",
                      ["incomplete last line of a truncated gzip stream"])
            lines += 1

    def cat(name: str, shape: tuple[int, ...], dtype: Any, axis: int = 0) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return np.concatenate(arrays, axis=axis) if arrays else np.zeros(shape, dtype)

    values = cat("cat_values", (NUM_SPARSE, 0), np.uint32, axis=1)
    empty = cat("cat_empty", (NUM_SPARSE, 0), np.bool_, axis=1)
    ids, unseen = vocab.encode(values, empty)
    return RawRows(cat("dense", (0, NUM_DENSE), np.float32), ids,
                   cat("labels", (0,), np.uint8) if has_label else None,
                   cat("line_numbers", (0,), np.int64), lines, skips, unseen)


def file_summary(path: str | Path) -> dict[str, Any]:
    """Name and size of an input file, for reports."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "path": os.fspath(path)}
