import pytest
import torch

from dlrm.config import DLRMConfig
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.training.optim import build_optimizer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return DLRM(DLRMConfig(table_sizes=[6, 4], embedding_dim=3, bottom_mlp=[2, 3],
                           top_mlp=[4, 1]))


def batch_with_duplicates():
    ids = torch.tensor([[1, 2], [1, 2], [5, 0], [1, 3]])
    return torch.rand(4, 2, generator=torch.Generator().manual_seed(1)), \
        SparseFeatures.from_ids(ids), torch.tensor([1.0, 0.0, 1.0, 0.0])


def loss_of(model, dense, sparse, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)


def test_sparse_sgd_equals_dense_sgd_and_touches_only_batch_rows():
    model = tiny_model()
    before = model.embeddings.weight.detach().clone()
    dense, sparse, labels = batch_with_duplicates()
    loss_of(model, dense, sparse, labels).backward()
    full_grad = model.embeddings.weight.grad.to_dense()
    opt = build_optimizer(model, "sgd", lr=0.5)
    opt.step()
    torch.testing.assert_close(model.embeddings.weight.detach(), before - 0.5 * full_grad)
    untouched = [0, 2, 3, 4, 6 + 1]  # table 0 rows 0,2,3,4 and table 1 row 1
    torch.testing.assert_close(model.embeddings.weight[untouched], before[untouched],
                               rtol=0, atol=0)


def test_rowwise_adagrad_against_naive_formula():
    """Applied inside the lookup's backward (the weight gets no .grad), it follows the naive
    formula on the gradient a model without an optimizer hands back as a sparse tensor."""
    model = tiny_model()
    probe = tiny_model()  # no optimizer: its lookups return sparse gradients
    weight0 = model.embeddings.weight.detach().clone().double()
    opt = build_optimizer(model, "adagrad", lr=0.1, sparse_name="rowwise_adagrad")
    acc = torch.zeros(weight0.shape[0], dtype=torch.float64)
    weight = weight0.clone()
    for step in range(3):
        dense, sparse, labels = batch_with_duplicates()
        probe.load_state_dict(model.state_dict())
        probe.zero_grad(set_to_none=True)
        loss_of(probe, dense, sparse, labels * (step % 2)).backward()
        grad = probe.embeddings.weight.grad.to_dense().double()
        touched = grad.abs().sum(1) > 0
        acc[touched] += grad[touched].pow(2).mean(1)
        weight[touched] -= 0.1 * grad[touched] / (acc[touched].sqrt() + 1e-8)[:, None]
        opt.zero_grad()
        loss_of(model, dense, sparse, labels * (step % 2)).backward()
        assert model.embeddings.weight.grad is None  # updated in the backward already
        opt.step()
        torch.testing.assert_close(model.embeddings.weight.detach().double(), weight,
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.sparse.accumulators[0].double(), acc, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_the_fused_backward_update_equals_the_sparse_gradient_step_bit_for_bit(name):
    """The same rows, order and roundings: the update inside the backward (optimizer built
    first) and the step on a sparse gradient (optimizer built after the backward)."""
    states = []
    for fused in (True, False):
        model = tiny_model()
        opt = build_optimizer(model, name, lr=0.3) if fused else None
        for step in range(3):
            dense, sparse, labels = batch_with_duplicates()
            loss_of(model, dense, sparse, labels * (step % 2)).backward()
            if opt is None:
                opt = build_optimizer(model, name, lr=0.3)
                opt.sparse.attach([])  # keep taking sparse gradients: the step applies them
                for module in model.modules():
                    if hasattr(module, "row_update"):
                        module.row_update = None
            opt.step()
            opt.zero_grad()
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(states[1][key], value), key


def test_state_dict_round_trip_and_bad_names():
    model = tiny_model()
    opt = build_optimizer(model, "adam", lr=0.01)
    dense, sparse, labels = batch_with_duplicates()
    loss_of(model, dense, sparse, labels).backward()
    opt.step()
    state = opt.state_dict()
    other = build_optimizer(tiny_model(), "adam", lr=0.01)
    other.load_state_dict(state)
    torch.testing.assert_close(other.sparse.accumulators[0], opt.sparse.accumulators[0])
    with pytest.raises(ValueError, match="optimizer 'lamb'"):
        build_optimizer(model, "lamb")
    with pytest.raises(ValueError, match="learning rate -1"):
        build_optimizer(model, "sgd", lr=-1)
