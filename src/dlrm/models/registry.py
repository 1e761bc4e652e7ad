"""Model kinds by name: one ``ModelSpec`` per kind, registered by the kind's own module.

A spec is everything the rest of the project needs to know about a kind: how to build it from
a config dict (checkpoints store ``model_kind`` + ``model_config``), how a preset and a data
set shape its config (``dlrm train --model KIND --preset NAME``), which options it takes
(``--model-option KEY=VALUE``), and whether it can be trained. The CLI's ``--model`` choices,
``dlrm compare``, ``dlrm bench``, checkpoint loading and the memory check
(``dlrm.models.memory``, from a build on the ``meta`` device) all read this table; nothing
else lists model kinds.

Importing ``dlrm.models`` imports every model module, which registers its kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dlrm.config import Preset, get_preset, parse_arch

ConfigFor = Callable[[Preset, list[int], int, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ModelSpec:
    """One model kind.

    Attributes:
        name: the kind's name (``--model``, ``model_kind`` in checkpoints).
        summary: one line for ``--help`` and docs.
        build: config dict -> a fresh model (its parameters drawn from torch's global
            generator; seed it first for reproducible weights).
        config_for: (preset, table sizes, dense width, overrides) -> the config dict of this
            kind shaped by a preset (D and widths) and a data set (tables, dense width).
        options: override name -> help; what ``--model-option`` and ``config_for`` accept.
        trainable: False for inference-only kinds (quantized checkpoints).
        search_space: what ``dlrm tune`` searches for this kind: parameter name ->
            distribution (the vocabulary is ``SEARCH_SPACE_DOC`` below). Names that are
            ``TrainConfig`` fields set training, the others are options of the kind.
        recipes: named training recipes chosen by ``dlrm tune`` (``dlrm.training.recipes``):
            name -> ``{"train": TrainConfig fields (+ ``evals_per_epoch``), "model": options,
            "source": how it was chosen, "tuned_on": the data set it was tuned on}``; recipes
            named ``<family>-<tuned_on>`` (``small-avazu``) are the variants of ``family``,
            which resolves by the data's data set. ``reference`` (the reference DLRM's recipe)
            is there for every kind without being listed.
        tune_settings: this kind's defaults for a ``dlrm tune`` study (``TuneConfig`` fields:
            ``epochs``, ``evals_per_epoch``, ``patience``, ``pruner``) where they differ from
            the general ones; flags and explicit values win.
    """

    name: str
    summary: str
    build: Callable[[dict[str, Any]], nn.Module]
    config_for: ConfigFor | None = None
    options: dict[str, str] = field(default_factory=dict)
    trainable: bool = True
    search_space: dict[str, Any] | None = None
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune_settings: dict[str, Any] = field(default_factory=dict)


SEARCH_SPACE_DOC = """A search space maps parameter names to distributions, searched in order:
    {"choices": [a, b, ...]}                      one of the values
    {"float": [low, high], "log": true}           a float (log-uniform with "log")
    {"int": [low, high]}                          an integer
    {"float": ..., "per": NAME, "ranges": {value: [low, high], ...}}
        the range depends on the value already drawn for NAME (e.g. the lr per optimizer)
"""

# The part of every trainable kind's search space that is about training (dlrm.tune): dense
# optimizer and lr, the embedding rows' optimizer and lr, L2 on dense weights, batch size.
# Ranges: around each optimizer's usual values (Adam 1e-3, Adagrad 0.01-0.1, SGD 0.1-1).
TRAINING_SEARCH_SPACE: dict[str, Any] = {
    "optimizer": {"choices": ["adagrad", "adam"]},
    "lr": {"float": [1e-4, 0.3], "log": True, "per": "optimizer",
           "ranges": {"adagrad": [3e-3, 0.3], "adam": [1e-4, 1e-2], "sgd": [1e-2, 1.0]}},
    "sparse_optimizer": {"choices": ["rowwise_adagrad", "sgd"]},
    "sparse_lr": {"float": [1e-3, 1.0], "log": True, "per": "sparse_optimizer",
                  "ranges": {"rowwise_adagrad": [3e-3, 0.3], "sgd": [1e-2, 1.0]}},
    "weight_decay": {"float": [1e-8, 1e-3], "log": True},
    "batch_size": {"choices": [64, 128, 256, 512]},
}
# How embedding rows start: the reference's U(+-sqrt(1/n)) suits tables of millions of rows;
# small data sets often do better with small normal rows (DeepCTR's N(0, 1e-4)).
INIT_SEARCH_SPACE: dict[str, Any] = {
    "embedding_init": {"choices": ["uniform", "normal:1e-4", "normal:1e-3", "normal:1e-2"]}}


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the table (a kind registers once)."""
    if spec.name in _SPECS:
        raise ValueError(f"model kind {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def get_spec(kind: str) -> ModelSpec:
    if kind not in _SPECS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(model_kinds(False))}")
    return _SPECS[kind]


def model_kinds(trainable_only: bool = True) -> list[str]:
    """Registered kinds in registration order (trainable ones only, by default)."""
    return [name for name, spec in _SPECS.items() if spec.trainable or not trainable_only]


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """A fresh model of ``kind`` from its config dict."""
    return get_spec(kind).build(config)


def model_config_for(kind: str, preset_name: str, table_sizes: list[int], num_dense: int,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of a ``kind`` model shaped by a preset and a data set.

    ``overrides`` (None values ignored) must name options of ``kind``; anything else raises
    ``ValueError`` naming the key and the options the kind has.
    """
    spec = get_spec(kind)
    if spec.config_for is None:
        raise ValueError(f"model kind {kind!r} is not built from a preset "
                         f"(it is made from a trained checkpoint)")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(over) - set(spec.options))
    if unknown:
        raise ValueError(f"model {kind!r} has no option {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(spec.options)) or 'none'}")
    return spec.config_for(get_preset(preset_name), [int(n) for n in table_sizes],
                           int(num_dense), over)


def deep_widths(preset: Preset, over: dict[str, Any]) -> list[int]:
    """A baseline's deep network: ``deep_mlp`` if given, else the preset's top MLP without its
    final 1 (so models compared with DLRM have deep networks of the same widths)."""
    return parse_arch(over.get("deep_mlp", list(preset.top_mlp[:-1]) or [preset.embedding_dim]))


def parse_model_options(items: list[str] | None) -> dict[str, Any]:
    """``["cross_layers=6", "deep_mlp=512-256"]`` -> a dict of overrides.

    Integers and floats become numbers, ``true``/``false`` booleans, ``none`` None; the rest
    stay strings (widths like ``512-256`` are parsed by the configs).
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE")
        options[key.strip()] = _option_value(value.strip())
    return options


def _option_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
