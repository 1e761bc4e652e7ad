"""Process groups from torchrun's environment, timeouts, a hang watchdog and clean teardown.

``torchrun --nproc_per_node=N -m dlrm train ...`` (or ``--nnodes``/``--rdzv-endpoint`` across
machines) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``distributed_session``
reads them, opens the process group (gloo on CPU, nccl on CUDA) with a collective timeout,
starts a watchdog, and on the way out frees what the caller registered and destroys the
group (gloo jobs can abort at interpreter exit otherwise).

Failures end the whole job instead of hanging it:

- a peer that dies makes the others' next collective fail at once (gloo: connection closed);
- a peer that hangs makes the others' collective fail after ``timeout_s`` (the process
  group's timeout), and torchrun then stops the hung rank;
- the ``Watchdog`` ends *this* process (exit code ``WATCHDOG_EXIT_CODE``) with a logged error
  if it makes no progress for ``timeout_s`` + a grace period, covering hangs outside
  collectives and launchers that would not stop a stuck rank.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

WATCHDOG_EXIT_CODE = 124
DEFAULT_TIMEOUT_S = 300.0


def in_torchrun() -> bool:
    """True inside a process started by torchrun (or anything setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class Watchdog:
    """Ends the process if ``beat()`` is not called for ``timeout_s`` seconds.

    The training loop beats once per step and per evaluation batch. It is armed by the first
    ``beat()`` (setup such as building large tables is not timed) and can be paused around
    long local work (``with watchdog.paused(): save...``). On expiry it logs which rank
    stalled and for how long, then calls ``os._exit`` (a stuck collective cannot be
    interrupted from Python), so the launcher sees the failure and stops the other ranks.
    """

    def __init__(self, timeout_s: float, rank: int = 0, what: str = "training",
                 armed: bool = False) -> None:
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self.what = what
        self._last: float | None = time.monotonic() if armed else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlrm-watchdog", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._last = None
        try:
            yield
        finally:
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        poll = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(poll):
            last = self._last
            if last is None:
                continue
            idle = time.monotonic() - last
            if idle > self.timeout_s:
                log.critical("rank %d: no %s progress for %.0f s (timeout %.0f s); a rank died "
                             "or hung — ending this process", self.rank, self.what, idle,
                             self.timeout_s)
                for stream in (sys.stderr, sys.stdout):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(WATCHDOG_EXIT_CODE)


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; RANK, then 0, without it)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def device_and_backend(requested: str, local_rank: int) -> tuple[str, str]:
    """The device one rank trains on and the process-group backend that goes with it.

    ``cpu`` -> (``"cpu"``, ``"gloo"``); ``cuda`` -> (``"cuda:LOCAL_RANK"``, ``"nccl"``): every
    process of a node drives its own GPU, so the index comes from torchrun's LOCAL_RANK, never
    from the command line (the same ``--device cuda`` is given to all ranks). To pick which
    GPUs a node uses, set CUDA_VISIBLE_DEVICES.
    """
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"device {requested!r}: expected cpu or cuda") from err
    if device.type == "cpu":
        return "cpu", "gloo"
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"device {requested!r}: distributed ranks take cuda:LOCAL_RANK; "
                             f"pass --device cuda (and CUDA_VISIBLE_DEVICES to choose GPUs)")
        return f"cuda:{local_rank}", "nccl"
    raise ValueError(f"device {requested!r}: distributed training runs on cpu or cuda")


@dataclass
class Session:
    """What ``distributed_session`` hands the caller."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    backend: str
    timeout_s: float
    watchdog: Watchdog | None


@contextlib.contextmanager
def distributed_session(timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "cpu",
                        backend: str | None = None, threads: int | None = None,
                        watchdog_grace_s: float = 30.0) -> Iterator[Session]:
    """Open the default process group from torchrun's env vars; always tear it down.

    Args:
        timeout_s: collective timeout (a hung peer fails the others after this long).
        device: ``cpu`` (gloo) or ``cuda`` (nccl, device ``cuda:LOCAL_RANK``).
        backend: override the backend.
        threads: torch intra-op threads per process (torchrun sets OMP_NUM_THREADS=1).
        watchdog_grace_s: the watchdog fires after ``timeout_s + watchdog_grace_s`` without
            a beat, so the collective's own, clearer error comes first.
    """
    if not in_torchrun():
        raise RuntimeError("no RANK/WORLD_SIZE in the environment: start distributed training "
                           "with `torchrun --nproc_per_node=N -m dlrm train ...` or "
                           "`dlrm train --nproc N ...`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    node_rank = local_rank()
    device, default_backend = device_and_backend(device, node_rank)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        if node_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {node_rank} needs GPU {node_rank}, but this node "
                               f"has {torch.cuda.device_count()}: start at most that many "
                               f"processes per node")
        torch.cuda.set_device(device)  # nccl and every default-device call use this GPU
    backend = backend or default_backend
    if threads:
        torch.set_num_threads(threads)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    watchdog = Watchdog(timeout_s + watchdog_grace_s, rank)
    try:
        yield Session(rank, world, node_rank, device, backend, timeout_s, watchdog)
    finally:
        watchdog.stop()
        gc.collect()  # free models/buffers that hold gloo work before the group goes
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def launch_local(nproc: int, argv: list[str], timeout_s: float | None = None,
                 env: dict[str, str] | None = None) -> int:
    """Run ``python -m dlrm *argv`` on ``nproc`` local processes through torchrun.

    torchrun's ``--standalone`` rendezvous picks a free port; if any worker fails, torchrun
    stops the others and this returns its non-zero exit code.
    """
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: must be at least 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "dlrm", *argv]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, timeout=timeout_s)
    return proc.returncode
