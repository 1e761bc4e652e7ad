"""Batches made ahead on a background thread, so that a GPU does not wait for the host.

On CUDA a step is launched asynchronously, and while the GPU runs it the host is free to make
the next batch (read and permute rows of the memory-mapped arrays, or draw synthetic ones).
Measured on an H200 with 16 Xeon cores (docs/benchmarks.md, GPU): the kaggle preset's bf16
step at batch 16384 takes 4.7 ms, and drawing a planted synthetic batch of that size takes
longer than that, so a loop that makes each batch between two steps runs at a fraction of the
step's rate.

``prefetched(batches, device)`` runs the iterator on one thread, ``depth`` batches ahead, pins
each batch's tensors on CUDA (page-locked memory: the copy to the GPU is a DMA that does not
wait for the host) and yields them in the iterator's order: the batches are the same, only
when they are made changes. Exceptions from the iterator (a bad row naming its file) are
raised in the consumer, after the batches made before them.

On the CPU the same cores make the batches and run the step, so there is nothing to overlap:
the depth is 0 there and the iterator is used as it is. ``DLRM_PREFETCH=N`` sets the depth on
either device (0: off), for A/B measurements.

Example:
    >>> with prefetched(data.batches("train", 2048), "cuda") as batches:
    ...     for batch in batches:
    ...         step(batch.to("cuda"))
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from dlrm.features import Batch

CUDA_DEPTH = 2  # batches ahead on CUDA: one being copied, one ready


def prefetch_depth(device: torch.device | str) -> int:
    """How many batches to make ahead for ``device``: ``DLRM_PREFETCH`` if set, else
    ``CUDA_DEPTH`` on CUDA and 0 on the CPU."""
    value = os.environ.get("DLRM_PREFETCH")
    if value is not None:
        try:
            depth = int(value)
        except ValueError:
            raise ValueError(f"DLRM_PREFETCH={value!r}: expected a whole number of batches "
                             f"(0 turns prefetching off)") from None
        if depth < 0:
            raise ValueError(f"DLRM_PREFETCH={depth}: must be 0 or more")
        return depth
    return CUDA_DEPTH if torch.device(device).type == "cuda" else 0


_END = object()  # the iterator is exhausted


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterates ``batches`` on a daemon thread, ``depth`` ahead; ``close()`` stops it.

    Args:
        batches: any iterable of ``Batch`` (consumed on the thread only).
        depth: batches made ahead (at least 1).
        pin: pin each batch's tensors (CUDA only).
    """

    def __init__(self, batches: Iterable[Batch], depth: int, pin: bool) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth}: a prefetcher makes at least one batch ahead")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(batches, pin),
                                        name="dlrm-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, batches: Iterable[Batch], pin: bool) -> None:
        try:
            for batch in batches:
                if not self._put(batch.pin_memory() if pin else batch):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(_Failure(err))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def prefetched(batches: Iterable[Batch], device: torch.device | str,
               depth: int | None = None) -> Iterator[Iterable[Batch]]:
    """``batches`` made ``depth`` ahead (``prefetch_depth(device)`` by default) for the
    ``with`` block; the thread is stopped on leaving it, also when the loop broke early."""
    depth = prefetch_depth(device) if depth is None else depth
    if depth == 0:
        yield batches
        return
    prefetcher = Prefetcher(batches, depth, pin=torch.device(device).type == "cuda")
    try:
        yield prefetcher
    finally:
        prefetcher.close()
