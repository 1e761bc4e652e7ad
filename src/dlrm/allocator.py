"""Keep freed CPU memory in the process, so training steps stop paying page faults.

A DLRM step allocates and frees tens of MB of activations and gradients (a B=2048 step of
the ``kaggle`` preset: (2048, 512) float tensors of 4 MB, the (53248, 16) looked-up rows, ...).
glibc's malloc hands blocks above its mmap threshold back to the kernel on ``free`` and trims
the heap top once more than its trim threshold is free, so the next step touches fresh pages
and takes a page fault per 4 KiB: measured here, up to a third of a bf16 step. PyTorch's CPU
tuning guide recommends swapping in jemalloc or tcmalloc for this reason; those are not pip
packages, so we set the two glibc thresholds instead (``mallopt``, the knob glibc documents
for this), which keeps blocks up to 32 MiB on the heap and up to ``keep_bytes`` of free memory
mapped for reuse.

Costs: up to ``keep_bytes`` more resident memory than strictly needed after a large free.
The settings are process-wide and last until exit; they change speed, never results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

_applied: tuple[int, int] | None = None


def tune_cpu_allocator(keep_bytes: int = 1 << 30,
                       mmap_threshold: int = MAX_MMAP_THRESHOLD) -> bool:
    """Raise glibc's trim and mmap thresholds; returns True when they were set.

    Args:
        keep_bytes: free heap memory kept mapped instead of returned to the kernel.
        mmap_threshold: blocks at least this large still come from (and go back to) mmap.

    A no-op returning False where the C library is not glibc (macOS, musl, Windows). Both
    thresholds are set together: setting either one turns off glibc's dynamic adjustment of
    the other, and a fixed default 128 KiB mmap threshold would be slower than no tuning.
    """
    global _applied
    if _applied == (keep_bytes, mmap_threshold):
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("allocator tuning skipped: not glibc")
        return False
    if not (0 < mmap_threshold <= MAX_MMAP_THRESHOLD):
        raise ValueError(f"mmap_threshold {mmap_threshold}: expected 1..{MAX_MMAP_THRESHOLD}")
    if not (0 < keep_bytes < 2**31):
        raise ValueError(f"keep_bytes {keep_bytes}: expected 1..{2**31 - 1} (a C int)")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, keep_bytes) == 1 and ok
    if ok:
        _applied = (keep_bytes, mmap_threshold)
        log.info("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB",
                 mmap_threshold >> 20, keep_bytes >> 20)
    else:
        log.warning("glibc mallopt refused the allocator settings; continuing without them")
    return ok
