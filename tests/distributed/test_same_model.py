"""Same seed, same model, any world size — through the CLI, as a user runs it.

`dlrm train` in one process and `dlrm train --nproc N` (torchrun, gloo) with the same flags build
the same weights (embedding rows drawn per (seed, table, row block), the dense part from the
same seed), read the same global batches and end with the same validation metrics, for every
model kind and every embedding option, without loading one state into both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = ["--preset", "tiny", "--rows-cap", "1000", "--train-samples", "20000",
         "--val-samples", "2000", "--batch-size", "128", "--max-samples", str(128 * 40),
         "--eval-every", "20", "--eval-batch-size", "1000", "--optimizer", "adagrad",
         "--lr", "0.05", "--seed", "3", "--log-every", "1", "--threads", "1", "--quiet",
         "--dist-timeout", "60"]
# AUC on 2000 samples moves by ~1e-6 when float32 rounding swaps one pair of scores.
TOL = 1e-4


def train(run_dir: Path, extra: list[str], nproc: int | None = None
          ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dlrm", "train", *FLAGS, *extra, "--out", str(run_dir)]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


# Every registered kind, and each embedding option of the reference (QR, mixed dimensions,
# lookup-time hashing) on DLRM.
CASES = {"dlrm": ["--model", "dlrm"],
         "dlrm_dcnv2": ["--model", "dlrm_dcnv2"],
         "dcn": ["--model", "dcn"],
         "dcnv2": ["--model", "dcnv2"],
         "wdl": ["--model", "wdl"],
         "deepfm": ["--model", "deepfm"],
         "lr": ["--model", "lr"],
         "dlrm-qr": ["--model", "dlrm", "--qr-threshold", "200", "--qr-collisions", "4"],
         "dlrm-md": ["--model", "dlrm", "--md-alpha", "0.3"],
         "dlrm-hashed": ["--model", "dlrm", "--max-ind-range", "300"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case in one process and on 2 processes (DLRM with QR tables on 3 as well); the
    single-process runs go two at a time beside the distributed ones."""
    root = tmp_path_factory.mktemp("same")
    jobs = [(name, world) for name in CASES for world in (1, 2)] + [("dlrm-qr", 3)]
    for k in range(0, len(jobs), 2):
        procs = [train(root / f"{name}-{world}", CASES[name], world if world > 1 else None)
                 for name, world in jobs[k:k + 2]]
        for proc in procs:
            finished(proc)
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_one_and_two_processes_train_the_same_model(runs, name):
    one = json.loads((runs / f"{name}-1" / "summary.json").read_text())
    two = json.loads((runs / f"{name}-2" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["steps"] == two["steps"] == 40
    # The same weights from the first step: the first losses agree to float32 rounding.
    first_one, first_two = losses(runs / f"{name}-1"), losses(runs / f"{name}-2")
    assert abs(first_one[0] - first_two[0]) < 1e-5, (first_one[0], first_two[0])
    assert max(abs(a - b) for a, b in zip(first_one, first_two)) < 1e-4
    for key in ("val_auc", "val_logloss"):
        assert two[key] == pytest.approx(one[key], abs=TOL), (key, one[key], two[key])
    assert one["val_auc"] > 0.6  # it learned something, so equal metrics mean something


def test_three_processes_too(runs):
    one = json.loads((runs / "dlrm-qr-1" / "summary.json").read_text())
    three = json.loads((runs / "dlrm-qr-3" / "summary.json").read_text())
    assert three["world_size"] == 3
    for key in ("val_auc", "val_logloss"):
        assert three[key] == pytest.approx(one[key], abs=TOL), key
    # Each QR module's quotient and remainder tables were sharded.
    plans = json.loads((runs / "dlrm-qr-3" / "config.json").read_text())["plans"]
    assert {"embeddings.full", "embeddings.quotient", "embeddings.remainder"} <= set(plans)
