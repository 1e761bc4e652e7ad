"""FLOPs and compulsory bytes of each DLRM component, and how close each gets to its bound.

Counts are per step of batch B (F tables, dimension D, bag sizes L_f, N = B * sum_f L_f ids),
with E the bytes of an activation in the compute precision (4 fp32/tf32, 2 bf16/fp16), W = 4
(fp32 weights, embedding rows, parameter gradients) and 8 bytes per int64 id. Bytes are the
compulsory traffic (inputs read once, outputs written once), not what a kernel really moves,
so the achieved fraction is an upper-bound view of efficiency.

Linear layer i -> o:
    fwd  FLOPs 2Bio + Bo                 bytes E(Bi + io + o + Bo)
    bwd  FLOPs 2Bio + Bo [+ 2Bio]        bytes E(Bo + Bi + io) + W(io + o) [+ E Bi]
         (bracketed: the input gradient, skipped for the bottom MLP's first layer)
Embedding lookup (fwd)   FLOPs D(N - BF)        bytes W N D + 8N + W B F D   (random rows)
Embedding backward with the fused SGD row update (the update runs inside the lookup's backward):
                         FLOPs 2ND   bytes G + 3 W N D + 8N      (random rows), where G, the
                         pooled gradients laid out per id, is one-hot 2 W B F D, multi-hot
                         W B F D + W N D + 8N
Dot interaction, n = F+1 vectors, P pairs:
    fwd  FLOPs 2Bn^2D                    bytes E(BnD + B(D+P))
    bwd  FLOPs 2Bn^2D (one bmm S T, S the symmetric pair gradients)
                                         bytes E(B(D+P) + Bn^2 + 2BnD)
Cat interaction fwd/bwd  FLOPs 0         bytes 2E BnD
Loss (BCE with logits)   fwd FLOPs 5B bytes 8B;  bwd FLOPs 4B bytes 12B   (fp32)
Dense optimizer (SGD)    FLOPs 2P                bytes 3 W P   (P dense parameters)

A component's ideal time is max(FLOPs / peak, bytes / bandwidth), with the peak matmul rate of
the precision in use and the streaming bandwidth (random-row-gather bandwidth for the embedding
lookup and update). Its bound is the larger term; its achieved fraction = ideal / measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlrm.ops import num_pairs

ID_BYTES = 8
WEIGHT_BYTES = 4


@dataclass
class Cost:
    flops: float
    bytes: float
    memory: str  # "stream" or "gather": which bandwidth bounds its traffic


def activation_bytes(precision: str) -> int:
    return {"bf16": 2, "fp16": 2, "int8": 1}.get(precision, 4)


def _mlp_costs(widths: list[int], batch: int, e: int, input_grad_first: bool
               ) -> tuple[Cost, Cost]:
    fwd_f = fwd_b = bwd_f = bwd_b = 0.0
    for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        fwd_f += 2 * batch * i * o + batch * o
        fwd_b += e * (batch * i + i * o + o + batch * o)
        bwd_f += 2 * batch * i * o + batch * o
        bwd_b += e * (batch * o + batch * i + i * o) + WEIGHT_BYTES * (i * o + o)
        if k > 0 or input_grad_first:
            bwd_f += 2 * batch * i * o
            bwd_b += e * batch * i
    return Cost(fwd_f, fwd_b, "stream"), Cost(bwd_f, bwd_b, "stream")


def component_costs(bottom_mlp: list[int], top_mlp_with_input: list[int], embedding_dim: int,
                    bag_sizes: list[int], batch_size: int, precision: str = "fp32",
                    interaction: str = "dot", interaction_self: bool = False,
                    mode: str = "train", dense_params: int = 0, cross_layers: int = 3,
                    cross_rank: int = 512) -> dict[str, Cost]:
    """FLOPs and bytes per component for one step (see the module doc for the formulas).

    ``top_mlp_with_input`` includes the interaction's output width first.
    """
    b, d, f = batch_size, embedding_dim, len(bag_sizes)
    e, w = activation_bytes(precision), WEIGHT_BYTES
    n_ids = b * sum(bag_sizes)
    one_hot = all(s == 1 for s in bag_sizes)
    bottom_fwd, bottom_bwd = _mlp_costs(bottom_mlp, b, e, input_grad_first=False)
    top_fwd, top_bwd = _mlp_costs(top_mlp_with_input, b, e, input_grad_first=True)
    n = f + 1
    if interaction == "dot":
        p = num_pairs(f, interaction_self)
        inter_fwd = Cost(2 * b * n * n * d, e * (b * n * d + b * (d + p)), "stream")
        inter_bwd = Cost(2 * b * n * n * d, e * (b * (d + p) + b * n * n + 2 * b * n * d),
                         "stream")
    elif interaction == "cross":
        # Per low-rank layer x_{l+1} = x_0 * (U (V^T x_l) + b) + x_l, width k = n d, rank r:
        # two matmuls (2 B k r FLOPs each) and three element-wise ops (3 B k); backward twice
        # the matmuls (input and weight gradients) and ~5 B k element-wise. Weights read once.
        k, r, layers = n * d, cross_rank, cross_layers
        inter_fwd = Cost(layers * (4 * b * k * r + 3 * b * k),
                         e * layers * (4 * b * k) + w * layers * 2 * k * r, "stream")
        inter_bwd = Cost(layers * (8 * b * k * r + 5 * b * k),
                         e * layers * (6 * b * k) + w * layers * 4 * k * r, "stream")
    else:
        inter_fwd = Cost(0, 2 * e * b * n * d, "stream")
        inter_bwd = Cost(0, 2 * e * b * n * d, "stream")
    costs = {
        "bottom_mlp_fwd": bottom_fwd,
        "embedding_fwd": Cost(d * (n_ids - b * f), w * n_ids * d + ID_BYTES * n_ids
                              + w * b * f * d, "gather"),
        "interaction_fwd": inter_fwd,
        "top_mlp_fwd": top_fwd,
    }
    if mode == "infer":
        return costs
    emb_bwd_bytes = 2 * w * b * f * d if one_hot \
        else w * b * f * d + w * n_ids * d + ID_BYTES * n_ids
    costs.update({
        "loss_fwd": Cost(5 * b, 8 * b, "stream"),
        "loss_bwd": Cost(4 * b, 12 * b, "stream"),
        "top_mlp_bwd": top_bwd,
        "interaction_bwd": inter_bwd,
        "embedding_bwd": Cost(2 * n_ids * d,
                              emb_bwd_bytes + 3 * w * n_ids * d + ID_BYTES * n_ids, "gather"),
        "bottom_mlp_bwd": bottom_bwd,
        "dense_optimizer": Cost(2 * dense_params, 3 * w * dense_params, "stream"),
    })
    return costs


def peak_gflops(ceilings: dict[str, float], precision: str) -> float:
    key = f"matmul_{precision}_gflops"
    return ceilings.get(key, ceilings["matmul_fp32_gflops"])


def analyze(costs: dict[str, Cost], ms: dict[str, float], ceilings: dict[str, float],
            precision: str) -> dict[str, dict[str, float | str]]:
    """Per component: FLOPs, bytes, intensity, achieved GFLOP/s and GB/s, bound, fraction."""
    peak = peak_gflops(ceilings, precision) * 1e9
    out: dict[str, dict[str, float | str]] = {}
    for name, cost in costs.items():
        if name not in ms:
            continue
        seconds = ms[name] / 1e3
        bandwidth = ceilings["gather_gbps" if cost.memory == "gather" else "stream_gbps"] * 1e9
        compute_s, memory_s = cost.flops / peak, cost.bytes / bandwidth
        ideal = max(compute_s, memory_s)
        out[name] = {
            "flops": cost.flops, "bytes": cost.bytes,
            "intensity": cost.flops / cost.bytes if cost.bytes else 0.0,
            "achieved_gflops": cost.flops / seconds / 1e9 if seconds > 0 else 0.0,
            "achieved_gbps": cost.bytes / seconds / 1e9 if seconds > 0 else 0.0,
            "bound": "compute" if compute_s >= memory_s else f"memory ({cost.memory})",
            "ideal_ms": ideal * 1e3,
            "fraction_of_bound": ideal / seconds if seconds > 0 else 0.0,
        }
    return out
