"""`dlrm compare`: several model kinds on the same data, budget and seeds; a table and a plot."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from dlrm.cli.common import (
    TrainProgress,
    add_data_args,
    add_observer_args,
    fan_out,
    finish_settings,
    open_data_from_args,
    open_observers,
    resolve_settings,
)
from dlrm.config import PRESETS


class CompareProgress:
    """One training bar per (model, optimizer, seed) run, labelled with the run."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.current: TrainProgress | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self.current = TrainProgress(disable=self.disable)
            self.current(event)
            if self.current.bar is not None:
                self.current.bar.set_description(
                    f"[{event['run_index'] + 1}/{event['runs']}] {event['run']}")
        elif self.current is not None:
            self.current(event)


def cmd_compare(args: argparse.Namespace) -> int:
    from dlrm.compare import CompareConfig, compare, paper_config
    from dlrm.training.run_dir import new_run_dir

    resolve_settings(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    optimizers = args.optimizers.split(",") if args.optimizers else None
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes else None
    lr = {}
    for item in args.lr or []:
        name, _, value = item.partition("=")
        lr[name] = float(value)
    common = {"models": models, "budget": args.budget, "seeds": args.seeds,
              "embedding_dim": args.embedding_dim, "optimizers": optimizers,
              "batch_size": args.batch_size, "epochs": args.epochs, "lr": lr or None,
              "precision": args.precision, "threads": args.threads,
              "curve_points": args.curve_points, "recipes": recipes,
              "against": args.against, "ensemble": args.ensemble or None}
    if args.paper:
        config = paper_config(**{k: v for k, v in common.items() if v is not None})
    else:
        from dlrm.models import model_kinds

        defaults = {"models": [k for k in model_kinds() if k != "dlrm_dcnv2"],
                    "preset": args.preset}
        config = CompareConfig(**{**defaults, **{k: v for k, v in common.items()
                                                 if v is not None}})
    args.preset = config.preset  # the synthetic tables follow the preset
    data = open_data_from_args(args)
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        raise ValueError(f"--out {args.out} is not empty; a comparison writes a new or empty "
                         f"folder (choose another --out, or leave it out for a new one)")
    out = Path(args.out) if args.out else new_run_dir(args.runs_root, "compare")
    with contextlib.ExitStack() as stack:  # --tensorboard: one folder per run
        observers = open_observers(args, stack, "", None, data)
        results = compare(data, config, out,
                          progress=fan_out(CompareProgress(disable=args.quiet), *observers))
    print((out / "results.md").read_text(), end="")
    print(f"wrote {out}/results.md, {out}/auc_curve.png, {out}/results.json")
    return 0 if results["rows"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="train several models on the same data, budget and seeds; tabulate")
    add_data_args(p)
    from dlrm.models import model_kinds

    p.add_argument("--models", default=None,
                   help=f"comma-separated kinds: {','.join(model_kinds())} "
                   "(default: all but dlrm_dcnv2)")
    p.add_argument("--paper", action="store_true",
                   help="the DLRM paper's setting: DLRM vs DCN (6 cross layers, deep 512-256),"
                   " D=16, one epoch, once with SGD and once with Adagrad")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="DLRM preset that sizes every model (D, deep widths)")
    p.add_argument("--embedding-dim", type=int, default=None, help="D for every model")
    p.add_argument("--budget", type=int, default=None,
                   help="training samples per run (default: --epochs passes over the train split)")
    p.add_argument("--seeds", type=int, default=None, help="runs per model (default 3)")
    p.add_argument("--optimizers", default=None, help="e.g. sgd,adagrad (default adagrad)")
    p.add_argument("--recipes", default=None, metavar="NAMES",
                   help="instead of --optimizers: train every model with its own recipe of "
                        "each name (small: tuned by `dlrm tune` on this data's data set where "
                        "there is such a recipe, else on Criteo's; small-avazu etc.: the one "
                        "tuned on that data set; reference; auto), e.g. small,reference")
    p.add_argument("--against", default=None, metavar="KIND[:SETTING]",
                   help="the row the others are tested against on the same rows (paired AUC "
                        "difference, its SE and p), e.g. lr or dlrm:small (default: lr when "
                        "it runs, else the first row)")
    p.add_argument("--ensemble", action="store_true",
                   help="also score each row's seeds as one model (the mean of their click "
                        "probabilities), with its validation AUC and a paired test")
    p.add_argument("--lr", action="append", metavar="OPT=LR",
                   help="learning rate of an optimizer, e.g. --lr adagrad=0.02")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="passes when no --budget (default 1)")
    p.add_argument("--curve-points", type=int, default=None,
                   help="evaluations per run for the AUC curve (default 8)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the output folder: results and one run directory per run, new or "
                        "empty (default: a new RUNS_ROOT/compare-YYYYmmdd-HHMMSS)")
    p.add_argument("--runs-root", default="runs", metavar="DIR",
                   help="where a compare without --out gets its new folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_observer_args(p, mlperf=False)
    finish_settings(p)
    p.set_defaults(func=cmd_compare)

