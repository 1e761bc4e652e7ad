"""Baseline models: each forward against a naive float64 implementation of its paper's
equation on a tiny input, and each learns planted data well above a constant predictor."""

import pytest
import torch

from dlrm.config import DLRMConfig
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.features import SparseFeatures
from dlrm.models import (
    DCN,
    DLRM,
    DCNConfig,
    DCNv2,
    DeepFM,
    LinearDeepConfig,
    LogisticRegression,
    WideAndDeep,
    build_model,
    model_config_for,
    model_kinds,
)
from dlrm.training.checkpoint import load_model
from dlrm.training.loop import TrainConfig, train

TABLES = [7, 5, 11]
NUM_DENSE = 3


def tiny_inputs(batch=4, multi_hot=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, NUM_DENSE, generator=gen)
    bags = []  # bags[b][f] = list of local ids
    for _ in range(batch):
        row = []
        for n in TABLES:
            k = int(torch.randint(0, 3, (1,), generator=gen)) if multi_hot else 1
            row.append(torch.randint(0, n, (k,), generator=gen).tolist())
        bags.append(row)
    values, lengths = [], []
    for f in range(len(TABLES)):  # feature-major
        for b in range(batch):
            values += bags[b][f]
            lengths.append(len(bags[b][f]))
    sparse = SparseFeatures.from_lengths(torch.tensor(values, dtype=torch.long),
                                         torch.tensor(lengths), len(TABLES))
    return dense, sparse, bags


def naive_pooled(weight, bags, b, f):
    """sum of table f's rows over sample b's bag, float64."""
    offset = sum(TABLES[:f])
    out = torch.zeros(weight.shape[1], dtype=torch.float64)
    for i in bags[b][f]:
        out += weight[offset + i].double()
    return out


def naive_x0(model, dense, bags, b):
    parts = [dense[b].double()] + [naive_pooled(model.embeddings.weight, bags, b, f)
                                   for f in range(len(TABLES))]
    return torch.cat(parts)


def naive_mlp(mlp, x, final_relu):
    linears = mlp.linears()
    for k, lin in enumerate(linears):
        x = lin.weight.double() @ x + lin.bias.double()
        if final_relu or k < len(linears) - 1:
            x = x.clamp_min(0)
    return x


def naive_linear_part(model, dense, bags, b):
    out = model.dense_linear.bias.double()[0] + model.dense_linear.weight.double()[0] @ dense[b]
    for f in range(len(TABLES)):
        out = out + naive_pooled(model.wide.weight, bags, b, f)[0]
    return out


def assert_close(got, want, tol=1e-4):
    """float32 model output against the float64 naive value, relative above magnitude 1."""
    got, want = float(got.detach()), float(want.detach())
    assert abs(got - want) < tol * max(1.0, abs(want)), (got, want)


def randomize(model):
    """Non-zero values everywhere (the linear parts start at zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.fixture(params=[False, True], ids=["one-hot", "multi-hot"])
def inputs(request):
    return tiny_inputs(multi_hot=request.param)


def test_dcn_matches_cross_network_equation(inputs):
    dense, sparse, bags = inputs
    model = randomize(DCN(DCNConfig(TABLES, NUM_DENSE, embedding_dim=4, cross_layers=3,
                                    deep_mlp=[6, 5])))
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        x0 = naive_x0(model, dense.double(), bags, b)
        x = x0.clone()
        for l in range(3):
            w, bias = model.cross.weights[l].double(), model.cross.biases[l].double()
            x = x0 * (x @ w) + bias + x  # x_{l+1} = x_0 x_l^T w_l + b_l + x_l
        h = naive_mlp(model.deep, x0, final_relu=True)
        want = naive_mlp(model.out, torch.cat([x, h]), final_relu=False)[0]
        assert_close(got[b], want)


@pytest.mark.parametrize("low_rank", [None, 2])
@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcnv2_matches_matrix_cross_equation(inputs, low_rank, structure):
    dense, sparse, bags = inputs
    model = randomize(DCNv2(DCNConfig(TABLES, NUM_DENSE, embedding_dim=4, cross_layers=2,
                                      deep_mlp=[6], low_rank=low_rank, structure=structure)))
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        x0 = naive_x0(model, dense.double(), bags, b)
        x = x0.clone()
        for l in range(2):
            up = model.cross.layers[l]
            matrix = up.weight.double()
            if low_rank is not None:
                matrix = matrix @ model.cross.down[l].weight.double()  # W = U V^T
            x = x0 * (matrix @ x + up.bias.double()) + x
        if structure == "stacked":
            want = naive_mlp(model.out, naive_mlp(model.deep, x, True), False)[0]
        else:
            h = naive_mlp(model.deep, x0, final_relu=True)
            want = naive_mlp(model.out, torch.cat([x, h]), final_relu=False)[0]
        assert_close(got[b], want)


def test_dlrm_dcnv2_matches_equation_and_mlperf_shape(inputs):
    dense, sparse, bags = inputs
    cfg = DLRMConfig(TABLES, embedding_dim=4, bottom_mlp=[NUM_DENSE, 6, 4], top_mlp=[8, 1],
                     interaction="cross", cross_layers=3, low_rank=3)
    model = randomize(DLRM(cfg))
    cross = model.interaction.cross
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        x = naive_mlp(model.bottom_mlp, dense[b].double(), final_relu=True)
        z0 = torch.cat([x] + [naive_pooled(model.embeddings.weight, bags, b, f)
                              for f in range(len(TABLES))])
        z = z0.clone()
        for l in range(3):
            matrix = cross.layers[l].weight.double() @ cross.down[l].weight.double()
            z = z0 * (matrix @ z + cross.layers[l].bias.double()) + z
        want = naive_mlp(model.top_mlp, z, final_relu=False)[0]
        assert_close(got[b], want)
    # The MLPerf recipe: 26 tables, D=128, 3 cross layers of rank 512 over 27*128 = 3456.
    mlperf = model_config_for("dlrm_dcnv2", "mlperf", [10] * 26, 13)
    assert mlperf["bottom_mlp"] == [13, 512, 256, 128]
    assert mlperf["top_mlp"] == [1024, 1024, 512, 256, 1]
    assert (mlperf["cross_layers"], mlperf["low_rank"], mlperf["embedding_dim"]) == (3, 512, 128)
    assert mlperf["interaction"] == "cross"
    with torch.device("meta"):
        big = build_model("dlrm_dcnv2", mlperf)
    assert big.interaction.cross.down[0].weight.shape == (512, 3456)
    assert big.top_mlp.linears()[0].weight.shape == (1024, 3456)
    # The same recipe is the `mlperf-dcnv2` preset's model.
    assert model_config_for("dlrm", "mlperf-dcnv2", [10] * 26, 13)["interaction"] == "cross"


def test_checkpoints_of_the_former_dlrm_dcnv2_class_still_load():
    """Before DLRM-DCNv2 became DLRM's `cross` interaction its state named `cross.*`."""
    cfg = model_config_for("dlrm_dcnv2", "tiny", TABLES, NUM_DENSE)
    model = build_model("dlrm_dcnv2", cfg)
    old = {k.replace("interaction.cross.", "cross."): v.clone()
           for k, v in model.state_dict().items()}
    assert any(k.startswith("cross.") for k in old)
    fresh = build_model("dlrm_dcnv2", cfg)
    fresh.load_state_dict(old)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_wide_and_deep_is_linear_plus_deep(inputs):
    dense, sparse, bags = inputs
    model = randomize(WideAndDeep(LinearDeepConfig(TABLES, NUM_DENSE, embedding_dim=4,
                                                   deep_mlp=[6, 5])))
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        wide = naive_linear_part(model, dense.double(), bags, b)
        deep = naive_mlp(model.deep, naive_x0(model, dense.double(), bags, b), False)[0]
        want = wide + deep
        assert_close(got[b], want)


def test_deepfm_is_first_order_plus_pairwise_plus_deep(inputs):
    dense, sparse, bags = inputs
    model = randomize(DeepFM(LinearDeepConfig(TABLES, NUM_DENSE, embedding_dim=4,
                                              deep_mlp=[6])))
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        first = naive_linear_part(model, dense.double(), bags, b)
        e = [naive_pooled(model.embeddings.weight, bags, b, f) for f in range(len(TABLES))]
        fm = sum(e[f] @ e[g] for f in range(len(TABLES)) for g in range(f + 1, len(TABLES)))
        deep = naive_mlp(model.deep, naive_x0(model, dense.double(), bags, b), False)[0]
        want = first + fm + deep
        assert_close(got[b], want)


def test_logistic_regression_is_linear(inputs):
    dense, sparse, bags = inputs
    model = randomize(LogisticRegression(LinearDeepConfig(TABLES, NUM_DENSE)))
    got = model(dense, sparse)
    for b in range(dense.shape[0]):
        want = naive_linear_part(model, dense.double(), bags, b)
        assert_close(got[b], want, tol=1e-5)


def test_linear_weights_get_sparse_row_gradients():
    dense, sparse, _ = tiny_inputs(multi_hot=True)
    model = WideAndDeep(LinearDeepConfig(TABLES, NUM_DENSE, embedding_dim=4, deep_mlp=[6]))
    model(dense, sparse).sum().backward()
    assert model.wide.weight.grad.is_sparse and model.embeddings.weight.grad.is_sparse


def test_bad_inputs_name_the_problem():
    model = DCN(DCNConfig(TABLES, NUM_DENSE, embedding_dim=4, cross_layers=1, deep_mlp=[4]))
    ids = torch.zeros(2, 3, dtype=torch.long)
    ids[1, 2] = 11
    with pytest.raises(ValueError, match="sparse feature 2: id 11"):
        model(torch.zeros(2, NUM_DENSE), SparseFeatures.from_ids(ids))
    with pytest.raises(ValueError, match="expected \\(B, 3\\)"):
        model(torch.zeros(2, 4), SparseFeatures.from_ids(ids.clamp_max(4)))
    with pytest.raises(ValueError, match="has no option cross_layers"):
        model_config_for("wdl", "tiny", TABLES, NUM_DENSE, {"cross_layers": 2})


# Training tests run on one intra-op thread (the `one_thread` fixture of conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


PLANTED_TABLES = [200, 100, 500, 50, 1000, 20, 300, 80]


@pytest.mark.parametrize("kind", [k for k in model_kinds() if k != "dlrm"])
def test_every_baseline_learns_planted_data(tmp_path, kind):
    data = SyntheticData(SyntheticConfig(table_sizes=PLANTED_TABLES, val_samples=10_000,
                                         test_samples=0))
    cfg = model_config_for(kind, "tiny", data.table_sizes, data.num_dense)
    summary = train(kind, cfg, data, TrainConfig(batch_size=256, lr=0.05, optimizer="adagrad",
                                                 max_samples=150_000, seed=0),
                    tmp_path / kind)
    # A constant predictor has AUC 0.5 and log loss = the label entropy (~0.56 at 25% CTR);
    # the Bayes-optimal AUC here is ~0.82.
    assert summary["val_auc"] > 0.70, summary
    assert summary["val_logloss"] < 0.53, summary
    assert summary["val_auc"] < summary["optimal_auc"]
    model, ckpt = load_model(tmp_path / kind / "last.pt")
    assert ckpt["model_kind"] == kind
    assert type(model) is type(build_model(kind, cfg))
