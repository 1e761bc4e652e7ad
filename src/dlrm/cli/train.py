"""`dlrm train` (one process, `--nproc N` local processes, or under torchrun), `dlrm eval`,
`dlrm convert-reference`.

Under torchrun (RANK/WORLD_SIZE set) `dlrm train` trains hybrid-parallel with
``dlrm.distributed``; with ``--nproc N > 1`` it relaunches itself through torchrun on N local
processes (``--resume RUN_DIR`` of a distributed run continues it on any number of processes,
1 without ``--nproc``); otherwise it trains in this process. Every model kind and option runs
either way, with the same weights for the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dlrm.cli.common import (
    TrainProgress,
    add_data_args,
    add_model_args,
    model_config_from_args,
    open_data_from_args,
    print_summary,
    train_config_from_args,
)


def cmd_train(args: argparse.Namespace) -> int:
    from dlrm.distributed.launch import in_torchrun, launch_local

    if in_torchrun():
        return _train_under_torchrun(args)
    if args.nproc is not None and args.nproc > 1:
        return launch_local(args.nproc, _argv_without_nproc(sys.argv[1:]))
    if args.resume and (Path(args.resume) / "last" / "meta.pt").is_file():
        # A distributed run resumed without --nproc: continue it on one process.
        return launch_local(1, _argv_without_nproc(sys.argv[1:]))
    from dlrm.training import checkpoint as ckpt_io
    from dlrm.training.loop import TrainConfig, train

    if args.resume:
        run_dir = Path(args.resume)
        saved = ckpt_io.load(run_dir / "last.pt")
        from dlrm.data import open_data

        data = open_data(saved["data_spec"])
        config = TrainConfig(**saved["train_config"])
        kind, model_config = saved["model_kind"], saved["model_config"]
    else:
        data = open_data_from_args(args)
        kind, model_config = model_config_from_args(args, data)
        config = train_config_from_args(args, data)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir) if args.run_dir else Path(args.out) / f"{kind}-{stamp}"
    print_memory_report(kind, model_config, config, args.memory_report)
    summary = train(kind, model_config, data, config, run_dir, resume=bool(args.resume),
                    progress=TrainProgress(disable=args.quiet),
                    extra={"command": " ".join(sys.argv)})
    print_summary(summary)
    return 0


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


def _rank0_progress(rank: int, quiet: bool):
    """Progress callback: rank 0 prints the plan and draws the bar; other ranks stay quiet."""
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

    from dlrm.data import open_data
    from dlrm.distributed.launch import distributed_session
    from dlrm.distributed.train import train_distributed
    from dlrm.training.loop import TrainConfig

    # A resumed run keeps its own settings, the device included; any number of ranks may
    # continue it.
    saved = json.loads((Path(args.resume) / "config.json").read_text()) if args.resume else None
    device = saved["train"]["device"] if saved else args.device
    with distributed_session(timeout_s=args.dist_timeout, device=device,
                             threads=args.threads) as session:
        progress = _rank0_progress(session.rank, args.quiet)
        if saved:
            data = open_data(saved["data"])
            summary = train_distributed(
                saved.get("model_kind", "dlrm"), saved["model_config"], data,
                TrainConfig(**saved["train"]), args.resume, placement=saved["placement"],
                resume=True, watchdog=session.watchdog, progress=progress,
                extra={"command": " ".join(sys.argv)})
        else:
            data = open_data_from_args(args)
            kind, model_config = model_config_from_args(args, data)
            config = train_config_from_args(args, data)
            stamp = [time.strftime("%Y%m%d-%H%M%S")]
            dist.broadcast_object_list(stamp, src=0)  # one run directory for all ranks
            run_dir = Path(args.run_dir) if args.run_dir else \
                Path(args.out) / f"{kind}-{stamp[0]}"
            summary = train_distributed(
                kind, model_config, data, config, run_dir, placement=args.placement,
                init_checkpoint=args.init_checkpoint, watchdog=session.watchdog,
                progress=progress, extra={"command": " ".join(sys.argv)})
        if session.rank == 0:
            print_summary(summary)
            print(f"{session.world_size} ranks: all-to-all {summary['all_to_all_seconds']:.2f} s,"
                  f" all-reduce {summary['all_reduce_seconds']:.2f} s of "
                  f"{summary['train_seconds']:.2f} s training (rank 0)")
    return 0


def print_memory_report(kind: str, model_config: dict, config, per_table: bool) -> None:
    """Parameter memory of any model kind (per table with --memory-report, always the
    total)."""
    from dlrm.models.memory import parameter_memory

    report = parameter_memory(kind, model_config, config.optimizer, config.sparse_optimizer)
    for line in report.lines(per_table=per_table):
        print(f"memory: {line}")


def cmd_eval(args: argparse.Namespace) -> int:
    from dlrm.data import open_data
    from dlrm.training.checkpoint import load_model
    from dlrm.training.loop import evaluate

    if Path(args.checkpoint).is_dir():  # a sharded checkpoint folder (RUN_DIR/last)
        from dlrm.distributed.checkpoint import load_single_process

        model, ckpt = load_single_process(args.checkpoint)
        model.to(args.device)
    else:
        model, ckpt = load_model(args.checkpoint, args.device)
    data = open_data(args.data) if args.data else open_data(ckpt["data_spec"])
    train_cfg = ckpt["train_config"]
    metrics = evaluate(model, data, args.split, train_cfg["eval_batch_size"],
                       train_cfg["precision"], args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from dlrm.compat import convert_reference_checkpoint

    info = convert_reference_checkpoint(args.input, args.output)
    print(f"wrote {args.output}: {info}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model and report validation metrics")
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--optimizer", choices=["sgd", "adagrad", "adam"], default="sgd")
    g.add_argument("--sparse-optimizer", choices=["sgd", "rowwise_adagrad"], default=None)
    g.add_argument("--sparse-lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-samples", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations")
    g.add_argument("--eval-batch-size", type=int, default=8192)
    g.add_argument("--checkpoint-every", type=int, default=0)
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--patience", type=int, default=0, help="early stopping, in evaluations")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                   help="leave glibc malloc's defaults (see dlrm.allocator)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs", help="parent folder of run directories")
    g.add_argument("--run-dir", default=None, help="exact run directory (overrides --out)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--lr-schedule", choices=["constant", "mlperf"], default="constant",
                   help="mlperf: linear warmup, constant, then polynomial (power 2) decay")
    g.add_argument("--warmup-steps", type=int, default=0, help="mlperf schedule: warmup steps")
    g.add_argument("--decay-start", type=int, default=0, help="mlperf schedule: decay start step")
    g.add_argument("--decay-steps", type=int, default=0, help="mlperf schedule: decay length")
    g.add_argument("--end-lr", type=float, default=0.0, help="mlperf schedule: lr after decay")
    g.add_argument("--recipe", default=None, metavar="NAME",
                   help="train as recipe NAME of the model kind (dlrm.training.recipes): "
                        "reference (the reference DLRM's SGD recipe), small (tuned by `dlrm "
                        "tune` on ~10k rows), auto (by the training split's size); flags given "
                        "explicitly win over it")
    g.add_argument("--memory-report", action="store_true",
                   help="print parameter memory per table before training (total always)")
    g = p.add_argument_group("distributed (hybrid parallel; see docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=None,
                   help="train on N local processes (relaunches through torchrun); under "
                        "torchrun itself this is not needed")
    g.add_argument("--placement", choices=["auto", "table", "row", "replicated"],
                   default="auto", help="embedding placement across ranks (default auto)")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a rank that dies or hangs ends the job after at most this long")
    g.add_argument("--init-checkpoint", default=None, metavar="PATH",
                   help="distributed: start from this checkpoint's weights (a sharded folder "
                        "or a single-process .pt of the same model)")
    p.set_defaults(func=cmd_train, flag_defaults={a.dest: a.default for a in p._actions})

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on its data (or --data)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("convert-reference",
                              help="convert a facebookresearch/dlrm checkpoint")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=cmd_convert)
