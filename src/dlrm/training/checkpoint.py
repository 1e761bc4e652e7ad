"""Atomic checkpoints that load with ``weights_only=True`` (no arbitrary unpickling).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
``format``, ``model_kind``, ``model_config``, ``model``, ``optimizer``, ``step``, ``epoch``,
``samples_seen``, ``rng``, ``train_config``, ``data_spec``, ``history``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "dlrm-checkpoint-v1"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A process killed at any moment leaves either the old complete file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dlrm checkpoint (expected format {FORMAT!r})")
    return ckpt


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """A fresh model of ``kind`` from its config dict (see ``dlrm.models.registry``)."""
    from dlrm.models.registry import build_model as _build

    return _build(kind, config)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    ckpt = load(path, map_location)
    model = build_model(ckpt["model_kind"], ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.to(map_location)
    model.eval()
    return model, ckpt
