"""The shared training loop on distributed ranks, against plain single-process DLRM.

Real `dlrm train` jobs (gloo, 1 thread per process, tiny preset): an MLPerf lr schedule and
early stopping on 2 processes, a 2-node job (two torchrun agents meeting through a c10d
rendezvous on localhost), and, on a machine with a GPU, one rank on CUDA/nccl. Each is
replayed in one process by ``replay_in_one_process`` (plain ``DLRM``, the same initial weights,
batches, optimizer, schedule, evaluations and stopping rule) and must match it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from dlrm.config import DLRMConfig
from dlrm.data import open_data
from dlrm.distributed.checkpoint import load_meta, load_single_process
from dlrm.distributed.comm_model import all_to_all_bytes_per_rank
from dlrm.distributed.planner import ShardingPlan
from dlrm.models.dlrm import DLRM
from dlrm.training.loop import TrainConfig, evaluate
from dlrm.training.optim import build_optimizer
from dlrm.training.schedule import build_schedule

DATA_ARGS = ["--preset", "tiny", "--rows-cap", "1000", "--train-samples", "40000",
             "--val-samples", "2000", "--eval-batch-size", "1000", "--batch-size", "128",
             "--log-every", "1", "--dist-timeout", "60", "--quiet"]
# MLPerf schedule: warmup 10, constant to 30, power-2 decay over 20 steps; the run stops at
# step 45, mid-decay, where the lr is 0.01 + (0.5 - 0.01) * (5/20)^2 = 0.040625.
SCHEDULE_ARGS = ["--lr", "0.5", "--lr-schedule", "mlperf", "--warmup-steps", "10",
                 "--decay-start", "30", "--decay-steps", "20", "--end-lr", "0.01",
                 "--max-samples", str(128 * 45), "--placement", "row"]
# SGD at lr 1.0 makes the validation AUC stall: with patience 2 the run stops well before its
# 200 steps (at step 95 on this data, best at 85) and reports the best checkpoint. lr 1.0 is
# chaotic: the 1-ulp differences between a 2-rank all-reduce and one process's sums grow, and
# past ~120 steps the two runs part (measured: losses equal to 6e-8 up to step 124, 5e-4 at
# 125), so the run must stop well before that.
# AUC tolerance: one score pair flipping order on 2000 validation samples moves the AUC by
# ~1.3e-6, which float32 rounding can do; 1e-4 still fails on any real difference.
AUC_TOL = 1e-4
PATIENCE_ARGS = ["--lr", "1.0", "--eval-every", "5", "--patience", "2",
                 "--max-samples", str(128 * 200), "--placement", "auto"]
TOL = {"rtol": 1e-5, "atol": 1e-6}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def dlrm_train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlrm", "train", *args], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return out, err


def replay_in_one_process(run_dir: Path, device: str = "cpu") -> dict:
    """Replay a distributed run (its config.json) with plain ``DLRM`` in this process.

    Same initial weights (the same seed builds the same model in any number of processes),
    the same batches, optimizer and lr schedule, evaluations every ``eval_every`` steps and
    the early-stopping rule of ``run_loop``: stop once ``patience`` evaluations in a row did
    not beat the best AUC; report the best weights if they beat the final ones.
    """
    saved = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig(**{**saved["train"], "device": device})
    data = open_data(saved["data"])
    model_config = saved["model_config"]
    torch.manual_seed(config.seed)
    model = DLRM(DLRMConfig.from_dict(model_config)).to(device)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.sparse_optimizer,
                                config.sparse_lr, config.weight_decay)
    schedule = build_schedule(config.lr_schedule)
    total = config.max_samples // config.batch_size
    assert total <= data.num_samples("train") // config.batch_size  # one epoch: simple replay

    def val() -> dict[str, float]:
        return evaluate(model, data, "val", config.eval_batch_size, device=device)

    losses, evals = [], []
    best = {"auc": -math.inf, "step": 0, "state": None}
    evals_since_best = 0
    batches = data.batches("train", config.batch_size, shuffle=True, seed=config.seed,
                           drop_last=True)
    for step, batch in enumerate(batches, start=1):
        if schedule is not None:
            optimizer.set_lr(schedule.lr(step - 1, config.lr))
        batch = batch.to(device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(batch.dense, batch.sparse), batch.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if step == total:
            break
        if config.eval_every and step % config.eval_every == 0:
            metrics = val()
            evals.append((step, metrics["auc"]))
            if metrics["auc"] > best["auc"]:
                best = {"auc": metrics["auc"], "step": step,
                        "state": copy.deepcopy(model.state_dict())}
                evals_since_best = 0
            else:
                evals_since_best += 1
            if config.patience and evals_since_best >= config.patience:
                break
    final = val()
    evals.append((step, final["auc"]))
    result = {"steps": step, "losses": losses, "evals": evals, "reported_step": step,
              "state": model.state_dict(), "metrics": final, "stopped_early": step < total}
    if config.patience and best["auc"] > final["auc"]:
        model.load_state_dict(best["state"])
        result.update(reported_step=best["step"], metrics=val(), best_state=best["state"])
    return result


def recorded(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def assert_same_weights(folder: Path, reference: dict) -> None:
    model, _ = load_single_process(folder)
    for key, value in reference.items():
        torch.testing.assert_close(model.state_dict()[key], value.cpu(), **TOL, msg=key)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """`dlrm train --nproc 2` with an lr schedule and with early stopping, run side by side."""
    root = tmp_path_factory.mktemp("loop")
    procs = {name: dlrm_train([*DATA_ARGS, *args, "--nproc", "2", "--out",
                               str(root / name)])
             for name, args in (("schedule", SCHEDULE_ARGS), ("patience", PATIENCE_ARGS))}
    for proc in procs.values():
        finish(proc)
    return root


def test_lr_schedule_on_2_processes_equals_one_process(two_process_runs):
    run_dir = two_process_runs / "schedule"
    ref = replay_in_one_process(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 45
    losses = [r["loss"] for r in recorded(run_dir, "train")]  # --log-every 1: every step
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref["losses"]), **TOL)
    assert_same_weights(run_dir / "last", ref["state"])
    assert summary["val_auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-6)
    # The lr of the last step (45 of warmup 10 / decay 30..50), as the checkpoint saved it.
    expected_lr = 0.01 + (0.5 - 0.01) * (5 / 20) ** 2
    optimizer = load_meta(run_dir / "last")["optimizer"]
    assert optimizer["sparse_lr"] == pytest.approx(expected_lr, rel=1e-12)
    assert optimizer["dense"]["param_groups"][0]["lr"] == pytest.approx(expected_lr, rel=1e-12)


def test_early_stopping_on_2_processes_equals_one_process(two_process_runs):
    run_dir = two_process_runs / "patience"
    ref = replay_in_one_process(run_dir)
    assert ref["stopped_early"] and ref["reported_step"] < ref["steps"] < 200  # a real stop
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["steps"] == ref["steps"]
    assert summary["reported_step"] == ref["reported_step"]
    got = [(r["step"], r["auc"]) for r in recorded(run_dir, "eval")]
    assert [s for s, _ in got] == [s for s, _ in ref["evals"]]
    torch.testing.assert_close(torch.tensor([a for _, a in got], dtype=torch.float64),
                               torch.tensor([a for _, a in ref["evals"]], dtype=torch.float64),
                               rtol=0, atol=AUC_TOL)
    # Reported: the best checkpoint's metrics, not the last evaluation's.
    assert summary["val_auc"] == pytest.approx(ref["metrics"]["auc"], abs=AUC_TOL)
    assert summary["val_auc"] > got[-1][1]
    assert_same_weights(run_dir / "best", ref["best_state"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_rendezvous_on_localhost_equals_one_process(tmp_path):
    """Two torchrun agents (`--nnodes 2`, one process each) meet through a c10d rendezvous on
    127.0.0.1, as two hosts would; both ranks finish with the same loss and AUC, and the run
    equals plain DLRM trained in one process."""
    run_dir = tmp_path / "run"
    port, run_id = free_port(), f"dlrm-test-{uuid.uuid4().hex[:8]}"
    args = [*DATA_ARGS, "--lr", "0.5", "--max-samples", str(128 * 30), "--eval-every", "10",
            "--placement", "table", "--out", str(run_dir)]
    agents = []
    tick = time.perf_counter()
    for node in (0, 1):
        # is_host: which agent hosts the rendezvous store (on real hosts torchrun infers it
        # from the endpoint's hostname; here both agents live on that host).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
               f"--rdzv-conf=is_host={int(node == 0)},join_timeout=60",
               "--local-addr=127.0.0.1", "-m", "dlrm", "train", *args]
        agents.append(subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True))
    logs = [finish(agent) for agent in agents]
    seconds = time.perf_counter() - tick
    # Each rank logs how it finished; rank 0 alone prints the summary.
    done = [line for _, err in logs for line in err.splitlines() if ": done at step" in line]
    assert len(done) == 2, "\n".join(err[-2000:] for _, err in logs)
    by_rank = {line.split("rank ")[1].split(":")[0]: line.split(": done at")[1] for line in done}
    assert set(by_rank) == {"0", "1"} and by_rank["0"] == by_rank["1"], done
    assert sum(out.count("val AUC") for out, _ in logs) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 30
    # Rank 0's training traffic per step is the model's (evaluations are not counted).
    plans = json.loads((run_dir / "config.json").read_text())["plans"]
    plan = ShardingPlan.from_dict(plans["embeddings"])
    assert summary["all_to_all_bytes_sent_per_step"] == all_to_all_bytes_per_rank(plan, 128)[0]
    ref = replay_in_one_process(run_dir)
    losses = [r["loss"] for r in recorded(run_dir, "train")]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref["losses"]), **TOL)
    got = [(r["step"], r["auc"]) for r in recorded(run_dir, "eval")]
    assert [s for s, _ in got] == [10, 20, 30]
    for (_, auc), (_, ref_auc) in zip(got, ref["evals"]):
        assert auc == pytest.approx(ref_auc, abs=AUC_TOL)  # one score pair may swap
    assert_same_weights(run_dir / "last", ref["state"])
    assert seconds < 60, seconds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_rank_on_cuda_nccl_equals_one_process_on_cuda(tmp_path):
    """torchrun, 1 rank, --device cuda: nccl, cuda:0, batches moved to the GPU; the same
    losses, metrics and weights as plain DLRM trained on the same GPU (tolerances allow for
    CUDA's atomic, unordered row-gradient sums)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           "-m", "dlrm", "train", *DATA_ARGS, *SCHEDULE_ARGS, "--eval-every", "15",
           "--device", "cuda", "--out", str(run_dir)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "on cuda:0" in proc.stderr  # the rank's device, logged at start
    ref = replay_in_one_process(run_dir, device="cuda")
    losses = [r["loss"] for r in recorded(run_dir, "train")]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref["losses"]), rtol=1e-4,
                               atol=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-4)
    model, _ = load_single_process(run_dir / "last")
    for key, value in ref["state"].items():
        torch.testing.assert_close(model.state_dict()[key], value.cpu(), rtol=1e-4, atol=1e-5,
                                   msg=key)
