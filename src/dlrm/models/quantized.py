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

With ``mlp="int8"`` every ``MLP`` becomes a ``QuantizedMLP`` as well: static int8 GEMMs
(VNNI/AMX through oneDNN) with activation scales calibrated on training batches
(``calibrate_mlp_ranges``); see that class.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dlrm.allocator import empty_table
from dlrm.features import SparseFeatures
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.mlp import MLP
from dlrm.models.registry import ModelSpec, build_model, register
from dlrm.ops.embedding import bag_of_values
from dlrm.ops.quantize import quantize_u8

QUANTIZED_BITS = (8, 4)
MLP_QUANTIZATIONS = ("int8",)


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
        self.register_buffer("codes", empty_table(rows, width, torch.uint8).zero_())
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


def int8_kernels_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 linear, which the int8 MLPs run (PyTorch's
    x86 builds ship it)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn,
                                                            "qlinear_pointwise")


class Int8Linear(nn.Module):
    """One linear layer (with ReLU when ``relu``) on int8 operands, for inference.

    Math: weights per output row, symmetric, ``W ~ scale_w[o] * q_w`` with ``q_w`` in
    [-127, 127]; the input and output activations per tensor, affine uint8,
    ``h ~ scale * (q - zero_point)`` with the scales calibrated on training batches. The
    kernel, oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``, the one PyTorch's
    x86 int8 path through Inductor lowers to; VNNI or AMX where the CPU has them),
    accumulates in int32, adds the float bias, applies ReLU and requantizes to the output's
    scale in one pass. Its operands are plain uint8/int8 tensors, not PyTorch's deprecated
    quantized tensors.

    Buffers (the state dict): ``weight`` int8 ``(out, in)``, ``weight_scale`` ``(out,)``,
    ``bias`` ``(out,)``, ``out_scale`` and ``out_zero_point`` (scalars). The packed weight the
    kernel reads is built on first use and dropped when a state dict is loaded.

    Call: ``(codes (B, in) uint8, in_scale, in_zero_point)`` -> uint8 codes ``(B, out)`` at
    ``out_scale`` / ``out_zero_point``.
    """

    def __init__(self, fan_in: int, fan_out: int, relu: bool) -> None:
        super().__init__()
        self.relu = relu
        self.register_buffer("weight", torch.zeros(fan_out, fan_in, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(fan_out))
        self.register_buffer("bias", torch.zeros(fan_out))
        self.register_buffer("out_scale", torch.tensor(1.0))
        self.register_buffer("out_zero_point", torch.tensor(0, dtype=torch.int64))
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._unpack())

    def _unpack(self) -> None:
        self._packed = None

    @classmethod
    def from_float(cls, linear: nn.Linear, relu: bool, out_range: tuple[float, float]
                   ) -> Int8Linear:
        """The layer ``linear`` with its output quantized over ``out_range`` (calibrated)."""
        layer = cls(linear.in_features, linear.out_features, relu)
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(1) / 127).clamp_min(1e-12)
        layer.weight.copy_(torch.round(weight / scale[:, None]).clamp_(-127, 127))
        layer.weight_scale.copy_(scale)
        layer.bias.copy_(linear.bias.detach().float())
        out_scale, zero_point = activation_qparams(*out_range)
        layer.out_scale.fill_(out_scale)
        layer.out_zero_point.fill_(zero_point)
        return layer

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the weight packed for oneDNN, its per-row zero points: all 0, symmetric)."""
        if self._packed is None:
            if not int8_kernels_available():
                raise RuntimeError("int8 MLPs run oneDNN's int8 linear "
                                   "(torch.ops.onednn.qlinear_pointwise), which this PyTorch "
                                   "build lacks; use the float or bf16 model")
            self._packed = (torch.ops.onednn.qlinear_prepack(self.weight, None),
                            torch.zeros(self.weight.shape[0], dtype=torch.int64))
        return self._packed

    def forward(self, codes: torch.Tensor, in_scale: float, in_zero_point: int,
                float_output: bool = False) -> torch.Tensor:
        """uint8 codes at ``out_scale`` / ``out_zero_point``; with ``float_output`` the
        float32 values themselves (the kernel's epilogue writes them: no requantization)."""
        weight, weight_zero_points = self.packed()
        out_scale, out_zero_point, out_dtype = (
            (1.0, 0, torch.float32) if float_output
            else (float(self.out_scale), int(self.out_zero_point), None))
        return torch.ops.onednn.qlinear_pointwise(
            codes, float(in_scale), int(in_zero_point), weight, self.weight_scale,
            weight_zero_points, self.bias, out_scale, out_zero_point, out_dtype,
            "relu" if self.relu else "none", [], "")


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of affine uint8 over [low, high] widened to hold 0, as PyTorch's
    MinMax observer gives them."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255, 1e-8)
    return scale, int(min(max(round(-low / scale), 0), 255))


class QuantizedMLP(nn.Module):
    """An ``MLP`` for int8 inference: its hidden layers as ``Int8Linear``, its last layer in
    float.

    Math: ``h_0 = x`` quantized to uint8 over its calibrated range, ``h_{l+1} = relu(h_l W_l^T
    + b_l)`` on int8 operands (``Int8Linear``) for every layer but the last, each requantized
    to uint8 over its calibrated range except ``h_{L-1}``, which the kernel writes in float32
    (its calibrated range is kept in the state dict, unused); then the last layer in float
    (with ReLU when the MLP ends in one).
    The last layers are the narrow ones (DLRM's 64->16 and 256->1: under 1% of the FLOPs) and
    carry the output: a logit rounded to 256 levels would tie many samples and cost AUC.

    Args:
        widths: ``[in, h1, ..., out]`` as the float ``MLP``'s.
        final_activation: as the float ``MLP``'s.

    Call: ``(B, in)`` float -> ``(B, out)`` float32. CPU only.

    Example:
        >>> mlp = MLP("13-64-16")
        >>> ranges = [(0.0, 1.0), (0.0, 4.0)]  # the input's, then each hidden layer's output
        >>> QuantizedMLP.from_float(mlp, ranges)(torch.rand(4, 13)).shape
        torch.Size([4, 16])
    """

    def __init__(self, widths: list[int], final_activation: bool) -> None:
        super().__init__()
        self.widths = list(widths)
        self.final_activation = final_activation
        self.register_buffer("in_scale", torch.tensor(1.0))
        self.register_buffer("in_zero_point", torch.tensor(0, dtype=torch.int64))
        self.hidden = nn.ModuleList(Int8Linear(a, b, relu=True)
                                    for a, b in zip(widths[:-2], widths[1:-1]))
        self.last = nn.Linear(widths[-2], widths[-1])

    @classmethod
    def from_float(cls, mlp: MLP, ranges: list[tuple[float, float]]) -> QuantizedMLP:
        """``mlp`` quantized; ``ranges``: the calibrated (min, max) of its input, then of each
        hidden layer's output (after its ReLU); ``calibrate_mlp_ranges`` measures them."""
        if len(ranges) != len(mlp.widths) - 1:
            raise ValueError(f"an MLP of {len(mlp.widths) - 1} layers needs {len(mlp.widths) - 1}"
                             f" ranges (its input and each hidden layer's output), got "
                             f"{len(ranges)}")
        quantized = cls(mlp.widths, mlp.final_activation)
        scale, zero_point = activation_qparams(*ranges[0])
        quantized.in_scale.fill_(scale)
        quantized.in_zero_point.fill_(zero_point)
        linears = mlp.linears()
        for i, layer in enumerate(linears[:-1]):
            quantized.hidden[i] = Int8Linear.from_float(layer, True, ranges[i + 1])
        quantized.last.load_state_dict(linears[-1].state_dict())
        return quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hidden:  # one layer (DCN's output): nothing to run in int8
            out = self.last(x.float())
            return torch.relu(out) if self.final_activation else out
        scale, zero_point = float(self.in_scale), int(self.in_zero_point)
        h = quantize_u8(x.float().contiguous(), scale, zero_point)  # (B, in) uint8 codes
        last = len(self.hidden) - 1
        for i, layer in enumerate(self.hidden):  # the last one hands float32 to self.last
            h = layer(h, scale, zero_point, float_output=i == last)
            scale, zero_point = float(layer.out_scale), int(layer.out_zero_point)
        out = self.last(h)
        return torch.relu(out) if self.final_activation else out


@torch.no_grad()
def calibrate_mlp_ranges(model: nn.Module, batches: Any) -> dict[str, list[tuple[float, float]]]:
    """Run ``model`` on ``batches`` (``Batch`` objects) and return, for every ``MLP`` in it (by
    module name), the (min, max) of its input and of each hidden layer's output after its
    ReLU: the ranges ``QuantizedMLP.from_float`` quantizes over."""
    ranges: dict[str, list[list[float]]] = {}
    handles = []

    def record(name: str, index: int) -> Any:
        def hook(_module: nn.Module, args: Any, output: Any = None) -> None:
            value = args[0] if output is None else output
            low, high = float(value.min()), float(value.max())
            slot = ranges[name][index]
            slot[0], slot[1] = min(slot[0], low), max(slot[1], high)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, MLP):
            linears = module.linears()
            ranges[name] = [[math.inf, -math.inf] for _ in linears]
            handles.append(module.register_forward_pre_hook(record(name, 0)))
            layers = list(module)
            for i, linear in enumerate(linears[:-1]):
                relu = layers[layers.index(linear) + 1]  # every hidden layer has its ReLU
                handles.append(relu.register_forward_hook(record(name, i + 1)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch.dense, batch.sparse)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if any(math.isinf(low) for spans in ranges.values() for low, _ in spans):
        raise ValueError("calibration saw no batch: give it training rows")
    return {name: [(low, high) for low, high in spans] for name, spans in ranges.items()}


def quantize_model(model: nn.Module, bits: int | None = 8, empty: bool = False,
                   mlp: str | None = None,
                   mlp_ranges: dict[str, list[tuple[float, float]]] | None = None,
                   _prefix: str = "") -> nn.Module:
    """Replace every ``FusedEmbeddingBag`` in ``model`` (in place) by a ``bits``-bit copy
    (``None``: the tables stay float), and with ``mlp="int8"`` every ``MLP`` by a
    ``QuantizedMLP`` over ``mlp_ranges`` (from ``calibrate_mlp_ranges``, by module name).

    ``empty=True`` only builds the quantized structure (zeros), to load a state dict into.
    """
    if mlp is not None and mlp not in MLP_QUANTIZATIONS:
        raise ValueError(f"mlp = {mlp!r}: expected one of {MLP_QUANTIZATIONS}")
    if mlp == "int8" and not int8_kernels_available():
        raise ValueError("int8 MLPs run oneDNN's int8 linear (torch.ops.onednn."
                         "qlinear_pointwise), which this PyTorch build lacks: quantize the "
                         "tables only (leave out --mlp)")
    for name, child in list(model.named_children()):
        path = f"{_prefix}{name}"
        if isinstance(child, FusedEmbeddingBag) and bits is not None:
            replacement = (QuantizedEmbeddingBag(child.table_sizes, child.embedding_dim, bits)
                           if empty else QuantizedEmbeddingBag.from_float(child, bits))
            setattr(model, name, replacement)
        elif isinstance(child, MLP) and mlp is not None:
            if empty:
                setattr(model, name, QuantizedMLP(child.widths, child.final_activation))
            else:
                if mlp_ranges is None or path not in mlp_ranges:
                    raise ValueError(f"MLP {path}: no calibrated ranges (calibrate_mlp_ranges)")
                setattr(model, name, QuantizedMLP.from_float(child, mlp_ranges[path]))
        else:
            quantize_model(child, bits, empty, mlp, mlp_ranges, f"{path}.")
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
    "bits": 8 (None: float tables), "mlp": "int8" or None}`` -> the base model with empty
    quantized tables and MLPs, ready for load_state_dict."""
    model = build_model(config["base_kind"], config["base_config"])
    bits = None if config["bits"] is None else int(config["bits"])
    return quantize_model(model, bits, empty=True, mlp=config.get("mlp"))


register(ModelSpec("dlrm-quantized", "any model kind with row-wise int8/4-bit tables "
                   "(made by `dlrm quantize`, inference only)", build=build_quantized,
                   trainable=False))
