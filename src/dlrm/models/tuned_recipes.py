"""Training recipes per model kind, chosen by ``dlrm tune`` on validation rows only.

``TUNED_RECIPES[kind][name]`` is a recipe (``dlrm.training.recipes``): ``train`` holds
``TrainConfig`` fields plus ``evals_per_epoch`` (the evaluation cadence that early stopping
uses), ``model`` holds options of the kind (``embedding_init``), ``source`` says which study
chose it. Each model module hands its kind's entry to its ``ModelSpec``. The ``small`` recipes
are for data sets of up to about a million rows (they were tuned on the 9,000 training rows of
Criteo head10k, docs/results.md); at full scale the reference recipe stays the default.

Regenerated from the studies' ``recipe.json`` files by ``benchmarks/tune_recipes.sh``.
"""

from __future__ import annotations

from typing import Any

TUNED_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "lr": {"small": {"train": {"optimizer": "adagrad", "lr": 0.01488, "batch_size": 128,
                               "epochs": 10, "patience": 4, "evals_per_epoch": 4},
                     "model": {}, "source": "provisional"}},
}
