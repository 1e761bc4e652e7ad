"""`dlrm tune`: validation-only objective, pruning, resumable studies (also after SIGKILL),
the best config trains the best trial again; recipes; compare with a real divergence."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlrm.cli import main
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.models.tuned_recipes import TUNED_RECIPES
from dlrm.training.loop import TrainConfig, train
from dlrm.training.recipes import REFERENCE_RECIPE, recipe_names, resolve_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
optuna = pytest.importorskip("optuna", reason="dlrm tune needs Optuna: pip install 'dlrm[tune]'")

from dlrm.tune import TrainValOnly, TuneConfig, tune  # noqa: E402

TABLES = [200, 100, 500, 50]
DLRM_BIN = Path(sys.executable).with_name("dlrm")


class SplitSpy:
    """A data source that records which splits were read."""

    def __init__(self, data):
        self.data, self.read = data, set()
        self.num_dense, self.table_sizes = data.num_dense, data.table_sizes

    def splits(self):
        return self.data.splits()

    def num_samples(self, split):
        return self.data.num_samples(split)

    def batches(self, split, batch_size, **kwargs):
        self.read.add(split)
        return self.data.batches(split, batch_size, **kwargs)

    def spec(self):
        return self.data.spec()


def planted(**kwargs):
    options = {"table_sizes": TABLES, "train_samples": 4096, "val_samples": 1000,
               "test_samples": 500, **kwargs}
    return SyntheticData(SyntheticConfig(**options))


def test_study_reads_no_test_row_and_its_best_config_trains_the_best_trial_again(tmp_path):
    spy = SplitSpy(planted())
    config = TuneConfig(model="lr", preset="tiny", trials=4, epochs=2, evals_per_epoch=2,
                        patience=2, startup_trials=2, seed=3)
    summary = tune(spy, config, tmp_path)
    assert spy.read == {"train", "val"}  # the test split exists but is never read
    assert len(summary["trials"]) == 4 and summary["counts"]["complete"] >= 1
    best = summary["best"]
    assert best["val_auc"] == max(r["val_auc"] for r in summary["trials"]
                                  if r["state"] == "complete")
    table = (tmp_path / "trials.md").read_text()
    assert f"Best: trial {best['trial']}, validation AUC {best['val_auc']:.4f}." in table
    assert table.count("\n| ") == 1 + 4  # header + one row per trial
    assert (tmp_path / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 5
    # best_config.json has a run's config.json layout: training it again (on the data with
    # its test split) gives the best trial's validation AUC exactly.
    saved = json.loads((tmp_path / "best_config.json").read_text())
    assert {"model_kind", "model_config", "train", "data"} <= set(saved)
    assert saved["data"] == spy.spec() and saved["model_kind"] == "lr"
    again = train(saved["model_kind"], saved["model_config"], planted(),
                  TrainConfig(**saved["train"]), tmp_path / "again")
    assert again["val_auc"] == pytest.approx(best["val_auc"], abs=1e-6)
    assert "test_auc" in again  # the retrained run does see its test split
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["train"]["lr"] == pytest.approx(best["params"]["lr"])
    assert recipe["train"]["evals_per_epoch"] == 2 and recipe["train"]["patience"] == 2
    # Only the best trial keeps its checkpoints.
    kept = sorted(p.parent.name for p in (tmp_path / "trials").glob("*/last.pt"))
    assert kept == [f"{best['trial']:04d}"]


def test_study_resumes_to_its_budget_and_refuses_another_setting(tmp_path):
    data = planted()
    config = TuneConfig(model="lr", preset="tiny", trials=2, epochs=1, evals_per_epoch=2,
                        patience=2, startup_trials=2)
    first = tune(data, config, tmp_path)
    config.trials = 3
    second = tune(data, config, tmp_path)
    assert [r["trial"] for r in second["trials"]] == [0, 1, 2]
    assert [r["val_auc"] for r in second["trials"][:2]] == [r["val_auc"]
                                                             for r in first["trials"]]
    again = tune(data, config, tmp_path)  # budget reached: no new trial
    assert len(again["trials"]) == 3
    with pytest.raises(ValueError, match="another setting.*model"):
        tune(data, TuneConfig(model="dcn", preset="tiny", trials=3), tmp_path)


def test_a_trial_scores_the_mean_of_its_seeds(tmp_path):
    """--seeds-per-trial 2: each trial trains seeds 0 and 1 of the same parameters, and its
    value is the mean of the two validation AUCs (each recomputed from its own run's
    summary). A one-seed study cannot continue in that folder."""
    data = planted()
    config = TuneConfig(model="dcn", preset="tiny", trials=2, epochs=1, evals_per_epoch=1,
                        patience=0, pruner="none", startup_trials=2, seeds=2)
    summary = tune(data, config, tmp_path)
    for row in summary["trials"]:
        folder = tmp_path / "trials" / f"{row['trial']:04d}"
        runs = [folder, folder.with_name(f"{folder.name}-seed1")]
        aucs = [json.loads((r / "summary.json").read_text())["val_auc"] for r in runs]
        seeds = [json.loads((r / "config.json").read_text())["train"]["seed"] for r in runs]
        assert seeds == [0, 1] and aucs[0] != aucs[1]
        assert row["val_auc"] == pytest.approx(sum(aucs) / 2, abs=1e-12)
    saved = json.loads((tmp_path / "best_config.json").read_text())
    assert saved["tune"]["seeds"] == 2
    assert json.loads((tmp_path / "recipe.json").read_text())["source"].endswith(
        "(mean of 2 seeds)")
    with pytest.raises(ValueError, match="another setting.*seeds"):
        tune(data, TuneConfig(model="dcn", preset="tiny", trials=3, epochs=1,
                              evals_per_epoch=1, patience=0, pruner="none"), tmp_path)
    with pytest.raises(ValueError, match="seeds 0: must be positive"):
        TuneConfig(model="dcn", seeds=0)


def test_pruner_stops_trials_below_the_median(tmp_path):
    # Two learning rates, one far too small to learn: once two trials finished, trials with
    # the small one fall below the median at their first reports and are pruned.
    space = {"lr": {"choices": [0.05, 1e-6]}}
    config = TuneConfig(model="lr", preset="tiny", space=space, trials=8, epochs=3,
                        evals_per_epoch=4, patience=20, startup_trials=2, seed=0,
                        pruner="median")
    summary = tune(planted(), config, tmp_path)
    states = {(r["state"], r["params"]["lr"]) for r in summary["trials"]}
    assert ("pruned", 1e-6) in states
    pruned = [r for r in summary["trials"] if r["state"] == "pruned"]
    assert all(r["evaluations"] < 12 for r in pruned)  # stopped before the end
    assert summary["best"]["params"]["lr"] == 0.05


def test_a_kind_sets_its_own_study_cadence_and_given_values_win():
    """Logistic regression's trials run to the optimum (no early stopping, no pruning); the
    deep kinds keep the general cadence; a value given explicitly wins over both."""
    lr = TuneConfig(model="lr")
    assert (lr.epochs, lr.evals_per_epoch, lr.patience, lr.pruner) == (30, 1, 0, "none")
    deep = TuneConfig(model="dlrm")
    assert (deep.epochs, deep.evals_per_epoch, deep.patience, deep.pruner) == \
        (10, 4, 4, "median")
    given = TuneConfig(model="lr", epochs=5, patience=2, pruner="median")
    assert (given.epochs, given.evals_per_epoch, given.patience, given.pruner) == \
        (5, 1, 2, "median")


def test_search_space_errors_name_the_parameter():
    with pytest.raises(ValueError, match="'cross_layers' is neither a training setting"):
        TuneConfig(model="lr", space={"cross_layers": {"int": [1, 3]}})
    with pytest.raises(ValueError, match="'lr' depends on 'optimizer'"):
        TuneConfig(model="dlrm", space={"lr": {"per": "optimizer", "ranges": {}},
                                        "optimizer": {"choices": ["adam"]}})
    with pytest.raises(ValueError, match="validation split"):
        TrainValOnly(planted(val_samples=0))


def test_every_kind_has_a_search_space_that_trains():
    from dlrm.models import get_spec, model_config_for, model_kinds
    from dlrm.tune import split_params, suggest

    for kind in model_kinds():
        space = get_spec(kind).search_space
        assert space, kind
        params = suggest(optuna.trial.FixedTrial(_first_values(space)), space)
        train_part, model_part = split_params(kind, params)
        TrainConfig(**train_part)
        model_config_for(kind, "tiny", TABLES, 13, model_part)


def _first_values(space):
    values = {}
    for name, dist in space.items():
        if "choices" in dist:
            values[name] = dist["choices"][0]
        elif "per" in dist:
            by = values[dist["per"]]
            values[f"{name}@{by}"] = dist["ranges"][by][0]
        else:
            values[name] = (dist.get("float") or dist.get("int"))[0]
    return values


def test_cli_tune_survives_sigkill_and_continues_the_study(tmp_path):
    """A real SIGKILL in the middle of a trial; the same command again marks that trial
    failed and finishes the budget."""
    out = tmp_path / "study"
    argv = [str(DLRM_BIN), "tune", "--model", "dlrm", "--preset", "tiny", "--data",
            "synthetic:planted", "--tables", "200,100,500,50", "--train-samples", "8000",
            "--val-samples", "1000", "--trials", "3", "--epochs", "2", "--startup-trials", "3",
            "--threads", "1", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "trials" / "0001" / "metrics.jsonl").exists():  # trial 1 is running
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trial 1 was left running by an earlier session: marked failed" in done.stderr
    rows = (out / "trials.md").read_text().split("| trial |")[1].splitlines()[2:]
    states = [row.split("|")[2].strip() for row in rows]
    assert states[0] == "complete" and states[1] == "fail"
    assert states.count("complete") + states.count("pruned") + states.count("fail") == 3


# ---------------------------------------------------------------------------- recipes
def test_recipes_resolve_for_every_kind_and_flags_win():
    from dlrm.models import model_config_for, model_kinds

    for kind in model_kinds():
        for name in recipe_names(kind):
            train_config, options = resolve_recipe(kind, name, train_samples=9000, seed=2)
            assert train_config.seed == 2
            # The recipes were tuned at the kaggle preset's shape (D=16). DLRM's chose its
            # MLPs, hence its D with them: it fits a preset of another D too.
            model_config_for(kind, "kaggle", TABLES, 13, options)
            built = model_config_for(kind, "tiny", TABLES, 13, options)
            if "bottom_mlp" in options:
                assert built["embedding_dim"] == options["embedding_dim"] == 16
    train_config, options = resolve_recipe("dlrm", "reference", 9000)
    assert (train_config.optimizer, train_config.lr, train_config.batch_size) == ("sgd", 0.1,
                                                                                  128)
    assert options == REFERENCE_RECIPE["model"]
    with pytest.raises(ValueError, match="has the recipes reference"):
        resolve_recipe("dlrm", "bogus", 9000)


def test_full_batch_recipe_keeps_its_prior_at_any_size():
    """The LR recipe's L2 was chosen on 9,000 rows: on 90,000 it is 10 times weaker (the
    penalty on the mean loss; scikit-learn's C held fixed), on 9,000 it is as chosen, and a
    weight decay given as a flag wins; batch 0 is the whole split."""
    lr_recipe = TUNED_RECIPES["lr"]["small-criteo-tsv"]["train"]
    assert lr_recipe["optimizer"] == "lbfgs" and lr_recipe["weight_decay_rows"] == 9000
    same, _ = resolve_recipe("lr", "small", 9000)
    bigger, _ = resolve_recipe("lr", "small", 90000)
    assert same.weight_decay == lr_recipe["weight_decay"]
    assert bigger.weight_decay == pytest.approx(lr_recipe["weight_decay"] / 10)
    assert same.batch_size == bigger.batch_size == 0
    assert same.eval_every == 1  # one evaluation per epoch: one full-batch step per epoch
    given, _ = resolve_recipe("lr", "small", 90000, weight_decay=0.5)
    assert given.weight_decay == 0.5
    # A study's first trial (the current recipe) starts from the scaled value too.
    from dlrm.tune import TuneConfig, _baseline_params

    first = _baseline_params(TuneConfig(model="lr"), 90000)
    assert first["weight_decay"] == pytest.approx(lr_recipe["weight_decay"] / 10)


def test_cli_train_with_a_recipe(tmp_path):
    common = ["train", "--model", "dlrm", "--preset", "tiny", "--data", "synthetic:planted",
              "--train-samples", "2000", "--val-samples", "500", "--quiet"]
    assert main([*common, "--recipe", "reference", "--optimizer", "adagrad", "--out",
                 str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    # The recipe's settings, but the flag given explicitly wins.
    assert saved["train"]["optimizer"] == "adagrad" and saved["train"]["lr"] == 0.1
    assert saved["train"]["sparse_optimizer"] == "sgd"
    assert saved["model_config"]["embedding_init"] == "uniform"
    assert main([*common, "--recipe", "bogus", "--out", str(tmp_path / "b")]) == 2
    # A recipe file, as `dlrm tune` writes recipe.json: its cadence becomes eval_every.
    recipe = {"train": {"optimizer": "adam", "lr": 0.002, "batch_size": 100, "epochs": 2,
                        "patience": 3, "evals_per_epoch": 4},
              "model": {"embedding_init": "normal:1e-3"}, "source": "test"}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert main([*common, "--recipe", str(tmp_path / "recipe.json"), "--out",
                 str(tmp_path / "c")]) == 0
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (saved["train"]["optimizer"], saved["train"]["lr"], saved["train"]["epochs"],
            saved["train"]["eval_every"]) == ("adam", 0.002, 2, 5)  # 2000 rows / 100 / 4
    assert saved["model_config"]["embedding_init"] == "normal:1e-3"
    # The run's config.json records the resolved settings: as --config it starts the same run
    # (the recipe's values, not the flags' defaults, even though they came from the file).
    assert saved["args"]["optimizer"] == "adam" and saved["args"]["recipe"].endswith(".json")
    assert main(["train", "--config", str(tmp_path / "c" / "config.json"), "--quiet", "--out",
                 str(tmp_path / "d")]) == 0
    again = json.loads((tmp_path / "d" / "config.json").read_text())
    assert again["train"] == saved["train"] and again["model_config"] == saved["model_config"]


# ------------------------------------------------------------------- compare, diverged
def test_cli_compare_finishes_with_real_diverged_runs(tmp_path, capsys):
    """SGD at lr 1e38 overflows to inf/NaN within a few steps: those runs are counted and
    drawn as diverged; the others are averaged; the command exits 0."""
    assert main(["compare", "--data", "synthetic:planted", "--preset", "tiny", "--models",
                 "lr,dcn", "--optimizers", "sgd,adagrad", "--lr", "sgd=1e38", "--seeds", "2",
                 "--budget", "1024", "--batch-size", "256", "--train-samples", "4096",
                 "--val-samples", "1000", "--curve-points", "2", "--out", str(tmp_path),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| lr | sgd | 2 (2 diverged: NaN, not in the means) |" in out
    assert "| dcn | sgd | 2 (2 diverged: NaN, not in the means) |" in out
    results = json.loads((tmp_path / "results.json").read_text())
    diverged = [r for r in results["runs"] if r["optimizer"] == "sgd"]
    assert all("training diverged" in r["summary"]["diverged"] for r in diverged)
    fine = [r for r in results["runs"] if r["optimizer"] == "adagrad"]
    assert all(math.isfinite(r["auc"]) and r["summary"]["samples_seen"] == 1024 for r in fine)
    rows = {(r["model"], r["optimizer"]): r for r in results["rows"]}
    assert rows[("lr", "adagrad")]["auc"] == pytest.approx(np.mean([r["auc"] for r in fine
                                                                     if r["model"] == "lr"]))
    assert (tmp_path / "auc_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_with_recipes_trains_each_kind_at_its_recipe(tmp_path):
    from dlrm.compare import CompareConfig, compare

    config = CompareConfig(models=["lr", "dlrm"], recipes=["reference"], seeds=1,
                           preset="tiny", budget=1024, curve_points=2)
    results = compare(planted(), config, tmp_path)
    for run in results["runs"]:
        saved = json.loads((Path(run["summary"]["run_dir"]) / "config.json").read_text())
        assert (saved["train"]["optimizer"], saved["train"]["batch_size"]) == ("sgd", 128)
        assert run["recipe"]["source"] == REFERENCE_RECIPE["source"]
    assert "| model | recipe |" in (tmp_path / "results.md").read_text()
