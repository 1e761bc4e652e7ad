"""Atomic checkpoints that load with ``weights_only=True`` (no arbitrary unpickling).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
``format``, ``model_kind``, ``model_config``, ``model``, ``optimizer``, ``step``, ``rng``,
``loop_state``, ``train_config``, ``data_spec`` and ``data_identity`` (what data set the model
was trained on: ``dlrm.training.data_identity``; ``dlrm eval``/``predict`` refuse another).

Every file a run reads back is written through ``atomic_file``: a temporary file in the same
folder, fsynced, renamed over the target. Loading turns every way a file can be wrong (missing,
empty, truncated, random bytes, a pickle of Python objects, another program's file) into a
``CheckpointError`` naming the file; it never suggests loading unsafely.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.files import atomic_file
from dlrm.models import build_model
from dlrm.models.quantized import calibrate_mlp_ranges, embedding_bytes, quantize_model

FORMAT = "dlrm-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says why."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` through ``atomic_file``."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def check_output_path(out: str | Path, inputs: list[str | Path | None],
                      overwrite: bool = False, file: bool = True) -> None:
    """Refuse to write ``out`` over one of a command's ``inputs`` (always: outputs never
    replace what a command reads) and, for a ``file`` output, over a folder or an existing
    file (unless ``overwrite``)."""
    out = Path(out)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if out.resolve() == source.resolve() or (
                out.exists() and source.exists() and os.path.samefile(out, source)):
            raise ValueError(f"--out {out} is the input {source}; write the output elsewhere "
                             f"(an input is never replaced)")
    if not file:
        return
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the file to write")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; choose another file, or pass "
                         f"--overwrite to replace it")


def load(path: str | Path, map_location: str | torch.device = "cpu",
         mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; ``CheckpointError`` names the file
    when it is not one. ``mmap``: leave the tensors on disk until used (to read its
    records only)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file such as "
                              f"RUN/last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower() and "global" in str(err).lower():
            raise CheckpointError(
                f"{path}: refused: it holds Python objects that would run code when loaded, "
                f"which a dlrm checkpoint never does; it was not written by dlrm (or was "
                f"tampered with). Use a checkpoint written by `dlrm train`") from None
        raise CheckpointError(f"{path}: not a checkpoint (unreadable: corrupt, truncated or "
                              f"another kind of file)") from None
    except (EOFError, zipfile.BadZipFile, KeyError, RuntimeError, ValueError) as err:
        if path.stat().st_size == 0:
            what = "the file is empty"
        elif isinstance(err, RuntimeError) and "weights_only" not in str(err):
            what = str(err).strip().splitlines()[0]
        else:
            what = "corrupt, truncated or another kind of file"
        raise CheckpointError(f"{path}: not a checkpoint (unreadable: {what})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dlrm checkpoint (expected format {FORMAT!r})")
    return ckpt


def require(ckpt: dict[str, Any], path: str | Path, *keys: str, purpose: str) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` has every key (e.g. a quantized checkpoint
    has no optimizer state to resume from)."""
    missing = [key for key in keys if key not in ckpt]
    if missing:
        kind = ckpt.get("model_kind")
        why = (" (a quantized checkpoint is for inference only)" if kind == "dlrm-quantized"
               else "")
        raise CheckpointError(f"{path}: cannot be used to {purpose}: it has no "
                              f"{', '.join(missing)}{why}")


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    ckpt = load(path, map_location)
    require(ckpt, path, "model_kind", "model_config", "model", purpose="build its model")
    try:
        model = build_model(ckpt["model_kind"], ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its model does not load "
                              f"({str(err).strip().splitlines()[0]})") from None
    model.to(map_location)
    model.eval()
    return model, ckpt


def ensemble_checkpoint(sources: list[str | Path], dst: str | Path) -> dict[str, Any]:
    """Write a checkpoint of model kind ``ensemble`` (``dlrm.models.ensemble``): the models of
    checkpoints ``sources`` as one, their mean click probability. The members must have been
    trained on the same data set (their data identities agree), which the new checkpoint
    records, so ``dlrm eval`` finds the data and refuses another. ``dst`` may not be one of
    the sources. Returns ``members`` (their kinds) and ``parameters``."""
    from dlrm.models.ensemble import Ensemble

    if len(sources) < 2:
        raise ValueError("an ensemble needs two or more checkpoints")
    check_output_path(dst, list(sources), overwrite=True)
    models, members, identity, spec = [], [], None, None
    for src in sources:
        model, ckpt = load_model(src)
        if ckpt["model_kind"] == "ensemble":
            raise ValueError(f"{src} is already an ensemble; list its members instead")
        if identity is None:
            identity, spec = ckpt.get("data_identity"), ckpt.get("data_spec")
        elif ckpt.get("data_identity") != identity:
            raise ValueError(f"{src} was trained on other data than {sources[0]}; an "
                             f"ensemble's members share one data set")
        models.append(model)
        members.append({"kind": ckpt["model_kind"], "config": ckpt["model_config"]})
    ensemble = Ensemble(models)
    save_atomic({
        "format": FORMAT, "model_kind": "ensemble", "model_config": {"members": members},
        "model": ensemble.state_dict(), "data_spec": spec, "data_identity": identity,
        "ensemble_of": [str(src) for src in sources]}, dst)
    return {"members": [m["kind"] for m in members],
            "parameters": sum(p.numel() for p in ensemble.parameters())}


def quantize_checkpoint(src: str | Path, dst: str | Path, bits: int | None = 8,
                        mlp: str | None = None, calibration: Any = None) -> dict[str, Any]:
    """Write a ``dlrm-quantized`` checkpoint of the model in checkpoint ``src`` to ``dst``.

    The embedding tables become row-wise ``bits``-bit tables (``None``: they stay float,
    with ``mlp`` only); with ``mlp="int8"`` the MLPs
    become static int8 ones too (``dlrm.models.quantized.QuantizedMLP``), their activation
    ranges measured by running the model (with its quantized tables) on ``calibration``, an
    iterable of training ``Batch`` es. The new checkpoint keeps the source's train config, data
    spec and data identity (so ``dlrm eval`` finds its data and refuses another) and drops
    the optimizer state. ``dst`` may not be ``src``. Returns sizes: ``float_bytes``,
    ``quantized_bytes`` (embedding tables only) and their ratio, and ``mlp``.
    """
    check_output_path(dst, [src], overwrite=True)
    model, ckpt = load_model(src)
    if ckpt["model_kind"] == "dlrm-quantized":
        raise ValueError(f"{src} is already quantized ({ckpt['model_config']['bits']} bits)")
    float_bytes = embedding_bytes(model)
    if float_bytes == 0:
        raise ValueError(f"{src}: model kind {ckpt['model_kind']!r} has no embedding tables "
                         f"to quantize")
    if bits is None and mlp is None:
        raise ValueError("nothing to quantize: float tables and float MLPs")
    quantize_model(model, bits)
    quantized_bytes = embedding_bytes(model)
    if mlp is not None:
        if calibration is None:
            raise ValueError("int8 MLPs need calibration batches (training rows)")
        # The tables were quantized above (calibration runs through them): MLPs only now.
        quantize_model(model, None, mlp=mlp, mlp_ranges=calibrate_mlp_ranges(model,
                                                                            calibration))
    config = {"base_kind": ckpt["model_kind"], "base_config": ckpt["model_config"], "bits": bits,
              "mlp": mlp}
    save_atomic({
        "format": FORMAT, "model_kind": "dlrm-quantized", "model_config": config,
        "model": model.state_dict(), "train_config": ckpt.get("train_config"),
        "data_spec": ckpt.get("data_spec"), "data_identity": ckpt.get("data_identity"),
        "step": ckpt.get("step"), "quantized_from": str(src)}, dst)
    return {"bits": bits, "float_bytes": float_bytes, "quantized_bytes": quantized_bytes,
            "ratio": float_bytes / quantized_bytes, "mlp": mlp}
