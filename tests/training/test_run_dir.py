"""A run directory belongs to one run: unique names, one writer (two real processes), refusal
of a directory that holds a run, torn-tail tolerance of what the loop reads back."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlrm.cli import main
from dlrm.training.checkpoint import load
from dlrm.training.run_dir import (
    RunDirBusy,
    RunDirError,
    RunDirLock,
    claim,
    new_run_dir,
    read_jsonl,
)

TINY = ["--preset", "tiny", "--train-samples", "4096", "--val-samples", "2048",
        "--batch-size", "128", "--threads", "1", "--quiet"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def dlrm(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlrm", *args], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_processes_never_get_the_same_new_directory(tmp_path):
    """Two real processes make 40 run directories each with one prefix, at the same time (so
    within the same seconds): 80 distinct directories, the clashes numbered."""
    script = textwrap.dedent(f"""
        import sys
        from dlrm.training.run_dir import new_run_dir
        sys.stdin.readline()  # start together
        print("\\n".join(str(new_run_dir({str(tmp_path)!r}, "dlrm")) for _ in range(40)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env()) for _ in range(2)]
    time.sleep(2.0)  # both imported and waiting
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    made = [line for proc in procs for line in proc.communicate(timeout=60)[0].split()]
    assert len(made) == 80 and len(set(made)) == 80
    assert sorted(made) == sorted(str(p) for p in tmp_path.iterdir())
    assert any(name.rsplit("-", 1)[-1] == "2" for name in made)  # a clash was numbered


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    """While `dlrm train` writes RUN, a second process is refused (resume or a new run in
    it); after a real SIGKILL the lock is gone and `--resume` continues the run."""
    run = tmp_path / "run"
    # Far more steps than any machine takes in the checks below, so the first run is still
    # training when it is killed (one epoch of 6,250 steps once ended before the kill in CI).
    planned = 64 * 10_000_000
    first = dlrm("train", *TINY, "--train-samples", "400000", "--batch-size", "64",
                 "--epochs", "1000", "--max-samples", str(planned), "--checkpoint-every", "20",
                 "--out", str(run))
    deadline = time.time() + 120
    while not (run / "last.pt").exists():
        assert first.poll() is None, first.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    for args in (["--resume", str(run)], [*TINY, "--out", str(run)]):
        second = dlrm("train", *args)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"{run} is being written by another dlrm process (pid {first.pid} " in err
        assert "Traceback" not in err
    assert first.poll() is None, "the first run ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = load(run / "last.pt")["step"]
    # A shorter run is an accepted, recorded change; it finishes the run quickly.
    resumed = dlrm("train", "--resume", str(run), "--max-samples", str(64 * (killed_at + 20)),
                   "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == killed_at + 20
    record = json.loads((run / "config.json").read_text())
    assert record["resumes"][-1]["changed"] == {
        "max_samples": [planned, 64 * (killed_at + 20)]}


def test_two_runs_started_on_one_directory_at_once(tmp_path):
    """Two real `dlrm train --out RUN` at the same time: one trains, the other is refused
    (busy, or RUN already holds the first's run); RUN holds one run's files."""
    run = tmp_path / "run"
    procs = [dlrm("train", *TINY, "--max-samples", "2560", "--seed", str(seed),
                  "--out", str(run)) for seed in (1, 2)]
    results = [(proc.wait(timeout=300), proc.communicate()[1]) for proc in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    winner = [k for k, (code, _) in enumerate(results) if code == 0][0]
    refusal = results[1 - winner][1]
    assert ("is being written by another dlrm process" in refusal
            or "already holds a run" in refusal), refusal
    record = json.loads((run / "config.json").read_text())
    assert record["args"]["seed"] == winner + 1
    assert load(run / "last.pt")["train_config"]["seed"] == winner + 1


def test_a_directory_holding_a_run_or_other_files_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--max-samples", "1280", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a run (finished at step 10); continue it with `dlrm train " \
           f"--resume {run}`, or choose a new --out" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert main(["train", *TINY, "--out", str(other)]) == 2
    assert "is not empty (it holds todo.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]
    # The old spelling still works, with a warning.
    assert main(["train", *TINY, "--max-samples", "1280", "--run-dir",
                 str(tmp_path / "old")]) == 0
    assert "--run-dir is deprecated; use --out" in capsys.readouterr().err


def test_auto_named_runs_and_a_refused_run_leave_no_empty_directory(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["train", *TINY, "--max-samples", "1280", "--runs-root", str(root)]) == 0
    assert main(["train", *TINY, "--max-samples", "1280", "--runs-root", str(root)]) == 0
    made = sorted(p.name for p in root.iterdir())
    assert len(made) == 2 and all(name.startswith("dlrm-") for name in made)
    assert main(["train", *TINY, "--val-samples", "0", "--runs-root", str(root)]) == 2
    assert "no val samples" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == made


def test_lock_and_claim_in_one_process(tmp_path):
    run = tmp_path / "r"
    with claim(run, resume=False):
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()} on"):
            RunDirLock(run).acquire()
        (run / "config.json").write_text('{"model_config": {}, "train": {}, "data": {}}')
    with claim(run, resume=True):
        pass
    with pytest.raises(RunDirError, match="already holds a run"):
        with claim(run, resume=False):
            pass
    (tmp_path / "bare").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        with claim(tmp_path / "bare", resume=True):
            pass
    with pytest.raises(RunDirError, match="no such run directory"):
        with claim(tmp_path / "nope", resume=True):
            pass


def test_jsonl_reader_drops_a_torn_record_and_names_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 3}\n{"step": 4, "lo')
    with caplog.at_level(logging.WARNING):
        records = read_jsonl(path)
    assert records == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert f"{path}:3: dropped a record that is not valid JSON" in caplog.text
    assert f"{path}:5: dropped a torn last record, cut by a killed write" in caplog.text
    assert read_jsonl(path, limit=2) == [{"step": 1}, {"step": 2}]
    assert new_run_dir(tmp_path / "p", "x").is_dir()


def test_every_file_the_loop_reads_back_is_written_atomically(tmp_path):
    """config.json, summary.json and checkpoints go through atomic_file (a temporary file
    renamed over the target), with the permissions a plain open() gives."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--max-samples", "1280", "--out", str(run)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "summary.json", "last.pt", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list(run.glob(".*.tmp"))
    assert Path(run / ".lock").read_text().startswith("pid ")


def test_a_distributed_job_follows_the_same_rules(tmp_path):
    """A directory that holds a run, given to `--nproc 2` (refused before starting the ranks)
    or to a torchrun job (every rank stops at once with rank 0's refusal, printed once; no
    rank waits for a peer that will never come); a single-process run is not resumed on 2
    processes."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--max-samples", "1280", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    refusal = f"{run} already holds a run (finished at step 10)"
    proc = dlrm("train", *TINY, "--nproc", "2", "--out", str(run))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and refusal in err and "torch.distributed.run" not in err
    tick = time.time()
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "dlrm", "train", *TINY,
                          "--dist-timeout", "60", "--out", str(run)],
                         env=env(), capture_output=True, text=True, timeout=180)
    assert job.returncode != 0 and job.stderr.count(refusal) == 1, job.stderr[-3000:]
    assert time.time() - tick < 60  # not a collective timeout
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--nproc", "2"]) == 2


def test_a_distributed_run_continues_on_one_process_made_longer(tmp_path):
    """2 ranks train 10 steps; `--resume` without --nproc continues on one process to 20 steps
    (recorded: epochs, max_samples, world_size) and ends as one process trained 20 steps."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    longer = ["--epochs", "2", "--max-samples", "2560"]
    proc = dlrm("train", *TINY, "--max-samples", "1280", "--nproc", "2", "--out", str(run))
    assert main(["train", *TINY, *longer, "--out", str(whole)]) == 0
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    resumed = dlrm("train", "--resume", str(run), *longer, "--quiet")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err[-3000:]
    record = json.loads((run / "config.json").read_text())
    assert record["resumes"][-1]["changed"] == {"epochs": [1, 2], "max_samples": [1280, 2560],
                                                "world_size": [2, 1]}
    ours = json.loads((run / "summary.json").read_text())
    theirs = json.loads((whole / "summary.json").read_text())
    assert ours["steps"] == theirs["steps"] == 20
    assert ours["val_auc"] == pytest.approx(theirs["val_auc"], abs=1e-4)
    assert ours["final_train_loss"] == pytest.approx(theirs["final_train_loss"], abs=1e-5)
