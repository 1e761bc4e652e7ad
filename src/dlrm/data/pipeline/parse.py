"""Parse blocks of raw rows by a schema: every line judged on its own merits.

A block of text is cut into lines and fields by numpy (``tokenize``): a line ends at ``\\n``
(one ``\\r`` before it is dropped), fields are cut at the delimiter (outside ``"`` quotes
when the schema quotes; a value never spans lines). A line is skipped, with its kind, when
it is empty, holds a carriage return inside it, has an odd number of quotes, or has the
wrong number of fields; nothing about a line changes how another is read. Cells are then
converted column by column with fixed rules (``Converters`` below), each cell by itself:

- label: exactly ``0`` or ``1``; with a threshold, a number.
- ``int`` dense: an optional ``-`` and 1+ ASCII digits whose value fits int64 (8-digit
  groups decoded with 64-bit SWAR arithmetic; longer than 16 digits in Python); nothing else
  (no spaces, ``+``, ``0x``, exponents).
- ``float`` dense: a decimal number (optional surrounding spaces, sign, exponent) whose value
  is finite in float32; ``1e400`` or ``1e200`` are out of range, never infinities.
- ``hex32`` categorical: exactly 8 hex digits (SWAR range tests), or empty.
- ``string`` categorical: any text (valid UTF-8), with the schema's transform; empty is
  missing (id 0).

The first bad cell of a row (in schema order: label, dense, categorical) names the reason.
Parquet and joined tables (MovieLens) give their columns as Arrow arrays and are converted by
the same rules (``cells_from_arrow``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm.data.pipeline.metadata import MAX_SKIP_EXAMPLES, BadLineError, SkipLog
from dlrm.data.pipeline.schema import CategoricalColumn, Schema

_U64 = np.uint64
_ONES = _U64(0x0101010101010101)
_HIGH = _U64(0x8080808080808080)
_ZEROS = _U64(0x3030303030303030)
_ALL = _U64(0xFFFFFFFFFFFFFFFF)
_F32_MAX = float(np.finfo(np.float32).max)
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_PAD = 16  # bytes after a block so that 8-byte loads at any cell start stay inside


# --------------------------------------------------------------------------- cells
@dataclass
class Cells:
    """One column's cells: cell ``i`` is ``data[start[i]:end[i]]`` (``data`` has ``_PAD``
    spare bytes at its end)."""

    data: np.ndarray  # uint8
    start: np.ndarray  # int64
    end: np.ndarray  # int64

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def __len__(self) -> int:
        return int(self.start.size)

    def value(self, i: int) -> bytes:
        return self.data[int(self.start[i]):int(self.end[i])].tobytes()

    def words(self, at: np.ndarray | None = None) -> np.ndarray:
        """The 8 bytes at each cell start (or at ``at``) as little-endian uint64."""
        view = np.ndarray((self.data.size - 7,), dtype="<u8", buffer=self.data, strides=(1,))
        return view[self.start if at is None else at]

    def to_binary(self) -> pa.Array:
        """The cells as an Arrow binary array (one gather of their bytes)."""
        lengths = self.lengths
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total:
            index = np.repeat(self.start - offsets[:-1], lengths) + np.arange(total)
            data = self.data[index]
        else:
            data = np.zeros(0, np.uint8)
        return pa.LargeBinaryArray.from_buffers(pa.large_binary(), lengths.size,
                                                [None, pa.py_buffer(offsets),
                                                 pa.py_buffer(data)]).cast(pa.binary())


def padded(block: Any) -> np.ndarray:
    buf = np.empty(len(block) + _PAD, dtype=np.uint8)
    buf[:len(block)] = np.frombuffer(block, dtype=np.uint8)
    buf[len(block):] = 0
    return buf


def cells_from_arrow(column: pa.Array | pa.ChunkedArray) -> Cells:
    """Cells of a string/binary Arrow column (nulls become empty cells)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_binary(column.type)
            or pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)):
        column = pc.cast(column, pa.string())
    column = pc.fill_null(column, "") if column.null_count else column
    column = column.cast(pa.large_binary())
    n = len(column)
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=column.offset * 8)
    raw = (np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None
           else np.zeros(0, np.uint8))
    return Cells(padded(raw[:int(offsets[-1]) if n else 0]), offsets[:-1].astype(np.int64),
                 offsets[1:].astype(np.int64))


# --------------------------------------------------------------------------- lines
@dataclass
class Lines:
    """A tokenized block: the good lines' cells per column, and the bad lines."""

    lines_read: int
    good: np.ndarray  # (n,) 0-based index (within the block) of each good line
    columns: list[Cells]  # per wanted column, cells of the good lines
    bad_lines: list[tuple[np.ndarray, str, list[str]]]  # (0-based lines, kind, reasons)


def tokenize(block: Any, num_fields: int, wanted: list[int], delimiter: int = 9,
             quote: int | None = None) -> Lines:
    """Cut a block of whole lines into fields (see the module docstring for the rules)."""
    buf = padded(block)
    size = len(block)
    body = buf[:size]
    if size == 0:
        return Lines(0, np.zeros(0, np.int64), [Cells(buf, np.zeros(0, np.int64),
                                                      np.zeros(0, np.int64)) for _ in wanted], [])
    ends = np.flatnonzero(body == 10)
    if body[-1] != 10:
        ends = np.append(ends, size)
    n = ends.size
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    bad = np.zeros(n, dtype=bool)
    bad_lines: list[tuple[np.ndarray, str, list[str]]] = []

    def mark(mask: np.ndarray, kind: str, reason: Callable[[int], str]) -> None:
        new = mask & ~bad
        if new.any():
            idx = np.flatnonzero(new)
            bad_lines.append((idx, kind, [reason(int(i)) for i in idx[:MAX_SKIP_EXAMPLES]]))
            bad[new] = True

    mark(ends == starts, "empty line", lambda i: "empty line")
    cr = np.flatnonzero(body == 13)
    if cr.size:
        last = np.maximum(ends - 1, 0)
        crlf = (ends > starts) & (body[last] == 13)
        ends = ends - crlf
        line_of = np.searchsorted(starts, cr, side="right") - 1
        lone = cr != ends[line_of]
        if lone.any():
            mask = np.zeros(n, dtype=bool)
            mask[line_of[lone]] = True
            mark(mask, "carriage return inside a line",
                 lambda i: "a carriage return (\\r) inside the line")
        mark(ends == starts, "empty line", lambda i: "empty line")
    seps = np.flatnonzero(body == delimiter)
    if quote is not None:
        quotes = np.flatnonzero(body == quote)
        if quotes.size:
            per_line = np.searchsorted(quotes, ends) - np.searchsorted(quotes, starts)
            mark(per_line % 2 == 1, "unbalanced quote",
                 lambda i: "an unbalanced quote (\") in the line")
            if seps.size:
                line_of = np.searchsorted(starts, seps, side="right") - 1
                before = np.searchsorted(quotes, seps) - np.searchsorted(quotes,
                                                                          starts[line_of])
                seps = seps[before % 2 == 0]
    first_sep = np.searchsorted(seps, starts)
    fields = np.searchsorted(seps, ends) - first_sep + 1
    mark(fields != num_fields, "wrong number of fields",
         lambda i: f"{fields[i]} fields, expected {num_fields}")
    good = np.flatnonzero(~bad)
    if good.size == n and seps.size == n * (num_fields - 1):
        cuts = seps.reshape(n, num_fields - 1)
    else:
        cuts = seps[first_sep[good][:, None] + np.arange(num_fields - 1)]
    columns = []
    for j in wanted:
        start = starts[good] if j == 0 else cuts[:, j - 1] + 1
        end = ends[good] if j == num_fields - 1 else cuts[:, j]
        columns.append(Cells(buf, np.ascontiguousarray(start), np.ascontiguousarray(end)))
    if quote is not None and np.count_nonzero(body == quote):
        columns = [_unquote(c, quote) for c in columns]
    return Lines(n, good, columns, bad_lines)


@dataclass
class _QuotedCells(Cells):
    """Cells some of which were quoted: ``doubled`` marks values holding ``""``; ``malformed``
    marks values that open a quote and do not close it at their end."""

    doubled: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    malformed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def to_binary(self) -> pa.Array:
        arr = super().to_binary()
        if self.doubled.any():
            arr = pc.if_else(pa.array(self.doubled),
                             pc.replace_substring(arr, b'""', b'"'), arr)
        return arr

    def value(self, i: int) -> bytes:
        v = super().value(i)
        return v.replace(b'""', b'"') if self.doubled[i] else v


def _unquote(cells: Cells, quote: int) -> Cells:
    if not len(cells):
        return cells
    lengths = cells.lengths
    first = np.where(lengths > 0, cells.data[cells.start], 0) == quote
    if not first.any():
        return cells
    last = np.where(lengths > 0, cells.data[np.maximum(cells.end - 1, 0)], 0) == quote
    closed = first & last & (lengths >= 2)
    start = cells.start + closed
    end = cells.end - closed
    inner = np.zeros(len(cells), dtype=bool)
    for i in np.flatnonzero(closed):  # only quoted values: usually few per block
        inner[i] = quote in cells.data[start[i]:end[i]]
    return _QuotedCells(cells.data, start, end, inner, first & ~closed)


# --------------------------------------------------------------------------- converters
def _between(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """High bit of each byte set iff lo <= byte <= hi (for bytes < 0x80)."""
    return (x + _ONES * _U64(0x80 - lo)) & ~(x + _ONES * _U64(0x7F - hi)) & _HIGH


def _all_digits(words: np.ndarray) -> np.ndarray:
    return (_between(words & _U64(0x7F7F7F7F7F7F7F7F), 0x30, 0x39) & ~words) == _HIGH


def _all_hex(words: np.ndarray) -> np.ndarray:
    low7 = words & _U64(0x7F7F7F7F7F7F7F7F)
    ok = _between(low7, 0x30, 0x39) | _between(low7 | _U64(0x2020202020202020), 0x61, 0x66)
    return (ok & ~words) == _HIGH  # ~words: a byte >= 0x80 is never a digit


def _digits8(words: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and validity of the first ``count`` (1..8) ASCII digits of each word."""
    pad = (_U64(8) - count.astype(np.uint64)) * _U64(8)
    w = (words & (_ALL >> pad)) << pad  # digits in the high bytes (least significant)
    w |= _ZEROS & ~(_ALL << pad)  # leading '0's in the low bytes (most significant)
    ok = _all_digits(w)
    v = w - _ZEROS
    v = ((v & _U64(0x0F0F0F0F0F0F0F0F)) * _U64(2561)) >> _U64(8)
    v = ((v & _U64(0x00FF00FF00FF00FF)) * _U64(6553601)) >> _U64(16)
    v = ((v & _U64(0x0000FFFF0000FFFF)) * _U64(42949672960001)) >> _U64(32)
    return v, ok


def parse_int64(cells: Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(values int64, empty, not_integer, out_of_range)`` of integer cells."""
    n = len(cells)
    lengths = cells.lengths
    empty = lengths == 0
    values = np.zeros(n, dtype=np.int64)
    neg = ~empty & (cells.data[cells.start] == 45)  # '-'
    digits = lengths - neg
    start = cells.start + neg
    bad = ~empty & (digits == 0)
    out_of_range = np.zeros(n, dtype=bool)
    short = (digits >= 1) & (digits <= 8)
    if short.any():
        v, ok = _digits8(cells.words(start[short]), digits[short])
        values[short] = v.astype(np.int64)
        bad[short] = ~ok
    mid = (digits > 8) & (digits <= 16)
    if mid.any():
        d = digits[mid]
        hi, ok_hi = _digits8(cells.words(start[mid]), d - 8)
        lo, ok_lo = _digits8(cells.words(start[mid] + d - 8), np.full(d.size, 8))
        values[mid] = (hi * _U64(100_000_000) + lo).astype(np.int64)
        bad[mid] = ~(ok_hi & ok_lo)
    for i in np.flatnonzero(digits > 16):  # rare: exact Python integers
        text = cells.data[int(start[i]):int(cells.end[i])].tobytes()
        if not text.isdigit() or not text.isascii():
            bad[i] = True
            continue
        value = -int(text) if neg[i] else int(text)
        if -(2**63) <= value < 2**63:
            values[i] = value
        else:
            out_of_range[i] = True
    values[neg] = -values[neg]
    values[bad | out_of_range | empty] = 0
    return values, empty, bad, out_of_range


def parse_float(cells: Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(values float64, empty, not_a_number, out_of_range)``: out of range is a value that
    is not finite in float32."""
    arr = cells.to_binary()
    stripped = pc.utf8_trim_whitespace(pc.cast(pc.if_else(
        pc.match_substring_regex(arr, r"^[\x00-\x7f]*$"), arr, pa.scalar(b"x")), pa.string()))
    empty = pc.equal(stripped, "").to_numpy(zero_copy_only=False)
    ok = pc.match_substring_regex(stripped, NUMBER_PATTERN).to_numpy(zero_copy_only=False)
    clean = pc.if_else(pa.array(ok), stripped, "0")
    values = pc.cast(clean, pa.float64()).to_numpy(zero_copy_only=False).copy()
    out_of_range = ok & ~(np.abs(values) <= _F32_MAX)
    bad = ~ok & ~empty
    values[bad | out_of_range | empty] = 0.0
    return values, empty, bad, out_of_range


def parse_hex32(cells: Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values uint32, empty, bad)``: exactly 8 hex digits (any case) or empty."""
    lengths = cells.lengths
    empty = lengths == 0
    full = lengths == 8
    bad = ~(empty | full)
    values = np.zeros(len(cells), dtype=np.uint32)
    if not full.any():
        return values, empty, bad
    v = cells.words(cells.start[full])
    ok = _all_hex(v)
    # Byte i (the i-th character; least significant) -> its nibble: '0'-'9' keep the low 4
    # bits, letters (bit 6 set) add 9 ('a' = 0x61 -> 1 + 9 = 10).
    v = (v & _U64(0x0F0F0F0F0F0F0F0F)) + _U64(9) * ((v >> _U64(6)) & _ONES)
    # Pack the 8 nibbles big-endian (first character most significant).
    v = ((v & _U64(0x00FF00FF00FF00FF)) << _U64(4)) | ((v >> _U64(8)) & _U64(0x00FF00FF00FF00FF))
    v = ((v & _U64(0x0000FFFF0000FFFF)) << _U64(8)) | ((v >> _U64(16)) & _U64(0x0000FFFF0000FFFF))
    v = ((v & _U64(0xFFFFFFFF)) << _U64(16)) | (v >> _U64(32))
    values[full] = np.where(ok, v, _U64(0)).astype(np.uint32)
    bad[full] = ~ok
    return values, empty, bad


def parse_label01(cells: Cells) -> tuple[np.ndarray, np.ndarray]:
    """``(labels uint8, bad)``: exactly one character, 0 or 1."""
    first = cells.data[cells.start]
    ok = (cells.lengths == 1) & ((first == 48) | (first == 49))
    return np.where(ok, first - 48, 0).astype(np.uint8), ~ok


def parse_strings(cells: Cells) -> tuple[pa.Array, np.ndarray]:
    """``(strings, bad)``: the cells as an Arrow string array (empty -> null); bad marks
    cells that are not valid UTF-8 (latin-1 inputs are transcoded before they get here)."""
    arr = cells.to_binary()
    n = len(cells)
    bad = np.zeros(n, dtype=bool)
    high = cells.data[:-_PAD] >= 0x80 if cells.data.size > _PAD else np.zeros(0, bool)
    if high.any():
        try:
            arr.cast(pa.string())
        except (pa.ArrowInvalid, UnicodeDecodeError):
            values = arr.to_pylist()
            for i, v in enumerate(values):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    bad[i] = True
            arr = pc.if_else(pa.array(bad), pa.scalar(b""), arr)
    strings = arr.cast(pa.string())
    return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings), bad


def categorical_strings(cells: Cells, spec: CategoricalColumn
                        ) -> tuple[pa.Array, np.ndarray, str]:
    """A string categorical after its transform: ``(values, bad, why)`` (null: missing)."""
    strings, bad = parse_strings(cells)
    if bad.any():
        return strings, bad, "is not valid UTF-8"
    t = spec.transform
    if t == "none":
        return strings, bad, ""
    if t == "prefix":
        return pc.utf8_slice_codeunits(strings, 0, spec.length), bad, ""
    if t in ("bucket", "log_squared"):  # a number made a category: one parse, one bad rule
        values, empty, not_number, out_of_range = parse_float(cells)
        if t == "bucket":
            bucket = np.searchsorted(np.asarray(spec.boundaries, dtype=np.float64), values,
                                     side="right")
            out = pa.array(bucket.astype(str), pa.string(), mask=empty)
        else:
            out = log_squared_ids(values, empty)
        return out, not_number | out_of_range, "is not a number"
    stamps = pc.strptime(pc.utf8_trim_whitespace(strings), format="%y%m%d%H", unit="s",
                         error_is_null=True)
    bad = (pc.is_null(stamps).to_numpy(zero_copy_only=False)
           & pc.is_valid(strings).to_numpy(zero_copy_only=False))
    part = pc.hour(stamps) if t == "yymmddhh_hour" else pc.day_of_week(stamps)
    return pc.cast(part, pa.string()), bad, "is not a YYMMDDHH time stamp"


def log_squared_ids(values: np.ndarray, empty: np.ndarray) -> pa.Array:
    """Counts as categories (the ``log_squared`` transform): ``v:floor(v)`` for v <= 2, else
    ``l:floor(ln(v)^2)``; buckets widen as counts grow (3-4 share ``l:1``, 1097-1177 share
    ``l:49``). Null where ``empty``."""
    small = values <= 2
    level = np.floor(np.square(np.log(np.where(small, 3.0, values))))  # log of values > 2 only
    code = np.where(small, np.floor(values), level).astype(np.int64)
    prefix = np.where(small, "v:", "l:")
    strings = np.char.add(prefix, code.astype(str))
    return pa.array(strings, pa.string(), mask=empty)


def split_bags(strings: pa.Array, separator: str) -> pa.Array:
    """A list array of each cell's non-empty ``separator``-separated items (null: empty)."""
    lists = pc.split_pattern(pc.fill_null(strings, ""), separator)
    flat = pc.list_flatten(lists)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(lengths.size), lengths)
    counts = np.bincount(owner[keep], minlength=lengths.size)
    offsets = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


# --------------------------------------------------------------------------- one block
@dataclass
class HexValues:
    """A hex32 column: raw uint32 values and a mask of empty cells."""

    values: np.ndarray
    empty: np.ndarray

    def take(self, keep: np.ndarray) -> HexValues:
        return HexValues(self.values[keep], self.empty[keep])


@dataclass
class ParsedBlock:
    """The good rows of one block and the bookkeeping of its bad lines.

    ``line_numbers`` are 1-based and relative to the block until the stage adds the lines of
    earlier blocks. ``categorical[k]`` is ``HexValues`` (hex32), a string array (null:
    missing) or a list array of strings (multi-hot).
    """

    lines_read: int
    line_numbers: np.ndarray
    labels: np.ndarray | None  # (n,) uint8
    dense: np.ndarray  # (n, D) float32 (transformed; standardize columns raw)
    categorical: list[Any]
    sort_key: np.ndarray | None  # (n,) float64 for split order "column"
    skips: SkipLog
    encoded: Any = None  # filled by a stage worker (ids in hash mode)
    cpu_seconds: float = 0.0  # the worker's CPU time on this block

    @property
    def rows(self) -> int:
        return int(self.line_numbers.size)


class RowParser:
    """Parses blocks (text) or tables (Arrow) of one schema's rows into ``ParsedBlock``s."""

    def __init__(self, schema: Schema, column_names: list[str] | None = None) -> None:
        self.schema = schema
        names = column_names or schema.column_names
        self.column_names = list(names) if names else None
        self.wanted = schema.source_columns()
        if not schema.has_label:
            self.wanted = [c for c in self.wanted if c != schema.label["column"]]
        if self.column_names is not None:
            missing = [c for c in self.wanted if c not in self.column_names]
            if missing:
                raise ValueError(f"no column(s) {missing}; the input has {self.column_names}")

    # ------------------------------------------------------------------ text
    def parse_text(self, block: Any, source: str, strict: bool, delimiter: str,
                   first_line: int = 1) -> ParsedBlock:
        """Parse whole lines; ``first_line`` is the 1-based number of the block's first line
        relative to where the stage counts from (0-based offsets are added later)."""
        if self.column_names is None:
            raise RuntimeError("parse_text needs the column names (from the schema or a header)")
        index = [self.column_names.index(c) for c in self.wanted]
        quote = 34 if self.schema.quote else None
        lines = tokenize(block, len(self.column_names), index, ord(delimiter), quote)
        skips = SkipLog()
        events: list[tuple[int, str]] = []
        for idx, kind, reasons in lines.bad_lines:
            line_numbers = idx + first_line
            skips.add(source, line_numbers, kind, reasons)
            events.append((int(line_numbers[0]), reasons[0]))
        cells = dict(zip(self.wanted, lines.columns, strict=True))
        return self._convert(cells, lines.good + first_line, lines.lines_read, source, strict,
                             skips, events)

    # ------------------------------------------------------------------ arrow
    def parse_table(self, table: pa.Table, line_numbers: np.ndarray, source: str, strict: bool
                    ) -> ParsedBlock:
        missing = [c for c in self.wanted if c not in table.column_names]
        if missing:
            raise ValueError(f"{source}: no column(s) {missing}; it has {table.column_names}")
        cells = {c: cells_from_arrow(table.column(c)) for c in self.wanted}
        return self._convert(cells, np.asarray(line_numbers, dtype=np.int64), table.num_rows,
                             source, strict, SkipLog(), [])

    # ------------------------------------------------------------------ cells -> values
    def _convert(self, cells: dict[str, Cells], line_numbers: np.ndarray, lines_read: int,
                 source: str, strict: bool, skips: SkipLog, events: list[tuple[int, str]]
                 ) -> ParsedBlock:
        s = self.schema
        n = line_numbers.size
        bad = np.zeros(n, dtype=bool)
        problems: list[tuple[np.ndarray, str, Callable[[int], str]]] = []

        def check(mask: np.ndarray, kind: str, describe: Callable[[int], str]) -> None:
            if mask.any():
                problems.append((mask, kind, describe))

        labels = None
        if s.has_label:
            col = s.label["column"]
            c = cells[col]
            if "threshold" in s.label:
                values, empty, not_number, out_of_range = parse_float(c)
                labels = (values >= float(s.label["threshold"])).astype(np.uint8)
                check(not_number | empty | out_of_range, "label is not a number",
                      lambda i, c=c, col=col: f"{col}={c.value(i)!r} is not a number")
            else:
                labels, bad_label = parse_label01(c)
                check(bad_label, "label is not 0 or 1",
                      lambda i, c=c, col=col: f"label {c.value(i).decode('latin-1')!r} is not "
                      "0 or 1" if col == "label" else
                      f"{col}={c.value(i).decode('latin-1')!r} is not 0 or 1")
        dense = np.zeros((n, max(len(s.dense), 1)), dtype=np.float32)
        if not s.dense:
            dense[:] = 1.0  # constant_one
        for k, d in enumerate(s.dense):
            c = cells[d.column]
            if d.type == "int":
                ints, empty, not_number, out_of_range = parse_int64(c)
                values = ints.astype(np.float64)
                kind = "not an integer"
            else:
                values, empty, not_number, out_of_range = parse_float(c)
                kind = "not a number"
            check(not_number, kind, lambda i, c=c, col=d.column, kind=kind:
                  f"{col}={_show(c.value(i))} is {kind[4:]}")
            check(out_of_range, "number out of range", lambda i, c=c, col=d.column:
                  f"{col}={_show(c.value(i))} is out of range")
            if d.transform == "log1p":
                values = np.log1p(np.maximum(values, 0.0))
            elif d.transform == "standardize":
                values = np.where(empty, np.nan, values)  # the mean, once it is known
            dense[:, k] = values
        categorical: list[Any] = []
        for spec in s.categorical:
            c = cells[spec.column]
            if spec.kind == "hex32":
                values, empty, bad_hex = parse_hex32(c)
                categorical.append(HexValues(values, empty))
                check(bad_hex, "categorical is not 8 hex digits", lambda i, c=c, nm=spec.name:
                      f"{nm}={_show(c.value(i))} is not 8 hex digits")
                continue
            strings, bad_cell, why = categorical_strings(c, spec)
            check(bad_cell, f"{spec.transform} value is invalid" if spec.transform != "none"
                  else "invalid text", lambda i, c=c, nm=spec.name, why=why:
                  f"{nm}={_show(c.value(i))} {why}")
            categorical.append(split_bags(strings, spec.separator) if spec.multi_hot
                               else strings)
        sort_key = None
        if s.split.get("order") == "column":
            c = cells[s.split["by"]]
            sort_key, _, not_number, out_of_range = parse_float(c)
            check(not_number | out_of_range, "sort key is not a number",
                  lambda i, c=c, col=s.split["by"]: f"{col}={_show(c.value(i))} is not a number")
        for mask, kind, describe in problems:
            new = mask & ~bad
            if new.any():
                rows = np.flatnonzero(new)
                reasons = [describe(int(i)) for i in rows[:MAX_SKIP_EXAMPLES]]
                skips.add(source, line_numbers[rows], kind, reasons)
                events.append((int(line_numbers[rows[0]]), reasons[0]))
                bad |= new
        if strict and events:
            line, reason = min(events)
            raise BadLineError(source, line, reason)
        skips.examples.sort(key=lambda e: e["line"])
        if bad.any():
            keep = ~bad
            keep_arrow = pa.array(keep)
            line_numbers = line_numbers[keep]
            labels = labels[keep] if labels is not None else None
            dense = dense[keep]
            categorical = [c.take(keep) if isinstance(c, HexValues) else c.filter(keep_arrow)
                           for c in categorical]
            sort_key = sort_key[keep] if sort_key is not None else None
        return ParsedBlock(lines_read, line_numbers, labels, dense, categorical, sort_key, skips)


def _show(value: bytes) -> str:
    """A cell for a message: its text (invalid bytes escaped), cut at 40 characters."""
    text = value.decode("utf-8", errors="backslashreplace")
    text = text if len(text) <= 40 else text[:40] + "..."
    return "'" + text.replace("\t", "\\t").replace("\r", "\\r") + "'"
