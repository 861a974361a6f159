"""The two servers the serving benchmark talks to, as subprocesses: ours and coqui-tts's own."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.processes import ChildProcess, free_port, http_ok


class ServerProcess(ChildProcess):
    """A server started by argv, ready when ``ready_path`` answers 200; stopped by its PID. Each server
    sizes its own thread pools, as it would in a pod (OMP_NUM_THREADS set by the caller still applies)."""

    ready_timeout = 300

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log: Path) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        super().__init__(argv, log, name=name, ready=http_ok(self.url + ready_path))


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
