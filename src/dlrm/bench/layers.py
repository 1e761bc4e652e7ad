"""How far from the matmul peak a model's dense layers run, one layer at a time.

The MLPs are most of a DLRM step's FLOPs, so "samples/s x matmul FLOPs per sample / peak" is
how close a step runs to the machine's limit (``fraction_of_peak``). It is capped by how fast
the library's GEMMs run at each layer's shape: a 2048 x 13 @ 13 x 512 product cannot reach the
peak that the square ``n x n`` matmul of ``ceilings`` does. ``time_layers`` measures that cap:
every ``nn.Linear`` of the model, at the step's batch and precision, as the three GEMMs a
training step runs (forward ``Y = X W^T + b``; backward ``dX = dY W`` and ``dW = dY^T X``, with
the bias gradient) on the same tensors every time, so each is the best the library does at
that shape, without our ops, autograd or the rest of the step around it.

Per layer i -> o at batch B: forward 2Bio FLOPs; backward 4Bio (2Bio without ``dX``: the
first layer of the bottom MLP, whose input is the data). Bytes are the compulsory ones (as in
``roofline``), so ``bound`` says whether the layer could be memory-bound at all; ``shape``
names the dimension that keeps a compute-bound layer below the peak (K or N under
``NARROW``: the GEMM's tiles are mostly empty, or its output is written for little work).

Example:
    >>> layers = time_layers(build_model("dlrm", preset("tiny").to_dict()), 2048, "fp32",
    ...                      ceilings)
    >>> [(row["name"], round(row["fwd_fraction"], 2)) for row in layers]
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from dlrm.bench.roofline import WEIGHT_BYTES, activation_bytes, peak_gflops
from dlrm.bench.timing import median_ms
from dlrm.ops.quantize import quantize_u8

# A GEMM dimension below this many elements leaves the CPU kernels' register tiles (16-64
# wide with AVX-512) partly empty: such layers are flagged in the table's shape column.
NARROW = 64
# The layers whose input is the data: no input gradient is computed for them.
DATA_INPUT_LAYERS = ("bottom_mlp.0",)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every dense layer in the model (``nn.Linear``, and the
    ``Int8Linear`` of int8 MLPs), in definition order."""
    from dlrm.models.quantized import Int8Linear

    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, Int8Linear))]


def _shape(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.weight.shape[1], layer.weight.shape[0]  # Int8Linear: (out, in) codes


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    torch.addmm(bias, x, weight.t())  # Y (B, N)


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, input_grad: bool
              ) -> None:
    torch.mm(grad.t(), x)  # dW (N, K)
    grad.sum(0)  # db (N,)
    if input_grad:
        torch.mm(grad, weight)  # dX (B, K)


def layer_flops(batch: int, fan_in: int, fan_out: int, input_grad: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of one Linear layer: the matmuls, biases counted."""
    fwd = 2 * batch * fan_in * fan_out + batch * fan_out
    bwd = 2 * batch * fan_in * fan_out + batch * fan_out
    if input_grad:
        bwd += 2 * batch * fan_in * fan_out
    return fwd, bwd


def _shape_note(fan_in: int, fan_out: int) -> str:
    narrow = [f"{label}={n}" for label, n in (("K", fan_in), ("N", fan_out)) if n < NARROW]
    return "narrow " + ", ".join(narrow) if narrow else "wide"


@torch.no_grad()
def time_layers(model: nn.Module, batch: int, precision: str, ceilings: dict[str, float],
                mode: str = "train", reps: int = 10, seed: int = 0,
                device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Each ``nn.Linear`` of ``model`` as bare GEMMs at ``batch`` rows, on ``device``.

    Returns one dict per layer: name, fan_in, fan_out, FLOPs and median ms of the forward and
    (``mode="train"``) backward, achieved GFLOP/s, fraction of the matmul peak of
    ``precision`` from ``ceilings``, the roofline ``bound`` and the ``shape`` note. On CUDA,
    ``tf32`` runs float32 GEMMs with TF32 allowed and ``fp16`` half ones; each timing covers
    several back-to-back calls (``median_ms``).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        previous_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            return _time_layers(model, batch, precision, ceilings, mode, reps, seed, device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return _time_layers(model, batch, precision, ceilings, mode, reps, seed, device)


def _time_layers(model: nn.Module, batch: int, precision: str, ceilings: dict[str, float],
                 mode: str, reps: int, seed: int, device: torch.device) -> list[dict[str, Any]]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    calls = 20 if device.type == "cuda" else 1
    timed = functools.partial(median_ms, repeats=reps, device=device, calls=calls)
    bandwidth = ceilings["stream_gbps"] * 1e9
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, layer in linear_layers(model):
        k, n = _shape(layer)
        # int8 models: their Int8Linear layers run the int8 kernel on quantized input and
        # count against the int8 peak; each MLP's last layer, float there, against fp32's.
        int8 = not isinstance(layer, nn.Linear)
        layer_precision = "int8" if int8 else ("fp32" if precision == "int8" else precision)
        peak = peak_gflops(ceilings, layer_precision) * 1e9
        e = activation_bytes(layer_precision)
        x = torch.randn(batch, k, generator=gen).to(device, dtype)
        weight = torch.randn(n, k, generator=gen).to(device, dtype)
        bias = torch.randn(n, generator=gen).to(device, dtype)
        grad = torch.randn(batch, n, generator=gen).to(device, dtype)
        input_grad = not any(name.endswith(d) for d in DATA_INPUT_LAYERS)
        fwd_flops, bwd_flops = layer_flops(batch, k, n, input_grad)
        if int8:
            scale = float(x.abs().max()) / 255
            codes = quantize_u8(x.abs(), scale, 0)
            fwd_ms = timed(functools.partial(layer, codes, scale, 0))
        else:
            fwd_ms = timed(functools.partial(_forward, x, weight, bias))
        row: dict[str, Any] = {
            "name": name, "fan_in": k, "fan_out": n, "input_grad": input_grad,
            "precision": layer_precision,
            "shape": _shape_note(k, n),
            "fwd_flops": fwd_flops, "fwd_ms": fwd_ms,
            "fwd_gflops": fwd_flops / fwd_ms / 1e6, "fwd_fraction": fwd_flops / fwd_ms / 1e-3
            / peak}
        fwd_bytes = e * (batch * k + k * n + n + batch * n)
        flops, bytes_ = fwd_flops, fwd_bytes
        if mode == "train":
            bwd_ms = timed(functools.partial(_backward, grad, x, weight, input_grad))
            bwd_bytes = (e * (batch * n + batch * k + k * n) + WEIGHT_BYTES * (k * n + n)
                         + (e * batch * k if input_grad else 0))
            row.update({"bwd_flops": bwd_flops, "bwd_ms": bwd_ms,
                        "bwd_gflops": bwd_flops / bwd_ms / 1e6,
                        "bwd_fraction": bwd_flops / bwd_ms / 1e-3 / peak})
            flops, bytes_ = flops + bwd_flops, bytes_ + bwd_bytes
        row["bound"] = "compute" if flops / peak >= bytes_ / bandwidth else "memory (stream)"
        rows.append(row)
    return rows


def summarize_layers(layers: list[dict[str, Any]], samples_per_s: float, batch: int,
                     precision: str, ceilings: dict[str, float], mode: str = "train",
                     model_samples_per_s: float | None = None) -> dict[str, Any]:
    """The step's distance from the peak: its matmul FLOPs per sample, the fraction of the
    peak the whole step reaches (``fraction_of_peak``), the fraction the model's part of it
    reaches (``model_fraction_of_peak``, from ``model_samples_per_s``: the component times
    without making the batch and copying it), and the fraction the same GEMMs reach alone
    (``gemm_fraction_of_peak``, the step's cap with this library's GEMMs)."""
    peak = peak_gflops(ceilings, precision) * 1e9
    flops = sum(r["fwd_flops"] + (r.get("bwd_flops", 0) if mode == "train" else 0)
                for r in layers)
    gemm_ms = sum(r["fwd_ms"] + (r.get("bwd_ms", 0.0) if mode == "train" else 0.0)
                  for r in layers)
    per_sample = flops / batch
    return {
        "matmul_flops_per_sample": per_sample,
        "achieved_gflops": samples_per_s * per_sample / 1e9,
        "fraction_of_peak": samples_per_s * per_sample / peak,
        "model_fraction_of_peak": (model_samples_per_s * per_sample / peak
                                   if model_samples_per_s else None),
        "gemm_ms": gemm_ms,
        "gemm_fraction_of_peak": flops / (gemm_ms / 1e3) / peak if gemm_ms > 0 else 0.0,
        "peak_gflops": peak / 1e9,
    }
