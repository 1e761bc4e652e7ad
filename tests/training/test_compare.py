"""`dlrm compare`: same data, budget and seeds for every model; mean ± std; plot; CLI."""

import json
import math
import statistics

import numpy as np
import pytest
import torch

from dlrm.cli import main
from dlrm.compare import CompareConfig, compare, paper_config
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.metrics import auc_standard_error, roc_auc

# Training tests run on one intra-op thread (the `one_thread` fixture of conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_standard_error_matches_hanley_mcneil_and_simulation():
    # AUC 0.5 with 100 positives and 100 negatives: Q1 = Q2 = 1/3.
    want = math.sqrt((0.25 + 99 * (1 / 3 - 0.25) * 2) / 100 / 100)
    assert auc_standard_error(0.5, 100, 100) == pytest.approx(want, rel=1e-12)
    # Against the spread of AUCs measured on many independent sets of exponential scores
    # (the case Hanley & McNeil's formula is exact for).
    gen = torch.Generator().manual_seed(0)
    ratio, pos, neg = 2.0, 60, 240
    aucs = []
    for _ in range(400):
        s_pos = torch.empty(pos).exponential_(1.0 / ratio, generator=gen)
        s_neg = torch.empty(neg).exponential_(1.0, generator=gen)
        aucs.append(roc_auc(torch.cat([s_pos, s_neg]),
                            torch.cat([torch.ones(pos), torch.zeros(neg)])))
    true_auc = ratio / (1 + ratio)
    assert statistics.fmean(aucs) == pytest.approx(true_auc, abs=0.01)
    assert statistics.stdev(aucs) == pytest.approx(auc_standard_error(true_auc, pos, neg),
                                                   rel=0.15)


def test_compare_aggregates_seeds_and_writes_table_and_plot(tmp_path):
    data = SyntheticData(SyntheticConfig(table_sizes=[200, 100, 500, 50], val_samples=2000,
                                         test_samples=0))
    config = CompareConfig(models=["dcn", "lr"], budget=10_000, seeds=2, preset="tiny",
                           batch_size=256, curve_points=3)
    events = []
    results = compare(data, config, tmp_path, progress=events.append)
    runs = results["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [("dcn", 0), ("dcn", 1), ("lr", 0),
                                                        ("lr", 1)]
    assert {e["run"] for e in events if e["event"] == "start"} == {
        "dcn adagrad seed 0", "dcn adagrad seed 1", "lr adagrad seed 0", "lr adagrad seed 1"}
    for r in runs:  # same budget for everyone
        assert r["summary"]["samples_seen"] == 10_000 // 256 * 256
        assert len(r["curve"]) == 3 and r["curve"][-1][1] == r["auc"]
    dcn = [r["auc"] for r in runs if r["model"] == "dcn"]
    row = results["rows"][0]
    assert row["auc"] == pytest.approx(np.mean(dcn))
    assert row["auc_std"] == pytest.approx(np.std(dcn, ddof=1))
    assert dcn[0] != dcn[1]  # the seed changes the initialization
    table = (tmp_path / "results.md").read_text()
    assert f"| dcn | adagrad | 2 | {row['parameters']:,} | {row['auc']:.4f} ± " in table
    assert "Bayes-optimal AUC on this split: 0.8" in table
    assert (tmp_path / "auc_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"][1]["model"] == "lr"


def test_paper_preset_is_dlrm_against_dcn_with_sgd_and_adagrad():
    config = paper_config()
    assert config.models == ["dlrm", "dcn"] and config.optimizers == ["sgd", "adagrad"]
    assert config.budget is None and config.epochs == 1 and config.embedding_dim == 16
    assert config.model_options["dcn"] == {"cross_layers": 6, "deep_mlp": [512, 256]}
    with pytest.raises(ValueError, match="unknown kind"):
        CompareConfig(models=["dlrm", "xgboost"])


def test_cli_preprocess_table_then_compare_and_train_a_baseline(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["y,x,c1,c2"]
    for _ in range(1500):
        c1, c2 = int(rng.integers(0, 20)), int(rng.integers(0, 5))
        p = 1 / (1 + math.exp(-(c1 % 5 - 2 + 0.5 * c2 - 1)))
        lines.append(f"{int(rng.random() < p)},{rng.integers(0, 100)},k{c1},{c2}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    schema = {"name": "t", "label": {"column": "y"}, "dense": [{"column": "x"}],
              "categorical": [{"column": "c1"}, {"column": "c2"}],
              "split": {"order": "random", "seed": 0,
                        "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    assert main(["preprocess", "table", "--schema", str(tmp_path / "s.json"), "--input",
                 str(tmp_path / "t.csv"), "--out", str(tmp_path / "data"), "--quiet"]) == 0
    assert "rows read 1,500, written 1,500, skipped 0" in capsys.readouterr().out
    assert main(["compare", "--data", str(tmp_path / "data"), "--models", "deepfm,wdl",
                 "--budget", "2400", "--seeds", "1", "--batch-size", "64", "--out",
                 str(tmp_path / "cmp"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Metrics on the test split (150 samples" in out and "| deepfm | adagrad | 1 |" in out
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert all(r["auc"] > 0.6 for r in results["runs"]), [r["auc"] for r in results["runs"]]
    assert main(["train", "--model", "dcnv2", "--preset", "tiny", "--data",
                 str(tmp_path / "data"), "--model-option", "low_rank=2", "--max-samples",
                 "1200", "--quiet", "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_kind"] == "dcnv2" and saved["model_config"]["low_rank"] == 2
    assert saved["data"] == {"kind": "memmap", "path": str(tmp_path / "data")}
    # A recipe file as `dlrm tune` writes it (here full-batch L-BFGS): its runs get flat
    # folders named after the study, not the file's path nested inside the output.
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "recipe.json").write_text(json.dumps(
        {"train": {"optimizer": "lbfgs", "lr": 1.0, "batch_size": 0, "weight_decay": 1e-3,
                   "epochs": 5, "patience": 0, "evals_per_epoch": 1}, "model": {}}))
    assert main(["compare", "--data", str(tmp_path / "data"), "--models", "lr", "--recipes",
                 str(tmp_path / "study" / "recipe.json"), "--seeds", "1", "--out",
                 str(tmp_path / "cmp-lr"), "--quiet"]) == 0
    assert (tmp_path / "cmp-lr" / "lr-study.recipe-seed0" / "summary.json").is_file()
    results = json.loads((tmp_path / "cmp-lr" / "results.json").read_text())
    assert results["runs"][0]["auc"] > 0.6 and results["runs"][0]["summary"]["steps"] == 5


def test_diverged_runs_are_counted_not_averaged():
    def run(seed, auc, logloss):
        return {"model": "dcn", "optimizer": "sgd", "seed": seed, "parameters": 10, "auc": auc,
                "logloss": logloss, "accuracy": 0.7,
                "summary": {"train_seconds": 1.0, "samples_per_s": 5.0, "samples_seen": 100}}

    from dlrm.compare import aggregate, markdown_table

    rows = aggregate([run(0, 0.52, math.nan), run(1, 0.71, 0.5), run(2, 0.73, 0.49)])
    assert rows[0]["diverged"] == 1
    assert rows[0]["auc"] == pytest.approx(0.72) and rows[0]["logloss"] == pytest.approx(0.495)
    table = markdown_table({"split": "test", "eval_positives": (10, 30), "rows": rows})
    assert "| 3 (1 diverged: NaN, not in the means) |" in table
    one_left = aggregate([run(0, 0.52, math.nan), run(1, 0.71, 0.5)])
    assert "| 0.7100 ± – |" in markdown_table({"split": "test", "eval_positives": (10, 30),
                                                "rows": one_left})


def test_cli_compare_tests_rows_against_lr_on_the_same_rows(tmp_path, capsys):
    """Every run's test scores are kept (from the checkpoint it reported) and each row is
    tested against LR: the paired ΔAUC equals the difference of the table's mean AUCs, its
    SE is DeLong's for those very scores, and the report rebuilds from the saved files."""
    from dlrm.compare import rewrite_report
    from dlrm.metrics import auc_covariance

    out = tmp_path / "cmp"
    assert main(["compare", "--data", "synthetic:planted", "--preset", "tiny", "--tables",
                 "200,100,50", "--train-samples", "3000", "--val-samples", "400",
                 "--test-samples", "700", "--models", "dcn,lr", "--recipes", "small",
                 "--seeds", "2", "--ensemble", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    labels = torch.from_numpy(np.load(out / "test_labels.npy"))
    assert labels.numel() == 700
    scores = {}
    for run in results["runs"]:
        saved = torch.from_numpy(np.load(out / run["scores"]["test"]))
        assert run["scores"]["test"] == f"{run['model']}-small-seed{run['seed']}/test_scores.npy"
        assert roc_auc(saved, labels) == pytest.approx(run["auc"], abs=1e-9)
        val = torch.from_numpy(np.load(out / run["scores"]["val"]))
        assert roc_auc(val, torch.from_numpy(np.load(out / "val_labels.npy"))) == \
            pytest.approx(run["summary"]["val_auc"], abs=1e-9)
        scores.setdefault(run["model"], []).append(saved)
    paired = results["paired"]
    assert paired["against"] == {"model": "lr", "optimizer": "small", "seeds": 2}
    (row,) = paired["rows"]
    means = {r["model"]: r["auc"] for r in results["rows"]}
    assert row["delta"] == pytest.approx(means["dcn"] - means["lr"], abs=1e-9)
    _, cov = auc_covariance([*scores["dcn"], *scores["lr"]], labels)
    weights = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=torch.float64)
    assert row["se"] == pytest.approx(math.sqrt(float(weights @ cov @ weights)), rel=1e-9)
    assert 0 < row["se"] < auc_standard_error(means["dcn"], *results["eval_positives"])
    # With the seeds' spread: s²/2 of DCN's two AUCs (LR's L-BFGS runs are identical: 0).
    dcn_aucs = [r["auc"] for r in results["runs"] if r["model"] == "dcn"]
    assert row["se_seeds"] == pytest.approx(
        math.sqrt(row["se"] ** 2 + statistics.variance(dcn_aucs) / 2), rel=1e-9)
    assert row["z"] == pytest.approx(row["delta"] / row["se_seeds"])
    assert row["p"] == pytest.approx(math.erfc(abs(row["z"]) / math.sqrt(2)))
    line = (f"| dcn | small | {row['delta']:+.4f} | {row['se']:.4f} | {row['se_seeds']:.4f} "
            f"| {row['z']:+.2f} | {row['p']:.2g} |")
    assert "Paired against lr (small) on the same 700 rows" in printed and line in printed
    # --ensemble: each row's two seeds as one model, the mean of their probabilities.
    ensembles = {e["model"]: e for e in results["ensembles"]["rows"]}
    mean_probs = {k: torch.stack([torch.sigmoid(x.double()) for x in v]).mean(0)
                  for k, v in scores.items()}
    dcn = ensembles["dcn"]
    assert dcn["seeds"] == 2 and dcn["single_auc"] == pytest.approx(means["dcn"])
    assert dcn["auc"] == pytest.approx(roc_auc(mean_probs["dcn"], labels), abs=1e-12)
    assert dcn["delta"] == pytest.approx(roc_auc(mean_probs["dcn"], labels)
                                         - roc_auc(mean_probs["lr"], labels), abs=1e-12)
    val_labels = torch.from_numpy(np.load(out / "val_labels.npy"))
    val_probs = torch.stack([torch.sigmoid(torch.from_numpy(np.load(out / r["scores"]["val"]))
                                           .double()) for r in results["runs"]
                             if r["model"] == "dcn"]).mean(0)
    assert dcn["val_auc"] == pytest.approx(roc_auc(val_probs, val_labels), abs=1e-12)
    assert "delta" not in ensembles["lr"]  # the reference itself
    assert (f"| dcn | small | 2 | {dcn['val_single_auc']:.4f} -> {dcn['val_auc']:.4f} "
            f"| {dcn['single_auc']:.4f} -> {dcn['auc']:.4f} |") in printed
    # The report rebuilds from results.json and the kept scores, with the same numbers.
    (out / "results.md").unlink()
    rebuilt = rewrite_report(out)
    assert rebuilt["paired"] == paired and rebuilt["ensembles"] == results["ensembles"]
    assert line in (out / "results.md").read_text()
    # --against picks another row; one that did not run is refused before any training.
    assert main(["compare", "--data", "synthetic:planted", "--models", "dcn,lr",
                 "--against", "deepfm", "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "--against 'deepfm': not among the rows" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_run_that_cannot_be_built_stops_the_comparison_before_any_trains(tmp_path, capsys):
    """DLRM's `small` recipe chose its MLPs with D=16; --embedding-dim 8 for every model cannot
    hold it. LR, first in the plan, would train before DLRM's model is built: the error comes
    first, and no folder is made."""
    out = tmp_path / "cmp"
    assert main(["compare", "--data", "synthetic:planted", "--preset", "tiny", "--models",
                 "lr,dlrm", "--recipes", "small", "--embedding-dim", "8", "--quiet", "--out",
                 str(out)]) == 2
    assert "ends at 16, but it must end at the embedding dimension D=8" in \
        capsys.readouterr().err
    assert not out.exists()
