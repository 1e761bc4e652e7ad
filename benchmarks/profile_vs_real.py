"""Lookup time on real Criteo rows vs data drawn from their profile (with their locality, and
i.i.d.) vs uniform random ids: `dlrm bench locality` on the real rows.

Reads the raw Criteo Kaggle TSV sample (../shared/data/criteo-kaggle-head10k/train.txt, its
10,000 rows in file order), preprocesses it in memory (dense: empty -> 0, negative -> 0,
log1p; each categorical column's distinct hex values -> ids, placed in the Criteo Kaggle table
of that column (capped) by the same rank scatter a full-data preprocessing would give), and
benchmarks the same model with ``dlrm.bench.locality.compare_localities`` on:

  source    the real rows, in file order (cycled)
  profile   as many rows drawn from their profile, locality "profile" (cycled)
  iid       the same draw with the ids in random order, locality "iid" (cycled)
  random    fresh uniform ids every batch (`dlrm bench --ids random`)

in round-robin rounds, and prints each source's stack-distance statistics beside its times.

Usage: python benchmarks/profile_vs_real.py [--rows-cap 4000000] [--batch-size 2048]
       [--threads 1] [--rounds 3] [--trials 2] [--steps 3] [--out bench-out/profile_vs_real.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlrm.bench.locality import compare_localities, format_localities
from dlrm.bench.runner import BenchConfig
from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES
from dlrm.data.arrays import ArrayDataSource
from dlrm.data.profile import SCATTER_PRIME

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo-kaggle-head10k"


def read_criteo(path: Path, rows_cap: int) -> ArrayDataSource:
    """The TSV's rows in file order, one ``train`` split."""
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
    return ArrayDataSource(dense, ids, labels, sizes, split_fractions=(("train", 1.0),))


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
    cfg = BenchConfig(preset=args.preset, mode=args.mode, table_rows_cap=args.rows_cap,
                      batch_size=args.batch_size, trials=args.trials, steps=args.steps,
                      threads=args.threads)
    result = compare_localities(cfg, real, rows=real.num_samples("train"), rounds=args.rounds,
                                extra_sources={"random": None})
    first = result["sources"]["source"]["runs"][0]
    print(f"\n{args.preset} {args.mode}, B={args.batch_size}, tables capped at "
          f"{args.rows_cap:,} rows ({first['embedding_megabytes']:.0f} MiB), fp32, threads "
          f"{first['machine']['threads']}, CPU {first['machine']['device_name']}")
    print(format_localities(result))
    print("uptime:", os.popen("uptime").read().strip())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
