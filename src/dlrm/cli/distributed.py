"""Distributed `dlrm train` (under torchrun, or `--nproc N`) and `dlrm plan`.

``dlrm train`` calls ``maybe_train_distributed`` first: inside torchrun (RANK/WORLD_SIZE set)
it trains with ``dlrm.distributed``; with ``--nproc N > 1`` it relaunches itself through
torchrun on N local processes (``--resume RUN_DIR`` of a distributed run continues it on any
number of processes, 1 without ``--nproc``); otherwise it returns None and the
single-process path runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from dlrm.cli.progress import fan_out, open_observers


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (hybrid parallel; see docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=None,
                   help="train on N local processes (relaunches through torchrun); under "
                        "torchrun itself this is not needed")
    g.add_argument("--placement", choices=["auto", "table", "row", "replicated"],
                   default="auto", help="embedding placement across ranks (default auto)")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a rank that dies or hangs ends the job after at most this long")


def _argv_without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def maybe_train_distributed(args: argparse.Namespace) -> int | None:
    """Run distributed training if asked for (exit code), else None."""
    from dlrm.distributed.launch import in_torchrun, launch_local

    if in_torchrun():
        return _train_under_torchrun(args)
    if args.nproc is not None and args.nproc > 1:
        return launch_local(args.nproc, _argv_without_nproc(sys.argv[1:]))
    if args.resume and (Path(args.resume) / "last" / "meta.pt").is_file():
        # A distributed run resumed without --nproc: continue it on one process.
        return launch_local(1, _argv_without_nproc(sys.argv[1:]))
    return None


def _rank0_progress(rank: int, quiet: bool):
    """Progress callback: rank 0 prints the plan and draws the bar; other ranks stay quiet."""
    from dlrm.cli.progress import TrainProgress

    bar = TrainProgress(disable=quiet or rank != 0)

    def progress(event: dict) -> None:
        if rank != 0:
            return
        if event["event"] == "plan":
            print(event["plan"], file=sys.stderr, flush=True)
        else:
            bar(event)

    return progress


def _train_under_torchrun(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from dlrm.cli.train import (
        model_config_from_args,
        open_data_from_args,
        print_summary,
        train_config_from_args,
    )
    from dlrm.data import open_data
    from dlrm.distributed.launch import distributed_session
    from dlrm.distributed.train import train_distributed
    from dlrm.training.loop import TrainConfig

    # A resumed run keeps its own settings, the device included; any number of ranks may
    # continue it.
    saved = json.loads((Path(args.resume) / "config.json").read_text()) if args.resume else None
    device = saved["train"]["device"] if saved else args.device
    with distributed_session(timeout_s=args.dist_timeout, device=device,
                             threads=args.threads) as session, contextlib.ExitStack() as stack:
        def progress(config: TrainConfig, data, resume: bool = False):  # issue 17: observers
            observers = open_observers(args, stack, "dlrm", config, data, resume) \
                if session.rank == 0 else []  # rank 0 writes the log / events
            return fan_out(_rank0_progress(session.rank, args.quiet), *observers)

        if saved:
            data = open_data(saved["data"])
            config = TrainConfig(**saved["train"])
            summary = train_distributed(
                saved["model_config"], data, config, args.resume,
                placement=saved["placement"], resume=True, watchdog=session.watchdog,
                progress=progress(config, data, resume=True),
                extra={"command": " ".join(sys.argv)})
            if session.rank == 0:
                print_summary(summary)
            return 0
        data = open_data_from_args(args)
        kind, model_config = model_config_from_args(args, data)
        if kind != "dlrm" or any(model_config.get(k) for k in (
                "qr_threshold", "md_alpha", "max_ind_range")):
            raise ValueError("hybrid-parallel training shards plain DLRM tables; --model "
                             "baselines and QR / mixed-dimension / hashed embeddings run in "
                             "one process (drop --nproc)")
        config = train_config_from_args(args)
        stamp = [time.strftime("%Y%m%d-%H%M%S")]
        dist.broadcast_object_list(stamp, src=0)  # one run directory for all ranks
        run_dir = Path(args.run_dir) if args.run_dir else Path(args.out) / f"dlrm-{stamp[0]}"
        summary = train_distributed(
            model_config, data, config, run_dir, placement=args.placement,
            watchdog=session.watchdog, progress=progress(config, data),
            extra={"command": " ".join(sys.argv)})
        if session.rank == 0:
            print_summary(summary)
            print(f"{session.world_size} ranks: all-to-all {summary['all_to_all_seconds']:.2f} s,"
                  f" all-reduce {summary['all_reduce_seconds']:.2f} s of "
                  f"{summary['train_seconds']:.2f} s training (rank 0)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from dlrm.config import preset
    from dlrm.distributed.planner import plan_tables

    tables = [int(x) for x in args.tables.split(",")] if args.tables else None
    cfg = preset(args.preset, table_sizes=tables, rows_cap=args.rows_cap)
    dim = args.embedding_dim or cfg.embedding_dim
    budget = int(args.max_gib_per_rank * 2**30) if args.max_gib_per_rank else None
    print(plan_tables(cfg.table_sizes, dim, args.nproc, args.placement,
                      replicate_max_rows=args.replicate_max_rows, max_bytes_per_rank=budget))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="print how embedding tables would be placed on N "
                                           "ranks")
    p.add_argument("--preset", default="kaggle", choices=["tiny", "kaggle", "terabyte", "mlperf"])
    p.add_argument("--tables", default=None, help="comma-separated table sizes")
    p.add_argument("--rows-cap", type=int, default=None, help="cap on every table's rows")
    p.add_argument("--embedding-dim", type=int, default=None)
    p.add_argument("--nproc", type=int, default=2, help="number of ranks")
    p.add_argument("--placement", choices=["auto", "table", "row", "replicated"], default="auto")
    p.add_argument("--replicate-max-rows", type=int, default=64)
    p.add_argument("--max-gib-per-rank", type=float, default=None,
                   help="embedding memory per rank; tables over half of it go row-wise")
    p.set_defaults(func=cmd_plan)
