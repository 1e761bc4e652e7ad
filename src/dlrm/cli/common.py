"""What several `dlrm` commands share: the parser class and help format, flags generated from
the config dataclasses, settings that come from flags, a ``--config`` file or a run's
``config.json``, data and model flags, checks every command gets, progress bars and the other
observers of the training events (``--mlperf-log``, ``--tensorboard``), summary lines.
The command modules import this one, never each other.

One vocabulary (docs/cli.md): ``--checkpoint`` is a checkpoint read, ``--out`` what a command
writes (a run directory, a folder or a file), ``--quiet`` no progress bars, ``--rows-cap`` a cap
on every table's rows, ``--nproc`` a number of processes (ranks), ``--overwrite`` permission to
replace an existing output, ``--allow-data-mismatch`` permission to use a model on another data
set than its own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import inspect
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dlrm.config import PRESETS

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- parser and help
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default (``(default: X)``) unless it is None/False or the help
    already says it; keeps descriptions and the examples epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = getattr(action, "setting_default", action.default)
        if "default" in text.lower() or "%(default)" in text:
            return text
        if default is None or default is False or default is argparse.SUPPRESS or \
                default == [] or isinstance(action, (argparse._StoreFalseAction,
                                                      argparse._HelpAction,
                                                      argparse._VersionAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings:  # no help text: still the default
            action = copy.copy(action)
            action.help = ""
            text = self._get_help_string(action)
            action.help = text or None
        return super()._format_action(action)


class DlrmParser(argparse.ArgumentParser):
    """Every `dlrm` (sub)command's parser: no abbreviated flags (a flag means one thing; a
    prefix of a future flag must not change meaning), defaults shown in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def flag(dest: str) -> str:
    """The flag of a destination: ``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


class DeprecatedAlias(argparse.Action):
    """An old spelling that still works for one release, with a warning naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "",
                 nargs: Any = None, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"dlrm: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_deprecated_alias(p: argparse.ArgumentParser | Any, old: str, new: str, dest: str,
                         type: Any = None, switch: bool = False) -> None:
    """``old`` sets ``dest`` as ``new`` does, with a warning; ``switch``: a flag without a
    value (``--quiet`` for ``--quiet``)."""
    if switch:
        p.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, nargs=0)
    else:
        p.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, type=type)


# --------------------------------------------------------------- flags from dataclass fields
def field_docs(cls: type) -> dict[str, str]:
    """Per-field help from a dataclass docstring's ``name: text`` lines (``a, b: text`` gives
    both names the text; indented continuation lines are joined)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in inspect.getdoc(cls).splitlines():
        m = re.match(r"^\s{4}([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$", line)
        if m:
            names = m.group(1).split(", ")
            for name in names:
                docs[name] = m.group(2).strip()
        elif names and line.startswith(" " * 8) and line.strip():
            for name in names:
                docs[name] += " " + line.strip()
        else:
            names = []
    return {k: v.replace("``", "").rstrip(".") for k, v in docs.items()}


def _scalar_type(hint: Any) -> tuple[Any, bool]:
    """(the argparse type of a field annotation, whether None is allowed)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                                                                     types.UnionType) else (hint,)
    optional = type(None) in members
    members = [m for m in members if m is not type(None)]
    base = typing.get_origin(members[0]) or members[0]
    return {int: int, float: float, bool: bool}.get(base, str), optional


def add_dataclass_flags(group: Any, cls: type, only: tuple[str, ...] | None = None,
                        skip: tuple[str, ...] = (), rename: dict[str, str] | None = None,
                        defaults: dict[str, Any] | None = None, prefix: str = "",
                        helps: dict[str, str] | None = None) -> list[str]:
    """Add a flag per field of dataclass ``cls`` (``batch_size`` -> ``--batch-size``); returns
    the destinations.

    The type comes from the annotation (``int | None`` -> int, lists -> a string the config
    parses, ``bool`` -> a switch: ``--name`` when the default is False, ``--no-name`` when it
    is True), choices from ``field(metadata={"choices": ...})``, the help from the class
    docstring (``field_docs``) unless ``helps`` words it for the command line, the default
    from the field unless ``defaults`` overrides it.
    Every flag is a *setting* (``add_setting``): its value may also come from ``--config``.
    """
    rename, defaults, helps = rename or {}, defaults or {}, helps or {}
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    dests = []
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        dest = rename.get(f.name, f.name)
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        kind, _ = _scalar_type(hints[f.name])
        text = prefix + helps.get(f.name, docs.get(f.name, ""))
        kwargs: dict[str, Any] = {"help": text}
        if kind is bool:
            if default is True:
                add_setting(group, flag("no_" + dest), dest=dest, action="store_false",
                            default=True, **kwargs)
            else:
                add_setting(group, flag(dest), dest=dest, action="store_true", default=default,
                            **kwargs)
        else:
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
            add_setting(group, flag(dest), dest=dest, type=kind, default=default, **kwargs)
        dests.append(dest)
    return dests


# ------------------------------------------------------------------------------------ settings
def add_setting(group: Any, *flags: str, default: Any, **kwargs: Any) -> argparse.Action:
    """A flag whose value may come from the command line, a ``--config`` file (or the run's
    own ``config.json`` on ``--resume``), or its default, in that order of precedence.

    Parsed with a suppressed default, so ``resolve_settings`` knows which were given.
    """
    action = group.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
    action.setting_default = default
    return action


def finish_settings(p: argparse.ArgumentParser) -> None:
    """Record the settings of parser ``p`` (call after adding every flag)."""
    actions = {a.dest: a for a in p._actions if hasattr(a, "setting_default")}
    p.set_defaults(settings_actions=actions)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved settings as a JSON-able dict (what config.json's ``args`` holds)."""
    return {dest: (str(v) if isinstance(v, Path) else v)
            for dest in args.settings_actions for v in [getattr(args, dest)]}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A settings file: a run's ``config.json`` (its ``args``) or a JSON object of settings
    (flag names with ``_`` or ``-``). Errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"--config {path}: {err.strerror or err}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path}: not valid JSON (line {err.lineno}, column "
                         f"{err.colno}: {err.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"--config {path}: expected a JSON object of settings")
    if "args" in record:
        record = record["args"]
    elif "train" in record and "model_config" in record:
        raise ValueError(f"--config {path}: a config.json written by an older dlrm (no 'args' "
                         f"section); give its settings as flags")
    return {str(k).replace("-", "_"): v for k, v in record.items()}


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """A settings-file value checked (and, from a string, converted) as its flag would be."""
    name = f"{where}: {action.dest}"
    if value is None:
        if action.setting_default is None:
            return None
        raise ValueError(f"{name} is null; expected a value like {action.setting_default!r}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} {value!r}: expected true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} {value!r}: expected a list of strings")
        return value
    kind = action.type or str
    if isinstance(value, str) and kind is not str:
        try:
            value = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"{name} {value!r}: expected {getattr(kind, '__name__', kind)}"
                             ) from None
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(kind, lambda v: True)
    if not ok(value):
        raise ValueError(f"{name} {value!r}: expected {getattr(kind, '__name__', kind)}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{name} {value!r}: expected one of "
                         f"{', '.join(map(str, action.choices))}")
    return value


def resolve_settings(args: argparse.Namespace, base: dict[str, Any] | None = None,
                     where: str = "") -> set[str]:
    """Fill every setting not given on the command line from ``base`` (a ``--config`` file or
    a run's recorded settings, named ``where`` in errors), else its default. Returns the
    settings given on the command line."""
    actions: dict[str, argparse.Action] = args.settings_actions
    given = {dest for dest in actions if hasattr(args, dest)}
    base = base or {}
    unknown = sorted(set(base) - set(actions))
    if unknown:
        hints = [f"{k} (did you mean {close[0]}?)" if close else k for k in unknown
                 for close in [difflib.get_close_matches(k, list(actions), n=1)]]
        raise ValueError(f"{where}: unknown setting {', '.join(hints)}")
    sources = {}
    for dest, action in actions.items():
        if dest in given:
            sources[dest] = "flag"
            continue
        if dest in base:
            setattr(args, dest, _coerce(action, base[dest], where))
            sources[dest] = where
        else:
            setattr(args, dest, action.setting_default)
            sources[dest] = "default"
    args.setting_sources = sources
    return given


def error_line(err: BaseException, args: argparse.Namespace) -> str:
    """One line for a user error: a bad setting named as its flag, or as the file it came
    from; an OS error with its file; anything else as the library phrased it."""
    from dlrm.training.loop import ConfigError

    if isinstance(err, ConfigError):
        source = getattr(args, "setting_sources", {}).get(err.field, "flag")
        if source in ("flag", "default"):
            return f"{flag(err.field)} {err.value!r}: {err.detail}"
        return f"{source}: {err.field} {err.value!r}: {err.detail}"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError):
        return f"missing field {err}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def check_positive(args: argparse.Namespace, *dests: str, minimum: int = 1,
                   meaning: str = "") -> None:
    """Refuse a count flag below ``minimum`` (a batch of -1 samples is no batch);
    ``meaning`` says what the smallest value stands for when it is not an ordinary count."""
    for dest in dests:
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < minimum:
            raise ValueError(f"{flag(dest)} {value}: must be at least {minimum}{meaning}")


def load_checkpoint_model(path: str | Path, device: str = "cpu"):
    """The model and record of a checkpoint file, or of a sharded checkpoint folder
    (``RUN/last`` of a distributed run)."""
    from dlrm.training.checkpoint import load_model

    if Path(path).is_dir():
        from dlrm.distributed.checkpoint import load_single_process

        model, ckpt = load_single_process(path)
        return model.to(device), ckpt
    return load_model(path, device)


def data_for_checkpoint(ckpt: dict[str, Any], checkpoint: str | Path, data_arg: Any,
                        allow_mismatch: bool):
    """The data a command scores a checkpoint's model on: ``--data`` or the data set the
    checkpoint records, refused when it is not the data set the model was trained on
    (``dlrm.training.data_identity``) unless ``allow_mismatch``."""
    from dlrm.data import open_data
    from dlrm.training.data_identity import check_same_data

    if data_arg is not None:
        data = open_data(str(data_arg))
    elif ckpt.get("data_spec"):
        try:
            data = open_data(ckpt["data_spec"])
        except (OSError, ValueError) as err:
            raise ValueError(f"{checkpoint}: the data set it was trained on cannot be opened "
                             f"({error_line(err, argparse.Namespace())}); pass --data") from None
    else:
        raise ValueError(f"{checkpoint} records no data set; pass --data")
    for warning in check_same_data(ckpt.get("data_identity"), data, str(checkpoint),
                                   force=allow_mismatch):
        print(f"warning: {warning}", file=sys.stderr)
    return data


def check_checkpoint_data(args: argparse.Namespace) -> None:
    """For commands that score a checkpoint on data they are given (``dlrm predict``):
    refuse another data set than the model's, unless ``--allow-data-mismatch``."""
    from dlrm.training.checkpoint import load

    ckpt = load(args.checkpoint, mmap=True)  # metadata only: tensors stay on disk
    data_arg = getattr(args, "data", None)
    spec = ckpt.get("data_spec") or {}
    if data_arg is None and spec.get("kind") not in ("memmap", "table"):
        return  # the command itself says it needs --data
    data_for_checkpoint(ckpt, args.checkpoint, data_arg,
                        getattr(args, "allow_data_mismatch", False))


def check_outputs(args: argparse.Namespace, inputs: tuple[str, ...] = (
        "checkpoint", "input", "data", "profile", "schema", "config", "resume", "onnx")
        ) -> None:
    """``--out`` is never one of the command's inputs (``--checkpoint``, ``--input``, ...)."""
    from dlrm.training.checkpoint import check_output_path

    out = getattr(args, "out", None)
    if out is None or not isinstance(out, (str, Path)):
        return
    sources = [getattr(args, name, None) for name in inputs]
    sources = [s for s in sources if isinstance(s, (str, Path)) and not str(s).startswith(
        "synthetic:")]
    check_output_path(out, sources, file=False)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data`` and the synthetic data set's options (from ``SyntheticConfig``)."""
    from dlrm.data.synthetic import SyntheticConfig

    g = p.add_argument_group("data")
    add_setting(g, "--data", default="synthetic:planted",
                help="synthetic:planted, synthetic:random, or a `dlrm preprocess` folder")
    add_setting(g, "--tables", default=None,
                help="synthetic: comma-separated table sizes (default: the preset's)")
    add_dataclass_flags(g, SyntheticConfig, only=DATA_FIELDS, rename={"seed": "data_seed"},
                        defaults={"test_samples": 0}, prefix="synthetic: ", helps={
                            "rows_cap": "cap on every table's rows (0: no cap)",
                            "train_samples": "samples in the train split",
                            "val_samples": "samples in the validation split",
                            "test_samples": "samples in the test split",
                            "seed": "seed of the generator (hidden model and samples)"})


# SyntheticConfig fields that are flags (the generator's finer knobs stay in Python).
DATA_FIELDS = ("rows_cap", "train_samples", "val_samples", "test_samples", "zipf", "seed")
# DLRMConfig fields that are flags; any option of any kind is also --model-option KEY=VALUE.
MODEL_FLAGS = ("embedding_dim", "bottom_mlp", "top_mlp", "interaction", "interaction_self",
               "qr_threshold", "qr_collisions", "qr_operation", "md_alpha", "md_round_dims",
               "max_ind_range")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` (choices from the registry), ``--preset`` (from ``PRESETS``) and the shape
    and embedding options of ``DLRMConfig``; each becomes an override of the kind's config
    (unset: the preset's value), checked against the options the kind has."""
    from dlrm.config import DLRMConfig
    from dlrm.models import model_kinds

    g = p.add_argument_group("model")
    add_setting(g, "--model", default="dlrm", choices=model_kinds(),
                help="model kind; every kind takes D and widths from the preset")
    add_setting(g, "--preset", default="kaggle", choices=list(PRESETS),
                help="recipe: D, MLP widths, interaction, synthetic tables")
    add_setting(g, "--model-option", action="append", default=[], metavar="KEY=VALUE",
                help="any option of the kind, e.g. cross_layers=6, deep_mlp=512-256, "
                     "low_rank=64, embedding_init=normal:1e-4")
    add_dataclass_flags(g, DLRMConfig, only=MODEL_FLAGS,
                        defaults={name: None for name in MODEL_FLAGS},
                        helps={"embedding_dim": "D, the width of every embedding row "
                                                "(default: the preset's)",
                               "bottom_mlp": "widths from the dense input to D, e.g. "
                                             "512-256-64-16 (default: the preset's)",
                               "top_mlp": "widths after the interaction, e.g. 512-256-1",
                               "interaction": "dot (the paper's), cat, or cross (low-rank "
                                              "DCN-v2, MLPerf's DLRM-DCNv2)"})


def add_training_args(p: argparse.ArgumentParser) -> None:
    """Every ``TrainConfig`` field as a flag, and the lr schedule's (``MLPerfSchedule``)."""
    from dlrm.training.loop import TrainConfig
    from dlrm.training.schedule import SCHEDULES, MLPerfSchedule

    g = p.add_argument_group("training (dlrm.training.loop.TrainConfig)")
    add_dataclass_flags(g, TrainConfig, skip=("lr_schedule",))
    g = p.add_argument_group("lr schedule (dlrm.training.schedule)")
    add_setting(g, "--lr-schedule", choices=list(SCHEDULES), default="constant",
                help="mlperf: linear warmup, constant, then polynomial decay")
    add_dataclass_flags(g, MLPerfSchedule, rename={"power": "decay_power"},
                        prefix="mlperf schedule: ", helps={
                            "warmup_steps": "steps of linear warmup",
                            "decay_start": "the step the decay starts at",
                            "decay_steps": "steps of decay (0: no decay)",
                            "end_lr": "the lr after the decay",
                            "power": "the decay polynomial's degree"})


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
        from dlrm.data.source import dataset_name
        from dlrm.training.recipes import get_recipe, model_options_from_recipe

        recipe = get_recipe(kind, args.recipe, data.num_samples("train"), dataset_name(data))
        overrides = {**model_options_from_recipe(kind, recipe), **overrides}
    return kind, model_config_for(kind, args.preset, data.table_sizes, data.num_dense,
                                  overrides)


def open_data_from_args(args: argparse.Namespace):
    """The DataSource that --data and the synthetic options describe."""
    from dlrm.config import get_preset
    from dlrm.data import open_data

    if not args.data.startswith("synthetic:"):
        return open_data(args.data)
    try:
        tables = [int(x) for x in args.tables.split(",")] if args.tables \
            else list(get_preset(args.preset).table_sizes)
    except ValueError:
        raise ValueError(f"--tables {args.tables!r}: expected sizes like 1000,500,20") from None
    return open_data(args.data, table_sizes=tables, rows_cap=args.rows_cap or None,
                     zipf=args.zipf, train_samples=args.train_samples,
                     val_samples=args.val_samples, test_samples=args.test_samples,
                     seed=args.data_seed)


def lr_schedule_from_args(args: argparse.Namespace) -> dict | None:
    """``--lr-schedule mlperf`` and its parameters as a TrainConfig.lr_schedule."""
    if args.lr_schedule == "constant":
        return None
    return {"kind": "mlperf", "warmup_steps": args.warmup_steps,
            "decay_start": args.decay_start, "decay_steps": args.decay_steps,
            "end_lr": args.end_lr, "power": args.decay_power}


def train_config_from_args(args: argparse.Namespace):
    """The ``TrainConfig`` that the training flags describe (its fields are the flags)."""
    from dlrm.training.loop import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "lr_schedule"]
    return TrainConfig(**{name: getattr(args, name) for name in names},
                       lr_schedule=lr_schedule_from_args(args))


def apply_recipe(args: argparse.Namespace, data) -> None:
    """With ``--recipe NAME`` (``dlrm.training.recipes``, sized by ``data``'s training split;
    ``small`` is the variant tuned on ``data``'s data set, if any), set every training setting
    still at its default to the recipe's value. Settings given as flags or by ``--config``
    win. The resolved values are the run's recorded settings, so its
    ``config.json`` starts the same run again. (The recipe's model options, such as its
    embedding initialisation, are applied by ``model_config_from_args``.)"""
    if not getattr(args, "recipe", None):
        return
    from dlrm.data.source import dataset_name
    from dlrm.training.loop import TrainConfig
    from dlrm.training.recipes import resolve_recipe

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "lr_schedule"]
    sources = args.setting_sources
    given = {name: getattr(args, name) for name in names
             if sources.get(name, "default") != "default"}
    train, _ = resolve_recipe(getattr(args, "model", "dlrm"), args.recipe,
                              data.num_samples("train"), base=train_config_from_args(args),
                              dataset=dataset_name(data), **given)
    for name in names:
        if name not in given and getattr(train, name) != getattr(args, name):
            setattr(args, name, getattr(train, name))
            sources[name] = f"--recipe {args.recipe}"


def take_legacy_positionals(args: argparse.Namespace) -> None:
    """``dlrm quantize IN OUT`` (the old spelling) as ``--checkpoint IN --out OUT``."""
    legacy = getattr(args, "legacy", None) or []
    if legacy:
        if len(legacy) != 2 or args.checkpoint or args.out:
            raise ValueError(f"unexpected arguments {' '.join(legacy)}: give --checkpoint "
                             f"FILE --out FILE")
        print(f"dlrm {args.command}: warning: positional CHECKPOINT OUTPUT is deprecated; use "
              f"--checkpoint {legacy[0]} --out {legacy[1]}", file=sys.stderr)
        args.checkpoint, args.out = legacy
    missing = [f for f, v in (("--checkpoint", args.checkpoint), ("--out", args.out)) if not v]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required")


def add_checkpoint_io_args(p: argparse.ArgumentParser, reads: str, writes: str) -> None:
    """``--checkpoint IN --out OUT [--overwrite]`` of the commands that turn one checkpoint
    into another file (the old positional spelling still works, with a warning)."""
    p.add_argument("--checkpoint", default=None, metavar="FILE", help=reads)
    p.add_argument("--out", default=None, metavar="FILE", help=writes)
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (never the checkpoint itself)")
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)


def check_new_output(args: argparse.Namespace) -> None:
    """``--out`` FILE is not the ``--checkpoint`` read, nor (without ``--overwrite``) an
    existing file."""
    from dlrm.training.checkpoint import check_output_path

    check_output_path(args.out, [args.checkpoint], overwrite=args.overwrite)


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
        line = f"training throughput {summary['samples_per_s']:,.0f} samples/s"
        if summary.get("eval_samples_per_s"):
            line += (f"; validation {summary['eval_samples_per_s']:,.0f} samples/s "
                     f"({summary['eval_samples_per_s'] / summary['samples_per_s']:.1f}x)")
        print(line)
    print(f"run directory: {summary['run_dir']}")


class TrainProgress:
    """Renders ``dlrm.training.loop`` events: a bar in samples with rate and ETA."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: tqdm | None = None
        self.disable = disable

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "resumed" and not self.disable:
            changed = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in event["changes"].items()
                                if k != "data") + (", data moved" if "data" in event["changes"]
                                                   else "")
            where = "from step 0 (no checkpoint yet)" if event["from_scratch"] else \
                f"at step {event['step']}"
            print(f"resumed {where}" + (f"; changed: {changed}" if changed else ""),
                  file=sys.stderr)
        elif kind == "start":
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


Callback = Callable[[dict[str, Any]], None]


def fan_out(*callbacks: Callback | None) -> Callback:
    """One progress callback that hands every event to each of ``callbacks`` in order."""
    active = [cb for cb in callbacks if cb is not None]

    def progress(event: dict[str, Any]) -> None:
        for cb in active:
            cb(event)

    return progress


def add_observer_args(p: argparse.ArgumentParser, mlperf: bool = True) -> None:
    """``--tensorboard`` (and, for single runs, ``--mlperf-log`` and its submission keys)."""
    g = p.add_argument_group("observers (docs/ecosystem.md)")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard scalars (loss, lr, samples/s, evaluations) to DIR")
    g.add_argument("--tensorboard-every", type=int, default=10, metavar="STEPS",
                   help="training scalars every this many steps (default 10)")
    if not mlperf:
        return
    g.add_argument("--mlperf-log", default=None, metavar="FILE",
                   help="write the MLPerf Training log (:::MLLOG lines) of this run to FILE")
    g.add_argument("--mlperf-benchmark", default=None,
                   help="submission_benchmark (default: dlrm_dcnv2 for --model dlrm_dcnv2, "
                        "dlrm for dlrm)")
    g.add_argument("--mlperf-division", choices=["open", "closed"], default="open")
    g.add_argument("--mlperf-org", default="dlrm", help="submission_org")
    g.add_argument("--mlperf-platform", default=None,
                   help="submission_platform (default: this CPU's model and cores)")
    g.add_argument("--mlperf-target-auc", type=float, default=None,
                   help="validation AUC that ends the run with status success (default: "
                        "MLPerf's, 0.80275 for dlrm_dcnv2)")


def open_observers(args: argparse.Namespace, stack: contextlib.ExitStack, kind: str,
                   config: Any, data: Any, resume: bool = False) -> list[Callback]:
    """The observers the flags ask for, entered on ``stack`` (closed when it closes)."""
    observers: list[Callback] = []
    if getattr(args, "mlperf_log", None):
        from dlrm.training.mlperf_log import MLPerfLogger, mlperf_hyperparameters

        if resume:
            raise ValueError("--mlperf-log: an MLPerf log covers one uninterrupted run; it "
                             "cannot continue a resumed one")
        benchmark = args.mlperf_benchmark or {"dlrm_dcnv2": "dlrm_dcnv2",
                                              "dlrm": "dlrm"}.get(kind)
        if benchmark is None:
            raise ValueError(f"--mlperf-log: MLPerf has no benchmark for --model {kind}; "
                             f"give --mlperf-benchmark")
        observers.append(stack.enter_context(MLPerfLogger(
            args.mlperf_log, mlperf_hyperparameters(config, data), benchmark=benchmark,
            division=args.mlperf_division, org=args.mlperf_org,
            platform=args.mlperf_platform, target_auc=args.mlperf_target_auc)))
    if getattr(args, "tensorboard", None):
        from dlrm.training.tensorboard import TensorBoardWriter

        observers.append(stack.enter_context(
            TensorBoardWriter(args.tensorboard, every=args.tensorboard_every)))
    return observers
