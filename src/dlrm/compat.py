"""The original facebookresearch/dlrm code's checkpoints and input layout.

Its ``torch.save`` file is a dict with ``state_dict`` (plus optimizer state and NumPy scalars
such as ``train_acc``). State-dict layout: ``emb_l.<k>.weight`` (n_k, D) per table;
``bot_l.<2i>.weight|bias`` and ``top_l.<2i>.weight|bias``: Linear layers of ``nn.Sequential``
stacks whose odd positions are activations (ReLU everywhere except the top's final sigmoid).
Its dot interaction has the same (i, j), j < i, row-by-row order as ours, so a converted model
computes the same function; our logits are its pre-sigmoid outputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.config import DLRMConfig
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.models.interactions import DotInteraction
from dlrm.training import checkpoint as ckpt_io


def _numpy_safe_globals() -> list[Any]:
    """Exactly the NumPy types a reference checkpoint's scalars need to unpickle."""
    try:
        from numpy._core.multiarray import scalar  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)]
    return [scalar, np.dtype, *dtypes]


def load_reference_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a reference checkpoint, allowing NumPy scalars."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} does not exist")
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and any(k.startswith("emb_l.") for k in obj):
        return {"state_dict": obj}
    raise ValueError(f"{path}: no 'state_dict' with emb_l/bot_l/top_l keys; not a reference "
                     f"DLRM checkpoint")


def _linear_stack(state: dict[str, torch.Tensor], prefix: str, path: str
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    positions = sorted({int(m.group(1)) for k in state
                        if (m := re.fullmatch(rf"{prefix}\.(\d+)\.weight", k))})
    if not positions:
        raise ValueError(f"{path}: no {prefix}.<i>.weight entries")
    return [(state[f"{prefix}.{i}.weight"], state[f"{prefix}.{i}.bias"]) for i in positions]


def reference_config(state: dict[str, torch.Tensor], path: str = "checkpoint") -> DLRMConfig:
    """Infer the architecture (and ``interaction_self``) from a reference state dict."""
    tables = sorted({int(m.group(1)) for k in state
                     if (m := re.fullmatch(r"emb_l\.(\d+)\.weight", k))})
    if not tables:
        raise ValueError(f"{path}: no emb_l.<k>.weight entries (embedding tables)")
    weights = [state[f"emb_l.{k}.weight"] for k in tables]
    dim = weights[0].shape[1]
    bottom = _linear_stack(state, "bot_l", path)
    top = _linear_stack(state, "top_l", path)
    num_features = len(weights)
    top_in = top[0][0].shape[1]
    if top_in == DotInteraction.output_width(num_features, dim, False):
        interaction, self_interaction = "dot", False
    elif top_in == DotInteraction.output_width(num_features, dim, True):
        interaction, self_interaction = "dot", True
    elif top_in == (num_features + 1) * dim:
        interaction, self_interaction = "cat", False
    else:
        raise ValueError(f"{path}: top MLP input width {top_in} matches no interaction of "
                         f"{num_features} tables with D={dim}")
    return DLRMConfig(
        table_sizes=[w.shape[0] for w in weights], embedding_dim=dim,
        bottom_mlp=[bottom[0][0].shape[1]] + [w.shape[0] for w, _ in bottom],
        top_mlp=[w.shape[0] for w, _ in top], interaction=interaction,
        interaction_self=self_interaction)


def load_reference_checkpoint(path: str | Path) -> DLRM:
    """A ``DLRM`` with the weights of a facebookresearch/dlrm checkpoint (eval mode)."""
    state = load_reference_file(path)["state_dict"]
    config = reference_config(state, str(path))
    model = DLRM(config)
    with torch.no_grad():
        weights = [state[f"emb_l.{k}.weight"] for k in range(config.num_sparse)]
        model.embeddings.weight.copy_(torch.cat(weights, 0))
        for ours, (w, b) in zip(model.bottom_mlp.linears(), _linear_stack(state, "bot_l", "")):
            ours.weight.copy_(w)
            ours.bias.copy_(b)
        for ours, (w, b) in zip(model.top_mlp.linears(), _linear_stack(state, "top_l", "")):
            ours.weight.copy_(w)
            ours.bias.copy_(b)
    model.eval()
    return model


def sparse_from_reference(offsets_list: list[torch.Tensor] | torch.Tensor,
                          indices_list: list[torch.Tensor]) -> SparseFeatures:
    """The reference's per-table ``lS_o`` (bag start offsets, (B,) each) and ``lS_i`` (ids)
    as our feature-major ``SparseFeatures``."""
    num_features = len(indices_list)
    if len(offsets_list) != num_features:
        raise ValueError(f"{len(offsets_list)} offset tensors but {num_features} index tensors")
    lengths = []
    for k, (offs, ids) in enumerate(zip(offsets_list, indices_list)):
        offs = torch.as_tensor(offs, dtype=torch.int64)
        ends = torch.cat([offs[1:], torch.tensor([len(ids)])])
        if bool((ends < offs).any()) or (len(offs) and int(offs[0]) != 0):
            raise ValueError(f"table {k}: offsets must start at 0 and not decrease")
        lengths.append(ends - offs)
    values = torch.cat([torch.as_tensor(i, dtype=torch.int64) for i in indices_list])
    return SparseFeatures.from_lengths(values, torch.cat(lengths), num_features)


def convert_reference_checkpoint(input_path: str | Path, output_path: str | Path
                                 ) -> dict[str, Any]:
    """Write a reference checkpoint as a dlrm checkpoint (loadable by ``dlrm eval``)."""
    model = load_reference_checkpoint(input_path)
    config = model.config
    ckpt_io.save_atomic({
        "format": ckpt_io.FORMAT, "model_kind": "dlrm", "model_config": config.to_dict(),
        "model": model.state_dict(), "optimizer": None, "step": 0,
        "rng": torch.get_rng_state(), "loop_state": {}, "train_config": {
            "eval_batch_size": 8192, "precision": "fp32"},
        "data_spec": None, "converted_from": str(input_path)}, output_path)
    return {"tables": config.num_sparse, "embedding_dim": config.embedding_dim,
            "bottom_mlp": config.bottom_mlp, "top_mlp": config.top_mlp,
            "interaction_self": config.interaction_self}
