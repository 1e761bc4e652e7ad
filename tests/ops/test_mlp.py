"""``dlrm::mlp`` (the whole Linear/ReLU stack as one operator) against the plain modules, and
the ``MLP`` module's choice between the operator and its modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dlrm.models.mlp import MLP
from dlrm.ops import mlp as mlp_op
from dlrm.ops import native

needs_kernels = pytest.mark.skipif(not native.available(),
                                   reason="native kernels unavailable (no C++ compiler)")

# The bottom-MLP shape (ReLU at the end; 13 inputs take the transposed weight-gradient
# layout), a top-MLP shape ending in a logit, and widths of 64 or more that are not multiples
# of 16 (the input and both hidden layers run zero-padded to 80, 112, 80 columns).
CASES = [("13-40-32-16", True), ("37-48-64-1", False), ("67-100-72-1", False)]


@pytest.fixture
def native_for_small_batches(monkeypatch):
    """The tests' small shapes take the native epilogues too (in use they start at larger
    batches)."""
    monkeypatch.setattr(mlp_op, "NATIVE_MIN_ELEMENTS", 0)


def run(forward, params: list[torch.Tensor], x: torch.Tensor, grad: torch.Tensor
        ) -> list[torch.Tensor]:
    """[output, grad of x, grads of every parameter] of one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    for p in params:
        p.grad = None
    out = forward(x)
    out.backward(grad)
    return [out.detach(), x.grad, *[p.grad for p in params]]


def modules(mlp: MLP):
    """The plain Linear/ReLU modules of ``mlp``, run one by one (the reference)."""
    return lambda x: nn.Sequential.forward(mlp, x)


@needs_kernels
@pytest.mark.usefixtures("native_for_small_batches")
@pytest.mark.parametrize("widths,final_activation", CASES)
def test_native_float32_matches_the_float64_modules(widths, final_activation):
    torch.manual_seed(0)
    mlp = MLP(widths, final_activation=final_activation)
    x = torch.randn(300, mlp.widths[0])  # 300 rows: partial bias sums of 128 rows + a rest
    grad = torch.randn(300, mlp.widths[-1])
    got = run(mlp, list(mlp.parameters()), x, grad)
    assert "MLPFunction" in mlp(x).grad_fn.name()
    ref = copy.deepcopy(mlp).double()
    want = run(modules(ref), list(ref.parameters()), x.double(), grad.double())
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("final_activation", [True, False])
def test_operator_gradcheck_float64(final_activation):
    """The backward's composition (mask, bias sums, weight-gradient layouts, chain) in float64,
    where the epilogues run on PyTorch ops."""
    torch.manual_seed(1)
    mlp = MLP("7-9-70-5", final_activation=final_activation).double()
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    linears = mlp.linears()

    def op(inputs, *params):
        return mlp_op.mlp(inputs, list(params[0::2]), list(params[1::2]), final_activation)

    params = [p for linear in linears for p in (linear.weight, linear.bias)]
    assert torch.autograd.gradcheck(op, (x, *params))


@pytest.mark.usefixtures("native_for_small_batches")
def test_opcheck_schema_fake_and_autograd_registrations():
    """torch.library.opcheck: the fake implementation matches the real one (shapes, strides,
    dtypes), the schema's aliasing is truthful, autograd is registered. 67 inputs take the
    backward's padded weight (native kernels): its input gradient must still be contiguous,
    as the fake says (Inductor asserts it)."""
    torch.manual_seed(2)
    for x, final in ((torch.randn(5, 13), True), (torch.randn(300, 40), False),
                     (torch.randn(300, 67), False)):
        weights = [torch.randn(32, x.shape[1], requires_grad=True), torch.randn(8, 32)]
        biases = [torch.randn(32), torch.randn(8, requires_grad=True)]
        torch.library.opcheck(torch.ops.dlrm.mlp.default,
                              (x.requires_grad_(), weights, biases, final))


@pytest.mark.usefixtures("native_for_small_batches")
@pytest.mark.parametrize("fan_in", [13, 67, 80])
def test_backward_outputs_have_the_fake_strides(fan_in):
    """Every gradient dlrm::mlp_backward returns is laid out as its fake says (contiguous),
    the padded-weight path (67 inputs) included: a compiled step (Inductor) asserts it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(4)
    x = torch.randn(300, fan_in)
    weights = [torch.randn(96, fan_in), torch.randn(1, 96)]
    biases = [torch.randn(96), torch.randn(1)]
    activations = torch.ops.dlrm.mlp(x, weights, biases, False)
    grad = torch.randn(300, 1)
    real = torch.ops.dlrm.mlp_backward(grad, x, activations, weights, False, True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.dlrm.mlp_backward(*(mode.from_tensor(t) for t in (grad, x)),
                                           [mode.from_tensor(a) for a in activations],
                                           [mode.from_tensor(w) for w in weights], False, True)
    assert [t.shape for t in real] == [t.shape for t in fake]
    assert [t.stride() for t in real] == [t.stride() for t in fake]


@needs_kernels
@pytest.mark.usefixtures("native_for_small_batches")
def test_the_callers_gradient_is_not_overwritten_and_expanded_gradients_work():
    torch.manual_seed(3)
    mlp = MLP("10-32-16")
    params = list(mlp.parameters())
    x = torch.randn(50, 10)
    grad = torch.randn(50, 16)
    kept = grad.clone()
    fused = run(mlp, params, x, grad)
    assert torch.equal(grad, kept)
    # y.sum().backward() hands the MLP a stride-0 gradient of ones.
    ones = run(mlp, params, x, torch.ones(1, 1).expand(50, 16))
    plain = run(modules(mlp), params, x, torch.ones(50, 16))
    plain_fused = run(modules(mlp), params, x, grad)
    for a, b in zip(ones + fused, plain + plain_fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("native_for_small_batches")
def test_modules_run_where_the_operator_would_change_behaviour():
    mlp = MLP("6-8-4")
    x = torch.randn(3, 6)
    if native.available():
        assert "MLPFunction" in mlp(x).grad_fn.name()
    seen = []
    mlp[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert mlp(x).grad_fn.name() == "ReluBackward0"  # a hook must still run
    assert seen == [torch.Size([3, 8])]
    swapped = MLP("6-8-4")
    swapped[0] = nn.Linear(6, 8, bias=False)  # a user's swapped layer
    assert swapped(x).grad_fn.name() == "ReluBackward0"


def test_autocast_runs_the_operator_in_bfloat16_like_the_modules():
    torch.manual_seed(4)
    mlp = MLP("13-64-16")
    x = torch.randn(20, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mlp(x)
        want = nn.Sequential.forward(mlp, x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=1 / 64, atol=1 / 64)
    got.float().sum().backward()
    assert mlp[0].weight.grad.dtype == torch.float32  # master weights stay float32


@pytest.mark.skipif(not mlp_op._ONEDNN_LINEAR, reason="this torch has no oneDNN linear")
@pytest.mark.parametrize("widths,final_activation", [*CASES, ("367-512-256-1", False)])
def test_bfloat16_inference_takes_the_fused_onednn_linear_with_the_same_bits(
        widths, final_activation, monkeypatch):
    """Without gradients a bf16 stack runs oneDNN's linear with the bias and ReLU fused, on
    every layer: the same values as addmm + relu_ (what runs with gradients)."""
    torch.manual_seed(6)
    mlp = MLP(widths, final_activation).to(torch.bfloat16)
    x = torch.randn(300, mlp.widths[0]).bfloat16()
    weights = [m.weight for m in mlp.linears()]
    biases = [m.bias for m in mlp.linears()]
    decisions = []
    shape_rule = mlp_op._onednn_shape
    monkeypatch.setattr(mlp_op, "_onednn_shape",
                        lambda *a: decisions.append(shape_rule(*a)) or decisions[-1])
    with torch.no_grad():
        got = torch.ops.dlrm.mlp(x, weights, biases, final_activation)
    assert decisions == [True] * len(weights)
    with torch.no_grad():
        want = mlp_op._forward(x, weights, biases, final_activation, use_native=False)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@needs_kernels
def test_changing_the_output_in_place_before_backward_is_caught():
    mlp = MLP("6-8-4")
    out = mlp(torch.randn(3, 6))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@needs_kernels
def test_a_second_derivative_fails_loudly_on_the_native_path_and_is_exact_elsewhere(
        monkeypatch):
    torch.manual_seed(5)
    mlp = MLP("6-8-4")
    x = torch.randn(3, 6, requires_grad=True)

    def second_derivative(forward):
        x.grad = None
        (grad,) = torch.autograd.grad(forward(x).pow(2).sum(), x, create_graph=True)
        grad.sum().backward()
        return x.grad.clone()

    # Below the native size the operator's PyTorch ops are recorded by autograd: the same
    # second derivative as the plain modules.
    assert "MLPFunction" not in mlp(x).grad_fn.name()
    torch.testing.assert_close(second_derivative(mlp), second_derivative(modules(mlp)))
    monkeypatch.setattr(mlp_op, "NATIVE_MIN_ELEMENTS", 0)
    (grad,) = torch.autograd.grad(mlp(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="dlrm::mlp has no second derivative"):
        grad.sum().backward()
