"""`dlrm train` with the issue-7 flags, then `dlrm quantize`, `dlrm eval`, `dlrm export`."""

import json
import re

import pytest
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


def test_quantize_int8_mlps_keeps_the_auc(tmp_path, capsys):
    """`dlrm quantize --mlp int8`: the MLPs' hidden layers run as int8 GEMMs, calibrated on
    the checkpoint's own training rows, and the model's test AUC moves by under 0.001."""
    from dlrm.models.quantized import Int8Linear

    run = tmp_path / "run"
    assert main(["train", *DATA, "--train-samples", "40000", "--test-samples", "20000",
                 "--batch-size", "256", "--optimizer", "adagrad", "--lr", "0.05",
                 "--max-samples", "80000", "--out", str(run)]) == 0
    quantized = tmp_path / "int8.pt"
    assert main(["quantize", "--checkpoint", str(run / "last.pt"), "--out", str(quantized),
                 "--mlp", "int8", "--calibration-rows", "2048"]) == 0
    assert "int8 MLPs calibrated on 2,048 training rows" in capsys.readouterr().out
    model, ckpt = load_model(quantized)
    assert ckpt["model_config"]["mlp"] == "int8"
    assert [type(m) for m in model.top_mlp.hidden] == [Int8Linear] * len(model.top_mlp.hidden)
    assert model.top_mlp.hidden and model.bottom_mlp.hidden
    metrics = {}
    for name, path in (("int8", quantized), ("float", run / "last.pt")):
        assert main(["eval", "--checkpoint", str(path), "--split", "test"]) == 0
        metrics[name] = json.loads(capsys.readouterr().out)
    assert metrics["float"]["auc"] > 0.7  # a trained model, so the comparison means something
    assert abs(metrics["int8"]["auc"] - metrics["float"]["auc"]) < 0.001
    assert abs(metrics["int8"]["logloss"] - metrics["float"]["logloss"]) < 0.002
    # --float-tables: int8 MLPs over the float tables, the same MLP codes.
    float_tables = tmp_path / "int8-float-tables.pt"
    assert main(["quantize", "--checkpoint", str(run / "last.pt"), "--out", str(float_tables),
                 "--mlp", "int8", "--float-tables", "--calibration-rows", "2048"]) == 0
    assert "float embeddings; int8 MLPs" in capsys.readouterr().out
    mixed, _ = load_model(float_tables)
    assert type(mixed.embeddings).__name__ == "FusedEmbeddingBag"
    assert torch.equal(mixed.top_mlp.hidden[0].weight, model.top_mlp.hidden[0].weight)
    assert main(["eval", "--checkpoint", str(float_tables), "--split", "test"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["auc"] - metrics["float"]["auc"]) < 0.001
    assert main(["quantize", "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "none.pt"), "--float-tables"]) == 2
    assert "leaves nothing to quantize" in capsys.readouterr().err
    # Not exportable: said plainly, nothing written.
    assert main(["export", "--checkpoint", str(quantized), "--out",
                 str(tmp_path / "int8.pt2")]) == 2
    assert "which ONNX and a portable .pt2 do not take" in capsys.readouterr().err
    assert not (tmp_path / "int8.pt2").exists()


def test_ensemble_of_seeds_is_their_mean_probability(tmp_path, capsys):
    """`dlrm ensemble`: two seeds' checkpoints as one model whose probability is the mean of
    theirs (checked against the members scored one by one, in float64), usable by `dlrm eval`
    and `dlrm export`; members of other data are refused, and so is an --out that is one of
    the members."""
    import numpy as np

    from dlrm.data import open_data
    from dlrm.metrics import roc_auc
    from dlrm.training.loop import score_split

    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        assert main(["train", *DATA, "--test-samples", "4000", "--batch-size", "256",
                     "--optimizer", "adagrad", "--lr", "0.05", "--seed", str(seed),
                     "--out", str(run)]) == 0
        runs.append(run / "last.pt")
    capsys.readouterr()
    out = tmp_path / "ensemble.pt"
    assert main(["ensemble", "--checkpoint", str(runs[0]), "--checkpoint", str(runs[1]),
                 "--out", str(out)]) == 0
    assert "the mean click probability of 2 models (dlrm, dlrm" in capsys.readouterr().out
    ensemble, ckpt = load_model(out)
    assert ckpt["model_kind"] == "ensemble" and len(ensemble.members) == 2
    data = open_data(ckpt["data_spec"])
    members = [score_split(load_model(r)[0], data, "test").tensors() for r in runs]
    logits, labels = score_split(ensemble, data, "test").tensors()
    want = torch.stack([torch.sigmoid(m[0].double()) for m in members]).mean(0)
    np.testing.assert_allclose(torch.sigmoid(logits.double()), want, rtol=1e-5, atol=1e-6)
    assert main(["eval", "--checkpoint", str(out), "--split", "test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["auc"] == pytest.approx(roc_auc(want, labels), abs=1e-6)
    # Extreme logits stay finite: the mean of sigmoid(+-60) is 1/2, a logit of 0.
    with torch.no_grad():
        for member, value in zip(ensemble.members, (60.0, -60.0)):
            member.top_mlp[-1].bias.fill_(value)
        batch = next(iter(data.batches("test", 8)))
        assert torch.allclose(ensemble(batch.dense, batch.sparse), torch.zeros(8), atol=1e-4)
    exported = tmp_path / "ensemble.pt2"
    assert main(["export", "--checkpoint", str(out), "--out", str(exported)]) == 0
    assert exported.is_file()
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", *DATA, "--data-seed", "7", "--batch-size", "256", "--max-samples",
                 "1024", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["ensemble", "--checkpoint", str(runs[0]), "--checkpoint",
                 str(other / "last.pt"), "--out", str(tmp_path / "mixed.pt")]) == 2
    assert "was trained on other data" in capsys.readouterr().err
    assert main(["ensemble", "--checkpoint", str(runs[0]), "--checkpoint", str(runs[1]),
                 "--out", str(runs[1]), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert not (tmp_path / "mixed.pt").exists()
