"""The memory report (a build on the meta device) counts exactly what the model and optimizer
allocate, for every model kind; refusals are clear and happen before allocating."""

import pytest
import torch

from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES, DLRMConfig, preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.features import SparseFeatures
from dlrm.models import build_model, model_config_for, model_kinds
from dlrm.models.memory import (
    InsufficientMemoryError,
    check_memory,
    format_bytes,
    parameter_memory,
)
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
    assert_report_equals_allocated("dlrm", config.to_dict(), optimizer, 13)


@pytest.mark.parametrize("kind", [k for k in model_kinds() if k != "dlrm"])
def test_report_equals_allocated_bytes_for_every_model_kind(kind):
    config = model_config_for(kind, "tiny", preset("tiny").table_sizes, 13)
    assert_report_equals_allocated(kind, config, "adagrad", 13)


def assert_report_equals_allocated(kind, config_dict, optimizer, num_dense):
    report = parameter_memory(kind, config_dict, optimizer)
    model = build_model(kind, config_dict)
    table_sizes = preset("tiny").table_sizes
    sparse_ids = {id(p) for p in model.parameters() if getattr(p, "sparse_rows", False)}
    embedding = sum(p.numel() * 4 for p in model.parameters() if id(p) in sparse_ids)
    dense = sum(p.numel() * 4 for p in model.parameters() if id(p) not in sparse_ids)
    assert sum(t.param_bytes for t in report.tables) == embedding
    assert report.dense_param_bytes == dense
    opt = build_optimizer(model, optimizer, 0.1)
    ids = torch.stack([torch.randint(0, n, (8,)) for n in table_sizes], 1)
    model(torch.rand(8, num_dense), SparseFeatures.from_ids(ids)).sum().backward()
    opt.step()
    optimizer_state = sum(t.optimizer_bytes for t in report.tables) + report.dense_optimizer_bytes
    assert optimizer_state == state_bytes(opt)


def test_per_table_shapes():
    config = DLRMConfig.from_dict({**preset("tiny").to_dict(), "qr_threshold": 400,
                                   "qr_collisions": 10})
    report = parameter_memory("dlrm", config.to_dict(), "adagrad")
    assert report.tables[4].shapes == [(100, 8), (10, 8)]  # 1000 rows -> 100 + 10
    assert report.tables[4].optimizer_bytes == 110 * 4  # row-wise: one float per row
    assert report.tables[0].shapes == [(200, 8)]
    assert "total" in report.lines()[-1] and len(report.lines()) == 2 + len(config.table_sizes)


def test_refusal_names_largest_tables_and_total():
    report = parameter_memory("dlrm", preset("kaggle").to_dict(), "adagrad")  # full Kaggle
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


def test_every_kind_is_checked_before_allocating(tmp_path):
    """The refusal is not DLRM's alone: a DCN-v2 with a 10^12-row table is refused too, and
    Wide & Deep's report names which of its two embedding modules holds the table."""
    data = SyntheticData(SyntheticConfig(table_sizes=[10, 10], rows_cap=None,
                                         train_samples=256, val_samples=64, test_samples=0))
    config = model_config_for("dcnv2", "tiny", [10 ** 12, 10], 13)
    with pytest.raises(InsufficientMemoryError, match="table 0 \\(1,000,000,000,000 rows"):
        train("dcnv2", config, data, TrainConfig(batch_size=64), tmp_path / "run")
    wdl = parameter_memory("wdl", model_config_for("wdl", "tiny", [10 ** 9, 10], 13))
    with pytest.raises(InsufficientMemoryError, match="embeddings table 0 .*wide table 0"):
        check_memory(wdl, "cpu", available=2 * 1024 ** 3)
