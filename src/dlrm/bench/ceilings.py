"""This machine's ceilings, measured in the same run as the benchmark.

- ``matmul_<precision>_gflops``: a square (n x n) @ (n x n) matmul, 2 n^3 FLOPs, best of a few.
- ``stream_gbps``: copying a buffer far larger than the last-level cache; bytes = read + write.
- ``gather_gbps``: ``index_select`` of uniformly random rows of ``row_dim`` fp32 values from a
  table far larger than the last-level cache, on the pages the model's tables get (huge pages
  on Linux unless ``DLRM_HUGE_PAGES=0``, ``dlrm.allocator``); bytes = rows read + rows written
  + int64 ids (the same count ``roofline`` uses for an embedding lookup).
"""

from __future__ import annotations

import os
import platform
import time

import torch

from dlrm import ops
from dlrm.allocator import empty_table, huge_pages_state
from dlrm.bench.timing import synchronize


def _best_seconds(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                  reps: int = 3) -> float:
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), device, reps) / 1e9


def int8_matmul_gops(n: int | None = None, reps: int = 3) -> float:
    """int8 GEMM throughput (GOP/s) of the int8 MLPs' layer (``dlrm.models.quantized.
    Int8Linear``: oneDNN's int8 linear, ReLU fused) at n x n x n; 0 where the build lacks it."""
    from dlrm.models.quantized import Int8Linear, activation_qparams, int8_kernels_available

    if not int8_kernels_available():
        return 0.0
    n = n or 2048
    layer = Int8Linear.from_float(torch.nn.Linear(n, n), True, (-4.0, 4.0))
    scale, zero_point = activation_qparams(0.0, 1.0)
    codes = torch.randint(0, 256, (n, n), dtype=torch.uint8)
    layer(codes, scale, zero_point)  # packs the weights
    return 2 * n ** 3 / _best_seconds(lambda: layer(codes, scale, zero_point),
                                      torch.device("cpu"), reps) / 1e9


def stream_gbps(device: torch.device, megabytes: int | None = None, reps: int = 3) -> float:
    megabytes = megabytes or (2048 if device.type == "cuda" else 1024)
    n = megabytes * 2 ** 20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    return 2 * n * 4 / _best_seconds(lambda: dst.copy_(src), device, reps) / 1e9


def gather_gbps(device: torch.device, row_dim: int, table_megabytes: int | None = None,
                lookups: int = 1 << 20, reps: int = 3) -> float:
    table_megabytes = table_megabytes or 2048
    rows = table_megabytes * 2 ** 20 // (4 * row_dim)
    table = empty_table(rows, row_dim, device=device).fill_(1.0)  # pages as the model's
    ids = torch.randint(0, rows, (lookups,), device=device)
    out = torch.empty(lookups, row_dim, device=device)
    seconds = _best_seconds(lambda: torch.index_select(table, 0, ids, out=out), device, reps)
    return lookups * (2 * row_dim * 4 + 8) / seconds / 1e9


def measure_ceilings(device: torch.device, row_dim: int, quick: bool = False) -> dict[str, float]:
    """All ceilings for ``device``; ``quick`` uses small sizes (tests only: not DRAM-bound)."""
    out: dict[str, float] = {}
    n = 256 if quick else None
    mb = 16 if quick else None
    out["matmul_fp32_gflops"] = matmul_gflops(device, torch.float32, n)
    out["matmul_bf16_gflops"] = matmul_gflops(device, torch.bfloat16, n)
    if device.type == "cpu":
        out["matmul_int8_gflops"] = int8_matmul_gops(n)  # GOP/s, under the same key scheme
    if device.type == "cuda":
        out["matmul_fp16_gflops"] = matmul_gflops(device, torch.float16, n)
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        out["matmul_tf32_gflops"] = matmul_gflops(device, torch.float32, n)
        torch.backends.cuda.matmul.allow_tf32 = previous
    out["stream_gbps"] = stream_gbps(device, mb)
    out["gather_gbps"] = gather_gbps(device, row_dim, mb, lookups=1 << (14 if quick else 20))
    out["gather_row_bytes"] = row_dim * 4
    return out


def machine_description(device: torch.device) -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc: dict[str, object] = {
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
        "device_name": cpu,
        # Whether the dlrm operators ran native code (CPU only): the same flag as summary.json.
        "native_kernels": ops.active_on(device),
    }
    if device.type == "cpu":  # the pages the tables (and the gather ceiling) are on
        desc["huge_pages"] = huge_pages_state()
    if device.type == "cuda":
        desc["device_name"] = torch.cuda.get_device_name(device)
        desc["cuda_version"] = torch.version.cuda
    try:
        desc["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return desc
