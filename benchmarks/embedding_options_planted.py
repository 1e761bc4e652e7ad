"""Embedding options on planted data: parameter memory and validation AUC at a fixed budget.

Trains the same DLRM with plain tables, quotient-remainder tables (mult, add, concat),
mixed-dimension tables and lookup-time hashing on the planted synthetic task (same data, seed
and number of samples), and prints each variant's embedding bytes and its val AUC and log loss
beside the Bayes-optimal values.

    python benchmarks/embedding_options_planted.py --train-samples 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlrm.config import DLRMConfig, dlrm_config_for_data, preset
from dlrm.data import open_data
from dlrm.models.memory import format_bytes, parameter_memory
from dlrm.training.loop import TrainConfig, train


def variants(args: argparse.Namespace) -> list[tuple[str, dict]]:
    qr = {"qr_threshold": args.threshold, "qr_collisions": args.collisions}
    return [
        ("plain", {}),
        (f"QR mult c={args.collisions}", {**qr, "qr_operation": "mult"}),
        (f"QR add c={args.collisions}", {**qr, "qr_operation": "add"}),
        (f"QR concat c={args.collisions}", {**qr, "qr_operation": "concat"}),
        (f"MD alpha={args.md_alpha}", {"md_alpha": args.md_alpha}),
        (f"hash M={args.max_ind_range}", {"max_ind_range": args.max_ind_range}),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="kaggle")
    p.add_argument("--rows-cap", type=int, default=20_000)
    p.add_argument("--train-samples", type=int, default=1_000_000)
    p.add_argument("--val-samples", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threshold", type=int, default=1000, help="QR: tables above this")
    p.add_argument("--collisions", type=int, default=4)
    p.add_argument("--md-alpha", type=float, default=0.3)
    p.add_argument("--max-ind-range", type=int, default=5000)
    p.add_argument("--only", default=None, help="comma-separated variant name prefixes")
    args = p.parse_args()
    data = open_data("synthetic:planted", table_sizes=preset(args.preset).table_sizes,
                     rows_cap=args.rows_cap, train_samples=args.train_samples,
                     val_samples=args.val_samples, test_samples=0)
    base = dlrm_config_for_data(args.preset, data.table_sizes, data.num_dense).to_dict()
    work = Path(tempfile.mkdtemp(prefix="embedding-options-"))
    results = []
    for name, options in variants(args):
        if args.only and not any(name.startswith(x) for x in args.only.split(",")):
            continue
        config = {**base, **options}
        tick = time.perf_counter()
        summary = train("dlrm", config, data,
                        TrainConfig(batch_size=args.batch_size, lr=args.lr, optimizer="adagrad"),
                        work / name.replace(" ", "_"))
        seconds = time.perf_counter() - tick
        memory = parameter_memory("dlrm", DLRMConfig.from_dict(config).to_dict(), "adagrad")
        params = sum(t.param_bytes for t in memory.tables)
        results.append((name, params, summary, seconds))
        print(f"{name}: {summary['val_auc']:.5f} ({seconds:.0f} s)", file=sys.stderr)
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    base_params, base_summary, base_seconds = results[0][1], results[0][2], results[0][3]
    print("| embeddings | table bytes | vs plain | val AUC | dAUC | log loss | train time |")
    print("|---|---|---|---|---|---|---|")
    for name, params, s, seconds in results:
        print(f"| {name} | {format_bytes(params)} | {base_params / params:.2f}x smaller | "
              f"{s['val_auc']:.5f} | {s['val_auc'] - base_summary['val_auc']:+.5f} | "
              f"{s['val_logloss']:.5f} | {seconds / base_seconds:.2f}x |")
    print(f"Bayes-optimal val AUC {results[0][2].get('optimal_auc', float('nan')):.5f}")


if __name__ == "__main__":
    main()
