"""Training: optimizers (dense + sparse rows), the loop, metrics, checkpoints."""

from dlrm.training.optim import HybridOptimizer, build_optimizer

__all__ = ["build_optimizer", "HybridOptimizer"]
