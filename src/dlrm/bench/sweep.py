"""Sweeps: one ``BenchConfig`` field varied over values, one CSV row per value."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

from dlrm.bench.runner import TRAIN_COMPONENTS, BenchConfig, Progress, run_bench

# --vary name -> BenchConfig field (and how to parse a value).
SWEEPABLE: dict[str, tuple[str, type]] = {
    "batch_size": ("batch_size", int),
    "embedding_dim": ("embedding_dim", int),
    "num_tables": ("num_tables", int),
    "rows_per_table": ("rows_per_table", int),
    "ids_per_bag": ("ids_per_bag", int),
    "zipf": ("zipf", float),
    "threads": ("threads", int),
}


def parse_vary(spec: str) -> tuple[str, list[Any]]:
    """``"batch_size=128,512"`` -> ``("batch_size", [128, 512])``."""
    name, sep, values = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise ValueError(f"--vary {spec!r}: expected NAME=V1,V2,... e.g. batch_size=128,512")
    if name not in SWEEPABLE:
        raise ValueError(f"--vary {name!r}: can vary one of {sorted(SWEEPABLE)}")
    kind = SWEEPABLE[name][1]
    try:
        return name, [kind(v) for v in values.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--vary {spec!r}: values must be {kind.__name__}s") from err


def csv_columns(components: tuple[str, ...] = TRAIN_COMPONENTS) -> list[str]:
    return (["vary", "value", "samples_per_s", "samples_per_s_min", "samples_per_s_max",
             "step_ms", "component_sum_ms", "fraction_of_roofline", "limiter"]
            + [f"{name}_ms" for name in components])


def run_sweep(base: BenchConfig, vary: str, values: list[Any], progress: Progress | None = None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``base`` once per value of ``vary``; returns (CSV rows, full results).

    Ceilings are measured once (with the first value's embedding row size) and reused.
    """
    field, _ = SWEEPABLE[vary]
    if vary == "zipf" and base.ids != "planted":
        base = replace(base, ids="planted")
    rows, results = [], []
    ceilings = None
    for value in values:
        cfg = replace(base, **{field: value})
        if progress:
            progress({"event": "sweep", "vary": vary, "value": value})
        result = run_bench(cfg, progress=progress, ceilings=ceilings)
        ceilings = result["ceilings"] or None
        if vary == "embedding_dim" and ceilings:
            ceilings = None  # the gather ceiling depends on the row size
        results.append(result)
        row = {"vary": vary, "value": value, "samples_per_s": result["samples_per_s"],
               "samples_per_s_min": result["samples_per_s_min"],
               "samples_per_s_max": result["samples_per_s_max"],
               "step_ms": result["step_ms"]["median"],
               "component_sum_ms": result["component_sum_ms"],
               "fraction_of_roofline": result.get("fraction_of_roofline", ""),
               "limiter": result.get("limiter", "")}
        for name in TRAIN_COMPONENTS:
            row[f"{name}_ms"] = result["components"].get(name, {}).get("ms", "")
        rows.append(row)
    return rows, results


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns())
        writer.writeheader()
        writer.writerows(rows)
