"""Data: the input format's sources — synthetic generators and memory-mapped data sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlrm.data.source import DataSource


def open_data(spec: str | Path | dict[str, Any], **synthetic_options: Any) -> DataSource:
    """A data source from a CLI string, a folder path, or a stored ``spec()`` dict.

    Strings: ``synthetic:planted`` / ``synthetic:random`` (``synthetic_options`` are
    ``SyntheticConfig`` fields such as ``table_sizes``, ``seed``), or a folder written by
    ``dlrm preprocess`` (it holds ``metadata.json``; folders in the older ``dlrm-table-v1``
    format open as ``dlrm.data.legacy.TableDataSource``).
    """
    from dlrm.data.synthetic import SyntheticConfig, SyntheticData

    if isinstance(spec, dict):
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind == "synthetic":
            return SyntheticData(SyntheticConfig(**spec["config"]))
        if kind == "memmap":
            from dlrm.data.loader import MemmapDataSource

            return MemmapDataSource(spec["path"], **({"block_rows": spec["block_rows"]}
                                                     if "block_rows" in spec else {}))
        if kind == "table":
            from dlrm.data.legacy import TableDataSource

            return TableDataSource(spec["path"])
        raise ValueError(f"unknown data spec kind {kind!r}")
    spec = str(spec)
    if spec.startswith("synthetic:"):
        kind = spec.split(":", 1)[1]
        return SyntheticData(SyntheticConfig(kind=kind, **synthetic_options))
    path = Path(spec)
    if path.is_dir() and (path / "metadata.json").is_file():
        from dlrm.data.legacy import FORMAT as TABLE_FORMAT
        from dlrm.data.legacy import TableDataSource

        if json.loads((path / "metadata.json").read_text()).get("format") == TABLE_FORMAT:
            return TableDataSource(path)
        from dlrm.data.loader import MemmapDataSource

        return MemmapDataSource(path)
    raise ValueError(f"--data {spec!r}: expected synthetic:planted, synthetic:random, or a "
                     f"folder made by `dlrm preprocess` (with metadata.json)")


__all__ = ["DataSource", "open_data"]
