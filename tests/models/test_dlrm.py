import pytest
import torch

from dlrm.config import DLRMConfig, dlrm_config_for_data, parse_arch, preset
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM


def tiny_batch(config: DLRMConfig, batch: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in config.table_sizes], 1)
    return torch.rand(batch, config.num_dense, generator=gen), SparseFeatures.from_ids(ids)


def test_presets_match_the_reference_recipes():
    kaggle = preset("kaggle")
    assert kaggle.embedding_dim == 16 and kaggle.bottom_mlp == [13, 512, 256, 64, 16]
    assert kaggle.top_mlp == [512, 256, 1] and len(kaggle.table_sizes) == 26
    assert preset("terabyte").bottom_mlp == [13, 512, 256, 64]
    mlperf = preset("mlperf", rows_cap=1000)
    assert mlperf.top_mlp == [1024, 1024, 512, 256, 1] and max(mlperf.table_sizes) == 1000
    model = DLRM(preset("kaggle", rows_cap=10))
    # top input: 16 + 27*26/2 = 367
    assert model.top_mlp.linears()[0].in_features == 367


def test_forward_shape_and_gradcheck_float64():
    config = DLRMConfig(table_sizes=[5, 4, 3], embedding_dim=2, bottom_mlp=[3, 4, 2],
                        top_mlp=[3, 1])
    torch.manual_seed(0)
    model = DLRM(config).double()
    dense, sparse = tiny_batch(config, batch=4)
    dense = dense.double().requires_grad_()
    assert model(dense, sparse).shape == (4,)
    # Gradcheck w.r.t. the dense inputs and every MLP parameter; embedding gradients are
    # sparse and checked by finite differences below and against nn.EmbeddingBag.
    assert torch.autograd.gradcheck(lambda d: model(d, sparse), (dense,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(
            model, dict(zip([n for n, q in model.named_parameters()
                             if not getattr(q, "sparse_rows", False)], ps)),
            (dense.detach(), sparse), strict=False),
        tuple(q.detach().clone().requires_grad_() for q in model.parameters()
              if not getattr(q, "sparse_rows", False)), eps=1e-6, atol=1e-6)


def test_embedding_gradient_matches_finite_differences():
    config = DLRMConfig(table_sizes=[5, 4], embedding_dim=2, bottom_mlp=[3, 2], top_mlp=[2, 1])
    torch.manual_seed(1)
    model = DLRM(config).double()
    dense, sparse = tiny_batch(config, batch=3)
    dense = dense.double()
    model(dense, sparse).sum().backward()
    analytic = model.embeddings.weight.grad.to_dense()
    numeric = torch.zeros_like(analytic)
    weight = model.embeddings.weight
    with torch.no_grad():
        for idx in range(weight.numel()):
            flat = weight.view(-1)
            old = float(flat[idx])
            flat[idx] = old + 1e-6
            up = float(model(dense, sparse).sum())
            flat[idx] = old - 1e-6
            down = float(model(dense, sparse).sum())
            flat[idx] = old
            numeric.view(-1)[idx] = (up - down) / 2e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="must end at the embedding dimension D=16"):
        DLRMConfig(table_sizes=[10], embedding_dim=16, bottom_mlp=[13, 64, 8])
    with pytest.raises(ValueError, match=r"table_sizes\[1\] = -5"):
        DLRMConfig(table_sizes=[10, -5], embedding_dim=8, bottom_mlp=[13, 8])
    with pytest.raises(ValueError, match="expected widths like"):
        parse_arch("13-abc-16")
    with pytest.raises(ValueError, match="must end with width 1"):
        DLRMConfig(table_sizes=[3], embedding_dim=2, bottom_mlp=[1, 2], top_mlp=[4, 2])
    config = DLRMConfig(table_sizes=[5, 4], embedding_dim=2, bottom_mlp=[3, 2], top_mlp=[2, 1])
    model = DLRM(config)
    dense, _ = tiny_batch(config, 2)
    bad_ids = SparseFeatures.from_ids(torch.tensor([[0, 1], [2, 4]]))
    with pytest.raises(ValueError, match="sparse feature 1: id 4 is out of range for its table "
                                         "of 4 rows"):
        model(dense, bad_ids)
    negative = SparseFeatures.from_ids(torch.tensor([[-1, 1], [2, 3]]))
    with pytest.raises(ValueError, match="sparse feature 0: id -1"):
        model(dense, negative)
    dense_nan = dense.clone()
    dense_nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite value at sample 1, dense feature 2"):
        model(dense_nan, SparseFeatures.from_ids(torch.tensor([[0, 1], [2, 3]])))
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        model(torch.zeros(2, 5), SparseFeatures.from_ids(torch.tensor([[0, 1], [2, 3]])))


def test_config_overrides_for_data():
    cfg = dlrm_config_for_data("kaggle", [10, 20], 13, embedding_dim=8)
    assert cfg.bottom_mlp == [13, 512, 256, 64, 8] and cfg.embedding_dim == 8
    cfg = dlrm_config_for_data("tiny", [10], 4, bottom_mlp="16-8")
    assert cfg.bottom_mlp == [4, 16, 8]
