"""Subprocesses the tests and benches start (the operator, servers, proxies): started with their output in
a log file, waited for until ready, stopped by their PID (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def child_env(**extra: str) -> dict[str, str]:
    """This process' environment for a child, unbuffered (its log is read while it runs)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def stop_process(proc: subprocess.Popen | None, grace: float = 20, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM) to a child still running, then SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChildProcess:
    """A command run with stdout and stderr in ``log_path``; ready when ``ready()`` says so; stopped by
    its PID (SIGTERM, SIGKILL after ``stop_grace`` seconds). ``start`` fails at once, with the log's
    tail, if the command exits while starting, and stops it if it is not ready in time."""

    name = "the process"
    ready_timeout: float = 60
    stop_grace: float = 20

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        name: str | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float | None = None,
        stop_grace: float | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.argv, self.log_path, self.cwd = list(argv), log_path, cwd
        self.name = name or self.name
        self._ready = ready
        self.ready_timeout = ready_timeout or self.ready_timeout
        self.stop_grace = stop_grace or self.stop_grace
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line (a subclass may build it at start, e.g. around a fresh port)."""
        return self.argv

    def ready(self) -> bool:
        """Whether it has started: ``ready`` of the constructor, else as soon as it runs."""
        return self._ready() if self._ready is not None else True

    def start(self, timeout: float | None = None) -> Self:
        argv = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=child_env()
            )
        try:
            wait_for(self._ready_or_exited, timeout or self.ready_timeout, f"{self.name} to be ready", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready_or_exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
        return self.ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, self.stop_grace)
        self.proc = None


def http_ok(url: str) -> Callable[[], bool]:
    """A ``ready`` test: ``url`` answers 200."""
    import httpx

    def ok() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return ok
