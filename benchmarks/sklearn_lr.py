"""scikit-learn's logistic regression at its optimum on a data folder's one-hot features: the
floor our LR must reach (docs/results.md) and the reference of tests/training/test_lr_optimum.py.

    python benchmarks/sklearn_lr.py runs/data/criteo runs/data/avazu runs/data/movielens

Features: the dense columns, then one column per (table, id) — a 1 at every id of a row's bags
(several for multi-hot bags) — exactly what `dlrm.models.LogisticRegression` reads. L2
regularization strength C is chosen on the validation split's AUC over a grid; the test AUC of
that C is reported with its Hanley-McNeil standard error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def one_hot_design(data, split: str):
    """(X (N, num_dense + sum of table sizes) scipy CSR, y (N,)) of a split."""
    import scipy.sparse as sp

    offsets = np.concatenate([[0], np.cumsum(data.table_sizes)])
    rows, cols, dense, labels, base = [], [], [], [], 0
    for batch in data.batches(split, 4096):
        size, features = len(batch), batch.sparse.num_features
        lengths = batch.sparse.lengths.reshape(features, size).numpy().reshape(-1)
        feature = np.repeat(np.repeat(np.arange(features), size), lengths)
        rows.append(np.repeat(np.tile(np.arange(size), features), lengths) + base)
        cols.append(batch.sparse.values.numpy() + offsets[feature])
        dense.append(batch.dense.numpy())
        labels.append(batch.labels.numpy())
        base += size
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    ids = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(base, int(offsets[-1])))
    return sp.hstack([sp.csr_matrix(np.concatenate(dense)), ids]).tocsr(), \
        np.concatenate(labels)


def sklearn_optimum(data, grid=GRID) -> dict:
    """The C of best validation AUC, and its validation and test AUCs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x_train, y_train = one_hot_design(data, "train")
    x_val, y_val = one_hot_design(data, "val")
    x_test, y_test = one_hot_design(data, "test")
    best = None
    for c in grid:
        model = LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)
        val = roc_auc_score(y_val, model.decision_function(x_val))
        if best is None or val > best["val_auc"]:
            best = {"C": c, "val_auc": val,
                    "test_auc": roc_auc_score(y_test, model.decision_function(x_test)),
                    "test_positives": int(y_test.sum()), "test_rows": len(y_test)}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    args = parser.parse_args()
    from dlrm.data import open_data
    from dlrm.metrics import auc_standard_error

    print("| data | C (chosen on val) | val AUC | test AUC | AUC SE |")
    print("|---|---|---|---|---|")
    for folder in args.data:
        best = sklearn_optimum(open_data(str(folder)))
        pos = best["test_positives"]
        se = auc_standard_error(best["test_auc"], pos, best["test_rows"] - pos)
        print(f"| {folder.name} | {best['C']:g} | {best['val_auc']:.4f} | "
              f"{best['test_auc']:.4f} | {se:.4f} |", flush=True)


if __name__ == "__main__":
    main()
