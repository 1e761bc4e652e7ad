"""The native CPU kernels: compiled on first use, loaded with ctypes, called on raw pointers.

``cpu_kernels.cpp`` holds the non-matmul hot spots of a CPU training step as one pass each
(the dot interaction, the one-hot lookup, the sparse SGD row update, the MLPs' bias/ReLU
epilogues). This module only builds, loads and calls it; *when* to call it is decided inside
the ``dlrm::*`` operators (``dlrm.ops``), never by the models.

How it is built, and why (measured on the 2-core machines this project runs on):

- The C++ file has a plain C ABI and no PyTorch headers. It compiles in ~2 s with the
  system's C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) and works with any torch
  version. A ``torch.utils.cpp_extension`` / ``TORCH_LIBRARY`` build would register the ops
  in C++ and save a few microseconds per call, but it compiles against torch's headers
  (~50 s here, once per torch version, and it needs ninja); the Python registrations in
  ``dlrm.ops`` give the same graph integration (torch.compile, torch.export, the profiler).
- ``-march=native`` picks the instruction set of the machine that runs the code at build
  time; the cache key holds the CPU's model and flags, so a home folder shared between
  machines gets one build per CPU kind. Flags that only exist on x86 are added only there.
- The build goes to a cache folder (``$DLRM_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlrm``, else
  ``~/.cache/dlrm``; the temp folder when that is not writable), under a file lock: the ranks
  of a torchrun job starting together build it once, the others wait and load that build.
- Its OpenMP threads are PyTorch's own (``-fopenmp`` binds to the runtime torch loaded).

Without a compiler, when the build fails (no OpenMP: a single-threaded build; no
``-march=native``: a generic one; nothing works: no library), or with
``DLRM_NATIVE_KERNELS=0``, ``available()`` is False and the operators run their PyTorch
implementations, with one warning saying why. ``use_native(False)`` switches the kernels off
inside a ``with`` block (A/B benchmarks and tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
# Tried in order until one compiles: the machine's own instruction set first.
ARCH_FLAGS = (["-march=native", "-mprefer-vector-width=512"]
              if platform.machine().lower() in ("x86_64", "amd64") else ["-march=native"])
# OpenMP shares PyTorch's thread pool (see parallel_for in the .cpp); a compiler without it
# (Apple clang) builds a single-threaded library instead.
OPENMP = ["-fopenmp"]
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_load_failed: str | None = None
_switch: bool | None = None  # use_native() override; None = environment / default


class KernelError(RuntimeError):
    """A native kernel refused its input; the message names the problem."""


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
    keep = [line for line in info.splitlines()
            if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _writable_cache() -> Path:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
        return folder
    except OSError as err:  # a read-only home: build in the temp folder instead
        fallback = Path(tempfile.gettempdir()) / f"dlrm-{os.getuid()}"
        log.info("kernel cache %s unusable (%s); using %s", folder, err, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.build.lock`` (released when the process dies)."""
    with open(folder / ".build.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(compiler: str, target: Path) -> None:
    """Compile into a temp file beside ``target`` and rename it: a process never loads a
    half-written library. Falls back from the best flags to plainer ones."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    errors = []
    try:
        for extra in ([*ARCH_FLAGS, *OPENMP], ARCH_FLAGS, OPENMP, []):
            result = subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                if extra != [*ARCH_FLAGS, *OPENMP]:
                    log.warning("native CPU kernels built without %s (the compiler refused "
                                "them): slower, same results",
                                " ".join(f for f in [*ARCH_FLAGS, *OPENMP] if f not in extra))
                os.replace(tmp, target)
                return
            errors.append(result.stderr.strip().splitlines()[-1:] or ["(no message)"])
        raise KernelError(f"{compiler} could not compile {SOURCE}: {errors[0][0]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(compiler: str) -> Path:
    """Compile the kernels (or reuse a cached build) and return the shared library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    key = hashlib.sha256("\0".join([
        SOURCE.read_text(), compiler, version, " ".join(FLAGS + ARCH_FLAGS + OPENMP),
        _cpu_signature()]).encode()).hexdigest()[:16]
    folder = _writable_cache()
    target = folder / f"dlrm_cpu_kernels-{key}.so"
    if target.exists():
        return target
    with _build_lock(folder):
        if not target.exists():  # another process may have built it while we waited
            _compile(compiler, target)
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
    lib.dlrm_quantize_u8.argtypes = [_PTR, i32, _I64, _I64, _I64, ctypes.c_float,
                                     ctypes.c_float, _PTR, i32]
    for fn in (lib.dlrm_dot_forward, lib.dlrm_dot_backward, lib.dlrm_sgd_rows,
               lib.dlrm_lookup_one_hot, lib.dlrm_bias_act, lib.dlrm_act_bias_backward,
               lib.dlrm_quantize_u8):
        fn.restype = i32


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; None where they cannot be built
    (said once, with the reason, as a warning)."""
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
                lib = ctypes.CDLL(str(build(compiler)))
                _declare(lib)
                _library = lib
            except Exception as err:  # noqa: BLE001 - any failure here means: use PyTorch
                _load_failed = f"{type(err).__name__}: {err}"
        if _load_failed is not None:
            log.warning("native CPU kernels unavailable, the dlrm operators run their PyTorch "
                        "implementations (same results, slower): %s", _load_failed)
        return _library


def available() -> bool:
    """Whether the ``dlrm::*`` operators run native code on CPU (building it if needed)."""
    switch = _switch
    if switch is None:
        switch = os.environ.get("DLRM_NATIVE_KERNELS", "1").strip().lower() not in (
            "0", "false", "no", "off")
    return switch and library() is not None


def active_on(device: torch.device | str) -> bool:
    """Whether a run on ``device`` uses the native kernels (they are CPU kernels): what
    ``summary.json`` and the bench's machine description record as ``native_kernels``."""
    return torch.device(device).type == "cpu" and available()


def status() -> str:
    """One line for bug reports: whether the kernels are in use, and if not, why."""
    if available():
        return "native CPU kernels: on"
    if _switch is False or os.environ.get("DLRM_NATIVE_KERNELS", "1").strip().lower() in (
            "0", "false", "no", "off"):
        return "native CPU kernels: switched off"
    return f"native CPU kernels: unavailable ({_load_failed})"


@contextlib.contextmanager
def use_native(on: bool) -> Iterator[None]:
    """Force the native kernels on or off inside a ``with`` block (tests, A/B benchmarks)."""
    global _switch
    before, _switch = _switch, on
    try:
        yield
    finally:
        _switch = before


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise KernelError(f"the native CPU kernels are not loaded ({_load_failed})")
    return lib


def _check(code: int, what: str, shape: str) -> None:
    if code == 0:
        return
    reasons = {-1: f"a size is negative or zero ({shape})",
               -2: "a tensor has a dtype the kernel does not take (float32 or bfloat16)",
               -3: "an embedding row id is out of range for the weight"}
    raise KernelError(f"{what}: {reasons.get(code, f'unknown failure (code {code})')}")


def takes(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: plain CPU float32/bfloat16, innermost dimension
    contiguous, and the kernels available."""
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
               and t.dtype in DTYPE_CODE and t.dim() >= 1 and t.stride(-1) == 1
               for t in tensors) and available()


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
    code = _lib().dlrm_dot_forward(
        dense.data_ptr(), DTYPE_CODE[dense.dtype], dense.stride(0),
        pooled.data_ptr(), DTYPE_CODE[pooled.dtype], pooled.stride(0), pooled.stride(1),
        out.data_ptr(), batch, num_features, dim, int(self_interaction),
        torch.get_num_threads())
    _check(code, "dot interaction forward", f"B={batch}, F={num_features}, D={dim}")
    return out


def dot_backward(grad_out: torch.Tensor, dense: torch.Tensor, pooled: torch.Tensor,
                 self_interaction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of dense (B, D) in its dtype, grad of pooled (B, F, D) contiguous in its dtype)."""
    if grad_out.dtype not in DTYPE_CODE or grad_out.stride(1) != 1:
        grad_out = grad_out.to(dense.dtype).contiguous()
    batch, dim = dense.shape
    num_features = pooled.shape[1]
    grad_dense = torch.empty(batch, dim, dtype=dense.dtype)
    grad_pooled = torch.empty(batch, num_features, dim, dtype=pooled.dtype)
    code = _lib().dlrm_dot_backward(
        grad_out.data_ptr(), DTYPE_CODE[grad_out.dtype], grad_out.stride(0),
        dense.data_ptr(), DTYPE_CODE[dense.dtype], dense.stride(0),
        pooled.data_ptr(), DTYPE_CODE[pooled.dtype], pooled.stride(0), pooled.stride(1),
        grad_dense.data_ptr(), grad_pooled.data_ptr(), batch, num_features, dim,
        int(self_interaction), torch.get_num_threads())
    _check(code, "dot interaction backward", f"B={batch}, F={num_features}, D={dim}")
    return grad_dense, grad_pooled


def sgd_rows_(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, lr: float) -> None:
    """``weight[ids[k]] -= lr * rows[k]`` in order, duplicates accumulating, in place.
    ``weight`` must be float32."""
    ids = ids.contiguous()
    code = _lib().dlrm_sgd_rows(
        weight.data_ptr(), weight.stride(0), weight.shape[0], ids.data_ptr(), ids.numel(),
        rows.data_ptr(), DTYPE_CODE[rows.dtype], rows.stride(0), weight.shape[1], -float(lr),
        torch.get_num_threads())
    if code == -3:
        bad = ids[(ids < 0) | (ids >= weight.shape[0])][0]
        raise KernelError(f"sparse SGD update: row id {int(bad)} is out of range for a weight "
                          f"of {weight.shape[0]} rows")
    _check(code, "sparse SGD update", f"{ids.numel()} rows of D={weight.shape[1]}")


def lookup_one_hot(weight: torch.Tensor, values: torch.Tensor, table_offsets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One id per bag: ``(rows (B*F, D), ids (B*F,))`` with ``ids[b*F + f] = table_offsets[f] +
    values[f*B + b]`` (values feature-major, ``table_offsets`` the F + 1 table starts) and
    ``rows = weight[ids]``: sample-major, as the interaction reads them. ``weight`` float32."""
    values = values.contiguous()
    table_offsets = table_offsets.contiguous()
    num_features = table_offsets.numel() - 1
    if int(table_offsets[-1]) != weight.shape[0]:
        raise KernelError(f"embedding lookup: the table offsets end at "
                          f"{int(table_offsets[-1])}, the weight has {weight.shape[0]} rows")
    batch = values.numel() // max(num_features, 1)
    out = torch.empty(values.numel(), weight.shape[1], dtype=weight.dtype)
    ids = torch.empty(values.numel(), dtype=torch.int64)
    code = _lib().dlrm_lookup_one_hot(
        weight.data_ptr(), weight.stride(0), table_offsets.data_ptr(), values.data_ptr(), batch,
        num_features, out.data_ptr(), ids.data_ptr(), weight.shape[1], torch.get_num_threads())
    if code == -3:
        local = values.view(num_features, batch)
        sizes = (table_offsets[1:] - table_offsets[:-1]).unsqueeze(1)
        feature = int(((local < 0) | (local >= sizes)).any(1).nonzero()[0])
        raise KernelError(f"embedding lookup: feature {feature} has an id outside its table of "
                          f"{int(sizes[feature])} rows")
    _check(code, "embedding lookup", f"B={batch}, F={num_features}, D={weight.shape[1]}")
    return out, ids


def bias_act_(out: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """``out = relu(out + bias)`` (or ``out + bias``) in place; ``out (R, C)``, ``bias (C,)``."""
    bias = bias.to(torch.float32).contiguous()
    code = _lib().dlrm_bias_act(out.data_ptr(), DTYPE_CODE[out.dtype], out.stride(0),
                                out.shape[0], out.shape[1], bias.data_ptr(), int(relu),
                                torch.get_num_threads())
    _check(code, "bias + activation", f"{tuple(out.shape)}")
    return out


def act_bias_backward(grad: torch.Tensor, act_out: torch.Tensor, relu: bool, in_place: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad masked by ``act_out > 0`` (grad itself without ReLU), its column sums).

    The sums accumulate in float32 and come back in grad's dtype. ``in_place`` writes the
    masked gradient over ``grad`` (only for a buffer the caller owns); otherwise into a new
    tensor.
    """
    rows, cols = grad.shape
    masked = grad if (in_place or not relu) else torch.empty_like(
        grad, memory_format=torch.contiguous_format)
    bias_grad = torch.empty(cols, dtype=torch.float32)  # returned in grad's dtype
    code = _lib().dlrm_act_bias_backward(
        grad.data_ptr(), DTYPE_CODE[grad.dtype], grad.stride(0), act_out.data_ptr(),
        DTYPE_CODE[act_out.dtype], act_out.stride(0), masked.data_ptr(), masked.stride(0), rows,
        cols, int(relu), bias_grad.data_ptr(), torch.get_num_threads())
    _check(code, "activation + bias backward", f"{tuple(grad.shape)}")
    return masked, bias_grad.to(grad.dtype)


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 codes ``clamp(round(x * (1 / scale)) + zero_point, 0, 255)`` of a 2-D ``x``
    (rows with a contiguous last dimension), rounded half to even, in one pass."""
    rows, cols = x.shape
    out = torch.empty(rows, cols, dtype=torch.uint8)
    code = _lib().dlrm_quantize_u8(x.data_ptr(), DTYPE_CODE[x.dtype], x.stride(0), rows, cols,
                                   1.0 / scale, float(zero_point), out.data_ptr(),
                                   torch.get_num_threads())
    _check(code, "uint8 quantization", f"{tuple(x.shape)}")
    return out
