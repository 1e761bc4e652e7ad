"""The same trained model on two runtimes: eager PyTorch and ONNX Runtime, side by side.

The original DLRM benchmark ran on PyTorch and on Caffe2; Caffe2's successor for serving is
ONNX Runtime. ``compare_runtimes`` exports the model to ONNX (``dlrm.export``: the dlrm
operators decomposed into ATen ops), opens it in an ONNX Runtime session with as many
intra-op threads as torch uses, and runs both on the same batches of the serving signature
``(dense (B, 13), values (N,), offsets (F*B + 1,)) -> click probability (B,)``: the largest
difference between the two outputs, and inference samples/s of each, the median of
``trials`` trials of ``steps`` batches, the runtimes alternating trial by trial so a slow
spell of a shared machine hits both alike. Needs the optional extra ``onnx``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.export import ServingDLRM, export_model
from dlrm.features import Batch

BACKENDS = ("pytorch", "onnxruntime")


def onnxruntime_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported model, ``threads`` intra-op threads
    (default: torch's)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeError("ONNX Runtime needs the optional extra: pip install 'dlrm[onnx]' "
                           "(onnx, onnxscript, onnxruntime)") from err
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(batch: Batch) -> dict[str, Any]:
    return {"dense": batch.dense.numpy(), "values": batch.sparse.values.numpy(),
            "offsets": batch.sparse.offsets.numpy()}


def _rate(fn: Callable[[Batch], Any], batches: list[Batch], steps: int) -> float:
    tick = time.perf_counter()
    for k in range(steps):
        fn(batches[k % len(batches)])
    samples = sum(len(batches[k % len(batches)]) for k in range(steps))
    return samples / (time.perf_counter() - tick)


def compare_runtimes(model: nn.Module, num_dense: int, table_sizes: list[int],
                     batches: list[Batch], trials: int = 5, steps: int = 10,
                     onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Outputs and inference speed of ``model`` in eager PyTorch and in ONNX Runtime.

    Returns ``max_abs_diff`` (probabilities, over every batch), ``samples_per_s`` per backend
    (median over trials), ``onnxruntime_over_pytorch``, the ONNX file's size and the versions.
    """
    if not batches:
        raise ValueError("compare_runtimes needs at least one batch")
    serving = ServingDLRM(model, len(table_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
        export_model(model, num_dense, list(table_sizes), "onnx", path)
        session = onnxruntime_session(path)
        size = path.stat().st_size

        @torch.no_grad()
        def eager(batch: Batch) -> torch.Tensor:
            return serving(batch.dense, batch.sparse.values, batch.sparse.offsets)

        def ort(batch: Batch) -> torch.Tensor:
            return torch.from_numpy(session.run(None, _feeds(batch))[0])

        diff = max(float((eager(b) - ort(b)).abs().max()) for b in batches)
        runs: dict[str, list[float]] = {name: [] for name in BACKENDS}
        for _ in range(trials):
            for name, fn in (("pytorch", eager), ("onnxruntime", ort)):
                fn(batches[0])  # warm: the first call of a trial pays for cold caches
                runs[name].append(_rate(fn, batches, steps))
    import onnxruntime

    rates = {name: statistics.median(r) for name, r in runs.items()}
    return {"max_abs_diff": diff, "samples_per_s": rates,
            "samples_per_s_trials": runs,
            "onnxruntime_over_pytorch": rates["onnxruntime"] / rates["pytorch"],
            "onnx_bytes": size, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}


def format_comparison(result: dict[str, Any], label: str) -> str:
    """The one table ``dlrm bench --backend onnxruntime`` prints."""
    rates = result["samples_per_s"]
    lines = [f"{label}: inference, {result['threads']} threads, the same batches on both "
             f"runtimes",
             f"{'runtime':<22} {'samples/s':>12} {'vs PyTorch':>11}",
             f"{'PyTorch ' + result['versions']['torch']:<22} {rates['pytorch']:>12,.0f} "
             f"{1.0:>10.2f}x",
             f"{'ONNX Runtime ' + result['versions']['onnxruntime']:<22} "
             f"{rates['onnxruntime']:>12,.0f} {result['onnxruntime_over_pytorch']:>10.2f}x",
             f"largest |PyTorch - ONNX Runtime| click probability: "
             f"{result['max_abs_diff']:.2e}"]
    return "\n".join(lines)
