"""Fixtures for the trainer's tests: spoken datasets, tiny base models, and running the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.datasets import make_ljspeech_dataset
from tts_runtime.demo_model import make_demo_model

REPO = Path(__file__).resolve().parents[3]
#: short phrases: the tiny XTTS' audio-token cap (48 tokens) fits clips up to about 2.2 s
PHRASES = [
    "Hello world.",
    "Good morning.",
    "See you soon.",
    "Thank you.",
    "It is late.",
    "Come here.",
    "Not today.",
    "Well done.",
]


def make_dataset(dest: Path, n_clips: int) -> Path:
    return make_ljspeech_dataset(dest, n_clips, texts=PHRASES)


@pytest.fixture(scope="session")
def spoken_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six espeak-ng clips in LJSpeech layout, made once; copy it before changing it."""
    return make_dataset(tmp_path_factory.mktemp("ljspeech") / "ds", 6)


@pytest.fixture
def dataset_copy(spoken_dataset: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "dataset"
    shutil.copytree(spoken_dataset, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_vits_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("vits") / "base", "vits")


@pytest.fixture(scope="session")
def tiny_xtts_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("xtts") / "base", "xtts")


def cli_command() -> list[str]:
    """The real entry point, as the Job runs it."""
    return [sys.executable, "-m", "tts_runtime.cli", "train"]


def write_spec(path: Path, **fields: Any) -> Path:
    spec = {
        "run": {"namespace": "default", "name": "test-run"},
        "devicePolicy": "CPU",
        "reportStatus": False,
        **fields,
    }
    path.write_text(json.dumps(spec))
    return path


def env() -> dict[str, str]:
    # one thread per process: the CI machine has two cores shared with other jobs
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> Runner:
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli_command(), *args], capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO
        )

    return run


def read_events(output: Path) -> list[dict[str, Any]]:
    path = output / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
