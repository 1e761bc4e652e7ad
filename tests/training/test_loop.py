import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrm.cli import main
from dlrm.config import preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.checkpoint import load, load_model
from dlrm.training.loop import TrainConfig, evaluate, train

TINY = preset("tiny")


def planted(**kw):
    return SyntheticData(SyntheticConfig(table_sizes=TINY.table_sizes, val_samples=20_000,
                                         test_samples=0, **kw))


def test_training_on_planted_data_beats_a_constant_predictor(tmp_path):
    data = planted()
    summary = train("dlrm", TINY.to_dict(), data,
                    TrainConfig(batch_size=256, lr=0.05, optimizer="adagrad",
                                max_samples=600_000, seed=0), tmp_path / "run")
    # A constant predictor has AUC 0.5; the Bayes-optimal one about 0.82 here.
    assert summary["val_auc"] > 0.72, summary
    assert summary["optimal_auc"] > summary["val_auc"]
    assert summary["val_logloss"] < 0.52
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("val_auc", "val_logloss", "val_accuracy", "samples_per_s", "optimal_auc",
                "optimal_logloss"):
        assert key in saved
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "eval" and lines[0]["event"] == "train"
    # the validation passes' rate: every val sample of every evaluation over their seconds
    evals = [x for x in lines if x["event"] == "eval"]
    assert saved["eval_seconds"] > 0
    assert saved["eval_samples_per_s"] == pytest.approx(
        20_000 * len(evals) / saved["eval_seconds"])


def test_checkpoint_round_trip_and_same_seed_same_metrics(tmp_path):
    cfg = TrainConfig(batch_size=128, lr=0.1, max_samples=40_000, seed=5)
    first = train("dlrm", TINY.to_dict(), planted(), cfg, tmp_path / "a")
    second = train("dlrm", TINY.to_dict(), planted(), cfg, tmp_path / "b")
    assert first["val_auc"] == second["val_auc"]
    assert first["val_logloss"] == second["val_logloss"]
    model, ckpt = load_model(tmp_path / "a" / "last.pt")
    assert ckpt["step"] == 40_000 // 128
    again = evaluate(model, SyntheticData(SyntheticConfig(**ckpt["data_spec"]["config"])), "val",
                     ckpt["train_config"]["eval_batch_size"])
    assert again["auc"] == first["val_auc"] and again["logloss"] == first["val_logloss"]
    other_seed = train("dlrm", TINY.to_dict(), planted(),
                       TrainConfig(batch_size=128, lr=0.1, max_samples=40_000, seed=6),
                       tmp_path / "c")
    assert other_seed["val_auc"] != first["val_auc"]


def test_eval_command_reproduces_validation_metrics(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--max-samples", "20000", "--val-samples", "5000",
            "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["auc"] == summary["val_auc"] and metrics["logloss"] == summary["val_logloss"]


TRAIN_ARGS = ["--preset", "tiny", "--batch-size", "64", "--max-samples", str(64 * 2500),
              "--val-samples", "8192", "--eval-every", "700", "--checkpoint-every", "40",
              "--threads", "1", "--quiet"]


def run_cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "dlrm", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_resume_after_kill_9_gives_the_uninterrupted_metrics(tmp_path, delay):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = run_cli([*TRAIN_ARGS, "--out", str(reference_dir)])
    victim = run_cli([*TRAIN_ARGS, "--out", str(killed_dir)])
    deadline = time.time() + 120
    while not (killed_dir / "last.pt").exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed_dir / "summary.json").exists(), "the run finished before the kill"
    killed_at = load(killed_dir / "last.pt")["step"]
    assert killed_at < 2500
    resumed = run_cli(["--resume", str(killed_dir), "--quiet"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    ours = json.loads((killed_dir / "summary.json").read_text())
    theirs = json.loads((reference_dir / "summary.json").read_text())
    for key in ("val_auc", "val_logloss", "val_accuracy", "steps", "samples_seen"):
        assert ours[key] == theirs[key], key
    # The metrics log holds each event once, as in the uninterrupted run.
    def events(d: Path):
        return [(r["event"], r["step"], r.get("loss"), r.get("auc"))
                for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert events(killed_dir) == events(reference_dir)


def test_resume_ignores_a_half_written_temporary_file(tmp_path):
    args = ["train", "--preset", "tiny", "--max-samples", "6400", "--checkpoint-every", "20",
            "--val-samples", "2000", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"\x80\x02garbage")  # a killed write's leftover
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 0


def test_bad_cli_arguments_fail_with_a_message(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--tables", "10,-3", "--out", str(tmp_path),
                 "--quiet"]) == 2
    assert "table_sizes[1] = -3" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--bottom-mlp", "13-32-9", "--out",
                 str(tmp_path), "--quiet"]) == 2
    assert "must end at the embedding dimension D=8" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "expected synthetic:planted" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2


def test_divergence_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="training diverged: the loss is (nan|inf) at "
                                                 "step"):
        train("dlrm", TINY.to_dict(), planted(), TrainConfig(batch_size=64, lr=1e30,
                                                             max_samples=64 * 50), tmp_path)
