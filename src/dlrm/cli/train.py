"""`dlrm train` (one process, `--nproc N` local processes, or under torchrun), `dlrm eval`,
`dlrm convert-reference`.

Under torchrun (RANK/WORLD_SIZE set) `dlrm train` trains hybrid-parallel with
``dlrm.distributed``; with ``--nproc N > 1`` it relaunches itself through torchrun on N local
processes (``--resume RUN_DIR`` of a distributed run continues it on any number of processes,
1 without ``--nproc``); otherwise it trains in this process. Every model kind and option runs
either way, with the same weights for the same seed.

Settings (data, model, training and placement flags) come from the command line, else from
``--config FILE`` (any run's ``config.json``, or a JSON object of flag names), else their
defaults; every run records them in its ``config.json`` (``args``). ``--resume RUN`` takes
RUN's own settings and refuses flags that would change them, except a longer run
(``--epochs``, ``--max-samples``), speed-only ones (``--threads``, ``--no-tune-allocator``) and
the data set's new location (``--data``, when it is the same data set); those are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrm.cli.common import (
    TrainProgress,
    add_checkpoint_io_args,
    add_data_args,
    add_deprecated_alias,
    add_model_args,
    add_observer_args,
    add_setting,
    add_training_args,
    apply_recipe,
    check_new_output,
    data_for_checkpoint,
    fan_out,
    finish_settings,
    flag,
    load_checkpoint_model,
    model_config_from_args,
    open_data_from_args,
    open_observers,
    print_summary,
    read_config_file,
    resolve_settings,
    settings_of,
    take_legacy_positionals,
    train_config_from_args,
)
from dlrm.training.loop import RESUMABLE_CHANGES

# Settings a resumed run may change (recorded in its config.json): the loop's (a longer run,
# speed-only settings) and the data set's location (the loop checks it is the same data set).
RESUME_MAY_CHANGE = (*RESUMABLE_CHANGES, "data")


def cmd_train(args: argparse.Namespace) -> int:
    from dlrm.distributed.launch import in_torchrun, launch_local
    from dlrm.training.run_dir import check_usable

    record, changes = None, {}
    if args.resume and args.mlperf_log:  # checked before any process is launched
        raise ValueError("--mlperf-log: an MLPerf log covers one uninterrupted run; it cannot "
                         "continue a resumed one")
    if args.resume:
        if args.config:
            raise ValueError("--config starts a new run; --resume RUN continues RUN with "
                             "its own settings (start a new run from them with "
                             f"--config {Path(args.resume) / 'config.json'})")
        if args.out:
            raise ValueError("--resume RUN continues RUN in place; --out names a new run")
        from dlrm.training.run_dir import read_record

        record = read_record(args.resume)
        changes = resume_flag_changes(args, record)
    else:
        base = read_config_file(args.config) if args.config else None
        resolve_settings(args, base, where=f"--config {args.config}")
    distributed_run = record is not None and "placement" in record
    if record is not None and not distributed_run and (
            in_torchrun() or (args.nproc or 1) > 1):
        raise ValueError(f"--resume {args.resume}: a run trained in one process continues in "
                         f"one process (leave out --nproc and torchrun)")
    if in_torchrun():
        return _train_under_torchrun(args, record, changes)
    if args.nproc is not None and args.nproc > 1:
        if args.out:  # refused here rather than by every rank after starting them
            check_usable(args.out, resume=False)
        from dlrm.training.loop import check_distributable

        check_distributable(getattr(args, "optimizer", None))  # refused before any rank starts
        return launch_local(args.nproc, _argv_without_nproc(args.argv))
    if distributed_run:
        # A distributed run resumed without --nproc: continue it on one process.
        check_usable(args.resume, resume=True)
        return launch_local(1, _argv_without_nproc(args.argv))
    from dlrm.training.loop import train

    session = _session(args, record, changes)
    print_memory_report(session.kind, session.model_config, session.config,
                        args.memory_report)
    try:
        with contextlib.ExitStack() as stack:  # --mlperf-log, --tensorboard
            observers = open_observers(args, stack, session.kind, session.config,
                                       session.data, resume=bool(args.resume))
            summary = train(session.kind, session.model_config, session.data, session.config,
                            session.run_dir, resume=bool(args.resume),
                            progress=fan_out(TrainProgress(disable=args.quiet), *observers),
                            extra=_extra(args))
    except BaseException as err:
        from dlrm.training.run_dir import CONFIG_NAME, discard_if_unused

        if session.made_here:
            discard_if_unused(session.run_dir)  # refused before writing: no empty folder
        if isinstance(err, KeyboardInterrupt) and \
                (session.run_dir / CONFIG_NAME).is_file():
            print(f"the run is in {session.run_dir}; continue it with: dlrm train --resume "
                  f"{session.run_dir}", file=sys.stderr)
        raise
    _print_outcome(summary, args)
    return 0


@dataclass
class _Session:
    """What this invocation trains: a new run (from the settings) or a resumed one."""

    data: Any
    kind: str
    model_config: dict[str, Any]
    config: Any
    run_dir: Path
    made_here: bool = False  # a new directory made for this run (removed if refused)


def _session(args: argparse.Namespace, record: dict[str, Any] | None,
             changes: dict[str, Any]) -> _Session:
    from dlrm.data import open_data
    from dlrm.training.loop import TrainConfig, check_before_training
    from dlrm.training.run_dir import new_run_dir

    if record is not None:  # the run's own settings and the accepted changes
        data = open_data(args.data if "data" in changes else record["data"])
        config = TrainConfig(**{**record["train"],
                                **{k: v for k, v in changes.items() if k != "data"}})
        return _Session(data, record.get("model_kind", "dlrm"), record["model_config"],
                        config, Path(args.resume))
    data = open_data_from_args(args)
    apply_recipe(args, data)
    kind, model_config = model_config_from_args(args, data)
    config = train_config_from_args(args)
    check_before_training(data, config)  # before a run directory is made for it
    if args.out:
        return _Session(data, kind, model_config, config, Path(args.out))
    return _Session(data, kind, model_config, config, new_run_dir(args.runs_root, kind),
                    made_here=True)


def _extra(args: argparse.Namespace) -> dict[str, Any]:
    return {"command": shlex.join(["dlrm", *args.argv]), "args": settings_of(args)}


def _print_outcome(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print_summary(summary)
    if summary.get("already_finished"):
        run = summary["run_dir"]
        if summary.get("stopped_early"):
            print(f"{run} stopped early at step {summary['steps']} (summary above); nothing "
                  f"to do, nothing changed")
        else:
            print(f"{run} finished at step {summary['steps']} of {summary['total_steps']} "
                  f"(summary above); nothing to do, nothing changed. To train longer: dlrm "
                  f"train --resume {run} with a larger --epochs (and --max-samples, which "
                  f"also ends a run)")


def resume_flag_changes(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """Fill the settings from the run's own (``config.json``'s ``args``) and return the
    changes the given flags make; refuse (``ValueError`` listing them) those that would make
    it another run."""
    run = Path(args.resume)
    saved = record.get("args")
    given = resolve_settings(args, saved or {}, where=str(run / "config.json"))
    changes, refused = {}, []
    for dest in sorted(given):
        now = getattr(args, dest)
        if saved is not None and saved.get(dest) == now:
            continue  # the run's own value: no change
        if dest in RESUME_MAY_CHANGE:
            changes[dest] = now
            continue
        was = f" (the run has {saved.get(dest)!r})" if saved is not None else ""
        refused.append(f"{flag(dest)} {now!r}{was}")
    if refused:
        older = "" if saved is not None else " (an older run that records no flags)"
        raise ValueError(
            f"--resume {run}{older}: {', '.join(refused)} would change the run; a resumed run "
            f"keeps its settings and may only run longer (--epochs, --max-samples), faster "
            f"(--threads, --no-tune-allocator) or read its data set from a new place (--data)."
            f" For other settings start a new run from this one's: dlrm train --config "
            f"{run / 'config.json'} " + " ".join(f"{flag(d)} ..." for d in sorted(given)
                                                 if d not in RESUME_MAY_CHANGE))
    return changes


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


def _train_under_torchrun(args: argparse.Namespace, record: dict[str, Any] | None,
                          changes: dict[str, Any]) -> int:
    from dlrm.distributed.launch import distributed_session
    from dlrm.training.run_dir import WriterFailed

    # A resumed run keeps its own settings, the device included; any number of ranks may
    # continue it.
    device = record["train"]["device"] if record else args.device
    with distributed_session(timeout_s=args.dist_timeout, device=device,
                             threads=args.threads) as session, contextlib.ExitStack() as stack:
        try:
            summary = _train_on_rank(args, record, changes, session, stack)
        except WriterFailed:
            if session.rank == 0:
                raise
            return 2  # rank 0 refused the run directory and says why; the others stop quietly
        if session.rank == 0:
            _print_outcome(summary, args)
            if not summary.get("already_finished"):
                print(f"{session.world_size} ranks: all-to-all "
                      f"{summary['all_to_all_seconds']:.2f} s, all-reduce "
                      f"{summary['all_reduce_seconds']:.2f} s of "
                      f"{summary['train_seconds']:.2f} s training (rank 0)")
    return 0


def _train_on_rank(args: argparse.Namespace, record: dict[str, Any] | None,
                   changes: dict[str, Any], session: Any,
                   stack: contextlib.ExitStack) -> dict[str, Any]:
    """This rank's part of a new or resumed distributed run; the summary. Rank 0 also feeds
    the observers (``--mlperf-log``, ``--tensorboard``), entered on ``stack``."""
    import torch.distributed as dist

    from dlrm.data import open_data
    from dlrm.distributed.train import train_distributed
    from dlrm.training.loop import TrainConfig
    from dlrm.training.run_dir import new_run_dir

    if args.nproc is not None and args.nproc != session.world_size:
        raise ValueError(f"--nproc {args.nproc}: this torchrun job has {session.world_size} "
                         f"processes (leave --nproc out under torchrun)")

    def progress(kind: str, config: Any, data: Any, resume: bool = False):
        observers = open_observers(args, stack, kind, config, data, resume) \
            if session.rank == 0 else []  # rank 0 writes the log and the events
        return fan_out(_rank0_progress(session.rank, args.quiet), *observers)

    if record is not None:
        data = open_data(args.data if "data" in changes else record["data"])
        config = TrainConfig(**{**record["train"],
                                **{k: v for k, v in changes.items() if k != "data"}})
        kind = record.get("model_kind", "dlrm")
        return train_distributed(
            kind, record["model_config"], data, config, args.resume,
            placement=record["placement"], resume=True, watchdog=session.watchdog,
            progress=progress(kind, config, data, resume=True), extra=_extra(args))
    data = open_data_from_args(args)
    apply_recipe(args, data)
    kind, model_config = model_config_from_args(args, data)
    config = train_config_from_args(args)
    # One new run directory for all ranks, made by rank 0.
    box = [args.out or (str(new_run_dir(args.runs_root, kind)) if session.rank == 0 else None)]
    dist.broadcast_object_list(box, src=0)
    return train_distributed(
        kind, model_config, data, config, box[0], placement=args.placement,
        init_checkpoint=args.init_checkpoint, watchdog=session.watchdog,
        progress=progress(kind, config, data), extra=_extra(args))


def print_memory_report(kind: str, model_config: dict, config, per_table: bool) -> None:
    """Parameter memory of any model kind (per table with --memory-report, always the
    total)."""
    from dlrm.models.memory import parameter_memory

    report = parameter_memory(kind, model_config, config.optimizer, config.sparse_optimizer)
    for line in report.lines(per_table=per_table):
        print(f"memory: {line}")


def cmd_eval(args: argparse.Namespace) -> int:
    from dlrm.training.loop import evaluate

    model, ckpt = load_checkpoint_model(args.checkpoint, args.device)
    data = data_for_checkpoint(ckpt, args.checkpoint, args.data, args.allow_data_mismatch)
    train_cfg = ckpt.get("train_config") or {}
    batch_size = args.eval_batch_size or train_cfg.get("eval_batch_size", 8192)
    metrics = evaluate(model, data, args.split, batch_size,
                       train_cfg.get("precision", "fp32"), args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from dlrm.compat import convert_reference_checkpoint

    take_legacy_positionals(args)
    check_new_output(args)
    info = convert_reference_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: {info}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model and report validation metrics",
        description="Train any model kind on synthetic data or a `dlrm preprocess` folder; "
                    "the run directory gets config.json, metrics.jsonl, checkpoints and "
                    "summary.json. Settings: flags, else --config FILE, else defaults.")
    add_data_args(p)
    add_model_args(p)
    add_training_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="settings of a new run: a run's config.json or a JSON object of flag "
                        "names; flags given override it")
    g.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="the run directory, new or empty (default: a new "
                        "RUNS_ROOT/MODEL-YYYYmmdd-HHMMSS)")
    g.add_argument("--runs-root", default="runs", metavar="DIR",
                   help="where runs without --out get their new directory")
    add_deprecated_alias(g, "--run-dir", "--out", dest="out")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its own "
                        "settings")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting(g, "--recipe", default=None, metavar="NAME",
                help="train as recipe NAME of the model kind (dlrm.training.recipes): "
                     "reference (the reference DLRM's SGD recipe), small (tuned by `dlrm "
                     "tune` on a small sample of this data's data set where there is one, "
                     "else on Criteo's), small-DATASET (the one tuned on DATASET: "
                     "small-criteo-tsv, small-criteo-tsv-buckets, small-avazu, "
                     "small-movielens-100k), auto (by the "
                     "training split's size), or a recipe.json; settings given as flags or "
                     "by --config win over it")
    g.add_argument("--memory-report", action="store_true",
                   help="print parameter memory per table before training (total always)")
    g = p.add_argument_group("distributed (hybrid parallel; see docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="number of processes (ranks): N local processes through torchrun; "
                        "under torchrun it is its job's size")
    add_setting(g, "--placement", choices=["auto", "table", "row", "replicated"],
                default="auto", help="embedding placement across ranks")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a rank that dies or hangs ends the job after at most this long")
    add_setting(g, "--init-checkpoint", default=None, metavar="PATH",
                help="distributed: start from this checkpoint's weights (a sharded folder "
                     "or a single-process .pt of the same model)")
    add_observer_args(p)  # plain flags: neither recorded as settings nor compared on resume
    finish_settings(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on its data (or --data)",
        description="Exact AUC, log loss and accuracy of a checkpoint on a split of the data "
                    "set it was trained on (another data set is refused unless "
                    "--allow-data-mismatch).")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a checkpoint file (RUN/last.pt) or a sharded folder (RUN/last)")
    p.add_argument("--data", default=None,
                   help="the data set (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="train, val or test")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="default: the run's (metrics are reproducible with the same one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="evaluate on a data set other than the model's own")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("convert-reference",
                              help="convert a facebookresearch/dlrm checkpoint")
    add_checkpoint_io_args(p, "the facebookresearch/dlrm checkpoint",
                           "our checkpoint to write")
    p.set_defaults(func=cmd_convert)
