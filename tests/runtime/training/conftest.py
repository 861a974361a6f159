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

from .tiny_models import make_tiny_vits, make_tiny_xtts

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


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def speak(text: str, dest: Path, rate: int = 22050) -> Path:
    """Real speech: espeak-ng speaks at 22050 Hz; sox converts when another rate is asked for."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = dest.with_suffix(".espeak.wav")
    subprocess.run([_require("espeak-ng"), "-w", str(raw), text], check=True)
    if rate == 22050:
        raw.rename(dest)
    else:
        subprocess.run([_require("sox"), str(raw), "-r", str(rate), str(dest)], check=True)
        raw.unlink()
    return dest


def make_dataset(dest: Path, n_clips: int) -> Path:
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(PHRASES[:n_clips]):
        clip_id = f"clip{i:02d}"
        speak(text, dest / "wavs" / f"{clip_id}.wav")
        lines.append(f"{clip_id}|{text}|{text}")
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def spoken_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six espeak-ng clips in LJSpeech layout, made once; copy it before changing it."""
    return make_dataset(tmp_path_factory.mktemp("ljspeech") / "ds", 6)


@pytest.fixture
def dataset_copy(spoken_dataset: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "dataset"
    shutil.copytree(spoken_dataset, dest)
    return dest


def _tiny_base(dest: Path, engine: str) -> Path:
    """The project's demo model (``tts-runtime demo-model``) as the base; our own recipe if it is absent."""
    try:
        from tts_runtime.demo_model import make_demo_model
    except ImportError:
        return (make_tiny_xtts if engine == "xtts" else make_tiny_vits)(dest)
    return make_demo_model(dest, engine)


@pytest.fixture(scope="session")
def tiny_vits_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("vits") / "base", "vits")


@pytest.fixture(scope="session")
def tiny_xtts_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("xtts") / "base", "xtts")


def cli_command() -> list[str]:
    """The real entry point: the project's dispatcher when it is there, the train module otherwise."""
    try:
        import tts_runtime.cli  # noqa: F401

        return [sys.executable, "-m", "tts_runtime.cli", "train"]
    except ImportError:
        return [sys.executable, "-m", "tts_runtime.train_cli"]


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
