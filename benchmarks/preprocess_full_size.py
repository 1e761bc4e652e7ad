"""Full-size Criteo Kaggle preprocessing: this tree against another checkout, alternated.

Runs ``preprocess_kaggle(TSV, OUT)`` (exact vocabulary unless ``--mode``) in a fresh process
under ``/usr/bin/time -v`` once per round, alternating the code trees given with ``--code``
(``NAME=SRC_FOLDER``; the default is this tree as ``new``), so that a shared machine's load
falls on both alike. Per run it prints wall seconds, lines/s, peak RSS, the process's CPU
seconds, the machine's CPU seconds used by everything else during the run (from
/proc/stat: the load we competed with), and the pipeline's own stage timings when it reports
them. Each output folder is deleted after its run. Speed is a benchmark, never a test.

    dlrm synth --format criteo-tsv --rows 45840617 --out /work/bigdata/kaggle-45m.tsv
    git worktree add --detach /tmp/old 9d6ec6b
    python benchmarks/preprocess_full_size.py --tsv /work/bigdata/kaggle-45m.tsv \\
        --code old=/tmp/old/src --code new=src --rounds 2 --workdir /work/bigdata
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, time
from dlrm.data.criteo import preprocess_kaggle
kw = json.loads(sys.argv[3])
start = time.perf_counter()
meta = preprocess_kaggle(sys.argv[1], sys.argv[2], workers=2, **kw)
print(json.dumps({"seconds": time.perf_counter() - start, "rows_read": meta["rows_read"],
                  "rows_skipped": meta["rows_skipped"], "table_sizes": meta["table_sizes"],
                  "timings": meta.get("timings", {})}))
"""


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_once(name: str, src: str, tsv: Path, out: Path, kwargs: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    busy0, _ = _cpu_ticks()
    load0 = os.getloadavg()[0]
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(tsv),
                           str(out), json.dumps(kwargs)], env=env, capture_output=True,
                          text=True)
    busy1, _ = _cpu_ticks()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    text = proc.stderr

    def grab(label: str) -> float:
        return float(re.search(rf"{re.escape(label)}: ([0-9.]+)", text).group(1))

    cpu = grab("User time (seconds)") + grab("System time (seconds)")
    hz = os.sysconf("SC_CLK_TCK")
    result.update(name=name, peak_rss_gib=grab("Maximum resident set size (kbytes)") / 2**20,
                  cpu_seconds=cpu, lines_per_s=result["rows_read"] / result["seconds"],
                  machine_busy_s=(busy1 - busy0) / hz,
                  others_cpu_s=max((busy1 - busy0) / hz - cpu, 0.0),
                  load_before=load0, load_after=os.getloadavg()[0])
    shutil.rmtree(out, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.dlrm-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tsv", type=Path, required=True)
    parser.add_argument("--code", action="append", default=None, metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dlrm-bench"))
    parser.add_argument("--mode", choices=["exact", "min-count", "hash"], default="exact")
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines")
    args = parser.parse_args()
    codes = [c.split("=", 1) for c in (args.code or [f"new={Path(__file__).parents[1]}/src"])]
    kwargs = {"exact": {}, "min-count": {"min_count": 3},
              "hash": {"hash_buckets": 40_000_000}}[args.mode]
    print(f"# {sys.executable} {' '.join(sys.argv)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, cpus "
          f"{os.cpu_count()}, mode {args.mode}")
    print(f"{'code':6s} {'wall s':>7s} {'lines/s':>9s} {'peak RSS':>9s} {'cpu s':>7s} "
          f"{'others cpu s':>12s} {'load':>9s}  stage timings")
    args.workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(args.rounds):
        for name, src in codes:
            r = run_once(name, src, args.tsv, args.workdir / f"out-{name}", kwargs)
            timings = " ".join(f"{k}={v:.1f}" for k, v in r["timings"].items())
            print(f"{name:6s} {r['seconds']:7.1f} {r['lines_per_s']:9,.0f} "
                  f"{r['peak_rss_gib']:7.2f}Gi {r['cpu_seconds']:7.1f} "
                  f"{r['others_cpu_s']:12.1f} {r['load_before']:4.1f}>{r['load_after']:4.1f}"
                  f"  {timings}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
