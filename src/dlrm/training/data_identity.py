"""Which data set a model was trained on, so that it is never scored on another by mistake.

A model's embedding rows are indexed by the ids of its data set's vocabulary: row 17 of table
3 is whatever value that vocabulary numbered 17. Another data set, even one with the same
table sizes, numbers its values differently, and the model's scores on it are silently
meaningless. So checkpoints record the data set's identity (``data_identity``), and
``dlrm eval``, ``dlrm predict`` and ``dlrm train --resume`` compare it with the data they are
given (``check_same_data``):

- ``schema``: dense width and number of tables. A mismatch cannot run at all: always refused.
- ``table_sizes``: rows of each table.
- ``fingerprint``: a hash of what defines the ids. For a ``dlrm preprocess`` folder, the bytes
  of its ``metadata.json`` (vocabulary mode, counts, inputs; hashing the bytes means any
  metadata layout works, and a data set preprocessed again gets a new fingerprint); for
  synthetic data, its generator config; otherwise the schema and table sizes alone.

Table sizes or fingerprint differing are refused unless forced (``force=True``; the CLI's
``--allow-data-mismatch``), for the case a user knows better (e.g. a folder preprocessed again
from the same files).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from dlrm.data.source import DataSource

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


class DataMismatch(ValueError):
    """The data given is not the data set a checkpoint was trained on."""


def data_identity(data: DataSource) -> dict[str, Any]:
    """What identifies ``data``'s ids: ``{"source", "schema", "table_sizes", "fingerprint",
    "fingerprint_of"}`` (JSON-able; stored in checkpoints and ``config.json``)."""
    try:
        spec = data.spec()
    except (ValueError, NotImplementedError):  # in-memory sources have no spec
        spec = {"kind": type(data).__name__}
    schema = {"num_dense": int(data.num_dense), "num_tables": len(data.table_sizes)}
    sizes = [int(n) for n in data.table_sizes]
    folder = Path(spec["path"]) if isinstance(spec.get("path"), str) else None
    if folder is not None and (folder / METADATA_FILE).is_file():
        digest = hashlib.sha256((folder / METADATA_FILE).read_bytes())
        of = f"{METADATA_FILE} of {folder}"
    elif spec.get("kind") == "synthetic":
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
        of = "the synthetic generator's config"
    else:
        digest = hashlib.sha256(json.dumps([schema, sizes], sort_keys=True).encode())
        of = "the schema and table sizes"
    return {"source": describe_source(spec), "schema": schema, "table_sizes": sizes,
            "fingerprint": digest.hexdigest()[:16], "fingerprint_of": of}


def describe_source(spec: dict[str, Any]) -> str:
    """A data spec in a few words: a folder's path, or ``synthetic:KIND (seed S)``."""
    if isinstance(spec.get("path"), str):
        return spec["path"]
    if spec.get("kind") == "synthetic":
        config = spec.get("config", {})
        return f"synthetic:{config.get('kind', '?')} (seed {config.get('seed', '?')})"
    return str(spec.get("kind", "unknown data"))


def check_same_data(saved: dict[str, Any] | None, data: DataSource, what: str,
                    force: bool = False) -> list[str]:
    """Refuse ``data`` unless it is the data set ``saved`` (a ``data_identity``) describes.

    Args:
        saved: the identity a checkpoint recorded (None: an older checkpoint without one).
        data: the data about to be used.
        what: names the checkpoint in messages, e.g. ``"runs/x/last.pt"``.
        force: accept other table sizes or another fingerprint (never another schema).

    Returns warnings to show (an unchecked older checkpoint, a forced mismatch); raises
    ``DataMismatch`` naming both data sets and what to do.
    """
    current = data_identity(data)
    if not saved:
        return [f"{what} records no data identity (written by an older dlrm): the data "
                f"({current['source']}) is not checked against the training data"]
    trained_on = (f"{what} was trained on {saved.get('source', '?')}; the data given is "
                  f"{current['source']}")
    if saved.get("schema") != current["schema"]:
        raise DataMismatch(
            f"{trained_on}, with another schema ({_schema(current['schema'])} instead of "
            f"{_schema(saved.get('schema'))}); the model cannot read it. Use the data set it "
            f"was trained on")
    problems = []
    if saved.get("table_sizes") != current["table_sizes"]:
        problems.append("other table sizes (" + _size_diff(saved.get("table_sizes") or [],
                                                           current["table_sizes"]) + ")")
    if saved.get("fingerprint") != current["fingerprint"]:
        problems.append(f"another fingerprint ({current['fingerprint']} of "
                        f"{current['fingerprint_of']}, trained: {saved.get('fingerprint')})")
    if not problems:
        return []
    message = (f"{trained_on}, with {' and '.join(problems)}: its ids may mean other values, "
               f"and the scores would be wrong")
    if force:
        return [message + "; accepted because of --allow-data-mismatch"]
    raise DataMismatch(message + ". Use the data set it was trained on, or pass "
                       "--allow-data-mismatch if you know the ids mean the same values")


def _schema(schema: dict[str, Any] | None) -> str:
    if not schema:
        return "unknown"
    return f"{schema.get('num_dense')} dense, {schema.get('num_tables')} tables"


def _size_diff(saved: list[int], current: list[int]) -> str:
    diffs = [f"table {k}: {a} vs {b}" for k, (a, b) in enumerate(zip(saved, current)) if a != b]
    shown = ", ".join(diffs[:3]) + (f", {len(diffs) - 3} more" if len(diffs) > 3 else "")
    return f"{shown}; trained vs given"
