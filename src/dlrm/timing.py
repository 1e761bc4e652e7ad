"""Wall-clock reads that mean what they say on any device."""

from __future__ import annotations

import time

import torch


def synchronized_clock(device: torch.device | str) -> float:
    """``time.perf_counter()`` once ``device`` has finished its queued work.

    On CUDA, kernels and nccl collectives return before they run, so a clock read right after
    them times only their launch; synchronizing first makes a difference of two reads the
    wall time of what ran between them. On CPU it is a plain clock read.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
