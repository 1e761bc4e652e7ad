import torch

from dlrm.models.interactions import CatInteraction, DotInteraction


def naive_dot(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    """The reference's loop: T = [x, e_1..e_F]; for i, for j < i (or <= i), T_i . T_j."""
    batch = dense.shape[0]
    rows = []
    for b in range(batch):
        vectors = [dense[b]] + [pooled[b, f] for f in range(pooled.shape[1])]
        out = [v for v in dense[b]]
        for i in range(len(vectors)):
            for j in range(i + 1 if self_interaction else i):
                out.append(torch.dot(vectors[i], vectors[j]))
        rows.append(torch.stack(out))
    return torch.stack(rows)


def test_dot_interaction_matches_double_loop_in_reference_order():
    torch.manual_seed(0)
    dense = torch.randn(5, 4, dtype=torch.float64)
    pooled = torch.randn(5, 3, 4, dtype=torch.float64)
    for self_interaction in (False, True):
        ours = DotInteraction(3, self_interaction)(dense, pooled)
        ref = naive_dot(dense, pooled, self_interaction)
        assert ours.shape == (5, DotInteraction.output_width(3, 4, self_interaction))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_dot_interaction_order_is_row_by_row():
    # With T_k = k * e (one-hot of one coordinate), T_i . T_j = i * j identifies the pair.
    dense = torch.tensor([[1.0]])  # T_0 = 1... use T_k = k+1 to avoid zeros
    pooled = torch.tensor([[[2.0], [3.0], [4.0]]])
    out = DotInteraction(3)(dense, pooled)[0, 1:].tolist()
    # pairs (1,0),(2,0),(2,1),(3,0),(3,1),(3,2) with values (i+1)(j+1)
    assert out == [2.0, 3.0, 6.0, 4.0, 8.0, 12.0]


def test_cat_interaction():
    dense, pooled = torch.randn(2, 3), torch.randn(2, 4, 3)
    out = CatInteraction()(dense, pooled)
    assert out.shape == (2, 15)
    torch.testing.assert_close(out[:, 3:6], pooled[:, 0])


def test_dot_interaction_gradients_match_autograd_of_the_double_loop():
    """The hand-written one-bmm backward against autograd through the naive loop (float64)."""
    torch.manual_seed(1)
    for self_interaction in (False, True):
        dense = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        # Feature-major storage seen through a transpose, as the fused lookup hands it over.
        pooled_fbd = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(4, DotInteraction.output_width(5, 3, self_interaction),
                               dtype=torch.float64)
        ours = DotInteraction(5, self_interaction)(dense, pooled_fbd.transpose(0, 1))
        grads = torch.autograd.grad((ours * upstream).sum(), (dense, pooled_fbd))
        ref = naive_dot(dense, pooled_fbd.transpose(0, 1), self_interaction)
        ref_grads = torch.autograd.grad((ref * upstream).sum(), (dense, pooled_fbd))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        module = DotInteraction(5, self_interaction)
        assert torch.autograd.gradcheck(
            lambda d, p, m=module: m(d, p.transpose(0, 1)), (dense, pooled_fbd))


def test_dot_interaction_casts_pooled_to_the_dense_dtype_and_back():
    """Under bf16 the pooled float32 input is cast inside; its gradient comes back float32."""
    torch.manual_seed(2)
    dense = torch.randn(64, 8, dtype=torch.float64)
    pooled = torch.randn(64, 6, 8, dtype=torch.float64)
    upstream = torch.randn(64, DotInteraction.output_width(6, 8), dtype=torch.float64)
    dense_bf16 = dense.bfloat16().requires_grad_()
    pooled_f32 = pooled.float().requires_grad_()
    out = DotInteraction(6)(dense_bf16, pooled_f32)
    assert out.dtype == torch.bfloat16
    (out.float() * upstream.float()).sum().backward()
    assert dense_bf16.grad.dtype == torch.bfloat16 and pooled_f32.grad.dtype == torch.float32
    ref = naive_dot(dense.requires_grad_(), pooled.requires_grad_(), False)
    (ref * upstream).sum().backward()
    # bf16 keeps 8 bits of mantissa: compare relative to the magnitudes involved.
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0.02, atol=0.05)
    torch.testing.assert_close(pooled_f32.grad.double(), pooled.grad, rtol=0.03, atol=0.3)


def test_cat_interaction_casts_to_the_dense_dtype():
    dense, pooled = torch.randn(2, 3).bfloat16(), torch.randn(4, 2, 3).transpose(0, 1)
    out = CatInteraction()(dense, pooled)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[:, 3:6].float(), pooled[:, 0].bfloat16().float())
