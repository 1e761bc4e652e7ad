"""The ``dlrm::*`` operators as PyTorch sees them: registrations checked by ``opcheck``,
``torch.compile`` keeping them in one graph (compiled = eager), the profiler naming them, and
serving exports decomposing them."""

from __future__ import annotations

import pytest
import torch

from dlrm.config import preset
from dlrm.features import SparseFeatures
from dlrm.models import DLRM, build_model, model_config_for
from dlrm.ops import native
from dlrm.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def kaggle_batch(config, batch: int, seed: int, multi_hot: bool = False):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, config.num_dense, generator=gen)
    if multi_hot:
        lengths = torch.randint(0, 3, (config.num_sparse * batch,), generator=gen)
        per_feature = lengths.view(config.num_sparse, batch).sum(1)
        values = torch.cat([torch.randint(0, n, (int(k),), generator=gen)
                            for n, k in zip(config.table_sizes, per_feature)])
        sparse = SparseFeatures.from_lengths(values, lengths, config.num_sparse)
    else:
        ids = torch.stack([torch.randint(0, n, (batch,), generator=gen)
                           for n in config.table_sizes], 1)
        sparse = SparseFeatures.from_ids(ids)
    labels = torch.randint(0, 2, (batch,), generator=gen).float()
    return dense, sparse, labels


def test_opcheck_interaction_and_lookup_registrations():
    """Schema, fake (shapes and strides), autograd registration of every operator."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        dense = torch.randn(9, 16, dtype=dtype, requires_grad=True)
        pooled = torch.randn(9, 5, 16, requires_grad=True)
        for self_interaction in (False, True):
            torch.library.opcheck(torch.ops.dlrm.dot_interaction.default,
                                  (dense, pooled, self_interaction))
    weight = torch.randn(60, 8, requires_grad=True)
    table_offsets = torch.tensor([0, 10, 60])
    one_hot = SparseFeatures.from_ids(torch.stack([torch.randint(0, 10, (7,)),
                                                   torch.randint(0, 50, (7,))], 1))
    multi = SparseFeatures.from_lengths(torch.tensor([1, 2, 3, 4, 40]),
                                        torch.tensor([2, 0, 1, 0, 1, 1]), 2)
    lr = torch.tensor(0.1, dtype=torch.float64)
    for sparse in (one_hot, multi):
        # The sparse gradient is checked by the tests of dlrm.models.embeddings; here the
        # forward's registrations (fake strides: a transposed view for multi-hot bags) and the
        # backward that updates the rows in place (SGD; row-wise Adagrad with an accumulator).
        args = (sparse.values, sparse.offsets, table_offsets, sparse.one_hot)
        torch.library.opcheck(torch.ops.dlrm.embedding_bag.default, (weight.detach(), *args))
        for accumulator in (None, torch.zeros(60)):
            torch.library.opcheck(torch.ops.dlrm.embedding_bag.default,
                                  (torch.randn(60, 8, requires_grad=True), *args, lr,
                                   accumulator, 1e-8))
    torch.library.opcheck(torch.ops.dlrm.sgd_rows_.default,
                          (torch.randn(60, 8), torch.tensor([3, 3, 59]), torch.randn(3, 8), lr))
    torch.library.opcheck(torch.ops.dlrm.rowwise_adagrad_rows_.default,
                          (torch.randn(60, 8), torch.zeros(60), torch.tensor([3, 3, 59]),
                           torch.randn(3, 8), lr, 1e-8))


def test_compiled_kaggle_dlrm_has_no_graph_break_and_equals_eager():
    config = preset("kaggle", rows_cap=1000)
    torch.manual_seed(0)
    model = DLRM(config)
    for multi_hot in (False, True):
        dense, sparse, _ = kaggle_batch(config, 256, seed=1, multi_hot=multi_hot)
        explained = torch._dynamo.explain(model)(dense, sparse)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, \
            [r.reason for r in explained.break_reasons]
    compiled = torch.compile(model)
    with torch.no_grad():
        for multi_hot in (False, True):
            dense, sparse, _ = kaggle_batch(config, 256, seed=2, multi_hot=multi_hot)
            torch.testing.assert_close(compiled(dense, sparse), model(dense, sparse),
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["dlrm", "dcnv2", "deepfm"])
def test_a_compiled_training_step_equals_eager(kind):
    """Forward, backward (sparse row gradients included) and the optimizer step through the
    compiled graph give eager's losses and weights."""
    config = model_config_for(kind, "tiny", [300, 20, 1000, 7], 13)
    states = []
    for compile_model in (False, True):
        torch.manual_seed(0)
        model = build_model(kind, config)
        optimizer = build_optimizer(model, "adagrad", 0.05)
        step_model = torch.compile(model) if compile_model else model
        losses = []
        for step in range(3):
            gen = torch.Generator().manual_seed(step)
            ids = torch.stack([torch.randint(0, n, (128,), generator=gen)
                               for n in config["table_sizes"]], 1)
            dense = torch.rand(128, 13, generator=gen)
            labels = torch.randint(0, 2, (128,), generator=gen).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                step_model(dense, SparseFeatures.from_ids(ids)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
        states.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (eager_losses, eager_state), (compiled_losses, compiled_state) = states
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses),
                               rtol=1e-5, atol=1e-5)
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
def test_the_profiler_names_the_operators():
    config = preset("kaggle", rows_cap=1000)
    model = DLRM(config)
    dense, sparse, labels = kaggle_batch(config, 512, seed=3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
    names = {event.key for event in prof.key_averages()}
    for op in ("dlrm::mlp", "dlrm::mlp_backward", "dlrm::embedding_bag",
               "dlrm::dot_interaction", "dlrm::dot_interaction_backward"):
        assert op in names, sorted(n for n in names if "dlrm" in n)


def test_compiled_model_keeps_validating_its_inputs():
    """Inside a compiled graph the input checks run without a graph break and still refuse
    an id outside its table."""
    config = preset("tiny")
    model = torch.compile(DLRM(config))
    ids = torch.zeros(4, config.num_sparse, dtype=torch.long)
    model(torch.rand(4, 13), SparseFeatures.from_ids(ids))
    ids[2, 3] = config.table_sizes[3]
    with pytest.raises(RuntimeError, match="a sparse id is outside its table"):
        model(torch.rand(4, 13), SparseFeatures.from_ids(ids))
