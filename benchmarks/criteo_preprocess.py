"""Data pipeline speed: `dlrm synth --format criteo-tsv`, `dlrm preprocess`, the memmap loader.

Writes N synthetic Kaggle-format lines, preprocesses them in each vocabulary mode (each run in
a fresh child process so its peak RSS is its own), then times the loader. Prints wall time,
CPU time, lines/s and peak RSS. Speed is a benchmark, never a timed test. With
``PYTHONPATH=OTHER/src`` the children run another checkout's code (the same function name,
``preprocess_kaggle``), for a before/after comparison in one session.

    python benchmarks/criteo_preprocess.py --rows 2000000 --workdir /tmp/dlrm-bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = {"hash": ["--hash-buckets", "40000000"], "min-count": ["--min-count", "3"],
         "exact": []}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> None:
    """Preprocess once in this process and print a JSON line of measurements."""
    import inspect
    import shutil

    from dlrm.data.criteo import preprocess_kaggle

    mode_args = MODES[args.child]
    kwargs = {}
    if mode_args:
        kwargs = {mode_args[0][2:].replace("-", "_"): int(mode_args[1])}
    cpu, start = _cpu_seconds(), time.perf_counter()
    if "overwrite" in inspect.signature(preprocess_kaggle).parameters:
        kwargs["overwrite"] = True  # a rerun replaces the last one (older trees overwrite anyway)
    else:
        shutil.rmtree(args.out, ignore_errors=True)
    meta = preprocess_kaggle(args.tsv, args.out, workers=args.workers, **kwargs)
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu,
                      "rows_read": meta["rows_read"], "rows_skipped": meta["rows_skipped"],
                      "peak_rss_bytes": meta["peak_rss_bytes"]}))


def loader_rate(folder: Path, batch_size: int, shuffle: bool, epochs: int = 2) -> float:
    """Samples/s of MemmapDataSource.batches over the train split (best of ``epochs``; the
    first epoch also pays for reading the files into the page cache)."""
    from dlrm.data.loader import MemmapDataSource

    source = MemmapDataSource(folder)
    best = 0.0
    for epoch in range(epochs):
        start, samples = time.perf_counter(), 0
        for batch in source.batches("train", batch_size, epoch=epoch, shuffle=shuffle, seed=0):
            samples += len(batch)
        best = max(best, samples / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dlrm-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default="hash,min-count,exact")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--tsv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from dlrm.data.criteo_synth import write_criteo_tsv

    args.workdir.mkdir(parents=True, exist_ok=True)
    tsv = args.workdir / f"synth-{args.rows}.tsv"
    print(f"# {sys.executable} {' '.join(sys.argv)}")
    print(f"# cpus available: {len(os.sched_getaffinity(0))}, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    start = time.perf_counter()
    counts = write_criteo_tsv(tsv, args.rows, seed=0)
    seconds = time.perf_counter() - start
    print(f"synth criteo-tsv: {counts['rows']:,} lines, {tsv.stat().st_size / 2**20:,.0f} MiB "
          f"in {seconds:.1f} s = {counts['rows'] / seconds:,.0f} lines/s")
    print(f"{'mode':10s} {'wall s':>7s} {'cpu s':>7s} {'lines/s':>10s} {'peak RSS':>9s} skipped")
    last_out = None
    for mode in args.modes.split(","):
        out = args.workdir / f"out-{mode}"
        result = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--tsv", str(tsv), "--out", str(out),
             "--workers", str(args.workers)], check=True, capture_output=True, text=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{mode:10s} {r['seconds']:7.2f} {r['cpu_seconds']:7.2f} "
              f"{r['rows_read'] / r['seconds']:10,.0f} {r['peak_rss_bytes'] / 2**30:7.2f}GB "
              f"{r['rows_skipped']}")
        last_out = out
    if last_out is not None:
        for shuffle in (False, True):
            rate = loader_rate(last_out, args.batch_size, shuffle)
            print(f"loader batch {args.batch_size} shuffle={shuffle}: {rate:,.0f} samples/s")
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
