"""Data commands: ``dlrm preprocess criteo-kaggle|criteo-terabyte|table``, ``dlrm predict``,
``dlrm synth``. Argument parsing and printing only; the work is in ``dlrm.data`` (the one
pipeline, ``dlrm.data.pipeline``), whose ``Progress`` events are rendered here as bars."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from dlrm.cli.common import add_deprecated_alias, check_checkpoint_data, load_checkpoint_model
from dlrm.data.pipeline.metadata import DataError, Progress, peak_rss_bytes

log = logging.getLogger(__name__)


class ProgressBar:
    """Renders the pipeline's ``Progress`` events: one tqdm bar per stage, with rate and ETA;
    ``message`` events are printed as notes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage = ""

    def __call__(self, event: Progress) -> None:
        if event.message:
            print(f"note: {event.message}", file=sys.stderr)
        if not self.enabled or event.total <= 0:
            return
        from tqdm import tqdm

        if self.bar is None or event.stage.split()[0] != self.stage:
            self.close()
            self.stage = event.stage.split()[0]
            self.bar = tqdm(total=event.total, unit=event.unit,
                            unit_scale=event.unit in ("B", "rows"),
                            unit_divisor=1024 if event.unit == "B" else 1000,
                            desc=event.stage, file=sys.stderr, dynamic_ncols=True)
        self.bar.total = event.total
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressBar]:
    bar = ProgressBar(enabled)
    try:
        yield bar
    finally:
        bar.close()


def _positive(kind: str) -> Callable[[str], int]:
    """An argparse type: an integer >= 1 (0 or less is refused with the flag's meaning)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value}: {kind} must be at least 1")
        return value
    return parse


def _vocab_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hash-buckets", type=_positive("the number of hash buckets"),
                       metavar="N",
                       help="id = 1 + value %% N (MLPerf: 40000000); default: exact vocabulary")
    group.add_argument("--min-count", type=_positive("the minimum count"), metavar="N",
                       help="values seen fewer than N times share one id")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad line (error names file:line) instead of "
                             "skipping and counting it")
    parser.add_argument("--workers", type=_positive("the number of workers"), default=2,
                        help="parsing threads (default 2)")
    parser.add_argument("--chunk-mb", type=_positive("the chunk size in MiB"), default=16,
                        help="bytes of text parsed per task, in MiB (default 16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (kept until the new data set is "
                             "complete); without it such a folder is refused")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_deprecated_alias(parser, "--no-progress", "--quiet", dest="quiet", switch=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``preprocess``, ``predict`` and ``synth`` to the ``dlrm`` command line."""
    pre = subparsers.add_parser("preprocess",
                                help="raw Criteo files or any table -> memory-mapped arrays",
                                description="Turn raw Criteo files into the memory-mapped "
                                            "format `dlrm train --data DIR` reads "
                                            "(docs/data-format.md).")
    kinds = pre.add_subparsers(dest="dataset", required=True)
    table = kinds.add_parser(
        "table", help="any CSV/TSV/Parquet CTR table (or MovieLens-100K) through a schema")
    table.add_argument("--schema", required=True,
                       help="schema JSON file, or a shipped one: criteo-kaggle, "
                            "criteo-terabyte, avazu, movielens-100k")
    table.add_argument("--input", required=True, type=Path,
                       help="data file (or MovieLens folder), split by the schema's fractions")
    table.add_argument("--train-input", type=Path, help="a file taken whole as the train split")
    table.add_argument("--val-input", type=Path, help="a file taken whole as the val split")
    table.add_argument("--test-input", type=Path, help="a file taken whole as the test split")
    table.add_argument("--out", required=True, type=Path, help="output folder")
    _vocab_args(table)
    table.set_defaults(func=_run_preprocess)
    kaggle = kinds.add_parser("criteo-kaggle", help="Kaggle train.txt (plain or .gz)")
    kaggle.add_argument("--input", required=True, type=Path, help="train.txt or train.txt.gz")
    kaggle.add_argument("--out", required=True, type=Path, help="output folder")
    kaggle.add_argument("--split", default="reference",
                        help="'reference' (7 consecutive parts: 0-5 train, 6 halved test/val)"
                             " or 'random:TRAIN,VAL,TEST' fractions, e.g. random:0.8,0.1,0.1")
    kaggle.add_argument("--seed", type=int, default=0, help="seed for --split random, --shuffle")
    kaggle.add_argument("--shuffle", action="store_true",
                        help="store the training split in a seeded random order")
    _vocab_args(kaggle)
    kaggle.set_defaults(func=_run_preprocess)

    tera = kinds.add_parser("criteo-terabyte", help="Terabyte day_0 ... day_23 (plain or .gz)")
    tera.add_argument("--input", required=True, type=Path, help="folder with the day files")
    tera.add_argument("--out", required=True, type=Path,
                      help="output folder; an interrupted run resumes with the days it finished")
    tera.add_argument("--days", default=None,
                      help="days to process, e.g. 0-3,23 (default: 0-23)")
    tera.add_argument("--test-day", type=int, default=23,
                      help="day halved into test and validation (default 23)")
    _vocab_args(tera)
    tera.set_defaults(func=_run_preprocess)

    pred = subparsers.add_parser("predict", help="score raw Criteo lines with a checkpoint",
                                 description="Write one click probability per input line "
                                             "(nan for a line that cannot be parsed).")
    pred.add_argument("--checkpoint", required=True, type=Path)
    pred.add_argument("--input", required=True, type=Path,
                      help="raw TSV: 40 fields (label first) or 39 (no label)")
    pred.add_argument("--out", required=True, type=Path, help="scores file")
    pred.add_argument("--data", type=Path, default=None,
                      help="preprocessed folder whose vocabulary to use (default: the one "
                           "recorded in the checkpoint)")
    pred.add_argument("--batch-size", type=int, default=65536)
    pred.add_argument("--strict", action="store_true", help="stop at the first bad line")
    pred.add_argument("--allow-data-mismatch", action="store_true",
                      help="score with a vocabulary other than the model's own")
    pred.add_argument("--backend", choices=["pytorch", "onnxruntime"], default="pytorch",
                      help="onnxruntime: score with the checkpoint's model exported to ONNX "
                           "(a temporary file) and run by ONNX Runtime (extra `onnx`)")
    pred.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                      help="--backend onnxruntime: this file from `dlrm export --format onnx` "
                           "instead of a fresh export (the checkpoint still gives the "
                           "vocabulary)")
    pred.set_defaults(func=_run_predict)

    synth = subparsers.add_parser(
        "synth", help="write synthetic data: Criteo TSV, a data profile, or rows from a profile",
        description="`dlrm synth --format criteo-tsv --rows N --out FILE` writes Kaggle-format "
                    "TSV; `dlrm synth profile DIR --out profile.json` writes a shareable profile "
                    "of a data set (no rows); `dlrm synth --profile profile.json --rows N --out "
                    "DIR` generates a preprocessed folder with the profile's statistics.")
    synth.add_argument("action", nargs="?", choices=["profile"],
                       help="`profile`: profile the data set SOURCE")
    synth.add_argument("source", nargs="?",
                       help="with `profile`: a `dlrm preprocess` folder or synthetic:planted")
    synth.add_argument("--format", choices=["criteo-tsv"],
                       help="criteo-tsv: Kaggle train.txt format (40 fields)")
    synth.add_argument("--profile", type=Path, default=None,
                       help="generate rows with this profile's statistics (writes a folder)")
    synth.add_argument("--locality", choices=["profile", "iid"], default=None,
                       help="with --profile: reuse order as the profile recorded it (LRU stack "
                            "distances; default when the profile has them) or iid draws")
    synth.add_argument("--rows", type=int)
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--split", default="train", help="with `profile`: the split to profile")
    synth.add_argument("--max-rows", type=int, default=None,
                       help="with `profile`: profile only the first N rows")
    synth.add_argument("--no-label", action="store_true", help="39-field test format")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    add_deprecated_alias(synth, "--no-progress", "--quiet", dest="quiet", switch=True)
    synth.set_defaults(func=_run_synth)


def _format_skips(report: dict[str, Any]) -> list[str]:
    lines = [f"rows read {report['rows_read']:,}, written {report['rows_written']:,}, "
             f"skipped {report['rows_skipped']:,}"]
    for reason, count in report.get("skip_reasons", {}).items():
        lines.append(f"  skipped {count:,}: {reason}")
    for ex in report.get("skipped_examples", []):
        lines.append(f"  {ex['file']}:{ex['line']}: {ex['reason']}")
    return lines


def _run_preprocess(args: argparse.Namespace) -> int:
    from dlrm.data.criteo import parse_days, preprocess_kaggle, preprocess_terabyte
    from dlrm.data.table import load_schema, preprocess_table

    common = dict(hash_buckets=args.hash_buckets, min_count=args.min_count, strict=args.strict,
                  workers=args.workers, overwrite=args.overwrite)
    start = time.perf_counter()
    quiet = args.quiet
    try:
        with _progress(not quiet) as progress:
            if args.dataset == "criteo-kaggle":
                meta = preprocess_kaggle(args.input, args.out, split=args.split, seed=args.seed,
                                         shuffle=args.shuffle, progress=progress,
                                         chunk_bytes=args.chunk_mb << 20, **common)
            elif args.dataset == "criteo-terabyte":
                meta = preprocess_terabyte(args.input, args.out, days=parse_days(args.days),
                                           test_day=args.test_day, progress=progress,
                                           chunk_bytes=args.chunk_mb << 20, **common)
            else:
                inputs = {"main": args.input}
                for split in ("train", "val", "test"):
                    if getattr(args, f"{split}_input"):
                        inputs[split] = getattr(args, f"{split}_input")
                meta = preprocess_table(load_schema(args.schema), inputs, args.out,
                                        progress=progress, **common)
    except DataError as err:
        print(f"dlrm preprocess: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # anything the library did not phrase itself
        where = f" ({err.filename})" if err.filename else ""
        print(f"dlrm preprocess: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"wrote {args.out} ({meta['dataset']}, {meta['vocab_mode']} vocabulary)"
          + (" - resumed an interrupted run" if meta.get("resumed") else ""))
    for split, rows in meta["rows"].items():
        share = meta["positives"][split] / rows if rows else 0.0
        print(f"  {split:5s} {rows:>13,} rows  {share:6.2%} clicks")
    print("  table sizes: " + " ".join(str(n) for n in meta["table_sizes"]))
    for line in _format_skips(meta):
        print(line)
    if meta.get("reused_parts"):
        print(f"reused parts already staged by the interrupted run: {meta['reused_parts']}")
    print(f"{meta['rows_read'] / max(seconds, 1e-9):,.0f} lines/s over {seconds:.1f} s, "
          f"peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from dlrm.data.loader import MemmapDataSource
    from dlrm.data.predict import score_raw_file, write_scores

    if args.onnx is not None and args.backend != "onnxruntime":
        raise ValueError("--onnx FILE is run by --backend onnxruntime; add it")
    check_checkpoint_data(args)  # another data set than the model's: refused unless allowed
    with ExitStack() as stack:
        if args.onnx is not None:
            from dlrm.training.checkpoint import load

            model, checkpoint = None, load(args.checkpoint, mmap=True)  # its records only
        else:
            model, checkpoint = load_checkpoint_model(args.checkpoint)
        data = args.data
        if data is None:
            spec = checkpoint.get("data_spec") or {}
            if spec.get("kind") != "memmap":
                print(f"error: {args.checkpoint} was trained on {spec.get('kind')!r} data, not "
                      "a preprocessed Criteo folder; pass --data DIR with the vocabulary to use",
                      file=sys.stderr)
                return 2
            data = Path(spec["path"])
        source = MemmapDataSource(data)
        scorer: Any = model
        if args.backend == "onnxruntime":
            from dlrm.export import onnx_file_serving, onnx_serving

            scorer = (onnx_file_serving(args.onnx, source.num_dense, list(source.table_sizes))
                      if args.onnx is not None else stack.enter_context(onnx_serving(model)))
        try:
            result = score_raw_file(scorer, source, args.input, batch_size=args.batch_size,
                                    strict=args.strict)
        except (DataError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    write_scores(args.out, result.probabilities)
    report = result.report
    print(f"wrote {result.probabilities.size:,} probabilities to {args.out}"
          + (" (ONNX Runtime)" if args.backend == "onnxruntime" else ""))
    for line in _format_skips(report):
        print(line)
    if report.get("unseen_values"):
        print(f"categorical values not in the vocabulary: {report['unseen_values']:,}")
    if "auc" in report:
        print(f"AUC {report['auc']:.4f} on {report['rows_written']:,} labeled rows")
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    if args.action == "profile":
        return _run_synth_profile(args)
    if args.profile is not None:
        return _run_synth_from_profile(args)
    if args.format is None or args.rows is None:
        raise ValueError("dlrm synth needs --format criteo-tsv --rows N, or --profile P --rows N, "
                         "or the `profile SOURCE` action")
    from dlrm.data.criteo_synth import write_criteo_tsv

    start = time.perf_counter()
    with _progress(not args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar(Progress("synth criteo-tsv", done, total, "rows"))

        counts = write_criteo_tsv(args.out, args.rows, seed=args.seed,
                                  with_label=not args.no_label, progress=progress)
    seconds = time.perf_counter() - start
    print(f"wrote {counts['rows']:,} lines to {args.out} "
          f"({counts['rows'] / max(seconds, 1e-9):,.0f} lines/s)")
    return 0


def _run_synth_profile(args: argparse.Namespace) -> int:
    from dlrm.data import open_data
    from dlrm.data.profile import fit_profile, save_profile

    if args.source is None:
        raise ValueError("dlrm synth profile needs the data set to profile: "
                         "dlrm synth profile DIR --out profile.json")
    profile = fit_profile(open_data(args.source), args.split, args.max_rows)
    save_profile(profile, args.out)
    zipfs = ", ".join(f"{f['zipf']:.2f}" for f in profile["features"])
    print(f"profiled {profile['rows']:,} rows, click rate {profile['click_rate']:.4f}, "
          f"{len(profile['features'])} features (Zipf {zipfs}); wrote {args.out}")
    return 0


def _run_synth_from_profile(args: argparse.Namespace) -> int:
    from dlrm.data.format import write_data_source
    from dlrm.data.profile import ProfileData

    if not args.rows:
        raise ValueError("--profile needs --rows N")
    data = ProfileData(args.profile, args.rows, seed=args.seed, locality=args.locality)
    try:
        with _progress(not args.quiet) as progress:
            meta = write_data_source(data, args.out, progress=progress)
    except DataError as err:
        print(f"dlrm synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sum(meta['rows'].values()):,} rows ({meta['rows']}) with the statistics of "
          f"{args.profile} to {args.out}")
    return 0
