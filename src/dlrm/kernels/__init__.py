"""Native CPU kernels for the non-matmul parts of a DLRM step, with a PyTorch fallback.

On 2 cores a ``kaggle`` B=2048 fp32 training step spends most of its time in the MLP
matmuls and, on PyTorch ops alone, about a quarter of it around them: the dot interaction
(a batched 27x27 ``bmm``, a gather of the 351 pairs, a concatenation and copies), the sparse
SGD row update (``scatter_add_``), the one-hot lookup, and the MLPs' bias copies, ReLUs, ReLU
backward and bias-gradient sums: a few FLOPs per byte, where per-op dispatch, temporaries
and extra passes over memory cost more than the arithmetic. ``cpu_kernels.cpp`` does each as
one pass (measured in benchmarks/train_throughput.py: 1.17-1.27x per step in fp32).

The C++ file has no PyTorch headers and a plain C ABI: it is compiled on first use with the
system's C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``; ~2 s, ``-O3 -march=native
-fopenmp``) into a cache folder (``$DLRM_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlrm``, else
``~/.cache/dlrm``; the temp folder when that is not writable), keyed by the source, the
compiler and the CPU, and loaded with ``ctypes``. Its OpenMP threads are PyTorch's own (the
runtime torch loaded), so the kernels and torch's ops never fight over cores.

Without a compiler, with ``DLRM_NATIVE_KERNELS=0``, under a tracer (torch.export,
torch.compile, jit.trace) or for tensors they do not take (CUDA, float64, ...), callers use
their PyTorch implementation: same math (the SGD update and the lookup bit for bit, the
rest to float32 rounding), only slower. ``enabled()`` says which is in use; ``use_native(False)``
switches at run time (tests, A/B benchmarks).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-std=c++17", "-shared", "-fPIC",
         "-fno-math-errno"]
# OpenMP shares PyTorch's thread pool (see parallel_for in the .cpp); a compiler without it
# (Apple clang) builds a single-threaded library instead.
OPENMP = ["-fopenmp"]
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_load_failed: str | None = None
_switch: bool | None = None  # use_native() override; None = environment / default


class KernelError(RuntimeError):
    """A native kernel refused its input (the message names the problem)."""


def cache_dir() -> Path:
    root = os.environ.get("DLRM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dlrm"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str) -> Path:
    """Compile the kernels (or reuse a cached build) and return the shared library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS + OPENMP),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    name = f"dlrm_cpu_kernels-{key}.so"
    folder = cache_dir()
    if (folder / name).exists():
        return folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:  # a read-only home: build in the temp folder instead
        fallback = Path(tempfile.gettempdir()) / f"dlrm-{os.getuid()}"
        log.info("kernel cache %s unusable (%s); using %s", folder, err, fallback)
        folder = fallback
        if (folder / name).exists():
            return folder / name
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    # Build beside the target and rename: concurrent processes (torchrun ranks) never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, *OPENMP, str(SOURCE), "-o", tmp],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp],
                                    capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise KernelError(f"{compiler} failed on {SOURCE}:\n{result.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    i32 = ctypes.c_int
    lib.dlrm_dot_forward.argtypes = [_PTR, i32, _I64, _PTR, i32, _I64, _I64, _PTR, _I64, _I64,
                                     _I64, i32, i32]
    lib.dlrm_dot_backward.argtypes = [_PTR, i32, _I64, _PTR, i32, _I64, _PTR, i32, _I64, _I64,
                                      _PTR, _PTR, _I64, _I64, _I64, i32, i32]
    lib.dlrm_sgd_rows.argtypes = [_PTR, _I64, _I64, _PTR, _I64, _PTR, i32, _I64, _I64,
                                  ctypes.c_float, i32]
    lib.dlrm_lookup_one_hot.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64, i32]
    lib.dlrm_bias_act.argtypes = [_PTR, i32, _I64, _I64, _I64, _PTR, i32, i32]
    lib.dlrm_act_bias_backward.argtypes = [_PTR, i32, _I64, _PTR, i32, _I64, _PTR, _I64, _I64,
                                           _I64, i32, _PTR, i32]
    for fn in (lib.dlrm_dot_forward, lib.dlrm_dot_backward, lib.dlrm_sgd_rows,
               lib.dlrm_lookup_one_hot, lib.dlrm_bias_act, lib.dlrm_act_bias_backward):
        fn.restype = i32


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; None where they cannot be built."""
    global _library, _load_failed
    if _library is not None or _load_failed is not None:
        return _library
    with _lock:
        if _library is not None or _load_failed is not None:
            return _library
        compiler = _compiler()
        if compiler is None:
            _load_failed = "no C++ compiler found ($CXX, c++, g++, clang++)"
        else:
            try:
                lib = ctypes.CDLL(str(_build(compiler)))
                _declare(lib)
                _library = lib
            except Exception as err:  # noqa: BLE001 - any failure here means: use the fallback
                _load_failed = f"{type(err).__name__}: {err}"
        if _load_failed is not None:
            log.warning("native CPU kernels unavailable, using the PyTorch fallback "
                        "(same results, slower): %s", _load_failed)
        return _library


def enabled() -> bool:
    """Whether CPU tensors go through the native kernels (building them if needed)."""
    switch = _switch
    if switch is None:
        switch = os.environ.get("DLRM_NATIVE_KERNELS", "1").strip().lower() not in (
            "0", "false", "no", "off")
    return switch and library() is not None


def active_on(device: torch.device | str) -> bool:
    """Whether a run on ``device`` uses the native kernels (they are CPU kernels): what
    ``summary.json`` and the bench's machine description record as ``native_kernels``."""
    return torch.device(device).type == "cpu" and enabled()


@contextmanager
def use_native(on: bool):
    """Force the native kernels on or off inside a ``with`` block (tests, A/B benchmarks)."""
    global _switch
    before, _switch = _switch, on
    try:
        yield
    finally:
        _switch = before


def _check(code: int, what: str) -> None:
    if code == -3:
        raise KernelError(f"{what}: an embedding row id is out of range for the weight")
    if code != 0:
        raise KernelError(f"{what}: the native kernel refused its input (code {code})")


def _eager(*tensors: torch.Tensor) -> bool:
    """Plain tensors in eager mode: a tracer (torch.export, torch.compile, jit.trace for ONNX)
    cannot see into a ctypes call, so under one the PyTorch implementation must run."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def supports_dot(dense: torch.Tensor, pooled: torch.Tensor) -> bool:
    """Whether ``dot_forward`` takes these tensors: CPU, float32/bfloat16, rows contiguous."""
    return (_eager(dense, pooled) and dense.device.type == "cpu" and pooled.device.type == "cpu"
            and dense.dtype in _DTYPE_CODE and pooled.dtype in _DTYPE_CODE
            and dense.dim() == 2 and pooled.dim() == 3
            and dense.stride(1) == 1 and pooled.stride(2) == 1 and enabled())


def dot_forward(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool
                ) -> torch.Tensor:
    """[x, pairwise dots of (x, e_1..e_F)] ``(B, D) (B, F, D) -> (B, D + P)`` in dense's dtype.

    Vectors are rounded to bfloat16 first when dense is bfloat16 (the autocast compute dtype),
    products accumulate in float32.
    """
    batch, dim = dense.shape
    num_features = pooled.shape[1]
    n = num_features + 1
    pairs = n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2
    out = torch.empty(batch, dim + pairs, dtype=dense.dtype)
    lib = library()
    assert lib is not None
    code = lib.dlrm_dot_forward(
        dense.data_ptr(), _DTYPE_CODE[dense.dtype], dense.stride(0),
        pooled.data_ptr(), _DTYPE_CODE[pooled.dtype], pooled.stride(0), pooled.stride(1),
        out.data_ptr(), batch, num_features, dim, int(self_interaction),
        torch.get_num_threads())
    _check(code, "dot interaction forward")
    return out


def dot_backward(grad_out: torch.Tensor, dense: torch.Tensor, pooled: torch.Tensor,
                 self_interaction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of dense (B, D) in its dtype, grad of pooled (B, F, D) contiguous in its dtype)."""
    if grad_out.dtype not in _DTYPE_CODE or grad_out.stride(1) != 1:
        grad_out = grad_out.to(dense.dtype).contiguous()
    batch, dim = dense.shape
    num_features = pooled.shape[1]
    grad_dense = torch.empty(batch, dim, dtype=dense.dtype)
    grad_pooled = torch.empty(batch, num_features, dim, dtype=pooled.dtype)
    lib = library()
    assert lib is not None
    code = lib.dlrm_dot_backward(
        grad_out.data_ptr(), _DTYPE_CODE[grad_out.dtype], grad_out.stride(0),
        dense.data_ptr(), _DTYPE_CODE[dense.dtype], dense.stride(0),
        pooled.data_ptr(), _DTYPE_CODE[pooled.dtype], pooled.stride(0), pooled.stride(1),
        grad_dense.data_ptr(), grad_pooled.data_ptr(), batch, num_features, dim,
        int(self_interaction), torch.get_num_threads())
    _check(code, "dot interaction backward")
    return grad_dense, grad_pooled


def supports_rows(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor | None = None
                  ) -> bool:
    """Whether the row kernels take these: CPU float32 weight with contiguous rows, int64 ids."""
    ok = (_eager(weight, ids) and weight.device.type == "cpu" and weight.dtype == torch.float32
          and weight.dim() == 2 and weight.stride(1) == 1 and ids.dtype == torch.int64
          and ids.device.type == "cpu")
    if rows is not None:
        ok = ok and rows.dtype in _DTYPE_CODE and rows.dim() == 2 and rows.stride(1) == 1
    return ok and enabled()


def sgd_rows_(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, lr: float) -> None:
    """``weight[ids[k]] -= lr * rows[k]`` in order, duplicates accumulating, in place."""
    ids = ids.contiguous()
    lib = library()
    assert lib is not None
    code = lib.dlrm_sgd_rows(
        weight.data_ptr(), weight.stride(0), weight.shape[0], ids.data_ptr(), ids.numel(),
        rows.data_ptr(), _DTYPE_CODE[rows.dtype], rows.stride(0), weight.shape[1], -float(lr),
        torch.get_num_threads())
    _check(code, "sparse SGD update")


def lookup_one_hot(weight: torch.Tensor, values: torch.Tensor, table_offsets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One id per bag: ``(rows (B*F, D), ids (B*F,))`` with ``ids[b*F + f] = table_offsets[f] +
    values[f*B + b]`` (values feature-major, ``table_offsets`` the F + 1 table starts) and
    ``rows = weight[ids]``: sample-major, as the interaction reads them."""
    values = values.contiguous()
    table_offsets = table_offsets.contiguous()
    num_features = table_offsets.numel() - 1
    if table_offsets[-1] != weight.shape[0]:
        raise ValueError(f"table offsets end at {int(table_offsets[-1])}, the weight has "
                         f"{weight.shape[0]} rows")
    batch = values.numel() // max(num_features, 1)
    out = torch.empty(values.numel(), weight.shape[1], dtype=weight.dtype)
    ids = torch.empty(values.numel(), dtype=torch.int64)
    lib = library()
    assert lib is not None
    code = lib.dlrm_lookup_one_hot(
        weight.data_ptr(), weight.stride(0), table_offsets.data_ptr(), values.data_ptr(), batch,
        num_features, out.data_ptr(), ids.data_ptr(), weight.shape[1], torch.get_num_threads())
    if code == -3:
        local = values.view(num_features, batch)
        sizes = (table_offsets[1:] - table_offsets[:-1]).unsqueeze(1)
        feature = int(((local < 0) | (local >= sizes)).any(1).nonzero()[0])
        raise KernelError(f"embedding lookup: feature {feature} has an id outside its table of "
                          f"{int(sizes[feature])} rows")
    _check(code, "embedding lookup")
    return out, ids


def supports_linear(*tensors: torch.Tensor) -> bool:
    """Whether the Linear epilogues take these: CPU float32/bfloat16 matrices, rows contiguous."""
    return (_eager(*tensors) and all(
        t.device.type == "cpu" and t.dtype in _DTYPE_CODE and t.dim() == 2 and t.stride(1) == 1
        for t in tensors) and enabled())


def bias_act_(out: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """``out = relu(out + bias)`` (or ``out + bias``) in place; ``out (R, C)``, ``bias (C,)``."""
    bias = bias.to(torch.float32).contiguous()
    lib = library()
    assert lib is not None
    code = lib.dlrm_bias_act(out.data_ptr(), _DTYPE_CODE[out.dtype], out.stride(0), out.shape[0],
                             out.shape[1], bias.data_ptr(), int(relu), torch.get_num_threads())
    _check(code, "bias + activation")
    return out


def act_bias_backward(grad: torch.Tensor, act_out: torch.Tensor, relu: bool, in_place: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad masked by ``act_out > 0`` (grad itself without ReLU), its column sums).

    The sums accumulate in float32 and come back in grad's dtype.

    ``in_place`` writes the masked gradient over ``grad`` (only for a buffer the caller owns);
    otherwise into a new tensor.
    """
    rows, cols = grad.shape
    masked = grad if (in_place or not relu) else torch.empty_like(grad, memory_format=
                                                                  torch.contiguous_format)
    bias_grad = torch.empty(cols, dtype=torch.float32)  # returned in grad's dtype
    lib = library()
    assert lib is not None
    code = lib.dlrm_act_bias_backward(
        grad.data_ptr(), _DTYPE_CODE[grad.dtype], grad.stride(0), act_out.data_ptr(),
        _DTYPE_CODE[act_out.dtype], act_out.stride(0), masked.data_ptr(), masked.stride(0), rows,
        cols, int(relu), bias_grad.data_ptr(), torch.get_num_threads())
    _check(code, "activation + bias backward")
    return masked, bias_grad.to(grad.dtype)
