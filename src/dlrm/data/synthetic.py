"""Synthetic click data, deterministic from a seed and streamed in batches.

Two generators:

- ``random``: uniform ids per table, uniform dense values in [0, 1) and coin-flip labels, like
  the reference DLRM's generator. Nothing to learn; for throughput work.
- ``planted``: a learnable task whose true click probability is known for every sample.
  Ids of feature f follow a power law (Zipf, exponent ``zipf``) over its n_f values, the popular
  ranks scattered over the table by a fixed permutation. Dense features are log-normal counts,
  given to the model as log(1 + count) like preprocessed Criteo. Labels are drawn from a hidden
  factorization machine over the same features:

      logit = b + sum_f w_f[id_f] + a . z + sum_{f<g} <v_f[id_f], v_g[id_g]>
      y ~ Bernoulli(sigmoid(logit))

  with z the dense features' standard-normal latents and b set for ``ctr`` positives. Since
  sigmoid(logit) is the Bayes-optimal predictor, its AUC and log loss on a split are the
  ceiling any model can reach there (``optimal_metrics``).

Every split is a fixed sequence of samples made in blocks of ``BLOCK`` rows; block k of a split
comes from its own generator seeded by (seed, split, k), so any batch can be regenerated alone
(exact resume, rank slices) and results do not depend on the batch size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES
from dlrm.data.source import rank_slice
from dlrm.features import Batch, SparseFeatures
from dlrm.metrics import log_loss_from_logits, roc_auc

BLOCK = 8192
SPLITS = ("train", "val", "test")


@dataclass
class SyntheticConfig:
    """What a synthetic data set looks like; stored in checkpoints to rebuild it.

    Args:
        kind: ``planted`` or ``random``.
        table_sizes: n_f for each categorical feature (default: Criteo Kaggle's, capped).
        rows_cap: cap on every table size (default 100,000; None for the full sizes).
        num_dense: dense features per sample.
        train_samples, val_samples, test_samples: split sizes.
        zipf: power-law exponent of id popularity (planted); 0 is uniform.
        ctr: target click rate of the planted click model.
        latent_dim: rank k of the hidden factorization machine.
        first_order_scale, interaction_scale, dense_scale: standard deviations of the hidden
            model's terms; the defaults give a Bayes-optimal AUC near 0.8.
        seed: everything (hidden model and samples) follows from it.
    """

    kind: str = "planted"
    table_sizes: list[int] = field(default_factory=lambda: list(CRITEO_KAGGLE_TABLE_SIZES))
    rows_cap: int | None = 100_000
    num_dense: int = 13
    train_samples: int = 10_000_000
    val_samples: int = 100_000
    test_samples: int = 100_000
    zipf: float = 1.1
    ctr: float = 0.25
    latent_dim: int = 4
    first_order_scale: float = 1.0
    interaction_scale: float = 1.0
    dense_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("planted", "random"):
            raise ValueError(f"synthetic kind {self.kind!r}: expected 'planted' or 'random'")
        for k, n in enumerate(self.table_sizes):
            if n <= 0:
                raise ValueError(f"table_sizes[{k}] = {n}: every table needs at least one row")
        if not 0 < self.ctr < 1:
            raise ValueError(f"ctr {self.ctr}: must be strictly between 0 and 1")

    @property
    def capped_sizes(self) -> list[int]:
        return [min(n, self.rows_cap) if self.rows_cap else n for n in self.table_sizes]


def _block_seed(seed: int, split: str, block: int) -> int:
    """A 63-bit seed for block ``block`` of ``split`` (splitmix-style mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + SPLITS.index(split) * 0xBF58476D1CE4E5B9
         + block * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & ((1 << 63) - 1)


def _power_law_ranks(u: torch.Tensor, sizes: torch.Tensor, exponent: float) -> torch.Tensor:
    """Ranks 0..n-1 with P(rank >= r) following a power law of ``exponent`` (Zipf-like).

    Inverse-CDF sampling of a bounded Pareto density x^-s on [1, n+1), floored: closed form,
    so it costs a few element-wise ops per id instead of a binary search over n ranks.
    u: (m, F) uniforms in [0, 1); sizes: (F,) float64 table sizes n_f.
    """
    top = sizes + 1.0
    if exponent == 0:
        x = 1.0 + u * sizes
    elif abs(exponent - 1.0) < 1e-9:
        x = top.pow(u)  # s = 1: log-uniform
    else:
        a = 1.0 - exponent
        x = (1.0 + u * (top.pow(a) - 1.0)).pow(1.0 / a)
    ranks = x.long() - 1
    return torch.minimum(ranks, (sizes - 1).long())


class SyntheticData:
    """A synthetic ``DataSource`` (see ``dlrm.data.source``).

    Example:
        >>> data = SyntheticData(SyntheticConfig(kind="planted", table_sizes=[100, 50]))
        >>> batch = next(data.batches("train", batch_size=4))
        >>> batch.dense.shape, batch.sparse.values.shape
        (torch.Size([4, 13]), torch.Size([8]))
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.table_sizes = config.capped_sizes
        self.num_dense = config.num_dense
        # The last few generated blocks. Two threads read one source at once when batches are
        # made ahead (dlrm.data.prefetch: training batches on a thread while the main thread
        # evaluates), so the cache's check, eviction and insert hold a lock; generation does
        # not (a block is a pure function of its key: a duplicate draw is the same block).
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
        self._cache_lock = threading.Lock()
        self._optimal: dict[str, dict[str, float]] = {}
        sizes = torch.tensor(self.table_sizes, dtype=torch.int64)
        wide = max(self.table_sizes) >= 2**22
        self._sizes_float = sizes.to(torch.float64 if wide else torch.float32)
        self._row_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        if config.kind == "planted":
            self._build_hidden_model()

    # ----------------------------------------------------------------- hidden click model
    def _build_hidden_model(self) -> None:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        total = int(self._row_offsets[-1])
        perms = [torch.randperm(n, generator=gen) + int(self._row_offsets[f])
                 for f, n in enumerate(self.table_sizes)]
        self._perm = torch.cat(perms)  # rank row -> id row, both in fused numbering
        k = cfg.latent_dim
        num_features = len(self.table_sizes)
        self._w = torch.randn(total, generator=gen) * cfg.first_order_scale / math.sqrt(
            num_features)
        # Scale so the pairwise sum has standard deviation ~ interaction_scale.
        pairs = max(num_features * (num_features - 1) / 2, 1)
        v_std = (cfg.interaction_scale ** 2 / (pairs * k)) ** 0.25
        self._v = torch.randn(total, k, generator=gen) * v_std
        self._dense_w = torch.randn(cfg.num_dense, generator=gen) * cfg.dense_scale / math.sqrt(
            max(cfg.num_dense, 1))
        self._dense_mu = torch.rand(cfg.num_dense, generator=gen) * 3.0
        self._dense_sigma = 0.5 + torch.rand(cfg.num_dense, generator=gen) * 1.5
        self._bias = 0.0
        # Calibrate the bias for the target click rate on a calibration sample.
        _, rows, z = self._draw(torch.Generator().manual_seed(cfg.seed + 7919), 65536)
        raw = self._logits(rows, z)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(torch.sigmoid(raw + mid).mean()) > cfg.ctr:
                hi = mid
            else:
                lo = mid
        self._bias = (lo + hi) / 2

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        """ids (n, F) local, fused rows (n, F), dense latents z (n, num_dense)."""
        num_features = len(self.table_sizes)
        if self.config.kind == "random":
            sizes = torch.tensor(self.table_sizes, dtype=torch.float64)
            ids = (torch.rand(n, num_features, generator=gen, dtype=torch.float64) * sizes).long()
            return ids, ids, torch.empty(0)
        # float32 resolves ranks exactly enough below 2^22 rows; above, use float64.
        u = torch.rand(n, num_features, generator=gen, dtype=self._sizes_float.dtype)
        ranks = _power_law_ranks(u, self._sizes_float, self.config.zipf)
        rows = self._perm.index_select(0, (ranks + self._row_offsets[:-1]).view(-1)).view(n, -1)
        ids = rows - self._row_offsets[:-1]
        z = torch.randn(n, self.config.num_dense, generator=gen)
        return ids, rows, z

    def _logits(self, rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1)
        first = self._w.index_select(0, flat).view(rows.shape).sum(1)  # (n,)
        v = self._v.index_select(0, flat).view(*rows.shape, -1)  # (n, F, k)
        summed = v.sum(1)
        pairwise = 0.5 * (summed.pow(2) - v.pow(2).sum(1)).sum(1)
        return self._bias + first + pairwise + z @ self._dense_w

    def _generate_block(self, split: str, block: int) -> tuple[torch.Tensor, ...]:
        key = (split, block)
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        gen = torch.Generator().manual_seed(_block_seed(self.config.seed, split, block))
        ids, rows, z = self._draw(gen, BLOCK)
        if self.config.kind == "random":
            dense = torch.rand(BLOCK, self.num_dense, generator=gen)
            logits = torch.zeros(BLOCK)
            labels = (torch.rand(BLOCK, generator=gen) < 0.5).float()
        else:
            counts = torch.floor(torch.exp(self._dense_mu + self._dense_sigma * z))
            dense = torch.log1p(counts)
            logits = self._logits(rows, z)
            labels = (torch.rand(BLOCK, generator=gen) < torch.sigmoid(logits)).float()
        out = (dense.float(), ids, labels, logits.float())
        with self._cache_lock:
            if key not in self._cache and len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = out
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"], state["_cache_lock"] = {}, None  # a lock does not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_lock = threading.Lock()

    # ----------------------------------------------------------------- DataSource protocol
    def splits(self) -> list[str]:
        return list(SPLITS)

    def num_samples(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; synthetic data has {SPLITS}")
        return getattr(self.config, f"{split}_samples")

    def samples(self, split: str, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Rows [start, stop) of a split: dense (n, num_dense), ids (n, F), labels (n,),
        true logits (n,) (zeros for ``random``)."""
        first, last = start // BLOCK, (stop - 1) // BLOCK
        parts = [self._generate_block(split, b) for b in range(first, last + 1)]
        lo = start - first * BLOCK
        hi = lo + (stop - start)
        if len(parts) == 1:
            return tuple(t[lo:hi] for t in parts[0])
        return tuple(torch.cat(ts)[lo:hi] for ts in zip(*parts))

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches of a split in order. Samples are i.i.d., so ``shuffle`` changes nothing
        and every epoch repeats the same samples."""
        n = self.num_samples(split)
        num_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        for k in range(start_batch, num_batches):
            start = k * batch_size
            stop = min(start + batch_size, n)
            dense, ids, labels, _ = self.samples(split, start, stop)
            part = rank_slice(stop - start, rank, world_size)
            yield Batch(dense[part], SparseFeatures.from_ids(ids[part]), labels[part])

    def spec(self) -> dict[str, Any]:
        return {"kind": "synthetic", "config": asdict(self.config)}

    def optimal_metrics(self, split: str) -> dict[str, float] | None:
        """AUC and log loss of the true click probabilities on a split (planted only)."""
        if self.config.kind != "planted":
            return None
        if split not in self._optimal:
            logits, labels = [], []
            n = self.num_samples(split)
            for start in range(0, n, BLOCK):
                _, _, y, logit = self.samples(split, start, min(start + BLOCK, n))
                logits.append(logit)
                labels.append(y)
            all_logits, all_labels = torch.cat(logits), torch.cat(labels)
            self._optimal[split] = {"auc": roc_auc(all_logits, all_labels),
                                    "logloss": log_loss_from_logits(all_logits, all_labels)}
        return self._optimal[split]
