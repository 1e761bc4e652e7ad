"""The one input format every part of the project speaks.

``SparseFeatures`` follows TorchRec's KeyedJaggedTensor layout without depending on it:
``values`` (N,) int64 ids and ``offsets`` (F*B + 1,) int64, *feature-major*: the bag of
feature f for sample b is ``values[offsets[f*B + b] : offsets[f*B + b + 1]]``. One-hot data is
the case where every bag holds one id; ``from_ids`` builds it from a (B, F) id matrix.
``Batch`` bundles dense features (B, num_dense) float32, sparse features and labels (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseFeatures:
    """Bags of categorical ids for F features and B samples, feature-major.

    Attributes:
        values: (N,) int64 ids, local to each feature's table (0 <= id < table size).
        offsets: (F*B + 1,) int64, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == N``.
        num_features: F.
        one_hot: True when every bag holds exactly one id (enables a faster lookup).

    Example:
        >>> ids = torch.tensor([[1, 7], [2, 3]])          # B=2 samples, F=2 features
        >>> sf = SparseFeatures.from_ids(ids)
        >>> sf.values.tolist(), sf.offsets.tolist()
        ([1, 2, 7, 3], [0, 1, 2, 3, 4])
    """

    values: torch.Tensor
    offsets: torch.Tensor
    num_features: int
    one_hot: bool = False

    @property
    def batch_size(self) -> int:
        return (self.offsets.numel() - 1) // self.num_features

    @property
    def lengths(self) -> torch.Tensor:
        """(F*B,) bag sizes."""
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_ids(cls, ids: torch.Tensor) -> SparseFeatures:
        """One id per bag from a (B, F) integer matrix."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, F), got shape {tuple(ids.shape)}")
        batch, num_features = ids.shape
        values = ids.t().reshape(-1).to(torch.int64)
        offsets = torch.arange(batch * num_features + 1, dtype=torch.int64, device=ids.device)
        return cls(values, offsets, num_features, one_hot=True)

    @classmethod
    def from_lengths(cls, values: torch.Tensor, lengths: torch.Tensor,
                     num_features: int) -> SparseFeatures:
        """From flat ids and (F*B,) bag sizes, feature-major."""
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(lengths.to(torch.int64), 0, out=offsets[1:])
        return cls(values.to(torch.int64), offsets, num_features,
                   one_hot=bool((lengths == 1).all()))

    def to(self, device: torch.device | str) -> SparseFeatures:
        return SparseFeatures(self.values.to(device, non_blocking=True),
                              self.offsets.to(device, non_blocking=True),
                              self.num_features, self.one_hot)

    def pin_memory(self) -> SparseFeatures:
        """A copy in page-locked host memory (needs CUDA): ``to(cuda)`` is then a DMA that
        does not wait for the host."""
        return SparseFeatures(self.values.pin_memory(), self.offsets.pin_memory(),
                              self.num_features, self.one_hot)

    def expect_features(self, num_tables: int) -> None:
        """Raise ``ValueError`` unless there is one feature per table of the model."""
        if self.num_features != num_tables:
            raise ValueError(f"got {self.num_features} sparse features, "
                             f"the model has {num_tables} tables")

    def validate(self, table_sizes: list[int] | None = None) -> None:
        """Raise ``ValueError`` naming the problem: layout, or an id outside its table."""
        f = self.num_features
        if self.offsets.dim() != 1 or (self.offsets.numel() - 1) % f != 0:
            raise ValueError(
                f"offsets has {self.offsets.numel()} entries; expected F*B+1 with F={f}")
        if self.offsets.numel() and int(self.offsets[0]) != 0:
            raise ValueError("offsets[0] must be 0")
        if int(self.offsets[-1]) != self.values.numel():
            raise ValueError(f"offsets[-1] = {int(self.offsets[-1])} but there are "
                             f"{self.values.numel()} values")
        if bool((self.lengths < 0).any()):
            raise ValueError("offsets must be non-decreasing")
        if table_sizes is None:
            return
        if len(table_sizes) != f:
            raise ValueError(f"{f} sparse features but the model has {len(table_sizes)} tables")
        batch = self.batch_size
        starts = self.offsets[:: batch][: f + 1]
        for k in range(f):
            ids = self.values[int(starts[k]): int(starts[k + 1])]
            if ids.numel() == 0:
                continue
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= table_sizes[k]:
                bad = lo if lo < 0 else hi
                raise ValueError(f"sparse feature {k}: id {bad} is out of range for its table "
                                 f"of {table_sizes[k]} rows (valid ids 0..{table_sizes[k] - 1})")


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of a global batch; the first ``B % W`` ranks get one more.

    Data-parallel training splits every global batch this way: rank r computes the dense part
    for samples ``rank_slice(B, r, W)`` while its embedding shards serve all B samples.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def slice_length(batch_size: int, rank: int, world_size: int) -> int:
    """b_r, the number of samples in ``rank_slice(batch_size, rank, world_size)``."""
    base, extra = divmod(batch_size, world_size)
    return base + (1 if rank < extra else 0)


@dataclass
class Batch:
    """One minibatch: dense (B, num_dense) float32, sparse features, labels (B,) float32."""

    dense: torch.Tensor
    sparse: SparseFeatures
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.dense.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.dense.to(device, non_blocking=True), self.sparse.to(device),
                     self.labels.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """A copy in page-locked host memory (needs CUDA; see ``SparseFeatures.pin_memory``)."""
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(),
                     self.labels.pin_memory())
