"""What several `dlrm` commands share: data and model flags, the config objects they describe,
progress bars, the summary lines. The command modules import this one, never each other."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from dlrm.config import PRESETS


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
    """``--model`` (choices from the registry), ``--preset`` (from ``PRESETS``) and the shape
    and embedding options; each becomes an override of the kind's config (``None``: the
    preset's value), checked against the options the kind has."""
    from dlrm.models import model_kinds

    g = p.add_argument_group("model")
    g.add_argument("--model", default="dlrm", choices=model_kinds(),
                   help="model kind (default dlrm); every kind takes D and widths from the "
                        "preset")
    g.add_argument("--preset", default="kaggle", choices=list(PRESETS),
                   help="recipe: D, MLP widths, interaction, synthetic tables (default kaggle)")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any option of the kind, e.g. cross_layers=6, deep_mlp=512-256, "
                        "low_rank=64, embedding_init=normal:1e-4")
    g.add_argument("--embedding-dim", type=int, default=None, help="D (default: the preset's)")
    g.add_argument("--bottom-mlp", default=None, help="e.g. 512-256-64-16 (ends at D)")
    g.add_argument("--top-mlp", default=None, help="e.g. 512-256-1")
    g.add_argument("--interaction", choices=["dot", "cat", "cross"], default=None)
    g.add_argument("--interaction-self", action="store_true", default=None)
    g = p.add_argument_group("embedding options (docs/model-options.md)")
    g.add_argument("--qr-threshold", type=int, default=None,
                   help="quotient-remainder tables for tables above this many rows (0: off)")
    g.add_argument("--qr-collisions", type=int, default=None,
                   help="QR: remainder table rows c (quotient table: ceil(n/c)); default 4")
    g.add_argument("--qr-operation", choices=["mult", "add", "concat"], default=None)
    g.add_argument("--md-alpha", type=float, default=None,
                   help="mixed-dimension tables by the power-law rule, temperature alpha")
    g.add_argument("--md-round-dims", action="store_true", default=None,
                   help="mixed dimensions rounded to powers of two")
    g.add_argument("--max-ind-range", type=int, default=None,
                   help="hash ids modulo this many rows at lookup time (0: off)")


MODEL_FLAGS = ("embedding_dim", "bottom_mlp", "top_mlp", "interaction", "interaction_self",
               "qr_threshold", "qr_collisions", "qr_operation", "md_alpha", "md_round_dims",
               "max_ind_range")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags that were given, plus ``--model-option``s, as config overrides."""
    from dlrm.models import parse_model_options

    given = {name: getattr(args, name) for name in MODEL_FLAGS
             if getattr(args, name, None) is not None}
    options = parse_model_options(getattr(args, "model_option", []))
    twice = sorted(set(given) & set(options))
    if twice:
        raise ValueError(f"{', '.join(twice)} given both as a flag and as --model-option")
    return {**given, **options}


def model_config_from_args(args: argparse.Namespace, data) -> tuple[str, dict]:
    """The model kind and config dict that --model, --preset and the model flags describe,
    shaped for ``data``'s tables and dense width (with ``--recipe``: the recipe's options,
    e.g. its embedding initialisation, under the ones given)."""
    from dlrm.models import model_config_for

    kind = getattr(args, "model", "dlrm")
    overrides = model_overrides(args)
    if getattr(args, "recipe", None):
        from dlrm.training.recipes import get_recipe, model_options_from_recipe

        recipe = get_recipe(kind, args.recipe, data.num_samples("train"))
        overrides = {**model_options_from_recipe(kind, recipe), **overrides}
    return kind, model_config_for(kind, args.preset, data.table_sizes, data.num_dense,
                                  overrides)


def open_data_from_args(args: argparse.Namespace):
    """The DataSource that --data and the synthetic options describe."""
    from dlrm.config import get_preset
    from dlrm.data import open_data

    if not args.data.startswith("synthetic:"):
        return open_data(args.data)
    tables = [int(x) for x in args.tables.split(",")] if args.tables \
        else list(get_preset(args.preset).table_sizes)
    return open_data(args.data, table_sizes=tables, rows_cap=args.rows_cap, zipf=args.zipf,
                     train_samples=args.train_samples, val_samples=args.val_samples,
                     test_samples=args.test_samples, seed=args.data_seed)


def lr_schedule_from_args(args: argparse.Namespace) -> dict | None:
    """``--lr-schedule mlperf`` and its parameters as a TrainConfig.lr_schedule."""
    if args.lr_schedule == "constant":
        return None
    return {"kind": "mlperf", "warmup_steps": args.warmup_steps,
            "decay_start": args.decay_start, "decay_steps": args.decay_steps,
            "end_lr": args.end_lr}


def train_config_from_args(args: argparse.Namespace, data=None):
    """The ``TrainConfig`` that the training flags describe. With ``--recipe NAME``
    (``dlrm.training.recipes``) the recipe's settings replace the flags' defaults; flags given
    with another value than their default still win."""
    from dlrm.training.loop import TrainConfig

    config = TrainConfig(
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        sparse_optimizer=args.sparse_optimizer, sparse_lr=args.sparse_lr,
        weight_decay=args.weight_decay, epochs=args.epochs, max_samples=args.max_samples,
        eval_every=args.eval_every, eval_batch_size=args.eval_batch_size,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        patience=args.patience, precision=args.precision, device=args.device,
        threads=args.threads, tune_allocator=args.tune_allocator, seed=args.seed,
        lr_schedule=lr_schedule_from_args(args))
    if not getattr(args, "recipe", None):
        return config
    from dlrm.training.recipes import TRAIN_FIELDS, resolve_recipe

    defaults = getattr(args, "flag_defaults", {})
    given = {k: getattr(args, k) for k in TRAIN_FIELDS & set(defaults)
             if getattr(args, k) != defaults[k]}
    train, _ = resolve_recipe(getattr(args, "model", "dlrm"), args.recipe,
                              data.num_samples("train"), base=config, **given)
    return train


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


class TrainProgress:
    """Renders ``dlrm.training.loop`` events: a bar in samples with rate and ETA."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: tqdm | None = None
        self.disable = disable

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            batch = event["batch_size"]
            self.bar = tqdm(total=event["total_steps"] * batch, initial=event["step"] * batch,
                            unit="samples", unit_scale=True, dynamic_ncols=True,
                            disable=self.disable, file=sys.stderr, desc="train")
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["samples"])
            if event["step"] % 50 == 0:
                self.bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
        elif kind == "eval" and self.bar is not None:
            self.bar.write(f"step {event['step']}: val auc {event['auc']:.4f} "
                           f"logloss {event['logloss']:.4f} acc {event['accuracy']:.4f}")
        elif kind == "end" and self.bar is not None:
            self.bar.close()
