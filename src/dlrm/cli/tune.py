"""`dlrm tune`: an Optuna study of one model kind's hyperparameters on validation AUC."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
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


class TuneProgress:
    """A training bar per trial, and one line per finished trial with the best so far."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: TrainProgress | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "trial_start":
            self.bar = TrainProgress(disable=self.disable)
        elif kind == "trial_end":
            if self.bar is not None and self.bar.bar is not None:
                self.bar.bar.close()
            value = "" if event["value"] is None else f" val AUC {event['value']:.4f}"
            best = "" if event["best_value"] is None else \
                f"; best {event['best_value']:.4f} (trial {event['best_trial']})"
            print(f"trial {event['trial']}: {event['state'].lower()}{value}{best}",
                  file=sys.stderr, flush=True)
        elif self.bar is not None and not self.disable:
            if kind == "start":
                self.bar(event)
                if self.bar.bar is not None:
                    self.bar.bar.set_description(f"trial {event['trial']}")
            elif kind in ("step", "eval", "end"):
                self.bar(event)


def cmd_tune(args: argparse.Namespace) -> int:
    from dlrm.models import parse_model_options
    from dlrm.tune import TuneConfig, trial_observer, tune

    resolve_settings(args)  # the data flags: given, else their defaults
    space = json.loads(Path(args.space).read_text()) if args.space else None
    config = TuneConfig(
        model=args.model, preset=args.preset,
        model_options=parse_model_options(args.model_option), space=space,
        trials=args.trials if args.trials is not None else (None if args.timeout else 20),
        timeout_s=args.timeout, epochs=args.epochs,
        evals_per_epoch=args.evals_per_epoch, patience=args.patience,
        max_samples=args.max_samples, seed=args.seed, seeds=args.seeds_per_trial,
        pruner=args.pruner,
        startup_trials=args.startup_trials, threads=args.threads,
        keep_checkpoints=args.keep_checkpoints)
    data = open_data_from_args(args)
    with contextlib.ExitStack() as stack:  # --tensorboard: a folder per trial
        observers = [trial_observer(tb) for tb in open_observers(args, stack, args.model,
                                                                  None, data)]
        summary = tune(data, config, args.out,
                       progress=fan_out(TuneProgress(disable=args.quiet), *observers))
    out = Path(args.out)
    print((out / "trials.md").read_text(), end="")
    if summary["best"] is None:
        print("no trial completed", file=sys.stderr)
        return 1
    print(f"wrote {out}/trials.md, trials.csv, trials.png, recipe.json and best_config.json "
          f"(train it with: dlrm train --config {out}/best_config.json)")
    return 0


def _study_default(name: str) -> str:
    """A study setting's default as help text: the general one (``STUDY_DEFAULTS``), then the
    kinds that set their own (``ModelSpec.tune_settings``)."""
    from dlrm.models import get_spec, model_kinds
    from dlrm.tune import STUDY_DEFAULTS

    own = [f"{kind}: {get_spec(kind).tune_settings[name]}" for kind in model_kinds()
           if name in get_spec(kind).tune_settings]
    return "; ".join([f"default {STUDY_DEFAULTS[name]}", *own])


def register(subparsers: argparse._SubParsersAction) -> None:
    from dlrm.models import model_kinds

    p = subparsers.add_parser(
        "tune", help="search a model's training recipe on validation AUC (Optuna)",
        description="An Optuna study (TPE sampler, median pruning) of one model kind's "
        "search space; objective: the best validation AUC of a trial (test rows are never "
        "read). The study is stored in OUT/study.db: the same command again continues it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(p)
    p.add_argument("--model", default="dlrm", choices=model_kinds(), help="model kind")
    p.add_argument("--preset", default="kaggle", choices=list(PRESETS),
                   help="preset that shapes the model (D, widths)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed option of the kind (not searched)")
    p.add_argument("--space", default=None, metavar="FILE",
                   help="JSON search space (default: the kind's ModelSpec.search_space; "
                        "format in docs/baselines.md)")
    p.add_argument("--trials", type=int, default=None,
                   help="finished trials the study should have in all (default 20; with "
                        "--timeout and no --trials: as many as fit)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="start no trial after this many seconds of this session")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"most epochs per trial ({_study_default('epochs')})")
    p.add_argument("--evals-per-epoch", type=int, default=None,
                   help="validation evaluations per epoch (pruning / early stopping points; "
                        f"{_study_default('evals_per_epoch')})")
    p.add_argument("--patience", type=int, default=None,
                   help="evaluations without a better validation AUC before a trial stops "
                        f"(0: never; {_study_default('patience')})")
    p.add_argument("--max-samples", type=int, default=None, help="most samples per trial")
    p.add_argument("--seed", type=int, default=0, help="training and sampler seed")
    p.add_argument("--seeds-per-trial", type=int, default=1, metavar="N",
                   help="training runs per trial (seeds SEED..SEED+N-1); a trial scores the "
                        "mean of their validation AUCs, so the study picks a recipe, not a "
                        "lucky seed (default 1)")
    p.add_argument("--pruner", choices=["median", "none"], default=None,
                   help=_study_default("pruner"))
    p.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before the TPE sampler and the pruner act")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every trial's checkpoints (default: the best trial's only)")
    p.add_argument("--out", default="runs/tune", help="study folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_observer_args(p, mlperf=False)
    finish_settings(p)
    p.set_defaults(func=cmd_tune)
