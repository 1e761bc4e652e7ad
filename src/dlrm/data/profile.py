"""Shareable data profiles: statistics of a data set that reveal no row, and data drawn from them.

``fit_profile(data, split)`` reads a split and returns a small JSON-able dict:

- per feature: table size, cardinality (distinct ids seen), the access distribution as a
  histogram of access shares over log2 rank buckets (ranks 0, 1-2, 3-6, 7-14, ... by
  frequency) plus a fitted Zipf exponent, the bag-size distribution, and a reuse-distance
  summary (accesses of that feature between two accesses of the same id: the share of
  accesses that repeat an earlier id and quantiles of the distance), which drives caches;
- per dense feature: quantiles (0.5% ... 99.5%) and the share of exact zeros;
- the click rate and the number of rows profiled.

No id, row or exact value of a row is stored: only counts by rank and quantiles. Which id is
popular is not stored either; ``ProfileData`` scatters popular ranks over each table.

``ProfileData(profile, rows, seed)`` is a ``DataSource`` that draws ``rows`` rows with those
statistics: ids so that each feature's count spectrum (how many ids occur c times) is the
profile's scaled to ``rows``, in random order, each bag size
from the bag-size distribution, each dense value by inverse CDF through the quantiles, labels
by the click rate. Reuse distances are not imposed; they follow from the access distribution
(rows are i.i.d.), and ``fit_profile`` of the generated data reports them for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dlrm.data.arrays import DEFAULT_SPLITS, ArrayDataSource

PROFILE_FORMAT = "dlrm-data-profile/1"
DENSE_QUANTILES = [0.005, *[round(0.05 * k, 2) for k in range(1, 20)], 0.995]
REUSE_QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9]
SCATTER_PRIME = 2654435761  # rank r -> row (r * prime) mod n, a bijection for n < prime


def _collect(data: Any, split: str, max_rows: int | None, batch_size: int = 8192):
    dense, labels = [], []
    num_features = len(data.table_sizes)
    values: list[list[np.ndarray]] = [[] for _ in range(num_features)]
    lengths: list[list[np.ndarray]] = [[] for _ in range(num_features)]
    seen = 0
    for batch in data.batches(split, batch_size):
        b = len(batch)
        if max_rows is not None and seen + b > max_rows:
            b = max_rows - seen
        sp = batch.sparse
        bsz = sp.batch_size
        offsets = sp.offsets.numpy()
        vals = sp.values.numpy()
        for f in range(num_features):
            lo, hi = offsets[f * bsz], offsets[f * bsz + b]
            values[f].append(vals[lo:hi])
            lengths[f].append(np.diff(offsets[f * bsz: f * bsz + b + 1]))
        dense.append(batch.dense[:b].numpy())
        labels.append(batch.labels[:b].numpy())
        seen += b
        if max_rows is not None and seen >= max_rows:
            break
    if seen == 0:
        raise ValueError(f"split {split!r} has no rows to profile")
    return (np.concatenate(dense), np.concatenate(labels),
            [np.concatenate(v) for v in values], [np.concatenate(v) for v in lengths])


def rank_buckets(ids: np.ndarray) -> tuple[list[list[float]], np.ndarray]:
    """[[first rank, end rank, share of accesses]] over log2 rank buckets; sorted counts."""
    _, counts = np.unique(ids, return_counts=True)
    counts = np.sort(counts)[::-1]
    total = counts.sum()
    buckets, start, width = [], 0, 1
    while start < counts.size:
        end = min(start + width, counts.size)
        buckets.append([start, end, float(counts[start:end].sum() / total)])
        start, width = end, width * 2
    return buckets, counts


def count_spectrum(counts: np.ndarray) -> list[list[int]]:
    """[[c, number of ids accessed exactly c times]], by decreasing c (no id is named)."""
    values, how_many = np.unique(counts, return_counts=True)
    return [[int(c), int(k)] for c, k in zip(values[::-1], how_many[::-1])]


def draw_ids(spectrum: list[list[int]], n_ids: int, rng: np.random.Generator) -> np.ndarray:
    """``n_ids`` ranks whose counts follow ``spectrum`` scaled to ``n_ids`` accesses.

    Rank r (0 = most frequent) appears round(c_r * scale) times (stochastic rounding), so the
    number of distinct ids, the head and the singleton tail are those of the profile; the
    order is a random permutation. Any shortfall is filled by draws proportional to c_r.
    """
    counts = np.repeat([c for c, _ in spectrum], [k for _, k in spectrum]).astype(np.float64)
    if counts.size == 0:
        return np.zeros(n_ids, dtype=np.int64)
    scaled = counts * (n_ids / counts.sum())
    reps = np.floor(scaled).astype(np.int64)
    reps += rng.random(counts.size) < (scaled - reps)
    ranks = np.repeat(np.arange(counts.size), reps)
    if ranks.size > n_ids:
        ranks = rng.permutation(ranks)[:n_ids]
    elif ranks.size < n_ids:
        extra = rng.choice(counts.size, n_ids - ranks.size, p=counts / counts.sum())
        ranks = np.concatenate([ranks, extra])
    return rng.permutation(ranks)


def fit_zipf(counts: np.ndarray) -> float:
    """Exponent s of count ~ (rank+1)^-s, least squares in log-log over ids seen twice or more
    (the singleton tail of a sample is flat by truncation, not by the distribution)."""
    repeated = counts[counts >= 2]
    if repeated.size < 3:
        return 0.0
    x = np.log(np.arange(1, repeated.size + 1))
    y = np.log(repeated)
    slope = np.polyfit(x, y, 1)[0]
    return float(max(0.0, -slope))


def reuse_distances(ids: np.ndarray) -> np.ndarray:
    """For every access that repeats an id: accesses since that id's previous access."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    same = sorted_ids[1:] == sorted_ids[:-1]
    return (order[1:] - order[:-1])[same]


def fit_profile(data: Any, split: str = "train", max_rows: int | None = None) -> dict[str, Any]:
    """The profile of ``data``'s ``split`` (its first ``max_rows`` rows); see the module doc.

    The profiled rows' ids are held in memory (8 bytes per id): use ``max_rows`` on big data.
    """
    dense, labels, values, lengths = _collect(data, split, max_rows)
    features = []
    for f, (ids, lens) in enumerate(zip(values, lengths)):
        buckets, counts = rank_buckets(ids) if ids.size else ([], np.zeros(0))
        reuse = reuse_distances(ids) if ids.size else np.zeros(0)
        sizes, size_counts = np.unique(lens, return_counts=True)
        features.append({
            "table_size": int(data.table_sizes[f]),
            "cardinality": int(counts.size),
            "accesses": int(ids.size),
            "zipf": fit_zipf(counts),
            "singleton_share": float((counts == 1).mean()) if counts.size else 0.0,
            "rank_buckets": buckets,
            "count_spectrum": count_spectrum(counts),
            "bag_sizes": [[int(s), float(c / lens.size)] for s, c in zip(sizes, size_counts)],
            "reuse": {
                "repeat_share": float(reuse.size / ids.size) if ids.size else 0.0,
                "quantiles": REUSE_QUANTILES,
                "distance": ([float(q) for q in np.quantile(reuse, REUSE_QUANTILES)]
                             if reuse.size else []),
            },
        })
    dense_profile = [{"quantiles": [float(q) for q in np.quantile(col, DENSE_QUANTILES)],
                      "zero_share": float((col == 0).mean())} for col in dense.T]
    return {"format": PROFILE_FORMAT, "rows": int(labels.size), "num_dense": int(dense.shape[1]),
            "click_rate": float(labels.mean()), "dense_quantile_levels": DENSE_QUANTILES,
            "dense": dense_profile, "features": features}


def save_profile(profile: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile, indent=1))


def load_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"profile {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"profile {path}: not JSON ({err})") from err
    if profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"profile {path}: format {profile.get('format')!r}, expected "
                         f"{PROFILE_FORMAT!r} (made by `dlrm synth profile`)")
    return profile


def _draw_dense(spec: dict[str, Any], levels: list[float], u: np.ndarray) -> np.ndarray:
    """Inverse CDF through the quantiles; the exact-zero atom where u < its share."""
    out = np.interp(u, levels, spec["quantiles"])
    out[u < spec["zero_share"]] = 0.0
    return out


class ProfileData(ArrayDataSource):
    """``rows`` rows drawn from a profile (a ``DataSource``, splits as ``ArrayDataSource``).

    Args:
        profile: a dict from ``fit_profile`` / ``load_profile``, or a path to one.
        rows: rows to generate.
        seed: generator seed; the same (profile, rows, seed) gives the same rows.
        table_sizes: override the profiled table sizes (e.g. to cap them); ranks beyond a
            smaller table wrap around.
    """

    def __init__(self, profile: dict[str, Any] | str | Path, rows: int, seed: int = 0,
                 table_sizes: list[int] | None = None,
                 split_fractions: tuple[tuple[str, float], ...] = DEFAULT_SPLITS) -> None:
        if not isinstance(profile, dict):
            profile = load_profile(profile)
        if rows <= 0:
            raise ValueError(f"rows = {rows}: must be positive")
        self.profile = profile
        rng = np.random.default_rng(seed)
        features = profile["features"]
        sizes = table_sizes or [f["table_size"] for f in features]
        levels = profile["dense_quantile_levels"]
        dense = np.empty((rows, profile["num_dense"]), dtype=np.float32)
        for j, spec in enumerate(profile["dense"]):
            dense[:, j] = _draw_dense(spec, levels, rng.random(rows))
        labels = (rng.random(rows) < profile["click_rate"]).astype(np.float32)
        values, lengths = [], np.empty((rows, len(features)), dtype=np.int64)
        for f, spec in enumerate(features):
            bag_sizes = np.array([s for s, _ in spec["bag_sizes"]], dtype=np.int64)
            bag_p = np.array([p for _, p in spec["bag_sizes"]])
            lengths[:, f] = rng.choice(bag_sizes, rows, p=bag_p / bag_p.sum())
            n_ids = int(lengths[:, f].sum())
            ranks = draw_ids(spec["count_spectrum"], n_ids, rng)
            values.append((ranks * SCATTER_PRIME) % sizes[f])
        super().__init__(dense, values, labels, table_sizes=sizes, lengths=lengths,
                         split_fractions=split_fractions)
