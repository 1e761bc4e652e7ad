"""Why ``dlrm::mlp``'s backward pads the weight to 16-column multiples (``ops.mlp.PAD_TO``).

Part 1: the three float32 GEMMs of a Linear layer K -> 512 at batch B (forward ``X W^T``,
weight gradient ``dY^T X``, input gradient ``dY W``) for widths K around multiples of 16,
GFLOP/s, median of --repeats. The `kaggle` top MLP's first layer has K = 367 (16 + 351 pairs).

Part 2: the `kaggle` top + bottom MLP forward + backward through the operator, padding on
(the default: the input gradient's GEMM on the zero-padded weight) and off, alternating
rounds in one process; ratio > 1 means padding is faster.

    python benchmarks/mlp_padding.py [--batch-size 2048] [--repeats 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from dlrm.allocator import tune_cpu_allocator
from dlrm.bench import timing
from dlrm.bench.ceilings import machine_description
from dlrm.models.mlp import MLP
from dlrm.ops import mlp as mlp_op


def median_ms(fn, repeats: int) -> float:
    return timing.median_ms(fn, repeats, warmup=3)


def gemm_rates(batch: int, width: int, fan_out: int, repeats: int) -> tuple[float, ...]:
    x, w, g = torch.randn(batch, width), torch.randn(fan_out, width), torch.randn(batch, fan_out)
    flops = 2 * batch * width * fan_out / 1e6  # per ms -> GFLOP/s
    return tuple(flops / median_ms(fn, repeats) for fn in (
        lambda: torch.mm(x, w.t()), lambda: torch.mm(g.t(), x), lambda: torch.mm(g, w)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tune_cpu_allocator()
    torch.manual_seed(0)
    machine = machine_description(torch.device("cpu"))
    print(f"{machine['cpu_model']}, {machine['threads']} threads, torch {torch.__version__}, "
          f"{platform.python_version()}; B={args.batch_size}, float32")
    print(f"\n{'K -> 512':>9} {'fwd':>6} {'dW':>6} {'dX':>6}   GFLOP/s")
    for width in (97, 104, 112, 365, 366, 367, 368, 372, 376, 384, 479, 480):
        fwd, dw, dx = gemm_rates(args.batch_size, width, 512, args.repeats)
        print(f"{width:>9} {fwd:>6.0f} {dw:>6.0f} {dx:>6.0f}")

    top, bottom = MLP("367-512-256-1", final_activation=False), MLP("13-512-256-64-16")
    pooled = torch.randn(args.batch_size, 367, requires_grad=True)
    dense = torch.randn(args.batch_size, 13)

    def step() -> None:
        top(pooled).sum().backward()
        bottom(dense).sum().backward()

    padded_min = mlp_op.PAD_MIN_WIDTH
    times: dict[str, list[float]] = {"padded": [], "unpadded": []}
    for _ in range(args.rounds):
        for name, min_width in (("padded", padded_min), ("unpadded", 1 << 30)):
            mlp_op.PAD_MIN_WIDTH = min_width
            times[name].append(median_ms(step, args.repeats))
    mlp_op.PAD_MIN_WIDTH = padded_min
    padded, unpadded = (statistics.median(times[n]) for n in ("padded", "unpadded"))
    print(f"\nkaggle top + bottom MLP forward + backward: unpadded {unpadded:.2f} ms, padded "
          f"{padded:.2f} ms, {unpadded / padded:.3f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
