"""Exported serving models give the eager model's outputs (torch.export; ONNX when installed)."""

import importlib.util

import pytest
import torch

from dlrm.config import DLRMConfig, preset
from dlrm.export import ServingDLRM, example_inputs, export_model, load_exported
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.models.mixed_dim import md_dimensions
from dlrm.models.quantized import quantize_model

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def eager_probabilities(model, dense, values, offsets, num_features):
    with torch.no_grad():
        return torch.sigmoid(model(dense, SparseFeatures(values, offsets, num_features)))


def check_against_eager(model, config, fmt, path):
    export_model(model, config.num_dense, config.table_sizes, fmt, path)
    served = load_exported(path, fmt)
    f = config.num_sparse
    # Other batch sizes and bag layouts than the trace's: multi-hot, one-hot, empty bags.
    for batch, bag, seed in ((7, 3, 1), (33, 1, 2), (2, 5, 3)):
        dense, values, offsets = example_inputs(config.num_dense, config.table_sizes, batch,
                                                bag, seed)
        with torch.no_grad():
            got = served(dense, values, offsets)
        torch.testing.assert_close(got, eager_probabilities(model, dense, values, offsets, f),
                                   atol=1e-6, rtol=1e-5)
    lengths = torch.tensor([0, 2] * (f * 3))  # B = 6, every other bag empty
    values = torch.cat([torch.randint(0, n, (int(lengths[k * 6:(k + 1) * 6].sum()),))
                        for k, n in enumerate(config.table_sizes)])
    sparse = SparseFeatures.from_lengths(values, lengths, f)
    dense = torch.rand(6, config.num_dense)
    with torch.no_grad():
        got = served(dense, sparse.values, sparse.offsets)
    torch.testing.assert_close(got, eager_probabilities(model, dense, sparse.values,
                                                        sparse.offsets, f), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"qr_threshold": 100, "md_alpha": None,
                                          "max_ind_range": 600}])
def test_torch_export_matches_eager(tmp_path, options):
    torch.manual_seed(0)
    config = DLRMConfig.from_dict({**preset("tiny").to_dict(), **options})
    model = DLRM(config).eval()
    check_against_eager(model, config, "export", tmp_path / "model.pt2")


def test_torch_export_quantized_mixed_dim(tmp_path):
    torch.manual_seed(0)
    config = DLRMConfig.from_dict({**preset("tiny", table_sizes=[20, 300, 5000]).to_dict(),
                                   "md_alpha": 0.3})
    assert len(set(md_dimensions(config.table_sizes, 8, 0.3))) == 3
    model = quantize_model(DLRM(config), bits=4).eval()
    check_against_eager(model, config, "export", tmp_path / "model.pt2")


@pytest.mark.skipif(not HAVE_ONNX, reason="ONNX export needs the optional extra: "
                    "pip install 'dlrm[onnx]' (onnx, onnxscript, onnxruntime)")
def test_onnx_matches_eager(tmp_path):
    torch.manual_seed(0)
    config = preset("tiny")
    model = quantize_model(DLRM(config), bits=8).eval()
    check_against_eager(model, config, "onnx", tmp_path / "model.onnx")


def test_serving_wrapper_takes_tensors_only():
    model = DLRM(preset("tiny"))
    wrapper = ServingDLRM(model, 8)
    assert model.check_inputs is False and not model.training
    dense, values, offsets = example_inputs(13, preset("tiny").table_sizes, 3, 2)
    out = wrapper(dense, values, offsets)
    assert out.shape == (3,) and bool(((out > 0) & (out < 1)).all())
    with pytest.raises(ValueError, match="export format"):
        export_model(model, 13, preset("tiny").table_sizes, "torchscript", "/tmp/x")
