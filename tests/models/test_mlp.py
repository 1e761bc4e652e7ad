"""The fused CPU MLP path (``_FusedMLPFunction``) against the plain Linear/ReLU modules."""

from __future__ import annotations

import copy

import pytest
import torch

from dlrm import kernels
from dlrm.models import mlp as mlp_module
from dlrm.models.mlp import MLP, _FusedMLPFunction

needs_kernels = pytest.mark.skipif(not kernels.enabled(),
                                   reason="native kernels unavailable (no C++ compiler)")

# The bottom-MLP shape (ReLU at the end; 13 inputs take the transposed weight-gradient
# layout) and a top-MLP shape ending in a logit.
CASES = [("13-40-32-16", True), ("37-48-64-1", False)]


@pytest.fixture(autouse=True)
def fuse_small_batches(monkeypatch):
    """The tests' small shapes take the fused path too (in use it starts at larger batches)."""
    monkeypatch.setattr(mlp_module, "FUSED_MIN_ELEMENTS", 0)


def run(mlp: MLP, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """[output, grad of x, grads of every parameter] of one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    mlp.zero_grad(set_to_none=True)
    out = mlp(x)
    out.backward(grad)
    return [out.detach(), x.grad, *[p.grad for p in mlp.parameters()]]


@needs_kernels
@pytest.mark.parametrize("widths,final_activation", CASES)
def test_fused_float32_matches_the_float64_modules(widths, final_activation):
    torch.manual_seed(0)
    mlp = MLP(widths, final_activation=final_activation)
    x = torch.randn(300, mlp.widths[0])  # 300 rows: partial bias sums of 128 rows + a rest
    grad = torch.randn(300, mlp.widths[-1])
    got = run(mlp, x, grad)
    assert mlp(x).grad_fn.name() == "_FusedMLPFunctionBackward"
    want = run(copy.deepcopy(mlp).double(), x.double(), grad.double())  # plain modules
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("final_activation", [True, False])
def test_fused_function_gradcheck_float64(final_activation):
    """The backward's composition (mask, bias sums, weight-gradient layouts, chain) in float64,
    where the epilogues run on PyTorch ops."""
    torch.manual_seed(1)
    mlp = MLP("7-9-32-5", final_activation=final_activation).double()
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)

    def fused(inputs, *params):
        return _FusedMLPFunction.apply(inputs, final_activation, False, *params)

    assert torch.autograd.gradcheck(fused, (x, *mlp.parameters()))


@needs_kernels
def test_the_callers_gradient_is_not_overwritten_and_expanded_gradients_work():
    torch.manual_seed(3)
    mlp = MLP("10-32-16")
    x = torch.randn(50, 10)
    grad = torch.randn(50, 16)
    kept = grad.clone()
    fused = run(mlp, x, grad)
    assert torch.equal(grad, kept)
    # y.sum().backward() hands the MLP a stride-0 gradient of ones.
    ones = run(mlp, x, torch.ones(1, 1).expand(50, 16))
    with kernels.use_native(False):
        plain = run(mlp, x, torch.ones(50, 16))
        plain_fused = run(mlp, x, grad)
    for a, b in zip(ones + fused, plain + plain_fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_plain_path_where_fusing_would_change_behaviour():
    mlp = MLP("6-8-4")
    x = torch.randn(3, 6)
    with kernels.use_native(False):
        assert mlp(x).grad_fn.name() == "ReluBackward0"
    assert copy.deepcopy(mlp).double()(x.double()).grad_fn.name() == "ReluBackward0"  # float64
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 measured no faster fused
        assert mlp(x).grad_fn.name() == "ReluBackward0"
    with pytest.MonkeyPatch.context() as patch:  # batch x widest layer under the threshold
        patch.setattr(mlp_module, "FUSED_MIN_ELEMENTS", 3 * 8 + 1)
        assert mlp(x).grad_fn.name() == "ReluBackward0"
        patch.setattr(mlp_module, "FUSED_MIN_ELEMENTS", 3 * 8)
        assert mlp(x).grad_fn.name() == "_FusedMLPFunctionBackward"
    seen = []
    mlp[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert mlp(x).grad_fn.name() == "ReluBackward0"  # a hook must still run
    assert seen == [torch.Size([3, 8])]


@needs_kernels
def test_changing_the_output_in_place_before_backward_is_caught():
    mlp = MLP("6-8-4")
    out = mlp(torch.randn(3, 6))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@needs_kernels
def test_a_second_derivative_fails_loudly_and_works_on_pytorch_ops():
    mlp = MLP("6-8-4")
    x = torch.randn(3, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(mlp(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    with kernels.use_native(False):
        (grad,) = torch.autograd.grad(mlp(x).pow(2).sum(), x, create_graph=True)
        grad.sum().backward()  # the plain modules have one
    assert x.grad is not None
