"""PyTorch operators of the project: ``torch.ops.dlrm.*``.

Importing this package registers, in the ``dlrm`` namespace (``torch.library``):

- ``dlrm::dot_interaction`` and its backward (``dlrm.ops.interaction``);
- ``dlrm::embedding_bag``, the fused multi-table lookup whose backward updates the looked-up
  rows (or returns them as a sparse gradient), and the row updates ``dlrm::sgd_rows_`` and
  ``dlrm::rowwise_adagrad_rows_`` (``dlrm.ops.embedding``);
- ``dlrm::mlp``, a Linear/ReLU stack with one-pass epilogues, and its backward
  (``dlrm.ops.mlp``);
- ``dlrm::quantize_u8``, the uint8 codes of an int8 layer's input (``dlrm.ops.quantize``).

Each has a CPU kernel that runs the native code of ``dlrm.ops.native`` where it applies
(float32/bfloat16 CPU tensors) and a PyTorch implementation for every other device and dtype,
a fake (meta) implementation for tracing, and an autograd formula. So models call the
operators and never ask whether native code is there: ``torch.compile`` and ``torch.export``
keep them in the graph as single nodes, and the profiler shows them by name.
"""

import torch

from dlrm.ops import embedding, interaction, mlp, quantize
from dlrm.ops.embedding import embedding_bag, global_ids, rowwise_adagrad_rows_, sgd_rows_
from dlrm.ops.interaction import dot_interaction, num_pairs
from dlrm.ops.mlp import mlp as mlp_forward
from dlrm.ops.native import KernelError, active_on, available, status, use_native
from dlrm.ops.quantize import quantize_u8


def export_decompositions() -> dict:
    """``{operator: PyTorch implementation}`` for ``ExportedProgram.run_decompositions``:
    serving artifacts (``dlrm export``) hold plain ATen ops, so ONNX and a ``.pt2`` loaded
    without this package both run them. The lookup is the loop-free form
    (``embedding._lookup_export``): gather, then one scatter-add per batch."""
    return {torch.ops.dlrm.dot_interaction.default: interaction._forward_functional,
            torch.ops.dlrm.embedding_bag.default: embedding._lookup_export,
            torch.ops.dlrm.mlp.default: mlp._forward_functional}


__all__ = ["export_decompositions", "embedding", "interaction", "mlp", "embedding_bag",
           "global_ids", "sgd_rows_", "rowwise_adagrad_rows_", "dot_interaction", "num_pairs",
           "mlp_forward", "quantize", "quantize_u8", "KernelError", "active_on", "available",
           "status", "use_native"]
