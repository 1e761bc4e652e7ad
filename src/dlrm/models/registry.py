"""Model kinds by name, so checkpoints and the CLI can rebuild any model from a config dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dlrm.config import DLRMConfig
from dlrm.models.dlrm import DLRM

# name -> (config dict -> model). Other model modules register themselves here.
_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "dlrm": lambda cfg: DLRM(DLRMConfig.from_dict(cfg)),
}


def _build_quantized(cfg: dict[str, Any]) -> nn.Module:
    from dlrm.models.quantized import build_quantized_dlrm

    return build_quantized_dlrm(cfg)


_BUILDERS["dlrm-quantized"] = _build_quantized  # issue 7: `dlrm quantize` checkpoints


def register(name: str, builder: Callable[[dict[str, Any]], nn.Module]) -> None:
    _BUILDERS[name] = builder


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind not in _BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[kind](config)


def model_kinds() -> list[str]:
    return sorted(_BUILDERS)
