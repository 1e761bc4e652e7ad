"""deepctr-torch side by side with our baselines: same arrays, same recipe, same protocol.

    pip install -c constraints.txt -e '.[ctr-peer]'
    python benchmarks/deepctr_peer.py runs/data/criteo runs/data/avazu --seeds 3 \
        --ours runs/results-criteo runs/results-avazu

For every data folder (`dlrm preprocess table`, one-hot features only) and kind (DeepFM, Wide &
Deep, DCN, DCN-v2 = deepctr's DCN with matrix cross layers), deepctr-torch 0.3.0's model is
trained with our kind's `small` recipe (`dlrm.models.tuned_recipes`): D=16, deep 512-256, the
dense optimizer and lr on dense weights (with the recipe's weight decay), the embedding rows'
optimizer and lr on its embeddings (torch's element-wise Adagrad for our row-wise one), the
batch size, the initialisation (ours: `normal:S` -> its `init_std=S`; `uniform` -> rows reset
to U(+-sqrt(1/n))), its first-order weights starting at zero as ours, no dropout, no extra L2,
and our loop's protocol: evaluations per epoch and patience from the recipe, the test AUC of
the best validation evaluation. The training loop is ours (mean BCE, as `dlrm train`); the
models are deepctr-torch's. With `--ours`, our `dlrm compare --recipes small` results on the
same folders are printed beside (mean ± std over seeds, Hanley-McNeil SE).

Multi-hot features (MovieLens genres) would need deepctr's VarLenSparseFeat and padding; the
script refuses such folders.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlrm.data import open_data
from dlrm.metrics import auc_standard_error, roc_auc
from dlrm.models.tuned_recipes import TUNED_RECIPES

KINDS = ("deepfm", "wdl", "dcn", "dcnv2")


def arrays(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, dense + F), y): deepctr-torch's input layout, dense columns first."""
    batch = next(data.batches(split, data.num_samples(split)))  # the whole split, in order
    ids = batch.sparse.values.reshape(batch.sparse.num_features, -1).T.numpy()
    return np.concatenate([batch.dense.numpy(), ids.astype(np.float32)], 1), \
        batch.labels.numpy()


def build(kind: str, data, recipe: dict, seed: int) -> nn.Module:
    import deepctr_torch.models as dm
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    init = recipe["model"].get("embedding_init", "uniform")
    std = float(init.split(":")[1]) if init.startswith("normal:") else 1e-4
    columns = [DenseFeat(f"d{k}", 1) for k in range(data.num_dense)] + \
        [SparseFeat(f"c{k}", vocabulary_size=n, embedding_dim=16)
         for k, n in enumerate(data.table_sizes)]
    common = dict(dnn_hidden_units=(512, 256), l2_reg_linear=0, l2_reg_embedding=0,
                  l2_reg_dnn=0, init_std=std, seed=seed, dnn_dropout=0, device="cpu")
    if kind == "deepfm":
        model = dm.DeepFM(columns, columns, **common)
    elif kind == "wdl":
        model = dm.WDL(columns, columns, **common)
    else:  # DCN: 6 vector cross layers (the paper's); DCN-v2: 3 full-rank matrix layers
        model = dm.DCN(columns, columns, cross_num=6 if kind == "dcn" else 3,
                       cross_parameterization="vector" if kind == "dcn" else "matrix",
                       l2_reg_cross=0, **common)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                if module.embedding_dim == 1:  # first-order weights start at zero, as ours
                    module.weight.zero_()
                elif init == "uniform":
                    bound = math.sqrt(1.0 / module.num_embeddings)
                    module.weight.uniform_(-bound, bound)
    return model


def optimizers(model: nn.Module, recipe: dict) -> list[torch.optim.Optimizer]:
    train = recipe["train"]
    embedding = [p for n, p in model.named_parameters() if "embedding_dict" in n]
    ids = {id(p) for p in embedding}
    dense = [p for p in model.parameters() if id(p) not in ids]
    make = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    sparse_name = train.get("sparse_optimizer") or ("sgd" if train["optimizer"] == "sgd"
                                                    else "rowwise_adagrad")
    sparse_lr = train.get("sparse_lr") or train["lr"]
    sparse = torch.optim.SGD(embedding, lr=sparse_lr) if sparse_name == "sgd" \
        else torch.optim.Adagrad(embedding, lr=sparse_lr)
    return [make[train["optimizer"]](dense, lr=train["lr"],
                                     weight_decay=train.get("weight_decay", 0.0)), sparse]


@torch.no_grad()
def auc(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    scores = model(torch.from_numpy(x)).squeeze(-1)
    model.train()
    return roc_auc(scores, torch.from_numpy(y))


def run(kind: str, data, seed: int, splits: dict) -> dict:
    recipe = TUNED_RECIPES[kind]["small"]
    train = recipe["train"]
    torch.manual_seed(seed)
    model = build(kind, data, recipe, seed)
    opts = optimizers(model, recipe)
    (x, y), (xv, yv), (xt, yt) = splits["train"], splits["val"], splits["test"]
    batch, n = int(train["batch_size"]), len(y)
    steps_per_epoch = n // batch
    eval_every = max(1, steps_per_epoch // int(train.get("evals_per_epoch", 1)))
    best_val, best_test, since, step = -1.0, math.nan, 0, 0
    started = time.perf_counter()
    loss_fn = nn.BCELoss()
    for epoch in range(int(train["epochs"])):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for k in range(steps_per_epoch):
            rows = order[k * batch:(k + 1) * batch]
            prob = model(torch.from_numpy(x[rows])).squeeze(-1)
            if not bool(torch.isfinite(prob).all()):  # diverged, as our loop reports it
                return {"val_auc": math.nan, "test_auc": math.nan, "steps": step,
                        "seconds": time.perf_counter() - started, "diverged": True}
            loss = loss_fn(prob, torch.from_numpy(y[rows]))
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            step += 1
            if step % eval_every == 0:
                val = auc(model, xv, yv)
                if val > best_val:
                    best_val, best_test, since = val, auc(model, xt, yt), 0
                else:
                    since += 1
                if since >= int(train.get("patience", 0) or 10**9):
                    return {"val_auc": best_val, "test_auc": best_test, "steps": step,
                            "seconds": time.perf_counter() - started}
    return {"val_auc": best_val, "test_auc": best_test, "steps": step,
            "seconds": time.perf_counter() - started}


def ours(folder: Path | None, kind: str) -> list[float]:
    if folder is None or not (folder / "results.json").exists():
        return []
    runs = json.loads((folder / "results.json").read_text())["runs"]
    return [r["auc"] for r in runs if r["model"] == kind and r["optimizer"] == "small"]


def pm(values: list[float]) -> str:
    diverged = sum(math.isnan(v) for v in values)
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return f"– ({diverged} diverged)" if diverged else "–"
    if diverged:
        return pm(values) + f" ({diverged} diverged)"
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.4f} ± " + ("–" if math.isnan(std) else f"{std:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ours", nargs="*", type=Path, default=[],
                        help="our `dlrm compare --recipes small` folders, one per data folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import deepctr_torch

    print(f"deepctr-torch {deepctr_torch.__version__}, torch {torch.__version__}")
    print("| data | model | deepctr-torch test AUC | ours test AUC | AUC SE | deepctr "
          "val AUC | deepctr s/run |")
    print("|---|---|---|---|---|---|---|")
    for k, folder in enumerate(args.data):
        data = open_data(folder)
        if any(f.multi_hot for f in data.schema.categorical):
            raise SystemExit(f"{folder}: multi-hot features; this script takes one-hot data")
        splits = {s: arrays(data, s) for s in ("train", "val", "test")}
        positives = int(splits["test"][1].sum())
        negatives = len(splits["test"][1]) - positives
        mine = args.ours[k] if k < len(args.ours) else None
        for kind in args.kinds.split(","):
            results = [run(kind, data, seed, splits) for seed in range(args.seeds)]
            tests = [r["test_auc"] for r in results]
            finite = [t for t in tests if not math.isnan(t)]
            se = auc_standard_error(statistics.fmean(finite), positives, negatives) \
                if finite else math.nan
            print(f"| {folder.name} | {kind} | {pm(tests)} | {pm(ours(mine, kind))} | {se:.4f} "
                  f"| {pm([r['val_auc'] for r in results])} "
                  f"| {statistics.fmean(r['seconds'] for r in results):.1f} |", flush=True)


if __name__ == "__main__":
    main()
