"""Multi-layer perceptrons with the reference DLRM's initialization."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrm import ops
from dlrm.config import parse_arch


def reference_init_(linear: nn.Linear) -> None:
    """W ~ N(0, sqrt(2/(fan_in+fan_out))), b ~ N(0, sqrt(1/fan_out)), as the reference."""
    fan_out, fan_in = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))


class MLP(nn.Sequential):
    """Linear layers with ReLU after each, optionally without one after the last.

    Math: ``h_0 = x``, ``h_{l+1} = relu(h_l W_l^T + b_l)`` (no ReLU after the last layer when
    ``final_activation`` is off). The forward is one ``dlrm::mlp`` operator for the whole
    stack (``dlrm.ops.mlp``: on CPU in float32 its epilogues run natively); the modules,
    parameters and state dict stay a plain ``nn.Linear``/``nn.ReLU`` sequence, which runs as
    such when a layer was swapped or hooked (users quantize or inspect layers that way).
    Under autocast the input and parameters are cast to the autocast dtype first, as
    ``nn.Linear`` would be. On its native path (CPU float32, large batches) the operator has no
    second derivative (differentiating a ``create_graph=True`` gradient raises, as for DLRM's
    interaction and lookup); elsewhere autograd records its PyTorch ops, which have one.

    Args:
        widths: ``[in, h1, ..., out]`` or the string ``"in-h1-...-out"``.
        final_activation: ReLU after the last layer (the bottom MLP has one; the top MLP
            ends in a logit, so it has none).

    Call: ``(B, in) -> (B, out)``.

    Example:
        >>> MLP("13-64-16")(torch.randn(4, 13)).shape
        torch.Size([4, 16])
    """

    def __init__(self, widths: str | list[int], final_activation: bool = True) -> None:
        widths = parse_arch(widths)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(fan_in, fan_out)
            reference_init_(linear)
            layers.append(linear)
            if final_activation or i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.widths = widths

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    @property
    def final_activation(self) -> bool:
        return isinstance(self[-1], nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in) -> (B, out)`` through ``dlrm::mlp``, or the modules (see the class doc)."""
        if not self._plain_stack():
            return super().forward(x)
        linears = self.linears()
        weights = [linear.weight for linear in linears]
        biases = [linear.bias for linear in linears]
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x = x.to(dtype)
            weights = [w.to(dtype) for w in weights]
            biases = [b.to(dtype) for b in biases]
        return ops.mlp_forward(x, weights, biases, self.final_activation)

    def _plain_stack(self) -> bool:
        """Whether this is still the Linear/ReLU stack the class built, with no hooks the
        operator would skip."""
        for module in self:
            if type(module) not in (nn.Linear, nn.ReLU) or module._forward_hooks \
                    or module._forward_pre_hooks or module._backward_hooks:
                return False
            if type(module) is nn.Linear and module.bias is None:
                return False
        return True
