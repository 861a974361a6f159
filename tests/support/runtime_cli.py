"""The runtime's command line (``python -m tts_runtime.cli``) as a pod runs it: its environment, and the
trainer's spec file and the records it leaves (events.jsonl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .processes import REPO

__all__ = ["REPO", "Runner", "read_events", "runtime_env", "trainer_command", "write_spec"]

#: runs the real entry point in a subprocess: ``run("--spec", path)`` -> the completed process
Runner = Callable[..., subprocess.CompletedProcess[str]]


def runtime_env() -> dict[str, str]:
    # the CI machine has two cores shared with other jobs: keep each process' torch to them
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def trainer_command() -> list[str]:
    """The real entry point, as the Job runs it."""
    return [sys.executable, "-m", "tts_runtime.cli", "train"]


def write_spec(path: Path, **fields: Any) -> Path:
    """A run spec for the trainer (CPU, no status reporting) with ``fields`` on top."""
    spec = {
        "run": {"namespace": "default", "name": "test-run"},
        "devicePolicy": "CPU",
        "reportStatus": False,
        **fields,
    }
    path.write_text(json.dumps(spec))
    return path


def read_events(output: Path) -> list[dict[str, Any]]:
    """The trainer's events.jsonl under its output folder ([] before it wrote one)."""
    path = output / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
