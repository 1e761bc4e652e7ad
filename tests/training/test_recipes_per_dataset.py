"""`small` recipes per data set: each kind's variants tuned on Criteo, Avazu and MovieLens,
`small` resolving by the data's data set (else Criteo's, logged), explicit variant names, and
`dlrm train` / `dlrm compare` / `dlrm tune` on a preprocessed MovieLens-100K folder."""

import json
import logging

import numpy as np
import pytest

from dlrm.cli import main
from dlrm.data import open_data
from dlrm.data.source import dataset_name
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.models.tuned_recipes import TUNED_RECIPES
from dlrm.training import recipes
from dlrm.training.recipes import (
    DEFAULT_TUNED_ON,
    get_recipe,
    recipe_names,
    recipe_variants,
    resolve_recipe,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DATASETS = ["criteo-tsv", "criteo-tsv-buckets", "avazu", "movielens-100k"]
KINDS = ["dlrm", "dcn", "dcnv2", "dlrm_dcnv2", "wdl", "deepfm", "lr"]
ML_LR = TUNED_RECIPES["lr"]["small-movielens-100k"]["train"]
CRITEO_LR = TUNED_RECIPES["lr"]["small-criteo-tsv"]["train"]


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees the resolution logged (it is logged once per process)."""
    monkeypatch.setattr(recipes, "_ANNOUNCED", set())


# ------------------------------------------------------------------------- the shipped data
def test_every_kind_ships_a_small_recipe_per_data_set():
    for kind in KINDS:
        assert list(TUNED_RECIPES[kind]) == [f"small-{d}" for d in DATASETS]
        assert recipe_variants(kind, "small") == {d: f"small-{d}" for d in DATASETS}
        assert recipe_names(kind) == ["reference", "small", *(f"small-{d}" for d in DATASETS),
                                      "auto"]
        study = {"criteo-tsv": "-criteo", "criteo-tsv-buckets": "-buckets-", "avazu": "-avazu-",
                 "movielens-100k": "tune-movielens-"}
        for d in DATASETS:
            recipe = TUNED_RECIPES[kind][f"small-{d}"]
            assert recipe["tuned_on"] == d and study[d] in recipe["source"]
    # The studies' values (4 significant digits), Criteo's as they were before the variants.
    assert (CRITEO_LR["weight_decay"], CRITEO_LR["weight_decay_rows"]) == (0.004184, 9000)
    assert (ML_LR["weight_decay"], ML_LR["weight_decay_rows"]) == (8.147e-06, 80000)
    assert TUNED_RECIPES["deepfm"]["small-criteo-tsv"]["train"]["optimizer"] == "adagrad"
    assert TUNED_RECIPES["deepfm"]["small-avazu"]["train"]["optimizer"] == "adam"
    assert TUNED_RECIPES["dlrm"]["small-criteo-tsv"]["model"]["bottom_mlp"] == "512-256-64-16"
    # DLRM's Criteo studies searched the interaction too; validation chose the reference's cat
    for d in ("criteo-tsv", "criteo-tsv-buckets"):
        assert TUNED_RECIPES["dlrm"][f"small-{d}"]["model"]["interaction"] == "cat"


# ---------------------------------------------------------------------------- resolution
def test_small_is_the_variant_tuned_on_the_data_set(caplog):
    caplog.set_level(logging.INFO, logger="dlrm.training.recipes")
    for kind in KINDS:
        for d in DATASETS:
            assert get_recipe(kind, "small", 9000, dataset=d) == TUNED_RECIPES[kind][f"small-{d}"]
    assert ("recipe small of deepfm: small-avazu, the one tuned on this data's data set "
            "(avazu)") in caplog.text
    # Resolved into settings: MovieLens's L2, chosen on 80,000 rows, scaled to 40,000.
    train, options = resolve_recipe("lr", "small", 40_000, dataset="movielens-100k")
    assert (train.optimizer, train.batch_size, options) == ("lbfgs", 0, {})
    assert train.weight_decay == pytest.approx(ML_LR["weight_decay"] * 2)
    # Criteo rows read by the shipped Kaggle or Terabyte schema get Criteo's recipe.
    for same in ("criteo-kaggle", "criteo-terabyte"):
        assert get_recipe("dcn", "small", 9000, same) == TUNED_RECIPES["dcn"]["small-criteo-tsv"]
    assert "small-criteo-tsv, the one tuned on this data's data set (criteo-tsv)" in caplog.text
    train, options = resolve_recipe("dcn", "small", 9000, dataset="movielens-100k", seed=4)
    assert options["embedding_init"] == "uniform" and train.seed == 4
    assert train.lr == TUNED_RECIPES["dcn"]["small-movielens-100k"]["train"]["lr"]


@pytest.mark.parametrize("dataset", [None, "criteo-tsv-val30", "netflix"])
def test_small_falls_back_to_criteo_and_says_so(caplog, dataset):
    caplog.set_level(logging.INFO, logger="dlrm.training.recipes")
    assert DEFAULT_TUNED_ON == "criteo-tsv"
    recipe = get_recipe("lr", "small", 9000, dataset=dataset)
    assert recipe == TUNED_RECIPES["lr"]["small-criteo-tsv"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("recipe small of lr: small-criteo-tsv, tuned on other data "
                              "(criteo-tsv, not this ")
    assert (f"data set {dataset}" if dataset else "data without a data set name") in message
    assert "`dlrm tune --model lr` chooses a recipe for this data" in message
    # Logged once per process, however often a run resolves it.
    get_recipe("lr", "small", 9000, dataset=dataset)
    assert len(caplog.records) == 1


def test_explicit_variants_auto_and_unknown_names():
    # A variant by name on any data.
    assert get_recipe("deepfm", "small-avazu", dataset="movielens-100k")["tuned_on"] == "avazu"
    assert get_recipe("lr", "small-criteo-tsv", dataset="avazu")["tuned_on"] == "criteo-tsv"
    # auto: small of the data's data set up to SMALL_DATA_ROWS rows, else reference.
    assert get_recipe("lr", "auto", 80_000, "movielens-100k")["tuned_on"] == "movielens-100k"
    assert get_recipe("lr", "auto", 80_000, None)["tuned_on"] == "criteo-tsv"
    assert "tuned_on" not in get_recipe("lr", "auto", 2_000_000, "movielens-100k")
    with pytest.raises(ValueError) as err:
        resolve_recipe("lr", "small-netflix", 9000, dataset="netflix")
    assert str(err.value) == ("--recipe 'small-netflix': model 'lr' has the recipes reference, "
                              "small, small-criteo-tsv, small-criteo-tsv-buckets, small-avazu, "
                              "small-movielens-100k, auto")


def test_dataset_name_reads_the_data_sources_metadata(tmp_path):
    assert dataset_name(SyntheticData(SyntheticConfig(table_sizes=[10]))) is None

    class Folder:
        def __init__(self, metadata):
            self.metadata = metadata

    assert dataset_name(Folder({"dataset": "avazu", "format": "dlrm-memmap"})) == "avazu"
    assert dataset_name(Folder({"name": "criteo-tsv", "format": "dlrm-table-v1"})) == \
        "criteo-tsv"
    assert dataset_name(Folder({"format": "dlrm-memmap"})) is None


def test_a_studys_first_trial_starts_from_its_data_sets_recipe():
    from dlrm.tune import TuneConfig, _baseline_params

    first = _baseline_params(TuneConfig(model="lr"), 40_000, "movielens-100k")
    assert first["weight_decay"] == pytest.approx(ML_LR["weight_decay"] * 2)
    first = _baseline_params(TuneConfig(model="deepfm"), 7000, "avazu")
    avazu = TUNED_RECIPES["deepfm"]["small-avazu"]
    assert first["optimizer"] == "adam" and first["lr@adam"] == avazu["train"]["lr"]
    assert _baseline_params(TuneConfig(model="deepfm"), 7000, None)["optimizer"] == "adagrad"


# ------------------------------------------------------ end to end on a MovieLens folder
def write_movielens(folder, ratings=1200, users=60, items=40, seed=0):
    """A tiny MovieLens-100K (u.data, u.user, u.item, u.genre in its formats)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    genres = ["unknown", "Action", "Comedy"]
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(genres)) + "\n")
    (folder / "u.user").write_text("".join(
        f"{u}|{rng.integers(10, 70)}|{'MF'[u % 2]}|job{u % 5}|{rng.integers(10000, 99999)}\n"
        for u in range(1, users + 1)))
    (folder / "u.item").write_text("".join(
        f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|"
        + "|".join(str(int(rng.random() < 0.4)) for _ in genres) + "\n"
        for i in range(1, items + 1)), encoding="latin-1")
    lines = []
    for t in range(ratings):
        u, i = int(rng.integers(1, users + 1)), int(rng.integers(1, items + 1))
        score = 3 + (u % 3 == 0) + (i % 4 == 0) - (i % 5 == 0) + rng.normal(0, 0.7)
        lines.append(f"{u}\t{i}\t{int(np.clip(round(score), 1, 5))}\t{880000000 + 60 * t}\n")
    (folder / "u.data").write_text("".join(lines))


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    root = tmp_path_factory.mktemp("movielens")
    write_movielens(root / "raw")
    assert main(["preprocess", "table", "--schema", "movielens-100k", "--input",
                 str(root / "raw"), "--out", str(root / "data"), "--quiet"]) == 0
    return root / "data"


def test_cli_train_and_compare_use_movielens_recipes_on_movielens(movielens, tmp_path):
    data = open_data(str(movielens))
    assert dataset_name(data) == "movielens-100k"
    rows = data.num_samples("train")
    assert rows == 960  # 80% of 1,200 by timestamp
    # dlrm train --recipe small: MovieLens's L2 (chosen on 80,000 rows) scaled to these rows.
    assert main(["train", "--model", "lr", "--recipe", "small", "--data", str(movielens),
                 "--threads", "1", "--quiet", "--out", str(tmp_path / "lr")]) == 0
    saved = json.loads((tmp_path / "lr" / "config.json").read_text())
    assert saved["args"]["recipe"] == "small"
    assert (saved["train"]["optimizer"], saved["train"]["batch_size"],
            saved["train"]["epochs"]) == ("lbfgs", rows, 30)  # batch 0: the whole split
    want = ML_LR["weight_decay"] * ML_LR["weight_decay_rows"] / rows
    assert saved["train"]["weight_decay"] == pytest.approx(want, rel=1e-9)
    criteo = CRITEO_LR["weight_decay"] * CRITEO_LR["weight_decay_rows"] / rows
    assert saved["train"]["weight_decay"] != pytest.approx(criteo, rel=0.5)  # 5,000x apart
    # The model options too: DCN's MovieLens recipe draws uniform rows, its Criteo one normal.
    assert main(["train", "--model", "dcn", "--preset", "tiny", "--recipe", "small", "--data",
                 str(movielens), "--max-samples", "256", "--threads", "1", "--quiet",
                 "--out", str(tmp_path / "dcn")]) == 0
    saved = json.loads((tmp_path / "dcn" / "config.json").read_text())
    assert saved["model_config"]["embedding_init"] == "uniform"
    assert saved["train"]["lr"] == TUNED_RECIPES["dcn"]["small-movielens-100k"]["train"]["lr"]
    # dlrm compare: small is MovieLens's here; a variant by name is that one on any data.
    assert main(["compare", "--data", str(movielens), "--models", "lr", "--recipes",
                 "small,small-criteo-tsv", "--seeds", "1", "--threads", "1", "--out",
                 str(tmp_path / "cmp"), "--quiet"]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    by_name = {r["optimizer"]: r for r in results["runs"]}
    assert by_name["small"]["recipe"]["tuned_on"] == "movielens-100k"
    assert by_name["small-criteo-tsv"]["recipe"]["tuned_on"] == "criteo-tsv"
    for name, l2 in (("small", want), ("small-criteo-tsv", criteo)):
        run_dir = tmp_path / "cmp" / f"lr-{name}-seed0"
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["train"]["weight_decay"] == pytest.approx(l2, rel=1e-9)


def test_tune_on_movielens_starts_from_movielens_recipe(movielens, tmp_path):
    pytest.importorskip("optuna")
    from dlrm.tune import TuneConfig, tune

    data = open_data(str(movielens))
    rows = data.num_samples("train")
    tune(data, TuneConfig(model="lr", trials=1, epochs=2, evals_per_epoch=1, patience=0,
                          pruner="none"), tmp_path)
    trials = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(trials) == 2
    first = json.loads((tmp_path / "trials" / "0000" / "config.json").read_text())
    want = ML_LR["weight_decay"] * ML_LR["weight_decay_rows"] / rows
    assert first["train"]["weight_decay"] == pytest.approx(want, rel=1e-9)
    # The study's recipe.json says which data set it was chosen on.
    assert json.loads((tmp_path / "recipe.json").read_text())["tuned_on"] == "movielens-100k"


# ------------------------------------------------------------------- the generator
def test_tuning_summary_writes_one_small_recipe_per_kind_and_data_set(tmp_path, monkeypatch):
    """benchmarks/tuning_summary.py --write-recipes: each study's data set from its data
    folder's metadata (a relative data path found above the study, as tune_recipes.sh writes
    it; the older format's ``name``), ``--same-data``, and two studies of one kind on one data
    set refused."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tuning_summary.py"
    spec = importlib.util.spec_from_file_location("tuning_summary", script)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    runs = tmp_path / "repo" / "runs"
    metadata = {"criteo": {"dataset": "criteo-tsv"}, "criteo-val30": {"name": "criteo-tsv-val30"},
                "movielens": {"dataset": "movielens-100k"}}
    for folder, meta in metadata.items():
        (runs / "data" / folder).mkdir(parents=True)
        (runs / "data" / folder / "metadata.json").write_text(json.dumps(meta))

    def study(name, kind, data, wd):
        folder = runs / name
        folder.mkdir()
        (folder / "trials.csv").write_text("number,state,seconds\n0,complete,1.5\n")
        (folder / "recipe.json").write_text(json.dumps(
            {"train": {"optimizer": "adam", "lr": 0.0123456, "weight_decay": wd},
             "model": {}, "source": "dlrm tune"}))
        (folder / "best_config.json").write_text(json.dumps(
            {"model_kind": kind, "data": {"kind": "memmap", "path": f"runs/data/{data}"},
             "tune": {"val_auc": 0.71234, "trial": 0}}))
        return folder

    studies = [study("tune-criteo30-dlrm-arch", "dlrm", "criteo-val30", 1e-4),
               study("tune-movielens-dlrm", "dlrm", "movielens", 2e-5),
               study("tune-criteo-lr", "lr", "criteo", 3e-3)]
    monkeypatch.chdir(tmp_path)  # the data paths are relative to tmp_path/repo, found above
    rows = [summary.study_row(f, {"criteo-tsv-val30": "criteo-tsv"}) for f in studies]
    written = summary.tuned_recipes(rows)
    assert {k: list(v) for k, v in written.items()} == {
        "dlrm": ["small-criteo-tsv", "small-movielens-100k"], "lr": ["small-criteo-tsv"]}
    movielens = written["dlrm"]["small-movielens-100k"]
    assert movielens["tuned_on"] == "movielens-100k"
    assert movielens["source"] == ("dlrm tune tune-movielens-dlrm on movielens "
                                   "(benchmarks/tune_recipes.sh): best of 1 trials, "
                                   "validation AUC 0.7123")
    # The module it writes is plain data, floats at 4 significant digits.
    out = tmp_path / "tuned.py"
    subprocess.run([sys.executable, str(script), *map(str, studies), "--same-data",
                    "criteo-tsv-val30=criteo-tsv", "--write-recipes", str(out)], check=True,
                   capture_output=True)
    namespace: dict = {}
    exec(out.read_text(), namespace)
    assert namespace["TUNED_RECIPES"]["dlrm"]["small-criteo-tsv"]["train"]["lr"] == 0.01235
    assert namespace["TUNED_RECIPES"]["dlrm"]["small-criteo-tsv"]["tuned_on"] == "criteo-tsv"
    # Without --same-data the val30 study is its own data set; with a second Criteo DLRM
    # study the choice is refused.
    assert summary.study_row(studies[0])["dataset"] == "criteo-tsv-val30"
    extra = summary.study_row(study("tune-criteo-dlrm", "dlrm", "criteo", 5e-4))
    with pytest.raises(ValueError, match="tune-criteo30-dlrm-arch and tune-criteo-dlrm both "
                                         "tune dlrm on criteo-tsv"):
        summary.tuned_recipes([*rows, extra])
