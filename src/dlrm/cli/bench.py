"""`dlrm bench` (one measurement), `dlrm bench sweep --vary NAME=V1,V2`, `dlrm bench locality`
(lookup time on a data set, its profile's data and i.i.d. ids) and `dlrm bench loadgen`
(MLPerf Inference's LoadGen driving a trained model).

Data profiles are made and used by `dlrm synth profile DIR` / `dlrm synth --profile` (cli/data.py);
`dlrm bench --profile profile.json` benchmarks on data drawn from one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dlrm.bench.runtimes import BACKENDS
from dlrm.cli.common import add_deprecated_alias, load_checkpoint_model
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
                   help="cap on generated tables' rows, to fit memory (0: no cap)")
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
                   help="--profile: rows to generate (default 200000); `locality`: rows of "
                        "each source")
    d.add_argument("--locality", choices=["profile", "iid"], default="profile",
                   help="--profile: ids ordered by the profiled lifetimes (the source's "
                        "temporal locality, default) or in random order (iid)")
    d.add_argument("--data", default=None,
                   help="benchmark on a data set (a `dlrm preprocess` folder, or "
                        "synthetic:planted): its train split, in order; `locality`: the source")
    d.add_argument("--rounds", type=int, default=3,
                   help="`locality`: round-robin rounds over the three sources (medians)")
    r = p.add_argument_group("run")
    r.add_argument("--mode", choices=["train", "infer"], default=None,
                   help="train steps or inference (default: train; --backend onnxruntime: "
                        "infer, its only mode)")
    r.add_argument("--backend", choices=list(BACKENDS), default="pytorch",
                   help="onnxruntime: the model exported to ONNX and run by ONNX Runtime beside "
                        "eager PyTorch on the same batches (inference, CPU, fp32): samples/s "
                        "of each and the largest output difference, which must be <= 1e-5 "
                        "(extra `onnx`)")
    r.add_argument("--batch-size", type=int, default=2048)
    r.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16", "int8"],
                   default="fp32",
                   help="tf32 and fp16: CUDA only; int8: --mode infer on the CPU, the MLPs "
                        "as `dlrm quantize --mlp int8` makes them")
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
    o.add_argument("--out", default=None, help="folder for PNG charts (and sweep CSV); "
                   "loadgen: LoadGen's log folder (new; default loadgen-<scenario>)")
    o.add_argument("--vary", default=None,
                   help="sweep: NAME=V1,V2,... with NAME one of batch_size, embedding_dim, "
                        "num_tables, rows_per_table, ids_per_bag, zipf, threads")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    lg = p.add_argument_group("loadgen (`dlrm bench loadgen`; docs/benchmarks.md)")
    lg.add_argument("--checkpoint", default=None,
                    help="the model to serve, or with --backend onnxruntime to compare (a "
                         "last.pt, any kind)")
    lg.add_argument("--scenario", choices=["Offline", "Server"], default="Offline")
    lg.add_argument("--target-qps", type=float, default=None,
                    help="Offline: expected QPS; Server: arrival rate (default: measured "
                         "first; Server half of it)")
    lg.add_argument("--latency-bound-ms", type=float, default=60.0,
                    help="Server: latency bound (default 60, MLPerf DLRM-v2)")
    lg.add_argument("--latency-percentile", type=float, default=0.99,
                    help="Server: the percentile that must meet the bound (default 0.99)")
    lg.add_argument("--min-duration-ms", type=int, default=60_000,
                    help="LoadGen's minimum duration (default 60000; MLPerf runs: 600000)")
    lg.add_argument("--min-query-count", type=int, default=1)
    lg.add_argument("--samples", type=int, default=100_000,
                    help="rows in the query sample library (default 100000)")
    lg.add_argument("--split", default="val", help="the split the samples come from")
    lg.add_argument("--batch-wait-ms", type=float, default=0.0,
                    help="wait this long for a batch to fill when the queue runs dry")
    lg.add_argument("--accuracy", action="store_true",
                    help="LoadGen's AccuracyOnly mode: every sample once; AUC from its log")


def bench_config_from_args(args: argparse.Namespace):
    from dlrm.bench.runner import BenchConfig

    return BenchConfig(
        preset=args.preset, model=args.model, table_rows_cap=args.rows_cap or None,
        embedding_dim=args.embedding_dim, bottom_mlp=args.bottom_mlp, top_mlp=args.top_mlp,
        interaction=args.interaction, num_tables=args.num_tables,
        rows_per_table=args.rows_per_table, ids_per_bag=1 if args.one_hot else args.ids_per_bag,
        ids=args.ids, zipf=args.zipf, mode=args.mode or "train", batch_size=args.batch_size,
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
    return ProfileData(profile, rows, seed=cfg.seed, table_sizes=sizes,
                       locality=args.locality)


def write_json(path: str, result: Any) -> None:
    """``--json``: the result, written beside ``path`` and published by one rename."""
    from dlrm.files import write_json_atomic

    write_json_atomic(path, result)
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> int:
    from dlrm.bench.report import format_result

    if args.backend != "pytorch" and args.action != "run":
        raise ValueError(f"--backend {args.backend} belongs to `dlrm bench` (one run), not "
                         f"`dlrm bench {args.action}`")
    if args.action == "sweep":
        return cmd_sweep(args)
    if args.action == "locality":
        return cmd_locality(args)
    if args.action == "loadgen":
        return cmd_loadgen(args)
    if args.vary:
        raise ValueError("--vary belongs to `dlrm bench sweep`")
    if args.backend == "onnxruntime":
        return cmd_runtimes(args)
    if args.checkpoint:
        raise ValueError("--checkpoint belongs to `dlrm bench loadgen` and `dlrm bench "
                         "--backend onnxruntime`; `dlrm bench` times a model built from the "
                         "flags")
    from dlrm.bench.runner import run_bench

    cfg = bench_config_from_args(args)
    if args.profile and args.data:
        raise ValueError("--profile and --data: give one data source")
    data, label = None, None
    if args.profile:
        data, label = _profile_data(args, cfg), f"profile:{args.profile}"
    elif args.data:
        from dlrm.data import open_data

        data, label = open_data(args.data), args.data
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
        write_json(args.json, result)
    if args.out:
        from dlrm.bench.plots import breakdown_chart, roofline_chart

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if result["ceilings"]:
            roofline_chart(result, out / "roofline.png")
        breakdown_chart([result], [f"{cfg.preset} B={cfg.batch_size}"], out / "breakdown.png")
        print(f"wrote {out / 'roofline.png'} and {out / 'breakdown.png'}")
    return 0


# Flags that shape a model from the preset: a --checkpoint brings its own.
SHAPE_FLAGS = ("model", "embedding_dim", "bottom_mlp", "top_mlp", "interaction", "num_tables",
               "rows_per_table")


def cmd_runtimes(args: argparse.Namespace) -> int:
    """`dlrm bench --backend onnxruntime`: eager PyTorch and ONNX Runtime on the same model
    and batches; exits with an error when their outputs differ by more than 1e-5."""
    from dlrm.bench.runtimes import check_agreement, format_comparison, run_runtime_comparison

    if args.mode == "train":
        raise ValueError("--backend onnxruntime compares inference; --mode train is for "
                         "--backend pytorch")
    for name, given in (("--peer", args.peer), ("--out", args.out)):
        if given:
            raise ValueError(f"{name} belongs to --backend pytorch; --backend onnxruntime "
                             f"prints one table (and --json)")
    if args.profile and args.data:
        raise ValueError("--profile and --data: give one data source")
    cfg = bench_config_from_args(args)
    cfg.mode = "infer"
    model, label = None, None
    if args.checkpoint:
        shaped = [f"--{n.replace('_', '-')}" for n in SHAPE_FLAGS if getattr(args, n)]
        if shaped:
            raise ValueError(f"{', '.join(shaped)}: the model comes from --checkpoint "
                             f"{args.checkpoint}; drop the shape flags")
        model, _ = load_checkpoint_model(args.checkpoint)
        label = str(args.checkpoint)
    data, data_label = None, None
    if args.profile:
        data, data_label = _profile_data(args, cfg), f"profile:{args.profile}"
    elif args.data:
        from dlrm.data import open_data

        data, data_label = open_data(args.data), args.data
    result = run_runtime_comparison(cfg, model=model, data=data, data_label=data_label,
                                    model_label=label, progress=BenchProgress(args.quiet))
    print(format_comparison(result))
    if args.json:
        write_json(args.json, result)
    check_agreement(result)
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    """`dlrm bench loadgen --checkpoint C --scenario Offline|Server`."""
    from dlrm.bench.loadgen import LoadGenConfig, run_loadgen

    if not args.checkpoint:
        raise ValueError("`dlrm bench loadgen` needs --checkpoint (a `dlrm train` last.pt)")
    if args.profile and args.data:
        raise ValueError("--profile and --data: give one data source")
    cfg = LoadGenConfig(
        scenario=args.scenario, batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
        target_qps=args.target_qps, latency_bound_ms=args.latency_bound_ms,
        latency_percentile=args.latency_percentile, min_duration_ms=args.min_duration_ms,
        min_query_count=args.min_query_count, samples=args.samples, split=args.split,
        accuracy=args.accuracy, precision=args.precision, device=args.device,
        threads=args.threads, seed=args.seed)
    data, label = None, None
    if args.data:
        from dlrm.data import open_data

        data, label = open_data(args.data), args.data
    elif args.profile:
        from dlrm.data.profile import ProfileData, load_profile

        profile = load_profile(args.profile)

        def data(model_config: dict) -> ProfileData:  # the model's tables, one split
            return ProfileData(profile, args.samples, seed=args.seed,
                               table_sizes=model_config["table_sizes"],
                               split_fractions=((args.split, 1.0),), locality=args.locality)

        label = f"profile:{args.profile} ({args.locality})"
    out = args.out or f"loadgen-{args.scenario.lower()}"
    result = run_loadgen(args.checkpoint, cfg, out, data=data, data_label=label)
    print(result["line"])
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_locality(args: argparse.Namespace) -> int:
    """`dlrm bench locality --data SRC`: source vs profile-generated vs i.i.d. ids."""
    from dlrm.bench.locality import compare_localities, format_localities
    from dlrm.data import open_data

    if not args.data:
        raise ValueError("`dlrm bench locality` needs --data SRC (the data set to compare with)")
    profile = None
    if args.profile:
        from dlrm.data.profile import load_profile

        profile = load_profile(args.profile)
    cfg = bench_config_from_args(args)
    result = compare_localities(cfg, open_data(args.data), rows=args.profile_rows,
                                profile=profile, rounds=args.rounds, seed=args.seed,
                                progress=BenchProgress(args.quiet))
    print(f"{cfg.preset} {cfg.mode}, B={cfg.batch_size}, {cfg.precision}, data {args.data}")
    print(format_localities(result))
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dlrm.bench.plots import sweep_chart
    from dlrm.bench.sweep import parse_vary, run_sweep, write_csv

    if not args.vary:
        raise ValueError("`dlrm bench sweep` needs --vary NAME=V1,V2,...")
    if args.profile or args.peer or args.data:
        raise ValueError("sweeps run on generated ids; --profile, --data and --peer are for "
                         "one run")
    name, values = parse_vary(args.vary)
    rows, results = run_sweep(bench_config_from_args(args), name, values,
                              progress=BenchProgress(args.quiet))
    out = Path(args.out or "bench-sweep")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"sweep_{name}.csv")
    sweep_chart(rows, results, name, out / f"sweep_{name}.png")
    if args.json:
        write_json(args.json, results)
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
                    "`dlrm bench sweep --vary batch_size=128,512` sweeps one setting; "
                    "`dlrm bench locality --data SRC` times the lookup on SRC, on data drawn "
                    "from its profile and on i.i.d. ids; `dlrm bench loadgen --checkpoint C "
                    "--scenario Offline|Server` runs MLPerf Inference's LoadGen on a model; "
                    "`dlrm bench --backend onnxruntime` runs it in eager PyTorch and ONNX "
                    "Runtime side by side.")
    p.add_argument("action", nargs="?", choices=["run", "sweep", "locality", "loadgen"],
                   default="run")
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)
