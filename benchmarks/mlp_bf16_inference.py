"""Why bfloat16 inference runs oneDNN's fused linear (``ops.mlp._ONEDNN_LINEAR``).

Each `kaggle` DLRM layer alone at batch B, bf16, no gradients: ``addmm`` + ``relu_`` (what
runs with gradients) against oneDNN's linear with the bias and ReLU in its epilogue; then the
bf16 inference forward of both MLPs through autocast and ``MLP``, with the fused linear off
and on. Medians of --repeats calls, alternating rounds in one process; ratios > 1: faster.

    python benchmarks/mlp_bf16_inference.py [--batch-size 2048] [--repeats 30] [--rounds 5]
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

LAYERS = [(13, 512), (512, 256), (256, 64), (64, 16), (367, 512), (512, 256), (256, 1)]


def layer_times(batch: int, repeats: int) -> None:
    print("| layer | addmm + relu_ ms | fused oneDNN ms | speed-up | same bits |")
    print("|---|---|---|---|---|")
    for fan_in, fan_out in LAYERS:
        x = torch.randn(batch, fan_in).bfloat16()
        w = (torch.randn(fan_out, fan_in) / fan_in ** 0.5).bfloat16()
        b = torch.randn(fan_out).bfloat16()
        def plain_layer(x=x, w=w, b=b) -> torch.Tensor:
            return torch.addmm(b, x, w.t()).relu_()

        def fused_layer(x=x, w=w, b=b) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")

        with torch.no_grad():
            plain = timing.median_ms(plain_layer, repeats, 3)
            fused = timing.median_ms(fused_layer, repeats, 3)
            same = torch.equal(plain_layer(), fused_layer())
        print(f"| {fan_in}->{fan_out} | {plain:.3f} | {fused:.3f} | {plain / fused:.2f}x | "
              f"{same} |", flush=True)


def forward_times(batch: int, repeats: int, rounds: int) -> None:
    torch.manual_seed(0)
    bottom, top = MLP("13-512-256-64-16"), MLP("367-512-256-1", final_activation=False)
    dense, interactions = torch.randn(batch, 13), torch.randn(batch, 367)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            bottom(dense)
            top(interactions)

    available = mlp_op._ONEDNN_LINEAR
    results: dict[str, list[float]] = {"addmm + relu_": [], "fused oneDNN linear": []}
    try:
        for _ in range(rounds):
            for name, fused in (("addmm + relu_", False), ("fused oneDNN linear", True)):
                mlp_op._ONEDNN_LINEAR = fused
                results[name].append(timing.median_ms(forward, repeats, 3))
    finally:
        mlp_op._ONEDNN_LINEAR = available
    base = statistics.median(results["addmm + relu_"])
    print("\n| both MLPs, bf16 inference forward | ms (median of rounds) | speed-up |")
    print("|---|---|---|")
    for name, values in results.items():
        ms = statistics.median(values)
        print(f"| {name} | {ms:.3f} | {base / ms:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tune_cpu_allocator()
    machine = machine_description(torch.device("cpu"))
    print(f"{machine['cpu_model']}, {machine['threads']} threads, torch {torch.__version__}, "
          f"{platform.python_version()}; B={args.batch_size}, bfloat16, no gradients\n")
    if not mlp_op._ONEDNN_LINEAR:
        print("this torch has no oneDNN linear: nothing to compare")
        return
    layer_times(args.batch_size, args.repeats)
    forward_times(args.batch_size, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
