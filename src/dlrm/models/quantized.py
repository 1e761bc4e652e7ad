"""Row-wise quantized embedding tables for inference (int8 and 4-bit), as FBGEMM's.

Math: each row w (D,) of a table is stored as codes q in 0..2^b-1 with its own scale and bias

    bias  = min(w),  scale = (max(w) - min(w)) / (2^b - 1)
    q     = round((w - bias) / scale),          w_hat = q * scale + bias

so every entry is off by at most scale / 2. ``bits=8`` stores one code per byte with fp32
scale and bias (FBGEMM's "fused 8-bit row-wise"); ``bits=4`` packs two codes per byte (low
nibble first) with fp16 scale and bias (FBGEMM's 4-bit). The codes are computed against the
stored (rounded) scale and bias, so rounding them adds no error beyond the scale/2 bound.
A lookup gathers the rows of the batch's ids, dequantizes only those, and sum-pools them, all
tables in one vectorized call (no loop over tables).

``quantize_model`` swaps every ``FusedEmbeddingBag`` inside a model (the plain tables, QR's
and mixed-dimension's too) for a ``QuantizedEmbeddingBag``; the result is registered as model
kind ``dlrm-quantized`` so ``load_model`` and ``dlrm eval`` read its checkpoints
(``dlrm.training.checkpoint.quantize_checkpoint`` writes them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.registry import ModelSpec, build_model, register
from dlrm.ops.embedding import bag_of_values

QUANTIZED_BITS = (8, 4)


def quantize_rows(weight: torch.Tensor, bits: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 (R, D) or (R, ceil(D/2)) packed, scale (R,), bias (R,)) of ``weight``."""
    if bits not in QUANTIZED_BITS:
        raise ValueError(f"bits = {bits}: expected one of {QUANTIZED_BITS}")
    weight = weight.detach().float()
    levels = 2 ** bits - 1
    param_dtype = torch.float32 if bits == 8 else torch.float16
    lo, hi = weight.amin(1), weight.amax(1)
    bias = lo.to(param_dtype)
    scale = ((hi - lo) / levels).to(param_dtype)
    scale_f, bias_f = scale.float(), bias.float()
    safe_scale = torch.where(scale_f > 0, scale_f, torch.ones_like(scale_f))
    codes = torch.round((weight - bias_f[:, None]) / safe_scale[:, None]).clamp_(0, levels)
    codes = codes.to(torch.uint8)
    if bits == 4:
        if codes.shape[1] % 2:
            codes = torch.cat([codes, codes.new_zeros(codes.shape[0], 1)], 1)
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes, scale, bias


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, bits: int,
                    dim: int) -> torch.Tensor:
    """float32 rows (R, dim) from ``quantize_rows``' output (or rows gathered from it)."""
    if bits == 4:
        codes = codes.to(torch.int32)  # uint8 bit ops do not survive the ONNX export
        low, high = codes & 0x0F, codes >> 4
        codes = torch.stack([low, high], dim=2).reshape(codes.shape[0], -1)[:, :dim]
    return codes.float() * scale.float()[:, None] + bias.float()[:, None]


class QuantizedEmbeddingBag(nn.Module):
    """F sum-pooled tables of dimension D stored row-wise quantized; inference only.

    Args:
        table_sizes: rows n_f of each table.
        embedding_dim: D.
        bits: 8 or 4.

    Buffers (saved in checkpoints): ``codes`` uint8 (sum n_f, D) for 8 bits or
    (sum n_f, ceil(D/2)) for 4, ``scale`` and ``bias`` (sum n_f,) fp32 (8 bits) or fp16 (4).

    Call: ``forward(sparse)`` with F features and batch B returns ``(B, F, D)`` float32.

    Example:
        >>> fused = FusedEmbeddingBag([10, 20], embedding_dim=4)
        >>> q = QuantizedEmbeddingBag.from_float(fused, bits=8)
        >>> q(SparseFeatures.from_ids(torch.tensor([[1, 19]]))).shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, table_sizes: list[int], embedding_dim: int, bits: int = 8) -> None:
        super().__init__()
        if bits not in QUANTIZED_BITS:
            raise ValueError(f"bits = {bits}: expected one of {QUANTIZED_BITS}")
        self.table_sizes = [int(n) for n in table_sizes]
        self.embedding_dim = int(embedding_dim)
        self.bits = bits
        offsets = [0]
        for n in self.table_sizes:
            offsets.append(offsets[-1] + n)
        rows = offsets[-1]
        width = embedding_dim if bits == 8 else (embedding_dim + 1) // 2
        param_dtype = torch.float32 if bits == 8 else torch.float16
        self.register_buffer("table_offsets", torch.tensor(offsets, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("codes", torch.zeros(rows, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros(rows, dtype=param_dtype))
        self.register_buffer("bias", torch.zeros(rows, dtype=param_dtype))

    @classmethod
    def from_float(cls, fused: FusedEmbeddingBag, bits: int = 8) -> QuantizedEmbeddingBag:
        quantized = cls(fused.table_sizes, fused.embedding_dim, bits)
        codes, scale, bias = quantize_rows(fused.weight, bits)
        quantized.codes.copy_(codes)
        quantized.scale.copy_(scale)
        quantized.bias.copy_(bias)
        return quantized.to(fused.weight.device)

    @property
    def num_features(self) -> int:
        return len(self.table_sizes)

    def nbytes(self) -> int:
        """Bytes of the stored tables (codes + scale + bias)."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.bias))

    def dequantized_weight(self) -> torch.Tensor:
        """All tables as one float32 (sum n_f, D) weight (for tests and inspection)."""
        return dequantize_rows(self.codes, self.scale, self.bias, self.bits, self.embedding_dim)

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        sparse.expect_features(self.num_features)
        batch = sparse.batch_size
        # Bag f*B + b of every value (feature-major), without repeat_interleave: ONNX exports
        # of that build an (N, F*B) matrix, gigabytes at serving batch sizes.
        if sparse.one_hot:
            bag = torch.arange(sparse.values.numel(), device=sparse.values.device)
        else:
            bag = bag_of_values(sparse.offsets, sparse.values.numel())
        ids = sparse.values + self.table_offsets.index_select(0, bag // batch)
        rows = dequantize_rows(self.codes.index_select(0, ids), self.scale.index_select(0, ids),
                               self.bias.index_select(0, ids), self.bits,
                               self.embedding_dim)  # (N, D)
        if sparse.one_hot:
            pooled = rows  # (F*B, D)
        else:
            pooled = rows.new_zeros(sparse.offsets.numel() - 1, self.embedding_dim).index_add(
                0, bag, rows)  # (F*B, D)
        return pooled.view(self.num_features, batch, self.embedding_dim).transpose(0, 1)


def quantize_model(model: nn.Module, bits: int = 8, empty: bool = False) -> nn.Module:
    """Replace every ``FusedEmbeddingBag`` in ``model`` (in place) by a quantized copy.

    ``empty=True`` only builds the quantized structure (zeros), to load a state dict into.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, FusedEmbeddingBag):
            replacement = (QuantizedEmbeddingBag(child.table_sizes, child.embedding_dim, bits)
                           if empty else QuantizedEmbeddingBag.from_float(child, bits))
            setattr(model, name, replacement)
        else:
            quantize_model(child, bits, empty)
    return model


def embedding_bytes(model: nn.Module) -> int:
    """Bytes of all embedding tables in ``model``, float or quantized."""
    total = 0
    for module in model.modules():
        if isinstance(module, FusedEmbeddingBag):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, QuantizedEmbeddingBag):
            total += module.nbytes()
    return total


def build_quantized(config: dict[str, Any]) -> nn.Module:
    """Model kind ``dlrm-quantized``: ``{"base_kind": "dlrm", "base_config": {...},
    "bits": 8}`` -> the base model with empty quantized tables, ready for load_state_dict."""
    model = build_model(config["base_kind"], config["base_config"])
    return quantize_model(model, int(config["bits"]), empty=True)


register(ModelSpec("dlrm-quantized", "any model kind with row-wise int8/4-bit tables "
                   "(made by `dlrm quantize`, inference only)", build=build_quantized,
                   trainable=False))
