"""Multi-layer perceptrons with the reference DLRM's initialization."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dlrm import kernels
from dlrm.config import parse_arch


def reference_init_(linear: nn.Linear) -> None:
    """W ~ N(0, sqrt(2/(fan_in+fan_out))), b ~ N(0, sqrt(1/fan_out)), as the reference."""
    fan_out, fan_in = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))


# The fused path runs when batch x widest layer reaches this. Measured step times (median of
# interleaved rounds, 2 threads): kaggle B=2048 (1M elements) 5-8% faster fused; kaggle B=128
# (65k) even, 3.67 vs 3.64 ms; the `make run` tiny model at B=256 (11k) 7% slower, its
# per-layer native calls costing more than the passes they save.
FUSED_MIN_ELEMENTS = 1 << 17


class MLP(nn.Sequential):
    """Linear layers with ReLU after each, optionally without one after the last.

    Math: ``h_0 = x``, ``h_{l+1} = relu(h_l W_l^T + b_l)`` (no ReLU after the last layer when
    ``final_activation`` is off). On CPU in float32 the whole stack runs as one autograd node
    with native epilogues (``_FusedMLPFunction``); the modules, parameters and state dict stay
    a plain ``nn.Linear``/``nn.ReLU`` sequence, which runs as such everywhere else. The fused
    path has no second derivative (differentiating a ``create_graph=True`` gradient raises, as
    for DLRM's interaction and lookup); under ``dlrm.kernels.use_native(False)`` the modules
    give one.

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
                # In place: the Linear's output has no other reader, and rewriting it while it
                # is still in cache saves a (B, width) buffer per layer (~2% of a B=2048 step).
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.widths = widths

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in) -> (B, out)``; float32 on CPU through ``_FusedMLPFunction``."""
        if not self._fusable(x):
            return super().forward(x)
        params = [p for linear in self.linears() for p in (linear.weight, linear.bias)]
        return _FusedMLPFunction.apply(x, self.final_activation, True, *params)

    @property
    def final_activation(self) -> bool:
        return isinstance(self[-1], nn.ReLU)

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether the fused path computes exactly what the modules would.

        Only float32 on CPU with the native kernels, outside autocast and tracers (CUDA's
        cuBLAS already fuses the bias), and only for batches big enough to gain
        (``FUSED_MIN_ELEMENTS``). In bf16 it gains too little to pay for rounding every
        pre-activation twice (after the matmul, then after the bias): 1.02x for both MLPs in
        bf16 (benchmarks/mlp_fusion.py --precision bf16), 0.98-1.00x through autocast, where
        the bf16 matmuls around the faster epilogues ran slower by as much. And only
        while this is still the Linear/ReLU stack the class built, with no hooks the fused
        path would skip (users swap or hook layers to quantize or to inspect them).
        """
        # The kernels check first: under torch.export the batch size is symbolic, and
        # comparing it would make export specialize on it.
        if not kernels.supports_linear(x) or x.dtype != torch.float32 \
                or torch.is_autocast_enabled("cpu") \
                or x.shape[0] * max(self.widths) < FUSED_MIN_ELEMENTS:
            return False
        for module in self:
            if type(module) not in (nn.Linear, nn.ReLU) or module._forward_hooks \
                    or module._forward_pre_hooks or module._backward_hooks:
                return False
            if type(module) is nn.Linear and (module.weight.dtype != torch.float32
                                             or module.bias is None
                                             or not module.weight.is_contiguous()):
                return False
        return True


def _linear_act(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool,
                native: bool) -> torch.Tensor:
    """``act(inputs @ weight.T + bias)``: the bias and ReLU in one native pass after the
    matmul, or ``addmm`` (which first copies the broadcast bias into its output) + ``relu_``."""
    if native:
        return kernels.bias_act_(torch.mm(inputs, weight.t()), bias, relu)
    out = torch.addmm(bias, inputs, weight.t())
    return out.relu_() if relu else out


def _act_bias_backward(grad: torch.Tensor, act_out: torch.Tensor, relu: bool, owned: bool,
                       native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient before the activation, bias gradient) from the gradient after it, in one
    native pass (in place when the caller owns ``grad``), or ``threshold_backward`` + ``sum``."""
    if native:
        return kernels.act_bias_backward(grad, act_out, relu, in_place=owned)
    if relu:
        grad = torch.ops.aten.threshold_backward(grad, act_out, 0)
    return grad, grad.sum(0)


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``grad.T @ inputs`` ``(N, B) (B, K) -> (N, K)``. For narrow inputs (the bottom MLP's 13
    dense features) MKL computes ``(inputs.T @ grad).T`` 3.2x faster at B=2048, the copy back
    to (N, K) rows included (benchmarks/mlp_fusion.py); for wide ones the plain order is as
    fast or faster, and the transposing copy can cost more than the matmul at small B."""
    if inputs.shape[1] < 64:
        return inputs.t().mm(grad).t()
    return grad.t().mm(inputs)


class _FusedMLPFunction(torch.autograd.Function):
    """A whole MLP as one autograd node: ``h_{l+1} = act(h_l W_l^T + b_l)``, ``h_0 = x``.

    Same math as the ``nn.Linear``/``nn.ReLU`` modules in fewer passes over the ``(B, width)``
    activations: the forward adds the bias and applies ReLU in one pass after each matmul;
    the backward masks the gradient and sums the bias gradient in one pass (in place on the
    gradient buffers it made itself, never on the caller's) and takes the faster layout of
    each weight gradient. On a ``kaggle`` B=2048 float32 step this saves ~2 ms of ~28
    (benchmarks/mlp_fusion.py, benchmarks/train_throughput.py). Computes in x's dtype, which
    must be the parameters'.

    Call: ``apply(x (B, in), final_relu, native, W_0, b_0, W_1, b_1, ...) -> (B, out)``;
    ``native`` runs the epilogues in ``dlrm.kernels`` (float32/bfloat16 CPU tensors), else on
    PyTorch ops (any dtype; the float64 gradcheck).
    """

    @staticmethod
    def forward(ctx, x, final_relu, native, *params):
        weights, biases = params[0::2], params[1::2]
        layers = len(weights)
        activations = [x.contiguous()]  # h_l (B, width_l) for l = 0..L
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            relu = final_relu or i < layers - 1
            activations.append(_linear_act(activations[-1], weight, bias, relu, native))
        ctx.final_relu, ctx.native = final_relu, native
        ctx.save_for_backward(*activations, *weights)
        return activations[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        layers = len(saved) // 2
        activations, weights = saved[:layers + 1], saved[layers + 1:]
        needs = ctx.needs_input_grad  # (x, final_relu, native, W_0, b_0, ...)
        param_grads: list[torch.Tensor | None] = [None] * (2 * layers)
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        owned = False  # grad is autograd's buffer until the first matmul makes our own
        for i in reversed(range(layers)):
            relu = ctx.final_relu or i < layers - 1
            grad, bias_grad = _act_bias_backward(grad, activations[i + 1], relu, owned,
                                                 ctx.native)
            if needs[3 + 2 * i]:
                param_grads[2 * i] = _weight_grad(grad, activations[i])  # (N, K)
            if needs[4 + 2 * i]:
                param_grads[2 * i + 1] = bias_grad
            if i == 0 and not needs[0]:
                return None, None, None, *param_grads
            grad = grad.mm(weights[i])  # (B, width_i)
            owned = True
        return grad, None, None, *param_grads
