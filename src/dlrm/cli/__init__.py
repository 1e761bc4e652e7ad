"""The `dlrm` command: argument parsing only; each command module calls library functions.

Each module in this package defines ``register(subparsers)``, adding subcommands whose
``func(args) -> int`` does the work.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dlrm import __version__
from dlrm.cli import bench as bench_commands
from dlrm.cli import compare as compare_commands
from dlrm.cli import data as data_commands
from dlrm.cli import distributed as distributed_commands
from dlrm.cli import options as options_commands
from dlrm.cli import train as train_commands
from dlrm.cli import tune as tune_commands

COMMAND_MODULES = [train_commands, data_commands, bench_commands, options_commands,
                   compare_commands, tune_commands, distributed_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlrm", description="Deep Learning Recommendation Model: train, evaluate, "
        "preprocess, benchmark.")
    parser.add_argument("--version", action="version", version=f"dlrm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, ImportError) as err:
        print(f"dlrm {args.command}: error: {err}", file=sys.stderr)
        return 2
