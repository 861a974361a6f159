"""Fixtures shared by the runtime tests: tiny random models and a spoken dataset, each made once.

Session-scoped and read-only by convention: a test that changes one copies it first.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.datasets import MissingToolError, make_ljspeech_dataset
from support.runtime_cli import REPO, runtime_env


@pytest.fixture(scope="session")
def tiny_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XTTS version directory (also a fine-tuning base: dvae.pth, mel_stats.pth)."""
    from tts_runtime.demo_model import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("models") / "tiny-xtts", "xtts", seed=0)


@pytest.fixture(scope="session")
def tiny_vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VITS version directory (characters, no phonemes)."""
    from tts_runtime.demo_model import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("models") / "tiny-vits", "vits", seed=0)


@pytest.fixture(scope="session")
def ljspeech_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six espeak-ng clips (about 1.6-2.1 s each) in LJSpeech layout, plus ``speaker_ref.wav``."""
    try:
        return make_ljspeech_dataset(tmp_path_factory.mktemp("ljspeech") / "dataset", n_clips=6)
    except MissingToolError as e:
        pytest.skip(str(e))


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_runtime_cli() -> CliRunner:
    """Run the real ``tts-runtime`` entry point in a subprocess: ``run_runtime_cli("preflight", ...)``."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tts_runtime.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=runtime_env(),
            cwd=REPO,
        )

    return run
