"""`dlrm quantize` and `dlrm export`: inference artifacts from a trained checkpoint
(``--checkpoint`` read, ``--out`` written; the checkpoint is never replaced)."""

from __future__ import annotations

import argparse

from dlrm.cli.common import (
    add_checkpoint_io_args,
    check_new_output,
    load_checkpoint_model,
    take_legacy_positionals,
)


def cmd_quantize(args: argparse.Namespace) -> int:
    from dlrm.models.memory import format_bytes
    from dlrm.training.checkpoint import quantize_checkpoint

    take_legacy_positionals(args)
    check_new_output(args)
    info = quantize_checkpoint(args.checkpoint, args.out, args.bits)
    print(f"wrote {args.out}: {info['bits']}-bit row-wise embeddings, "
          f"{format_bytes(info['quantized_bytes'])} instead of "
          f"{format_bytes(info['float_bytes'])} ({info['ratio']:.2f}x smaller); "
          f"evaluate with: dlrm eval --checkpoint {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dlrm.export import export_model, serving_shape

    take_legacy_positionals(args)
    check_new_output(args)
    model, ckpt = load_checkpoint_model(args.checkpoint)
    num_dense, sizes = serving_shape(model)  # every kind, quantized or not
    path = export_model(model, num_dense, sizes, args.format, args.out)
    print(f"wrote {path} ({args.format}, model kind {ckpt['model_kind']}): forward(dense "
          f"(B, {num_dense}) float32, values (N,) int64, offsets ({len(sizes)}*B+1,) int64) -> "
          f"click probability (B,)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help="row-wise int8/4-bit embeddings for inference")
    add_checkpoint_io_args(p, "a `dlrm train` checkpoint (e.g. RUN_DIR/last.pt)",
                           "the quantized checkpoint to write")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8)
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("export", help="export a checkpoint for serving",
                              description="Any model kind, quantized or not, as forward(dense, "
                                          "values, offsets) -> click probability.")
    add_checkpoint_io_args(p, "a `dlrm train` or `dlrm quantize` checkpoint (any model kind)",
                           "the file to write (*.pt2 for --format export, *.onnx for onnx)")
    p.add_argument("--format", choices=["export", "onnx"], default="export",
                   help="export: torch.export program; onnx: needs pip install 'dlrm[onnx]'")
    p.set_defaults(func=cmd_export)
