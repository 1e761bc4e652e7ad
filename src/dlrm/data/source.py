"""What every data source offers the training loop, the benchmarks and the CLI.

A data source is any object with these attributes and methods (a ``typing.Protocol``, so
synthetic generators and memory-mapped Criteo folders need no common base class):

- ``num_dense``: int, dense features per sample; ``table_sizes``: list[int], rows per table.
- ``splits()``: the split names it has, e.g. ``["train", "val", "test"]``.
- ``num_samples(split)``: rows in a split.
- ``batches(split, batch_size, start_batch=0, epoch=0, shuffle=False, seed=0, drop_last=False,
  rank=0, world_size=1)``: an iterator of ``Batch``; batch ``k`` of an epoch is a pure function
  of ``(split, batch_size, epoch, seed, k)``, so a resumed run starting at ``start_batch``
  sees exactly the batches an uninterrupted run saw. With ``world_size > 1`` each yielded
  batch is rank ``rank``'s contiguous slice of the global batch.
- ``spec()``: a JSON-able dict from which ``dlrm.data.open_data`` rebuilds the same source
  (stored in checkpoints so ``dlrm eval`` evaluates on the same data).
- optionally ``optimal_metrics(split)``: Bayes-optimal AUC / log loss where the true click
  probabilities are known (planted synthetic data), else absent or None.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from dlrm.features import Batch, rank_slice

__all__ = ["DataSource", "dataset_name", "rank_slice"]


@runtime_checkable
class DataSource(Protocol):
    num_dense: int
    table_sizes: list[int]

    def splits(self) -> list[str]: ...

    def num_samples(self, split: str) -> int: ...

    def batches(self, split: str, batch_size: int, start_batch: int = 0, epoch: int = 0,
                shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> Iterator[Batch]: ...

    def spec(self) -> dict[str, Any]: ...


def dataset_name(data: Any) -> str | None:
    """The data set ``data`` holds, as its preprocessed folder's metadata names it: ``dataset``,
    the preprocessing schema's name (``criteo-tsv``, ``avazu``, ``movielens-100k``; ``name`` in
    older ``dlrm-table-v1`` folders); None for data without metadata (synthetic data, a
    wrapper). Tuned recipes are chosen by it (``dlrm.training.recipes``)."""
    metadata = getattr(data, "metadata", None)
    if not isinstance(metadata, dict):
        return None
    name = metadata.get("dataset") or metadata.get("name")
    return str(name) if name else None
