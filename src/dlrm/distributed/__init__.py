"""Hybrid-parallel training on torch.distributed: sharded embeddings, data-parallel MLPs.

- ``planner``: where each table lives (table-wise, row-wise, replicated).
- ``sharded``: ``DistributedDLRM`` with the autograd-aware all-to-all.
- ``launch``: process-group setup from torchrun's environment, timeouts, watchdog, teardown.
- ``train``: the distributed training step and evaluation; ``train_distributed`` runs the
  shared loop of ``dlrm.training.loop`` with a ``HybridParallelStrategy``.
- ``checkpoint``: sharded checkpoints that load into any number of ranks.

See docs/distributed.md.
"""

from dlrm.distributed.planner import Shard, ShardingPlan, plan_tables

__all__ = ["Shard", "ShardingPlan", "plan_tables"]
