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
