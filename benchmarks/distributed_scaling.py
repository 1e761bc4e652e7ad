"""Hybrid-parallel scaling on this machine: 1, 2, 4 gloo processes (1 thread each).

For each process count N it launches ``torchrun --standalone --nproc_per_node=N`` on this file
(worker mode), trains the same model on the same global batches (random ids, pre-generated,
so data generation is not timed) and reports, per step: samples/s, and the split of rank time
into compute (everything else), all-to-all and all-reduce (median over ranks of per-rank
totals), plus the bytes sent by all ranks together, beside the model of
``dlrm.distributed.comm_model``. The baseline is the single-process ``DLRM`` with 1 thread,
timed in the driver in the same run.

    python benchmarks/distributed_scaling.py                       # kaggle preset, rows <= 100k
    python benchmarks/distributed_scaling.py --nprocs 1,2 --steps 10 --batch 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlrm.config import preset
from dlrm.features import Batch, SparseFeatures


def make_batches(table_sizes: list[int], batch: int, count: int, num_dense: int = 13,
                 seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in table_sizes], 1)
        out.append(Batch(torch.rand(batch, num_dense, generator=gen),
                         SparseFeatures.from_ids(ids),
                         torch.randint(0, 2, (batch,), generator=gen).float()))
    return out


def config_from(args: argparse.Namespace):
    return preset(args.preset, rows_cap=args.rows_cap)


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from dlrm.distributed.comm_model import all_reduce_buffer_bytes, all_to_all_bytes_per_rank
    from dlrm.distributed.data_parallel import RankContext, comm_summary, reset_comm_stats
    from dlrm.distributed.launch import distributed_session
    from dlrm.distributed.train import build_sharded_model, train_step
    from dlrm.training.optim import build_optimizer

    with distributed_session(timeout_s=600, threads=1) as session:
        cfg = config_from(args)
        ctx = RankContext(session.rank, session.world_size)
        model = build_sharded_model("dlrm", cfg.to_dict(), ctx, args.placement)
        model.check_inputs = False
        opt = build_optimizer(model, "sgd", 0.1)
        batches = make_batches(cfg.table_sizes, args.batch, 4)
        for k in range(args.warmup):
            train_step(model, ctx, opt, batches[k % 4])
        dist.barrier()
        reset_comm_stats(model, ctx)
        step_times = []
        tick = time.perf_counter()
        for k in range(args.steps):
            t0 = time.perf_counter()
            train_step(model, ctx, opt, batches[k % 4])
            step_times.append(time.perf_counter() - t0)
        dist.barrier()
        wall = time.perf_counter() - tick
        s = comm_summary(model, ctx)
        mine = {"rank": session.rank, "a2a_s": s["all_to_all_seconds"],
                "allreduce_s": s["all_reduce_seconds"], "a2a_bytes": s["all_to_all_bytes_sent"],
                "allreduce_bytes": s["all_reduce_bytes"], "step_s": sum(step_times),
                "median_step_s": statistics.median(step_times)}
        everyone: list = [None] * session.world_size
        dist.all_gather_object(everyone, mine)
        if session.rank == 0:
            plan = model.embeddings.plan
            Path(args.out).write_text(json.dumps({
                "world_size": session.world_size, "wall_s": wall, "ranks": everyone,
                "model_a2a_bytes_per_step": sum(all_to_all_bytes_per_rank(plan, args.batch)),
                "model_allreduce_buffer_bytes": all_reduce_buffer_bytes(model),
                "kinds": plan.kinds, "plan": str(plan)}))
        del model, opt


def baseline(args: argparse.Namespace) -> float:
    """Single-process DLRM, 1 thread: samples/s."""
    from dlrm.models.dlrm import DLRM
    from dlrm.training.optim import build_optimizer

    torch.set_num_threads(1)
    cfg = config_from(args)
    torch.manual_seed(0)
    model = DLRM(cfg, check_inputs=False)
    opt = build_optimizer(model, "sgd", 0.1)
    batches = make_batches(cfg.table_sizes, args.batch, 4)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(b: Batch) -> None:
        loss_fn(model(b.dense, b.sparse), b.labels).backward()
        opt.step()
        opt.zero_grad()

    for k in range(args.warmup):
        step(batches[k % 4])
    tick = time.perf_counter()
    for k in range(args.steps):
        step(batches[k % 4])
    return args.steps * args.batch / (time.perf_counter() - tick)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", default="1,2,4")
    p.add_argument("--preset", default="kaggle")
    p.add_argument("--rows-cap", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=2048, help="global batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--placement", default="auto")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print("command: python " + " ".join(sys.argv))
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min), cpus {os.cpu_count()}")
    base = baseline(args)
    print(f"baseline single-process DLRM, 1 thread: {base:,.0f} samples/s")
    rows = []
    for n in [int(x) for x in args.nprocs.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={n}", __file__, "--worker", "--out", str(out),
                   "--preset", args.preset, "--rows-cap", str(args.rows_cap),
                   "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--placement", args.placement]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{n} processes failed:\n{proc.stderr[-4000:]}")
            res = json.loads(out.read_text())
        ranks = res["ranks"]
        steps = args.steps
        step_ms = 1e3 * statistics.median(r["step_s"] for r in ranks) / steps
        a2a_ms = 1e3 * statistics.median(r["a2a_s"] for r in ranks) / steps
        ar_ms = 1e3 * statistics.median(r["allreduce_s"] for r in ranks) / steps
        a2a_bytes = sum(r["a2a_bytes"] for r in ranks) / steps
        ar_bytes = ranks[0]["allreduce_bytes"] / steps
        sps = steps * args.batch / res["wall_s"]
        rows.append((n, sps, sps / base, step_ms, step_ms - a2a_ms - ar_ms, a2a_ms, ar_ms,
                     a2a_bytes, res["model_a2a_bytes_per_step"], ar_bytes,
                     res["model_allreduce_buffer_bytes"] if n > 1 else 0))
        if n == max(int(x) for x in args.nprocs.split(",")):
            print(res["plan"])
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"\npreset {args.preset}, rows_cap {args.rows_cap}, global batch {args.batch}, "
          f"{args.steps} timed steps, placement {args.placement}, fp32, gloo, 1 thread/process")
    print("| procs | samples/s | vs 1-proc DLRM | step ms | compute ms | all-to-all ms | "
          "all-reduce ms | a2a bytes/step measured | model | all-reduce buffer bytes | model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,.0f} | {r[2]:.2f}x | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | "
              f"{r[6]:.1f} | {r[7]:,.0f} | {r[8]:,} | {r[9]:,.0f} | {r[10]:,} |")


if __name__ == "__main__":
    main()
