"""Train / validation / test splits of staged parts, and the passes over finished rows.

A split is a list of row ranges of parts (``reference``: Kaggle's 7 consecutive days;
``days``: one Terabyte part per day; ``file``: consecutive fractions), or rows copied into
new parts (``random``: a seeded permutation cut by the fractions, each split in file order,
8 bytes of memory per row; ``column``: a stable sort by a column; ``shuffle``).
``check_split_plan`` refuses, before any work, a split that cannot have validation rows.
``standardize`` fixes dense columns with the training rows' mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlrm.data.format import NpyAppender, open_array
from dlrm.data.pipeline.metadata import DataError, Part
from dlrm.data.pipeline.schema import SPLITS, Schema

ROWS_PER_CHUNK = 1 << 20

# --------------------------------------------------------------------------- splits
Ranges = dict[str, list[dict[str, Any]]]


def reference_split_sizes(rows: int, days: int = 7) -> dict[str, int]:
    """The reference Kaggle split: ``days`` consecutive parts (the first ``rows % days`` one
    row longer), all but the last for training; the last halved into test (first half, rounded
    up) and validation."""
    base, extra = divmod(rows, days)
    sizes = [base + (1 if j < extra else 0) for j in range(days)]
    last = sizes[-1]
    return {"train": sum(sizes[:-1]), "test": (last + 1) // 2, "val": last // 2}


def check_split_plan(split: dict[str, Any], part_names: list[str]) -> None:
    """Refuse, before any work, a split that can give no validation rows (item: a data set
    is usable or refused at preprocessing time)."""
    order = split.get("order", "random")
    if "val" in part_names:
        return
    if order == "reference":
        if int(split.get("days", 7)) < 2:
            raise DataError(f"split reference with days={split.get('days')}: needs >= 2 days")
        return
    if order == "days":
        test_day = f"day_{split.get('test_day', 23)}"
        if test_day not in part_names:
            raise DataError(f"the test day {test_day} is not among the days given "
                            f"({', '.join(part_names)}): the data set would have no "
                            "validation split; include it in --days or choose --test-day")
        return
    fractions = split.get("fractions", {})
    if float(fractions.get("val", 0)) <= 0:
        raise DataError(f"split {fractions}: no validation fraction, so the data set would "
                        "have no validation split; give val a share (e.g. train 0.8, val 0.1, "
                        "test 0.1) or a --val-input file")
    if "main" in part_names and sum(float(v) for v in fractions.values()) <= 0:
        raise DataError(f"split fractions {fractions} give no rows to any split")


@dataclass
class SplitPlan:
    """Row ranges of parts per split, or rows to copy into new parts."""

    ranges: Ranges
    copies: dict[str, tuple[str, np.ndarray]]  # split -> (source part, row indices in order)
    vocab_rows: dict[str, Any]  # part -> slice / bool mask / index array / None (all)


def plan_splits(schema: Schema, split: dict[str, Any], parts: dict[str, Part]) -> SplitPlan:
    order = split.get("order", "random")
    ranges: Ranges = {}
    copies: dict[str, tuple[str, np.ndarray]] = {}
    whole = [s for s in SPLITS if s in parts]
    for s in whole:
        ranges[s] = [{"part": s, "start": 0, "stop": parts[s].rows_written}]
    if order == "reference":
        main = "all" if "all" in parts else "main"
        n = parts[main].rows_written
        sizes = reference_split_sizes(n, int(split.get("days", 7)))
        bounds = np.cumsum([0, sizes["train"], sizes["test"], sizes["val"]])
        for j, s in enumerate(("train", "test", "val")):
            ranges[s] = [{"part": main, "start": int(bounds[j]), "stop": int(bounds[j + 1])}]
    elif order == "days":
        test = f"day_{split.get('test_day', 23)}"
        for name, part in parts.items():
            n = part.rows_written
            if name == test:
                half = (n + 1) // 2
                ranges.setdefault("test", []).append({"part": name, "start": 0, "stop": half})
                ranges.setdefault("val", []).append({"part": name, "start": half, "stop": n})
            else:
                ranges.setdefault("train", []).append({"part": name, "start": 0, "stop": n})
        ranges = {s: ranges[s] for s in ("train", "test", "val") if s in ranges}
    elif "main" in parts:
        n = parts["main"].rows_written
        fractions = split.get("fractions", {"train": 0.8, "val": 0.1, "test": 0.1})
        names = [s for s in SPLITS if s not in parts and float(fractions.get(s, 0)) > 0]
        weights = np.array([float(fractions[s]) for s in names])
        bounds = np.round(np.cumsum([0.0, *(weights / weights.sum())]) * n).astype(np.int64)
        if order == "random":  # a seeded permutation cut by the fractions; file order kept
            perm = np.random.default_rng(int(split.get("seed", 0))).permutation(n)
        elif order == "column":  # stable sort by the key column
            perm = np.argsort(np.asarray(open_array(parts["main"].folder / "key.npy")),
                              kind="stable")
        for j, s in enumerate(names):
            if order == "random":
                copies[s] = ("main", np.sort(perm[bounds[j]:bounds[j + 1]]))
            elif order == "column":
                copies[s] = ("main", perm[bounds[j]:bounds[j + 1]])
            else:
                ranges[s] = [{"part": "main", "start": int(bounds[j]), "stop": int(bounds[j + 1])}]
    vocab_from = schema.vocabulary.get("from", "train")
    vocab_rows: dict[str, Any] = {}
    if vocab_from == "all":
        vocab_rows = {name: None for name in parts}
    else:
        for r in ranges.get("train", []):
            vocab_rows[r["part"]] = slice(r["start"], r["stop"])
        if "train" in copies:
            src, rows = copies["train"]
            vocab_rows[src] = rows
    return SplitPlan(ranges, copies, vocab_rows)


# --------------------------------------------------------------------------- rows, copies
def _part_arrays(folder: Path, schema: Schema) -> dict[str, Any]:
    arrays: dict[str, Any] = {"labels": open_array(folder / "labels.npy"),
                              "dense": open_array(folder / "dense.npy")}
    for spec in schema.categorical:
        if spec.multi_hot:
            arrays[spec.name] = (open_array(folder / f"ids/{spec.name}.values.npy"),
                                 open_array(folder / f"ids/{spec.name}.offsets.npy"))
        else:
            arrays[spec.name] = open_array(folder / f"ids/{spec.name}.npy")
    return arrays


def copy_rows(src: Path, dst: Path, rows: np.ndarray, schema: Schema) -> int:
    """Write rows ``rows`` (in that order) of part ``src`` as part ``dst``; reads are sorted
    within each chunk of 1M rows so they stream."""
    arrays = _part_arrays(src, schema)
    (dst / "ids").mkdir(parents=True, exist_ok=True)
    width = arrays["dense"].shape[1]
    outs: dict[str, Any] = {"labels": NpyAppender(dst / "labels.npy", np.uint8),
                            "dense": NpyAppender(dst / "dense.npy", np.float32, (width,))}
    bags: dict[str, list[np.ndarray]] = {}
    for spec in schema.categorical:
        if spec.multi_hot:
            outs[spec.name] = NpyAppender(dst / f"ids/{spec.name}.values.npy", np.int32)
            bags[spec.name] = []
        else:
            outs[spec.name] = NpyAppender(dst / f"ids/{spec.name}.npy", np.int32)
    for lo in range(0, rows.size, ROWS_PER_CHUNK):
        wanted = rows[lo:lo + ROWS_PER_CHUNK]
        order = np.argsort(wanted, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        sorted_rows = wanted[order]
        for name, arr in arrays.items():
            if isinstance(arr, tuple):
                values, offsets = arr
                starts, stops = offsets[wanted], offsets[wanted + 1]
                lengths = (stops - starts).astype(np.int64)
                index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
                    lengths.sum())
                outs[name].append(np.asarray(values[np.sort(index)])[np.argsort(np.argsort(
                    index, kind="stable"), kind="stable")] if index.size else
                    np.zeros(0, np.int32))
                bags[name].append(lengths)
            else:
                outs[name].append(np.asarray(arr[sorted_rows])[inverse])
    for name, lengths in bags.items():
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(all_lengths.size + 1, dtype=np.int64)
        np.cumsum(all_lengths, out=offsets[1:])
        np.save(dst / f"ids/{name}.offsets.npy", offsets)
    for out in outs.values():
        out.close()
    return int(rows.size)


# --------------------------------------------------------------------------- dense
def standardize(parts: dict[str, Part], ranges: Ranges, schema: Schema) -> dict[str, Any]:
    """(x - mean) / std per ``standardize`` column with the training rows' mean and std
    (empty cells, stored as NaN, become the mean: 0 after the transform)."""
    columns = [k for k, d in enumerate(schema.dense) if d.transform == "standardize"]
    if not columns:
        return {}
    total = np.zeros(len(columns))
    square = np.zeros(len(columns))
    count = np.zeros(len(columns))
    for r in ranges.get("train", []):
        dense = open_array(parts[r["part"]].folder / "dense.npy")
        for lo in range(r["start"], r["stop"], ROWS_PER_CHUNK):
            x = np.asarray(dense[lo:min(lo + ROWS_PER_CHUNK, r["stop"]), columns],
                           dtype=np.float64)
            ok = ~np.isnan(x)
            total += np.where(ok, x, 0).sum(0)
            count += ok.sum(0)
    mean = total / np.maximum(count, 1)
    for r in ranges.get("train", []):  # second pass: a stable variance
        dense = open_array(parts[r["part"]].folder / "dense.npy")
        for lo in range(r["start"], r["stop"], ROWS_PER_CHUNK):
            x = np.asarray(dense[lo:min(lo + ROWS_PER_CHUNK, r["stop"]), columns],
                           dtype=np.float64)
            square += np.where(np.isnan(x), 0, (x - mean) ** 2).sum(0)
    std = np.sqrt(square / np.maximum(count, 1))
    std = np.where(std > 0, std, 1.0)
    for part in parts.values():
        dense = np.load(part.folder / "dense.npy", mmap_mode="r+")
        for lo in range(0, dense.shape[0], ROWS_PER_CHUNK):
            x = np.asarray(dense[lo:lo + ROWS_PER_CHUNK, columns], dtype=np.float64)
            x = np.where(np.isnan(x), mean, x)
            dense[lo:lo + ROWS_PER_CHUNK, columns] = ((x - mean) / std).astype(np.float32)
        dense.flush()
        del dense
    return {schema.dense[k].column: {"mean": float(mean[j]), "std": float(std[j])}
            for j, k in enumerate(columns)}


def positives_of(parts: dict[str, Part], ranges: list[dict[str, Any]]) -> int:
    total = 0
    for r in ranges:
        labels = open_array(parts[r["part"]].folder / "labels.npy")
        for lo in range(r["start"], r["stop"], 1 << 24):
            total += int(np.asarray(labels[lo:min(lo + (1 << 24), r["stop"])],
                                    dtype=np.int64).sum())
    return total


