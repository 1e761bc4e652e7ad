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
    calibration = None
    if args.mlp:  # activation ranges from the training rows of the model's data (or --data)
        import itertools

        from dlrm.cli.common import data_for_checkpoint
        from dlrm.training.checkpoint import load

        ckpt = load(args.checkpoint, mmap=True)  # metadata only: tensors stay on disk
        data = data_for_checkpoint(ckpt, args.checkpoint, args.data, False)
        rows = min(args.calibration_rows, data.num_samples("train"))
        if rows <= 0:
            raise ValueError(f"--calibration-rows {args.calibration_rows}: must be positive")
        batch = min(rows, 1024)
        calibration = list(itertools.islice(data.batches("train", batch),
                                            max(1, rows // batch)))
    if args.float_tables and not args.mlp:
        raise ValueError("--float-tables without --mlp int8 leaves nothing to quantize")
    bits = None if args.float_tables else args.bits
    info = quantize_checkpoint(args.checkpoint, args.out, bits, mlp=args.mlp,
                               calibration=calibration)
    tables = ("float embeddings" if bits is None else
              f"{info['bits']}-bit row-wise embeddings, {format_bytes(info['quantized_bytes'])} "
              f"instead of {format_bytes(info['float_bytes'])} ({info['ratio']:.2f}x smaller)")
    mlps = (f"; int8 MLPs calibrated on {sum(len(b) for b in calibration):,} training rows"
            if args.mlp else "")
    print(f"wrote {args.out}: {tables}{mlps}; evaluate with: dlrm eval --checkpoint {args.out}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from dlrm.training.checkpoint import check_output_path, ensemble_checkpoint

    if args.out is None or len(args.checkpoint or []) < 2:
        raise ValueError("dlrm ensemble: give two or more --checkpoint and an --out")
    check_output_path(args.out, args.checkpoint, overwrite=args.overwrite)
    info = ensemble_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: the mean click probability of {len(info['members'])} models "
          f"({', '.join(info['members'])}; {info['parameters']:,} parameters); evaluate with: "
          f"dlrm eval --checkpoint {args.out}")
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
    p = subparsers.add_parser("quantize", help="row-wise int8/4-bit embeddings (and int8 MLPs) "
                                               "for inference")
    add_checkpoint_io_args(p, "a `dlrm train` checkpoint (e.g. RUN_DIR/last.pt)",
                           "the quantized checkpoint to write")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8,
                   help="bits per embedding entry (row-wise scale and bias)")
    p.add_argument("--mlp", choices=["int8"], default=None,
                   help="also run the MLPs' hidden layers as static int8 GEMMs (oneDNN, "
                        "VNNI/AMX), activation ranges calibrated on training rows")
    p.add_argument("--float-tables", action="store_true",
                   help="with --mlp: keep the embedding tables in float (faster where the "
                        "tables fit in cache: the 8-bit lookup dequantizes every row it reads)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="with --mlp: the data whose training rows calibrate it (default: the "
                        "data set the checkpoint was trained on)")
    p.add_argument("--calibration-rows", type=int, default=4096, metavar="N",
                   help="with --mlp: training rows run through the model to measure the "
                        "activation ranges (default 4096)")
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("ensemble", help="several trained models as one (their mean "
                                               "click probability)")
    p.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="a trained checkpoint (any kind); give two or more, e.g. the seeds "
                        "of one recipe")
    p.add_argument("--out", default=None, metavar="FILE", help="the ensemble checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (never one of the checkpoints)")
    p.set_defaults(func=cmd_ensemble)

    p = subparsers.add_parser("export", help="export a checkpoint for serving",
                              description="Any model kind, quantized or not, as forward(dense, "
                                          "values, offsets) -> click probability.")
    add_checkpoint_io_args(p, "a `dlrm train` or `dlrm quantize` checkpoint (any model kind)",
                           "the file to write (*.pt2 for --format export, *.onnx for onnx)")
    p.add_argument("--format", choices=["export", "onnx"], default="export",
                   help="export: torch.export program; onnx: needs pip install 'dlrm[onnx]'")
    p.set_defaults(func=cmd_export)
