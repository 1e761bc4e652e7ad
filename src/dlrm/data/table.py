"""Any tabular CTR data set -> memory-mapped arrays, described by a small JSON schema.

A schema names the label column, dense columns (with a transform) and categorical columns
(single ids, derived values, or multi-hot lists with a separator), and how to split rows:

    {"name": "avazu-9k", "reader": "csv", "delimiter": ",", "header": true,
     "label": {"column": "click"},
     "dense": [],
     "categorical": [{"column": "C1"},
                     {"name": "hour_of_day", "column": "hour", "transform": "yymmddhh_hour"},
                     {"column": "genres", "separator": "|"}],
     "split": {"order": "random", "seed": 0, "fractions": {"train": 0.8, "val": 0.1,
                                                           "test": 0.1}}}

Fields:
- ``reader``: ``csv`` (CSV/TSV/.parquet; ``delimiter`` (default: tab for ``.tsv`` files,
  else comma), ``header``, ``column_names`` when
  there is no header, ``encoding``, ``quote``) or ``movielens-100k`` (joins ``u.data`` with
  ``u.user`` and ``u.item`` of a MovieLens-100K folder into one table with columns user, item,
  rating, timestamp, age, gender, occupation, zip, genres ("|"-separated genre names)).
- ``label``: ``column``; values must be 0 or 1, or, with ``threshold``, label = value >= it.
- ``dense``: ``column`` and ``transform``: ``log1p`` (log(1 + max(x, 0)), as the reference
  DLRM does for Criteo), ``standardize`` ((x - mean) / std with the training split's mean and
  std) or ``none``. Empty cells are 0 (``standardize``: the mean). With no dense column the
  data gets one constant column of ones (``constant_one``), so models with a dense input
  (DLRM's bottom MLP) still apply; it carries no information.
- ``categorical``: ``column``, optional ``name`` and ``transform``: ``none``, ``prefix``
  (first ``length`` characters), ``bucket`` (index of the numeric value among sorted
  ``boundaries``), ``yymmddhh_hour`` / ``yymmddhh_weekday`` (hour of day / day of week 0=Monday
  of a YYMMDDHH time stamp, as Avazu's ``hour``); ``separator`` makes it a multi-hot bag.
  Vocabularies come from the training split only: id 0 is every value unseen there (or seen
  fewer than ``min_count`` times), the others get ids 1.. in sorted order.
- ``split``: ``order`` ``file`` (consecutive parts in file order), ``column`` (stable sort by
  the numeric column ``by``, e.g. a time stamp, then consecutive parts) or ``random`` (a
  permutation drawn from ``seed``); ``fractions`` per split. Splits given as their own input
  files are taken whole and left out of the fractions.

Rows with a wrong number of fields, a non-numeric dense value, a bad label or a bad derived
value are skipped, counted in ``rows_skipped`` and shown (file:line and why) in
``skipped_examples``; ``strict=True`` raises instead, naming the first one.

Output folder (format ``dlrm-table-v1``): ``metadata.json`` and per split
``<split>/labels.npy`` (N,) float32, ``<split>/dense.npy`` (N, num_dense) float32,
``<split>/sparse.npy`` (N, F_single) int64 for single-id features, and for each multi-hot
feature ``<split>/<name>.values.npy`` (total ids,) int64 and ``<split>/<name>.offsets.npy``
(N + 1,) int64. ``TableDataSource(folder)`` reads it back as a ``DataSource``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dlrm.data.source import rank_slice
from dlrm.features import Batch, SparseFeatures

log = logging.getLogger(__name__)

FORMAT = "dlrm-table-v1"
SPLITS = ("train", "val", "test")
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
Progress = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------- schema
@dataclass
class DenseColumn:
    column: str
    transform: str = "log1p"

    def __post_init__(self) -> None:
        if self.transform not in ("log1p", "standardize", "none"):
            raise ValueError(f"dense column {self.column!r}: transform {self.transform!r} is "
                             f"not one of log1p, standardize, none")


@dataclass
class CategoricalColumn:
    column: str
    name: str = ""
    transform: str = "none"
    separator: str | None = None
    length: int | None = None
    boundaries: list[float] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.column
        known = ("none", "prefix", "bucket", "yymmddhh_hour", "yymmddhh_weekday")
        if self.transform not in known:
            raise ValueError(f"categorical column {self.name!r}: transform {self.transform!r} "
                             f"is not one of {', '.join(known)}")
        if self.transform == "prefix" and not self.length:
            raise ValueError(f"categorical column {self.name!r}: prefix needs a 'length'")
        if self.transform == "bucket" and not self.boundaries:
            raise ValueError(f"categorical column {self.name!r}: bucket needs 'boundaries'")

    @property
    def multi_hot(self) -> bool:
        return self.separator is not None


@dataclass
class TableSchema:
    """A parsed schema (see the module docstring for the fields)."""

    label: dict[str, Any]
    categorical: list[CategoricalColumn]
    dense: list[DenseColumn] = field(default_factory=list)
    name: str = "table"
    reader: str = "csv"
    delimiter: str | None = None  # None: tab for .tsv files, else comma
    header: bool = True
    column_names: list[str] | None = None
    encoding: str = "utf8"
    quote: bool = True
    split: dict[str, Any] = field(default_factory=lambda: {
        "order": "random", "seed": 0, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}})
    min_count: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if "column" not in self.label:
            raise ValueError("schema 'label' needs a 'column'")
        self.dense = [d if isinstance(d, DenseColumn) else DenseColumn(**d) for d in self.dense]
        self.categorical = [c if isinstance(c, CategoricalColumn) else CategoricalColumn(**c)
                            for c in self.categorical]
        if not self.categorical:
            raise ValueError("schema needs at least one categorical column")
        names = [c.name for c in self.categorical]
        if len(set(names)) != len(names):
            raise ValueError(f"categorical names must be unique, got {names}")
        if self.reader not in ("csv", "movielens-100k"):
            raise ValueError(f"schema reader {self.reader!r}: expected csv or movielens-100k")
        order = self.split.get("order", "random")
        if order not in ("file", "column", "random"):
            raise ValueError(f"split order {order!r}: expected file, column or random")
        if order == "column" and "by" not in self.split:
            raise ValueError("split order 'column' needs 'by': the column to sort by")
        for split_name in self.split.get("fractions", {}):
            if split_name not in SPLITS:
                raise ValueError(f"split {split_name!r}: expected one of {SPLITS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSchema:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"schema has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TableSchema:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"schema {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from err
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def source_columns(self) -> list[str]:
        cols = [self.label["column"], *(d.column for d in self.dense),
                *(c.column for c in self.categorical)]
        if self.split.get("order") == "column":
            cols.append(self.split["by"])
        return list(dict.fromkeys(cols))


def builtin_schema_path(name: str) -> Path | None:
    """``schemas/<name>.json`` shipped at the repository root, if present."""
    root = Path(__file__).resolve().parents[3] / "schemas"
    path = root / f"{name}.json"
    return path if path.is_file() else None


def load_schema(name_or_path: str | Path) -> TableSchema:
    """A schema file, or the name of one shipped in ``schemas/`` (``avazu``, ...)."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = builtin_schema_path(str(name_or_path))
        if shipped is not None:
            path = shipped
    return TableSchema.load(path)


# --------------------------------------------------------------------------------- reading
class _SkipLog:
    """Bad rows: count and the first few examples with file:line and why."""

    def __init__(self, strict: bool, keep: int = 10) -> None:
        self.strict = strict
        self.keep = keep
        self.count = 0
        self.examples: list[str] = []

    def add(self, where: str, why: str) -> None:
        if self.strict:
            raise ValueError(f"{where}: {why} (drop --strict to skip such rows)")
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{where}: {why}")


def _read_csv(path: Path, schema: TableSchema, skips: _SkipLog) -> tuple[pa.Table, np.ndarray]:
    """The schema's source columns as strings, and each row's 1-based line number."""
    import pyarrow.csv as pacsv

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=schema.source_columns())
        table = pa.table({n: pc.cast(table[n], pa.string()) for n in table.column_names})
        return table, np.arange(1, table.num_rows + 1)
    bad_lines: list[int] = []
    strict_error: list[str] = []

    def on_invalid(row: Any) -> str:
        line = row.number if row.number is not None else 0
        why = (f"{row.actual_columns} fields, expected {row.expected_columns}: "
               f"{row.text[:60]!r}")
        if skips.strict:  # raising inside the callback is swallowed: stop the reader instead
            strict_error.append(f"{path}:{line}: {why} (drop --strict to skip such rows)")
            return "error"
        skips.add(f"{path}:{line}", why)
        bad_lines.append(line)
        return "skip"

    names = schema.column_names
    read = pacsv.ReadOptions(use_threads=False, encoding=schema.encoding,
                             column_names=names if not schema.header else None,
                             autogenerate_column_names=False)
    delimiter = schema.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    parse = pacsv.ParseOptions(delimiter=delimiter,
                               quote_char='"' if schema.quote else False,
                               invalid_row_handler=on_invalid)
    wanted = schema.source_columns()
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                   include_columns=wanted, strings_can_be_null=False)
    try:
        table = pacsv.read_csv(path, read_options=read, parse_options=parse,
                               convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        if strict_error:
            raise ValueError(strict_error[0]) from None
        raise ValueError(f"{path}: {err}") from err
    # Line of data row i: the i-th line after the header that the parser did not skip.
    first = 2 if schema.header else 1
    candidates = np.arange(first, first + table.num_rows + len(bad_lines))
    lines = np.setdiff1d(candidates, np.asarray(bad_lines, dtype=np.int64), assume_unique=True)
    return table, lines[: table.num_rows]


def _read_movielens(folder: Path) -> tuple[pa.Table, np.ndarray]:
    """u.data joined with u.user and u.item; genres as '|'-joined names. Lines of u.data."""
    import pyarrow.csv as pacsv

    for name in ("u.data", "u.user", "u.item", "u.genre"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: MovieLens-100K file missing")

    def read(name: str, names: list[str], delimiter: str) -> pa.Table:
        return pacsv.read_csv(
            folder / name,
            read_options=pacsv.ReadOptions(column_names=names, encoding="latin-1"),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))

    ratings = read("u.data", ["user", "item", "rating", "timestamp"], "\t")
    ratings = ratings.append_column("__line", pa.array(np.arange(1, ratings.num_rows + 1)))
    users = read("u.user", ["user", "age", "gender", "occupation", "zip"], "|")
    genre_table = read("u.genre", ["genre", "index"], "|")
    genre_names = genre_table["genre"].to_pylist()
    items = read("u.item", ["item", "title", "release", "video_release", "url",
                            *[f"g{k}" for k in range(len(genre_names))]], "|")
    flags = np.stack([np.asarray(items[f"g{k}"].to_pylist()) == "1"
                      for k in range(len(genre_names))], axis=1)  # (items, genres)
    names = np.asarray(genre_names, dtype=object)
    genres = ["|".join(names[row]) for row in flags]  # one entry per movie (1,682)
    items = pa.table({"item": items["item"], "genres": pa.array(genres, pa.string())})
    joined = ratings.join(users, "user", join_type="left outer").join(
        items, "item", join_type="left outer")
    joined = joined.sort_by("__line")
    lines = joined["__line"].to_numpy()
    for col in ("age", "gender", "occupation", "zip", "genres"):
        joined = joined.set_column(joined.column_names.index(col), col,
                                   pc.fill_null(joined[col], ""))
    return joined.drop_columns(["__line"]), lines


# --------------------------------------------------------------------------------- columns
def _numbers(col: pa.ChunkedArray, empty_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a mask of cells that are neither empty nor a number."""
    stripped = pc.utf8_trim_whitespace(col)
    empty = pc.equal(stripped, "")
    ok = pc.match_substring_regex(stripped, NUMBER_PATTERN)
    bad = pc.and_(pc.invert(ok), pc.invert(empty))
    clean = pc.if_else(ok, stripped, str(empty_value))
    return (pc.cast(clean, pa.float64()).to_numpy(zero_copy_only=False),
            bad.to_numpy(zero_copy_only=False))


def _categorical_strings(col: pa.ChunkedArray, spec: CategoricalColumn
                         ) -> tuple[pa.Array, np.ndarray]:
    """The column's values after its transform (strings) and a mask of bad cells."""
    n = len(col)
    no_bad = np.zeros(n, dtype=bool)
    if spec.transform == "none":
        return col, no_bad
    if spec.transform == "prefix":
        return pc.utf8_slice_codeunits(col, 0, spec.length), no_bad
    if spec.transform == "bucket":
        values, bad = _numbers(col)
        bucket = np.searchsorted(np.asarray(spec.boundaries, dtype=np.float64), values,
                                 side="right")
        return pa.array(bucket.astype(str)), bad
    stamps = pc.strptime(pc.utf8_trim_whitespace(col), format="%y%m%d%H", unit="s",
                         error_is_null=True)
    bad = pc.is_null(stamps).to_numpy(zero_copy_only=False)
    part = pc.hour(stamps) if spec.transform == "yymmddhh_hour" else pc.day_of_week(stamps)
    return pc.cast(pc.fill_null(part, 0), pa.string()), bad


def _split_rows(n: int, schema: TableSchema, table: pa.Table, names: list[str]
                ) -> dict[str, np.ndarray]:
    """Row indices of each split in ``names`` from the schema's fractions and order."""
    fractions = schema.split.get("fractions", {"train": 0.8, "val": 0.1, "test": 0.1})
    wanted = {s: float(fractions.get(s, 0.0)) for s in names}
    total = sum(wanted.values())
    if total <= 0:
        raise ValueError(f"split fractions {fractions} give nothing to splits {names}")
    order_kind = schema.split.get("order", "random")
    if order_kind == "random":
        order = np.random.default_rng(int(schema.split.get("seed", 0))).permutation(n)
    elif order_kind == "column":
        key, bad = _numbers(table[schema.split["by"]])
        order = np.argsort(key, kind="stable")
    else:
        order = np.arange(n)
    bounds = np.round(np.cumsum([0.0, *(wanted[s] / total for s in names)]) * n).astype(int)
    return {s: np.sort(order[bounds[k]: bounds[k + 1]]) if order_kind == "random"
            else order[bounds[k]: bounds[k + 1]] for k, s in enumerate(names)}


# --------------------------------------------------------------------------------- writing
def preprocess_table(schema: TableSchema, inputs: dict[str, str | Path] | str | Path,
                     out_dir: str | Path, strict: bool = False,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Parse tabular data with ``schema`` and write a ``dlrm-table-v1`` folder.

    Args:
        schema: a ``TableSchema`` (``load_schema`` reads one).
        inputs: one file (or MovieLens folder) split by the schema's fractions, or a dict
            ``{"main": file, "test": other_file, ...}``: splits named there are taken whole
            from their files, the rest come from ``main`` by fractions.
        out_dir: output folder (created).
        strict: raise on the first bad row instead of skipping it.
        progress: called with ``{"event": "stage", "stage": ..., "done": k, "total": n}``.

    Returns the metadata dict (also written to ``out_dir/metadata.json``).
    """
    emit = progress or (lambda _e: None)
    if not isinstance(inputs, dict):
        inputs = {"main": inputs}
    inputs = {k: Path(v) for k, v in inputs.items()}
    for name in inputs:
        if name != "main" and name not in SPLITS:
            raise ValueError(f"input for split {name!r}: expected main or one of {SPLITS}")
    stages = len(inputs) + 3
    skips = _SkipLog(strict)

    # 1. Read every input file; keep each row's file:line for messages.
    tables: dict[str, tuple[pa.Table, np.ndarray, Path]] = {}
    for k, (name, path) in enumerate(inputs.items()):
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        emit({"event": "stage", "stage": f"read {path.name}", "done": k, "total": stages})
        if schema.reader == "movielens-100k":
            table, lines = _read_movielens(path)
            path = path / "u.data"
        else:
            table, lines = _read_csv(path, schema, skips)
        missing = [c for c in schema.source_columns() if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; it has {table.column_names}")
        tables[name] = (table, lines, path)

    # 2. Row-level conversion and checks, per file.
    emit({"event": "stage", "stage": "convert", "done": len(inputs), "total": stages})
    converted: dict[str, dict[str, Any]] = {}
    for name, (table, lines, path) in tables.items():
        n = table.num_rows
        bad = np.zeros(n, dtype=bool)
        reasons: list[tuple[np.ndarray, str, str]] = []  # (bad cells, why, column)
        label_raw, label_bad = _numbers(table[schema.label["column"]], empty_value=np.nan)
        if "threshold" in schema.label:
            labels = (label_raw >= float(schema.label["threshold"])).astype(np.float32)
            label_bad |= np.isnan(label_raw)
        else:
            label_bad |= ~np.isin(label_raw, (0.0, 1.0))
            labels = label_raw.astype(np.float32)
        reasons.append((label_bad, "label is not " + ("a number" if "threshold" in schema.label
                                                      else "0 or 1"), schema.label["column"]))
        dense = []
        for d in schema.dense:
            values, bad_cells = _numbers(table[d.column])
            if d.transform == "log1p":
                values = np.log1p(np.maximum(values, 0.0))
            dense.append(values)
            reasons.append((bad_cells, "dense value is not a number", d.column))
        cats = []
        for c in schema.categorical:
            strings, bad_cells = _categorical_strings(table[c.column], c)
            cats.append(strings)
            reasons.append((bad_cells, f"not valid for transform {c.transform}", c.column))
        for mask, why, col in reasons:
            new = np.flatnonzero(mask & ~bad)
            for i in new[: skips.keep]:
                value = table[col][int(i)].as_py()
                skips.add(f"{path}:{lines[i]}", f"column {col!r}: {why}: {value!r}")
            skips.count += max(len(new) - skips.keep, 0)
            bad |= mask
        keep = np.flatnonzero(~bad)
        converted[name] = {"labels": labels[keep], "table": table, "keep": keep,
                           "dense": [v[keep] for v in dense],
                           "cats": [pc.take(s, pa.array(keep)) for s in cats]}

    # 3. Splits: whole files, or fractions of the main file.
    parts: dict[str, tuple[str, np.ndarray]] = {}
    from_main = [s for s in SPLITS if s not in inputs]
    if "main" in converted:
        main = converted["main"]
        order_table = main["table"].take(pa.array(main["keep"]))
        rows = _split_rows(len(main["keep"]), schema, order_table,
                           [s for s in from_main
                            if schema.split.get("fractions", {"train": 1}).get(s, 0) > 0])
        for s, idx in rows.items():
            parts[s] = ("main", idx)
    for s in SPLITS:
        if s in converted:
            parts[s] = (s, np.arange(len(converted[s]["keep"])))
    if "train" not in parts or len(parts["train"][1]) == 0:
        raise ValueError("no training rows: give the schema a train fraction or a train input")

    def column(split: str, kind: str, k: int) -> Any:
        source, idx = parts[split]
        values = converted[source][kind][k]
        return values[idx] if kind == "dense" else pc.take(values, pa.array(idx))

    # 4. Vocabularies from the training split; ids 1.. sorted, 0 = unseen or rare.
    emit({"event": "stage", "stage": "vocabularies", "done": len(inputs) + 1, "total": stages})
    vocabularies: list[pa.Array] = []
    for k, c in enumerate(schema.categorical):
        values = column("train", "cats", k)
        if c.multi_hot:
            values = pc.list_flatten(pc.split_pattern(values, c.separator))
            values = pc.filter(values, pc.not_equal(values, ""))
        counts = pc.value_counts(values)
        uniques, freq = counts.field("values"), counts.field("counts")
        if schema.min_count > 1:
            uniques = pc.filter(uniques, pc.greater_equal(freq, schema.min_count))
        vocabularies.append(pc.take(uniques, pc.sort_indices(uniques)))
    table_sizes = [len(v) + 1 for v in vocabularies]

    # 5. Write every split.
    emit({"event": "stage", "stage": "write", "done": len(inputs) + 2, "total": stages})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, float]] = {}
    dense_names = [d.column for d in schema.dense] or ["constant_one"]
    split_rows: dict[str, int] = {}
    positives: dict[str, int] = {}
    for s in SPLITS:
        if s not in parts:
            continue
        folder = out / s
        folder.mkdir(exist_ok=True)
        source, idx = parts[s]
        labels = converted[source]["labels"][idx]
        n = len(labels)
        if schema.dense:
            cols = []
            for k, d in enumerate(schema.dense):
                values = column(s, "dense", k)
                if d.transform == "standardize":
                    if s == "train":
                        std = float(values.std()) or 1.0
                        stats[d.column] = {"mean": float(values.mean()), "std": std}
                    values = (values - stats[d.column]["mean"]) / stats[d.column]["std"]
                cols.append(values)
            dense = np.stack(cols, axis=1).astype(np.float32)
        else:
            dense = np.ones((n, 1), dtype=np.float32)
        singles = []
        for k, c in enumerate(schema.categorical):
            values = column(s, "cats", k)
            if c.multi_hot:
                lists = pc.split_pattern(values, c.separator)
                flat = pc.list_flatten(lists)
                lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
                keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
                ids = _lookup(pc.filter(flat, pa.array(keep)), vocabularies[k])
                # Empty strings are not ids: drop them and shorten their bags.
                owner = np.repeat(np.arange(n), lengths)
                lengths = np.bincount(owner[keep], minlength=n)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                np.save(folder / f"{c.name}.values.npy", ids)
                np.save(folder / f"{c.name}.offsets.npy", offsets)
            else:
                singles.append(_lookup(values, vocabularies[k]))
        sparse = np.stack(singles, axis=1) if singles else np.zeros((n, 0), dtype=np.int64)
        np.save(folder / "labels.npy", labels.astype(np.float32))
        np.save(folder / "dense.npy", dense)
        np.save(folder / "sparse.npy", sparse.astype(np.int64))
        split_rows[s] = n
        positives[s] = int(labels.sum())

    metadata = {
        "format": FORMAT, "name": schema.name, "rows": split_rows, "positives": positives,
        "num_dense": len(dense_names), "dense_columns": dense_names,
        "dense_stats": stats, "table_sizes": table_sizes,
        "features": [{"name": c.name, "column": c.column, "transform": c.transform,
                      "multi_hot": c.multi_hot, "table_size": table_sizes[k]}
                     for k, c in enumerate(schema.categorical)],
        "vocabularies": {c.name: vocabularies[k].to_pylist()
                         for k, c in enumerate(schema.categorical)},
        "rows_skipped": skips.count, "skipped_examples": skips.examples,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "split": schema.split, "min_count": schema.min_count,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1))
    emit({"event": "stage", "stage": "done", "done": stages, "total": stages})
    if skips.count:
        log.warning("%s: skipped %d bad rows, e.g. %s", schema.name, skips.count,
                    skips.examples[0])
    return metadata


def _lookup(values: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """ids 1.. of values in the vocabulary, 0 for values not in it; int64."""
    index = pc.index_in(values, value_set=vocabulary)
    return (pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1)


# --------------------------------------------------------------------------------- reading back
class TableDataSource:
    """A ``dlrm-table-v1`` folder as a ``DataSource`` (see ``dlrm.data.source``).

    Arrays are memory-mapped; a batch gathers its rows. Features keep the schema's order;
    multi-hot features become bags (``SparseFeatures.one_hot`` is False then).

    Example:
        >>> data = TableDataSource("out/movielens")
        >>> batch = next(data.batches("train", 256))
        >>> batch.dense.shape, batch.sparse.num_features
        (torch.Size([256, 1]), 7)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist (run `dlrm preprocess table`)")
        self.metadata = json.loads(meta_path.read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.metadata.get('format')!r}, "
                             f"expected {FORMAT!r}")
        self.table_sizes = list(self.metadata["table_sizes"])
        self.num_dense = int(self.metadata["num_dense"])
        self.features = self.metadata["features"]
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def _split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self.metadata["rows"]:
            raise ValueError(f"unknown split {split!r}; {self.path} has "
                             f"{sorted(self.metadata['rows'])}")
        if split not in self._arrays:
            folder = self.path / split
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                      for name in ("labels", "dense", "sparse")}
            for f in self.features:
                if f["multi_hot"]:
                    for part in ("values", "offsets"):
                        arrays[f"{f['name']}.{part}"] = np.load(
                            folder / f"{f['name']}.{part}.npy", mmap_mode="r")
            self._arrays[split] = arrays
        return self._arrays[split]

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.metadata["rows"]]

    def num_samples(self, split: str) -> int:
        if split not in self.metadata["rows"]:
            return 0
        return int(self.metadata["rows"][split])

    def rows(self, split: str, index: np.ndarray) -> Batch:
        """The samples at ``index`` (row numbers of the split) as one ``Batch``."""
        arrays = self._split(split)
        batch = len(index)
        dense = torch.from_numpy(np.ascontiguousarray(arrays["dense"][index]))
        labels = torch.from_numpy(np.ascontiguousarray(arrays["labels"][index]))
        singles = np.asarray(arrays["sparse"][index])  # (B, F_single)
        if not any(f["multi_hot"] for f in self.features):
            return Batch(dense, SparseFeatures.from_ids(torch.from_numpy(singles)), labels)
        values, lengths = [], []
        single_k = 0
        for f in self.features:  # feature-major
            if not f["multi_hot"]:
                values.append(singles[:, single_k])
                lengths.append(np.ones(batch, dtype=np.int64))
                single_k += 1
                continue
            offsets = arrays[f"{f['name']}.offsets"]
            starts, ends = offsets[index], offsets[index + 1]
            count = ends - starts
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            values.append(np.asarray(arrays[f"{f['name']}.values"][np.repeat(starts, count)
                                                                   + within]))
            lengths.append(count)
        sparse = SparseFeatures.from_lengths(torch.from_numpy(np.concatenate(values)),
                                             torch.from_numpy(np.concatenate(lengths)),
                                             len(self.features))
        return Batch(dense, sparse, labels)

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches of a split; with ``shuffle`` a permutation drawn from (seed, epoch)."""
        n = self.num_samples(split)
        order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
                 else np.arange(n))
        num_batches = n // batch_size if drop_last else -(-n // batch_size)
        for k in range(start_batch, num_batches):
            index = order[k * batch_size: min((k + 1) * batch_size, n)]
            part = rank_slice(len(index), rank, world_size)
            yield self.rows(split, index[part])

    def spec(self) -> dict[str, Any]:
        return {"kind": "table", "path": str(self.path)}
