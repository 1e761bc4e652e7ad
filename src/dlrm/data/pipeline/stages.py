"""The one preprocessing pipeline: read -> parse by schema -> vocabulary -> write -> publish.

``preprocess(schema, inputs, out, options)`` is the whole run; ``dlrm preprocess
criteo-kaggle|criteo-terabyte|table`` all call it with a shipped or given schema.

1. **Stage** each input file into a part (``parts/<name>/``) of the private build folder:
   blocks are read in order and parsed in a thread pool (``options.workers``), good rows are
   appended to ``labels.npy``, ``dense.npy`` and, per categorical feature, either its hash ids
   (``ids/<name>.npy``) or its raw values (``raw/``) for the vocabulary. ``stage.json``,
   written last, records the input (name, size, mtime), the settings and the counts; a rerun
   reuses a part only after checking every file against it.
2. **Split** into train / val / test: row ranges of parts (reference, days, file order) or
   rows copied into new parts (random, column order, ``shuffle``). A data set without
   validation rows is refused here, before a model ever sees it.
3. **Vocabulary**, one feature per task: count the vocabulary rows, sort the kept values,
   map every row (``dlrm.data.pipeline.vocabulary``).
4. **Publish**: ``metadata.json`` is written and the build folder replaces the target with
   one rename (``dlrm.data.pipeline.io.BuildFolder``).

Rows read = rows written + rows skipped for every input; a mismatch is an internal error, not
a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm.data.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NpyAppender,
    npy_file_size,
    open_array,
    write_metadata,
)
from dlrm.data.pipeline.io import (
    DEFAULT_CHUNK_BYTES,
    BlockReader,
    BuildFolder,
    check_input,
    input_fingerprint,
)
from dlrm.data.pipeline.metadata import (
    BadLineError,
    DataError,
    Part,
    Progress,
    ProgressFn,
    SkipLog,
    no_progress,
    os_error,
    peak_rss_bytes,
    tool_version,
    utc_now,
)
from dlrm.data.pipeline.parse import HexValues, ParsedBlock, RowParser
from dlrm.data.pipeline.schema import Schema
from dlrm.data.pipeline.splits import (
    SplitPlan,
    check_split_plan,
    copy_rows,
    plan_splits,
    positives_of,
    standardize,
)
from dlrm.data.pipeline.vocabulary import (
    MISSING_ID,
    Vocabulary,
    apply_lut,
    check_vocab_options,
    code_column,
    hash_ids,
    kept_values,
    merge_counts,
    sorted_order,
)

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
ROWS_PER_CHUNK = 1 << 20


@dataclass
class Options:
    """How to run (the schema says what the data is).

    Args:
        hash_buckets / min_count: vocabulary mode (default exact; the schema's own setting
            when neither is given).
        split: overrides the schema's split, e.g. ``{"order": "random", "seed": 0,
            "fractions": {...}}``.
        shuffle: store the training split in a seeded random order.
        strict: stop at the first bad line (``file:line: reason``) instead of skipping it.
        workers: parsing threads; chunk_bytes: bytes of text per parsing task.
        overwrite: replace a non-empty ``out`` once the new data set is complete.
    """

    hash_buckets: int | None = None
    min_count: int | None = None
    split: dict[str, Any] | None = None
    seed: int = 0
    shuffle: bool = False
    strict: bool = False
    workers: int = 2
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    overwrite: bool = False

    def check(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise DataError(f"--workers {self.workers}: need an integer >= 1")
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1024:
            raise DataError(f"--chunk-mb: the chunk must be at least 1 KiB (got "
                            f"{self.chunk_bytes} bytes)")
        check_vocab_options(self.hash_buckets, self.min_count)


def _expected_files(schema: Schema, mode: str, rows: int) -> list[tuple[str, Any, tuple]]:
    """(file, dtype, shape) of a finished stage's .npy files (for verification)."""
    width = max(len(schema.dense), 1)
    files: list[tuple[str, Any, tuple]] = [("labels.npy", np.uint8, (rows,)),
                                           ("dense.npy", np.float32, (rows, width))]
    if schema.split.get("order") == "column":
        files.append(("key.npy", np.float64, (rows,)))
    for spec in schema.categorical:
        if mode == "hash" and not spec.multi_hot:
            files.append((f"ids/{spec.name}.npy", np.int32, (rows,)))
        elif mode == "hash":
            files.append((f"ids/{spec.name}.lengths.npy", np.int32, (rows,)))
        elif spec.kind == "hex32":
            files += [(f"raw/{spec.name}.npy", np.uint32, (rows,)),
                      (f"raw/{spec.name}.empty.npy", np.bool_, (rows,))]
    return files


def _verified_stage(folder: Path, schema: Schema, mode: str, fingerprint: dict[str, Any],
                    settings: dict[str, Any]) -> Part | None:
    """The part recorded in ``folder/stage.json`` if every check passes, else None."""
    try:
        record = json.loads((folder / STAGE_FILE).read_text())
        if record.get("input") != fingerprint or record.get("settings") != settings:
            return None
        part = Part(str(record["part"]), folder, fingerprint, int(record["rows_read"]),
                    int(record["rows_written"]), int(record["positives"]),
                    SkipLog.from_dict(record), bool(record["truncated_gzip"]),
                    float(record["seconds"]), reused=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not (0 <= part.rows_written <= part.rows_read
            and part.rows_read == part.rows_written + part.skips.count
            and 0 <= part.positives <= part.rows_written):
        return None
    for name, dtype, shape in _expected_files(schema, mode, part.rows_written):
        path = folder / name
        if not path.is_file() or path.stat().st_size != npy_file_size(dtype, shape):
            return None
    for spec in schema.categorical:
        if mode == "hash" and spec.multi_hot:
            lengths = open_array(folder / f"ids/{spec.name}.lengths.npy")
            values = folder / f"ids/{spec.name}.values.npy"
            if not values.is_file() or values.stat().st_size != npy_file_size(
                    np.int32, (int(np.asarray(lengths, dtype=np.int64).sum()),)):
                return None
        elif mode != "hash" and spec.kind == "string":
            try:
                with pa.memory_map(str(folder / f"raw/{spec.name}.arrow")) as source:
                    if pa.ipc.open_file(source).read_all().num_rows != part.rows_written:
                        return None
            except (OSError, pa.ArrowInvalid):
                return None
    return part


class _PartWriter:
    """Appends parsed blocks to a part's files."""

    def __init__(self, folder: Path, schema: Schema, mode: str, hash_buckets: int | None
                 ) -> None:
        self.schema, self.mode, self.buckets = schema, mode, hash_buckets
        (folder / "ids").mkdir(parents=True, exist_ok=True)
        (folder / "raw").mkdir(exist_ok=True)
        width = max(len(schema.dense), 1)
        self.labels = NpyAppender(folder / "labels.npy", np.uint8)
        self.dense = NpyAppender(folder / "dense.npy", np.float32, (width,))
        self.key = (NpyAppender(folder / "key.npy", np.float64)
                    if schema.split.get("order") == "column" else None)
        self.outs: list[Any] = []
        for spec in schema.categorical:
            if mode == "hash" and not spec.multi_hot:
                self.outs.append(NpyAppender(folder / f"ids/{spec.name}.npy", np.int32))
            elif mode == "hash":
                self.outs.append((NpyAppender(folder / f"ids/{spec.name}.values.npy", np.int32),
                                  NpyAppender(folder / f"ids/{spec.name}.lengths.npy",
                                              np.int32)))
            elif spec.kind == "hex32":
                self.outs.append((NpyAppender(folder / f"raw/{spec.name}.npy", np.uint32),
                                  NpyAppender(folder / f"raw/{spec.name}.empty.npy", np.bool_)))
            else:
                self.outs.append(_ArrowAppender(folder / f"raw/{spec.name}.arrow"))

    def encode(self, parsed: ParsedBlock) -> None:
        """Hash mode: ids computed in the worker thread (the writer only appends)."""
        if self.mode != "hash":
            return
        encoded = []
        for spec, column in zip(self.schema.categorical, parsed.categorical, strict=True):
            if spec.multi_hot:
                flat = pc.list_flatten(column)
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                encoded.append((hash_ids(flat, self.buckets), lengths))
            else:
                encoded.append(hash_ids(column, self.buckets))
        parsed.encoded = encoded

    def append(self, parsed: ParsedBlock) -> None:
        if parsed.labels is not None:
            self.labels.append(parsed.labels)
        else:
            self.labels.append(np.zeros(parsed.rows, np.uint8))
        self.dense.append(parsed.dense)
        if self.key is not None:
            self.key.append(parsed.sort_key)
        columns = parsed.encoded if self.mode == "hash" else parsed.categorical
        for out, column in zip(self.outs, columns, strict=True):
            if isinstance(out, _ArrowAppender):
                out.append(column)
            elif isinstance(out, tuple) and isinstance(column, HexValues):
                out[0].append(column.values)
                out[1].append(column.empty)
            elif isinstance(out, tuple):
                out[0].append(column[0])
                out[1].append(column[1])
            else:
                out.append(column)

    def close(self) -> None:
        for out in [self.labels, self.dense, self.key, *self.outs]:
            for o in (out if isinstance(out, tuple) else (out,)):
                if o is not None:
                    o.close()


class _ArrowAppender:
    """Raw string values of one feature as an Arrow IPC file, a record batch per block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pa.ipc.RecordBatchFileWriter | None = None
        self.type: pa.DataType | None = None

    def append(self, column: pa.Array) -> None:
        if self.writer is None:
            self.type = column.type
            self.writer = pa.ipc.new_file(str(self.path), pa.schema([("value", column.type)]))
        self.writer.write_batch(pa.record_batch([column.cast(self.type)], names=["value"]))

    def close(self) -> None:
        if self.writer is None:  # no rows: an empty file of the right shape
            self.writer = pa.ipc.new_file(str(self.path), pa.schema([("value", pa.string())]))
        self.writer.close()
        self.writer = None


# --------------------------------------------------------------------------- staging
def _settings(schema: Schema, options: Options, mode: str) -> dict[str, Any]:
    return {"schema": schema.to_dict(), "strict": options.strict, "vocab_mode": mode,
            "hash_buckets": options.hash_buckets, "format_version": FORMAT_VERSION}


def _in_order(future: Any, lines_before: int) -> ParsedBlock:
    """A worker's block with line numbers made absolute (lines of earlier blocks added)."""
    try:
        parsed = future.result()
    except BadLineError as err:
        raise BadLineError(err.source, err.line + lines_before, err.reason) from None
    parsed.line_numbers = parsed.line_numbers + lines_before
    parsed.skips.shift_lines(lines_before)
    return parsed


def _read_header(path: Path, delimiter: str, latin1: bool) -> tuple[list[str], int]:
    """Column names from the first line of a text file, and that line's length in bytes."""
    reader = BlockReader(path, 1 << 16)
    for block, _ in reader:
        raw = bytes(block)
        line = raw.split(b"\n", 1)[0]
        text = line.rstrip(b"\r").decode("latin-1" if latin1 else "utf-8", errors="replace")
        names = [n.strip().strip('"') for n in text.split(delimiter)]
        return names, len(line) + 1
    raise DataError(f"{path}: the file is empty (expected a header line)")


def stage_part(name: str, path: Path, folder: Path, schema: Schema, options: Options,
               mode: str, settings: dict[str, Any], progress: ProgressFn, bytes_before: int,
               bytes_total: int) -> Part:
    """Parse one input file into ``folder`` (or reuse a verified earlier stage of it)."""
    fingerprint = input_fingerprint(path)
    reused = _verified_stage(folder, schema, mode, fingerprint, settings)
    if reused is not None:
        progress(Progress(f"read {path.name}", bytes_before + fingerprint["size"], bytes_total,
                          message=f"{path.name}: reusing its finished stage from an "
                                  "interrupted run"))
        return reused
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    part = Part(name, folder, fingerprint)
    writer = _PartWriter(folder, schema, mode, options.hash_buckets)
    try:
        if schema.reader == "text" and path.suffix != ".parquet":
            _stage_text(part, path, schema, options, writer, progress, bytes_before, bytes_total)
        else:
            _stage_table(part, path, schema, options, writer)
            progress(Progress(f"read {path.name}", bytes_before + fingerprint["size"],
                              bytes_total))
    finally:
        tick = time.perf_counter()
        writer.close()
        part.timings["close_s"] = time.perf_counter() - tick
    if part.rows_read != part.rows_written + part.skips.count:
        raise AssertionError(f"{path}: {part.rows_read} rows read but {part.rows_written} "
                             f"written and {part.skips.count} skipped")
    part.seconds = time.perf_counter() - start
    record = {"input": fingerprint, "settings": settings, **part.to_dict()}
    tmp = folder / (STAGE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, folder / STAGE_FILE)
    return part


def _stage_text(part: Part, path: Path, schema: Schema, options: Options, writer: _PartWriter,
                progress: ProgressFn, bytes_before: int, bytes_total: int) -> None:
    latin1 = schema.encoding.lower().replace("-", "") == "latin1"
    suffixes = [x.lower() for x in path.suffixes]
    delimiter = schema.delimiter or ("\t" if {".tsv", ".txt"} & set(suffixes) else ",")
    names, skip_bytes = (None, 0)
    lines_before = 0
    if schema.header:
        names, skip_bytes = _read_header(path, delimiter, latin1)
        lines_before = 1
    try:
        parser = RowParser(schema, names)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    source = str(path)
    reader = BlockReader(path, options.chunk_bytes)

    def work(block: Any) -> ParsedBlock:
        cpu = time.thread_time()
        if latin1:
            block = bytes(block).decode("latin-1").encode("utf-8")
        parsed = parser.parse_text(block, source, options.strict, delimiter)
        writer.encode(parsed)
        parsed.cpu_seconds = time.thread_time() - cpu
        return parsed

    def consume(future: Any, done: int) -> None:
        nonlocal lines_before
        parsed = _in_order(future, lines_before)
        lines_before += parsed.lines_read
        part.rows_read += parsed.lines_read
        part.rows_written += parsed.rows
        if parsed.labels is not None:
            part.positives += int(parsed.labels.sum())
        part.skips.merge(parsed.skips)
        part.timings["parse_cpu_s"] += parsed.cpu_seconds
        tick = time.perf_counter()
        writer.append(parsed)
        part.timings["write_s"] += time.perf_counter() - tick
        progress(Progress(f"read {path.name}", bytes_before + done, bytes_total))

    first = True
    with ThreadPoolExecutor(options.workers) as pool:
        pending: deque = deque()
        blocks = iter(reader)
        try:
            while True:
                tick = time.perf_counter()
                item = next(blocks, None)
                part.timings["read_wait_s"] += time.perf_counter() - tick
                if item is None:
                    break
                block, done = item
                if first and skip_bytes:
                    block = block[skip_bytes:]
                first = False
                pending.append((pool.submit(work, block), done))
                while len(pending) > 2 * options.workers:
                    consume(*pending.popleft())
            while pending:
                consume(*pending.popleft())
        finally:
            for future, _ in pending:
                future.cancel()
    if reader.truncated:
        if options.strict:
            raise BadLineError(source, lines_before + 1, "gzip stream is truncated (the file "
                               "ends before the end-of-stream marker)")
        log.warning("%s: gzip stream is truncated; rows up to line %d kept", source,
                    lines_before)
        part.truncated_gzip = True
        if reader.partial_tail:
            part.skips.add(source, [lines_before + 1], "truncated gzip stream",
                           ["incomplete last line of a truncated gzip stream"])
            part.rows_read += 1


def _stage_table(part: Part, path: Path, schema: Schema, options: Options,
                 writer: _PartWriter) -> None:
    """Parquet files and MovieLens folders: Arrow tables in slices of 64k rows."""
    if schema.reader == "movielens-100k":
        from dlrm.data.pipeline.readers import read_movielens

        table, lines = read_movielens(path)
        source = str(path / "u.data")
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        lines = np.arange(1, table.num_rows + 1)
        source = str(path)
    parser = RowParser(schema, table.column_names)
    step = 1 << 16
    for lo in range(0, max(table.num_rows, 1), step):
        piece = table.slice(lo, step)
        if piece.num_rows == 0:
            break
        parsed = parser.parse_table(piece, lines[lo:lo + step], source, options.strict)
        writer.encode(parsed)
        part.rows_read += piece.num_rows
        part.rows_written += parsed.rows
        if parsed.labels is not None:
            part.positives += int(parsed.labels.sum())
        part.skips.merge(parsed.skips)
        writer.append(parsed)


# --------------------------------------------------------------------------- vocabulary
def _raw_column(part: Part, spec: Any) -> pa.Array | pa.ChunkedArray:
    if spec.kind == "hex32":
        values = np.load(part.folder / f"raw/{spec.name}.npy")
        empty = np.load(part.folder / f"raw/{spec.name}.empty.npy")
        return pa.array(values, mask=empty)
    with pa.memory_map(str(part.folder / f"raw/{spec.name}.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    column = table.column("value")
    return column.combine_chunks() if column.num_chunks else pa.array([], pa.string())


def _select(codes: np.ndarray, rows: Any, offsets: np.ndarray | None) -> np.ndarray:
    """Codes of the vocabulary rows (``offsets``: a multi-hot feature's row offsets)."""
    if rows is None:
        return codes
    if offsets is None:
        return codes[rows]
    if isinstance(rows, slice):
        return codes[offsets[rows.start]:offsets[rows.stop]]
    lengths = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return codes[index]


def build_feature(k: int, schema: Schema, parts: dict[str, Part], plan: SplitPlan,
                  mode: str, min_count: int) -> tuple[pa.Array, int]:
    """Count, choose and write ids for feature ``k`` in every part; returns (kept values,
    how many were counted)."""
    spec = schema.categorical[k]
    coded: list[tuple[Part, pa.Array, np.ndarray, np.ndarray | None]] = []
    pieces = []
    for part in parts.values():
        column = _raw_column(part, spec)
        offsets = None
        if spec.multi_hot:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            offsets = np.zeros(lengths.size + 1, dtype=np.int64)
            np.cumsum(np.nan_to_num(lengths).astype(np.int64), out=offsets[1:])
            column = pc.list_flatten(column)
        dictionary, codes = code_column(column)
        del column
        if part.name in plan.vocab_rows:
            chosen = _select(codes, plan.vocab_rows[part.name], offsets)
            # Code -1 (missing) lands in bin 0, dropped: no filtered copy of the codes.
            counts = np.bincount(chosen + 1, minlength=len(dictionary) + 1)[1:]
            pieces.append((dictionary, counts.astype(np.int64)))
        if len(parts) > 1:  # keep memory to one part's codes: park the others on disk
            np.save(part.folder / f"raw/{spec.name}.codes.npy", codes)
            codes = None
        coded.append((part, dictionary, codes, offsets))
    threshold = min_count if mode == "min-count" else 1
    vocab = Vocabulary(mode, [spec.name], [spec.kind], None, min_count)
    direct = None
    if len(coded) == 1 and len(pieces) == 1:
        # One part counted whole (Kaggle): its dictionary is the vocabulary's value set, so
        # each code's id comes from one sort of the kept values; no second hash pass.
        dictionary, counts = pieces[0]
        keep = np.flatnonzero(counts >= threshold)
        chosen_values = dictionary.take(pa.array(keep))
        order = sorted_order(chosen_values)
        kept = chosen_values.take(pa.array(order))
        direct = np.full(len(dictionary), vocab.unseen_id, dtype=np.int32)
        direct[keep[order]] = vocab.first_value_id + np.arange(keep.size, dtype=np.int32)
        values = dictionary
    else:
        values, counts = merge_counts(pieces) if pieces else (pa.array([], pa.string()),
                                                                np.zeros(0, np.int64))
        kept = kept_values(values, counts, threshold)
    vocab.kept = [kept]
    for part, dictionary, codes, offsets in coded:
        if codes is None:
            codes = np.load(part.folder / f"raw/{spec.name}.codes.npy")
        ids = apply_lut(codes, direct if direct is not None else vocab.lut(0, dictionary))
        if spec.multi_hot:
            np.save(part.folder / f"ids/{spec.name}.values.npy", ids)
            np.save(part.folder / f"ids/{spec.name}.offsets.npy", offsets)
        else:
            with NpyAppender(part.folder / f"ids/{spec.name}.npy", np.int32) as out:
                out.append(ids)
    return kept, len(values)


def _finish_hash_bags(parts: dict[str, Part], schema: Schema) -> None:
    for part in parts.values():
        for spec in schema.categorical:
            if spec.multi_hot:
                lengths = np.load(part.folder / f"ids/{spec.name}.lengths.npy")
                offsets = np.zeros(lengths.size + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                np.save(part.folder / f"ids/{spec.name}.offsets.npy", offsets)
                (part.folder / f"ids/{spec.name}.lengths.npy").unlink()


# --------------------------------------------------------------------------- the run
def preprocess(schema: Schema, inputs: list[tuple[str, str | Path]], out: str | Path,
               options: Options | None = None, progress: ProgressFn | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Preprocess ``inputs`` (``[(part name, file)]``: ``main`` is split by the schema's
    fractions, ``train``/``val``/``test`` are taken whole, ``day_N`` are Terabyte days,
    ``all`` is Kaggle's one file) into the data set folder ``out``.

    Returns the metadata (also ``out/metadata.json``), with ``seconds`` and
    ``peak_rss_bytes``. Raises ``DataError`` (one line) for anything it refuses.
    """
    start = time.perf_counter()
    options = options or Options()
    progress = progress or no_progress
    options.check()
    mode = check_vocab_options(options.hash_buckets, options.min_count)
    vocab_spec = schema.vocabulary
    if options.hash_buckets is None and options.min_count is None:
        if vocab_spec.get("hash_buckets"):
            options.hash_buckets = int(vocab_spec["hash_buckets"])
        elif vocab_spec.get("min_count") and int(vocab_spec["min_count"]) > 1:
            options.min_count = int(vocab_spec["min_count"])
        mode = check_vocab_options(options.hash_buckets, options.min_count)
    split = dict(options.split or schema.split)
    if options.split is not None and "seed" not in options.split:
        split["seed"] = options.seed
    names = [name for name, _ in inputs]
    if len(set(names)) != len(names):
        raise DataError(f"inputs {names}: each part name once")
    paths: list[tuple[str, Path]] = []
    for name, path in inputs:
        path = Path(path)
        if schema.reader == "movielens-100k":
            if not path.is_dir():
                raise DataError(f"input {path}: expected a MovieLens-100K folder (u.data, "
                                "u.user, u.item, u.genre)")
        else:
            check_input(path)
        paths.append((name, path))
    check_split_plan(split, names)
    if split.get("order") in ("column",) and "main" not in names:
        raise DataError("split order column needs a main input to sort")
    settings = _settings(schema, options, mode)
    build_settings = {**settings, "inputs": {n: {**input_fingerprint(p), "path": str(p)}
                                              if p.is_file() else str(p) for n, p in paths},
                      "split": split, "min_count": options.min_count, "shuffle": options.shuffle}
    with BuildFolder(out, build_settings, options.overwrite) as build:
        if build.note:
            log.info("%s", build.note)
            progress(Progress("prepare", 0, 0, message=build.note))
        try:
            meta = _run(schema, paths, build.path, options, mode, split, settings, progress)
        except OSError as err:
            raise os_error(err, f"write the data set in {build.path}") from None
        meta.update(extra or {})
        meta["resumed"] = build.resumed
        meta["seconds"] = round(time.perf_counter() - start, 3)
        meta["peak_rss_bytes"] = peak_rss_bytes()
        write_metadata(build.path, meta)
        build.publish()
    return meta


def _run(schema: Schema, paths: list[tuple[str, Path]], root: Path, options: Options,
         mode: str, split: dict[str, Any], settings: dict[str, Any], progress: ProgressFn
         ) -> dict[str, Any]:
    clock, cpu = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    sizes = [(p.stat().st_size if p.is_file() else 0) for _, p in paths]
    total_bytes = sum(sizes)
    parts: dict[str, Part] = {}
    done = 0
    for (name, path), size in zip(paths, sizes, strict=True):
        parts[name] = stage_part(name, path, root / "parts" / name, schema, options, mode,
                                 settings, progress, done, total_bytes)
        if parts[name].rows_read == 0:
            log.warning("%s: empty input (0 lines)", path)
        done += size
    rows_written = sum(p.rows_written for p in parts.values())
    if rows_written == 0:
        first = paths[0][1]
        read = sum(p.rows_read for p in parts.values())
        why = " - the input is empty" if read == 0 else ""
        raise DataError(f"{first if len(paths) == 1 else root.name}: no rows to preprocess "
                        f"({read} lines read, {read} skipped){why}")
    plan = plan_splits(schema, split, parts)
    timings["stage_s"] = time.perf_counter() - clock
    timings["stage_cpu_s"] = time.process_time() - cpu
    clock, cpu = time.perf_counter(), time.process_time()

    table_sizes: list[int]
    kept: list[pa.Array] = []
    counted: list[int] = []
    if mode == "hash":
        _finish_hash_bags(parts, schema)
        vocab = Vocabulary(mode, [c.name for c in schema.categorical],
                           [c.kind for c in schema.categorical], options.hash_buckets)
    else:
        n_features = len(schema.categorical)
        progress(Progress("vocabulary", 0, n_features, "features"))
        with ThreadPoolExecutor(options.workers) as pool:
            futures = [pool.submit(build_feature, k, schema, parts, plan, mode,
                                   options.min_count or 1) for k in range(n_features)]
            for k, future in enumerate(futures):
                values, distinct = future.result()
                kept.append(values)
                counted.append(distinct)
                progress(Progress("vocabulary", k + 1, n_features, "features"))
        vocab = Vocabulary(mode, [c.name for c in schema.categorical],
                           [c.kind for c in schema.categorical], None, options.min_count, kept)
    for part in parts.values():
        shutil.rmtree(part.folder / "raw", ignore_errors=True)
    table_sizes = vocab.table_sizes()
    vocab.save(root / "vocab")
    timings["vocabulary_s"] = time.perf_counter() - clock
    timings["vocabulary_cpu_s"] = time.process_time() - cpu
    clock = time.perf_counter()

    ranges = dict(plan.ranges)
    copies = dict(plan.copies)
    if options.shuffle and "train" in ranges:
        rng = np.random.default_rng(int(split.get("seed", 0)))
        train = ranges.pop("train")
        if len(train) != 1:
            raise DataError("--shuffle needs a training split in one part (Kaggle); for "
                            "Terabyte shuffle while loading (dlrm train shuffles batches)")
        r = train[0]
        copies["train"] = (r["part"], r["start"] + rng.permutation(r["stop"] - r["start"]))
    elif options.shuffle and "train" in copies:
        src, rows = copies["train"]
        copies["train"] = (src, rows[np.random.default_rng(int(split.get("seed", 0)))
                                     .permutation(rows.size)])
    total_copy = sum(rows.size for _, rows in copies.values())
    copied = 0
    for s, (src, rows) in copies.items():
        name = f"{s}_shuffled" if options.shuffle and s == "train" else s
        copy_rows(parts[src].folder, root / "parts" / name, rows, schema)
        ranges[s] = [{"part": name, "start": 0, "stop": int(rows.size)}]
        copied += rows.size
        progress(Progress("write splits", copied, total_copy, "rows"))
    used = {r["part"] for rs in ranges.values() for r in rs}
    all_parts = dict(parts)
    for extra in used - set(parts):
        all_parts[extra] = Part(extra, root / "parts" / extra, {})
    dense_stats = standardize(all_parts, ranges, schema)
    for name in set(parts) - used:
        shutil.rmtree(parts[name].folder)
    for part in parts.values():
        if part.folder.exists():
            (part.folder / "key.npy").unlink(missing_ok=True)
    ranges = {s: ranges[s] for s in ("train", "val", "test") if s in ranges}
    rows = {s: sum(r["stop"] - r["start"] for r in rs) for s, rs in ranges.items()}
    if rows.get("val", 0) == 0:
        raise DataError(f"the split gives no validation rows ({rows}); a data set needs a "
                        "validation split to measure a model: use more rows or another split")
    skips = SkipLog()
    for part in parts.values():
        skips.merge(part.skips)
    positives = {s: positives_of(all_parts, rs) for s, rs in ranges.items()}
    timings["splits_s"] = time.perf_counter() - clock
    for key in ("read_wait_s", "parse_cpu_s", "write_s", "close_s"):
        timings[f"stage_{key}"] = sum(p.timings[key] for p in parts.values())
    dense_names = [d.column for d in schema.dense] or ["constant_one"]
    features = [{"name": c.name, "column": c.column, "kind": c.kind, "multi_hot": c.multi_hot,
                 "table_size": table_sizes[k]} for k, c in enumerate(schema.categorical)]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tool": "dlrm",
        "tool_version": tool_version(),
        "created": utc_now(),
        "dataset": schema.name,
        "schema": schema.to_dict(),
        "num_dense": len(dense_names),
        "dense_names": dense_names,
        "num_sparse": len(features),
        "sparse_names": [f["name"] for f in features],
        "features": features,
        "table_sizes": table_sizes,
        **vocab.to_dict(),
        "vocabulary_from": schema.vocabulary.get("from", "train"),
        "id_layout": {"missing": MISSING_ID, "first_value": vocab.first_value_id,
                      "unseen": vocab.unseen_id},
        "dense_transforms": {d.column: d.transform for d in schema.dense},
        "dense_stats": dense_stats,
        "split": split,
        "seed": int(split.get("seed", 0)),
        "shuffle": options.shuffle,
        "rows": rows,
        "positives": positives,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "rows_read": sum(p.rows_read for p in parts.values()),
        "rows_written": sum(p.rows_written for p in parts.values()),
        **skips.to_dict(),
        "inputs": [p.to_dict() for p in parts.values()],
        "reused_parts": [p.name for p in parts.values() if p.reused],
        "splits": ranges,
    }
