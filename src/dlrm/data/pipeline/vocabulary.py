"""Categorical values -> ids, per feature.

Modes (id 0 is always the missing value, an empty cell):

- ``exact``: every distinct value seen in the vocabulary rows gets ``1 + rank`` in ascending
  order (numeric for ``hex32``, byte order for strings); table size = distinct values + 1;
  a value not in the vocabulary (a validation-only value when the vocabulary comes from the
  training rows, or a new one at predict time) maps to 0.
- ``min-count``: values seen at least ``min_count`` times get ``2 + rank``; rarer and unseen
  values share id 1; table size = kept values + 2.
- ``hash``: ``1 + value % hash_buckets`` (``hex32``: the value itself, as MLPerf does; strings:
  the first 8 bytes of their BLAKE2b digest); table size ``hash_buckets + 1``; nothing to store.

How a column is counted and encoded (``code_column`` / ``build_luts``): one Arrow hash pass
(``dictionary_encode``) gives each row a first-seen code and the column's distinct values;
counts are a ``bincount`` of the codes of the vocabulary rows; the kept values are sorted once;
each row's id is then a table lookup ``lut[code]``. Memory is the column's codes plus its
distinct values, never a Python object per value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from dlrm.data.pipeline.metadata import DataError

MISSING_ID = 0
RARE_ID = 1


def check_vocab_options(hash_buckets: int | None, min_count: int | None) -> str:
    """The mode for these flags; a ``DataError`` naming a nonsense value."""
    if hash_buckets is not None and min_count is not None:
        raise DataError("--hash-buckets and --min-count exclude each other; choose one")
    if hash_buckets is not None:
        if not isinstance(hash_buckets, int) or not 1 <= hash_buckets < 2**31 - 1:
            raise DataError(f"--hash-buckets {hash_buckets}: need an integer from 1 to "
                            f"{2**31 - 2}")
        return "hash"
    if min_count is not None:
        if not isinstance(min_count, int) or min_count < 1:
            raise DataError(f"--min-count {min_count}: need an integer >= 1")
        return "min-count"
    return "exact"


def string_hashes(values: pa.Array) -> np.ndarray:
    """uint64 BLAKE2b-8 digests of strings (nulls: 0)."""
    out = np.zeros(len(values), dtype=np.uint64)
    for i, v in enumerate(values.to_pylist()):
        if v is not None:
            out[i] = int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(),
                                    "little")
    return out


def hash_ids(column: Any, buckets: int) -> np.ndarray:
    """Hash-mode ids (int32) of a parsed column: ``HexValues``, strings or a flat string
    array (multi-hot values)."""
    if hasattr(column, "empty"):  # HexValues
        ids = (column.values % np.uint32(buckets)).astype(np.int32) + 1
        ids[column.empty] = MISSING_ID
        return ids
    encoded = pc.dictionary_encode(column)
    lut = (string_hashes(encoded.dictionary) % np.uint64(buckets)).astype(np.int32) + 1
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    return apply_lut(codes, lut)


def code_column(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """``(distinct values, codes int32)``: code ``-1`` marks a missing (null) cell."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        if encoded.num_chunks == 0:
            return pa.array([], column.type), np.zeros(0, np.int32)
        encoded = encoded.unify_dictionaries()
        dictionary = encoded.chunk(0).dictionary
        indices = pa.chunked_array([c.indices for c in encoded.chunks]).combine_chunks()
    else:
        dictionary, indices = encoded.dictionary, encoded.indices
    codes = pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return dictionary, codes


def apply_lut(codes: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """ids (int32) of codes through ``lut``; code -1 (missing) -> id 0."""
    if lut.size == 0:
        return np.zeros(codes.size, dtype=np.int32)
    ids = lut[np.maximum(codes, 0)]
    ids[codes < 0] = MISSING_ID
    return ids.astype(np.int32, copy=False)


def sorted_order(values: pa.Array) -> np.ndarray:
    """Indices that sort ``values`` ascending (uint32: numeric; strings: byte order)."""
    if pa.types.is_uint32(values.type):
        v = values.to_numpy(zero_copy_only=False).astype(np.uint64)
        packed = np.sort((v << np.uint64(32)) | np.arange(v.size, dtype=np.uint64))
        return (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return pc.sort_indices(values).to_numpy(zero_copy_only=False)


@dataclass
class Vocabulary:
    """The id mapping of every categorical feature (see the module docstring)."""

    mode: str
    names: list[str]
    kinds: list[str]  # "hex32" | "string" per feature
    hash_buckets: int | None = None
    min_count: int | None = None
    kept: list[pa.Array] | None = None  # sorted kept values per feature (not for hash)

    @property
    def first_value_id(self) -> int:
        return 2 if self.mode == "min-count" else 1

    @property
    def unseen_id(self) -> int:
        return RARE_ID if self.mode == "min-count" else MISSING_ID

    def _check_built(self) -> None:
        if self.kept is None:
            raise RuntimeError("the vocabulary was used before it was built or loaded")

    def table_sizes(self) -> list[int]:
        if self.mode == "hash":
            return [int(self.hash_buckets) + 1] * len(self.names)
        self._check_built()
        return [len(k) + self.first_value_id for k in self.kept]

    def lut(self, k: int, dictionary: pa.Array) -> np.ndarray:
        """int32 id of each value of ``dictionary`` under feature ``k``."""
        if self.mode == "hash":
            return hash_ids(_as_column(dictionary, self.kinds[k]), int(self.hash_buckets))
        self._check_built()
        index = pc.index_in(dictionary, value_set=self.kept[k])
        rank = pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        return np.where(rank < 0, self.unseen_id, rank + self.first_value_id).astype(np.int32)

    def encode(self, k: int, column: Any) -> tuple[np.ndarray, int]:
        """ids (int32) of a parsed column (``HexValues`` or strings) and the number of
        non-missing values that are not in the vocabulary."""
        if self.mode == "hash":
            return hash_ids(column, int(self.hash_buckets)), 0
        array = (pa.array(column.values, mask=column.empty) if hasattr(column, "empty")
                 else column)
        dictionary, codes = code_column(array)
        ids = apply_lut(codes, self.lut(k, dictionary))
        unseen = int(np.count_nonzero((codes >= 0) & (ids == self.unseen_id))) \
            if self.mode == "exact" else int(np.count_nonzero(ids == RARE_ID))
        return ids, unseen

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_mode": self.mode, "hash_buckets": self.hash_buckets,
                "min_count": self.min_count}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(
            {**self.to_dict(), "features": self.names, "kinds": self.kinds}, indent=1) + "\n")
        for name, kept in zip(self.names, self.kept or [], strict=False):
            feather.write_feather(pa.table({"value": kept}), str(folder / f"{name}.arrow"))

    @classmethod
    def load(cls, folder: str | Path) -> Vocabulary:
        folder = Path(folder)
        try:
            spec = json.loads((folder / "vocab.json").read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{folder}: no readable vocabulary ({err})") from None
        if "features" not in spec:  # format 1: Criteo only, uint32 values in C1.npy ...
            names = [f"C{k}" for k in range(1, 27)]
            kept = None
            if spec["vocab_mode"] != "hash":
                kept = [pa.array(np.load(folder / f"{n}.npy")) for n in names]
            return cls(spec["vocab_mode"], names, ["hex32"] * 26, spec.get("hash_buckets"),
                       spec.get("min_count"), kept)
        kept = None
        if spec["vocab_mode"] != "hash":
            kept = [feather.read_table(str(folder / f"{n}.arrow")).column("value")
                    .combine_chunks() for n in spec["features"]]
        return cls(spec["vocab_mode"], spec["features"], spec["kinds"], spec.get("hash_buckets"),
                   spec.get("min_count"), kept)


def _as_column(values: pa.Array, kind: str) -> Any:
    if kind == "hex32":
        from dlrm.data.pipeline.parse import HexValues

        v = values.to_numpy(zero_copy_only=False)
        return HexValues(v.astype(np.uint32), np.zeros(v.size, dtype=bool))
    return values


def merge_counts(pieces: list[tuple[pa.Array, np.ndarray]]) -> tuple[pa.Array, np.ndarray]:
    """Distinct values and summed counts over several ``(values, counts)`` pieces."""
    if len(pieces) == 1:
        return pieces[0]
    values = pa.concat_arrays([p[0] for p in pieces])
    counts = np.concatenate([p[1] for p in pieces])
    dictionary, codes = code_column(values)
    return dictionary, np.bincount(codes, weights=counts, minlength=len(dictionary)
                                   ).astype(np.int64)


def kept_values(values: pa.Array, counts: np.ndarray, min_count: int) -> pa.Array:
    """The values counted at least ``min_count`` times, sorted."""
    keep = np.flatnonzero(counts >= min_count)
    chosen = values.take(pa.array(keep))
    return chosen.take(pa.array(sorted_order(chosen)))
