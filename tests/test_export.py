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


def naive_bag_sums(weight, values, offsets, table_offsets):
    """pooled[b, f] = sum of weight[table_offsets[f] + id] over bag (f, b), one bag at a time."""
    num_features = table_offsets.numel() - 1
    batch = (offsets.numel() - 1) // num_features
    out = torch.zeros(batch, num_features, weight.shape[1], dtype=torch.float64)
    for f in range(num_features):
        for b in range(batch):
            k = f * batch + b
            for i in values[offsets[k]:offsets[k + 1]].tolist():
                out[b, f] += weight[table_offsets[f] + i].double()
    return out


def test_loop_free_export_lookup_matches_a_naive_sum():
    """The lookup serving exports hold (gather + one scatter-add, no per-bag loop) sums every
    bag, empty bags and bags at the end included."""
    from dlrm.ops.embedding import _lookup_export, bag_of_values

    gen = torch.Generator().manual_seed(0)
    sizes = [5, 9, 3]
    table_offsets = torch.tensor([0, 5, 14, 17])
    weight = torch.randn(17, 4, generator=gen)
    lengths = torch.tensor([2, 0, 3, 1, 0, 4, 0, 1, 2, 5, 0, 0])  # F=3, B=4
    values = torch.cat([torch.randint(0, sizes[k // 4], (int(n),), generator=gen)
                        for k, n in enumerate(lengths)])
    sparse = SparseFeatures.from_lengths(values, lengths, 3)
    assert bag_of_values(sparse.offsets, values.numel()).tolist() == \
        torch.repeat_interleave(torch.arange(12), lengths).tolist()
    pooled, _ = _lookup_export(weight, sparse.values, sparse.offsets, table_offsets, False)
    expected = naive_bag_sums(weight, sparse.values, sparse.offsets, table_offsets)
    torch.testing.assert_close(pooled.double(), expected, atol=1e-6, rtol=1e-6)
    ids = torch.stack([torch.randint(0, n, (4,), generator=gen) for n in sizes], 1)  # one-hot
    one_hot = SparseFeatures.from_ids(ids)
    pooled, _ = _lookup_export(weight, one_hot.values, one_hot.offsets, table_offsets, True)
    torch.testing.assert_close(pooled.double(), naive_bag_sums(
        weight, one_hot.values, one_hot.offsets, table_offsets), atol=1e-6, rtol=1e-6)


def save_checkpoint(path, kind, config, model):
    from dlrm.training.checkpoint import FORMAT, save_atomic

    save_atomic({"format": FORMAT, "model_kind": kind, "model_config": config,
                 "model": model.state_dict(), "data_spec": {"kind": "synthetic"}}, path)
    return str(path)


def tiny_model(kind):
    from dlrm.models import build_model, model_config_for

    config = model_config_for(kind, "tiny", list(preset("tiny").table_sizes), 13)
    torch.manual_seed(0)
    return config, build_model(kind, config).eval()


@pytest.mark.skipif(not HAVE_ONNX, reason="ONNX export needs the optional extra: "
                    "pip install 'dlrm[onnx]' (onnx, onnxscript, onnxruntime)")
@pytest.mark.parametrize("kind", ["dlrm", "dlrm_dcnv2", "dcn", "dcnv2", "wdl", "deepfm", "lr"])
def test_cli_exports_every_model_kind(tmp_path, kind, capsys):
    """`dlrm export` of each kind's checkpoint, both formats: ONNX Runtime's and the .pt2
    program's probabilities equal the eager model's, multi-hot and empty bags included; the
    ONNX file records the serving shape and has no per-bag Loop."""
    import onnx

    from dlrm.cli import main
    from dlrm.export import onnx_serving_shape, onnxruntime_session
    from dlrm.models import model_kinds

    assert kind in model_kinds()
    config, model = tiny_model(kind)
    checkpoint = save_checkpoint(tmp_path / "last.pt", kind, config, model)
    for fmt, name in (("onnx", "model.onnx"), ("export", "model.pt2")):
        out = tmp_path / name
        assert main(["export", "--checkpoint", checkpoint, "--out", str(out),
                     "--format", fmt]) == 0
        assert f"wrote {out} ({fmt}, model kind {kind})" in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["last.pt", "model.onnx", "model.pt2"][:2 if fmt == "onnx" else 3])
        check_against_eager(model, preset("tiny"), fmt, out)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert not [n.op_type for n in graph.node if n.op_type in ("Loop", "Scan")]
    assert onnx_serving_shape(onnxruntime_session(tmp_path / "model.onnx")) == (
        13, list(preset("tiny").table_sizes))
    # The file is never replaced without --overwrite.
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "model.onnx"),
                 "--format", "onnx"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_ONNX, reason="ONNX export needs the optional extra: "
                    "pip install 'dlrm[onnx]' (onnx, onnxscript, onnxruntime)")
def test_cli_exports_a_quantized_baseline(tmp_path, capsys):
    from dlrm.cli import main
    from dlrm.training.checkpoint import load_model

    config, model = tiny_model("deepfm")
    checkpoint = save_checkpoint(tmp_path / "last.pt", "deepfm", config, model)
    assert main(["quantize", "--checkpoint", checkpoint, "--out", str(tmp_path / "q.pt"),
                 "--bits", "4"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "q.pt"), "--out",
                 str(tmp_path / "q.onnx"), "--format", "onnx"]) == 0
    assert "model kind dlrm-quantized" in capsys.readouterr().out
    quantized, _ = load_model(tmp_path / "q.pt")
    check_against_eager(quantized, preset("tiny"), "onnx", tmp_path / "q.onnx")
