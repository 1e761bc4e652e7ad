"""Worker for the distributed tests, started by torchrun: ``worker.py MODE WORKDIR``.

Modes (WORKDIR/job.json holds the parameters; rank 0 writes results into WORKDIR):

- ``exact``: for each placement, load the single-process initial state, train 20 steps on
  the global batches of ``make_batch`` and save losses + the gathered final state; also
  evaluate a small validation set across ranks; load ``load_from`` (a sharded checkpoint) and
  save the logits it gives on the probe batch; save a sharded checkpoint to ``save_to``.
- ``die`` / ``hang``: train through ``dlrm.distributed.train.train_distributed`` and make
  rank 1 exit (os._exit) or sleep at step 3.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from dlrm.config import DLRMConfig
from dlrm.data import open_data
from dlrm.distributed.checkpoint import (
    full_state_dict,
    load_sharded,
    load_state_into,
    save_sharded,
)
from dlrm.distributed.data_parallel import RankContext, comm_summary, gather_scores
from dlrm.distributed.launch import distributed_session
from dlrm.distributed.planner import plan_tables
from dlrm.distributed.train import build_sharded_model, evaluate_distributed, train_step
from dlrm.features import Batch, SparseFeatures, rank_slice
from dlrm.training.loop import TrainConfig
from dlrm.training.optim import build_optimizer


def make_batch(step: int, table_sizes: list[int], batch: int, num_dense: int = 13,
               max_bag: int = 3) -> Batch:
    """Global batch ``step``: multi-hot bags of 0..max_bag ids (empty bags included)."""
    gen = torch.Generator().manual_seed(1000 + step)
    num_features = len(table_sizes)
    lengths = torch.randint(0, max_bag + 1, (num_features, batch), generator=gen)
    values = []
    for f, n in enumerate(table_sizes):
        values.append(torch.randint(0, n, (int(lengths[f].sum()),), generator=gen))
    sparse = SparseFeatures.from_lengths(torch.cat(values), lengths.reshape(-1), num_features)
    dense = torch.rand(batch, num_dense, generator=gen)
    labels = torch.bernoulli(torch.full((batch,), 0.3), generator=gen)
    return Batch(dense, sparse, labels)


# Factories that make a tensor on the default device (the CPU) unless given ``device=``.
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye}


class HostTensorAudit(TorchFunctionMode):
    """Records every tensor factory called from ``src/dlrm/distributed`` without ``device=``.

    On CPU such a call works, but on a GPU rank it makes a CPU tensor next to CUDA ones and
    fails (or copies) there; this is how a CPU-only test guards the CUDA path's device
    discipline. ``calls`` holds ``file:line torch.name`` of each offender.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)  # the Python function that called the factory
            path = Path(caller.f_code.co_filename)
            if path.parent.name == "distributed" and path.parent.parent.name == "dlrm":
                self.calls.add(f"{path.name}:{caller.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


def sharded(job: dict, ctx: RankContext, placement: str, init: dict | None = None,
            **plan_options) -> torch.nn.Module:
    """The job's DLRM sharded by ``placement`` (``plan_tables`` options), loaded from a
    single-process state dict when given."""
    config = job["model_config"]
    plan = plan_tables(config["table_sizes"], config["embedding_dim"], ctx.world_size,
                       placement, **plan_options)
    model = build_sharded_model("dlrm", config, ctx, placement, plans={"embeddings": plan})
    if init is not None:
        load_state_into(model, init, "init_state.pt")
    return model


def run_exact(job: dict, workdir: Path, rank: int, world: int) -> None:
    config = DLRMConfig.from_dict(job["model_config"])
    ctx = RankContext(rank, world)
    init = torch.load(workdir / "init_state.pt", weights_only=True)
    results = {}
    audit = HostTensorAudit()  # around every step, evaluation and gather below
    for run in job["placements"]:  # "placement" or "placement@dense_optimizer"
        placement, _, optimizer_name = run.partition("@")
        ctx = RankContext(rank, world)  # fresh communication counters per run
        model = sharded(job, ctx, placement, init,
                        replicate_max_rows=job.get("replicate_max_rows", 64),
                        row_wise_min_rows=job.get("row_wise_min_rows"))
        plan = model.embeddings.plan
        optimizer = build_optimizer(model, optimizer_name or "sgd", job["lr"])
        losses = []
        for k in range(job["steps"]):
            if run == "auto@adagrad" and k == job["steps"] // 2 and job.get("save_opt_to"):
                save_sharded(model, ctx, job["save_opt_to"], "dlrm", job["model_config"],
                             optimizer=optimizer)  # mid-run
            batch = make_batch(k, config.table_sizes, job["batch_size"])
            with audit:
                losses.append(train_step(model, ctx, optimizer, batch))
        comm = comm_summary(model, ctx)
        stats = [None] * world
        torch.distributed.all_gather_object(
            stats, (comm["all_to_all_bytes_sent"], comm["all_reduce_bytes"]))
        results[run] = {"losses": losses, "state": full_state_dict(model, ctx),
                        "kinds": plan.kinds, "plan": plan.to_dict(), "comm_bytes": stats}
        if rank == 0:
            print(plan, flush=True)
    # Resume another world size's mid-run checkpoint, optimizer state included (resharded).
    if job.get("resume_from"):
        model = sharded(job, ctx, "row")
        optimizer = build_optimizer(model, "adagrad", job["lr"])
        load_sharded(model, job["resume_from"], optimizer)
        losses = [train_step(model, ctx, optimizer, make_batch(k, config.table_sizes,
                                                               job["batch_size"]))
                  for k in range(job["steps"] // 2, job["steps"])]
        results["resumed"] = {"losses": losses, "state": full_state_dict(model, ctx)}
    # Evaluation across ranks over a whole (small) validation set.
    data = open_data("synthetic:planted", table_sizes=config.table_sizes, rows_cap=None,
                     train_samples=1000, val_samples=job["val_samples"], test_samples=0)
    model = sharded(job, ctx, "auto", init, row_wise_min_rows=600)
    with audit:
        results["eval"] = evaluate_distributed(model, ctx, data, "val", job["eval_batch_size"])
    # N -> M: load a checkpoint saved by another world size, score the probe batch.
    if job.get("load_from"):
        model = sharded(job, ctx, job.get("load_placement", "auto"))
        load_sharded(model, job["load_from"])
        probe = make_batch(999, config.table_sizes, job["batch_size"])
        mine = rank_slice(len(probe), rank, world)
        model.eval()
        with torch.no_grad(), audit:
            logits = model(probe.dense[mine], probe.sparse)
            results["probe_logits"] = gather_scores(logits, len(probe), ctx)
        model.train()
        optimizer = build_optimizer(model, "sgd", job["lr"])
        train_step(model, ctx, optimizer, probe)  # the loaded model trains on and is saved
        save_sharded(model, ctx, job["save_to"], "dlrm", job["model_config"])
        results["saved_state"] = full_state_dict(model, ctx)
    if job.get("resume_run"):
        results["resume_run"] = run_interrupted_and_resumed(job, workdir, rank)
    every_rank: list = [None] * world
    torch.distributed.all_gather_object(every_rank, sorted(audit.calls))
    results["host_tensor_calls"] = sorted(set().union(*every_rank))
    if rank == 0:
        torch.save(results, workdir / f"results-{world}.pt")


class _Interrupt(Exception):
    pass


def run_interrupted_and_resumed(job: dict, workdir: Path, rank: int) -> dict:
    """train_distributed uninterrupted, and interrupted at step 13 then resumed from its
    step-10 checkpoint; returns both summaries."""
    from dlrm.distributed.train import train_distributed

    data = open_data("synthetic:planted", table_sizes=job["model_config"]["table_sizes"],
                     rows_cap=None, train_samples=5000, val_samples=500, test_samples=0)
    config = TrainConfig(batch_size=64, max_samples=64 * 20, checkpoint_every=10, log_every=5,
                         eval_batch_size=200, optimizer="adagrad", lr=0.05)

    def interrupt(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 13:
            raise _Interrupt  # on every rank, after the step's collectives

    kind, model_config = "dlrm", job["model_config"]
    whole = train_distributed(kind, model_config, data, config, workdir / "whole")
    try:
        train_distributed(kind, model_config, data, config, workdir / "cut", progress=interrupt)
        raise AssertionError("the interrupt did not happen")
    except _Interrupt:
        pass
    resumed = train_distributed(kind, model_config, data, config, workdir / "cut", resume=True)
    return {"whole": whole, "resumed": resumed}


def run_fault(mode: str, job: dict, workdir: Path, rank: int) -> None:
    from dlrm.distributed.train import train_distributed

    data = open_data("synthetic:random", table_sizes=job["model_config"]["table_sizes"],
                     rows_cap=None, train_samples=100_000, val_samples=256, test_samples=0)

    def progress(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 3 and rank == 1:
            if mode == "die":
                os._exit(7)
            time.sleep(3600)

    train_distributed("dlrm", job["model_config"], data,
                      TrainConfig(batch_size=64, log_every=1000), workdir / "run",
                      watchdog=session.watchdog, progress=progress)


if __name__ == "__main__":
    mode, workdir = sys.argv[1], Path(sys.argv[2])
    job = json.loads((workdir / "job.json").read_text())
    with distributed_session(timeout_s=job.get("timeout_s", 60), threads=1) as session:
        if mode == "exact":
            run_exact(job, workdir, session.rank, session.world_size)
        else:
            run_fault(mode, job, workdir, session.rank)
