"""`--tensorboard DIR` for `dlrm train`, `dlrm compare` and `dlrm tune`: the event files
TensorBoard's own reader loads back hold the run's loss, lr, samples/s and every evaluation's
metrics."""

import json

import pytest

from dlrm.cli import main
from dlrm.training.schedule import MLPerfSchedule

pytest.importorskip("tensorboard", reason="tensorboard is not installed: the optional extra "
                                          "`pip install 'dlrm[tensorboard]'`")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from dlrm.training.tensorboard import TensorBoardWriter, run_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_writes_loss_lr_rate_and_evaluations(tmp_path):
    tb, run_dir = tmp_path / "tb", tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--train-samples", "2048", "--val-samples", "512",
               "--batch-size", "64", "--optimizer", "adagrad", "--lr", "0.05",
               "--lr-schedule", "mlperf", "--warmup-steps", "8", "--decay-start", "16",
               "--decay-steps", "12", "--eval-every", "8", "--log-every", "4", "--quiet",
               "--out", str(run_dir), "--tensorboard", str(tb),
               "--tensorboard-every", "4"])
    assert rc == 0
    got = scalars(tb)
    records = jsonl(run_dir / "metrics.jsonl")
    # the loss TensorBoard shows is the loop's windowed loss (same window: every 4 steps)
    train = [(r["step"], r["loss"]) for r in records if r["event"] == "train"]
    assert [s for s, _ in got["train/loss"]] == [s for s, _ in train] == list(range(4, 33, 4))
    for (_, a), (_, b) in zip(got["train/loss"], train):
        assert a == pytest.approx(b, rel=1e-6)
    # lr of each logged step: the schedule's, a pure function of the step
    schedule = MLPerfSchedule(warmup_steps=8, decay_start=16, decay_steps=12)
    for step, lr in got["train/lr"]:
        assert lr == pytest.approx(schedule.lr(step - 1, 0.05), rel=1e-6)
    assert len({round(v, 6) for _, v in got["train/lr"]}) >= 4  # warmup, constant, decay, end
    assert all(v > 0 for _, v in got["train/samples_per_s"])
    evals = [r for r in records if r["event"] == "eval"]
    for name in ("auc", "logloss", "accuracy", "optimal_auc"):
        assert [s for s, _ in got[f"val/{name}"]] == [r["step"] for r in evals] == [8, 16, 24, 32]
        for (_, v), r in zip(got[f"val/{name}"], evals):
            assert v == pytest.approx(r[name], rel=1e-6)


def test_compare_writes_one_folder_per_run(tmp_path):
    tb, out = tmp_path / "tb", tmp_path / "cmp"
    rc = main(["compare", "--models", "dlrm,lr", "--seeds", "1", "--train-samples", "1024",
               "--val-samples", "256", "--batch-size", "128", "--curve-points", "2",
               "--quiet", "--out", str(out), "--tensorboard", str(tb)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in tb.iterdir()) == ["dlrm-adagrad-seed-0", "lr-adagrad-seed-0"]
    for run in results["runs"]:
        got = scalars(tb / run_folder(f"{run['model']} {run['optimizer']} seed {run['seed']}"))
        curve = [(s, a) for s, a in run["curve"]]
        assert [v for _, v in got["val/auc"]] == pytest.approx([a for _, a in curve], rel=1e-6)


def test_resumed_run_purges_the_points_after_its_checkpoint(tmp_path):
    """A run killed after step 10 and resumed from its step-6 checkpoint: the points 7-10 of
    the killed process are dropped, so each step has one point."""
    def steps(writer, first, last):
        writer({"event": "start", "step": first - 1, "total_steps": 12, "batch_size": 1,
                "steps_per_epoch": 12})
        for step in range(first, last + 1):
            writer({"event": "step", "step": step, "loss": 1.0 / step, "samples": 1,
                    "lr": 0.1, "epoch": 0, "samples_seen": step})
        writer({"event": "end"})

    with TensorBoardWriter(tmp_path, every=1) as writer:
        steps(writer, 1, 10)
    with TensorBoardWriter(tmp_path, every=1) as writer:
        steps(writer, 7, 12)
    loss = scalars(tmp_path)["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 13))
    assert [v for _, v in loss] == pytest.approx([1.0 / s for s in range(1, 13)])


def test_hparams_for_a_search(tmp_path):
    """What a `dlrm tune` would record per trial: settings and final metric."""
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_hparams("trial 3", {"lr": 0.05, "optimizer": "adagrad"}, {"auc": 0.75})
    acc = EventAccumulator(str(tmp_path / "trial-3"))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert [e.value for e in acc.Scalars("hparam/auc")] == pytest.approx([0.75])


def test_tune_writes_a_folder_per_trial_with_its_hparams(tmp_path):
    """`dlrm tune --tensorboard DIR`: each trial's evaluations in DIR/trial-N, equal to the
    trial's own metrics.jsonl, and its searched settings + final AUC in the HParams tab."""
    pytest.importorskip("optuna", reason="dlrm tune needs Optuna: pip install 'dlrm[tune]'")
    tb, out = tmp_path / "tb", tmp_path / "study"
    rc = main(["tune", "--model", "lr", "--preset", "tiny", "--data", "synthetic:planted",
               "--tables", "200,100,500,50", "--train-samples", "2048", "--val-samples",
               "512", "--trials", "2", "--epochs", "1", "--evals-per-epoch", "2",
               "--pruner", "none", "--quiet", "--out", str(out), "--tensorboard", str(tb)])
    assert rc == 0
    assert sorted(p.name for p in tb.iterdir()) == ["trial-0", "trial-1"]
    for trial in (0, 1):
        got = scalars(tb / f"trial-{trial}")
        evals = [r for r in jsonl(out / "trials" / f"{trial:04d}" / "metrics.jsonl")
                 if r["event"] == "eval"]
        assert [s for s, _ in got["val/auc"]] == [r["step"] for r in evals]
        assert [v for _, v in got["val/auc"]] == pytest.approx([r["auc"] for r in evals],
                                                                rel=1e-6)
        acc = EventAccumulator(str(tb / f"trial-{trial}"))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
