"""`dlrm train`, `dlrm eval`, `dlrm convert-reference`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from dlrm.cli.progress import TrainProgress, add_observer_args, fan_out, open_observers


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic:planted",
                   help="synthetic:planted, synthetic:random, or a `dlrm preprocess` folder")
    g.add_argument("--rows-cap", type=int, default=100_000,
                   help="synthetic data: cap on every table's rows (default 100000)")
    g.add_argument("--tables", default=None,
                   help="synthetic data: comma-separated table sizes (default: the preset's)")
    g.add_argument("--zipf", type=float, default=1.1, help="synthetic: id power-law exponent")
    g.add_argument("--train-samples", type=int, default=10_000_000, help="synthetic: train size")
    g.add_argument("--val-samples", type=int, default=100_000, help="synthetic: validation size")
    g.add_argument("--test-samples", type=int, default=0, help="synthetic: test size")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic: generator seed")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="kaggle", choices=["tiny", "kaggle", "terabyte", "mlperf"])
    g.add_argument("--embedding-dim", type=int, default=None, help="D (default: the preset's)")
    g.add_argument("--bottom-mlp", default=None, help="e.g. 512-256-64-16 (ends at D)")
    g.add_argument("--top-mlp", default=None, help="e.g. 512-256-1")
    g.add_argument("--interaction", choices=["dot", "cat"], default=None)
    g.add_argument("--interaction-self", action="store_true")
    # --- issue 7: embedding options (docs/model-options.md) ---
    g = p.add_argument_group("embedding options")
    g.add_argument("--qr-threshold", type=int, default=0,
                   help="quotient-remainder tables for tables above this many rows (0: off)")
    g.add_argument("--qr-collisions", type=int, default=4,
                   help="QR: remainder table rows c (quotient table: ceil(n/c))")
    g.add_argument("--qr-operation", choices=["mult", "add", "concat"], default="mult")
    g.add_argument("--md-alpha", type=float, default=None,
                   help="mixed-dimension tables by the power-law rule, temperature alpha")
    g.add_argument("--md-round-dims", action="store_true",
                   help="mixed dimensions rounded to powers of two")
    g.add_argument("--max-ind-range", type=int, default=0,
                   help="hash ids modulo this many rows at lookup time (0: off)")
    # --- end issue 7 ---


def apply_embedding_options(model_config: dict, args: argparse.Namespace) -> dict:
    """Issue 7: the QR / mixed-dimension / hashing flags written into a DLRMConfig dict."""
    from dlrm.config import DLRMConfig

    for name in ("qr_threshold", "qr_collisions", "qr_operation", "md_alpha", "md_round_dims",
                 "max_ind_range"):
        model_config[name] = getattr(args, name)
    return DLRMConfig.from_dict(model_config).to_dict()  # validates


def lr_schedule_from_args(args: argparse.Namespace) -> dict | None:
    """Issue 7: ``--lr-schedule mlperf`` and its parameters as a TrainConfig.lr_schedule."""
    if args.lr_schedule == "constant":
        return None
    return {"kind": "mlperf", "warmup_steps": args.warmup_steps,
            "decay_start": args.decay_start, "decay_steps": args.decay_steps,
            "end_lr": args.end_lr}


def open_data_from_args(args: argparse.Namespace):
    """The DataSource that --data and the synthetic options describe."""
    from dlrm.config import preset
    from dlrm.data import open_data

    if not args.data.startswith("synthetic:"):
        return open_data(args.data)
    tables = [int(x) for x in args.tables.split(",")] if args.tables \
        else preset(args.preset).table_sizes
    return open_data(args.data, table_sizes=tables, rows_cap=args.rows_cap, zipf=args.zipf,
                     train_samples=args.train_samples, val_samples=args.val_samples,
                     test_samples=args.test_samples, seed=args.data_seed)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.mlperf_log:  # issue 17; checked before any process is launched
        raise ValueError("--mlperf-log: an MLPerf log covers one uninterrupted run; it cannot "
                         "continue a resumed one")
    # --- distributed (issue 6): under torchrun, or --nproc N, train hybrid-parallel ---
    from dlrm.cli.distributed import maybe_train_distributed

    exit_code = maybe_train_distributed(args)
    if exit_code is not None:
        return exit_code
    # --- end distributed ---
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
        config = train_config_from_args(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir) if args.run_dir else Path(args.out) / f"{kind}-{stamp}"
    print_memory_report(kind, model_config, config, args.memory_report)  # issue 7
    with contextlib.ExitStack() as stack:  # issue 17: --mlperf-log, --tensorboard
        observers = open_observers(args, stack, kind, config, data, resume=bool(args.resume))
        summary = train(kind, model_config, data, config, run_dir, resume=bool(args.resume),
                        progress=fan_out(TrainProgress(disable=args.quiet), *observers),
                        extra={"command": " ".join(sys.argv)})
    print_summary(summary)
    return 0


def model_config_from_args(args: argparse.Namespace, data) -> tuple[str, dict]:
    """The model kind and config dict that --model, --preset and the shape flags describe."""
    from dlrm.config import dlrm_config_for_data

    kind = getattr(args, "model", "dlrm")
    if kind == "dlrm":
        if getattr(args, "model_option", None):
            raise ValueError("--model-option is for baselines; DLRM takes --bottom-mlp, "
                             "--top-mlp, --interaction")
        model_config = dlrm_config_for_data(
            args.preset, data.table_sizes, data.num_dense, args.embedding_dim,
            args.bottom_mlp, args.top_mlp, args.interaction, args.interaction_self).to_dict()
        return kind, apply_embedding_options(model_config, args)
    # a baseline (dlrm.models.presets): same preset, D and data shape as DLRM
    from dlrm.models.presets import model_config_for, parse_model_options

    overrides = {"embedding_dim": args.embedding_dim, "bottom_mlp": args.bottom_mlp,
                 "top_mlp": args.top_mlp, **parse_model_options(args.model_option)}
    return kind, model_config_for(kind, args.preset, data.table_sizes, data.num_dense,
                                  overrides)


def train_config_from_args(args: argparse.Namespace):
    """The ``TrainConfig`` that the training flags describe."""
    from dlrm.training.loop import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        sparse_optimizer=args.sparse_optimizer, sparse_lr=args.sparse_lr,
        weight_decay=args.weight_decay, epochs=args.epochs, max_samples=args.max_samples,
        eval_every=args.eval_every, eval_batch_size=args.eval_batch_size,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        patience=args.patience, precision=args.precision, device=args.device,
        threads=args.threads, tune_allocator=args.tune_allocator, seed=args.seed,
        lr_schedule=lr_schedule_from_args(args))


def print_memory_report(kind: str, model_config: dict, config, per_table: bool) -> None:
    """Issue 7: parameter memory (per table with --memory-report, always the total)."""
    if kind != "dlrm":
        return
    from dlrm.config import DLRMConfig
    from dlrm.memory import parameter_memory

    report = parameter_memory(DLRMConfig.from_dict(model_config), config.optimizer,
                              config.sparse_optimizer)
    for line in report.lines(per_table=per_table):
        print(f"memory: {line}")


def print_summary(summary: dict) -> None:
    line = (f"val AUC {summary['val_auc']:.4f}  log loss {summary['val_logloss']:.4f}  "
            f"accuracy {summary['val_accuracy']:.4f}")
    print(line)
    if "optimal_auc" in summary:
        gap = summary["optimal_auc"] - summary["val_auc"]
        print(f"Bayes-optimal AUC {summary['optimal_auc']:.4f}  log loss "
              f"{summary['optimal_logloss']:.4f}  (gap {gap:.4f} AUC)")
    if summary.get("test_auc") is not None:
        print(f"test AUC {summary['test_auc']:.4f}  log loss {summary['test_logloss']:.4f}")
    if summary.get("samples_per_s"):
        print(f"training throughput {summary['samples_per_s']:,.0f} samples/s")
    print(f"run directory: {summary['run_dir']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from dlrm.data import open_data
    from dlrm.training.checkpoint import load_model
    from dlrm.training.loop import evaluate

    if Path(args.checkpoint).is_dir():  # issue 6: a sharded checkpoint folder (RUN_DIR/last)
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
    p = subparsers.add_parser("train", help="train DLRM and report validation metrics")
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("baselines")
    g.add_argument("--model", default="dlrm",
                   choices=["dlrm", "dcn", "dcnv2", "dlrm_dcnv2", "wdl", "deepfm", "lr"],
                   help="model kind (default dlrm); baselines take D from the preset")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="baseline option, e.g. cross_layers=6, deep_mlp=512-256, low_rank=64, "
                   "structure=stacked")
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
    # --- issue 7: lr schedule and memory report ---
    g.add_argument("--lr-schedule", choices=["constant", "mlperf"], default="constant",
                   help="mlperf: linear warmup, constant, then polynomial (power 2) decay")
    g.add_argument("--warmup-steps", type=int, default=0, help="mlperf schedule: warmup steps")
    g.add_argument("--decay-start", type=int, default=0, help="mlperf schedule: decay start step")
    g.add_argument("--decay-steps", type=int, default=0, help="mlperf schedule: decay length")
    g.add_argument("--end-lr", type=float, default=0.0, help="mlperf schedule: lr after decay")
    g.add_argument("--memory-report", action="store_true",
                   help="print parameter memory per table before training (total always)")
    # --- end issue 7 ---
    add_observer_args(p)  # issue 17: --mlperf-log, --tensorboard
    from dlrm.cli.distributed import add_distributed_args  # issue 6: --nproc, --placement

    add_distributed_args(p)
    p.set_defaults(func=cmd_train)

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
