"""Every model kind trains on CUDA through `dlrm train` as it does on the CPU.

Same seed, data and settings on both devices: the per-step training losses agree to float32
rounding (TF32 is off for fp32 runs, PyTorch's default), the validation AUC too, and the CUDA
run's checkpoint evaluates on the CPU to the AUC it reported. Runs where a GPU is
(benchmarks/gpu.sh runs `pytest -k cuda`); skipped elsewhere.
"""

import json

import pytest
import torch

from dlrm.cli import main

CASES = [  # (kind, optimizer, precision)
    ("dlrm", "adagrad", "fp32"), ("dlrm", "sgd", "fp32"), ("dlrm", "adam", "fp32"),
    ("dlrm", "adagrad", "bf16"), ("dlrm_dcnv2", "adagrad", "fp32"),
    ("dcn", "adagrad", "fp32"), ("dcnv2", "adagrad", "fp32"), ("wdl", "adagrad", "fp32"),
    ("deepfm", "adagrad", "fp32"), ("lr", "adagrad", "fp32"), ("lr", "lbfgs", "fp32"),
]


def train_losses(tmp_path, device: str, kind: str, optimizer: str, precision: str
                 ) -> tuple[list[float], dict]:
    out = tmp_path / f"{kind}-{optimizer}-{precision}-{device.replace(':', '')}"
    lr = {"sgd": "0.1", "adam": "0.001", "lbfgs": "1"}.get(optimizer, "0.05")
    args = ["train", "--model", kind, "--preset", "tiny", "--device", device,
            "--train-samples", "6000", "--val-samples", "3000", "--test-samples", "0",
            "--batch-size", "500", "--epochs", "1", "--log-every", "1",
            "--optimizer", optimizer, "--lr", lr, "--precision", precision, "--quiet",
            "--out", str(out)]
    if optimizer == "lbfgs":
        args[args.index("--batch-size") + 1] = "6000"
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "train"]
    return losses, json.loads((out / "summary.json").read_text()) | {"run": str(out)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("kind", "optimizer", "precision"), CASES)
def test_cuda_training_matches_the_cpu(tmp_path, capsys, kind, optimizer, precision):
    cpu_losses, cpu = train_losses(tmp_path, "cpu", kind, optimizer, precision)
    gpu_losses, gpu = train_losses(tmp_path, "cuda", kind, optimizer, precision)
    assert len(gpu_losses) == len(cpu_losses) >= 1
    # bf16 rounds differently on the two devices' kernels: a looser bound there.
    rtol = 2e-2 if precision == "bf16" else 1e-3
    assert gpu_losses == pytest.approx(cpu_losses, rel=rtol)
    assert gpu["val_auc"] == pytest.approx(cpu["val_auc"], abs=5 * rtol)
    assert gpu["native_kernels"] is False and cpu["native_kernels"] is not None
    # A checkpoint trained on the GPU evaluates on the CPU (eval's default device).
    capsys.readouterr()
    assert main(["eval", "--checkpoint", f"{gpu['run']}/last.pt"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_cpu["samples"] == 3000
    assert on_cpu["auc"] == pytest.approx(gpu["val_auc"], abs=2e-3)
