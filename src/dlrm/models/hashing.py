"""Lookup-time hashing: ids folded into at most ``max_ind_range`` rows per table.

Math (as the reference DLRM's ``--max-ind-range``): table f keeps ``min(n_f, M)`` rows and id i
looks up row ``i mod M``. Tables with at most M rows are unchanged (their ids are already
< M). This happens inside the model at every lookup, on the ids the data gives; it is not a
preprocessing step, so the same data set serves models with different M.
"""

from __future__ import annotations

from dlrm.features import SparseFeatures


def hash_ids(sparse: SparseFeatures, max_ind_range: int) -> SparseFeatures:
    """``sparse`` with every id replaced by ``id mod max_ind_range`` (ids must be >= 0).

    Example:
        >>> hash_ids(SparseFeatures.from_ids(torch.tensor([[7, 2]])), 5).values.tolist()
        [2, 2]
    """
    if max_ind_range <= 0:
        raise ValueError(f"max_ind_range = {max_ind_range}: must be positive")
    return SparseFeatures(sparse.values.remainder(max_ind_range), sparse.offsets,
                          sparse.num_features, sparse.one_hot)
