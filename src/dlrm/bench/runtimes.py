"""The same model on two runtimes: eager PyTorch and ONNX Runtime, side by side.

The original DLRM benchmark ran on PyTorch and on Caffe2; Caffe2's successor for serving is
ONNX Runtime. ``compare_runtimes`` exports the model to ONNX (``dlrm.export``: the dlrm
operators decomposed into ATen ops), opens it in an ONNX Runtime session with as many
intra-op threads as torch uses, and runs both on the same batches of the serving signature
``(dense (B, 13), values (N,), offsets (F*B + 1,)) -> click probability (B,)``: the largest
difference between the two outputs, and inference samples/s of each, the median of
``trials`` trials of ``steps`` batches, the runtimes alternating trial by trial so a slow
spell of a shared machine hits both alike. Needs the optional extra ``onnx``.

``run_runtime_comparison`` is ``dlrm bench --backend onnxruntime``: the bench's model (built
from a ``BenchConfig``, or a trained one) on the bench's batches (generated, or a data set's);
``check_agreement`` refuses outputs more than ``OUTPUT_TOLERANCE`` apart.

Example:
    >>> result = run_runtime_comparison(BenchConfig(preset="tiny", batch_size=256))
    >>> print(format_comparison(result))
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.allocator import tune_cpu_allocator
from dlrm.bench.ceilings import machine_description
from dlrm.bench.inputs import GeneratedBatches, cycle_batches
from dlrm.bench.runner import BenchConfig, _set_threads, bench_model_config
from dlrm.config import get_preset
from dlrm.export import (
    ServingDLRM,
    export_model,
    import_onnxruntime,
    onnxruntime_session,
    serving_shape,
)
from dlrm.features import Batch
from dlrm.models import build_model

BACKENDS = ("pytorch", "onnxruntime")
# Largest |eager - ONNX Runtime| click probability accepted: fp32 ops in another order differ
# by ~1e-7; a wrong graph differs by far more.
OUTPUT_TOLERANCE = 1e-5
Progress = Callable[[dict[str, Any]], None]

__all__ = ["BACKENDS", "OUTPUT_TOLERANCE", "compare_runtimes", "run_runtime_comparison",
           "check_agreement", "format_comparison", "onnxruntime_session"]


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
                     onnx_path: str | Path | None = None, warmup: int = 1,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Outputs and inference speed of ``model`` in eager PyTorch and in ONNX Runtime.

    Each trial runs ``warmup`` untimed batches, then ``steps`` timed ones, on each runtime in
    turn. ``progress`` gets ``start`` / ``step`` / ``end`` events (export, output check, each
    timed run). Returns ``max_abs_diff`` (probabilities, over every batch), ``samples_per_s``
    per backend (median over trials), ``onnxruntime_over_pytorch``, the ONNX file's size and
    the versions.
    """
    if not batches:
        raise ValueError("compare_runtimes needs at least one batch")
    onnxruntime = import_onnxruntime()  # before the export: the extra may be missing

    def tick(event: str, **fields: Any) -> None:
        if progress:
            progress({"event": event, **fields})

    tick("start", total=2 + 2 * trials, desc="pytorch vs onnxruntime")
    serving = ServingDLRM(model, len(table_sizes))
    with tempfile.TemporaryDirectory(prefix="dlrm-onnx-") as tmp:
        path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
        export_model(model, num_dense, list(table_sizes), "onnx", path)
        session = onnxruntime_session(path)
        size = path.stat().st_size
        tick("step")

        @torch.no_grad()
        def eager(batch: Batch) -> torch.Tensor:
            return serving(batch.dense, batch.sparse.values, batch.sparse.offsets)

        def ort(batch: Batch) -> torch.Tensor:
            return torch.from_numpy(session.run(None, _feeds(batch))[0])

        diff = max(float((eager(b) - ort(b)).abs().max()) for b in batches)
        tick("step")
        runs: dict[str, list[float]] = {name: [] for name in BACKENDS}
        for _ in range(trials):
            for name, fn in (("pytorch", eager), ("onnxruntime", ort)):
                for k in range(warmup):  # the first calls of a trial pay for cold caches
                    fn(batches[k % len(batches)])
                runs[name].append(_rate(fn, batches, steps))
                tick("step")
    tick("end")
    rates = {name: statistics.median(r) for name, r in runs.items()}
    return {"max_abs_diff": diff, "samples_per_s": rates,
            "samples_per_s_trials": runs,
            "onnxruntime_over_pytorch": rates["onnxruntime"] / rates["pytorch"],
            "onnx_bytes": size, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}


def run_runtime_comparison(cfg: BenchConfig, model: nn.Module | None = None,
                           data: Any | None = None, progress: Progress | None = None,
                           data_label: str | None = None, model_label: str | None = None
                           ) -> dict[str, Any]:
    """``dlrm bench --backend onnxruntime``: ``compare_runtimes`` on the bench's model and
    batches; returns its result with the run's settings (what ``--json`` writes).

    Args:
        cfg: the bench settings: the model's shape (when ``model`` is None), the batches
            (``batch_size``, ``ids``, ``zipf``, ``seed``, bag sizes), ``trials``, ``steps``
            (also the number of distinct batches, cycled), ``warmup``, ``threads``. CPU and
            fp32 only: the exported graph is fp32 and runs on ONNX Runtime's CPU provider.
        model: a trained model (any kind; ``--checkpoint``), instead of one built from
            ``cfg`` with ``cfg.seed``; generated batches then take its tables.
        data: a ``DataSource`` whose train split gives the batches (in order) instead of
            generated ids; its tables must be the model's.
        model_label: how the table names the model (default: preset, kind).
    """
    if cfg.device != "cpu":
        raise ValueError(f"--backend onnxruntime runs on the CPU (ONNX Runtime's CPU "
                         f"provider); got --device {cfg.device}")
    if cfg.precision != "fp32":
        raise ValueError(f"--backend onnxruntime compares fp32 graphs; got --precision "
                         f"{cfg.precision}")
    previous_threads = _set_threads(cfg.threads)
    if cfg.tune_allocator:
        tune_cpu_allocator()
    try:
        torch.manual_seed(cfg.seed)
        if model is None:
            num_dense = data.num_dense if data is not None else 13
            sizes = list(data.table_sizes) if data is not None else None
            kind, model_config, _, bags = bench_model_config(cfg, num_dense, sizes)
            model = build_model(kind, model_config)
            model_label = model_label or f"{cfg.preset} {kind}"
        else:
            kind, model_config = type(model).__name__, None
            bags = _bag_sizes(cfg, len(serving_shape(model)[1]))
        model.eval()
        num_dense, sizes = serving_shape(model)
        if data is not None:
            if list(data.table_sizes) != sizes or data.num_dense != num_dense:
                raise ValueError(f"the data has {data.num_dense} dense features and tables "
                                 f"{list(data.table_sizes)}; the model takes {num_dense} and "
                                 f"{sizes}")
            stream = cycle_batches(data, cfg.batch_size)
        else:
            stream = GeneratedBatches(sizes, bags, num_dense, cfg.batch_size, cfg.ids,
                                      cfg.zipf, cfg.seed)
        batches = [next(stream) for _ in range(cfg.steps)]
        result = compare_runtimes(model, num_dense, sizes, batches, trials=cfg.trials,
                                  steps=cfg.steps, warmup=cfg.warmup, progress=progress)
        machine = machine_description(torch.device("cpu"))
    finally:
        torch.set_num_threads(previous_threads)
    result.update({
        "label": f"{model_label or kind}, B={cfg.batch_size}", "model_kind": kind,
        "model": model_config, "batch_size": cfg.batch_size, "tolerance": OUTPUT_TOLERANCE,
        "data": data_label or (f"generated:{cfg.ids}" + (f"(zipf={cfg.zipf})"
                                                         if cfg.ids == "planted" else "")),
        "config": asdict(cfg), "machine": machine})
    return result


def _bag_sizes(cfg: BenchConfig, num_features: int) -> list[int]:
    """Ids per bag for generated batches of a given model: ``ids_per_bag``, else the preset's
    bags when it has as many features, else one-hot."""
    if cfg.ids_per_bag is not None:
        return [cfg.ids_per_bag] * num_features
    bags = get_preset(cfg.preset).bags()
    return list(bags) if len(bags) == num_features else [1] * num_features


def check_agreement(result: dict[str, Any], tolerance: float | None = None) -> None:
    """Raise ``RuntimeError`` naming the difference when ONNX Runtime's click probabilities
    are more than ``tolerance`` (default ``OUTPUT_TOLERANCE``) from eager PyTorch's."""
    tolerance = OUTPUT_TOLERANCE if tolerance is None else tolerance
    diff = result["max_abs_diff"]
    if not diff <= tolerance:  # NaN fails too
        raise RuntimeError(f"ONNX Runtime's click probabilities differ from eager PyTorch's by "
                           f"up to {diff:.3g}, more than the tolerance {tolerance:g}: the "
                           f"exported graph does not compute the model")


def format_comparison(result: dict[str, Any], label: str | None = None) -> str:
    """The one table ``dlrm bench --backend onnxruntime`` prints."""
    rates = result["samples_per_s"]
    trials = len(result["samples_per_s_trials"]["pytorch"])
    lines = [f"{label or result.get('label', 'model')}: inference, {result['threads']} threads, "
             f"median of {trials} trials, the same batches on both runtimes",
             f"{'runtime':<22} {'samples/s':>12} {'vs PyTorch':>11} {'max |p - p_PyTorch|':>20}",
             f"{'PyTorch ' + result['versions']['torch']:<22} {rates['pytorch']:>12,.0f} "
             f"{1.0:>10.2f}x {'-':>20}",
             f"{'ONNX Runtime ' + result['versions']['onnxruntime']:<22} "
             f"{rates['onnxruntime']:>12,.0f} {result['onnxruntime_over_pytorch']:>10.2f}x "
             f"{result['max_abs_diff']:>20.2e}",
             f"p: click probability, largest difference over every batch (tolerance "
             f"{result.get('tolerance', OUTPUT_TOLERANCE):g})"]
    return "\n".join(lines)
