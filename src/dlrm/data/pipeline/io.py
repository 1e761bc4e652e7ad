"""Reading inputs and publishing outputs: the only place that touches the file system.

Reading: ``check_input`` refuses what is not a readable regular file (a directory, a FIFO, a
missing path) with one line; ``BlockReader`` yields plain or gzip files in blocks cut at
newlines.

Writing: ``BuildFolder`` builds a data set in a private folder beside the target
(``.NAME.dlrm-build``) and publishes it with one rename when it is complete: until then the
target is untouched, and a killed or failed run leaves the old data set (or nothing) there,
never a mix. A target that exists is replaced only when it is empty or ``overwrite`` is
given; a non-empty folder is refused by name otherwise. On Linux the replacement is one
atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, and an interrupted swap is
repaired by the next run. The build folder carries ``.dlrm-build.json`` (what is being built,
by which settings): a rerun with the same settings resumes in it, a rerun with others starts
it afresh, and a folder at that name without the marker is never deleted.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlrm.data.pipeline.metadata import DataError, os_error

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 16 << 20
BUILD_MARK = ".dlrm-build.json"
METADATA_FILE = "metadata.json"


# --------------------------------------------------------------------------- inputs
def check_input(path: str | Path, what: str = "input") -> Path:
    """``path`` if it is a readable regular file; a one-line ``DataError`` otherwise."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise os_error(err, f"read {what} {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{what} {path} is a directory; expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} {path} is not a regular file (a FIFO or device?); "
                        "preprocessing reads a file it can measure and reread")
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} {path}: permission denied")
    return path


def input_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class BlockReader:
    """Iterate over a plain or gzip file in blocks that end at a newline.

    Yields ``(block, bytes_done)``: ``block`` is bytes-like (a memoryview into a fresh buffer
    for plain files: no copy); ``bytes_done`` counts bytes of the file as stored, so a bar
    over a ``.gz`` tracks the compressed size. After iteration ``truncated`` is True when a
    gzip stream ended early; its incomplete last line is then in ``partial_tail`` (not
    yielded): a cut-off line must not be read as a short valid row.
    """

    def __init__(self, path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes <= 0:
            raise DataError(f"chunk size {chunk_bytes} bytes: must be positive")
        self.path = check_input(path)
        self.chunk_bytes = int(chunk_bytes)
        self.total_bytes = self.path.stat().st_size
        self.truncated = False
        self.partial_tail = b""

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        try:
            with open(self.path, "rb") as f:
                gzipped = f.read(2) == b"\x1f\x8b"
                f.seek(0)
                yield from (self._gzip_blocks(f) if gzipped else self._plain_blocks(f))
        except zlib.error as err:
            raise DataError(f"{self.path}: not a valid gzip file ({err})") from None
        except OSError as err:
            raise os_error(err, f"read {self.path}") from None

    def _plain_blocks(self, f: Any) -> Iterator[tuple[Any, int]]:
        carry = b""
        while True:
            buf = bytearray(len(carry) + self.chunk_bytes)
            buf[: len(carry)] = carry
            got = f.readinto(memoryview(buf)[len(carry):])
            size = len(carry) + got
            if got == 0:
                break
            cut = buf.rfind(b"\n", 0, size) + 1
            if cut == 0:  # no newline yet (a line longer than a chunk): read on
                carry = bytes(buf[:size])
                continue
            yield memoryview(buf)[:cut], f.tell()
            carry = bytes(buf[cut:size])
        if carry:
            yield carry, f.tell()

    def _gzip_blocks(self, f: Any) -> Iterator[tuple[Any, int]]:
        decomp = zlib.decompressobj(wbits=47)
        pending: list[bytes] = []
        pending_size = 0
        while True:
            raw = f.read(1 << 22)
            if not raw:
                break
            data = decomp.decompress(raw)
            # Concatenated gzip members: start a new decompressor on the leftover bytes.
            while decomp.eof and decomp.unused_data:
                rest = decomp.unused_data
                decomp = zlib.decompressobj(wbits=47)
                data += decomp.decompress(rest)
            pending.append(data)
            pending_size += len(data)
            if pending_size >= self.chunk_bytes:
                joined = b"".join(pending)
                cut = joined.rfind(b"\n") + 1
                if cut:
                    yield joined[:cut], f.tell()
                    pending, pending_size = [joined[cut:]], len(joined) - cut
        pending.append(decomp.flush())
        joined = b"".join(pending)
        if not decomp.eof:
            self.truncated = True
            cut = joined.rfind(b"\n") + 1
            joined, self.partial_tail = joined[:cut], joined[cut:]
        if joined:
            yield joined, f.tell()


# --------------------------------------------------------------------------- outputs
def _known_data_set(folder: Path) -> str | None:
    """A short description if ``folder`` holds a data set written by dlrm, else None."""
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") not in ("dlrm-memmap", "dlrm-table-v1"):
        return None
    return f"{meta.get('format')}, {meta.get('dataset') or meta.get('name') or 'data set'}"


def _listing(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name for p in folder.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False when the
    system cannot (then the caller renames in two steps)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BuildFolder:
    """A private folder beside ``target`` where a data set is built, then published.

    Args:
        target: the folder the finished data set will be (``--out``).
        settings: what is being built (inputs, schema, options): a rerun resumes in the build
            folder only when these are equal.
        overwrite: replace a non-empty ``target`` (a data set or not) once the new one is
            complete. Without it such a target is refused before any work.

    Use as a context manager; ``publish()`` at the end. ``resumed`` says whether an earlier
    unfinished run's folder was kept; ``note`` says in words what happened to it.
    """

    def __init__(self, target: str | Path, settings: dict[str, Any], overwrite: bool = False
                 ) -> None:
        self.target = Path(target)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.overwrite = overwrite
        name = self.target.name or "out"
        self.path = self.target.parent / f".{name}.dlrm-build"
        self.old = self.target.parent / f".{name}.dlrm-old"
        self.resumed = False
        self.note = ""
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> BuildFolder:
        try:
            self._repair_interrupted_swap()
            self._check_target()
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._claim()
        except OSError as err:
            self.release()
            raise os_error(err, f"prepare output folder {self.target}") from None
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _repair_interrupted_swap(self) -> None:
        """Two-rename publishing was interrupted: the old data set is at ``.NAME.dlrm-old``."""
        if not self.old.exists():
            return
        if not self.target.exists():
            os.rename(self.old, self.target)
            log.warning("restored %s from %s (an interrupted publish)", self.target, self.old)
        elif _known_data_set(self.target):
            shutil.rmtree(self.old)

    def _check_target(self) -> None:
        t = self.target
        existing = next((p for p in t.parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise DataError(f"--out {t}: {existing} is a file, not a folder")
        if not t.exists() and not t.is_symlink():
            return
        if not t.is_dir():
            raise DataError(f"--out {t} exists and is not a folder; choose a folder path")
        if not os.access(t.parent, os.W_OK):
            raise DataError(f"--out {t}: cannot write in {t.parent} (permission denied)")
        if self.overwrite or not any(t.iterdir()):
            return
        known = _known_data_set(t)
        if known:
            raise DataError(f"--out {t} already holds a data set ({known}); pass --overwrite "
                            "to replace it (it is kept until the new one is complete), or "
                            "choose another folder")
        raise DataError(f"--out {t} is not empty and holds no dlrm data set ({_listing(t)}); "
                        "nothing was changed. Choose an empty or new folder, or pass "
                        "--overwrite to replace it")

    def _claim(self) -> None:
        """Create or reuse the build folder, holding an exclusive lock on it."""
        mark = self.path / BUILD_MARK
        if self.path.exists():
            if not self.path.is_dir() or not (mark.is_file() or _known_data_set(self.path)):
                raise DataError(f"{self.path} exists and was not made by dlrm; move it away "
                                "(dlrm builds the data set there before publishing it)")
            self._lock()
            try:
                record = json.loads(mark.read_text()) if mark.is_file() else None
            except (OSError, ValueError):
                record = None
            if isinstance(record, dict) and record.get("settings") == self.settings:
                self.resumed = True
                self.note = f"resuming the unfinished run in {self.path}"
                return
            self.note = (f"starting afresh: {self.path} held an unfinished run with other "
                         "settings" if record is not None else
                         f"starting afresh: {self.path} held an unreadable or finished build")
            for child in list(self.path.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            self.path.mkdir()
            self._lock()
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "pid": os.getpid()}, indent=1))
        os.replace(tmp, mark)

    def _lock(self) -> None:
        self._lock_fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DataError(f"another dlrm process is building {self.target} (in {self.path}); "
                            "wait for it or stop it") from None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ publish
    def publish(self) -> None:
        """Make the build folder the target with one rename (the old target, if any, is
        deleted only after the new data set is in place)."""
        try:
            (self.path / BUILD_MARK).unlink(missing_ok=True)
            _fsync_dir(self.path)
            if not self.target.exists():
                os.rename(self.path, self.target)
            elif _exchange(self.path, self.target):
                shutil.rmtree(self.path)  # now the old target
            else:
                os.rename(self.target, self.old)
                os.rename(self.path, self.target)
                shutil.rmtree(self.old)
            _fsync_dir(self.target.parent)
        except OSError as err:
            raise os_error(err, f"publish {self.target}") from None
        finally:
            self.release()
