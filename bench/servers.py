"""The two servers the serving benchmark talks to, as subprocesses: ours and coqui-tts's own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    # each server sizes its own thread pools, as it would in a pod (OMP_NUM_THREADS set by the caller
    # still applies to all of them)
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class ServerProcess:
    """A server started by argv, ready when ``ready_path`` answers 200; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log: Path) -> None:
        self.name, self.argv, self.port, self.ready_path, self.log = name, argv, port, ready_path, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300) -> ServerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=bench_env())
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while True:
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode} during start-up:\n{tail}")
                try:
                    if c.get(self.ready_path).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} was not ready after {timeout:g} s (log: {self.log})")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def ours(model_dir: Path, workdir: Path, max_concurrency: int = 1) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tts_runtime.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--model-dir",
        str(model_dir),
        "--device-policy",
        "CPU",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--voices-dir",
        str(workdir / "voices"),
        "--max-concurrency",
        str(max_concurrency),
        # the benchmark's own load must not be refused or timed out: it measures, it does not overload
        "--max-queue",
        "64",
        "--request-timeout",
        "900",
    ]
    return ServerProcess("tts-runtime serve", argv, port, "/readyz", workdir / "ours.log")


def coqui(model_dir: Path, workdir: Path) -> ServerProcess:
    """``TTS/server/server.py`` loaded with the same checkpoint (PINS.md: one global lock, no streaming)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "TTS.server.server",
        "--model_path",
        str(model_dir / "model.pth"),
        "--config_path",
        str(model_dir / "config.json"),
        "--port",
        str(port),
    ]
    return ServerProcess("coqui-tts server", argv, port, "/", workdir / "coqui.log")
