"""Communication volume of one hybrid-parallel training step, and a time projection.

Notation: W ranks, global batch B (slice b_r = |rank_slice(B, r, W)|), D embedding width,
S_r shards on rank r (a table-wise table is 1 shard, a row-wise table W shards), S = sum S_r,
L mean ids per bag (multi-hotness), 4-byte fp32 values (2 for fp16/bf16 communication).

All-to-all (pooled vectors forward, their gradients backward), bytes rank r sends:

    forward  = S_r * (B - b_r) * D * 4        its shards' vectors for every other slice
    backward = b_r * (S - S_r) * D * 4        gradients of its slice for every other shard
    total over ranks, per step = 2 * 4 * D * S * B * (W - 1) / W    (even slices)

Pooling happens before the all-to-all, so L does not enter: it scales the lookup work and,
in designs that ship ids to the table owners (TorchRec's input dist), an extra
``B * F * L * (W-1)/W * 4`` bytes (int32 ids) per step. Here every rank reads the ids of the
global batch itself, so no ids travel.

All-reduce (every replicated parameter's gradient — MLPs, interactions, cross networks,
projections — and replicated tables as dense rows, in one buffer of ``P_dense + R * D`` fp32
values, plus the 1-value loss before the backward): a ring all-reduce sends ``2 (W-1)/W``
times the buffer per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlrm.config import DLRMConfig
from dlrm.distributed.data_parallel import replicated_parameters
from dlrm.distributed.planner import ShardingPlan
from dlrm.features import slice_length
from dlrm.models import build_model


def slice_sizes(global_batch: int, world_size: int) -> list[int]:
    return [slice_length(global_batch, r, world_size) for r in range(world_size)]


def all_to_all_bytes_per_rank(plan: ShardingPlan, global_batch: int,
                              bytes_per_value: int = 4) -> list[int]:
    """Bytes each rank sends to the others in one step (forward + backward all-to-all)."""
    world, dim = plan.world_size, plan.embedding_dim
    if world == 1:
        return [0]
    shards = [len(plan.rank_shards(r)) for r in range(world)]
    total = sum(shards)
    if total == 0:
        return [0] * world
    sizes = slice_sizes(global_batch, world)
    return [(shards[r] * (global_batch - sizes[r]) + sizes[r] * (total - shards[r]))
            * dim * bytes_per_value for r in range(world)]


def mlp_parameters(config: DLRMConfig) -> int:
    """Every dense (non-embedding) parameter of a DLRM: its MLPs (and cross network), counted
    on a build on the meta device."""
    with torch.device("meta"):
        model = build_model("dlrm", config.to_dict())
    return sum(p.numel() for p in model.parameters() if not getattr(p, "sparse_rows", False))


def mlp_flops_per_sample(config: DLRMConfig) -> float:
    """Training FLOPs per sample in the MLPs and the dot interaction (fwd + 2x bwd)."""
    macs = mlp_parameters(config)
    n = config.num_sparse + 1
    macs += n * n * config.embedding_dim  # Gram matrix (B, F+1, F+1)
    return 2.0 * 3.0 * macs


def all_reduce_buffer_bytes(model: nn.Module) -> int:
    """Bytes all-reduced in one step of a sharded model: every replicated parameter's gradient
    (replicated tables whole) and the loss, in fp32."""
    return 4 * (sum(p.numel() for p in replicated_parameters(model)) + 1)


@dataclass
class Interconnect:
    """Per-GPU bandwidths, bytes/s per direction."""

    name: str
    intra_node: float  # e.g. NVLink 4 on H100 SXM: ~450 GB/s per direction per GPU
    inter_node: float  # e.g. InfiniBand NDR 400 Gb/s per GPU: 50 GB/s
    gpus_per_node: int = 8


H100_NVLINK_NDR = Interconnect("H100 SXM, NVLink 4 (450 GB/s) + IB NDR (50 GB/s) per GPU",
                               450e9, 50e9, 8)


def project_step(config: DLRMConfig, world_size: int, local_batch: int,
                 net: Interconnect = H100_NVLINK_NDR, achieved_flops: float = 200e12,
                 comm_bytes_per_value: int = 4) -> dict[str, float]:
    """Seconds per step for compute, all-to-all and all-reduce on ``world_size`` GPUs with
    ``local_batch`` samples each (weak scaling), every table table-wise (S = F), no overlap.

    The all-to-all of one GPU sends ``(W-1)/W`` of ``2 * b * F * D`` values; the share going
    to GPUs on other nodes, ``(W - g)/(W - 1)``, crosses InfiniBand, the rest NVLink; the
    slower of the two sets the time. The ring all-reduce crosses nodes when W > g.
    """
    world, b = world_size, local_batch
    dim, tables = config.embedding_dim, config.num_sparse
    a2a = 2 * b * tables * dim * comm_bytes_per_value * (world - 1) / world
    g = net.gpus_per_node
    off_node = max(0, world - g) / max(1, world - 1)
    a2a_time = max(a2a * (1 - off_node) / net.intra_node, a2a * off_node / net.inter_node)
    ring = 2 * (world - 1) / world * 4 * (mlp_parameters(config) + 1)
    ar_time = ring / (net.inter_node if world > g else net.intra_node)
    compute = mlp_flops_per_sample(config) * b / achieved_flops
    return {"world_size": world, "local_batch": b, "global_batch": b * world,
            "compute_s": compute, "all_to_all_s": a2a_time, "all_reduce_s": ar_time,
            "all_to_all_bytes_per_gpu": a2a, "all_reduce_bytes_per_gpu": ring}
