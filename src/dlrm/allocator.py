"""How the process gets CPU memory: freed memory kept for reuse, tables on huge pages.

Two settings, both changing speed and never results:

- ``tune_cpu_allocator``: keep freed memory in the process, so steps stop paying page faults.
- ``advise_huge_pages`` / ``empty_table``: embedding tables on 2 MiB pages, so a lookup's
  scattered rows stop paying a TLB miss each (see its docstring).

On the first: a DLRM step allocates and frees tens of MB of activations and gradients (a
B=2048 step of the ``kaggle`` preset: (2048, 512) float tensors of 4 MB, the (53248, 16)
looked-up rows, ...). glibc's malloc hands blocks above its mmap threshold back to the
kernel on ``free`` and trims the heap top once more than its trim threshold is free, so the
next step touches fresh pages and takes a page fault per 4 KiB: measured here, up to a third
of a bf16 step. PyTorch's CPU tuning guide recommends swapping in jemalloc or tcmalloc for
this reason; those are not pip packages, so we set the two glibc thresholds instead
(``mallopt``, the knob glibc documents for this), which keeps blocks up to 32 MiB on the
heap and up to ``keep_bytes`` of free memory mapped for reuse.

Costs: up to ``keep_bytes`` more resident memory than strictly needed after a large free.
The settings are process-wide and last until exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

_applied: tuple[int, int] | None = None


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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
    libc = _libc()
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, keep_bytes) == 1 and ok
    if ok:
        _applied = (keep_bytes, mmap_threshold)
        log.info("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB",
                 mmap_threshold >> 20, keep_bytes >> 20)
    else:
        log.warning("glibc mallopt refused the allocator settings; continuing without them")
    return ok


# Transparent huge pages: madvise(2) constants from <sys/mman.h> (the same on every Linux arch).
MADV_HUGEPAGE = 14
HUGE_PAGE_BYTES = 2 << 20
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGE_PAGES_ENV = "DLRM_HUGE_PAGES"


def huge_pages_wanted() -> bool:
    """Whether embedding tables ask for huge pages: ``DLRM_HUGE_PAGES`` (``1``, the default,
    or ``0``, for A/B runs and for hosts where huge pages are unwelcome)."""
    value = os.environ.get(HUGE_PAGES_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{HUGE_PAGES_ENV}={value!r}: expected 1 (embedding tables ask for "
                         f"huge pages, the default) or 0 (they do not)")
    return value == "1"


def huge_page_mode() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or None
    where there is none to read (not Linux, no THP support)."""
    try:
        with open(THP_MODE_FILE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1: end] if 0 <= start < end else None


def huge_pages_state() -> str:
    """One line on the pages embedding tables get here, for ``dlrm env`` and bench results."""
    mode = huge_page_mode()
    if mode is None:
        return "none on this system (4 KiB pages)"
    if mode == "never":
        return "never (the kernel's setting: tables get 4 KiB pages)"
    if not huge_pages_wanted():
        return f"{mode}; tables do not ask ({HUGE_PAGES_ENV}=0)"
    return f"{mode}; tables ask for them" if mode == "madvise" else mode


def advise_huge_pages(tensor: torch.Tensor, min_bytes: int = 4 * HUGE_PAGE_BYTES) -> bool:
    """Ask Linux to back ``tensor``'s memory with 2 MiB pages; True when the kernel took it.

    Why: an embedding lookup reads rows scattered over gigabytes, and with 4 KiB pages
    nearly every row is also a TLB miss, a page walk of its own (two nested ones in a
    virtual machine). With 2 MiB pages the same rows cost a fraction of the walks: measured
    in ``benchmarks/huge_pages.py``. Most distributions ship THP in ``madvise`` mode, where
    only memory that asks gets huge pages, hence this call.

    Call it on a fresh CPU tensor *before* its first write: pages faulted in afterwards are
    huge ones; pages already touched are left to the kernel's background collapsing. Only
    the 2 MiB-aligned part of the tensor's range is advised. Values never change; a no-op
    returning False on another device, for tensors under ``min_bytes``, off Linux, or with
    ``DLRM_HUGE_PAGES=0``.
    """
    if tensor.device.type != "cpu" or platform.system() != "Linux" or not huge_pages_wanted():
        return False
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes < min_bytes or not tensor.is_contiguous():
        return False
    start = tensor.data_ptr()
    first = (start + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1)
    last = (start + nbytes) & ~(HUGE_PAGE_BYTES - 1)
    if last <= first:
        return False
    libc = _libc()
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(first, last - first, MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) refused: errno %d", ctypes.get_errno())
        return False
    return True


def empty_table(rows: int, dim: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.empty(rows, dim)`` for embedding rows: on the CPU advised to use huge pages
    (``advise_huge_pages``) before anything is written to it."""
    out = torch.empty(rows, dim, dtype=dtype, device=device)
    advise_huge_pages(out)
    return out
