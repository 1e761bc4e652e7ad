"""Embedding lookups with and without transparent huge pages (``dlrm.allocator``).

The `kaggle` preset's 26 tables in one ``FusedEmbeddingBag`` (full size, 33.8M rows, 2.2 GB,
or capped with --rows-cap), one-hot batches of uniform random ids. Each round runs one fresh
process per setting, ``DLRM_HUGE_PAGES=1`` and ``=0`` alternating, and each process reports
the median over --steps of: the lookup alone (no gradients), and the lookup with its backward
and the fused SGD row update (as training runs it). Also the time to build and initialise the
tables and how much of them the kernel backs with huge pages (``AnonHugePages``).

    python benchmarks/huge_pages.py [--rows-cap 0] [--batch-size 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch


def child(rows_cap: int, batch: int, steps: int) -> dict:
    from dlrm.allocator import huge_page_mode, huge_pages_wanted, tune_cpu_allocator
    from dlrm.config import preset
    from dlrm.features import SparseFeatures
    from dlrm.models.embeddings import FusedEmbeddingBag, RowUpdate

    tune_cpu_allocator()  # as dlrm train and dlrm bench run
    sizes = preset("kaggle", rows_cap=rows_cap or None).table_sizes
    t0 = time.perf_counter()
    tables = FusedEmbeddingBag(sizes, 16, seed=0)
    build_s = time.perf_counter() - t0
    huge_kb = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                huge_kb = int(line.split()[1])
    gen = torch.Generator().manual_seed(0)
    size_of_id = torch.tensor(sizes, dtype=torch.float64).repeat_interleave(batch)

    def batch_ids() -> SparseFeatures:
        ids = (torch.rand(size_of_id.shape, generator=gen, dtype=torch.float64)
               * size_of_id).long()
        return SparseFeatures(ids, torch.arange(ids.numel() + 1), len(sizes), one_hot=True)

    def timed(fn) -> float:
        times = []
        for step in range(steps + 5):
            sparse = batch_ids()
            t = time.perf_counter()
            fn(sparse)
            if step >= 5:
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    with torch.no_grad():
        lookup = timed(tables)
    tables.row_update = RowUpdate(lr=torch.tensor(0.01))
    grad = torch.full((batch, len(sizes), 16), 1e-6)
    train = timed(lambda sparse: tables(sparse).backward(grad))
    return {"huge_pages": huge_pages_wanted(), "thp_mode": huge_page_mode(),
            "anon_huge_gib": huge_kb / 2**20, "build_s": build_s, "lookup_ms": lookup,
            "lookup_update_ms": train, "rows": sum(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-cap", type=int, default=0, help="cap per table (0: full size)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.rows_cap, args.batch_size, args.steps)))
        return
    from dlrm.bench.ceilings import machine_description

    cpu = machine_description(torch.device("cpu"))["cpu_model"]
    print(f"{cpu}; {platform.platform()}; torch {torch.__version__}; {args.threads} threads; "
          f"B={args.batch_size}; rows cap {args.rows_cap or 'none'}")
    results: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for setting in ("1", "0"):
            env = {**os.environ, "DLRM_HUGE_PAGES": setting}
            out = subprocess.run([sys.executable, __file__, "--child", "--rows-cap",
                                  str(args.rows_cap), "--batch-size", str(args.batch_size),
                                  "--steps", str(args.steps), "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True, check=True)
            results[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = results["1"][0]
    print(f"{first['rows']:,} rows of 64 B; THP mode {first['thp_mode']}")
    print("| round | huge pages: GiB huge, build s, lookup ms, lookup+update ms "
          "| 4 KiB pages: same | lookup speed-up | lookup+update speed-up |")
    print("|---|---|---|---|---|")
    for k, (on, off) in enumerate(zip(results["1"], results["0"]), 1):
        cells = [f"{r['anon_huge_gib']:.2f}, {r['build_s']:.1f}, {r['lookup_ms']:.3f}, "
                 f"{r['lookup_update_ms']:.3f}" for r in (on, off)]
        print(f"| {k} | {cells[0]} | {cells[1]} | "
              f"{off['lookup_ms'] / on['lookup_ms']:.2f}x | "
              f"{off['lookup_update_ms'] / on['lookup_update_ms']:.2f}x |")


if __name__ == "__main__":
    main()
