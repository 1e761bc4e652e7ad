"""Files a run or a command reads back, written atomically: ``atomic_file`` (a temporary file in
the same folder, fsynced, renamed over the target) and ``write_json_atomic``. A process killed
at any moment leaves the old complete file or the new one, never a mix. Base layer: every
other layer (data, training, bench, the CLI) writes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace ``path`` only when the block completes.

    Writes go to a temporary file in the same folder, which is fsynced and renamed over
    ``path`` (and the folder fsynced): a process killed at any moment leaves either the old
    complete file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it (mkstemp makes 0600)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON (indented) through ``atomic_file``."""
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())
