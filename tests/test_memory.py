"""The memory report counts exactly what the model and optimizer allocate; refusals are clear."""

import pytest
import torch

from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES, DLRMConfig, preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.features import SparseFeatures
from dlrm.memory import (
    InsufficientMemoryError,
    check_memory,
    format_bytes,
    parameter_memory,
)
from dlrm.models.dlrm import DLRM
from dlrm.training.loop import TrainConfig, train
from dlrm.training.optim import build_optimizer


def state_bytes(opt):
    total = 0
    if opt.dense is not None:
        for state in opt.dense.state.values():
            total += sum(v.numel() * v.element_size() for k, v in state.items()
                         if torch.is_tensor(v) and k != "step")
    if hasattr(opt.sparse, "accumulators"):
        total += sum(a.numel() * a.element_size() for a in opt.sparse.accumulators)
    return total


@pytest.mark.parametrize("options", [{}, {"qr_threshold": 100, "qr_collisions": 6},
                                     {"qr_threshold": 100, "qr_operation": "concat"},
                                     {"md_alpha": 0.3}, {"max_ind_range": 64},
                                     {"interaction": "cat"}])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_report_equals_allocated_bytes(options, optimizer):
    config = DLRMConfig.from_dict({**preset("tiny").to_dict(), **options})
    report = parameter_memory(config, optimizer)
    model = DLRM(config)
    sparse_ids = {id(p) for p in model.parameters() if getattr(p, "sparse_rows", False)}
    embedding = sum(p.numel() * 4 for p in model.parameters() if id(p) in sparse_ids)
    dense = sum(p.numel() * 4 for p in model.parameters() if id(p) not in sparse_ids)
    assert sum(t.param_bytes for t in report.tables) == embedding
    assert report.dense_param_bytes == dense
    opt = build_optimizer(model, optimizer, 0.1)
    ids = torch.stack([torch.randint(0, n, (8,)) for n in config.table_sizes], 1)
    model(torch.rand(8, 13), SparseFeatures.from_ids(ids)).sum().backward()
    opt.step()
    optimizer_state = sum(t.optimizer_bytes for t in report.tables) + report.dense_optimizer_bytes
    assert optimizer_state == state_bytes(opt)


def test_per_table_shapes():
    config = DLRMConfig.from_dict({**preset("tiny").to_dict(), "qr_threshold": 400,
                                   "qr_collisions": 10})
    report = parameter_memory(config, "adagrad")
    assert report.tables[4].shapes == [(100, 8), (10, 8)]  # 1000 rows -> 100 + 10
    assert report.tables[4].optimizer_bytes == 110 * 4  # row-wise: one float per row
    assert report.tables[0].shapes == [(200, 8)]
    assert "total" in report.lines()[-1] and len(report.lines()) == 2 + len(config.table_sizes)


def test_refusal_names_largest_tables_and_total():
    report = parameter_memory(preset("kaggle"), "adagrad")  # full Criteo Kaggle tables
    with pytest.raises(InsufficientMemoryError) as err:
        check_memory(report, "cpu", available=2 * 1024 ** 3)
    message = str(err.value)
    assert "table 2 (10,131,227 rows" in message and "table 11 (8,351,593 rows" in message
    rows = sum(CRITEO_KAGGLE_TABLE_SIZES)  # 33,762,577: 16 floats + 1 accumulator each
    assert report.embedding_bytes == rows * (16 + 1) * 4
    assert f"needs {format_bytes(report.total_bytes)}" in message
    assert format_bytes(report.total_bytes) == "2.14 GiB"
    assert "--max-ind-range" in message
    check_memory(report, "cpu", available=10 * 1024 ** 3)  # fits: no error


def test_train_refuses_before_allocating(tmp_path):
    """A 10^12-row table would die in the allocator; train() refuses it up front."""
    data = SyntheticData(SyntheticConfig(table_sizes=[10, 10], rows_cap=None,
                                         train_samples=256, val_samples=64, test_samples=0))
    model_config = preset("tiny", table_sizes=[10 ** 12, 10]).to_dict()
    with pytest.raises(InsufficientMemoryError, match="table 0 \\(1,000,000,000,000 rows"):
        train("dlrm", model_config, data, TrainConfig(batch_size=64), tmp_path / "run")
