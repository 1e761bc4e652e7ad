"""Resume continues the same run: changes refused or recorded, a finished run left alone,
torn tails tolerated, the trained model saved before anything can fail late."""

from __future__ import annotations

import json
import logging

import pytest

from dlrm.cli import main
from dlrm.config import preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.checkpoint import load
from dlrm.training.loop import ConfigError, ResumeConflict, TrainConfig, train

TINY = preset("tiny")
ARGS = ["--preset", "tiny", "--train-samples", "4096", "--val-samples", "2048",
        "--batch-size", "128", "--threads", "1", "--quiet"]


def data(**kw) -> SyntheticData:
    return SyntheticData(SyntheticConfig(table_sizes=TINY.table_sizes, train_samples=4096,
                                         val_samples=2048, test_samples=0, **kw))


CONFIG = TrainConfig(batch_size=128, lr=0.1, max_samples=128 * 30, checkpoint_every=10,
                     log_every=5, eval_every=12, threads=1)


class Interrupt(Exception):
    pass


def interrupted_run(run_dir, at_step: int, config: TrainConfig = CONFIG) -> None:
    """A run stopped at ``at_step`` by an exception, as a kill would stop it (the lock is
    released; what was written stays)."""
    def stop(event: dict) -> None:
        if event["event"] == "step" and event["step"] == at_step:
            raise Interrupt

    with pytest.raises(Interrupt):
        train("dlrm", TINY.to_dict(), data(), config, run_dir, progress=stop)


def records(run_dir) -> list[tuple]:
    return [(r["event"], r["step"], r.get("loss"), r.get("auc"))
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    return run, train("dlrm", TINY.to_dict(), data(), CONFIG, run)


def test_a_torn_metrics_record_is_dropped_and_resume_is_exact(tmp_path, reference, caplog):
    ref_dir, ref = reference
    run = tmp_path / "run"
    interrupted_run(run, at_step=23)  # checkpoints at 10 and 20 (and the eval at 12)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "step": 25, "lo')  # a write cut by a kill
    with caplog.at_level(logging.WARNING):
        summary = train("dlrm", TINY.to_dict(), data(), CONFIG, run, resume=True)
    assert "metrics.jsonl:" in caplog.text and "dropped a torn last record" in caplog.text
    for key in ("val_auc", "val_logloss", "steps", "samples_seen", "final_train_loss"):
        assert summary[key] == ref[key], key
    assert records(run) == records(ref_dir)


def test_a_run_killed_before_its_first_checkpoint_starts_again_exactly(tmp_path, reference):
    ref_dir, ref = reference
    run = tmp_path / "run"
    interrupted_run(run, at_step=4)
    assert not (run / "last.pt").exists() and (run / "config.json").exists()
    summary = train("dlrm", TINY.to_dict(), data(), CONFIG, run, resume=True)
    assert summary["val_auc"] == ref["val_auc"]
    assert records(run) == records(ref_dir)


def test_the_trained_model_is_saved_before_anything_can_fail_late(tmp_path, reference):
    """The test split fails at the very end: last.pt already holds the trained model; resume
    redoes only the end and equals the uninterrupted run."""
    ref_dir, ref = reference
    broken = data()
    original = broken.batches

    def batches(split, *args, **kwargs):
        if split == "val" and broken.failing:
            raise OSError(28, "No space left on device")
        return original(split, *args, **kwargs)

    broken.failing = False
    broken.batches = batches

    def fail_at_the_end(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 30:
            broken.failing = True  # the final evaluation fails

    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train("dlrm", TINY.to_dict(), broken, CONFIG, run, progress=fail_at_the_end)
    saved = load(run / "last.pt")
    assert saved["step"] == 30 and saved["loop_state"]["trained"] is True
    assert not (run / "summary.json").exists()
    summary = train("dlrm", TINY.to_dict(), data(), CONFIG, run, resume=True)
    assert summary["val_auc"] == ref["val_auc"] and summary["steps"] == 30
    assert records(run) == records(ref_dir)  # the end's records once


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--max-samples", "2560", "--out", str(run)]) == 0
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{run} finished at step 20 of 20" in out and "nothing changed" in out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == files


def test_flags_that_would_change_a_resumed_run_are_refused_and_listed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--max-samples", "2560", "--out", str(run)]) == 0
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    rc = main(["train", "--resume", str(run), "--lr", "0.3", "--optimizer", "adam",
               "--embedding-dim", "16", "--zipf", "1.3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    for part in ("--embedding-dim 16 (the run has None)", "--lr 0.3 (the run has 0.1)",
                 "--optimizer 'adam' (the run has 'sgd')", "--zipf 1.3 (the run has 1.1)",
                 "would change the run", f"--config {run}/config.json"):
        assert part in err, part
    assert err.count("\n") == 1  # one line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == files
    # The run's own values are no change; --config and --out belong to new runs.
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--preset", "tiny",
                 "--quiet"]) == 0
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--resume", str(run), "--config", str(run / "config.json")]) == 2


def test_a_longer_run_is_accepted_and_recorded(tmp_path, capsys):
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", *ARGS, "--max-samples", "2560", "--out", str(run)]) == 0
    assert main(["train", *ARGS, "--max-samples", "5120", "--epochs", "2",
                 "--out", str(whole)]) == 0
    assert main(["train", "--resume", str(run), "--max-samples", "5120", "--epochs", "2",
                 "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    first = json.loads((run / "summary-step20.json").read_text())  # kept beside it
    assert first["steps"] == 20 and summary["steps"] == 40
    record = json.loads((run / "config.json").read_text())
    assert record["resumes"][0]["changed"] == {"epochs": [1, 2], "max_samples": [2560, 5120]}
    assert record["args"]["epochs"] == 2 and record["train"]["max_samples"] == 5120
    assert summary["command"].startswith("dlrm train --preset tiny")  # the run's own
    assert summary["resumes"] == record["resumes"]
    # The same training as a run that was that long from the start (the lr is constant).
    whole_summary = json.loads((whole / "summary.json").read_text())
    assert summary["final_train_loss"] == whole_summary["final_train_loss"]
    assert summary["val_auc"] == whole_summary["val_auc"]
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40]  # each evaluation once


def test_the_library_refuses_a_resume_that_would_change_the_run(tmp_path):
    run = tmp_path / "run"
    interrupted_run(run, at_step=15)
    with pytest.raises(ResumeConflict, match=r"lr 0.1 -> 0.2.*only epochs, max_samples"):
        train("dlrm", TINY.to_dict(), data(), TrainConfig(**{**CONFIG.__dict__, "lr": 0.2}),
              run, resume=True)
    with pytest.raises(ResumeConflict, match="model_config"):
        train("dlrm", {**TINY.to_dict(), "embedding_dim": 4, "bottom_mlp": [13, 4]}, data(),
              CONFIG, run, resume=True)
    with pytest.raises(ConfigError, match="already at step 12 .1536 samples."):
        train("dlrm", TINY.to_dict(), data(), TrainConfig(**{**CONFIG.__dict__,
                                                            "max_samples": 128 * 5}),
              run, resume=True)
    other = data(seed=9)
    with pytest.raises(ValueError, match="another fingerprint"):
        train("dlrm", TINY.to_dict(), other, CONFIG, run, resume=True)


def test_checks_before_the_first_step(tmp_path, capsys):
    """Everything checkable fails at once, naming its flag, and creates nothing."""
    cases = {("--lr", "nan"): "--lr nan: must be a finite number above 0",
             ("--lr", "-1"): "--lr -1.0: must be a finite number above 0",
             ("--log-every", "0"): "--log-every 0: must be at least 1",
             ("--eval-batch-size", "0"): "--eval-batch-size 0: must be at least 1",
             ("--eval-every", "-1"): "--eval-every -1: must be at least 0",
             ("--checkpoint-every", "-5"): "--checkpoint-every -5: must be at least 0",
             ("--patience", "-1"): "--patience -1: must be at least 0",
             ("--patience", "2"): "--patience 2: counts evaluations",
             ("--val-samples", "0"): "the data has no val samples",
             ("--device", "gpu"): "--device 'gpu': expected cpu, cuda or cuda:K",
             ("--warmup-steps", "-3", "--lr-schedule", "mlperf"): "warmup_steps = -3"}
    for flags, message in cases.items():
        assert main(["train", *ARGS, *flags, "--out", str(tmp_path / "r")]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
        assert not (tmp_path / "r").exists()


def test_ctrl_c_says_how_to_continue_and_resume_says_where_it_starts(tmp_path):
    """A real SIGINT: one line saying how to continue (exit status 130, no traceback); the
    resumed run says at which step it continues."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dlrm", "train", *ARGS, "--train-samples", "400000",
           "--batch-size", "64", "--checkpoint-every", "20", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"continue it with: dlrm train --resume {run}" in err and "Traceback" not in err
    step = load(run / "last.pt")["step"]
    resumed = subprocess.run([sys.executable, "-m", "dlrm", "train", "--resume", str(run),
                              "--max-samples", str(64 * (step + 5))], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {step}; changed: max_samples None -> {64 * (step + 5)}" \
        in resumed.stderr


def test_a_damaged_summary_is_named_and_the_end_done_again(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--max-samples", "2560", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    before = records(run)
    (run / "summary.json").write_text((run / "summary.json").read_text()[:40])  # torn
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert f"{run / 'summary.json'}: not valid JSON" in caplog.text
    again = json.loads((run / "summary.json").read_text())
    assert again["val_auc"] == summary["val_auc"] and again["steps"] == 20
    assert records(run) == before  # the final evaluation once
