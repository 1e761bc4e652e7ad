"""Benchmark inputs: generated batches with uniform (``random``) or power-law (``planted``) ids,
one- or multi-hot; a data set's batches cycled; the first rows of a data set held in memory.

Skewed ids hit caches differently from uniform ones, so the generator matters for embedding
throughput. ``planted`` draws ranks from a bounded power law of exponent ``zipf`` (as
``dlrm.data.synthetic``'s planted data) and scatters rank r of a table of n rows to row
``(r * 2654435761) mod n`` (a bijection since that prime exceeds every table size), so popular
rows are spread over the table as in hashed real data rather than packed at its start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dlrm.data.arrays import ArrayDataSource
from dlrm.features import Batch, SparseFeatures

SCATTER_PRIME = 2654435761  # prime > any table size here, so r -> r*p mod n is a bijection
TRAIN_ONLY = (("train", 1.0),)


def power_law_ranks(u: torch.Tensor, sizes: torch.Tensor, exponent: float) -> torch.Tensor:
    """Ranks 0..n-1, P(rank = r) ~ (r+1)^-exponent, by inverse CDF of a bounded Pareto.

    u: uniforms in [0, 1); sizes: float64 table size of each element (same shape).
    """
    top = sizes + 1.0
    if exponent == 0:
        x = 1.0 + u * sizes
    elif abs(exponent - 1.0) < 1e-9:
        x = top.pow(u)
    else:
        a = 1.0 - exponent
        x = (1.0 + u * (top.pow(a) - 1.0)).pow(1.0 / a)
    return torch.minimum(x.long() - 1, (sizes - 1).long())


class GeneratedBatches:
    """An endless stream of benchmark batches, deterministic from ``seed``.

    Args:
        table_sizes: rows n_f of each of the F tables.
        bag_sizes: ids per bag of each feature (all 1: one-hot).
        num_dense: dense features per sample.
        batch_size: B.
        ids: ``random`` (uniform) or ``planted`` (power law of exponent ``zipf``).

    Batches are made on ``device`` (on a GPU the generator runs there, so generation is not
    a host-side bottleneck at batch 64k).

    Call: ``next(stream)`` -> ``Batch`` with dense (B, num_dense), sparse feature-major with
    ``B * sum(bag_sizes)`` ids, labels (B,).
    """

    def __init__(self, table_sizes: list[int], bag_sizes: list[int], num_dense: int,
                 batch_size: int, ids: str = "random", zipf: float = 1.1, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if ids not in ("random", "planted"):
            raise ValueError(f"ids {ids!r}: expected 'random' or 'planted'")
        if len(bag_sizes) != len(table_sizes):
            raise ValueError(f"{len(bag_sizes)} bag sizes for {len(table_sizes)} tables")
        if any(b < 1 for b in bag_sizes):
            raise ValueError(f"bag sizes {bag_sizes}: every bag needs at least one id")
        self.table_sizes, self.bag_sizes = list(table_sizes), list(bag_sizes)
        self.num_dense, self.batch_size, self.ids, self.zipf = num_dense, batch_size, ids, zipf
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.one_hot = all(b == 1 for b in bag_sizes)
        # Table size of every id position of a batch, feature-major: feature f has B*L_f ids.
        per_feature = torch.tensor([batch_size * b for b in bag_sizes])
        self._sizes = torch.repeat_interleave(
            torch.tensor(self.table_sizes, dtype=torch.float64), per_feature).to(self.device)
        self._lengths = torch.repeat_interleave(
            torch.tensor(self.bag_sizes, dtype=torch.int64), batch_size).to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        b = self.batch_size
        dev = self.device
        u = torch.rand(self._sizes.shape, generator=self.gen, dtype=torch.float64, device=dev)
        if self.ids == "random":
            values = (u * self._sizes).long()
        else:
            ranks = power_law_ranks(u, self._sizes, self.zipf)
            values = (ranks * SCATTER_PRIME) % self._sizes.long()
        if self.one_hot:
            sparse = SparseFeatures(values, torch.arange(values.numel() + 1, device=dev),
                                    len(self.table_sizes), one_hot=True)
        else:
            sparse = SparseFeatures.from_lengths(values, self._lengths, len(self.table_sizes))
        dense = torch.rand(b, self.num_dense, generator=self.gen, device=dev)
        labels = (torch.rand(b, generator=self.gen, device=dev) < 0.5).float()
        return Batch(dense, sparse, labels)


def cycle_batches(data, batch_size: int, split: str = "train") -> Iterator[Batch]:
    """Endless batches of a ``DataSource`` split, epoch after epoch (full batches only)."""
    if data.num_samples(split) < batch_size:
        raise ValueError(f"split {split!r} has {data.num_samples(split)} samples, fewer than "
                         f"one batch of {batch_size}")
    epoch = 0
    while True:
        yield from data.batches(split, batch_size, epoch=epoch, drop_last=True)
        epoch += 1


def head_rows(data: Any, split: str, rows: int, batch_size: int = 8192) -> ArrayDataSource:
    """The first ``rows`` rows of ``data``'s ``split``, in order, in memory (one split,
    ``train``), one- or multi-hot."""
    dense, labels, lengths = [], [], []
    values: list[list[np.ndarray]] = [[] for _ in data.table_sizes]
    seen = 0
    for batch in data.batches(split, batch_size):
        take = min(len(batch), rows - seen)
        sp = batch.sparse
        offsets, flat = sp.offsets.numpy(), sp.values.numpy()
        lens = np.diff(offsets).reshape(sp.num_features, sp.batch_size)[:, :take]
        for f in range(sp.num_features):
            start = offsets[f * sp.batch_size]
            values[f].append(flat[start:start + int(lens[f].sum())])
        lengths.append(lens.T)
        dense.append(batch.dense[:take].numpy())
        labels.append(batch.labels[:take].numpy())
        seen += take
        if seen >= rows:
            break
    if seen == 0:
        raise ValueError(f"split {split!r} has no rows")
    return ArrayDataSource(np.concatenate(dense), [np.concatenate(v) for v in values],
                           np.concatenate(labels), data.table_sizes, np.concatenate(lengths),
                           split_fractions=TRAIN_ONLY)
