"""Any tabular CTR data set (CSV/TSV/Parquet, MovieLens) through a JSON schema.

A thin entry to the one pipeline (``dlrm.data.pipeline``): the schema
(``dlrm.data.pipeline.schema``) says what the columns are; ``preprocess_table`` runs the same
stages as Criteo and writes the same format (``dlrm-memmap`` 2, read by
``MemmapDataSource``). Shipped schemas: ``criteo-kaggle``, ``criteo-terabyte``, ``avazu``,
``movielens-100k``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlrm.data.pipeline.metadata import DataError, ProgressFn
from dlrm.data.pipeline.schema import SPLITS, Schema, load_schema, shipped_schemas
from dlrm.data.pipeline.stages import Options, preprocess

TableSchema = Schema  # the name before the one pipeline

__all__ = ["Schema", "TableSchema", "load_schema", "preprocess_table", "shipped_schemas"]


def preprocess_table(schema: Schema, inputs: dict[str, str | Path] | str | Path,
                     out_dir: str | Path, strict: bool = False,
                     progress: ProgressFn | None = None, overwrite: bool = False,
                     hash_buckets: int | None = None, min_count: int | None = None,
                     workers: int = 2) -> dict[str, Any]:
    """Preprocess tabular data described by ``schema`` into the data set ``out_dir``.

    Args:
        inputs: one file (or MovieLens folder) split by the schema's fractions, or a dict
            ``{"main": file, "test": other_file, ...}``: splits named there are taken whole
            from their files, the rest come from ``main`` by fractions.
    Returns the metadata (also ``out_dir/metadata.json``).
    """
    if not isinstance(inputs, dict):
        inputs = {"main": inputs}
    for name in inputs:
        if name != "main" and name not in SPLITS:
            raise DataError(f"input for split {name!r}: expected main or one of {SPLITS}")
    ordered = [(name, Path(inputs[name])) for name in ("main", *SPLITS) if inputs.get(name)]
    options = Options(strict=strict, overwrite=overwrite, hash_buckets=hash_buckets,
                      min_count=min_count, workers=workers)
    return preprocess(schema, ordered, out_dir, options, progress)
