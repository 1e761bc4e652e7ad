"""`dlrm env`: what a bug report needs, in one paste.

Versions (Python, torch and how it was built, CUDA, NumPy, pyarrow, dlrm), torch's threads and
parallel backend, whether the native kernels are in use (``dlrm.ops.native.status()``), the C++
compiler they would be built with, the OpenMP runtime torch loaded, and the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _compiler() -> str:
    """The compiler the native kernels use ($CXX, c++, g++, clang++) and its version line."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            try:
                out = subprocess.run([name, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.splitlines()
            except (OSError, subprocess.SubprocessError) as err:
                return f"{name} ({err})"
            return f"{shutil.which(name)}: {out[0] if out else 'unknown version'}"
    return "none found ($CXX, c++, g++, clang++): native kernels fall back to PyTorch"


def _openmp_runtime() -> str:
    """The OpenMP library this process loaded (torch's: libgomp, libiomp5 or libomp)."""
    try:
        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    except OSError:
        return "unknown (no /proc)"
    libs = sorted({line.split()[-1] for line in maps.splitlines()
                   if re.search(r"lib(g|i|)omp[^/]*\.so", line.split()[-1] if line.split()
                                else "")})
    return ", ".join(libs) or "none loaded"


def _devices(torch: Any) -> list[str]:
    devices = [f"cpu: {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} logical cores"]
    try:
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
        if model:
            devices[0] = f"cpu: {model}, {os.cpu_count()} logical cores"
    except OSError:
        pass
    if torch.cuda.is_available():
        for k in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(k)
            devices.append(f"cuda:{k}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                           f"compute capability {props.major}.{props.minor}")
    else:
        devices.append("cuda: not available")
    return devices


def environment() -> dict[str, Any]:
    """Everything ``dlrm env`` prints, as a dict."""
    import numpy
    import torch

    from dlrm import __version__
    from dlrm.allocator import huge_pages_state
    from dlrm.ops import native

    parallel = torch.__config__.parallel_info().splitlines()
    return {
        "dlrm": __version__,
        "python": f"{sys.version.split()[0]} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch build": {
            "cuda": torch.version.cuda or "none (CPU build)",
            "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available()
            else "none",
            "debug": torch.version.debug,
            "git": torch.version.git_version,
        },
        "numpy": numpy.__version__,
        "pyarrow": _version("pyarrow"),
        "tqdm": _version("tqdm"),
        "torch threads": {"intra-op": torch.get_num_threads(),
                          "inter-op": torch.get_num_interop_threads(),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")},
        "torch parallel": [line.strip() for line in parallel
                           if line.strip().startswith(("ATen parallel", "OpenMP", "MKL", "Intel"))],
        "native kernels": native.status(),
        "DLRM_NATIVE_KERNELS": os.environ.get("DLRM_NATIVE_KERNELS", "unset"),
        "DLRM_PREFETCH": os.environ.get("DLRM_PREFETCH", "unset (2 batches ahead on CUDA, "
                                                         "none on the CPU)"),
        "DLRM_HUGE_PAGES": os.environ.get("DLRM_HUGE_PAGES", "unset (embedding tables ask "
                                                             "for huge pages)"),
        "transparent huge pages": huge_pages_state(),
        "compiler": _compiler(),
        "openmp runtime": _openmp_runtime(),
        "devices": _devices(torch),
    }


def format_environment(env: dict[str, Any]) -> str:
    lines = []
    width = max(map(len, env)) + 2
    for key, value in env.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(map(str, value))
        lines.append(f"{key + ':':{width}s}{value}")
    return "\n".join(lines)


def cmd_env(args: argparse.Namespace) -> int:
    env = environment()
    print(json.dumps(env, indent=2) if args.format == "json" else format_environment(env))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env", help="print versions, build, threads, kernels and devices for a bug report",
        description="Everything a bug report needs: paste its output into the issue.")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_env)
