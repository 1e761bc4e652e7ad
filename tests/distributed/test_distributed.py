"""Hybrid-parallel training with real multi-process gloo jobs (torchrun, 1 thread each).

Exactness: N-process training of a DLRM sharded by ``shard_model`` (N = 2, 3; table-wise,
row-wise, replicated and mixed plans; multi-hot bags with empty bags; B % N != 0) equals
single-process ``DLRM`` training with the same initial state, batches and optimizer: 20 losses
and all final parameters within float32 tolerance. Checkpoints: 1 -> 3 -> 2 -> 1 ranks
resharding with identical outputs. Faults: a
rank that dies or hangs fails the job with a clear error within the timeout. Device
discipline (for CUDA): no tensor factory in a step, evaluation or gather runs without device=.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlrm.config import DLRMConfig, preset
from dlrm.distributed.checkpoint import (
    full_state_dict,
    load_single_process,
    load_state_into,
    save_sharded,
)
from dlrm.distributed.comm_model import all_reduce_buffer_bytes, all_to_all_bytes_per_rank
from dlrm.distributed.data_parallel import RankContext
from dlrm.distributed.planner import ShardingPlan, plan_tables
from dlrm.distributed.sharding import restrict_rows, select_features
from dlrm.distributed.train import build_sharded_model
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.training.optim import build_optimizer


def one_rank(cfg: DLRMConfig, placement: str, state: dict | None = None):
    """A 1-rank sharded DLRM (no process group) and its context, loaded from ``state``."""
    ctx = RankContext(0, 1)
    model = build_sharded_model("dlrm", cfg.to_dict(), ctx, placement)
    if state is not None:
        load_state_into(model, state, "state")
    return model, ctx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from worker import make_batch  # noqa: E402

STEPS, BATCH, LR = 20, 50, 0.1
# (placement, dense optimizer); sgd everywhere, plus one adaptive run through rowwise Adagrad.
RUNS = ["table", "row", "replicated", "auto", "auto@adagrad"]


def torchrun(nproc: int, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def model_config() -> DLRMConfig:
    cfg = preset("tiny")  # 8 tables of 20..1000 rows
    cfg.embedding_dim = 8
    return cfg


@functools.cache
def _reference_run(optimizer: str) -> tuple[list[float], dict]:
    cfg = model_config()
    torch.manual_seed(0)
    return reference_run(cfg, DLRM(cfg).state_dict(), optimizer)


def reference_run(cfg: DLRMConfig, init: dict, optimizer: str) -> tuple[list[float], dict]:
    """Single-process DLRM: 20 steps on the same global batches."""
    model = DLRM(cfg)
    model.load_state_dict(init)
    opt = build_optimizer(model, optimizer, LR)
    losses = []
    for k in range(STEPS):
        b = make_batch(k, cfg.table_sizes, BATCH)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b.dense, b.sparse),
                                                                    b.labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def probe_logits(state: dict, cfg: DLRMConfig) -> torch.Tensor:
    model = DLRM(cfg)
    model.load_state_dict(state)
    model.eval()
    b = make_batch(999, cfg.table_sizes, BATCH)
    with torch.no_grad():
        return model(b.dense, b.sparse)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Run the N=3 and N=2 jobs once; chain checkpoints 1 -> 3 -> 2 ranks."""
    root = tmp_path_factory.mktemp("dist")
    cfg = model_config()
    torch.manual_seed(0)
    init = DLRM(cfg).state_dict()
    # A 1-rank sharded checkpoint, saved without any process group.
    one, ctx = one_rank(cfg, "auto", init)
    save_sharded(one, ctx, root / "ckpt-1", "dlrm", cfg.to_dict())
    results, seconds = {}, {}
    for world, load_from, load_placement in ((3, "ckpt-1", "row"), (2, "ckpt-3", "table")):
        work = root / f"w{world}"
        work.mkdir()
        torch.save(init, work / "init_state.pt")
        (work / "job.json").write_text(json.dumps({
            "model_config": cfg.to_dict(), "placements": RUNS, "lr": LR,
            "batch_size": BATCH, "steps": STEPS, "val_samples": 1000, "eval_batch_size": 333,
            "row_wise_min_rows": 600, "load_from": str(root / load_from),
            "load_placement": load_placement, "save_to": str(root / f"ckpt-{world}"),
            # N=3 saves a mid-run Adagrad checkpoint; N=2 resumes it (row-wise) to the end.
            "save_opt_to": str(root / "opt-3") if world == 3 else None,
            "resume_from": str(root / "opt-3") if world == 2 else None,
            "resume_run": world == 2}))
        tick = time.perf_counter()
        proc = torchrun(world, [str(HERE / "worker.py"), "exact", str(work)])
        seconds[world] = time.perf_counter() - tick
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        results[world] = torch.load(work / f"results-{world}.pt", weights_only=True)
        results[world]["stdout"] = proc.stdout
    return {"root": root, "cfg": cfg, "init": init, "results": results, "seconds": seconds}


@pytest.mark.parametrize("world", [2, 3])
def test_n_process_training_equals_single_process(jobs, world):
    cfg, init = jobs["cfg"], jobs["init"]
    res = jobs["results"][world]
    kinds_seen = set()
    for run in RUNS:
        optimizer = run.split("@")[1] if "@" in run else "sgd"
        ref_losses, ref_state = _reference_run(optimizer)
        got = res[run]
        kinds_seen.update(got["kinds"])
        assert len(got["losses"]) == STEPS
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses),
                                   rtol=1e-5, atol=1e-6, msg=f"{run} losses, N={world}")
        assert ref_losses[-1] < ref_losses[0]  # it really trained
        for key, ref in ref_state.items():
            # Adagrad divides by the root of accumulated squares, which turns float32 rounding
            # noise (rank-local batches, all-reduce order) into up to ~1e-5 after 20 steps on
            # weights of size ~1 (measured: 1.2e-5 on one top-MLP weight at N=3, where the
            # losses agree to 2e-7); a wrong shard or order errs by ~1e-2.
            atol = 3e-5 if optimizer == "adagrad" else 1e-6
            torch.testing.assert_close(got["state"][key], ref, rtol=1e-5, atol=atol,
                                       msg=f"{run}: parameter {key}, N={world}")
        moved = (got["state"]["embeddings.weight"] - init["embeddings.weight"]).abs().amax(1)
        assert int((moved > 0).sum()) > 500  # many embedding rows were updated
        # Measured communication equals the model of dlrm.distributed.comm_model.
        plan = ShardingPlan.from_dict(got["plan"])
        a2a = [STEPS * x for x in all_to_all_bytes_per_rank(plan, BATCH)]
        assert [c[0] for c in got["comm_bytes"]] == a2a
        # Rank 0's model under the same plan (built without collectives) sizes the buffer.
        rank0 = build_sharded_model("dlrm", cfg.to_dict(), RankContext(0, world),
                                    plans={"embeddings": plan})
        buffer = all_reduce_buffer_bytes(rank0)
        assert [c[1] for c in got["comm_bytes"]] == [STEPS * buffer] * world
    assert kinds_seen == {"table", "row", "replicated"}
    # Device discipline: no helper tensor of a step, an evaluation or a gather was made
    # without device= (it would sit on the CPU beside CUDA tensors on a GPU rank).
    assert res["host_tensor_calls"] == []
    assert "row" in res["auto"]["kinds"] and "replicated" in res["auto"]["kinds"]
    assert "sharding plan" in res["stdout"]  # the plan is printed


@pytest.mark.parametrize("world", [2, 3])
def test_validation_metrics_cover_the_whole_split(jobs, world):
    """Metrics gathered over ranks equal single-process metrics on all 1000 samples (eval
    batch 333: uneven rank slices, and a last batch of 1 sample leaves ranks 1.. empty)."""
    from dlrm.data import open_data
    from dlrm.training.loop import evaluate

    cfg = jobs["cfg"]
    model = DLRM(cfg)
    model.load_state_dict(jobs["init"])
    data = open_data("synthetic:planted", table_sizes=cfg.table_sizes, rows_cap=None,
                     train_samples=1000, val_samples=1000, test_samples=0)
    ref = evaluate(model, data, "val", 333)
    got = jobs["results"][world]["eval"]
    assert got["samples"] == 1000
    for key in ("auc", "logloss", "accuracy", "ctr"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6), key


def test_checkpoint_resharding_1_to_3_to_2_to_1(jobs):
    cfg, res = jobs["cfg"], jobs["results"]
    # 1 rank -> 3 ranks (row-wise): same outputs as the single-process model.
    torch.testing.assert_close(res[3]["probe_logits"], probe_logits(jobs["init"], cfg),
                               rtol=1e-5, atol=1e-6)
    # 3 ranks (row-wise, after one more step) -> 2 ranks (table-wise).
    torch.testing.assert_close(res[2]["probe_logits"], probe_logits(res[3]["saved_state"], cfg),
                               rtol=1e-5, atol=1e-6)
    # 2 ranks -> 1 plain DLRM, no process group: identical parameters and outputs.
    model, meta = load_single_process(jobs["root"] / "ckpt-2")
    assert meta["world_size"] == 2 and meta["plans"]["embeddings"]["world_size"] == 2
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, res[2]["saved_state"][key], rtol=0, atol=0)
    b = make_batch(999, cfg.table_sizes, BATCH)
    with torch.no_grad():
        torch.testing.assert_close(model(b.dense, b.sparse),
                                   probe_logits(res[2]["saved_state"], cfg), rtol=0, atol=0)


def test_a_rank_that_dies_or_hangs_ends_the_job_with_a_clear_error(tmp_path):
    """Rank 1 exits (os._exit(7)) or sleeps at step 3; both jobs run at once to save time."""
    cfg = model_config()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs, tick = {}, time.perf_counter()
    for mode in ("die", "hang"):
        work = tmp_path / mode
        work.mkdir()
        (work / "job.json").write_text(json.dumps({"model_config": cfg.to_dict(),
                                                   "timeout_s": 5}))
        procs[mode] = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(HERE / "worker.py"), mode, str(work)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs, elapsed = {}, {}
    for mode, proc in procs.items():
        logs[mode], _ = proc.communicate(timeout=90)
        elapsed[mode] = time.perf_counter() - tick
        assert proc.returncode != 0, f"{mode}: the job did not fail"
    # The dead rank's exit code is reported and torchrun stops the survivor.
    assert "exitcode: 7" in logs["die"].replace("  ", " ").replace(" :", ":"), logs["die"][-3000:]
    # Rank 0's collective times out and says so; torchrun then stops the sleeping rank.
    hang = logs["hang"]
    assert "PeerFailure: rank 0: training step 4 failed after" in hang, hang[-3000:]
    assert "died, hung past the timeout" in hang and "Timed out" in hang
    assert max(elapsed.values()) < 60, elapsed


# -- single-process unit tests (no process group) -----------------------------------------

def test_plan_tiles_every_table_and_balances():
    sizes = [10, 5000, 200, 30, 100_000, 700, 64, 3000]
    for world in (1, 2, 3, 5):
        for placement in ("auto", "table", "row", "replicated"):
            plan = plan_tables(sizes, 16, world, placement)
            plan.check()
            text = str(plan)
            assert f"{world} ranks" in text and "rank 0:" in text
            if placement == "row" and world > 1:
                assert all(len([s for s in plan.shards if s.table == t]) == min(world, n)
                           for t, n in enumerate(sizes))
    plan = plan_tables(sizes, 16, 2, "auto")
    assert plan.kinds[4] == "row" and plan.kinds[0] == "replicated" and plan.kinds[6] == \
        "replicated"
    # Balance: greedy largest-first on equal tables gives each rank the same count.
    plan = plan_tables([1000] * 6, 8, 3, "table")
    assert [len(plan.rank_shards(r)) for r in range(3)] == [2, 2, 2]
    with pytest.raises(ValueError, match="placement"):
        plan_tables(sizes, 16, 2, "diagonal")
    # A memory budget: tables over half of it go row-wise; a plan that cannot fit is refused.
    budget = 40_000 * 16 * 4  # bytes of 40k rows
    plan = plan_tables(sizes, 16, 4, "auto", max_bytes_per_rank=budget)
    assert plan.kinds[4] == "row" and max(plan.rank_bytes(r) for r in range(4)) <= budget
    with pytest.raises(ValueError, match="on rank .* over the"):
        plan_tables(sizes, 16, 4, "table", max_bytes_per_rank=budget)


def test_select_features_and_restrict_rows_match_naive():
    sizes = [50, 20, 30]
    b = make_batch(3, sizes, 7)
    sparse = b.sparse
    offs = sparse.offsets.tolist()
    vals = sparse.values.tolist()

    def bag(sf: SparseFeatures, f: int, i: int) -> list[int]:
        o, B = sf.offsets.tolist(), sf.batch_size
        return sf.values.tolist()[o[f * B + i]: o[f * B + i + 1]]

    sub = select_features(sparse, [2, 0], slice(2, 6))
    for k, f in enumerate([2, 0]):
        for i in range(4):
            assert bag(sub, k, i) == vals[offs[f * 7 + 2 + i]: offs[f * 7 + 3 + i]]
    values = torch.tensor([5, 12, 7, 19, 3, 10])
    lengths = torch.tensor([2, 0, 3, 1])
    v, n = restrict_rows(values, lengths, 7, 13)
    assert n.tolist() == [1, 0, 1, 1] and v.tolist() == [5, 0, 3]  # ids 12 | - | 7 | 10
    onehot = SparseFeatures.from_ids(torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert select_features(onehot, [1], slice(1, 3)).values.tolist() == [4, 6]


def test_one_rank_model_equals_dlrm():
    cfg = model_config()
    torch.manual_seed(0)
    ref = DLRM(cfg)
    for placement in ("table", "replicated", "auto"):
        model, ctx = one_rank(cfg, placement, ref.state_dict())
        b = make_batch(5, cfg.table_sizes, 9)
        torch.testing.assert_close(model(b.dense, b.sparse), ref(b.dense, b.sparse))
        full = full_state_dict(model, ctx)
        for key, value in ref.state_dict().items():
            assert torch.equal(full[key], value)


@pytest.mark.parametrize("placement", ["table", "row", "replicated", "auto"])
def test_a_sharded_build_starts_as_the_single_process_build(placement):
    """Same seed, same model: every table row and every dense weight of a sharded build
    (tables never allocated whole) equals the single-process build, for DLRM with QR tables,
    mixed dimensions and the baselines too."""
    from dlrm.models import build_model, model_config_for

    sizes = [300, 70, 5, 1000]
    cases = [("dlrm", model_config_for("dlrm", "tiny", sizes, 13, {"qr_threshold": 100})),
             ("dlrm", model_config_for("dlrm", "tiny", sizes, 13, {"md_alpha": 0.3})),
             ("dcnv2", model_config_for("dcnv2", "tiny", sizes, 13)),
             ("deepfm", model_config_for("deepfm", "tiny", sizes, 13))]
    for kind, config in cases:
        torch.manual_seed(7)
        ref = build_model(kind, config)
        ctx = RankContext(0, 1)
        model = build_sharded_model(kind, config, ctx, placement, seed=7)
        full = full_state_dict(model, ctx)
        assert full.keys() == ref.state_dict().keys()
        for key, value in ref.state_dict().items():
            assert torch.equal(full[key], value), (kind, key)


def test_watchdog_ends_a_stalled_process():
    """The watchdog, armed by its first beat, ends a process that stops beating."""
    code = ("import time; from dlrm.distributed.launch import Watchdog; "
            "w = Watchdog(0.5, rank=3); time.sleep(1.5); w.beat(); time.sleep(30)")
    tick = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 124
    assert "rank 3: no training progress" in proc.stderr
    # Unarmed until the first beat (setup is not timed), then fires 0.5 s after it.
    assert 2.0 < time.perf_counter() - tick < 20


def test_cli_train_nproc_2(tmp_path, capsys):
    """`dlrm train --nproc 2` relaunches under torchrun; rank 0 alone prints and writes files;
    validation covers the whole split; the sharded checkpoint loads into one process."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dlrm", "--verbose", "train", "--nproc", "2", "--preset", "tiny",
         "--rows-cap", "1000", "--train-samples", "5000", "--val-samples", "1500",
         "--max-samples", "2560", "--batch-size", "128", "--eval-batch-size", "700",
         "--placement", "row", "--dist-timeout", "30", "--out", str(run_dir), "--quiet"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("val AUC") == 1  # rank 0 only
    assert "sharding plan" in proc.stderr and "r1[" in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert summary["val_samples"] == 1500
    assert summary["all_to_all_bytes_sent_per_step"] > 0
    model, _ = load_single_process(run_dir / "last")
    from dlrm.data import open_data
    from dlrm.training.loop import evaluate

    data = open_data(json.loads((run_dir / "config.json").read_text())["data"])
    metrics = evaluate(model, data, "val", 700)
    assert metrics["auc"] == pytest.approx(summary["val_auc"], abs=1e-6)
    # `dlrm eval` takes the sharded folder too (in-process: no extra interpreter start).
    from dlrm.cli import main

    assert main(["eval", "--checkpoint", str(run_dir / "last")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["auc"] == pytest.approx(summary["val_auc"], abs=1e-6)
    assert printed["samples"] == 1500


def test_resume_3_ranks_mid_run_on_2_ranks_with_optimizer_state(jobs):
    """Adagrad + row-wise Adagrad state saved by 3 ranks (auto plan) at step 10, resumed by 2
    ranks (row-wise plan): the last 10 losses and the final parameters equal an uninterrupted
    single-process run."""
    ref_losses, ref_state = _reference_run("adagrad")
    got = jobs["results"][2]["resumed"]
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses[STEPS // 2:]),
                               rtol=1e-5, atol=1e-6)
    for key, ref in ref_state.items():  # Adagrad's tolerance, as in the test above
        torch.testing.assert_close(got["state"][key], ref, rtol=1e-5, atol=3e-5, msg=key)


def test_train_distributed_resumes_an_interrupted_run_exactly(jobs):
    """Interrupted at step 13 of 20, resumed from the step-10 checkpoint: the same final
    metrics, training-loss records and parameters as the uninterrupted run (N=2)."""
    run = jobs["results"][2]["resume_run"]
    whole, resumed = run["whole"], run["resumed"]
    assert resumed["steps"] == whole["steps"] == 20
    for key in ("val_auc", "val_logloss", "final_train_loss"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    work = jobs["root"] / "w2"

    def train_records(folder: str) -> list[tuple[int, float]]:
        lines = (work / folder / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["event"] == "train"]

    assert [s for s, _ in train_records("cut")] == [5, 10, 15, 20]
    for (_, a), (_, b) in zip(train_records("cut"), train_records("whole")):
        assert a == pytest.approx(b, abs=1e-6)
    a, _ = load_single_process(work / "whole" / "last")
    b, _ = load_single_process(work / "cut" / "last")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-6, atol=1e-7)


def test_embedding_init_does_not_depend_on_the_sharding():
    """Rows drawn block-seeded: any split of a table gives the same values, within the
    reference's U(-sqrt(1/n), sqrt(1/n)) bound (or N(0, s^2) for the normal init)."""
    from dlrm.models.embeddings import INIT_BLOCK_ROWS, RowInit, init_rows

    n = 2 * INIT_BLOCK_ROWS + 123
    for init in (RowInit(), RowInit("normal", 0.01)):
        whole = init_rows(init, n, 0, n, 4, seed=5, table=2)
        cut = 70_001
        assert torch.equal(whole, torch.cat([init_rows(init, n, 0, cut, 4, 5, 2),
                                             init_rows(init, n, cut, n, 4, 5, 2)]))
        assert not torch.equal(whole, init_rows(init, n, 0, n, 4, seed=5, table=3))
    uniform = init_rows(RowInit(), n, 0, n, 4, seed=5, table=2)
    assert float(uniform.abs().max()) <= (1 / n) ** 0.5
    normal = init_rows(RowInit("normal", 0.01), n, 0, n, 4, seed=5, table=2)
    assert float(normal.std()) == pytest.approx(0.01, rel=0.01)


def test_train_step_stops_on_a_non_finite_loss():
    from dlrm.distributed.train import train_step
    from dlrm.training.optim import build_optimizer

    cfg = model_config()
    torch.manual_seed(0)
    ref = DLRM(cfg)
    with torch.no_grad():
        ref.top_mlp.linears()[-1].bias.fill_(float("nan"))
    model, ctx = one_rank(cfg, "auto", ref.state_dict())
    optimizer = build_optimizer(model, "sgd", 0.1)
    before = {k: v.clone() for k, v in full_state_dict(model, ctx).items()}
    with pytest.raises(FloatingPointError, match="training diverged: the global loss is nan"):
        train_step(model, ctx, optimizer, make_batch(1, cfg.table_sizes, 9))
    after = full_state_dict(model, ctx)
    for key, value in before.items():  # no update was applied
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True)


def test_each_rank_gets_its_local_gpu_and_the_matching_backend():
    """cpu -> gloo; cuda -> nccl on cuda:LOCAL_RANK (an explicit index would put every rank
    of a node on one GPU, so it is refused)."""
    from dlrm.distributed.launch import device_and_backend

    assert device_and_backend("cpu", 0) == ("cpu", "gloo")
    assert device_and_backend("cpu", 5) == ("cpu", "gloo")
    assert device_and_backend("cuda", 0) == ("cuda:0", "nccl")
    assert device_and_backend("cuda", 3) == ("cuda:3", "nccl")
    with pytest.raises(ValueError, match="pass --device cuda"):
        device_and_backend("cuda:1", 0)
    with pytest.raises(ValueError, match="runs on cpu or cuda"):
        device_and_backend("meta", 0)
    with pytest.raises(ValueError, match="expected cpu or cuda"):
        device_and_backend("gpu", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_distributed_session_refuses_cuda_without_a_gpu(monkeypatch):
    """Refused before any process group is opened, with the reason."""
    import torch.distributed as dist

    from dlrm.distributed.launch import distributed_session

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        with distributed_session(device="cuda"):
            pass
    assert not dist.is_initialized()
