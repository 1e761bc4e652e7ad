"""int8 inference (`dlrm quantize --mlp int8`) against fp32 and bf16, as fractions of the peaks.

The `kaggle` DLRM (tables capped at --rows-cap rows, random reference-initialised weights) at
batch B without gradients, four ways, alternating rounds in one process (medians of
--repeats calls per round, median over rounds):

- fp32; bf16 (autocast: the fused oneDNN linear of ``ops.mlp``);
- int8 MLPs with float tables (`dlrm quantize --mlp int8 --float-tables`); int8 MLPs with
  8-bit row-wise tables (`dlrm quantize --mlp int8`). The MLPs are calibrated on 4 of the
  batches.

Then the same for both MLPs alone, and the matmul peaks measured here: fp32 and bf16
``torch.mm`` at 2048^3, the int8 MLPs' layer (oneDNN's int8 linear,
``dlrm.models.quantized.Int8Linear``) at 2048^3. A fraction of the peak is 0.949
MFLOP/sample (the inference forward's dense-layer matmuls) x samples/s over the precision's
peak.

With ``--checkpoint FILE --data DIR`` it also scores a trained checkpoint's test split in
float and quantized (the calibration: 4,096 of its training rows): the AUC cost.

    python benchmarks/mlp_int8_inference.py [--batch-size 2048] [--rounds 5]
        [--checkpoint runs/x/last.pt --data runs/data/criteo]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from dlrm.allocator import tune_cpu_allocator
from dlrm.bench import timing
from dlrm.bench.ceilings import int8_matmul_gops, machine_description, matmul_gflops
from dlrm.config import preset
from dlrm.data import open_data
from dlrm.models import build_model, model_config_for
from dlrm.models.quantized import calibrate_mlp_ranges, quantize_model

INFER_MFLOP = 0.949  # dense-layer matmuls of the kaggle inference forward, per sample


def variants(batch: int, rows_cap: int) -> tuple[dict[str, object], list, tuple]:
    """The four models (callables on a batch), the timing batches, and (the float model, its
    int8-MLP copy with 8-bit tables) for the MLP-only timings."""
    cfg = preset("kaggle")
    tables = [min(size, rows_cap) for size in cfg.table_sizes]
    data = open_data("synthetic:random", table_sizes=tables, train_samples=batch * 8,
                     val_samples=batch, test_samples=0, seed=0)
    batches = list(itertools.islice(data.batches("train", batch), 8))
    torch.manual_seed(0)
    model = build_model("dlrm", model_config_for("dlrm", "kaggle", tables, 13, {})).eval()
    ranges = calibrate_mlp_ranges(model, batches[:4])
    int8_mlps = quantize_model(copy.deepcopy(model), 8, mlp="int8", mlp_ranges=ranges)
    int8_mlps_float_tables = quantize_model(copy.deepcopy(model), None, mlp="int8",
                                            mlp_ranges=ranges)

    def bf16(b) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(b.dense, b.sparse)

    return {"fp32": lambda b: model(b.dense, b.sparse), "bf16": bf16,
            "int8 MLPs, float tables": lambda b: int8_mlps_float_tables(b.dense, b.sparse),
            "int8 MLPs, 8-bit tables": lambda b: int8_mlps(b.dense, b.sparse)}, batches, \
        (model, int8_mlps)


def time_rounds(fns: dict[str, object], batches: list, repeats: int, rounds: int
                ) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    cycle = itertools.cycle(batches)
    with torch.no_grad():
        for r in range(rounds):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
            for name in order:
                fn = fns[name]
                times[name].append(timing.median_ms(lambda fn=fn: fn(next(cycle)), repeats, 3))
    return {name: statistics.median(values) for name, values in times.items()}


def mlp_rounds(model, quantized, batch: int, repeats: int, rounds: int) -> dict[str, float]:
    dense, interactions = torch.rand(batch, 13) * 4, torch.randn(batch, 367).abs()

    def fp32() -> None:
        model.bottom_mlp(dense), model.top_mlp(interactions)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.bottom_mlp(dense), model.top_mlp(interactions)

    def int8() -> None:
        quantized.bottom_mlp(dense), quantized.top_mlp(interactions)

    fns = {"fp32": fp32, "bf16": bf16, "int8": int8}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(timing.median_ms(fn, repeats, 3))
    return {name: statistics.median(values) for name, values in times.items()}


def auc_cost(checkpoint: str, data_dir: str) -> None:
    from dlrm.training.checkpoint import load_model, quantize_checkpoint
    from dlrm.training.loop import evaluate

    data = open_data(data_dir)
    calibration = list(itertools.islice(data.batches("train", 1024), 4))
    print("\n| checkpoint on its test split | AUC | log loss |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits, mlp in (("float", None, None), ("8-bit tables", 8, None),
                                 ("float tables + int8 MLPs", None, "int8"),
                                 ("8-bit tables + int8 MLPs", 8, "int8")):
            if label == "float":
                model, _ = load_model(checkpoint)
            else:
                out = Path(tmp) / f"{label}.pt"
                quantize_checkpoint(checkpoint, out, bits, mlp=mlp,
                                    calibration=calibration if mlp else None)
                model, _ = load_model(out)
            metrics = evaluate(model, data, "test")
            print(f"| {label} | {metrics['auc']:.5f} | {metrics['logloss']:.5f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--rows-cap", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    tune_cpu_allocator()
    machine = machine_description(torch.device("cpu"))
    print(f"{machine['cpu_model']}, {machine['threads']} threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}; B={args.batch_size}, no gradients\n")
    cpu = torch.device("cpu")
    peaks = {"fp32": matmul_gflops(cpu, torch.float32), "bf16": matmul_gflops(cpu,
                                                                              torch.bfloat16),
             "int8": int8_matmul_gops()}
    print("peaks (GFLOP/s, int8: GOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                       peaks.items()) + "\n")
    fns, batches, (model, quantized) = variants(args.batch_size, args.rows_cap)
    ms = time_rounds(fns, batches, args.repeats, args.rounds)
    print("| whole model, inference | ms per batch | samples/s | x bf16 | fraction of its "
          "precision's peak |\n|---|---|---|---|---|")
    for name, value in ms.items():
        rate = args.batch_size / (value / 1e3)
        peak = peaks["int8" if name.startswith("int8") else name]
        print(f"| {name} | {value:.3f} | {rate:,.0f} | {ms['bf16'] / value:.2f}x | "
              f"{INFER_MFLOP * 1e6 * rate / (peak * 1e9):.2f} |")
    mlps = mlp_rounds(model, quantized, args.batch_size, args.repeats, args.rounds)
    print("\n| both MLPs alone | ms | x bf16 | fraction of its precision's peak |\n"
          "|---|---|---|---|")
    for name, value in mlps.items():
        rate = args.batch_size / (value / 1e3)
        print(f"| {name} | {value:.3f} | {mlps['bf16'] / value:.2f}x | "
              f"{INFER_MFLOP * 1e6 * rate / (peaks[name] * 1e9):.2f} |")
    if args.checkpoint and args.data:
        auc_cost(args.checkpoint, args.data)


if __name__ == "__main__":
    main()
