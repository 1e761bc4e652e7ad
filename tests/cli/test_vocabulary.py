"""One CLI vocabulary: the same flag for the same thing in every command, defaults in
``--help``, an example per command that parses, flags generated from the config dataclasses,
``--config FILE``, ``--model`` from the registry, ``dlrm env``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex

import pytest

from dlrm.cli import EXAMPLES, build_parser, leaf_parsers, main
from dlrm.models import model_kinds
from dlrm.training.loop import TrainConfig
from dlrm.training.schedule import MLPerfSchedule

TINY = ["--preset", "tiny", "--train-samples", "4096", "--val-samples", "2048",
        "--batch-size", "128", "--threads", "1", "--quiet"]

def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings
            if a.help != argparse.SUPPRESS}


@pytest.fixture(scope="module")
def commands() -> dict[str, argparse.ArgumentParser]:
    return leaf_parsers(build_parser())


def test_every_command_has_an_example_that_parses(commands):
    parser = build_parser()
    assert set(commands) <= set(EXAMPLES), set(commands) - set(EXAMPLES)
    for name, sub in commands.items():
        assert sub.epilog and sub.epilog.startswith("example:"), name
        for line in EXAMPLES[name].split("\n"):
            argv = shlex.split(line.strip())
            assert argv[0] == "dlrm" and " ".join(argv[1:]).startswith(name)
            parser.parse_args(argv[1:])  # exits (SystemExit) on any unknown flag


def test_one_name_per_concept(commands):
    banned = {"--run-dir": "--out", "--table-rows-cap": "--rows-cap", "--output": "--out",
              "--no-progress": "--quiet", "--ckpt": "--checkpoint"}
    for name, sub in commands.items():
        shown = flags(sub)
        for old, new in banned.items():
            if old in shown:
                pytest.fail(f"`dlrm {name}` has {old}; the vocabulary says {new}")
        # A checkpoint that is read is --checkpoint (or --init-checkpoint: a new run's start).
        for positional in (a for a in sub._actions if not a.option_strings
                           and a.help != argparse.SUPPRESS):
            assert "checkpoint" not in (positional.dest or ""), (name, positional.dest)
        # Row caps and process counts: one name each.
        assert not [s for s in shown if "rows-cap" in s and s != "--rows-cap"], name
        assert not [s for s in shown if s in ("--world-size", "--ranks", "--nprocs")], name
    for name in ("quantize", "export", "eval", "predict", "convert-reference"):
        assert "--checkpoint" in flags(commands[name]), name
    for name in ("train", "compare", "bench", "quantize", "export", "predict",
                 "convert-reference"):
        assert "--out" in flags(commands[name]), name
    for name in ("train", "compare", "bench", "preprocess criteo-kaggle",
                 "preprocess criteo-terabyte", "preprocess table", "synth"):
        assert "--quiet" in flags(commands[name]), name
    for name in ("train", "bench", "plan"):
        assert "--rows-cap" in flags(commands[name]), name
    for name in ("train", "plan"):
        assert "--nproc" in flags(commands[name]), name
    assert flags(commands["train"])["--model"].choices == model_kinds()


def test_help_shows_defaults(commands):
    for name, needle in (("train", "(default: 128)"), ("train", "(default: synthetic:planted)"),
                         ("bench", "(default: 1000000)"), ("plan", "(default: 2)"),
                         ("eval", "(default: val)"), ("quantize", "(default: 8)")):
        assert needle in commands[name].format_help(), (name, needle)


def test_training_flags_are_generated_from_the_config_dataclasses(commands):
    shown = flags(commands["train"])
    for f in dataclasses.fields(TrainConfig):
        if f.name == "lr_schedule":
            continue
        switch = f"--no-{f.name.replace('_', '-')}" if f.default is True else \
            f"--{f.name.replace('_', '-')}"
        action = shown[switch]
        assert action.dest == f.name and action.setting_default == f.default, f.name
        if f.metadata.get("choices"):
            assert action.choices == list(f.metadata["choices"])
    for f in dataclasses.fields(MLPerfSchedule):
        dest = "decay_power" if f.name == "power" else f.name
        assert shown[f"--{dest.replace('_', '-')}"].setting_default == f.default
    # The training settings round-trip: flags -> TrainConfig -> config.json -> TrainConfig.


def test_config_file_and_a_runs_config_json(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", *TINY, "--max-samples", "1280", "--lr", "0.2", "--optimizer",
                 "adagrad", "--out", str(first)]) == 0
    record = json.loads((first / "config.json").read_text())
    # A run's config.json is a valid input: the same settings train the same model.
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    a = json.loads((first / "summary.json").read_text())
    b = json.loads((again / "summary.json").read_text())
    assert b["val_auc"] == a["val_auc"] and b["final_train_loss"] == a["final_train_loss"]
    assert json.loads((again / "config.json").read_text())["args"] == record["args"]
    # Flags override it.
    other = tmp_path / "other"
    assert main(["train", "--config", str(first / "config.json"), "--lr", "0.05",
                 "--out", str(other)]) == 0
    args = json.loads((other / "config.json").read_text())["args"]
    assert args["lr"] == 0.05 and args["optimizer"] == "adagrad"
    assert {k: v for k, v in args.items() if k != "lr"} == \
        {k: v for k, v in record["args"].items() if k != "lr"}
    # A hand-written file: flag names with - or _.
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"preset": "tiny", "train-samples": 4096, "val_samples": 2048,
                                "batch-size": 128, "max_samples": 1280, "threads": 1}))
    assert main(["train", "--config", str(hand), "--quiet", "--out",
                 str(tmp_path / "hand")]) == 0
    capsys.readouterr()
    bad = {"{": "not valid JSON (line 1, column 2", '{"bach_size": 3}':
           "unknown setting bach_size (did you mean batch_size?)",
           '{"batch_size": "many"}': "batch_size 'many': expected int",
           '{"lr": -1}': "lr -1: must be a finite number above 0",
           '{"optimizer": "rmsprop"}': "optimizer 'rmsprop': expected one of sgd"}
    for text, message in bad.items():
        hand.write_text(text)
        assert main(["train", "--config", str(hand), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert str(hand) in err and message in err and err.count("\n") == 1, (text, err)
    assert not (tmp_path / "x").exists()


def test_env_prints_what_a_bug_report_needs(capsys):
    import torch

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("torch:") and line.endswith(f" {torch.__version__}")
               for line in out.splitlines())
    for needle in ("python:", "numpy:", "pyarrow:",
                   "torch build:", "torch threads:", "intra-op", "native kernels:",
                   "compiler:", "openmp runtime:", "devices:", "cpu:", "dlrm:"):
        assert needle in out, needle
    assert main(["env", "--format", "json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["torch"] == torch.__version__
    assert env["native kernels"].startswith("native CPU kernels:")
    assert isinstance(env["torch threads"]["intra-op"], int)
