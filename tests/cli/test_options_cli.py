"""`dlrm train` with the issue-7 flags, then `dlrm quantize`, `dlrm eval`, `dlrm export`."""

import json
import re

import torch

from dlrm.cli import main
from dlrm.training.checkpoint import load, load_model

DATA = ["--preset", "tiny", "--data", "synthetic:planted", "--train-samples", "4096",
        "--val-samples", "2048", "--quiet"]


def test_train_quantize_eval_export(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", *DATA, "--batch-size", "128", "--optimizer", "adagrad", "--lr", "0.05",
               "--qr-threshold", "250", "--qr-collisions", "5", "--max-ind-range", "600",
               "--lr-schedule", "mlperf", "--warmup-steps", "4", "--decay-start", "20",
               "--decay-steps", "8", "--memory-report", "--out", str(run)])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"memory:\s+4\s+1,000\s+120x8 \+ 5x8 ", out)  # 1000 -> hash 600 -> QR
    assert "memory: embeddings" in out and "total" in out
    saved = load(run / "last.pt")
    assert saved["model_config"]["qr_threshold"] == 250
    assert saved["model_config"]["max_ind_range"] == 600
    assert saved["train_config"]["lr_schedule"]["decay_steps"] == 8

    quantized = tmp_path / "q4.pt"
    assert main(["quantize", "--checkpoint", str(run / "last.pt"), "--out", str(quantized),
                 "--bits", "4"]) == 0
    assert "smaller" in capsys.readouterr().out
    model, ckpt = load_model(quantized)
    assert ckpt["model_kind"] == "dlrm-quantized"
    assert model.embeddings.quotient.codes.dtype == torch.uint8

    assert main(["eval", "--checkpoint", str(quantized)]) == 0
    quantized_metrics = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(run / "last.pt")]) == 0
    float_metrics = json.loads(capsys.readouterr().out)
    assert abs(quantized_metrics["auc"] - float_metrics["auc"]) < 0.01

    exported = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(quantized), "--out", str(exported)]) == 0
    assert exported.is_file() and "click probability" in capsys.readouterr().out


def test_bad_flags_name_the_field(tmp_path, capsys):
    rc = main(["train", *DATA, "--qr-threshold", "10", "--md-alpha", "0.3",
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "cannot be combined" in capsys.readouterr().err
    rc = main(["train", *DATA, "--lr-schedule", "mlperf", "--warmup-steps", "10",
               "--decay-start", "5", "--decay-steps", "5", "--out", str(tmp_path / "r")])
    assert rc == 2 and "decay_start" in capsys.readouterr().err
