"""What a data set's raw rows look like and how they become features: one JSON schema.

Every data set goes through the same pipeline, described by a schema; Criteo Kaggle, Criteo
Terabyte, Avazu and MovieLens-100K are shipped with the package (``dlrm/data/schemas/``,
found with ``importlib.resources``, so they exist in an installed wheel too)::

    {"name": "avazu", "reader": "text", "delimiter": ",", "header": true,
     "label": {"column": "click"},
     "dense": [],
     "categorical": [{"column": "C1"},
                     {"name": "hour_of_day", "column": "hour", "transform": "yymmddhh_hour"},
                     {"column": "genres", "separator": "|"}],
     "split": {"order": "random", "seed": 0, "fractions": {"train": 0.8, "val": 0.1,
                                                           "test": 0.1}},
     "vocabulary": {"from": "train"}}

Fields:

- ``reader``: ``text`` (delimited text, plain or .gz: ``delimiter`` (default tab for
  ``.tsv``/``.txt``, else comma), ``header``, ``column_names`` when there is no header,
  ``quote`` (``"``-quoted values; a value never spans lines), ``encoding`` ``utf8`` or
  ``latin-1``); ``.parquet`` inputs are read as Parquet; ``movielens-100k`` joins a MovieLens
  folder's ``u.data``, ``u.user`` and ``u.item`` (columns user, item, rating, timestamp, age,
  gender, occupation, zip, genres). ``csv`` is accepted for ``text``.
- ``label``: ``column``; its cells must be exactly ``0`` or ``1``, or, with ``threshold``, a
  number (label = value >= threshold).
- ``dense``: ``column``, ``type`` (``int``: an optional ``-`` and digits that fit int64, as
  Criteo's; ``float``: a decimal number, default) and ``transform``: ``log1p``
  (log(1 + max(x, 0)), the reference DLRM's), ``standardize`` ((x - mean) / std over the
  training split) or ``none``. Empty cells are 0 (``standardize``: the mean). A number
  outside float32's range (or int64's) is a bad cell, never an infinity. With no dense
  column the data gets one constant column of ones (``constant_one``).
- ``categorical``: ``column``, optional ``name``, ``kind`` (``string``, default, or ``hex32``:
  exactly 8 hex digits, as Criteo's), ``transform`` (``none``, ``prefix`` with ``length``,
  ``bucket`` with sorted ``boundaries``, ``log_squared``, ``yymmddhh_hour``,
  ``yymmddhh_weekday``) and ``separator`` (a multi-hot bag of the separated values; empty
  items are dropped).
  ``log_squared`` makes a count a category, as the Criteo Kaggle winners did (Juan et al.
  2016): ``floor(v)`` for v <= 2, ``floor(ln(v)^2)`` above (ids ``v:<n>`` and ``l:<n>``),
  so a dense column can also be a categorical one under another ``name``.
- ``split``: ``order`` ``reference`` (``days`` consecutive equal parts, all but the last for
  training, the last halved into test then validation: the reference DLRM's Kaggle split),
  ``days`` (one input file per day, ``test_day`` halved into test and validation:
  Terabyte), ``file`` (consecutive parts by ``fractions``), ``column`` (stable sort by the
  numeric column ``by``, then consecutive parts) or ``random`` (a seeded permutation of the
  rows cut by the fractions, each split in file order); splits given as their own input
  files are taken whole.
- ``vocabulary``: ``from`` ``all`` (ids from every row read, the reference's Criteo recipe) or
  ``train``; ``min_count``; ``hash_buckets``. Command line flags override them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dlrm.data.pipeline.metadata import DataError

SPLITS = ("train", "val", "test")
DENSE_TRANSFORMS = ("log1p", "standardize", "none")
CATEGORICAL_TRANSFORMS = ("none", "prefix", "bucket", "log_squared", "yymmddhh_hour",
                          "yymmddhh_weekday")
SPLIT_ORDERS = ("reference", "days", "file", "column", "random")


@dataclass
class DenseColumn:
    column: str
    transform: str = "log1p"
    type: str = "float"

    def __post_init__(self) -> None:
        if self.transform not in DENSE_TRANSFORMS:
            raise DataError(f"dense column {self.column!r}: transform {self.transform!r} is "
                            f"not one of {', '.join(DENSE_TRANSFORMS)}")
        if self.type not in ("int", "float"):
            raise DataError(f"dense column {self.column!r}: type {self.type!r} is not int or "
                            "float")


@dataclass
class CategoricalColumn:
    column: str
    name: str = ""
    kind: str = "string"
    transform: str = "none"
    separator: str | None = None
    length: int | None = None
    boundaries: list[float] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.column
        if self.kind not in ("string", "hex32"):
            raise DataError(f"categorical column {self.name!r}: kind {self.kind!r} is not "
                            "string or hex32")
        if self.transform not in CATEGORICAL_TRANSFORMS:
            raise DataError(f"categorical column {self.name!r}: transform {self.transform!r} "
                            f"is not one of {', '.join(CATEGORICAL_TRANSFORMS)}")
        if self.transform == "prefix" and not (isinstance(self.length, int) and self.length > 0):
            raise DataError(f"categorical column {self.name!r}: prefix needs a 'length' >= 1")
        if self.transform == "bucket":
            b = self.boundaries
            if not b or any(x > y for x, y in zip(b, b[1:])):
                raise DataError(f"categorical column {self.name!r}: bucket needs sorted "
                                "'boundaries'")
        if self.kind == "hex32" and (self.transform != "none" or self.separator):
            raise DataError(f"categorical column {self.name!r}: hex32 takes no transform or "
                            "separator")
        if self.separator == "":
            raise DataError(f"categorical column {self.name!r}: empty separator")

    @property
    def multi_hot(self) -> bool:
        return self.separator is not None


@dataclass
class Schema:
    """A parsed schema (see the module docstring for the fields)."""

    label: dict[str, Any]
    categorical: list[CategoricalColumn]
    dense: list[DenseColumn] = field(default_factory=list)
    name: str = "table"
    description: str = ""
    reader: str = "text"
    delimiter: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    encoding: str = "utf8"
    quote: bool = True
    split: dict[str, Any] = field(default_factory=lambda: {
        "order": "random", "seed": 0, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}})
    vocabulary: dict[str, Any] = field(default_factory=lambda: {"from": "train"})
    min_count: int | None = None  # older schemas: same as vocabulary.min_count

    def __post_init__(self) -> None:
        if not isinstance(self.label, dict) or "column" not in self.label:
            raise DataError("schema 'label' needs a 'column'")
        self.dense = [d if isinstance(d, DenseColumn) else DenseColumn(**d) for d in self.dense]
        self.categorical = [c if isinstance(c, CategoricalColumn) else CategoricalColumn(**c)
                            for c in self.categorical]
        if not self.categorical:
            raise DataError("schema needs at least one categorical column")
        names = [c.name for c in self.categorical]
        if len(set(names)) != len(names):
            raise DataError(f"categorical names must be unique, got {names}")
        if self.reader == "csv":
            self.reader = "text"
        if self.reader not in ("text", "parquet", "movielens-100k"):
            raise DataError(f"schema reader {self.reader!r}: expected text, parquet or "
                            "movielens-100k")
        if self.encoding.lower().replace("-", "") not in ("utf8", "latin1"):
            raise DataError(f"schema encoding {self.encoding!r}: expected utf8 or latin-1")
        if self.delimiter is not None and len(self.delimiter.encode()) != 1:
            raise DataError(f"schema delimiter {self.delimiter!r}: must be one character")
        if not self.header and not self.column_names and self.reader == "text":
            raise DataError("a schema without 'header' needs 'column_names'")
        order = self.split.get("order", "random")
        if order not in SPLIT_ORDERS:
            raise DataError(f"split order {order!r}: expected one of {', '.join(SPLIT_ORDERS)}")
        if order == "column" and "by" not in self.split:
            raise DataError("split order 'column' needs 'by': the column to sort by")
        for split_name, value in self.split.get("fractions", {}).items():
            if split_name not in SPLITS:
                raise DataError(f"split {split_name!r}: expected one of {SPLITS}")
            if not isinstance(value, (int, float)) or value < 0:
                raise DataError(f"split fraction {split_name}={value!r}: must be >= 0")
        vocab = dict(self.vocabulary)
        if self.min_count is not None:
            vocab.setdefault("min_count", self.min_count)
        if vocab.get("from", "train") not in ("train", "all"):
            raise DataError(f"vocabulary from {vocab.get('from')!r}: expected train or all")
        self.vocabulary = vocab

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        if not isinstance(d, dict):
            raise DataError("a schema is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"schema has unknown fields {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as err:
            raise DataError(f"schema: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DataError(f"schema {path} does not exist; shipped schemas: "
                            f"{', '.join(shipped_schemas())}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"schema {path}: cannot read it ({err})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
        try:
            return cls.from_dict(d)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "reader": self.reader,
            "delimiter": self.delimiter, "header": self.header,
            "column_names": self.column_names, "encoding": self.encoding, "quote": self.quote,
            "label": dict(self.label),
            "dense": [vars(d).copy() for d in self.dense],
            "categorical": [{k: v for k, v in vars(c).items() if v is not None}
                            for c in self.categorical],
            "split": dict(self.split), "vocabulary": dict(self.vocabulary)}

    def source_columns(self) -> list[str]:
        """Every input column the schema reads, each once, in first-use order."""
        cols = [self.label["column"], *(d.column for d in self.dense),
                *(c.column for c in self.categorical)]
        if self.split.get("order") == "column":
            cols.append(self.split["by"])
        return list(dict.fromkeys(cols))

    def without_label(self) -> Schema:
        """The same rows without their label column (Criteo's test.txt), for scoring."""
        names = [n for n in (self.column_names or []) if n != self.label["column"]]
        d = self.to_dict()
        d["column_names"] = names or None
        d["label"] = {"column": self.label["column"], "absent": True}
        return Schema.from_dict(d)

    @property
    def has_label(self) -> bool:
        return not self.label.get("absent", False)


def shipped_schemas() -> list[str]:
    """Names of the schemas shipped in the package (``dlrm/data/schemas/*.json``)."""
    folder = resources.files("dlrm.data") / "schemas"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_schema(name_or_path: str | Path) -> Schema:
    """A schema file, or the name of a shipped one (``criteo-kaggle``, ``avazu``, ...)."""
    path = Path(name_or_path)
    if path.suffix != ".json" or not path.exists():
        name = str(name_or_path)
        shipped = resources.files("dlrm.data") / "schemas" / f"{name}.json"
        if "/" not in name and shipped.is_file():
            try:
                return Schema.from_dict(json.loads(shipped.read_text()))
            except DataError as err:
                raise DataError(f"shipped schema {name}: {err}") from None
    return Schema.load(path)
