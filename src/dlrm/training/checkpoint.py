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

from dlrm.models import build_model
from dlrm.models.quantized import embedding_bytes, quantize_model

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


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    ckpt = load(path, map_location)
    model = build_model(ckpt["model_kind"], ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.to(map_location)
    model.eval()
    return model, ckpt


def quantize_checkpoint(src: str | Path, dst: str | Path, bits: int = 8) -> dict[str, Any]:
    """Write a ``dlrm-quantized`` checkpoint of the model in checkpoint ``src`` to ``dst``.

    The new checkpoint keeps the source's train config and data spec (so ``dlrm eval`` finds
    its data) and drops the optimizer state. Returns sizes: ``float_bytes``,
    ``quantized_bytes`` (embedding tables only) and their ratio.
    """
    model, ckpt = load_model(src)
    if ckpt["model_kind"] == "dlrm-quantized":
        raise ValueError(f"{src} is already quantized ({ckpt['model_config']['bits']} bits)")
    float_bytes = embedding_bytes(model)
    if float_bytes == 0:
        raise ValueError(f"{src}: model kind {ckpt['model_kind']!r} has no embedding tables "
                         f"to quantize")
    quantize_model(model, bits)
    quantized_bytes = embedding_bytes(model)
    config = {"base_kind": ckpt["model_kind"], "base_config": ckpt["model_config"], "bits": bits}
    save_atomic({
        "format": FORMAT, "model_kind": "dlrm-quantized", "model_config": config,
        "model": model.state_dict(), "train_config": ckpt.get("train_config"),
        "data_spec": ckpt.get("data_spec"), "step": ckpt.get("step"),
        "quantized_from": str(src)}, dst)
    return {"bits": bits, "float_bytes": float_bytes, "quantized_bytes": quantized_bytes,
            "ratio": float_bytes / quantized_bytes}
