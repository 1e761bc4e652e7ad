"""Quantized embeddings on planted data: memory saved and the AUC / log-loss change.

Trains a DLRM on the planted synthetic task (or takes --checkpoint), quantizes its tables to
row-wise int8 and 4-bit (`dlrm quantize`'s library function), and evaluates all three on the
same validation split. Prints the numbers and the command that made them.

    python benchmarks/quantize_planted.py                       # defaults below
    python benchmarks/quantize_planted.py --checkpoint runs/x/last.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlrm.config import dlrm_config_for_data
from dlrm.data import open_data
from dlrm.models.memory import format_bytes
from dlrm.models.quantized import embedding_bytes
from dlrm.training.checkpoint import load_model, quantize_checkpoint
from dlrm.training.loop import TrainConfig, evaluate, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="skip training; quantize this")
    p.add_argument("--preset", default="kaggle")
    p.add_argument("--rows-cap", type=int, default=20_000)
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--val-samples", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    if args.checkpoint:
        source = Path(args.checkpoint)
    else:
        from dlrm.config import preset

        data = open_data("synthetic:planted", table_sizes=preset(args.preset).table_sizes,
                         rows_cap=args.rows_cap, train_samples=args.train_samples,
                         val_samples=args.val_samples, test_samples=0)
        model_config = dlrm_config_for_data(args.preset, data.table_sizes, data.num_dense)
        tick = time.perf_counter()
        train("dlrm", model_config.to_dict(), data,
              TrainConfig(batch_size=args.batch_size, lr=args.lr, optimizer="adagrad"),
              work / "run")
        print(f"trained in {time.perf_counter() - tick:.0f} s", file=sys.stderr)
        source = work / "run" / "last.pt"

    model, ckpt = load_model(source)
    data = open_data(ckpt["data_spec"])
    rows = []
    for bits in (None, 8, 4):
        if bits is None:
            candidate, size = model, embedding_bytes(model)
        else:
            quantize_checkpoint(str(source), str(work / f"q{bits}.pt"), bits)
            candidate, _ = load_model(work / f"q{bits}.pt")
            size = embedding_bytes(candidate)
        tick = time.perf_counter()
        metrics = evaluate(candidate, data, "val", 8192)
        rows.append((bits, size, metrics, time.perf_counter() - tick))

    print("command: " + " ".join(["python", *sys.argv]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"val samples {data.num_samples('val')}")
    base_size, base, base_time = rows[0][1], rows[0][2], rows[0][3]
    print("| tables | embedding bytes | vs fp32 | val AUC | dAUC | log loss | d log loss |"
          " eval time vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for bits, size, m, seconds in rows:
        name = "fp32" if bits is None else f"{bits}-bit row-wise"
        print(f"| {name} | {format_bytes(size)} | {base_size / size:.2f}x smaller | "
              f"{m['auc']:.5f} | {m['auc'] - base['auc']:+.5f} | {m['logloss']:.5f} | "
              f"{m['logloss'] - base['logloss']:+.5f} | {seconds / base_time:.2f}x |")
    if "optimal_auc" in base:
        print(f"Bayes-optimal val AUC {base['optimal_auc']:.5f}")


if __name__ == "__main__":
    main()
