"""A deliberately naive pure-Python Criteo parser: the reference the vectorized one must match.

One line at a time, with ``str.split`` and ``int``; written for clarity, not speed.
"""

from __future__ import annotations

import math
import re

HEX8 = re.compile(r"[0-9a-fA-F]{8}")
INTEGER = re.compile(r"-?[0-9]{1,18}")


def naive_parse(text: str, has_label: bool = True) -> tuple[list, list[int]]:
    """Returns (rows, skipped 1-based line numbers); a row is
    (label or None, [13 dense floats], [26 raw ints or None for empty])."""
    expected = 40 if has_label else 39
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    rows, skipped = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != expected:
            skipped.append(number)
            continue
        label = None
        if has_label:
            if fields[0] not in ("0", "1"):
                skipped.append(number)
                continue
            label = int(fields[0])
            fields = fields[1:]
        dense, cats, ok = [], [], True
        for x in fields[:13]:
            if x == "":
                dense.append(0.0)
            elif INTEGER.fullmatch(x):
                dense.append(math.log(1 + max(int(x), 0)))
            else:
                ok = False
        for x in fields[13:]:
            if x == "":
                cats.append(None)
            elif HEX8.fullmatch(x):
                cats.append(int(x, 16))
            else:
                ok = False
        if ok:
            rows.append((label, dense, cats))
        else:
            skipped.append(number)
    return rows, skipped


def naive_exact_ids(rows: list) -> tuple[list[list[int]], list[int]]:
    """Exact vocabulary: id 0 for empty, 1 + rank among the column's sorted distinct values."""
    columns = list(zip(*[r[2] for r in rows], strict=True)) if rows else [()] * 26
    ranks = []
    for col in columns:
        distinct = sorted({v for v in col if v is not None})
        ranks.append({v: 1 + i for i, v in enumerate(distinct)})
    ids = [[0 if v is None else ranks[k][v] for k, v in enumerate(r[2])] for r in rows]
    return ids, [len(r) + 1 for r in ranks]
