"""What a preprocessing run reports: skipped lines, progress events, errors, metadata.json.

- ``SkipLog``: the one record of skipped input lines for every format: a count per kind and
  the first few examples as ``{"file", "line", "reason"}``; ``rows read = rows written + rows
  skipped`` is checked against it at the end of every stage.
- ``Progress``: the one progress event type. Long work calls ``progress(Progress(...))``
  with a stage name, units done and total, and the unit ("B" for bytes read, "rows",
  "columns"); the CLI renders it as a bar with rate and ETA.
- ``BadLineError`` (strict mode: ``file:line: reason``) and ``DataError`` (any other refusal:
  a bad flag, an OS error, an output folder that is not ours) carry a one-line message.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SKIP_EXAMPLES = 10


class DataError(ValueError):
    """A refusal with a one-line message naming the file, flag or folder at fault."""


class BadLineError(DataError):
    """A bad input line in ``strict`` mode; the message names ``file:line`` and the reason."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


def os_error(err: OSError, doing: str) -> DataError:
    """An ``OSError`` as a one-line ``DataError``: ``cannot <doing>: <why> (<file>)``."""
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return DataError(f"cannot {doing}: {err.strerror or err}{where}")


@dataclass
class SkipLog:
    """Skipped lines: a count per kind and the first ``MAX_SKIP_EXAMPLES`` examples."""

    count: int = 0
    kinds: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, source: str, lines: Any, kind: str, reasons: list[str]) -> None:
        """Record skipped 1-based ``lines`` (a sequence) of one ``kind``; ``reasons[i]``
        describes ``lines[i]`` (it may be shorter: only the first few become examples)."""
        n = len(lines)
        if n == 0:
            return
        self.count += n
        self.kinds[kind] += n
        for line, reason in zip(list(lines[:MAX_SKIP_EXAMPLES]), reasons, strict=False):
            if len(self.examples) < MAX_SKIP_EXAMPLES:
                self.examples.append({"file": source, "line": int(line), "reason": reason})

    def merge(self, other: SkipLog) -> None:
        self.count += other.count
        self.kinds.update(other.kinds)
        for ex in other.examples:
            if len(self.examples) < MAX_SKIP_EXAMPLES:
                self.examples.append(dict(ex))

    def shift_lines(self, offset: int) -> None:
        """Make block-relative example line numbers absolute."""
        for ex in self.examples:
            ex["line"] += offset

    def to_dict(self) -> dict[str, Any]:
        return {"rows_skipped": self.count, "skip_reasons": dict(self.kinds),
                "skipped_examples": [dict(e) for e in self.examples]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkipLog:
        return cls(int(d["rows_skipped"]), Counter({str(k): int(v) for k, v in
                                                    d["skip_reasons"].items()}),
                   [dict(e) for e in d["skipped_examples"]])


@dataclass
class Progress:
    """One progress event: ``done`` of ``total`` ``unit`` in ``stage``; ``message`` for a
    one-off note (e.g. which days a resumed run reuses)."""

    stage: str
    done: int
    total: int
    unit: str = "B"
    message: str = ""


ProgressFn = Callable[[Progress], None]


def no_progress(_event: Progress) -> None:
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tool_version() -> str:
    from dlrm import __version__

    return __version__


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Part:
    """One staged input: where its arrays are and what went into it."""

    name: str
    folder: Path
    input: dict[str, Any]
    rows_read: int = 0
    rows_written: int = 0
    positives: int = 0
    skips: SkipLog = field(default_factory=SkipLog)
    truncated_gzip: bool = False
    seconds: float = 0.0
    reused: bool = False
    # Where the staging time went: waiting for the reader (main thread), parsing (CPU
    # seconds of the worker threads, which run in parallel), appending to files.
    timings: dict[str, float] = field(default_factory=lambda: {
        "read_wait_s": 0.0, "parse_cpu_s": 0.0, "write_s": 0.0, "close_s": 0.0})

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.name, "name": self.input["name"], "size": self.input["size"],
                "rows_read": self.rows_read, "rows_written": self.rows_written,
                "positives": self.positives, "truncated_gzip": self.truncated_gzip,
                "seconds": round(self.seconds, 3), "reused": self.reused,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                **self.skips.to_dict()}
