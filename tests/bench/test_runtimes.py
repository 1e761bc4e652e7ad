"""The same model on eager PyTorch and ONNX Runtime: equal outputs, both rates measured."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from dlrm.bench.inputs import GeneratedBatches
from dlrm.bench.runtimes import compare_runtimes, format_comparison
from dlrm.cli import main
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
    assert "ONNX Runtime" in text and "max |p - p_PyTorch|" in text


TINY = ["--preset", "tiny", "--batch-size", "64", "--trials", "2", "--steps", "2",
        "--threads", "1", "--quiet"]


def test_bench_backend_onnxruntime_through_the_real_command(tmp_path):
    """`dlrm bench --backend onnxruntime` as a user runs it: one table on stdout (no exporter
    chatter), the same figures in --json, outputs within 1e-5."""
    out = tmp_path / "ort.json"
    proc = subprocess.run([sys.executable, "-m", "dlrm", "bench", "--backend", "onnxruntime",
                           *TINY, "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["max_abs_diff"] <= 1e-5 and result["tolerance"] == 1e-5
    assert result["model_kind"] == "dlrm" and result["batch_size"] == 64
    assert result["config"]["mode"] == "infer" and result["threads"] == 1
    assert [len(v) for v in result["samples_per_s_trials"].values()] == [2, 2]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("tiny dlrm, B=64: inference, 1 threads, median of 2 trials")
    assert lines[1].split() == ["runtime", "samples/s", "vs", "PyTorch", "max", "|p", "-",
                                "p_PyTorch|"]
    rates = result["samples_per_s"]
    assert lines[2].split()[2] == f"{rates['pytorch']:,.0f}"
    onnx_row = lines[3].split()
    assert onnx_row[:2] == ["ONNX", "Runtime"] and onnx_row[3] == f"{rates['onnxruntime']:,.0f}"
    assert onnx_row[4] == f"{result['onnxruntime_over_pytorch']:.2f}x"
    assert float(onnx_row[5]) == pytest.approx(result["max_abs_diff"], rel=0.01, abs=1e-9)
    assert "onnx_ir" not in proc.stderr and "torchvision" not in proc.stderr


def test_bench_backend_onnxruntime_on_a_checkpoint_of_another_kind(tmp_path, capsys):
    from dlrm.training.checkpoint import FORMAT, save_atomic

    config = model_config_for("deepfm", "tiny", list(preset("tiny").table_sizes), 13)
    torch.manual_seed(0)
    model = build_model("deepfm", config)
    path = tmp_path / "last.pt"
    save_atomic({"format": FORMAT, "model_kind": "deepfm", "model_config": config,
                 "model": model.state_dict()}, path)
    out = tmp_path / "r.json"
    assert main(["bench", "--backend", "onnxruntime", "--checkpoint", str(path),
                 "--ids-per-bag", "3", *TINY, "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}, B=64: inference")
    result = json.loads(out.read_text())
    assert result["model_kind"] == "DeepFM" and result["max_abs_diff"] <= 1e-5
    assert main(["bench", "--backend", "onnxruntime", "--checkpoint", str(path),
                 "--embedding-dim", "4", *TINY]) == 2
    assert "--embedding-dim: the model comes from --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--mode", "train"], "--backend onnxruntime compares inference"),
    (["--precision", "bf16"], "compares fp32 graphs"),
    (["--out", "charts"], "--out belongs to --backend pytorch"),
    (["--peer", "torchrec"], "--peer belongs to --backend pytorch"),
])
def test_bench_backend_onnxruntime_refusals_are_one_line(flags, message, capsys):
    assert main(["bench", "--backend", "onnxruntime", *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_other_refusals_are_one_line(tmp_path, capsys):
    assert main(["bench", "sweep", "--vary", "batch_size=8,16", "--backend", "onnxruntime",
                 *TINY]) == 2
    assert "--backend onnxruntime belongs to `dlrm bench`" in capsys.readouterr().err
    assert main(["bench", "--checkpoint", str(tmp_path / "x.pt"), *TINY]) == 2
    assert "--checkpoint belongs to `dlrm bench loadgen`" in capsys.readouterr().err


def test_outputs_beyond_the_tolerance_fail_the_command(monkeypatch, tmp_path, capsys):
    """The check that guards the comparison: a difference above the tolerance is an error
    (exit 2) naming it, after the table and --json are written for inspection."""
    import dlrm.bench.runtimes as runtimes

    monkeypatch.setattr(runtimes, "OUTPUT_TOLERANCE", -1.0)  # any difference is too large
    out = tmp_path / "r.json"
    assert main(["bench", "--backend", "onnxruntime", *TINY, "--json", str(out)]) == 2
    captured = capsys.readouterr()
    diff = json.loads(out.read_text())["max_abs_diff"]
    assert "ONNX Runtime 1." in captured.out
    assert captured.err.count("\n") == 1
    assert f"differ from eager PyTorch's by up to {diff:.3g}, more than the tolerance -1" \
        in captured.err
    with pytest.raises(RuntimeError, match="up to 0.002"):
        runtimes.check_agreement({"max_abs_diff": 2e-3})
    with pytest.raises(RuntimeError):
        runtimes.check_agreement({"max_abs_diff": float("nan")})
    runtimes.check_agreement({"max_abs_diff": 2e-3}, tolerance=1e-2)


def test_bench_backend_onnxruntime_on_a_data_set(tmp_path, capsys):
    """Batches from a data set (its train split, in order) and a model of its tables."""
    out = tmp_path / "r.json"
    assert main(["bench", "--backend", "onnxruntime", "--data", "synthetic:planted",
                 "--model", "dcn", *TINY, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["data"] == "synthetic:planted" and result["model_kind"] == "dcn"
    assert result["model"]["table_sizes"][2] == 100_000 and result["max_abs_diff"] <= 1e-5
    assert "tiny dcn, B=64" in capsys.readouterr().out
