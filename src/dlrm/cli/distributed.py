"""`dlrm plan`: how the embedding tables of a preset would be placed on N ranks."""

from __future__ import annotations

import argparse

from dlrm.cli.common import check_positive
from dlrm.config import PRESETS


def cmd_plan(args: argparse.Namespace) -> int:
    from dlrm.config import preset
    from dlrm.distributed.planner import plan_tables

    check_positive(args, "nproc")
    tables = [int(x) for x in args.tables.split(",")] if args.tables else None
    cfg = preset(args.preset, table_sizes=tables, rows_cap=args.rows_cap or None)
    dim = args.embedding_dim or cfg.embedding_dim
    budget = int(args.max_gib_per_rank * 2**30) if args.max_gib_per_rank else None
    print(plan_tables(cfg.table_sizes, dim, args.nproc, args.placement,
                      replicate_max_rows=args.replicate_max_rows, max_bytes_per_rank=budget))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="print how embedding tables would be placed on N "
                                           "ranks")
    p.add_argument("--preset", default="kaggle", choices=list(PRESETS))
    p.add_argument("--tables", default=None, help="comma-separated table sizes")
    p.add_argument("--rows-cap", type=int, default=0, help="cap on every table's rows (0: no "
                                                           "cap)")
    p.add_argument("--embedding-dim", type=int, default=None)
    p.add_argument("--nproc", type=int, default=2, metavar="N",
                   help="number of processes (ranks) to place the tables on, as `dlrm train "
                        "--nproc N` (under torchrun: nnodes x nproc_per_node)")
    p.add_argument("--placement", choices=["auto", "table", "row", "replicated"], default="auto")
    p.add_argument("--replicate-max-rows", type=int, default=64)
    p.add_argument("--max-gib-per-rank", type=float, default=None,
                   help="embedding memory per rank; tables over half of it go row-wise")
    p.set_defaults(func=cmd_plan)
