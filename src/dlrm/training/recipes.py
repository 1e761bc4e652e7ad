"""Named training recipes: how a model kind is trained (optimizer, lr, batch size, epochs with
early stopping, embedding initialisation), resolved into a ``TrainConfig`` and model options.

A recipe is a plain dict::

    {"train": {"optimizer": "adam", "lr": 5e-4, "batch_size": 128, "epochs": 10,
               "patience": 4, "evals_per_epoch": 4, ...},     # TrainConfig fields (+ cadence)
     "model": {"embedding_init": "normal:1e-4"},              # options of the kind
     "source": "dlrm tune, 24 trials on criteo head10k ..."}

Names: ``reference`` for every kind (the reference DLRM's Criteo Kaggle recipe: SGD, lr 0.1,
batch 128, one epoch, U(+-sqrt(1/n)) rows), the kind's own recipes from its ``ModelSpec``
(``dlrm.models.tuned_recipes``), and ``auto``: ``small`` where the kind has one and the
training split has at most ``SMALL_DATA_ROWS`` rows, else ``reference``. A name ending in
``.json`` is a recipe file, such as the ``recipe.json`` that ``dlrm tune`` writes.

Tuned recipes depend on the data they were tuned on, so a kind's ``small`` recipe has one
variant per data set, each recording it as ``tuned_on`` and named ``small-<tuned_on>``:
``small-criteo-tsv``, ``small-avazu``, ``small-movielens-100k`` (the data set is a preprocessed
folder's metadata ``dataset``, its schema's name; ``dlrm.data.source.dataset_name``). The
family name ``small`` resolves by the data being trained (``get_recipe(..., dataset=...)``):
the variant tuned on that data set where there is one, else the one tuned on
``DEFAULT_TUNED_ON`` (Criteo), which is logged, since `dlrm tune` chooses a recipe for the data
itself. The variant names choose one explicitly, on any data.

Example:
    >>> train, options = resolve_recipe("lr", "reference", train_samples=9000)
    >>> train.optimizer, train.lr, options
    ('sgd', 0.1, {})
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from dlrm.config import parse_arch
from dlrm.models import get_spec
from dlrm.training.loop import TrainConfig

log = logging.getLogger(__name__)

# The reference DLRM's Criteo Kaggle run (dlrm_s_pytorch.py, run_and_time.sh): plain SGD at
# lr 0.1, mini-batches of 128, one pass, embedding rows U(-sqrt(1/n), sqrt(1/n)).
REFERENCE_RECIPE: dict[str, Any] = {
    "train": {"optimizer": "sgd", "lr": 0.1, "sparse_optimizer": "sgd", "batch_size": 128,
              "epochs": 1, "patience": 0, "weight_decay": 0.0},
    "model": {"embedding_init": "uniform"},
    "source": "the reference DLRM's Criteo Kaggle recipe (facebookresearch/dlrm)",
}
# Recipes tuned on samples of ~10k rows are used up to this many training rows by ``auto``.
SMALL_DATA_ROWS = 1_000_000
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
# Recipe keys that are not TrainConfig fields: the evaluation cadence, and the training rows a
# full-batch recipe's weight_decay was chosen on (``train_config_from_recipe`` scales it).
CADENCE_KEYS = ("evals_per_epoch", "weight_decay_rows")
# The data set whose variant of a recipe family (``small``) serves data of any other data set,
# or of none (synthetic data): Criteo, the data every kind was tuned on first.
DEFAULT_TUNED_ON = "criteo-tsv"
# Data sets holding the rows a tuned one holds, read by another shipped schema: the Criteo
# Kaggle and Terabyte schemas read the TSV rows that criteo-tsv reads.
SAME_DATA = {"criteo-kaggle": "criteo-tsv", "criteo-terabyte": "criteo-tsv"}
# Resolution messages already logged (a run resolves its recipe for its training settings and
# again for its model options, a comparison once per seed: each says it once per process).
_ANNOUNCED: set[str] = set()


def recipe_variants(kind: str, family: str) -> dict[str, str]:
    """``{tuned_on: recipe name}`` of the variants of recipe ``family`` (``small``) of
    ``kind``: its recipes named ``<family>-<tuned_on>``, in the spec's order."""
    return {r["tuned_on"]: name for name, r in get_spec(kind).recipes.items()
            if r.get("tuned_on") and name == f"{family}-{r['tuned_on']}"}


def _families(kind: str) -> list[str]:
    """The family names (``small``) that ``kind``'s data-set variants share."""
    names = [name[:-len(r["tuned_on"]) - 1] for name, r in get_spec(kind).recipes.items()
             if r.get("tuned_on") and name.endswith(f"-{r['tuned_on']}")]
    return list(dict.fromkeys(names))


def recipe_names(kind: str) -> list[str]:
    """The recipes ``kind`` has: ``reference``, its tuned families (``small``, resolved by the
    data set), its tuned recipes (each variant, ``small-avazu``), and ``auto``."""
    return list(dict.fromkeys(["reference", *_families(kind), *get_spec(kind).recipes,
                               "auto"]))


def _announce(message: str) -> None:
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        log.info("%s", message)


def _variant(kind: str, family: str, variants: dict[str, str], dataset: str | None) -> str:
    """The recipe name that ``family`` means for data of data set ``dataset`` (logged)."""
    dataset = SAME_DATA.get(dataset, dataset) if dataset else dataset
    if dataset in variants:
        _announce(f"recipe {family} of {kind}: {variants[dataset]}, the one tuned on this "
                  f"data's data set ({dataset})")
        return variants[dataset]
    chosen = variants.get(DEFAULT_TUNED_ON) or next(iter(variants.values()))
    this = f"data set {dataset}" if dataset else "data without a data set name"
    _announce(f"recipe {family} of {kind}: {chosen}, tuned on other data "
              f"({get_spec(kind).recipes[chosen]['tuned_on']}, not this {this}; {family} is "
              f"tuned on {', '.join(variants)}): `dlrm tune --model {kind}` chooses a recipe "
              f"for this data")
    return chosen


def get_recipe(kind: str, name: str, train_samples: int | None = None,
               dataset: str | None = None) -> dict[str, Any]:
    """The recipe dict ``name`` of ``kind``: ``auto`` picks by ``train_samples``, a family
    name (``small``) the variant tuned on ``dataset`` (else on ``DEFAULT_TUNED_ON``; the
    choice is logged at INFO), a ``.json`` name is read from that file."""
    spec = get_spec(kind)
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        recipe = json.loads(path.read_text())
        if not isinstance(recipe, dict) or not isinstance(recipe.get("train"), dict):
            raise ValueError(f"recipe file {path}: expected a JSON object with a 'train' "
                             f"object (as dlrm tune's recipe.json)")
        return recipe
    if name == "auto":
        small = train_samples is not None and train_samples <= SMALL_DATA_ROWS
        name = "small" if small and "small" in recipe_names(kind) else "reference"
    if name == "reference":
        return copy.deepcopy(REFERENCE_RECIPE)
    if name not in spec.recipes:
        variants = recipe_variants(kind, name)
        if not variants:
            raise ValueError(f"--recipe {name!r}: model {kind!r} has the recipes "
                             f"{', '.join(recipe_names(kind))}")
        name = _variant(kind, name, variants, dataset)
    return copy.deepcopy(spec.recipes[name])


def check_recipe(kind: str, recipe: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming a key of ``recipe`` that is neither a TrainConfig field nor
    an option of ``kind``."""
    unknown = set(recipe.get("train", {})) - TRAIN_FIELDS - set(CADENCE_KEYS)
    if unknown:
        raise ValueError(f"recipe for {kind!r}: {', '.join(sorted(unknown))} is not a "
                         f"training setting (TrainConfig field)")


def train_config_from_recipe(recipe: dict[str, Any], train_samples: int,
                             base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """``base`` (default ``TrainConfig()``) with the recipe's training fields, then
    ``overrides`` (None values ignored). ``evals_per_epoch`` becomes ``eval_every`` for a
    training split of ``train_samples`` rows; a ``weight_decay`` chosen on
    ``weight_decay_rows`` rows (a full-batch L2 penalty on the mean loss) is scaled by
    ``weight_decay_rows / train_samples``: the same prior on the weights, scikit-learn's C held
    fixed, whatever the data's size."""
    settings = {**asdict(base or TrainConfig()), **{k: v for k, v in recipe["train"].items()
                                                     if k in TRAIN_FIELDS}}
    chosen_on = recipe["train"].get("weight_decay_rows")
    if chosen_on and "weight_decay" in recipe["train"]:
        settings["weight_decay"] = recipe["train"]["weight_decay"] * chosen_on / train_samples
    settings.update({k: v for k, v in overrides.items() if v is not None})
    per_epoch = recipe["train"].get("evals_per_epoch")
    if per_epoch and "eval_every" not in overrides:
        steps = max(1, train_samples // (int(settings["batch_size"]) or train_samples))
        settings["eval_every"] = max(1, steps // int(per_epoch))
    return TrainConfig(**settings)


def model_options_from_recipe(kind: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's model options that ``kind`` takes (logistic regression has no embedding
    initialisation to choose, for instance). A recipe that chose DLRM's bottom MLP chose its
    D with it (the MLP ends at D), so the recipe's D comes along unless it names one."""
    options = get_spec(kind).options
    chosen = {k: v for k, v in recipe.get("model", {}).items() if k in options}
    bottom = chosen.get("bottom_mlp")
    if bottom is not None and "embedding_dim" in options and "embedding_dim" not in chosen:
        chosen["embedding_dim"] = parse_arch(bottom)[-1]
    return chosen


def resolve_recipe(kind: str, name: str, train_samples: int, base: TrainConfig | None = None,
                   *, dataset: str | None = None,
                   **overrides: Any) -> tuple[TrainConfig, dict[str, Any]]:
    """(TrainConfig, model options) of recipe ``name`` for ``kind`` on a training split of
    ``train_samples`` rows of data set ``dataset`` (``get_recipe``); ``overrides`` are
    TrainConfig fields that win over the recipe."""
    recipe = get_recipe(kind, name, train_samples, dataset)
    check_recipe(kind, recipe)
    return (train_config_from_recipe(recipe, train_samples, base, **overrides),
            model_options_from_recipe(kind, recipe))
