"""The real operator (``tts-operator run``) as a subprocess watching one namespace: the e2e, chaos and
chart tests' operator, and the benchmarks' subject."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .processes import ChildProcess, free_port, port_open


class OperatorProcess(ChildProcess):
    """``tts-operator run`` watching one namespace, ready once its metrics endpoint listens; stopped by
    its PID. ``launcher``: arguments between the interpreter and ``-m tts_operator.cli`` (a profiler
    that runs the module, say). ``start`` may be called again after a stop or a kill (a new port)."""

    name = "the operator (its metrics endpoint)"

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path, launcher: Sequence[str] = ()) -> None:
        super().__init__([], log_path)
        self.kubeconfig, self.namespace, self.launcher = kubeconfig, namespace, list(launcher)
        self.metrics_port = 0

    def command(self) -> list[str]:
        self.metrics_port = free_port()
        return [
            sys.executable,
            *self.launcher,
            "-m",
            "tts_operator.cli",
            "run",
            "--namespace",
            self.namespace,
            "--kubeconfig",
            self.kubeconfig,
            "--metrics-port",
            str(self.metrics_port),
            "--log-format",
            "json",
        ]

    def ready(self) -> bool:
        return port_open(self.metrics_port)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()
