"""``ArrayDataSource``: a ``DataSource`` over in-memory arrays (one- or multi-hot).

Splits are consecutive slices of the rows, in order (``split_fractions``), as the reference
DLRM splits a day of Criteo. Batches are deterministic: ``shuffle=True`` permutes a split with a
generator seeded by (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dlrm.data.source import rank_slice
from dlrm.features import Batch, SparseFeatures

DEFAULT_SPLITS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))


class ArrayDataSource:
    """In-memory rows as a ``DataSource``.

    Args:
        dense: (n, num_dense) float features (already preprocessed).
        ids: (n, F) int ids (one-hot), or a list of F 1-D arrays of ids with ``lengths``.
        labels: (n,) 0/1 labels.
        table_sizes: rows of each table (default: max id + 1 per feature).
        lengths: (n, F) bag sizes when ``ids`` is a list of per-feature id arrays (multi-hot);
            feature f's bag of row r is the r-th run of ``lengths[:, f]`` ids in ``ids[f]``.
        split_fractions: (name, fraction) pairs summing to 1, consecutive in row order.

    Example:
        >>> data = ArrayDataSource(np.zeros((10, 2)), np.zeros((10, 3), int), np.ones(10))
        >>> next(data.batches("train", 4)).sparse.values.shape
        torch.Size([12])
    """

    def __init__(self, dense: Any, ids: Any, labels: Any, table_sizes: Sequence[int] | None = None,
                 lengths: Any | None = None,
                 split_fractions: Sequence[tuple[str, float]] = DEFAULT_SPLITS) -> None:
        self.dense = torch.as_tensor(np.asarray(dense, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        n = self.dense.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels has shape {tuple(self.labels.shape)}; expected ({n},)")
        if lengths is None:
            id_matrix = np.asarray(ids, dtype=np.int64)
            if id_matrix.ndim != 2 or id_matrix.shape[0] != n:
                raise ValueError(f"ids has shape {id_matrix.shape}; expected ({n}, F)")
            values = [torch.as_tensor(np.ascontiguousarray(id_matrix[:, f]))
                      for f in range(id_matrix.shape[1])]
            length_matrix = torch.ones(n, len(values), dtype=torch.int64)
        else:
            values = [torch.as_tensor(np.asarray(v, dtype=np.int64)) for v in ids]
            length_matrix = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
            if length_matrix.shape != (n, len(values)):
                raise ValueError(f"lengths has shape {tuple(length_matrix.shape)}; "
                                 f"expected ({n}, {len(values)})")
        self.values = values
        self.lengths = length_matrix
        self.row_offsets = []  # per feature (n+1,) offsets of each row's bag in values[f]
        for f, v in enumerate(values):
            offs = torch.zeros(n + 1, dtype=torch.int64)
            torch.cumsum(length_matrix[:, f], 0, out=offs[1:])
            if int(offs[-1]) != v.numel():
                raise ValueError(f"feature {f}: lengths sum to {int(offs[-1])} but there are "
                                 f"{v.numel()} ids")
            if v.numel() and int(v.min()) < 0:
                raise ValueError(f"feature {f}: negative id {int(v.min())}")
            self.row_offsets.append(offs)
        self.one_hot = bool((length_matrix == 1).all())
        self.num_dense = self.dense.shape[1]
        if table_sizes is None:
            table_sizes = [int(v.max()) + 1 if v.numel() else 1 for v in values]
        self.table_sizes = [int(s) for s in table_sizes]
        if len(self.table_sizes) != len(values):
            raise ValueError(f"{len(self.table_sizes)} table sizes for {len(values)} features")
        for f, (v, size) in enumerate(zip(values, self.table_sizes)):
            if v.numel() and int(v.max()) >= size:
                raise ValueError(f"feature {f}: id {int(v.max())} outside its table of {size}")
        total = sum(fr for _, fr in split_fractions)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions sum to {total}, not 1")
        self._splits: dict[str, tuple[int, int]] = {}
        start = 0
        for k, (name, fraction) in enumerate(split_fractions):
            stop = n if k == len(split_fractions) - 1 else start + round(fraction * n)
            self._splits[name] = (start, stop)
            start = stop

    def splits(self) -> list[str]:
        return list(self._splits)

    def num_samples(self, split: str) -> int:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; this data has {self.splits()}")
        start, stop = self._splits[split]
        return stop - start

    def rows(self, rows: torch.Tensor) -> Batch:
        """The batch of the given row numbers, in that order."""
        dense = self.dense.index_select(0, rows)
        labels = self.labels.index_select(0, rows)
        if self.one_hot:
            ids = torch.stack([v.index_select(0, rows) for v in self.values], 1)
            return Batch(dense, SparseFeatures.from_ids(ids), labels)
        values, lengths = [], []
        for f, v in enumerate(self.values):
            starts, counts = self.row_offsets[f][rows], self.lengths[rows, f]
            take = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts) \
                + torch.arange(int(counts.sum()))
            values.append(v.index_select(0, take))
            lengths.append(counts)
        sparse = SparseFeatures.from_lengths(torch.cat(values), torch.cat(lengths),
                                             len(self.values))
        return Batch(dense, sparse, labels)

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        n = self.num_samples(split)
        first, _ = self._splits[split]
        order = torch.arange(first, first + n)
        if shuffle:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = order[torch.randperm(n, generator=gen)]
        num_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        for k in range(start_batch, num_batches):
            rows = order[k * batch_size: min((k + 1) * batch_size, n)]
            yield self.rows(rows[rank_slice(rows.numel(), rank, world_size)])

    def spec(self) -> dict[str, Any]:
        raise ValueError("ArrayDataSource lives in memory only; it has no spec to reopen it by")
