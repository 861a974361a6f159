"""Processes the dev cluster starts, tracked by PID file and stopped by PID (never by name pattern).

A PID file records the process start time too, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def _start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces; fields after the closing ')' are fixed
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: exited, waiting to be reaped
        return None
    return int(fields[19])


@dataclass
class TrackedProcess:
    name: str
    pid: int
    start_time: int
    log: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                _reap(self.pid)
                if not self.alive():
                    return
                time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class ProcessTable:
    """PID files under ``<state>/pids``: one per component."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> TrackedProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() signals it and its children
                env=env,
            )
        st = _start_time(proc.pid)
        if st is None:
            raise RuntimeError(f"{name} exited at once; see {log}")
        tp = TrackedProcess(name=name, pid=proc.pid, start_time=st, log=str(log))
        (self.dir / f"{name}.json").write_text(json.dumps(tp.__dict__))
        return tp

    def get(self, name: str) -> TrackedProcess | None:
        p = self.dir / f"{name}.json"
        if not p.exists():
            return None
        return TrackedProcess(**json.loads(p.read_text()))

    def all(self) -> list[TrackedProcess]:
        if not self.dir.exists():
            return []
        return [TrackedProcess(**json.loads(p.read_text())) for p in sorted(self.dir.glob("*.json"))]

    def forget(self, name: str) -> None:
        (self.dir / f"{name}.json").unlink(missing_ok=True)
