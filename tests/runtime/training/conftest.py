"""Fixtures for the trainer's tests: spoken datasets, tiny base models, and running the real CLI
(``run_cli``; the spec and the records it leaves: tests/support/runtime_cli.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.datasets import make_ljspeech_dataset
from support.runtime_cli import REPO, Runner, runtime_env, trainer_command
from tts_runtime.demo_model import make_demo_model

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


@pytest.fixture
def run_cli() -> Runner:
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*trainer_command(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=runtime_env(),
            cwd=REPO,
        )

    return run
