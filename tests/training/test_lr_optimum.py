"""Our logistic regression at its optimum: full-batch L-BFGS (``FullBatchLBFGS``) on the
L2-penalized loss reaches scikit-learn's ``LogisticRegression`` solution on the same one-hot +
dense features (weights and AUC), and the shipped recipe (its L2 strength chosen by `dlrm tune`
on validation) ranks the Criteo spread rows within 0.003 of scikit-learn with C chosen on the
same validation rows, trained through `dlrm train` as a user does. The sklearn side is
benchmarks/sklearn_lr.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.loop import ConfigError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sklearn.linear_model",
                    reason="scikit-learn is a test extra: pip install -e '.[dev]'")

# The one home of the sklearn reference: benchmarks/sklearn_lr.py (docs/results.md uses it).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sklearn_lr import one_hot_design, sklearn_optimum  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HEAD = SHARED / "criteo-kaggle-head10k" / "train.txt"
SPREAD = SHARED / "criteo-kaggle-spread4k" / "rows.txt"
# Raw Criteo rows split 90/10 in file order (the data the `small` recipes were tuned on).
CRITEO_TSV = Path(__file__).resolve().parents[2] / "benchmarks" / "schemas" / "criteo-tsv.json"


def test_design_matrix_gives_the_models_logits():
    """The sklearn features are exactly what our LR reads: its logits equal X @ w + b."""
    import torch

    from dlrm.models import build_model, model_config_for

    data = SyntheticData(SyntheticConfig(table_sizes=[30, 20, 10], train_samples=600,
                                         val_samples=100, test_samples=100))
    torch.manual_seed(0)
    model = build_model("lr", model_config_for("lr", "tiny", data.table_sizes, 13))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x, _ = one_hot_design(data, "val")
    weights = np.concatenate([model.dense_linear.weight.detach().numpy()[0],
                              model.wide.weight.detach().numpy()[:, 0]])
    want = x @ weights + model.dense_linear.bias.item()
    batch = next(data.batches("val", 100))
    got = model(batch.dense, batch.sparse).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _lr_weights(model) -> np.ndarray:
    return np.concatenate([model.dense_linear.weight.detach().double().numpy()[0],
                           model.wide.weight.detach().double().numpy()[:, 0]])


def test_lbfgs_reaches_sklearns_optimum_on_the_same_features(tmp_path):
    """Same objective (mean log loss + weight_decay/2 ||w||^2 with weight_decay = 1/(C N),
    bias not penalized), same optimum: the objective, computed in float64, within 1e-5 of
    scikit-learn's (float64, tolerance 1e-10); weights within 0.02 (the float32 loss leaves
    the flattest directions that loose); validation AUC within 1e-3. A run that has not
    converged misses the objective by 100 times more."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from dlrm.models import build_model

    data = SyntheticData(SyntheticConfig(table_sizes=[40, 25, 12], train_samples=3000,
                                         val_samples=1000, test_samples=10, seed=3))
    x_train, y_train = one_hot_design(data, "train")
    x_val, y_val = one_hot_design(data, "val")
    c, rows = 0.5, data.num_samples("train")
    want = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x_train, y_train)
    model_config = {"table_sizes": data.table_sizes, "num_dense": data.num_dense}

    def objective(weights, bias):
        logits = x_train @ weights + bias
        return np.mean(np.logaddexp(0, logits) - y_train * logits) + \
            0.5 / (c * rows) * weights @ weights

    def trained(run):
        model = build_model("lr", model_config)
        model.load_state_dict(torch.load(run / "last.pt", weights_only=False)["model"])
        return _lr_weights(model), model.dense_linear.bias.item()

    best = objective(want.coef_[0], want.intercept_[0])
    summary = train("lr", model_config, data,
                    TrainConfig(optimizer="lbfgs", lr=1.0, batch_size=0, epochs=20,
                                weight_decay=1 / (c * rows), threads=1), tmp_path / "run")
    weights, bias = trained(tmp_path / "run")
    assert objective(weights, bias) == pytest.approx(best, rel=1e-5)
    np.testing.assert_allclose(weights, want.coef_[0], atol=0.02)
    assert bias == pytest.approx(want.intercept_[0], abs=0.02)
    assert summary["val_auc"] == pytest.approx(
        roc_auc_score(y_val, want.decision_function(x_val)), abs=1e-3)
    train("lr", model_config, data, TrainConfig(optimizer="adagrad", lr=0.05, batch_size=256,
                                                epochs=1, threads=1), tmp_path / "early")
    assert objective(*trained(tmp_path / "early")) > best * (1 + 1e-3)


def test_lbfgs_is_full_batch_only(tmp_path, capsys):
    data = SyntheticData(SyntheticConfig(table_sizes=[10, 5], train_samples=500,
                                         val_samples=100))
    with pytest.raises(ConfigError, match="batch_size 128: lbfgs is a full-batch method: "
                                          "use 0 .*500 rows"):
        train("lr", {"table_sizes": data.table_sizes, "num_dense": data.num_dense}, data,
              TrainConfig(optimizer="lbfgs", lr=1.0, batch_size=128), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # Through the CLI: batch 0 trains (the whole split); several processes are refused
    # before any is started.
    from dlrm.cli import main

    common = ["train", "--model", "lr", "--preset", "tiny", "--data", "synthetic:planted",
              "--train-samples", "500", "--val-samples", "100", "--optimizer", "lbfgs",
              "--quiet"]
    assert main([*common, "--nproc", "2", "--out", str(tmp_path / "two")]) == 2
    assert main([*common, "--batch-size", "0", "--epochs", "2", "--out",
                 str(tmp_path / "one")]) == 0
    saved = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert saved["steps"] == 2 and saved["samples_seen"] == 1000
    # 0 is the whole split; below it is refused before any work, by every training command
    # (compare too, whose recipes would otherwise never read the flag).
    capsys.readouterr()
    assert main(["compare", "--data", "synthetic:planted", "--models", "lr", "--recipes",
                 "small", "--batch-size", "-1", "--quiet", "--out", str(tmp_path / "c")]) == 2
    assert "--batch-size -1: must be at least 0 (0: the whole training split)" in \
        capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_lbfgs_resumes_to_the_uninterrupted_run(tmp_path):
    """L-BFGS's curvature history is optimizer state: a run of 2 steps extended to 4 ends
    with the weights of a run of 4."""
    data = SyntheticData(SyntheticConfig(table_sizes=[30, 20], train_samples=800,
                                         val_samples=200))
    model_config = {"table_sizes": data.table_sizes, "num_dense": data.num_dense}

    def config(epochs):
        return TrainConfig(optimizer="lbfgs", lr=1.0, batch_size=0, epochs=epochs,
                           weight_decay=1e-3, threads=1)

    whole = train("lr", model_config, data, config(4), tmp_path / "whole")
    train("lr", model_config, data, config(2), tmp_path / "part")
    resumed = train("lr", model_config, data, config(4), tmp_path / "part", resume=True)
    assert resumed["steps"] == whole["steps"] == 4
    assert resumed["val_logloss"] == whole["val_logloss"]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.skipif(not (HEAD.exists() and SPREAD.exists()),
                    reason=f"the real Criteo samples are not at {SHARED}")
def test_lr_recipe_on_criteo_head10k_matches_sklearn(tmp_path):
    """The shipped `small` LR recipe (full-batch L-BFGS, its L2 chosen by `dlrm tune` on the
    validation rows), trained by `dlrm train --recipe small`, against scikit-learn with C
    chosen on the same validation rows: test = the 4,370 spread rows, AUC within 0.003 (the
    issue's bound; one AUC's standard error here is 0.009). The reference recipe's one SGD
    epoch, not converged, misses it by far (0.716)."""
    from dlrm.data import open_data
    from dlrm.data.table import load_schema, preprocess_table

    preprocess_table(load_schema(CRITEO_TSV), {"main": HEAD, "test": SPREAD}, tmp_path / "data")
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "dlrm", "train", "--model", "lr", "--recipe",
                    "small", "--data", str(tmp_path / "data"), "--threads", "1", "--quiet",
                    "--out", str(out)], check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["train"]["optimizer"] == "lbfgs"
    best = sklearn_optimum(open_data(tmp_path / "data"), [0.01, 0.03, 0.1])
    assert best["C"] == 0.03  # the grid brackets sklearn's optimum
    assert summary["test_auc"] == pytest.approx(best["test_auc"], abs=0.003), (summary, best)
