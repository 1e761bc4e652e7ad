"""`dlrm bench` (one measurement) and `dlrm bench sweep --vary NAME=V1,V2`.

Data profiles are made and used by `dlrm synth profile DIR` / `dlrm synth --profile` (cli/data.py);
`dlrm bench --profile profile.json` benchmarks on data drawn from one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dlrm.cli.common import add_deprecated_alias
from dlrm.config import PRESETS
from dlrm.models import model_kinds


class BenchProgress:
    """A tqdm bar per measurement (steps, with rate and ETA) from ``run_bench`` events."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: tqdm | None = None
        self.prefix = ""

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "sweep":
            self.prefix = f"{event['vary']}={event['value']} "
        elif kind == "start":
            self.bar = tqdm(total=event["total"], unit="step", desc=self.prefix + event["desc"],
                            disable=self.disable, file=sys.stderr, dynamic_ncols=True,
                            leave=False)
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
        elif kind == "end" and self.bar is not None:
            self.bar.close()
            self.bar = None


def add_bench_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="kaggle", choices=list(PRESETS),
                   help="recipe: tables, D, MLPs, bags (the same presets as `dlrm train`)")
    g.add_argument("--model", default=None, choices=model_kinds(),
                   help="model kind (default: the preset's); DLRM kinds get per-component "
                        "timers and a roofline")
    g.add_argument("--rows-cap", type=int, default=1_000_000,
                   help="cap on every table's rows, to fit memory (0: no cap)")
    add_deprecated_alias(g, "--table-rows-cap", "--rows-cap", dest="rows_cap", type=int)
    g.add_argument("--embedding-dim", type=int, default=None)
    g.add_argument("--bottom-mlp", default=None, help="e.g. 512-256-64 (D appended if missing)")
    g.add_argument("--top-mlp", default=None, help="e.g. 512-256-1")
    g.add_argument("--interaction", choices=["dot", "cat", "cross"], default=None)
    g.add_argument("--num-tables", type=int, default=None, help="use N tables (preset's, cycled)")
    g.add_argument("--rows-per-table", type=int, default=None, help="every table this size")
    g.add_argument("--ids-per-bag", type=int, default=None,
                   help="every bag this many ids (default: the preset's; mlperf-dcnv2 is "
                        "multi-hot, the others one-hot)")
    g.add_argument("--one-hot", action="store_true", help="same as --ids-per-bag 1")
    d = p.add_argument_group("data")
    d.add_argument("--ids", choices=["random", "planted"], default="random",
                   help="uniform ids, or power-law (Zipf) ids")
    d.add_argument("--zipf", type=float, default=1.1, help="--ids planted: exponent")
    d.add_argument("--profile", default=None,
                   help="benchmark on data drawn from a `dlrm synth profile` JSON")
    d.add_argument("--profile-rows", type=int, default=200_000,
                   help="--profile: rows to generate (default 200000)")
    r = p.add_argument_group("run")
    r.add_argument("--mode", choices=["train", "infer"], default="train")
    r.add_argument("--batch-size", type=int, default=2048)
    r.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32",
                   help="tf32 and fp16: CUDA only")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                   help="leave glibc malloc's defaults (see dlrm.allocator)")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--trials", type=int, default=5)
    r.add_argument("--steps", type=int, default=5, help="steps per trial")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-ceilings", action="store_true", help="skip the roofline ceilings")
    r.add_argument("--peer", choices=["torchrec"], default=None,
                   help="also time TorchRec's DLRM on the same config and batches")
    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, help="write the full result here")
    o.add_argument("--out", default=None, help="folder for PNG charts (and sweep CSV)")
    o.add_argument("--vary", default=None,
                   help="sweep: NAME=V1,V2,... with NAME one of batch_size, embedding_dim, "
                        "num_tables, rows_per_table, ids_per_bag, zipf, threads")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def bench_config_from_args(args: argparse.Namespace):
    from dlrm.bench.runner import BenchConfig

    return BenchConfig(
        preset=args.preset, model=args.model, table_rows_cap=args.rows_cap or None,
        embedding_dim=args.embedding_dim, bottom_mlp=args.bottom_mlp, top_mlp=args.top_mlp,
        interaction=args.interaction, num_tables=args.num_tables,
        rows_per_table=args.rows_per_table, ids_per_bag=1 if args.one_hot else args.ids_per_bag,
        ids=args.ids, zipf=args.zipf, mode=args.mode, batch_size=args.batch_size,
        precision=args.precision, threads=args.threads, tune_allocator=args.tune_allocator,
        device=args.device, warmup=args.warmup,
        trials=args.trials, steps=args.steps, seed=args.seed, ceilings=not args.no_ceilings)


def _profile_data(args: argparse.Namespace, cfg):
    from dlrm.data.profile import ProfileData, load_profile

    profile = load_profile(args.profile)
    sizes = [f["table_size"] for f in profile["features"]]
    if cfg.table_rows_cap:
        sizes = [min(n, cfg.table_rows_cap) for n in sizes]
    # The train split (80%) must hold at least one batch.
    rows = max(args.profile_rows, int(cfg.batch_size / 0.8) + 1)
    return ProfileData(profile, rows, seed=cfg.seed, table_sizes=sizes)


def cmd_bench(args: argparse.Namespace) -> int:
    from dlrm.bench.report import format_result

    if args.action == "sweep":
        return cmd_sweep(args)
    if args.vary:
        raise ValueError("--vary belongs to `dlrm bench sweep`")
    from dlrm.bench.runner import run_bench

    cfg = bench_config_from_args(args)
    data = _profile_data(args, cfg) if args.profile else None
    label = f"profile:{args.profile}" if args.profile else None
    result = run_bench(cfg, data=data, progress=BenchProgress(args.quiet), data_label=label)
    if args.peer:
        from dlrm.bench.peers import run_peer

        result["peer"] = run_peer(args.peer, cfg, data=data)
    print(format_result(result))
    if args.peer:
        peer = result["peer"]
        print(f"\npeer {args.peer} {peer['version']} ({peer['setup']}): "
              f"{peer['samples_per_s']:,.0f} samples/s; ours in the same alternating trials "
              f"{peer['ours_samples_per_s_same_trials']:,.0f} samples/s: ours / peer = "
              f"{peer['ours_over_peer']:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.out:
        from dlrm.bench.plots import breakdown_chart, roofline_chart

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if result["ceilings"]:
            roofline_chart(result, out / "roofline.png")
        breakdown_chart([result], [f"{cfg.preset} B={cfg.batch_size}"], out / "breakdown.png")
        print(f"wrote {out / 'roofline.png'} and {out / 'breakdown.png'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dlrm.bench.plots import sweep_chart
    from dlrm.bench.sweep import parse_vary, run_sweep, write_csv

    if not args.vary:
        raise ValueError("`dlrm bench sweep` needs --vary NAME=V1,V2,...")
    if args.profile or args.peer:
        raise ValueError("sweeps run on generated ids; --profile and --peer are for one run")
    name, values = parse_vary(args.vary)
    rows, results = run_sweep(bench_config_from_args(args), name, values,
                              progress=BenchProgress(args.quiet))
    out = Path(args.out or "bench-sweep")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"sweep_{name}.csv")
    sweep_chart(rows, results, name, out / f"sweep_{name}.png")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{name:>14} {'samples/s':>12} {'step ms':>9}  largest component")
    for row in rows:
        print(f"{row['value']!s:>14} {row['samples_per_s']:>12,.0f} {row['step_ms']:>9.2f}  "
              f"{row['limiter']}")
    print(f"wrote {out / f'sweep_{name}.csv'} and {out / f'sweep_{name}.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="throughput benchmark with per-component times and a roofline",
        description="`dlrm bench [options]` measures one configuration; "
                    "`dlrm bench sweep --vary batch_size=128,512` sweeps one setting.")
    p.add_argument("action", nargs="?", choices=["run", "sweep"], default="run")
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)
