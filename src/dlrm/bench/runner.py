"""One benchmark measurement: ``BenchConfig`` -> ``run_bench`` -> a JSON-able result dict.

Two kinds of step are timed, interleaved trial by trial so load changes hit both alike:

- the *fused* step, as training runs it: next batch, copy to the device, forward, BCE loss,
  backward, optimizer step (or forward only for ``mode="infer"``). Its median gives
  ``samples_per_s``.
- the *component* step, which runs the model's parts one at a time, cutting the autograd graph
  between them (each part's input is a detached leaf), so every part's forward and backward and
  both optimizer halves get their own timer. Its sum is close to, not equal to, the fused step.

Each trial is ``steps`` steps after ``warmup`` steps; results are median / min / max over trials
of the per-step mean.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dlrm.allocator import tune_cpu_allocator
from dlrm.bench import roofline
from dlrm.bench.ceilings import machine_description, measure_ceilings
from dlrm.bench.inputs import GeneratedBatches, cycle_batches
from dlrm.bench.layers import summarize_layers, time_layers
from dlrm.bench.timing import ComponentTimer, median_min_max, synchronize
from dlrm.config import DLRMConfig, get_preset, parse_arch
from dlrm.features import Batch
from dlrm.models import build_model, model_config_for
from dlrm.training.optim import build_optimizer

Progress = Callable[[dict[str, Any]], None]

# The embedding rows are updated inside embedding_bwd (the lookup's fused row update).
TRAIN_COMPONENTS = ("data", "to_device", "bottom_mlp_fwd", "embedding_fwd", "interaction_fwd",
                    "top_mlp_fwd", "loss_fwd", "loss_bwd", "top_mlp_bwd", "interaction_bwd",
                    "embedding_bwd", "bottom_mlp_bwd", "dense_optimizer")
INFER_COMPONENTS = ("data", "to_device", "bottom_mlp_fwd", "embedding_fwd", "interaction_fwd",
                    "top_mlp_fwd")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "int8")
# Batches the int8 MLPs' activation ranges are calibrated on before timing.
INT8_CALIBRATION_BATCHES = 4


@dataclass
class BenchConfig:
    """What to benchmark.

    Args:
        preset: ``tiny``, ``kaggle``, ``terabyte``, ``mlperf`` or ``mlperf-dcnv2``
            (``dlrm.config.PRESETS``, the same recipes as ``dlrm train``).
        model: the model kind (``dlrm.models.model_kinds()``; None: the preset's). DLRM and
            DLRM-DCNv2 get per-component timers and a roofline; other kinds their step time.
        table_rows_cap: cap on every table's rows, to fit memory (None: full sizes); not
            applied to a data set's tables (its ids index them whole).
        embedding_dim, bottom_mlp, top_mlp, interaction: overrides of the preset ("512-256-64";
            the bottom MLP gets the dense width prepended and D appended when missing).
        num_tables: use this many tables (the preset's, cycled); rows_per_table: all tables
            this size; ids_per_bag: every bag this size (None: the preset's, 1 = one-hot).
        ids: ``random`` (uniform) or ``planted`` (power law of exponent ``zipf``).
        mode: ``train`` or ``infer``.
        precision: ``fp32``, ``bf16``, and on CUDA ``tf32`` and ``fp16`` (autocast; fp16
            without loss scaling, for throughput only); ``int8``: inference on the CPU with
            the MLPs as ``dlrm quantize --mlp int8 --float-tables`` makes them (calibrated on
            a few of the bench's own batches), measured against the int8 GEMM peak.
        threads: torch intra-op threads (None: leave torch's default).
        tune_allocator: on CPU, keep freed memory mapped (``dlrm.allocator``), as training
            does; the ceilings are measured under the same setting.
        warmup, trials, steps: warm-up steps, trials, steps per trial.
        lr: SGD learning rate of dense and embedding parameters.
        ceilings: measure this machine's ceilings for the roofline (``quick_ceilings``: small
            sizes, for tests).
    """

    preset: str = "kaggle"
    model: str | None = None
    table_rows_cap: int | None = 1_000_000
    embedding_dim: int | None = None
    bottom_mlp: str | None = None
    top_mlp: str | None = None
    interaction: str | None = None
    num_tables: int | None = None
    rows_per_table: int | None = None
    ids_per_bag: int | None = None
    ids: str = "random"
    zipf: float = 1.1
    mode: str = "train"
    batch_size: int = 2048
    precision: str = "fp32"
    threads: int | None = None
    tune_allocator: bool = True
    device: str = "cpu"
    warmup: int = 3
    trials: int = 5
    steps: int = 5
    lr: float = 0.01
    seed: int = 0
    ceilings: bool = True
    quick_ceilings: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("train", "infer"):
            raise ValueError(f"mode {self.mode!r}: expected 'train' or 'infer'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        if self.precision == "int8" and (self.mode != "infer" or self.device != "cpu"):
            raise ValueError("precision int8 is inference on the CPU (the int8 MLPs of `dlrm "
                             "quantize --mlp int8`): use --mode infer --device cpu")
        if self.precision in ("tf32", "fp16") and not self.device.startswith("cuda"):
            raise ValueError(f"precision {self.precision} needs a CUDA device (got "
                             f"--device {self.device}); use fp32 or bf16 on CPU")
        if self.ids not in ("random", "planted"):
            raise ValueError(f"ids {self.ids!r}: expected 'random' or 'planted'")
        for name in ("batch_size", "warmup", "trials", "steps"):
            if getattr(self, name) < (0 if name == "warmup" else 1):
                raise ValueError(f"{name} = {getattr(self, name)}: must be positive")


def model_shape(cfg: BenchConfig, num_dense: int = 13,
                table_sizes: list[int] | None = None) -> tuple[DLRMConfig, list[int]]:
    """The DLRM config and bag sizes that ``cfg`` describes (``table_sizes``: from data)."""
    p = get_preset(cfg.preset)
    sizes = list(table_sizes) if table_sizes is not None else list(p.table_sizes)
    bags = p.bags() if len(p.bags()) == len(sizes) else [1] * len(sizes)
    if cfg.num_tables is not None:
        if table_sizes is not None:
            raise ValueError("num_tables cannot change the tables of a data set")
        sizes = [sizes[k % len(sizes)] for k in range(cfg.num_tables)]
        bags = [bags[k % len(bags)] for k in range(cfg.num_tables)]
    if cfg.rows_per_table is not None:
        if table_sizes is not None:
            raise ValueError("rows_per_table cannot change the tables of a data set")
        sizes = [cfg.rows_per_table] * len(sizes)
    if cfg.table_rows_cap and table_sizes is None:  # a data set's ids need its own tables
        sizes = [min(n, cfg.table_rows_cap) for n in sizes]
    if cfg.ids_per_bag is not None:
        bags = [cfg.ids_per_bag] * len(sizes)
    dim = cfg.embedding_dim or p.embedding_dim
    if cfg.bottom_mlp:
        bottom = parse_arch(cfg.bottom_mlp)
        if bottom[0] != num_dense:
            bottom = [num_dense, *bottom]
    else:
        bottom = [num_dense, *p.bottom_mlp[:-1]]
    if bottom[-1] != dim:
        bottom = [*bottom, dim]
    top = parse_arch(cfg.top_mlp) if cfg.top_mlp else list(p.top_mlp)
    config = DLRMConfig(table_sizes=sizes, embedding_dim=dim, bottom_mlp=bottom, top_mlp=top,
                        interaction=cfg.interaction or p.interaction,
                        cross_layers=p.cross_layers, low_rank=p.low_rank)
    return config, bags


def bench_model_config(cfg: BenchConfig, num_dense: int = 13,
                       table_sizes: list[int] | None = None
                       ) -> tuple[str, dict[str, Any], DLRMConfig, list[int]]:
    """(model kind, its config dict, the DLRM shape, bag sizes) that ``cfg`` describes.

    DLRM-family kinds take the shape as it is; other kinds (``dlrm.models.registry``) take
    its tables, D and the preset's widths."""
    shape, bags = model_shape(cfg, num_dense, table_sizes)
    kind = cfg.model or get_preset(cfg.preset).model
    if kind == "dlrm_dcnv2":
        shape.interaction = "cross"
    if kind in ("dlrm", "dlrm_dcnv2"):
        return kind, shape.to_dict(), shape, bags
    return kind, model_config_for(kind, cfg.preset, shape.table_sizes, num_dense,
                                  {"embedding_dim": shape.embedding_dim}), shape, bags


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class _Stepper:
    """Fused and component steps of one model, optimizer and batch stream."""

    def __init__(self, model: nn.Module, batches: Iterator[Batch], device: torch.device,
                 precision: str, mode: str, lr: float) -> None:
        self.model, self.batches, self.device = model, batches, device
        self.precision, self.train = precision, mode == "train"
        self.optimizer = build_optimizer(model, "sgd", lr) if self.train else None
        self.loss_fn = nn.BCEWithLogitsLoss()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.precision)

    def fused(self) -> float:
        """One step as training runs it (data included); returns its ms."""
        synchronize(self.device)
        t0 = time.perf_counter()
        batch = next(self.batches).to(self.device)
        m = self.model
        if self.train:
            with self._autocast():
                logits = m(batch.dense, batch.sparse)
            loss = self.loss_fn(logits.float(), batch.labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            with torch.no_grad(), self._autocast():
                m(batch.dense, batch.sparse)
        synchronize(self.device)
        return (time.perf_counter() - t0) * 1e3

    def components(self, timer: ComponentTimer) -> None:
        m, t = self.model, timer
        with t.section("data"):
            batch = next(self.batches)
        with t.section("to_device"):
            batch = batch.to(self.device)
        if not self.train:
            with torch.no_grad(), self._autocast():
                with t.section("bottom_mlp_fwd"):
                    x = m.bottom_mlp(batch.dense)
                with t.section("embedding_fwd"):
                    pooled = m.embeddings(batch.sparse)
                with t.section("interaction_fwd"):
                    z = m.interaction(x, pooled)
                with t.section("top_mlp_fwd"):
                    m.top_mlp(z)
            t.end_step()
            return
        self.optimizer.zero_grad()
        with self._autocast():
            with t.section("bottom_mlp_fwd"):
                x = m.bottom_mlp(batch.dense)
            x_leaf = x.detach().requires_grad_()
            with t.section("embedding_fwd"):
                pooled = m.embeddings(batch.sparse)
            pooled_leaf = pooled.detach().requires_grad_()
            with t.section("interaction_fwd"):
                z = m.interaction(x_leaf, pooled_leaf)
            z_leaf = z.detach().requires_grad_()
            with t.section("top_mlp_fwd"):
                logits = m.top_mlp(z_leaf).squeeze(1)
        logits_leaf = logits.detach().float().requires_grad_()
        with t.section("loss_fwd"):
            loss = self.loss_fn(logits_leaf, batch.labels)
        with t.section("loss_bwd"):
            loss.backward()
        with t.section("top_mlp_bwd"):
            logits.backward(logits_leaf.grad.to(logits.dtype))
        with t.section("interaction_bwd"):
            z.backward(z_leaf.grad)
        with t.section("embedding_bwd"):
            pooled.backward(pooled_leaf.grad)
        with t.section("bottom_mlp_bwd"):
            x.backward(x_leaf.grad)
        with t.section("dense_optimizer"):
            self.optimizer.step()  # the embedding rows were updated in embedding_bwd
        t.end_step()


def _set_threads(threads: int | None) -> int | None:
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads = {threads}: must be at least 1")
        torch.set_num_threads(threads)
    return previous


def run_bench(cfg: BenchConfig, data: Any | None = None, progress: Progress | None = None,
              ceilings: dict[str, float] | None = None, data_label: str | None = None
              ) -> dict[str, Any]:
    """Measure ``cfg``; returns the result dict that ``--json`` writes.

    Args:
        data: a ``DataSource`` to read batches from (its train split, cycled) instead of
            generated ids; its table sizes and dense width shape the model.
        ceilings: reuse ceilings measured earlier (sweeps measure them once).
        progress: called with ``{"event": "step", "done": k, "total": n}`` events.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    previous_threads = _set_threads(cfg.threads)
    if cfg.tune_allocator and device.type == "cpu":
        tune_cpu_allocator()
    try:
        return _run(cfg, device, data, progress, ceilings, data_label)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: BenchConfig, device: torch.device, data: Any | None, progress: Progress | None,
         ceilings: dict[str, float] | None, data_label: str | None) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    if data is not None:
        kind, model_config, config, bags = bench_model_config(cfg, data.num_dense,
                                                              list(data.table_sizes))
        batches: Iterator[Batch] = cycle_batches(data, cfg.batch_size)
        first = next(batches)
        bags = _observed_bag_sizes(first)
        batches = _chain(first, batches)
    else:
        kind, model_config, config, bags = bench_model_config(cfg)
        batches = GeneratedBatches(config.table_sizes, bags, config.num_dense, cfg.batch_size,
                                   cfg.ids, cfg.zipf, cfg.seed, device=device)
    previous_tf32 = None
    if device.type == "cuda":
        previous_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"
    try:
        model = build_model(kind, model_config).to(device)
        model.check_inputs = False
        model.train(cfg.mode == "train")
        if cfg.precision == "int8":
            from dlrm.models.quantized import calibrate_mlp_ranges, quantize_model

            calibration = [next(batches) for _ in range(INT8_CALIBRATION_BATCHES)]
            quantize_model(model, None, mlp="int8",
                           mlp_ranges=calibrate_mlp_ranges(model, calibration))
        components_timed = all(hasattr(model, part) for part in (
            "bottom_mlp", "embeddings", "interaction", "top_mlp"))
        stepper = _Stepper(model, batches, device, cfg.precision, cfg.mode, cfg.lr)
        total = cfg.warmup * 2 + cfg.trials * cfg.steps * 2
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress({"event": "step", "done": done, "total": total})

        if progress:
            progress({"event": "start", "total": total, "desc": f"bench {cfg.preset}"})
        timer = ComponentTimer(device)
        for _ in range(cfg.warmup):
            stepper.fused()
            tick()
            if components_timed:
                stepper.components(timer)
            tick()
        timer.discard()
        fused_trials: list[float] = []
        for _ in range(cfg.trials):
            fused_ms = []
            for _ in range(cfg.steps):
                fused_ms.append(stepper.fused())
                tick()
            fused_trials.append(statistics.fmean(fused_ms))
            for _ in range(cfg.steps):
                if components_timed:
                    stepper.components(timer)
                tick()
            if components_timed:
                timer.end_trial()
        if progress:
            progress({"event": "end"})
        components = timer.summary()
        if ceilings is None and cfg.ceilings:
            ceilings = measure_ceilings(device, config.embedding_dim, quick=cfg.quick_ceilings)
    finally:
        if previous_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    step = median_min_max(fused_trials)
    dense_params = sum(p.numel() for p in model.parameters()
                       if not getattr(p, "sparse_rows", False))
    ms = {name: c["ms"] for name, c in components.items()}
    analysis = {}
    if components_timed and ceilings:
        costs = roofline.component_costs(
            config.bottom_mlp, model.top_mlp.widths, config.embedding_dim, bags,
            cfg.batch_size, cfg.precision, config.interaction, config.interaction_self,
            cfg.mode, dense_params, cross_layers=config.cross_layers,
            cross_rank=config.low_rank or (config.num_sparse + 1) * config.embedding_dim)
        analysis = roofline.analyze(costs, ms, ceilings, cfg.precision)
    for name, entry in components.items():
        entry.update(analysis.get(name, {}))
    component_sum = sum(ms.values())
    model_ms = component_sum - ms.get("data", 0.0) - ms.get("to_device", 0.0)
    result: dict[str, Any] = {
        "model_kind": kind,
        "samples_per_s": cfg.batch_size / step["median"] * 1e3,
        "samples_per_s_min": cfg.batch_size / step["max"] * 1e3,
        "samples_per_s_max": cfg.batch_size / step["min"] * 1e3,
        "step_ms": step,
        "component_sum_ms": component_sum,
        "component_samples_per_s": cfg.batch_size / component_sum * 1e3 if component_sum else 0.0,
        "model_samples_per_s": cfg.batch_size / model_ms * 1e3 if model_ms > 0 else 0.0,
        "components": components,
        "ceilings": ceilings or {},
        "config": asdict(cfg),
        "data": data_label or (f"generated:{cfg.ids}" + (f"(zipf={cfg.zipf})"
                                                         if cfg.ids == "planted" else "")),
        "model": model_config,
        "bag_sizes": bags,
        "embedding_megabytes": sum(config.table_sizes) * config.embedding_dim * 4 / 2 ** 20,
        "machine": machine_description(device),
    }
    if ceilings:
        # Every dense layer alone at this batch: the step's distance from the matmul peak,
        # and the part of it that the library's GEMMs at these shapes already account for.
        layers = time_layers(model, cfg.batch_size, cfg.precision, ceilings, cfg.mode,
                             reps=3 if cfg.quick_ceilings else 10, seed=cfg.seed,
                             device=device)
        if layers:
            result["layers"] = layers
            result["peak"] = summarize_layers(
                layers, result["samples_per_s"], cfg.batch_size, cfg.precision, ceilings,
                cfg.mode, model_samples_per_s=result["model_samples_per_s"] or None)
    if analysis:
        ideal = sum(a["ideal_ms"] for a in analysis.values())
        result["roofline_step_ms"] = ideal
        result["fraction_of_roofline"] = ideal / model_ms if model_ms > 0 else 0.0
        result["limiter"] = max((n for n in ms if n in analysis), key=lambda n: ms[n])
    return result


def _observed_bag_sizes(batch: Batch) -> list[int]:
    """Mean ids per bag of each feature, rounded (for the roofline counts)."""
    lengths = batch.sparse.lengths.view(batch.sparse.num_features, -1).float()
    return [max(1, round(v)) for v in lengths.mean(1).tolist()]


def _chain(first: Batch, rest: Iterator[Batch]) -> Iterator[Batch]:
    yield first
    yield from rest
