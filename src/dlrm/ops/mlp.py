"""``dlrm::mlp``: a stack of Linear layers with ReLU as one operator, and its backward.

Math: ``h_0 = x``, ``h_{l+1} = act(h_l W_l^T + b_l)`` with act = ReLU (the identity after the
last layer unless ``final_relu``). ``dlrm::mlp(x, weights, biases, final_relu)`` returns every
``h_1 .. h_L`` (the caller uses the last; the backward needs them all);
``dlrm::mlp_backward(grad, x, activations, weights, final_relu, input_grad)`` returns
``[gW_0, gb_0, ..., gW_{L-1}, gb_{L-1}]`` and, with ``input_grad``, the input's gradient last.

Why one operator for the whole stack: around each matmul the epilogues are a few FLOPs per
byte, and as separate ops they cost passes over the (B, width) activations: ``addmm`` first
copies the broadcast bias into its output, ReLU is a second pass, and in the backward
``threshold_backward`` makes a new buffer before a separate bias-gradient sum. Here, on CPU in
float32 for batches big enough to gain, the bias + ReLU run as one native pass after a bias-free
``mm``, and the backward masks the gradient and sums the bias gradient in one native pass, in
place on the gradient buffers this operator made itself (never the caller's). The weight
gradient of narrow inputs (the 13 dense features) takes the transposed order
``(h^T g)^T``, 3.2x faster at B=2048 (benchmarks/mlp_fusion.py).

Every other case (CUDA, float64, bfloat16, small batches where the per-layer native calls cost
more than they save) runs the same structure on PyTorch ops: ``addmm`` + ``relu_``. With
gradients, autograd records those ops itself (the ``Autograd`` kernel, ``_mlp_autograd``):
its C++ backward nodes cost less than a Function with a Python backward loop, and they have a
second derivative; without, the kernels below run them. bfloat16 stays on PyTorch ops: fused,
both MLPs measured 1.02x in isolation and 0.98-1.00x through autocast, not worth rounding
every pre-activation twice.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from dlrm.ops import native
from dlrm.ops.autograd import register_no_second_derivative

_lib = torch.library.Library("dlrm", "FRAGMENT")
_lib.define("mlp(Tensor x, Tensor[] weights, Tensor[] biases, bool final_relu) -> Tensor[]")
_lib.define("mlp_backward(Tensor grad, Tensor x, Tensor[] activations, Tensor[] weights, "
            "bool final_relu, bool input_grad) -> Tensor[]")

# The native epilogues run when batch x widest layer reaches this. Measured step times (median
# of interleaved rounds, 2 threads): kaggle B=2048 (1M elements) 5-8% faster fused; kaggle
# B=128 (65k) even; the `make run` tiny model at B=256 (11k) 7% slower.
NATIVE_MIN_ELEMENTS = 1 << 17


def _native_shape(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """Whether the native epilogues run for inputs of this shape, dtype and device (decided
    without looking at the tensors' values or types, so fake tensors under ``torch.compile``
    decide as real ones do)."""
    if not (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2):
        return False
    widest = max([x.shape[1], *(w.shape[0] for w in weights)])
    return x.shape[0] * widest >= NATIVE_MIN_ELEMENTS and native.available()


def _use_native(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]
                ) -> bool:
    """``_native_shape``, and tensors the kernels take (plain, float32, contiguous rows)."""
    return (_native_shape(x, weights)
            and all(w.dtype == torch.float32 and w.is_contiguous() for w in weights)
            and all(b.dtype == torch.float32 for b in biases)
            and native.takes(x))


# oneDNN's linear with the bias and ReLU fused into the matmul's epilogue (the kernel Inductor
# uses on CPU). For bfloat16 inference on CPU it replaces addmm + relu_: the same bits (the
# tests compare), one pass fewer over each activation; both MLPs of the kaggle DLRM forward at
# B=2048: 13->512 0.23 -> 0.12 ms, 367->512 1.89 -> 1.77 ms (benchmarks/mlp_bf16_inference.py).
# Only without gradients: the training step keeps the addmm that autograd differentiates.
_ONEDNN_LINEAR = (torch.backends.mkldnn.is_available()
                  and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _onednn_shape(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether the fused oneDNN linear runs: CPU bfloat16 (B, K) inputs, weight and bias."""
    return (_ONEDNN_LINEAR and inputs.device.type == "cpu" and inputs.dim() == 2
            and inputs.dtype == weight.dtype == bias.dtype == torch.bfloat16)


def _linear_act(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool,
                use_native: bool, fused_onednn: bool = False) -> torch.Tensor:
    if use_native:
        return native.bias_act_(torch.mm(inputs, weight.t()), bias, relu)
    if fused_onednn:
        return torch.ops.mkldnn._linear_pointwise(inputs, weight.contiguous(), bias,
                                                  "relu" if relu else "none", [], "")
    out = torch.addmm(bias, inputs, weight.t())
    return out.relu_() if relu else out


def _act_bias_backward(grad: torch.Tensor, act_out: torch.Tensor, relu: bool, owned: bool,
                       use_native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient before the activation, bias gradient) from the gradient after it."""
    if use_native:
        return native.act_bias_backward(grad, act_out, relu, in_place=owned)
    if relu:
        grad = torch.ops.aten.threshold_backward(grad, act_out, 0)
    return grad, grad.sum(0)


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``grad.T @ inputs`` ``(B, N) (B, K) -> (N, K)``: for narrow inputs (K < 64) MKL computes
    ``(inputs.T @ grad).T`` much faster, the copy back to (N, K) rows included; for wide ones
    the plain order is as fast or faster."""
    if inputs.shape[1] < 64:
        return inputs.t().mm(grad).t().contiguous()
    return grad.t().mm(inputs)


# MKL's float32 input-gradient GEMM ``dY W`` (B, N) @ (N, K) slows down when its output width K
# is not a multiple of 16: at B=2048 the kaggle top MLP's first layer (K = 367) ran it at ~145
# GFLOP/s and K = 368 at ~188. The backward multiplies by the weight zero-padded to the next
# multiple of ``PAD_TO`` columns and drops them (a view); padding the forward and the weight
# gradient too (copies of the (B, K) input) gained nothing measurable. Both MLPs forward +
# backward: 1.024x (benchmarks/mlp_padding.py). Native float32 path, K >= PAD_MIN_WIDTH only.
PAD_TO = 16
PAD_MIN_WIDTH = 64


def _padded_width(width: int, use_native: bool) -> int:
    if not use_native or width < PAD_MIN_WIDTH or width % PAD_TO == 0:
        return width
    return width + PAD_TO - width % PAD_TO


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """``t`` (R, K) with zero columns appended up to ``width`` (a copy), or ``t`` itself.
    Only the (N, K) weights are padded, a small copy per step."""
    if t.shape[1] == width:
        return t
    out = t.new_zeros(t.shape[0], width)
    out[:, :t.shape[1]] = t
    return out


def _forward(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
             final_relu: bool, use_native: bool, fused_onednn: bool = False
             ) -> list[torch.Tensor]:
    activations = []
    h = x.contiguous()
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = _linear_act(h, weight, bias, final_relu or i < len(weights) - 1, use_native,
                        fused_onednn and _onednn_shape(h, weight, bias))
        activations.append(h)
    return activations


def _backward(grad: torch.Tensor, x: torch.Tensor, activations: list[torch.Tensor],
              weights: list[torch.Tensor], final_relu: bool, input_grad: bool,
              use_native: bool) -> list[torch.Tensor]:
    layers = len(weights)
    inputs = [x.contiguous(), *activations[:-1]]
    grads: list[torch.Tensor] = [grad] * (2 * layers)  # placeholders, all overwritten
    if grad.stride(-1) != 1:
        grad = grad.contiguous()
    owned = False  # grad is the caller's buffer until the first matmul makes our own
    for i in reversed(range(layers)):
        relu = final_relu or i < layers - 1
        grad, bias_grad = _act_bias_backward(grad, activations[i], relu, owned, use_native)
        fan_in = inputs[i].shape[1]
        width = _padded_width(fan_in, use_native)
        grads[2 * i] = _weight_grad(grad, inputs[i])
        grads[2 * i + 1] = bias_grad
        if i == 0 and not input_grad:
            return grads
        grad = grad.mm(_pad_columns(weights[i], width))[:, :fan_in]  # (B, width_i), strided
        owned = True
    return [*grads, grad.contiguous()]  # contiguous, as the fake says (Inductor checks)


def _forward_functional(x, weights, biases, final_relu):
    """The forward with out-of-place ops only: what ``torch.export`` decomposes the operator
    into for serving artifacts (``export_decompositions``)."""
    activations, h = [], x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = torch.addmm(bias, h, weight.t())
        if final_relu or i < len(weights) - 1:
            h = torch.relu(h)
        activations.append(h)
    return activations


def _forward_cpu(x, weights, biases, final_relu):
    # With gradients only the native float32 Function reaches this kernel (_mlp_autograd runs
    # bfloat16 as addmm + relu_ under autograd), so a bfloat16 call here is inference and may
    # take the fused oneDNN linear.
    return _forward(x, weights, biases, final_relu, _use_native(x, weights, biases),
                    fused_onednn=True)


def _forward_torch(x, weights, biases, final_relu):
    return _forward(x, weights, biases, final_relu, False)


def _backward_cpu(grad, x, activations, weights, final_relu, input_grad):
    use_native = _use_native(x, weights, []) and grad.dtype == torch.float32
    return _backward(grad, x, activations, weights, final_relu, input_grad, use_native)


def _backward_torch(grad, x, activations, weights, final_relu, input_grad):
    return _backward(grad, x, activations, weights, final_relu, input_grad, False)


_lib.impl("mlp", _forward_cpu, "CPU")
_lib.impl("mlp", _forward_torch, "CompositeExplicitAutograd")
_lib.impl("mlp_backward", _backward_cpu, "CPU")
_lib.impl("mlp_backward", _backward_torch, "CompositeExplicitAutograd")


@torch.library.register_fake("dlrm::mlp", lib=_lib)
def _forward_fake(x, weights, biases, final_relu):
    return [x.new_empty(x.shape[0], w.shape[0]) for w in weights]


@torch.library.register_fake("dlrm::mlp_backward", lib=_lib)
def _backward_fake(grad, x, activations, weights, final_relu, input_grad):
    out = []
    for w in weights:
        out += [grad.new_empty(w.shape), grad.new_empty(w.shape[0])]
    if input_grad:
        out.append(grad.new_empty(x.shape))
    return out


# Autograd at the Autograd key, lean (see dlrm.ops.autograd: register_autograd's generic
# handling of the Tensor[] arguments cost ~90 us per call each way, ~0.3 ms per MLP per step).
class _MLPFunction(torch.autograd.Function):
    """``dlrm::mlp`` with its tensors flat: ``apply(x, final_relu, L, W_0..W_{L-1},
    b_0..b_{L-1}) -> (h_1, ..., h_L)``; the backward is ``dlrm::mlp_backward``."""

    @staticmethod
    def forward(ctx, x, final_relu, layers, *params):
        weights, biases = list(params[:layers]), list(params[layers:])
        with torch._C._AutoDispatchBelowAutograd():
            activations = torch.ops.dlrm.mlp(x, weights, biases, final_relu)
        ctx.save_for_backward(x, *activations, *weights)
        ctx.layers, ctx.final_relu = layers, final_relu
        ctx.set_materialize_grads(False)  # the gradients of h_1 .. h_{L-1} are not used
        return tuple(activations)

    @staticmethod
    def backward(ctx, *grads):
        layers = ctx.layers
        grad = grads[-1]
        if grad is None:
            return (None,) * (3 + 2 * layers)
        saved = ctx.saved_tensors
        x, activations, weights = saved[0], saved[1:layers + 1], saved[layers + 1:]
        input_grad = ctx.needs_input_grad[0]
        out = torch.ops.dlrm.mlp_backward(grad, x, list(activations), list(weights),
                                          ctx.final_relu, input_grad)
        return (out[-1] if input_grad else None, None, None, *out[0:2 * layers:2],
                *out[1:2 * layers:2])


def _mlp_autograd(x, weights, biases, final_relu):
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                    or any(b.requires_grad for b in biases)):
        if _native_shape(x, weights):
            return list(_MLPFunction.apply(x, final_relu, len(weights), *weights, *biases))
        # Elsewhere (small batches, bfloat16, other devices) the operator's kernels are the
        # PyTorch ops addmm + relu_ anyway: run them under autograd, whose C++ backward nodes
        # cost less than one Function with a Python backward loop (kaggle B=128 step: ~5%).
        return _forward(x, weights, biases, final_relu, use_native=False)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.dlrm.mlp(x, weights, biases, final_relu)


_lib.impl("mlp", _mlp_autograd, "Autograd")
register_no_second_derivative(
    _lib, "mlp_backward", "dlrm::mlp has no second derivative: its backward "
    "(dlrm::mlp_backward) is not differentiable. Differentiate the PyTorch modules instead.")


@register_flop_formula(torch.ops.dlrm.mlp)
def _forward_flops(x_shape, weight_shapes, bias_shapes, final_relu, out_shape=None) -> int:
    """The matmuls' FLOPs, 2 B in out per layer (what FlopCounterMode counts for ``mm``)."""
    return sum(2 * x_shape[0] * w[0] * w[1] for w in weight_shapes)


@register_flop_formula(torch.ops.dlrm.mlp_backward)
def _backward_flops(grad_shape, x_shape, activation_shapes, weight_shapes, final_relu,
                    input_grad, out_shape=None) -> int:
    """Weight gradients of every layer, input gradients of all but the first (unless asked)."""
    per_layer = [2 * x_shape[0] * w[0] * w[1] for w in weight_shapes]
    return 2 * sum(per_layer) - (0 if input_grad else per_layer[0])


def mlp(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
        final_relu: bool) -> torch.Tensor:
    """``(B, in) -> (B, out)`` through every layer; see the module doc."""
    return torch.ops.dlrm.mlp(x, weights, biases, final_relu)[-1]
