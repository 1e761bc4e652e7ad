"""Does bf16 mixed precision keep the model's quality? fp32 vs bf16 on planted data.

Trains the same model (same seed, data and budget) once in fp32 and once with bf16 autocast
(fp32 master weights), and prints validation AUC / log loss of both, their difference, the
Bayes-optimal values, and training samples/s.

    python benchmarks/precision_auc.py [--preset kaggle] [--rows-cap 20000] [--samples 3000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from dlrm.config import preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.loop import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kaggle")
    parser.add_argument("--rows-cap", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=3_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--optimizer", default="adagrad")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model_config = preset(args.preset, rows_cap=args.rows_cap)
    results = {}
    for precision in ("fp32", "bf16"):
        data = SyntheticData(SyntheticConfig(table_sizes=model_config.table_sizes,
                                             rows_cap=None, val_samples=200_000))
        config = TrainConfig(batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                             max_samples=args.samples, precision=precision, seed=args.seed)
        with tempfile.TemporaryDirectory() as run_dir:
            results[precision] = train("dlrm", model_config.to_dict(), data, config, run_dir)
        s = results[precision]
        print(f"{precision}: val AUC {s['val_auc']:.4f} log loss {s['val_logloss']:.4f} "
              f"({s['samples_per_s']:,.0f} samples/s)")
    fp32, bf16 = results["fp32"], results["bf16"]
    print(f"Bayes-optimal AUC {fp32['optimal_auc']:.4f} log loss {fp32['optimal_logloss']:.4f}")
    print(f"bf16 - fp32: AUC {bf16['val_auc'] - fp32['val_auc']:+.4f}, log loss "
          f"{bf16['val_logloss'] - fp32['val_logloss']:+.4f}; speed "
          f"{bf16['samples_per_s'] / fp32['samples_per_s']:.2f}x")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
