"""The `dlrm` command: argument parsing only; each command module calls library functions.

Each module in this package defines ``register(subparsers)``, adding subcommands whose
``func(args) -> int`` does the work. ``main`` gives every command the same treatment: one
vocabulary and defaults in ``--help`` (``common.DlrmParser``), an example per command
(``EXAMPLES``), the checks every command gets (``preflight``), and one line, never a
traceback, for a user error (``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import traceback

from dlrm import __version__
from dlrm.cli import bench as bench_commands
from dlrm.cli import common
from dlrm.cli import compare as compare_commands
from dlrm.cli import data as data_commands
from dlrm.cli import distributed as distributed_commands
from dlrm.cli import env as env_commands
from dlrm.cli import options as options_commands
from dlrm.cli import train as train_commands
from dlrm.cli import tune as tune_commands

COMMAND_MODULES = [train_commands, data_commands, bench_commands, options_commands,
                   compare_commands, distributed_commands, tune_commands, env_commands]

# One short, working example per command (tests/cli parse every one of them).
EXAMPLES = {
    "train": "dlrm train --preset tiny --data synthetic:planted --max-samples 200000 "
             "--out runs/first\n  dlrm train --resume runs/first --epochs 2\n"
             "  dlrm train --config runs/first/config.json --lr 0.05",
    "eval": "dlrm eval --checkpoint runs/first/last.pt --split val",
    "convert-reference": "dlrm convert-reference --checkpoint model.pt --out ours.pt",
    "preprocess criteo-kaggle": "dlrm preprocess criteo-kaggle --input train.txt "
                                "--out data/kaggle",
    "preprocess criteo-terabyte": "dlrm preprocess criteo-terabyte --input days/ --out data/tb "
                                  "--hash-buckets 40000000",
    "preprocess table": "dlrm preprocess table --schema avazu --input train.csv "
                        "--out data/avazu",
    "predict": "dlrm predict --checkpoint runs/first/last.pt --input test.txt "
               "--out scores.txt",
    "synth": "dlrm synth --format criteo-tsv --rows 10000 --out sample.tsv",
    "bench": "dlrm bench --preset kaggle --batch-size 2048 --json bench.json",
    "quantize": "dlrm quantize --checkpoint runs/first/last.pt --out runs/first/int8.pt",
    "ensemble": "dlrm ensemble --checkpoint runs/s0/best.pt --checkpoint runs/s1/best.pt "
                "--out runs/x2.pt",
    "export": "dlrm export --checkpoint runs/first/last.pt --out model.pt2",
    "compare": "dlrm compare --models dlrm,dcn --data synthetic:planted --seeds 3",
    "plan": "dlrm plan --preset kaggle --nproc 4",
    "tune": "dlrm tune --model dcn --data data/avazu --trials 20 --out runs/tune-dcn",
    "env": "dlrm env",
}

# Errors a user can cause (a bad flag, a bad file): one line, exit status 2.
USER_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError, KeyError, EOFError,
               pickle.UnpicklingError, ImportError)  # ImportError: an extra not installed
# Count flags of any command: below 1 is refused before the command runs.
COUNT_FLAGS = ("batch_size", "eval_batch_size", "nproc", "rows", "trials", "steps")
# Commands whose --batch-size is TrainConfig.batch_size, where 0 means the whole training split.
TRAINING_COMMANDS = ("train", "compare")


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""
                 ) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name (``"preprocess table"`` for nested ones)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                inner = leaf_parsers(sub, full)
                found.update(inner or {full: sub})
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = common.DlrmParser(
        prog="dlrm", description="Deep Learning Recommendation Model: train, evaluate, "
        "preprocess, benchmark. `dlrm COMMAND --help` lists a command's flags and defaults.")
    parser.add_argument("--version", action="version", version=f"dlrm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and tracebacks with errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for name, sub in leaf_parsers(parser).items():
        if name in EXAMPLES and not sub.epilog:
            sub.epilog = "example:\n  " + EXAMPLES[name]
    return parser


def preflight(args: argparse.Namespace) -> None:
    """Checks every command gets before it runs: counts of at least 1, ``--out`` never one of
    the inputs. (A checkpoint scored on another data set than its own is refused by the
    command: ``eval``, ``predict``.)"""
    counts = COUNT_FLAGS
    if args.command in TRAINING_COMMANDS:
        counts = tuple(name for name in COUNT_FLAGS if name != "batch_size")
        common.check_positive(args, "batch_size", minimum=0,
                              meaning=" (0: the whole training split)")
    common.check_positive(args, *counts)
    common.check_outputs(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (recorded by runs, relaunched by --nproc)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        preflight(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dlrm {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            traceback.print_exc()
        print(f"dlrm {args.command}: error: {common.error_line(err, args)}", file=sys.stderr)
        return 2
