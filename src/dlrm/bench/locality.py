"""Lookup time on a data set, on data generated from its profile, and on i.i.d. ids, side by side.

An embedding lookup is a gather of rows; how fast it runs depends on how often the rows a
batch needs are still in cache, i.e. on the ids' temporal locality, not only on their
popularity. ``compare_localities`` benchmarks the same model on

- ``source``: the first ``rows`` rows of a data set, in its order;
- ``profile``: as many rows drawn from its profile with its locality
  (``ProfileData(locality="profile")``: same popularity, ids ordered by their lifetimes);
- ``iid``: the same draw with the ids in random order (``locality="iid"``): same popularity,
  no temporal locality beyond what popularity implies;

in round-robin rounds (load on a shared machine drifts; this spreads it over all sources
alike) and reports medians of the lookup (``embedding_fwd``), the row update and the step,
beside each source's locality: the distinct rows a batch touches (what its lookup fetches)
and the stack-distance statistics (``dlrm.data.profile``).

Example:
    >>> result = compare_localities(BenchConfig(preset="kaggle"), open_data("data/kaggle"),
    ...                             rows=200_000)  # doctest: +SKIP
    >>> print(format_localities(result))  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from dlrm.bench.inputs import TRAIN_ONLY, head_rows
from dlrm.bench.runner import BenchConfig, run_bench
from dlrm.data.profile import ProfileData, fit_profile

Progress = Callable[[dict[str, Any]], None]


def locality_stats(profile: dict[str, Any]) -> dict[str, float]:
    """Means over the features of a profile: distinct ids, cold-miss share, median and 90th
    percentile stack distance, and the share of accesses an LRU cache of 1,024 rows per table
    would hit (from the stack-distance histogram; its buckets end at powers of two)."""
    feats = profile["features"]
    stacks = [f["stack_distance"] for f in feats]

    def hit_rate(sd: dict[str, Any], rows: int = 1024) -> float:
        hits = sum(share for _, hi, share in sd["histogram"] if hi - 1 <= rows)
        return (1.0 - sd["cold_share"]) * hits

    def mean_of(index: int) -> float:
        return float(np.mean([s["distance"][index] for s in stacks if s["distance"]]))

    levels = stacks[0]["quantiles"]
    return {"distinct_ids": float(sum(f["cardinality"] for f in feats)),
            "cold_share": float(np.mean([s["cold_share"] for s in stacks])),
            "stack_median": mean_of(levels.index(0.5)),
            "stack_p90": mean_of(levels.index(0.9)),
            "lru_1024_hit_rate": float(np.mean([hit_rate(s) for s in stacks]))}


def distinct_rows_per_batch(data: Any, batch_size: int) -> float:
    """Mean over the full batches of the train split (in order, as the benchmark reads them)
    of the distinct table rows a batch touches, summed over the features: the rows its lookup
    must fetch."""
    counts = []
    for batch in data.batches("train", batch_size, drop_last=True):
        sp = batch.sparse
        per_feature = np.split(sp.values.numpy(), sp.offsets.numpy()[
            np.arange(1, sp.num_features) * sp.batch_size])
        counts.append(sum(np.unique(v).size for v in per_feature))
    return float(np.mean(counts)) if counts else float("nan")


def compare_localities(cfg: BenchConfig, source: Any, rows: int = 200_000,
                       profile: dict[str, Any] | None = None, rounds: int = 3,
                       seed: int = 0, progress: Progress | None = None,
                       extra_sources: dict[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark ``cfg`` on ``source``, its profile's data and i.i.d. ids; see the module doc.

    Args:
        cfg: the benchmark (model shape, batch, trials); its ``ids`` setting is unused.
        source: a ``DataSource``; its train split's first ``rows`` rows are used, in order.
        rows: rows of each source (at most the source's train split).
        profile: the profile to generate from (default: ``fit_profile`` of those rows).
        rounds: round-robin rounds; the figures are medians over them.
        progress: ``run_bench`` events, with ``source`` and ``round`` added.
        extra_sources: more sources for the same rounds, name -> ``DataSource``, or None for
            fresh uniform ids every batch (``dlrm bench --ids random``).

    Returns ``{"rows", "rounds", "sources": {name: {"locality": locality_stats(...),
    "lookup_ms", "update_ms", "samples_per_s", "runs": [run_bench results]}}}``.
    """
    rows = min(rows, source.num_samples("train"))
    if rows < cfg.batch_size:
        raise ValueError(f"{rows} rows are fewer than one batch of {cfg.batch_size}")
    real = head_rows(source, "train", rows)
    profile = profile or fit_profile(real, "train")
    sizes = list(real.table_sizes)
    sources = {
        "source": real,
        "profile": ProfileData(profile, rows, seed=seed, table_sizes=sizes,
                               split_fractions=TRAIN_ONLY, locality="profile"),
        "iid": ProfileData(profile, rows, seed=seed, table_sizes=sizes,
                           split_fractions=TRAIN_ONLY, locality="iid"),
    }
    sources.update(extra_sources or {})
    out: dict[str, Any] = {"rows": rows, "rounds": rounds, "sources": {}}
    for name, data in sources.items():
        stats = None
        if data is not None:
            stats = locality_stats(fit_profile(data, "train"))
            stats["distinct_rows_per_batch"] = distinct_rows_per_batch(data, cfg.batch_size)
        out["sources"][name] = {"locality": stats, "runs": []}
    ceilings = None
    for round_index in range(rounds):
        for name, data in sources.items():
            relay = None
            if progress is not None:
                def relay(event: dict[str, Any], name: str = name, r: int = round_index) -> None:
                    progress({**event, "source": name, "round": r})
            result = run_bench(replace(cfg, ids="random"), data=data, progress=relay,
                               ceilings=ceilings, data_label=name)
            ceilings = result["ceilings"] or None
            out["sources"][name]["runs"].append(result)
    for entry in out["sources"].values():
        runs = entry["runs"]
        lookups = [r["components"]["embedding_fwd"]["ms"] for r in runs]
        entry["lookup_ms"] = statistics.median(lookups)
        entry["lookup_ms_range"] = [min(lookups), max(lookups)]
        entry["update_ms"] = statistics.median(
            r["components"].get("embedding_update", {}).get("ms", float("nan")) for r in runs)
        entry["samples_per_s"] = statistics.median(r["samples_per_s"] for r in runs)
    return out


def format_localities(result: dict[str, Any]) -> str:
    """The side-by-side table ``dlrm bench locality`` prints."""
    lines = [f"{result['rows']:,} rows per source, medians of {result['rounds']} round-robin "
             f"rounds; stack distances are means over the features",
             f"{'data':<9}{'lookup ms (range)':>20}{'update ms':>11}{'samples/s':>11}"
             f"{'rows/batch':>12}{'distinct ids':>14}{'median SD':>11}{'p90 SD':>9}"
             f"{'LRU-1k hits':>13}"]
    for name, e in result["sources"].items():
        lo, hi = e["lookup_ms_range"]
        row = (f"{name:<9}{e['lookup_ms']:>8.3f} ({lo:.2f}-{hi:.2f}){e['update_ms']:>11.3f}"
               f"{e['samples_per_s']:>11,.0f}")
        loc = e["locality"]
        if loc is None:  # fresh generated ids: no fixed rows to profile
            row += f"{'-':>12}{'-':>14}{'-':>11}{'-':>9}{'-':>13}"
        else:
            row += (f"{loc['distinct_rows_per_batch']:>12,.0f}{loc['distinct_ids']:>14,.0f}"
                    f"{loc['stack_median']:>11.1f}{loc['stack_p90']:>9.1f}"
                    f"{loc['lru_1024_hit_rate']:>12.1%}")
        lines.append(row)
    return "\n".join(lines)
