"""Bench on real Criteo rows vs on data drawn from their profile vs on uniform random ids.

Reads the raw Criteo Kaggle TSV sample (../shared/data/criteo-kaggle-head10k/train.txt),
preprocesses it in memory (dense: empty -> 0, negative -> 0, log1p; each categorical column's
distinct hex values -> ids, placed in the Criteo Kaggle table of that column (capped) by the
same rank scatter a full-data preprocessing would give), fits a profile on its train split
and benchmarks the same model on:

  real      the real rows (ArrayDataSource, cycled)
  profile   ProfileData(profile, same number of rows) (cycled)
  random    fresh uniform ids every batch (`dlrm bench --ids random`)
  random-N  the same N rows with uniform ids instead, cycled like the real rows

Usage: python benchmarks/profile_vs_real.py [--rows-cap 4000000] [--batch-size 2048] [--threads 1]
       [--rounds 3] [--trials 2] [--steps 3] [--out bench-out/profile_vs_real.json]
Prints the command, `uptime`, the profile statistics side by side and the bench table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlrm.bench.runner import BenchConfig, run_bench
from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES
from dlrm.data.arrays import ArrayDataSource
from dlrm.data.profile import SCATTER_PRIME, ProfileData, fit_profile

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo-kaggle-head10k"


def read_criteo(path: Path, rows_cap: int) -> ArrayDataSource:
    names = ["label"] + [f"I{k}" for k in range(1, 14)] + [f"C{k}" for k in range(1, 27)]
    types = {n: pa.string() for n in names[14:]}
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                           parse_options=pacsv.ParseOptions(delimiter="\t"),
                           convert_options=pacsv.ConvertOptions(column_types=types,
                                                                strings_can_be_null=False))
    labels = table["label"].to_numpy().astype(np.float32)
    dense = np.stack([np.nan_to_num(table[f"I{k}"].to_numpy(zero_copy_only=False)
                                    .astype(np.float64), nan=0.0) for k in range(1, 14)], 1)
    dense = np.log1p(np.maximum(dense, 0.0)).astype(np.float32)
    sizes = [min(n, rows_cap) for n in CRITEO_KAGGLE_TABLE_SIZES]
    ids = np.empty((len(labels), 26), dtype=np.int64)
    for k in range(26):
        column = table[f"C{k + 1}"].to_numpy(zero_copy_only=False)
        _, inverse = np.unique(column, return_inverse=True)  # sorted hex order ~ random
        ids[:, k] = (inverse.astype(np.int64) * SCATTER_PRIME) % sizes[k]
    return ArrayDataSource(dense, ids, labels, sizes)


def stats(profile: dict) -> dict:
    f = profile["features"]
    return {"cardinality_sum": sum(x["cardinality"] for x in f),
            "repeat_share_mean": float(np.mean([x["reuse"]["repeat_share"] for x in f])),
            "reuse_median_mean": float(np.mean([x["reuse"]["distance"][2] for x in f
                                                if x["reuse"]["distance"]])),
            "zipf_mean": float(np.mean([x["zipf"] for x in f])),
            "click_rate": profile["click_rate"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="kaggle")
    p.add_argument("--mode", default="train", choices=["train", "infer"])
    p.add_argument("--rows-cap", type=int, default=4_000_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the sources")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="bench-out/profile_vs_real.json")
    args = p.parse_args()
    path = DATA / "train.txt"
    if not path.is_file():
        print(f"skipped: {path} not found (the shared Criteo sample)", file=sys.stderr)
        return 0
    print("command: python " + " ".join(sys.argv))
    print("uptime:", os.popen("uptime").read().strip())
    real = read_criteo(path, args.rows_cap)
    n = real.num_samples("train")  # the benchmarks read (and cycle) the train split
    profile = fit_profile(real, "train")
    train_only = (("train", 1.0),)
    from_profile = ProfileData(profile, n, seed=1, table_sizes=real.table_sizes,
                               split_fractions=train_only)
    rng = np.random.default_rng(2)
    uniform_rows = ArrayDataSource(
        real.dense[:n].numpy(), np.stack([rng.integers(0, s, n) for s in real.table_sizes], 1),
        real.labels[:n].numpy(), real.table_sizes, split_fractions=train_only)
    print(f"\nprofile statistics of the train split ({n:,} rows):")
    sources = {"real": real, "profile": from_profile, f"random-{n // 1000}k": uniform_rows}
    for name, data in sources.items():
        print(f"  {name:<11}", json.dumps({k: round(v, 4) for k, v in
                                            stats(fit_profile(data, "train")).items()}))
    base = BenchConfig(preset=args.preset, mode=args.mode, table_rows_cap=args.rows_cap,
                       batch_size=args.batch_size, trials=args.trials, steps=args.steps,
                       threads=args.threads)
    # Round-robin over the data sources, several rounds, medians: load on a shared machine
    # drifts over minutes, and this spreads the drift over all four alike.
    names = ["real", "profile", "random", f"random-{n // 1000}k"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    ceilings = None
    for _ in range(args.rounds):
        for name in names:
            data = None if name == "random" else sources[name]
            r = run_bench(replace(base, ids="random"), data=data, ceilings=ceilings,
                          data_label=name)
            ceilings = r["ceilings"]
            runs[name].append(r)

    def med(name: str, get) -> float:
        return float(np.median([get(r) for r in runs[name]]))

    first = runs["real"][0]
    print(f"\n{args.preset} {args.mode}, B={args.batch_size}, tables capped at "
          f"{args.rows_cap:,} rows ({first['embedding_megabytes']:.0f} MiB), fp32, threads "
          f"{first['machine']['threads']}; medians of {args.rounds} round-robin rounds")
    print(f"{'data':<11}{'samples/s':>11}{'emb fwd ms':>12}{'emb upd ms':>12}"
          f"{'emb bwd ms':>12}{'MLPs ms':>10}{'gather GB/s':>13}")
    for name in names:
        def ms(key: str):
            return lambda r: r["components"].get(key, {}).get("ms", float("nan"))
        mlp = med(name, lambda r: sum(c["ms"] for k, c in r["components"].items()
                                      if "mlp" in k))
        print(f"{name:<11}{med(name, lambda r: r['samples_per_s']):>11,.0f}"
              f"{med(name, ms('embedding_fwd')):>12.2f}{med(name, ms('embedding_update')):>12.2f}"
              f"{med(name, ms('embedding_bwd')):>12.2f}{mlp:>10.1f}"
              f"{med(name, lambda r: r['components']['embedding_fwd']['achieved_gbps']):>13.2f}")
    results = runs
    print("uptime:", os.popen("uptime").read().strip())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
