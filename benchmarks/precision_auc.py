"""Does bf16 mixed precision keep the model's quality? fp32 vs bf16 on planted data.

Trains the same model (same seed, data and budget) once in fp32 and once with bf16 autocast
(fp32 master weights), and prints validation AUC / log loss of both, their difference, the
Bayes-optimal values, and training samples/s.

    python benchmarks/precision_auc.py [--preset kaggle] [--rows-cap 20000] [--samples 3000000]
                                      [--seeds 0,1,2,3]

One seed is one sample of a noisy difference: the kaggle-shaped model is far from converged at
3M samples and bf16 rounding sends it down a different path, so compare the mean over seeds.
"""

from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument("--seeds", default=None,
                        help="comma-separated training seeds (overrides --seed): one fp32/bf16 "
                             "pair per seed, then the mean and spread of the differences")
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    model_config = preset(args.preset, rows_cap=args.rows_cap)
    deltas: list[tuple[float, float]] = []
    fp32_aucs: list[float] = []
    for seed in seeds:
        results = {}
        for precision in ("fp32", "bf16"):
            data = SyntheticData(SyntheticConfig(table_sizes=model_config.table_sizes,
                                                 rows_cap=None, val_samples=200_000))
            config = TrainConfig(batch_size=args.batch_size, lr=args.lr,
                                 optimizer=args.optimizer, max_samples=args.samples,
                                 precision=precision, seed=seed)
            with tempfile.TemporaryDirectory() as run_dir:
                results[precision] = train("dlrm", model_config.to_dict(), data, config, run_dir)
            s = results[precision]
            print(f"seed {seed} {precision}: val AUC {s['val_auc']:.4f} log loss "
                  f"{s['val_logloss']:.4f} ({s['samples_per_s']:,.0f} samples/s)")
        fp32, bf16 = results["fp32"], results["bf16"]
        deltas.append((bf16["val_auc"] - fp32["val_auc"],
                       bf16["val_logloss"] - fp32["val_logloss"]))
        fp32_aucs.append(fp32["val_auc"])
        print(f"seed {seed} bf16 - fp32: AUC {deltas[-1][0]:+.4f}, log loss {deltas[-1][1]:+.4f}; "
              f"speed {bf16['samples_per_s'] / fp32['samples_per_s']:.2f}x")
    print(f"Bayes-optimal AUC {fp32['optimal_auc']:.4f} log loss {fp32['optimal_logloss']:.4f}")
    if len(seeds) > 1:
        auc_d = [d[0] for d in deltas]
        loss_d = [d[1] for d in deltas]
        print(f"over {len(seeds)} seeds: bf16 - fp32 AUC mean {statistics.mean(auc_d):+.4f} "
              f"(std {statistics.stdev(auc_d):.4f}, range {min(auc_d):+.4f}..{max(auc_d):+.4f}), "
              f"log loss mean {statistics.mean(loss_d):+.4f}; fp32 AUC itself varies by seed "
              f"with std {statistics.stdev(fp32_aucs):.4f}")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
