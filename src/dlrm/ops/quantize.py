"""``dlrm::quantize_u8``: float activations to the uint8 codes of an int8 layer's input.

Math, for x (R, C), a scale s and a zero point z in [0, 255]:

    q = clamp(round(x * (1 / s)) + z, 0, 255)     (uint8, rounded half to even)

so that x ~ s * (q - z): affine uint8 over the range the scale was calibrated on, values
beyond it clipped. ``1 / s`` is taken in float32 and the product rounded in float32, in both
kernels, so they agree to the bit.

Why an operator: the int8 MLPs (``dlrm.models.quantized``) feed oneDNN's int8 linear plain
uint8 tensors, and PyTorch's one fused way to make them, ``torch.quantize_per_tensor``, makes
a quantized tensor, an API PyTorch has deprecated. Its composition from float ops
(``mul``, ``round``, ``add``, ``clamp``, ``to``) takes five passes: ~0.32 ms at the top MLP's
(2048, 367) input on the docs' AMD EPYC, where the native kernel (``dlrm.ops.native``), one
pass, takes ~0.11 ms (the deprecated fused op 0.035 ms).

Kernels: on CPU for float32/bfloat16 the native one; elsewhere the PyTorch composition.
"""

from __future__ import annotations

import torch

from dlrm.ops import native

_lib = torch.library.Library("dlrm", "FRAGMENT")
_lib.define("quantize_u8(Tensor x, float scale, int zero_point) -> Tensor")


def _quantize_torch(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    codes = torch.round(x.float() * (1.0 / scale)).add_(zero_point).clamp_(0, 255)
    return codes.to(torch.uint8)


def _quantize_cpu(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    if x.dim() == 2 and native.takes(x):
        return native.quantize_u8(x, scale, zero_point)
    return _quantize_torch(x, scale, zero_point)


_lib.impl("quantize_u8", _quantize_cpu, "CPU")
_lib.impl("quantize_u8", _quantize_torch, "CompositeExplicitAutograd")


@torch.library.register_fake("dlrm::quantize_u8", lib=_lib)
def _quantize_fake(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.uint8)


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 codes of ``x`` (see the module doc); no gradient (inference only)."""
    if not 0 <= zero_point <= 255 or not scale > 0:
        raise ValueError(f"uint8 quantization needs a scale > 0 and a zero point in 0..255, "
                         f"got {scale} and {zero_point}")
    return torch.ops.dlrm.quantize_u8(x, float(scale), int(zero_point))
