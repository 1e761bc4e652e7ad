"""Batches straight from a preprocessed folder's memory-mapped arrays (``dlrm preprocess``).

``MemmapDataSource`` implements ``dlrm.data.source.DataSource``. A split is a list of row
ranges of parts (see ``dlrm.data.format``); the loader treats it as one virtual array.

- Without shuffling, batch ``k`` is rows ``[k*B, (k+1)*B)``: one contiguous read per array
  (two where it crosses a part boundary), no per-sample Python.
- With shuffling, the split is cut into blocks of ``block_rows`` consecutive rows; the block
  order is a seeded permutation (seed, epoch), batch ``k`` is the ``k``-th window of ``B`` rows
  of that block sequence (a few contiguous reads), and its rows are then permuted by a
  generator seeded with (seed, epoch, k). Batch ``k`` is therefore a pure function of
  ``(split, batch_size, epoch, seed, k)`` and a resumed run sees exactly the same batches.
- ``rank``/``world_size`` yield rank ``rank``'s contiguous slice (``rank_slice``) of every
  global batch; unshuffled, only that slice is read.
- Multi-hot features (``ids/<feature>.values.npy`` + ``.offsets.npy``) become bags; a data set
  of one-hot features only yields ``SparseFeatures`` flagged ``one_hot``.
- Memory maps are opened lazily and dropped when pickled, so the source works in DataLoader
  workers (``as_iterable_dataset``) and forked processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.data.format import PartArrays, open_part, read_metadata
from dlrm.data.pipeline.raw import RawRows, parse_raw_file
from dlrm.data.pipeline.schema import Schema, load_schema
from dlrm.data.pipeline.vocabulary import Vocabulary
from dlrm.data.source import rank_slice
from dlrm.features import Batch, SparseFeatures

DEFAULT_BLOCK_ROWS = 1024


class MemmapDataSource:
    """A folder written by ``dlrm preprocess`` as a ``DataSource``.

    Args:
        path: the folder holding ``metadata.json``.
        block_rows: rows per shuffling block (contiguous reads); part of the batch order, so
            keep it fixed across a resumed run.
    """

    def __init__(self, path: str | Path, block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
        self.path = Path(path).resolve()
        self.metadata = read_metadata(self.path)
        self.num_dense: int = int(self.metadata["num_dense"])
        self.table_sizes: list[int] = [int(n) for n in self.metadata["table_sizes"]]
        self.block_rows = int(block_rows)
        if self.block_rows <= 0:
            raise ValueError(f"block_rows={block_rows}: must be positive")
        self._ranges = {name: [(r["part"], int(r["start"]), int(r["stop"])) for r in ranges]
                        for name, ranges in self.metadata["splits"].items()}
        self._parts: dict[str, PartArrays] = {}
        self._vocab: Vocabulary | None = None
        # Format 1 (Criteo only) has no feature list: 26 one-hot columns of sparse.npy.
        self.features: list[dict[str, Any]] | None = self.metadata.get("features")
        self.multi_hot = [k for k, f in enumerate(self.features or []) if f.get("multi_hot")]

    # ------------------------------------------------------------------ DataSource protocol
    def splits(self) -> list[str]:
        return list(self._ranges)

    def num_samples(self, split: str) -> int:
        return sum(stop - start for _, start, stop in self._split_ranges(split))

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "memmap", "path": str(self.path)}
        if self.block_rows != DEFAULT_BLOCK_ROWS:
            spec["block_rows"] = self.block_rows
        return spec

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        """Global batches per epoch of ``split``."""
        n = self.num_samples(split)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches ``start_batch, start_batch + 1, ...`` of one epoch of ``split``."""
        return self._batches(split, batch_size, range(start_batch, self.num_batches(
            split, batch_size, drop_last)), epoch, shuffle, seed, rank, world_size)

    def batch_rows(self, split: str, batch_size: int, k: int, epoch: int = 0,
                   shuffle: bool = False, seed: int = 0) -> np.ndarray:
        """Row indices (within the split) of global batch ``k``, in batch order."""
        plan = self._block_plan(split, epoch, shuffle, seed)
        return self._rows_of_batch(plan, split, batch_size, k, epoch, seed, shuffle)

    # ------------------------------------------------------------------ raw files (predict)
    @property
    def vocabulary(self) -> Vocabulary:
        """The id mapping the data was preprocessed with (``vocab/``)."""
        if self._vocab is None:
            self._vocab = Vocabulary.load(self.path / "vocab")
        return self._vocab

    @property
    def schema(self) -> Schema:
        """The schema the data set was made with (format 1: Criteo Kaggle's)."""
        if "schema" in self.metadata:
            return Schema.from_dict(self.metadata["schema"])
        return load_schema("criteo-kaggle")

    def encode_raw_file(self, path: str | Path, strict: bool = False,
                        has_label: bool | None = None) -> RawRows:
        """Parse a raw file (with or without the label column) exactly as preprocessing did
        and map it through this folder's vocabulary; ``RawRows.report`` counts skips."""
        return parse_raw_file(path, self.schema, self.vocabulary, strict=strict,
                              has_label=has_label)

    # ------------------------------------------------------------------ internals
    def _split_ranges(self, split: str) -> list[tuple[str, int, int]]:
        if split not in self._ranges:
            raise KeyError(f"split {split!r} not in {self.path} (has {sorted(self._ranges)})")
        return self._ranges[split]

    def _part(self, name: str) -> PartArrays:
        if name not in self._parts:
            self._parts[name] = open_part(self.path, name, self.features)
        return self._parts[name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_parts"] = {}  # memory maps are reopened in the worker
        return state

    def _read(self, split: str, start: int, stop: int) -> tuple[Any, ...]:
        """Rows [start, stop) of the split's virtual concatenation, as fresh arrays:
        ``(labels (b,), dense (b, D), single ids (F1, b), bags)``; ``bags[j]`` is
        ``(values, lengths)`` of the j-th multi-hot feature."""
        pieces = []
        offset = 0
        ranges = self._split_ranges(split)
        for part, lo, hi in ranges:
            n = hi - lo
            a, b = max(start - offset, 0), min(stop - offset, n)
            if a < b:
                pieces.append(self._part_rows(self._part(part), lo + a, lo + b))
            offset += n
            if offset >= stop:
                break
        if not pieces:  # an empty slice (e.g. a rank's share of a 1-row last batch)
            pieces.append(self._part_rows(self._part(ranges[0][0]), 0, 0))
        if len(pieces) == 1:
            return pieces[0]
        return _concat(pieces)

    def _part_rows(self, arrays: PartArrays, lo: int, hi: int) -> tuple[Any, ...]:
        bags = []
        for k in self.multi_hot:
            values, offsets = arrays.bags[k]
            edges = np.asarray(offsets[lo:hi + 1], dtype=np.int64)
            bags.append((np.array(values[edges[0]:edges[-1]]) if edges.size else
                         np.zeros(0, np.int32), np.diff(edges)))
        return (np.array(arrays.labels[lo:hi]), np.array(arrays.dense[lo:hi]),
                arrays.single_ids(lo, hi), bags)

    def _block_plan(self, split: str, epoch: int, shuffle: bool, seed: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Shuffled: (block order, start position of each ordered block in the sequence)."""
        if not shuffle:
            return None
        n = self.num_samples(split)
        blocks = -(-n // self.block_rows)
        order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(blocks)
        sizes = np.minimum(self.block_rows, n - order * self.block_rows)
        positions = np.concatenate([[0], np.cumsum(sizes)])
        return order, positions

    def _rows_of_batch(self, plan: tuple[np.ndarray, np.ndarray] | None, split: str,
                       batch_size: int, k: int, epoch: int, seed: int, shuffle: bool
                       ) -> np.ndarray:
        n = self.num_samples(split)
        lo, hi = k * batch_size, min((k + 1) * batch_size, n)
        if plan is None:
            return np.arange(lo, hi)
        order, positions = plan
        first = int(np.searchsorted(positions, lo, side="right")) - 1
        last = int(np.searchsorted(positions, hi, side="left"))
        rows = np.concatenate([np.arange(order[j] * self.block_rows,
                                         order[j] * self.block_rows + positions[j + 1]
                                         - positions[j]) for j in range(first, last)])
        rows = rows[lo - positions[first]: hi - positions[first]]
        return rows[np.random.default_rng([seed, epoch, k, 0xBA7C]).permutation(rows.size)]

    def _gather(self, split: str, rows: np.ndarray) -> tuple[Any, ...]:
        """Rows by index: read each contiguous run once, then put rows in the asked order."""
        if rows.size == 0:
            return self._read(split, 0, 0)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        runs = np.split(sorted_rows, breaks)
        pieces = [self._read(split, int(r[0]), int(r[-1]) + 1) for r in runs]
        labels, dense, ids, bags = pieces[0] if len(pieces) == 1 else _concat(pieces)
        # Row i of what was read (sorted order) goes to position order[i] of the batch, i.e.
        # position j takes row inverse[j]: a gather (np.take), ~6x faster than the scatter.
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        out_labels = np.take(labels, inverse)
        out_dense = np.take(dense, inverse, axis=0)
        out_ids = np.take(ids, inverse, axis=1)
        out_bags = []
        for values, lengths in bags:
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            picked = lengths[inverse]
            index = (np.repeat(starts[inverse] - np.cumsum(picked) + picked, picked)
                     + np.arange(int(picked.sum())))
            out_bags.append((values[index], picked))
        return out_labels, out_dense, out_ids, out_bags

    def _batches(self, split: str, batch_size: int, ks: range, epoch: int, shuffle: bool,
                 seed: int, rank: int, world_size: int) -> Iterator[Batch]:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: must be positive")
        rank_slice(batch_size, rank, world_size)  # validates rank / world_size
        n = self.num_samples(split)
        plan = self._block_plan(split, epoch, shuffle, seed)
        for k in ks:
            lo, hi = k * batch_size, min((k + 1) * batch_size, n)
            mine = rank_slice(hi - lo, rank, world_size)
            if plan is None:
                labels, dense, ids, bags = self._read(split, lo + mine.start, lo + mine.stop)
            else:
                rows = self._rows_of_batch(plan, split, batch_size, k, epoch, seed, True)
                labels, dense, ids, bags = self._gather(split, rows[mine])
            yield self._batch(labels, dense, ids, bags)

    def _batch(self, labels: np.ndarray, dense: np.ndarray, ids: np.ndarray,
               bags: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        if not bags:
            return make_batch(dense, ids.T, labels)
        n = labels.shape[0]
        values, lengths = [], []
        single = iter(range(ids.shape[0]))
        bag = iter(bags)
        for k in range(len(self.table_sizes)):  # feature-major, in the schema's order
            if k in self.multi_hot:
                v, count = next(bag)
                values.append(v.astype(np.int64))
                lengths.append(count.astype(np.int64))
            else:
                values.append(ids[next(single)].astype(np.int64))
                lengths.append(np.ones(n, dtype=np.int64))
        sparse = SparseFeatures.from_lengths(torch.from_numpy(np.concatenate(values)),
                                             torch.from_numpy(np.concatenate(lengths)),
                                             len(self.table_sizes))
        return Batch(torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)), sparse,
                     torch.from_numpy(np.asarray(labels, dtype=np.float32)))

    def as_iterable_dataset(self, split: str, batch_size: int, **kwargs: Any
                            ) -> torch.utils.data.IterableDataset:
        """A ``torch.utils.data.IterableDataset`` of whole batches for
        ``DataLoader(ds, batch_size=None, num_workers=W)``: worker ``w`` builds batches
        ``w, w + W, ...``, and the DataLoader's round-robin returns them in order."""
        return _BatchDataset(self, split, batch_size, kwargs)


def _concat(pieces: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    bags = [(np.concatenate([p[3][j][0] for p in pieces]),
             np.concatenate([p[3][j][1] for p in pieces])) for j in range(len(pieces[0][3]))]
    return (np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces], axis=1), bags)


def make_batch(dense: np.ndarray, ids: np.ndarray, labels: np.ndarray | None) -> Batch:
    """A ``Batch`` from numpy arrays: dense float32, one-hot sparse ids, float32 labels
    (zeros when there are none).

    The sparse part is exactly ``SparseFeatures.from_ids(ids)`` (feature-major values, offsets
    ``0..F*B``), built with numpy: torch's multi-threaded kernels for these small copies are
    slower than numpy, markedly so on a busy machine or inside DataLoader workers.
    """
    batch, num_features = ids.shape
    values = np.ascontiguousarray(ids.T, dtype=np.int64).reshape(-1)
    offsets = np.arange(batch * num_features + 1, dtype=np.int64)
    sparse = SparseFeatures(torch.from_numpy(values), torch.from_numpy(offsets), num_features,
                            one_hot=True)
    dense_t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    if labels is None:
        labels_t = torch.zeros(batch, dtype=torch.float32)
    else:
        labels_t = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    return Batch(dense_t, sparse, labels_t)


class _BatchDataset(torch.utils.data.IterableDataset):
    def __init__(self, source: MemmapDataSource, split: str, batch_size: int,
                 kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.source, self.split, self.batch_size, self.kwargs = source, split, batch_size, kwargs

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        kw = dict(self.kwargs)
        start = kw.pop("start_batch", 0)
        drop_last = kw.pop("drop_last", False)
        total = self.source.num_batches(self.split, self.batch_size, drop_last)
        ks = range(start + worker, total, workers)
        return self.source._batches(self.split, self.batch_size, ks,
                                    kw.pop("epoch", 0), kw.pop("shuffle", False),
                                    kw.pop("seed", 0), kw.pop("rank", 0),
                                    kw.pop("world_size", 1))
