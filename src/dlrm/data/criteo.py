"""Criteo Kaggle and Terabyte: the shipped ``criteo-kaggle`` / ``criteo-terabyte`` schemas run
through the one pipeline (``dlrm.data.pipeline``).

The raw format: one sample per line, tab-separated, ``label I1..I13 C1..C26`` (40 fields; the
Kaggle ``test.txt`` has 39, no label). Integers may be empty or negative; categoricals are 8
hex digits or empty. Dense values become ``log(1 + max(x, 0))`` (empty: 0); categoricals get
ids by the vocabulary mode (``dlrm.data.pipeline.vocabulary``), counted over every row read,
as the reference does.

- Kaggle (``train.txt``, plain or .gz): ``split="reference"`` (7 consecutive parts; 0-5
  train, 6 halved into test then validation) or ``"random:TRAIN,VAL,TEST"`` (each row by a
  seeded permutation cut by the fractions); ``shuffle`` stores the training rows in a seeded order.
- Terabyte (``day_0`` ... ``day_23``, plain or .gz): one part per day; ``test_day`` is halved
  into test and validation. An interrupted run resumes with every day already staged and
  verified (``dlrm.data.pipeline.stages``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dlrm.data.pipeline.io import DEFAULT_CHUNK_BYTES
from dlrm.data.pipeline.metadata import BadLineError, DataError, ProgressFn
from dlrm.data.pipeline.schema import load_schema
from dlrm.data.pipeline.splits import reference_split_sizes
from dlrm.data.pipeline.stages import Options, preprocess

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = [f"I{k}" for k in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{k}" for k in range(1, NUM_SPARSE + 1)]
TERABYTE_DAYS = 24

__all__ = ["BadLineError", "DataError", "preprocess_kaggle", "preprocess_terabyte",
           "parse_days", "find_day_files", "parse_random_split", "reference_split_sizes"]


def parse_random_split(spec: str) -> dict[str, Any]:
    """``"random:0.8,0.1,0.1"`` -> a random split of (train, val, test) fractions."""
    match = re.fullmatch(r"random:([0-9.]+),([0-9.]+),([0-9.]+)", spec.strip())
    if not match:
        raise DataError(f"--split {spec!r}: expected 'reference' or 'random:TRAIN,VAL,TEST' "
                        "fractions, e.g. random:0.8,0.1,0.1")
    try:
        train, val, test = (float(x) for x in match.groups())
    except ValueError:
        raise DataError(f"--split {spec!r}: fractions must be numbers") from None
    if abs(train + val + test - 1.0) > 1e-6:
        raise DataError(f"--split {spec!r}: fractions sum to {train + val + test:g}, not 1")
    return {"order": "random", "fractions": {"train": train, "val": val, "test": test}}


def preprocess_kaggle(input: str | Path, out: str | Path, *, hash_buckets: int | None = None,
                      min_count: int | None = None, split: str = "reference", seed: int = 0,
                      shuffle: bool = False, strict: bool = False, workers: int = 2,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES, overwrite: bool = False,
                      progress: ProgressFn | None = None) -> dict[str, Any]:
    """Preprocess a Criteo Kaggle ``train.txt`` (plain or .gz) into the data set ``out``.

    Returns the metadata (also ``out/metadata.json``) with ``seconds`` and
    ``peak_rss_bytes``.
    """
    split_spec = None
    if split != "reference":
        split_spec = {**parse_random_split(split), "seed": seed}
    options = Options(hash_buckets=hash_buckets, min_count=min_count, split=split_spec,
                      seed=seed, shuffle=shuffle, strict=strict, workers=workers,
                      chunk_bytes=chunk_bytes, overwrite=overwrite)
    part = "all" if split == "reference" else "main"
    return preprocess(load_schema("criteo-kaggle"), [(part, input)], out, options, progress)


def parse_days(spec: str | None) -> list[int]:
    """``"0-3,23"`` -> [0, 1, 2, 3, 23]; None -> all 24 days."""
    if not spec:
        return list(range(TERABYTE_DAYS))
    days: set[int] = set()
    for piece in spec.split(","):
        lo, _, hi = piece.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise DataError(f"--days {spec!r}: expected day numbers and ranges, e.g. 0-3,23"
                            ) from None
        if last < first:
            raise DataError(f"--days {spec!r}: the range {piece.strip()} is inverted; write "
                            f"{last}-{first}")
        days.update(range(first, last + 1))
    bad = sorted(d for d in days if not 0 <= d < TERABYTE_DAYS)
    if bad:
        raise DataError(f"--days {spec!r}: days {bad}: Criteo Terabyte has days "
                        f"0..{TERABYTE_DAYS - 1}")
    return sorted(days)


def find_day_files(folder: str | Path, days: list[int]) -> dict[int, Path]:
    """``day_N`` or ``day_N.gz`` for each wanted day; raises naming every missing day."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--input {folder}: not a directory (expected day_0 ... day_23)")
    found, missing = {}, []
    for day in days:
        for name in (f"day_{day}", f"day_{day}.gz"):
            if (folder / name).exists():
                found[day] = folder / name
                break
        else:
            missing.append(day)
    if missing:
        raise DataError(
            f"{folder}: missing day files for days {missing} (expected day_N or day_N.gz); "
            "pass --days to preprocess a subset, e.g. --days 0-3,23")
    return found


def preprocess_terabyte(input: str | Path, out: str | Path, *, days: list[int] | None = None,
                        test_day: int = 23, hash_buckets: int | None = None,
                        min_count: int | None = None, strict: bool = False, workers: int = 2,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES, overwrite: bool = False,
                        progress: ProgressFn | None = None) -> dict[str, Any]:
    """Preprocess Criteo Terabyte day files (``day_0`` ... ``day_23``, plain or .gz)."""
    days = list(range(TERABYTE_DAYS)) if days is None else sorted(days)
    if test_day not in days:
        raise DataError(f"--test-day {test_day} is not among --days {days}: the data set would "
                        "have no validation split; include it in --days")
    files = find_day_files(input, days)
    options = Options(hash_buckets=hash_buckets, min_count=min_count,
                      split={"order": "days", "test_day": test_day}, strict=strict,
                      workers=workers, chunk_bytes=chunk_bytes, overwrite=overwrite)
    inputs = [(f"day_{d}", files[d]) for d in days]
    return preprocess(load_schema("criteo-terabyte"), inputs, out, options, progress,
                      extra={"days": days, "test_day": test_day})
