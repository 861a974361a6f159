"""What a transfer tells people: a progress counter the transfer threads update, a printer that turns
it into at most about one stderr line a second, and the failure line for Kubernetes.

On failure a command prints one line, ``<Reason>: <uri>: <what>``, to stderr and writes it to
``/dev/termination-log`` when that file exists and is writable: Kubernetes shows it in the container
status, and the operator reads the reason from the exit code and the detail from this message.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

#: where Kubernetes reads a container's termination message (the pod spec's terminationMessagePath)
TERMINATION_LOG = "/dev/termination-log"
#: tests point the failure line elsewhere
TERMINATION_LOG_ENV = "TTS_TERMINATION_LOG"
#: Kubernetes keeps at most 4096 bytes of a termination message
TERMINATION_LOG_MAX = 4096

MIB = 1 << 20


@dataclass
class Progress:
    """Counters of one fetch or publish, shared by its threads (``add`` and ``file_done`` lock)."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    #: bytes of the files done or in progress, skipped ones included
    bytes_done: int = 0
    #: bytes that crossed the network in this process (a resumed file adds only its missing part)
    transferred: int = 0
    files_skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listeners: list[Callable[[Progress], None]] = field(default_factory=list, repr=False)

    def plan(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_total = files
            self.bytes_total = nbytes
        self._tell()

    def add(self, nbytes: int, *, transferred: bool = True) -> None:
        with self._lock:
            self.bytes_done += nbytes
            if transferred:
                self.transferred += nbytes
        self._tell()

    def file_done(self, *, skipped: bool = False, nbytes: int = 0) -> None:
        """One file is complete; ``skipped`` with its ``nbytes`` when it was already there."""
        with self._lock:
            self.files_done += 1
            if skipped:
                self.files_skipped += 1
                self.bytes_done += nbytes
        self._tell()

    def listen(self, fn: Callable[[Progress], None] | None) -> None:
        if fn is not None:
            self._listeners.append(fn)

    def _tell(self) -> None:
        for fn in self._listeners:
            fn(self)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, verb: str = "fetched") -> str:
        elapsed = max(self.elapsed, 1e-6)
        rate = self.transferred / MIB / elapsed
        skipped = f", {self.files_skipped} already there" if self.files_skipped else ""
        return (
            f"{verb} {self.files_done}/{self.files_total} files{skipped}, "
            f"{self.bytes_done / MIB:.1f}/{self.bytes_total / MIB:.1f} MiB, "
            f"{rate:.1f} MiB/s"
        )


class ProgressPrinter:
    """A ``Progress`` listener that prints ``Progress.line()`` at most every ``interval`` seconds."""

    def __init__(
        self, verb: str = "fetched", interval: float = 1.0, emit: Callable[[str], None] | None = None
    ):
        self.verb = verb
        self.interval = interval
        self.emit = emit or say
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        self.emit(progress.line(self.verb))


def say(line: str) -> None:
    """A line for people on stderr."""
    print(line, file=sys.stderr, flush=True)


def line_printers(
    log_format: str, logger: logging.Logger
) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """(progress, warning) line writers: stderr lines, or log records when logs are JSON (a pod's
    log pipeline parses every line)."""
    if log_format == "json":
        return logger.info, logger.warning
    return say, say


def report_failure(line: str, stream: TextIO | None = None) -> None:
    """Print the one failure line to stderr and write it to the termination log when one is there."""
    print(line, file=stream or sys.stderr, flush=True)
    path = os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG
    if not os.path.exists(path) or not os.access(path, os.W_OK):
        return
    data = line.encode()[:TERMINATION_LOG_MAX]
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError:
        pass  # the line is on stderr: the container status falls back to the log's tail
