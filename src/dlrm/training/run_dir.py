"""A run directory belongs to one run: created exclusively, locked while written, read back
tolerantly.

Rules (``dlrm train``, single-process and distributed alike):

- **New names are never reused.** ``new_run_dir(parent, prefix)`` makes
  ``parent/prefix-YYYYmmdd-HHMMSS`` with an exclusive ``mkdir`` (``-2``, ``-3``, ... when that
  name is taken), so two runs started in the same second get two directories.
- **One writer.** ``RunDirLock`` holds an exclusive ``flock`` on ``RUN/.lock`` while a process
  writes the run. The kernel drops it when the process ends, however it ends (SIGKILL
  included), so a killed run never leaves a stale lock; a second process is refused with the
  holder's pid.
- **A new run needs a new or empty directory.** ``claim(RUN, resume=False)`` refuses a
  directory that holds a run (and says how to resume it) or any other files.
- **Resume continues the run in place.** ``claim(RUN, resume=True)`` needs the run's
  ``config.json``.
- **Read back tolerantly.** ``read_json`` names the file of a damaged JSON file;
  ``read_jsonl`` drops a torn last record (a write cut by a kill) with a warning naming the
  file and line. Everything else the loop reads back is written atomically
  (``dlrm.files.write_json_atomic``, ``dlrm.training.checkpoint.save_atomic``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
# What a run writes: any of these makes a directory "hold a run".
RUN_FILES = (CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, "last.pt", "best.pt", "last", "best")


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked; the message says why and what to do."""


class RunDirBusy(RunDirError):
    """Another process is writing this run directory."""


class WriterFailed(RunDirError):
    """On the other processes of a job: the writing process refused the run directory (it
    reports why)."""


def new_run_dir(parent: str | Path, prefix: str) -> Path:
    """Create and return a fresh, empty ``parent/prefix-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ...
    appended when another run took that name: ``mkdir`` is atomic, so no two callers, in one
    process or many, ever get the same directory)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100_000):
        path = parent / (f"{prefix}-{stamp}" if n == 1 else f"{prefix}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"{parent}: no free run directory name for {prefix}-{stamp}")


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on ``RUN/.lock``, held by the writing process.

    The lock file holds the holder's pid, host and start time, for the refusal message; the
    lock itself is the kernel's, released when the file is closed or the process dies.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise _busy(self.run_dir, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (it is harmless)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds (part of) a ``dlrm train`` run."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in RUN_FILES)


def describe_run(run_dir: str | Path) -> str:
    """A few words on the run in ``run_dir``: finished or how far it got."""
    run_dir = Path(run_dir)
    summary = run_dir / SUMMARY_NAME
    if summary.is_file():
        try:
            return f"finished at step {json.loads(summary.read_text())['steps']}"
        except (ValueError, KeyError, TypeError, OSError):
            return "finished"
    if (run_dir / "last.pt").is_file() or (run_dir / "last" / "meta.pt").is_file():
        return "stopped after its last checkpoint"
    return "stopped before its first checkpoint"


@contextlib.contextmanager
def claim(run_dir: str | Path, resume: bool) -> Iterator[Path]:
    """Own ``run_dir`` for the ``with`` block: locked against other writers, and checked.

    A new run (``resume=False``) creates the directory if needed and refuses one that holds a
    run or anything else; ``resume=True`` needs the run's ``config.json``. Raises
    ``RunDirError`` (``RunDirBusy`` when another process holds the lock) with what to do.
    """
    run_dir = Path(run_dir)
    if resume:
        read_record(run_dir)
    else:
        check_usable(run_dir, resume=False)  # before the lock file: a refused folder stays
        run_dir.mkdir(parents=True, exist_ok=True)  # untouched
    with RunDirLock(run_dir):
        if not resume:
            _check_empty(run_dir)  # again, under the lock: another process may have won
        yield run_dir


def _writer_of(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock right now (None: nobody); creates nothing."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # also drops the lock this probe may have taken
    return None


def _busy(run_dir: Path, holder: str) -> RunDirBusy:
    return RunDirBusy(f"{run_dir} is being written by another dlrm process ({holder}); wait "
                      f"for it to finish, or choose another directory")


def check_usable(run_dir: str | Path, resume: bool) -> None:
    """What ``claim`` would refuse, checked without taking or creating anything (a launcher
    checks before starting processes that would all be refused)."""
    run_dir = Path(run_dir)
    if resume:
        read_record(run_dir)
        holder = _writer_of(run_dir)
        if holder is not None:
            raise _busy(run_dir, holder)
    elif run_dir.exists():
        if not run_dir.is_dir():
            raise RunDirError(f"{run_dir} is a file; a run needs a new or empty directory")
        _check_empty(run_dir)


def _check_empty(run_dir: Path) -> None:
    if holds_run(run_dir):
        holder = _writer_of(run_dir)
        if holder is not None:
            raise _busy(run_dir, holder)
        raise RunDirError(
            f"{run_dir} already holds a run ({describe_run(run_dir)}); continue it with "
            f"`dlrm train --resume {run_dir}`, or choose a new --out")
    others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3
                                         else "")
        raise RunDirError(f"{run_dir} is not empty (it holds {shown}); a run needs a new or "
                          f"empty directory: choose another --out")


def read_json(path: str | Path) -> Any:
    """A JSON file, or ``RunDirError`` naming the file and the position when it is not
    JSON (run files are written atomically, so that means edited or damaged)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not a text file ({err.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: "
                          f"{err.msg})") from None


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, at most ``limit`` of them.

    A record that does not parse is dropped with a warning naming the file and line: a torn
    last line is what a kill in the middle of an append leaves. Records after a bad one are
    kept (each line stands alone).
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if limit is not None and len(records) >= limit:
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                torn = not raw.endswith(b"\n")
                log.warning("%s:%d: dropped %s (%s)", path, number,
                            "a torn last record, cut by a killed write" if torn
                            else "a record that is not valid JSON", err)
                continue
            records.append(record)
    return records


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records``, atomically."""
    from dlrm.files import atomic_file

    with atomic_file(path) as f:
        for record in records:
            f.write((json.dumps(record) + "\n").encode())


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the run in ``run_dir`` (what ``--resume`` continues), with
    ``RunDirError`` saying what is wrong when it is not a run directory."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise RunDirError(f"--resume {run_dir}: expected a run directory (the folder holding "
                          f"config.json and last.pt), not a file")
    if not run_dir.is_dir():
        raise RunDirError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / CONFIG_NAME).is_file():
        raise RunDirError(f"--resume {run_dir}: not a run directory (no {CONFIG_NAME})")
    record = read_json(run_dir / CONFIG_NAME)
    missing = [key for key in ("model_config", "train", "data")
               if not isinstance(record, dict) or key not in record]
    if missing:
        raise RunDirError(f"{run_dir / CONFIG_NAME}: not a run record (no "
                          f"{', '.join(missing)})")
    return record


def discard_if_unused(run_dir: str | Path) -> None:
    """Remove ``run_dir`` if it holds nothing but its lock file (a run refused before it
    wrote anything, in a directory made for it)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name == LOCK_NAME for p in run_dir.iterdir()):
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
