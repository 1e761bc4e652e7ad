"""Shareable data profiles: statistics of a data set that reveal no row, and data drawn from them.

``fit_profile(data, split)`` reads a split and returns a small JSON-able dict:

- per feature: table size, cardinality (distinct ids seen), the access distribution as a
  histogram of access shares over log2 rank buckets (ranks 0, 1-2, 3-6, 7-14, ... by
  frequency) plus a fitted Zipf exponent, the bag-size distribution, a reuse-distance
  summary (accesses of that feature between two accesses of the same id: the share of
  accesses that repeat an earlier id and quantiles of the distance), the LRU stack-distance
  distribution (distinct ids between two accesses of the same id, plus one: an access hits an
  LRU cache of C rows exactly when its stack distance is at most C, so this is the feature's
  hit-rate curve) and the ids' lifetimes (below), which drive caches;
- per dense feature: quantiles (0.5% ... 99.5%) and the share of exact zeros;
- the click rate and the number of rows profiled.

No id, row or exact value of a row is stored: only counts by rank and quantiles. Which id is
popular is not stored either; ``ProfileData`` scatters popular ranks over each table.

``ProfileData(profile, rows, seed)`` is a ``DataSource`` that draws ``rows`` rows with those
statistics: ids so that each feature's count spectrum (how many ids occur c times) is the
profile's scaled to ``rows``, each bag size from the bag-size distribution, each dense value
by inverse CDF through the quantiles, labels by the click rate. The order of the ids is set by
``locality``:

- ``"profile"`` (default; for a format-1 profile, made before locality was profiled, the
  default is ``"iid"``): temporal locality as the source's. Real ids are not spread evenly
  over a log: each is in use for a while (its lifetime, first to last access, as a share of
  the log) and absent otherwise. The profile keeps the lifetime quantiles of the ids of each
  count (log2 count buckets); an id drawn c times gets a lifetime from its bucket, a random
  start, its first and last access at the lifetime's ends and the others uniformly between.
  Sorting all accesses by time gives the feature's id sequence. On the real Criteo head rows
  in file order this reproduces the stack-distance quantiles within 10% at the same row count
  (``tests/data/test_profile.py``), with the count spectrum kept exactly.
- ``"iid"``: every access independent (a random permutation of the drawn ids), as before
  locality was profiled. Stack distances then follow from the popularity alone.

Why lifetimes and not the reference's trace generator (draw a stack distance per access,
take the id at that depth of an LRU stack): that reproduces the stack distances but not the
popularity. On the Criteo head rows it gave the most popular id of feature 0 383 accesses
instead of 5,005, and forcing each id's count back onto it made the ids that fell deep in the
stack pile up at the end of the log. The stack-distance distribution is kept in the profile to
judge generated data by (and as the cache's hit-rate curve).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dlrm.data.arrays import DEFAULT_SPLITS, ArrayDataSource
from dlrm.files import atomic_file

log = logging.getLogger(__name__)

PROFILE_FORMAT = "dlrm-data-profile/2"
# Format 1 (before locality was profiled) still loads; it generates with locality "iid" only.
READABLE_FORMATS = ("dlrm-data-profile/1", PROFILE_FORMAT)
LOCALITIES = ("profile", "iid")
DENSE_QUANTILES = [0.005, *[round(0.05 * k, 2) for k in range(1, 20)], 0.995]
REUSE_QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9]
STACK_QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
LIFETIME_QUANTILES = DENSE_QUANTILES  # 0.5% ... 99.5%: no single id's extreme value
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


def previous_access(ids: np.ndarray) -> np.ndarray:
    """(n,) position of the previous access of the same id, -1 for an id's first access."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    prev = np.full(ids.size, -1, dtype=np.int64)
    same = sorted_ids[1:] == sorted_ids[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def count_smaller_before(a: np.ndarray) -> np.ndarray:
    """``out[i] = #{j < i : a[j] < a[i]}`` for non-negative integers, in O(n log max(a)) numpy.

    Bit by bit from the top: two values first differ at some bit; at that bit the smaller has
    a 0 and the same higher bits (prefix). So for each bit, every element with a 1 there counts
    the earlier elements with the same prefix and a 0 there.
    """
    a = np.asarray(a, dtype=np.int64)
    n = a.size
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    position = np.arange(n)
    for level in range(int(a.max()).bit_length() - 1, -1, -1):
        prefix = a >> (level + 1)
        order = np.lexsort((position, prefix))  # by prefix, then position
        prefix_sorted, bit_sorted = prefix[order], (a[order] >> level) & 1
        zeros = np.cumsum(bit_sorted == 0)  # zeros up to here, all groups
        starts = np.flatnonzero(np.r_[True, prefix_sorted[1:] != prefix_sorted[:-1]])
        group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        zeros_before_group = np.where(group_start > 0, zeros[group_start - 1], 0)
        ones = bit_sorted == 1
        out[order[ones]] += (zeros - zeros_before_group)[ones]
    return out


def stack_distances(ids: np.ndarray) -> np.ndarray:
    """(n,) LRU stack distance of every access: 0 for an id's first access (a cold miss), else
    1 + the number of distinct ids accessed since this id's previous access. An access hits
    an LRU cache of C entries exactly when its stack distance is between 1 and C.

    For an access at t whose previous access is p, the distinct ids in (p, t) are the
    positions j in (p, t) whose own next access comes after t. Counting the complement with
    next(j) < t gives ``d = (t - p) - H(t) + C(p)``, with H(t) the repeat accesses before t
    and C(p) = #{j < p : next(j) < next(p)} (``count_smaller_before``): O(n log² n) numpy
    instead of a Python LRU stack walked per access.
    """
    ids = np.asarray(ids)
    n = ids.size
    prev = previous_access(ids)
    hit = prev >= 0
    next_access = np.full(n, n, dtype=np.int64)  # n: never again
    next_access[prev[hit]] = np.flatnonzero(hit)
    before = count_smaller_before(next_access)
    hits_before = np.cumsum(hit) - hit
    out = np.zeros(n, dtype=np.int64)
    t = np.flatnonzero(hit)
    p = prev[hit]
    out[hit] = (t - p) - hits_before[hit] + before[p]
    return out


def stack_distance_summary(distances: np.ndarray) -> dict[str, Any]:
    """Cold-miss share, quantiles of the hits' stack distances, and their log2 histogram
    ``[[lo, hi, share]]`` (distances lo..hi-1): the LRU hit rate of a cache of C rows is the
    sum of the shares of buckets with hi - 1 <= C, times (1 - cold share)."""
    hits = distances[distances > 0]
    histogram = []
    lo = 1
    while hits.size and lo <= hits.max():
        share = float(((hits >= lo) & (hits < 2 * lo)).mean())
        histogram.append([lo, 2 * lo, share])
        lo *= 2
    return {"cold_share": float((distances == 0).mean()) if distances.size else 0.0,
            "quantiles": STACK_QUANTILES,
            "distance": ([float(q) for q in np.quantile(hits, STACK_QUANTILES)]
                         if hits.size else []),
            "histogram": histogram}


def _log_share_sum(gaps: np.ndarray, per_id: np.ndarray) -> float:
    """Sum of log(gap / sum of its id's gaps) over ids with ``per_id`` consecutive gaps."""
    first = np.cumsum(per_id) - per_id
    return float((np.log(gaps) - np.repeat(np.log(np.add.reduceat(gaps, first)), per_id)).sum())


def _fit_gap_power(log_share_sum: float, per_id: np.ndarray, quantiles: list[float]) -> float:
    """The power p such that gaps drawn from ``quantiles``, raised to p and scaled to their
    id's lifetime, have the real gaps' mean log share. Scaling c - 1 independent draws to a
    fixed sum pulls the extremes in (a short gap beside other short ones grows), so the draws
    need a wider spread than the real gaps' marginal; p > 1 gives it. Bisection, fixed seed."""
    total = int(per_id.sum())
    levels = np.random.default_rng(0).permutation((np.arange(total) + 0.5) / total)
    draws = np.interp(levels, LIFETIME_QUANTILES, quantiles)  # stratified: little noise
    draws = np.maximum(draws, 1e-9)
    lo, hi = 0.2, 5.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _log_share_sum(draws ** mid, per_id) > log_share_sum:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def id_lifetimes(ids: np.ndarray) -> list[dict[str, Any]]:
    """How long ids stay in use and how bursty they are meanwhile, by access count.

    One entry per log2 bucket of access counts from 2: ``{"counts": [lo, hi], "ids": k,
    "lifetime": quantiles, "gaps": quantiles, "gap_power": p}``. ``lifetime``: quantiles
    (``LIFETIME_QUANTILES``) over the k ids accessed lo..hi-1 times of (last - first access)
    / accesses. ``gaps``: quantiles of the gaps between consecutive accesses of those ids
    relative to the id's mean gap (ids with 3 or more accesses; an even spread gives
    exponential gaps, bursts a heavier tail), and ``gap_power`` the power that makes drawn
    gaps reproduce them once scaled to a lifetime (``_fit_gap_power``).
    """
    n = ids.size
    if n == 0:
        return []
    order = np.argsort(ids, kind="stable")  # by id, each id's accesses in time order
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], n] - 1
    counts = ends - starts + 1
    spans = (order[ends] - order[starts]) / n
    repeat = sorted_ids[1:] == sorted_ids[:-1]
    gap_owner = np.repeat(np.arange(starts.size), counts - 1)
    gaps = (order[1:] - order[:-1])[repeat]
    relative_gaps = gaps * (counts - 1)[gap_owner] / (order[ends] - order[starts])[gap_owner]
    out = []
    lo = 2
    while lo <= counts.max():
        sel = (counts >= lo) & (counts < 2 * lo)
        if sel.any():
            entry: dict[str, Any] = {
                "counts": [lo, 2 * lo], "ids": int(sel.sum()),
                "lifetime": [float(q) for q in np.quantile(spans[sel], LIFETIME_QUANTILES)],
                "gaps": [], "gap_power": 1.0}
            inner = sel & (counts >= 3)
            if inner.any():
                mine = inner[gap_owner]
                entry["gaps"] = [float(q) for q in np.quantile(relative_gaps[mine],
                                                               LIFETIME_QUANTILES)]
                per_id = counts[inner] - 1
                log_shares = float(np.log(relative_gaps[mine]
                                          / (counts - 1)[gap_owner][mine]).sum())
                entry["gap_power"] = _fit_gap_power(log_shares, per_id, entry["gaps"])
            out.append(entry)
        lo *= 2
    return out


def order_by_lifetimes(ranks: np.ndarray, lifetimes: list[dict[str, Any]], scale: float,
                       rng: np.random.Generator) -> np.ndarray:
    """The accesses ``ranks`` (one entry per access, any order) reordered in time; counts are
    unchanged.

    Each id drawn c >= 2 times takes the statistics of the bucket of c * ``scale`` (its count
    at the profiled row count): a lifetime L from the bucket's quantiles and a uniform start
    s in [0, 1 - L]; its first access is at s, its last at s + L, and the ones between are
    placed by c - 1 gaps drawn from the bucket's relative gaps (raised to ``gap_power``) and
    scaled to sum to L; exponential gaps, i.e. uniform placement, where the bucket has none.
    Ids drawn once fall anywhere. Sorting all accesses by time gives the sequence.
    """
    n = ranks.size
    if n == 0:
        return ranks
    counts = np.bincount(ranks)
    ids = np.flatnonzero(counts)
    c = counts[ids]
    owner = np.repeat(np.arange(ids.size), c)
    first = np.cumsum(c) - c
    nth = np.arange(n) - first[owner]  # k-th access of its id, from 0
    span = np.ones(ids.size)  # no bucket (no repeats profiled): spread over the whole log
    gaps = rng.exponential(size=n)  # gaps[i]: time since the previous access of i's id
    if lifetimes:
        lows = np.array([b["counts"][0] for b in lifetimes], dtype=np.float64)
        bucket = np.clip(np.searchsorted(lows, c * scale, side="right") - 1, 0, lows.size - 1)
        for k, stats in enumerate(lifetimes):
            sel = np.flatnonzero(bucket == k)
            span[sel] = np.interp(rng.random(sel.size), LIFETIME_QUANTILES, stats["lifetime"])
            if stats["gaps"]:
                mine = np.flatnonzero(bucket[owner] == k)
                drawn = np.interp(rng.random(mine.size), LIFETIME_QUANTILES, stats["gaps"])
                gaps[mine] = np.maximum(drawn, 1e-9) ** stats["gap_power"]
    span[c == 1] = 0.0
    gaps[nth == 0] = 0.0
    walked = np.cumsum(gaps)
    walked -= walked[first][owner]  # gaps so far within each id
    total = walked[first + c - 1][owner]
    position = np.divide(walked, total, out=np.zeros(n), where=total > 0)  # 0 first, 1 last
    start = rng.random(ids.size) * (1.0 - span)
    time = start[owner] + span[owner] * position
    return ids[owner[np.argsort(time, kind="stable")]]


def fit_profile(data: Any, split: str = "train", max_rows: int | None = None) -> dict[str, Any]:
    """The profile of ``data``'s ``split`` (its first ``max_rows`` rows, in the data's order:
    locality is a property of the order); see the module doc.

    The profiled rows' ids are held in memory (8 bytes per id, ~60 with the stack-distance
    pass): use ``max_rows`` on big data. The stack distances take ~1 s per million accesses.
    """
    dense, labels, values, lengths = _collect(data, split, max_rows)
    features = []
    for f, (ids, lens) in enumerate(zip(values, lengths)):
        buckets, counts = rank_buckets(ids) if ids.size else ([], np.zeros(0))
        reuse = reuse_distances(ids) if ids.size else np.zeros(0)
        stack = stack_distances(ids)
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
            "stack_distance": stack_distance_summary(stack),
            "lifetimes": id_lifetimes(ids),
        })
    dense_profile = [{"quantiles": [float(q) for q in np.quantile(col, DENSE_QUANTILES)],
                      "zero_share": float((col == 0).mean())} for col in dense.T]
    return {"format": PROFILE_FORMAT, "rows": int(labels.size), "num_dense": int(dense.shape[1]),
            "click_rate": float(labels.mean()), "dense_quantile_levels": DENSE_QUANTILES,
            "dense": dense_profile, "features": features}


def save_profile(profile: dict[str, Any], path: str | Path) -> None:
    """Write ``profile`` as JSON, atomically: an interrupted run leaves no half profile."""
    with atomic_file(path) as f:
        f.write(json.dumps(profile, indent=1).encode())


def load_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"profile {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"profile {path}: not JSON ({err})") from err
    if profile.get("format") not in READABLE_FORMATS:
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
        seed: generator seed; the same (profile, rows, seed, locality) gives the same rows.
        table_sizes: override the profiled table sizes (e.g. to cap them); ranks beyond a
            smaller table wrap around.
        locality: ``"profile"`` (ids ordered by the profiled lifetimes: the source's temporal
            locality) or ``"iid"`` (ids in random order). Both draw the same dense values,
            labels, bag sizes and multiset of ids for a seed; only the ids' order differs.
            None: ``"profile"``, or ``"iid"`` for a profile made before locality was
            profiled (format 1), which is logged.

    Example:
        >>> data = ProfileData("profile.json", rows=100_000, locality="iid")  # doctest: +SKIP
    """

    def __init__(self, profile: dict[str, Any] | str | Path, rows: int, seed: int = 0,
                 table_sizes: list[int] | None = None,
                 split_fractions: tuple[tuple[str, float], ...] = DEFAULT_SPLITS,
                 locality: str | None = None) -> None:
        if not isinstance(profile, dict):
            profile = load_profile(profile)
        if rows <= 0:
            raise ValueError(f"rows = {rows}: must be positive")
        features = profile["features"]
        if locality is None:
            locality = "profile" if all("lifetimes" in f for f in features) else "iid"
            if locality == "iid":
                log.info("profile format %r has no locality statistics: ids in random order "
                         "(re-run `dlrm synth profile` for the source's locality)",
                         profile.get("format"))
        if locality not in LOCALITIES:
            raise ValueError(f"locality {locality!r}: expected one of {LOCALITIES}")
        if locality == "profile" and any("lifetimes" not in f for f in features):
            raise ValueError("this profile has no locality statistics (format "
                             f"{profile.get('format')!r}, made before they were profiled): "
                             "re-run `dlrm synth profile`, or use locality 'iid'")
        self.profile = profile
        self.locality = locality
        rng = np.random.default_rng(seed)
        sizes = table_sizes or [f["table_size"] for f in features]
        if len(sizes) != len(features):
            raise ValueError(f"the profile has {len(features)} categorical features but "
                             f"{len(sizes)} table sizes were given (a model made for other "
                             f"data?)")
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
            if locality == "profile":
                # Its own generator: the main stream (dense, labels, bags, ids) stays the
                # one "iid" draws, so the two localities differ only in the ids' order.
                order_rng = np.random.default_rng([seed, f, 1])
                scale = spec["accesses"] / max(n_ids, 1)
                ranks = order_by_lifetimes(ranks, spec["lifetimes"], scale, order_rng)
            values.append((ranks * SCATTER_PRIME) % sizes[f])
        super().__init__(dense, values, labels, table_sizes=sizes, lengths=lengths,
                         split_fractions=split_fractions)
