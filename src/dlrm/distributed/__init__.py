"""Hybrid-parallel training on torch.distributed: sharded embeddings, data-parallel MLPs.

- ``planner``: where each table lives (table-wise, row-wise, replicated).
- ``sharding``: ``ShardedEmbeddingBag`` (``FusedEmbeddingBag``'s contract, all-to-all inside)
  and ``shard_model``, which swaps it into any model kind.
- ``data_parallel``: the gradient all-reduce and score gathers of everything else.
- ``launch``: process-group setup from torchrun's environment, timeouts, watchdog, teardown.
- ``train``: the distributed training step and evaluation; ``train_distributed`` runs the
  shared loop of ``dlrm.training.loop`` with a ``HybridParallelStrategy``.
- ``checkpoint``: sharded checkpoints of any model that load into any number of ranks.

See docs/distributed.md.
"""

from dlrm.distributed.planner import Shard, ShardingPlan, plan_tables
from dlrm.distributed.sharding import ShardedEmbeddingBag, shard_model

__all__ = ["Shard", "ShardingPlan", "plan_tables", "ShardedEmbeddingBag", "shard_model"]
