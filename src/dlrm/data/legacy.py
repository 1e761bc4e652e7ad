"""Reader of ``dlrm-table-v1`` folders, written by ``dlrm preprocess table`` before the one
pipeline (format ``dlrm-memmap`` 2). Kept so existing folders still train; new folders are never
written in it. To move a folder to the current format, re-run ``dlrm preprocess table``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.data.source import rank_slice
from dlrm.features import Batch, SparseFeatures

FORMAT = "dlrm-table-v1"
SPLITS = ("train", "val", "test")


class TableDataSource:
    """A ``dlrm-table-v1`` folder as a ``DataSource`` (see ``dlrm.data.source``).

    Arrays are memory-mapped; a batch gathers its rows. Features keep the schema's order;
    multi-hot features become bags (``SparseFeatures.one_hot`` is False then).

    Example:
        >>> data = TableDataSource("out/movielens")
        >>> batch = next(data.batches("train", 256))
        >>> batch.dense.shape, batch.sparse.num_features
        (torch.Size([256, 1]), 7)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist (run `dlrm preprocess table`)")
        self.metadata = json.loads(meta_path.read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.metadata.get('format')!r}, "
                             f"expected {FORMAT!r}")
        self.table_sizes = list(self.metadata["table_sizes"])
        self.num_dense = int(self.metadata["num_dense"])
        self.features = self.metadata["features"]
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def _split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self.metadata["rows"]:
            raise ValueError(f"unknown split {split!r}; {self.path} has "
                             f"{sorted(self.metadata['rows'])}")
        if split not in self._arrays:
            folder = self.path / split
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                      for name in ("labels", "dense", "sparse")}
            for f in self.features:
                if f["multi_hot"]:
                    for part in ("values", "offsets"):
                        arrays[f"{f['name']}.{part}"] = np.load(
                            folder / f"{f['name']}.{part}.npy", mmap_mode="r")
            self._arrays[split] = arrays
        return self._arrays[split]

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.metadata["rows"]]

    def num_samples(self, split: str) -> int:
        if split not in self.metadata["rows"]:
            return 0
        return int(self.metadata["rows"][split])

    def rows(self, split: str, index: np.ndarray) -> Batch:
        """The samples at ``index`` (row numbers of the split) as one ``Batch``."""
        arrays = self._split(split)
        batch = len(index)
        dense = torch.from_numpy(np.ascontiguousarray(arrays["dense"][index]))
        labels = torch.from_numpy(np.ascontiguousarray(arrays["labels"][index]))
        singles = np.asarray(arrays["sparse"][index])  # (B, F_single)
        if not any(f["multi_hot"] for f in self.features):
            return Batch(dense, SparseFeatures.from_ids(torch.from_numpy(singles)), labels)
        values, lengths = [], []
        single_k = 0
        for f in self.features:  # feature-major
            if not f["multi_hot"]:
                values.append(singles[:, single_k])
                lengths.append(np.ones(batch, dtype=np.int64))
                single_k += 1
                continue
            offsets = arrays[f"{f['name']}.offsets"]
            starts, ends = offsets[index], offsets[index + 1]
            count = ends - starts
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            values.append(np.asarray(arrays[f"{f['name']}.values"][np.repeat(starts, count)
                                                                   + within]))
            lengths.append(count)
        sparse = SparseFeatures.from_lengths(torch.from_numpy(np.concatenate(values)),
                                             torch.from_numpy(np.concatenate(lengths)),
                                             len(self.features))
        return Batch(dense, sparse, labels)

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches of a split; with ``shuffle`` a permutation drawn from (seed, epoch)."""
        n = self.num_samples(split)
        order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
                 else np.arange(n))
        num_batches = n // batch_size if drop_last else -(-n // batch_size)
        for k in range(start_batch, num_batches):
            index = order[k * batch_size: min((k + 1) * batch_size, n)]
            part = rank_slice(len(index), rank, world_size)
            yield self.rows(split, index[part])

    def spec(self) -> dict[str, Any]:
        return {"kind": "table", "path": str(self.path)}
