"""`dlrm train --mlperf-log`: a tiny run of the MLPerf DLRM-DCNv2 recipe, judged by the
mlperf-logging package's own compliance checker run as the real tool (a subprocess, its exit
status and verdict), and the log's values read back against the run's own records."""

import json
import subprocess
import sys

import pytest

from dlrm.cli import main

pytest.importorskip("mlperf_logging", reason="mlperf-logging is not installed: the optional "
                                             "extra `pip install 'dlrm[mlperf]'`")
pytestmark = pytest.mark.usefixtures("one_thread")

RULESET = "6.0.0"  # the newest Training ruleset of mlperf-logging 4.1.x that has dlrm_dcnv2


def recipe(tmp_path, name, *extra):
    """The DLRM-DCNv2 recipe (D=128, 512-256-128 / 1024-1024-512-256-1, 3 cross layers of
    rank 512, Adagrad, constant lr) on tiny synthetic tables, 2 epochs of 8 steps."""
    log = tmp_path / f"{name}.log"
    run_dir = tmp_path / name
    rc = main(["train", "--model", "dlrm_dcnv2", "--preset", "mlperf", "--optimizer", "adagrad",
               "--lr", "0.005", "--data", "synthetic:planted", "--tables", "300,200,100",
               "--train-samples", "512", "--val-samples", "256", "--batch-size", "64",
               "--epochs", "2", "--eval-every", "4", "--log-every", "4", "--quiet",
               "--out", str(run_dir), "--mlperf-log", str(log), *extra])
    assert rc == 0
    return log, run_dir


def check(log, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
         "--ruleset", RULESET, "--log_output", str(tmp_path / "checker.log"), str(log)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    return out.returncode, out.stdout + out.stderr


def records(log):
    lines = [line for line in log.read_text().splitlines() if line.startswith(":::MLLOG ")]
    return [json.loads(line[len(":::MLLOG "):]) for line in lines]


@pytest.fixture(scope="module")
def open_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlperf")
    return (*recipe(tmp, "open"), tmp)


def test_open_division_log_passes_the_compliance_checker(open_run):
    log, _, tmp = open_run
    rc, output = check(log, tmp)
    assert rc == 0, output
    assert "SUCCESS" in output and "training_6.0.0/open_dlrm_dcnv2.yaml" in output


def test_log_values_are_the_runs(open_run):
    log, run_dir, _ = open_run
    recs = records(log)
    keys = [r["key"] for r in recs]
    value = {r["key"]: r["value"] for r in recs}
    assert value["submission_benchmark"] == "dlrm_dcnv2"
    assert value["submission_division"] == "open"
    assert value["global_batch_size"] == 64 and value["opt_name"] == "adagrad"
    assert value["opt_base_learning_rate"] == 0.005 and value["opt_adagrad_epsilon"] == 1e-8
    assert value["train_samples"] == 512 and value["eval_samples"] == 256
    assert keys.index("init_start") < keys.index("init_stop") < keys.index("run_start")
    # every evaluation of the run, in order, with its exact AUC and position
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "eval"]
    logged = [r for r in recs if r["key"] == "eval_accuracy"]
    assert [r["value"] for r in logged] == [e["auc"] for e in evals]
    assert [r["metadata"]["epoch_num"] for r in logged] == [0.5, 1.0, 1.5, 2.0]
    assert [r["metadata"]["samples_count"] for r in logged] == [256, 512, 768, 1024]
    # two epochs, a block per training stretch between evaluations, all closed
    assert keys.count("epoch_start") == keys.count("epoch_stop") == 2
    assert keys.count("block_start") == keys.count("block_stop") == 4
    assert keys.count("eval_start") == keys.count("eval_stop") == 4
    stop = recs[-1]
    assert stop["key"] == "run_stop" and stop["metadata"]["status"] == "aborted"  # AUC < target


def test_closed_division_log_carries_every_closed_key(tmp_path):
    """A closed-division log of the same recipe fails the checker on exactly what a tiny
    synthetic run cannot have, the full Terabyte evaluation set and AUC >= 0.80275, and on
    nothing else: every closed hyperparameter key is there with an accepted value. A target
    reached (here 0.0) ends the run with status success at that evaluation."""
    log, _ = recipe(tmp_path, "closed", "--mlperf-division", "closed",
                    "--mlperf-target-auc", "0.0")
    rc, output = check(log, tmp_path)
    assert rc != 0 and "FAILED" in output
    failed = {line.split("'")[1] for line in output.splitlines() if "CHECK for '" in line}
    assert failed == {"eval_samples"}, output
    assert "Failed checks for eval_accuracy : v['value'] >= 0.80275" in output
    assert "Required" not in output, output  # no missing key
    recs = records(log)
    assert recs[-1]["key"] == "run_stop" and recs[-1]["metadata"]["status"] == "success"
    assert sum(r["key"] == "eval_accuracy" for r in recs) == 1  # stopped at the first


def test_mlperf_log_refuses_to_overwrite_or_resume(tmp_path, capsys):
    existing = tmp_path / "mine.log"
    existing.write_text("keep me\n")
    base = ["train", "--preset", "tiny", "--train-samples", "256", "--val-samples", "64",
            "--batch-size", "64", "--quiet", "--out", str(tmp_path / "r")]
    assert main([*base, "--mlperf-log", str(existing)]) == 2
    assert existing.read_text() == "keep me\n"
    assert "exists" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "r"), "--mlperf-log",
                 str(tmp_path / "new.log")]) == 2
    assert "resumed" in capsys.readouterr().err
    assert main([*base, "--model", "dcn", "--mlperf-log", str(tmp_path / "x.log")]) == 2
    assert "--mlperf-benchmark" in capsys.readouterr().err
