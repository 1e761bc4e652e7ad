"""What the ``dlrm::mlp`` operator (``dlrm.ops.mlp``: one node for the MLP, native epilogues)
saves over the Linear/ReLU modules, piece by piece.

For every Linear layer of the ``kaggle`` preset's MLPs at batch B, times in the same run:

- forward epilogue: ``addmm`` (which first copies the broadcast bias into its output) +
  ``relu_``, against ``mm`` + the native one-pass bias + ReLU;
- backward epilogue: ``threshold_backward`` + a bias-gradient ``sum``, against the native
  one-pass mask + column sums (in place);
- weight gradient: ``grad.T @ inputs`` against ``(inputs.T @ grad).T`` plus the copy that
  makes it contiguous again (what AccumulateGrad does);

then both MLPs' whole forward + backward, plain modules against the fused function (``dlrm``
uses it for float32 only: with --precision bf16 this shows why). Medians of --repeats, each
the mean of --calls calls; ratios > 1 mean the fused path is faster.

    python benchmarks/mlp_fusion.py [--batch-size 2048] [--precision fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dlrm import ops
from dlrm.allocator import tune_cpu_allocator
from dlrm.config import preset
from dlrm.models.dlrm import DLRM
from dlrm.ops import native


def seconds(fn, calls: int, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls)
    return statistics.median(out)


def layer_row(linear: torch.nn.Linear, batch: int, dtype: torch.dtype, time_it) -> str:
    """One table row: the three epilogue/layout comparisons for one Linear layer."""
    fan_out, fan_in = linear.weight.shape
    x = torch.randn(batch, fan_in).to(dtype)
    weight = linear.weight.detach().to(dtype)
    bias = linear.bias.detach()
    grad = torch.randn(batch, fan_out).to(dtype)
    act = torch.randn(batch, fan_out).relu_().to(dtype)
    own = grad.clone()
    fwd_plain = time_it(lambda: torch.addmm(bias.to(dtype), x, weight.t()).relu_())
    fwd_fused = time_it(lambda: native.bias_act_(torch.mm(x, weight.t()), bias, True))
    bwd_plain = time_it(lambda: torch.ops.aten.threshold_backward(grad, act, 0).sum(0))
    bwd_fused = time_it(lambda: native.act_bias_backward(own, act, True, in_place=True))
    dw_plain = time_it(lambda: grad.t().mm(x))
    dw_alt = time_it(lambda: x.t().mm(grad).t().contiguous())
    return (f"{fan_in:>4}->{fan_out:<5} | {fwd_plain:9.0f} {fwd_fused:7.0f} "
            f"({fwd_plain / fwd_fused:.2f}x) | {bwd_plain:9.0f} {bwd_fused:7.0f} "
            f"({bwd_plain / bwd_fused:.2f}x) | {dw_plain:9.0f} {dw_alt:9.0f} "
            f"({dw_plain / dw_alt:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit("native kernels unavailable (no C++ compiler): nothing to compare")
    tune_cpu_allocator()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = DLRM(preset("kaggle", rows_cap=1000)).to(dtype)
    batch = args.batch_size

    def time_it(fn):
        return seconds(fn, args.calls, args.repeats) * 1e6

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={batch}, "
          f"{args.precision}; microseconds per call (ratio: plain / fused)")
    print(f"{'layer':>10} | {'fwd plain':>9} {'fused':>7} | {'bwd plain':>9} {'fused':>7} | "
          f"{'dW g.T@x':>9} {'(x.T@g).T':>9}")
    for mlp in (model.bottom_mlp, model.top_mlp):
        for linear in mlp.linears():
            print(layer_row(linear, batch, dtype, time_it))

    # Both MLPs, forward + backward: the modules against the fused function, in `dtype`
    # throughout (bf16 parameters stand in for autocast's bf16 weight copies).
    bottom, top = model.bottom_mlp, model.top_mlp
    dense = torch.randn(batch, bottom.widths[0]).to(dtype)
    top_in = torch.randn(batch, top.widths[0]).to(dtype).requires_grad_(True)

    def both_mlps(fused: bool) -> None:
        if fused:
            x = ops.mlp_forward(dense, [m.weight for m in bottom.linears()],
                                [m.bias for m in bottom.linears()], True)
            logits = ops.mlp_forward(top_in, [m.weight for m in top.linears()],
                                     [m.bias for m in top.linears()], False)
        else:
            x = torch.nn.Sequential.forward(bottom, dense)
            logits = torch.nn.Sequential.forward(top, top_in)
        (x.float().sum() + logits.float().sum()).backward()

    fused = time_it(lambda: both_mlps(True))
    plain = time_it(lambda: both_mlps(False))
    print(f"bottom + top MLP forward + backward: plain {plain / 1e3:.2f} ms, fused "
          f"{fused / 1e3:.2f} ms ({plain / fused:.2f}x)")


if __name__ == "__main__":
    main()
