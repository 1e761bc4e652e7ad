"""The same model on eager PyTorch and ONNX Runtime: equal outputs, both rates measured."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dlrm.bench.inputs import GeneratedBatches
from dlrm.bench.runtimes import compare_runtimes, format_comparison
from dlrm.config import preset
from dlrm.models import build_model, model_config_for

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
pytestmark = [pytest.mark.skipif(not HAVE_ONNX, reason="needs the optional extra `onnx` "
                                 "(onnx, onnxscript, onnxruntime)"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("kind,bags", [("dlrm", 1), ("dlrm", 3), ("dcnv2", 1)])
def test_onnxruntime_gives_the_eager_outputs(kind, bags):
    sizes = list(preset("tiny").table_sizes)
    torch.manual_seed(0)
    model = build_model(kind, model_config_for(kind, "tiny", sizes, 13)).eval()
    gen = GeneratedBatches(sizes, [bags] * len(sizes), 13, 64, "planted", seed=1)
    batches = [next(gen) for _ in range(3)]
    result = compare_runtimes(model, 13, sizes, batches, trials=2, steps=2)
    assert result["max_abs_diff"] <= 1e-5, result["max_abs_diff"]
    assert result["samples_per_s"]["pytorch"] > 0 and result["samples_per_s"]["onnxruntime"] > 0
    assert len(result["samples_per_s_trials"]["onnxruntime"]) == 2
    text = format_comparison(result, "tiny")
    assert "ONNX Runtime" in text and "largest |PyTorch - ONNX Runtime|" in text
