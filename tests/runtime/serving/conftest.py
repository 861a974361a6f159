"""Serving tests: a real uvicorn server on 127.0.0.1 (a free port) per test module, tiny random models
(the server: tests/support/live_server.py).

The model directories come from the session fixtures ``tiny_xtts_dir`` / ``tiny_vits_dir``
(``tests/runtime/conftest.py``); each server gets its own models root holding hard-linked copies
named as versions (tests/support/model_versions.py), so reload tests can switch between them and
break one without touching the shared originals.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def xtts_source(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue("tiny_xtts_dir"))


@pytest.fixture(scope="module")
def vits_source(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue("tiny_vits_dir"))


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real speech from espeak-ng as a voice reference (22.05 kHz mono WAV, about 4 s)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("refs") / "speaker.wav"
    subprocess.run(
        [espeak, "-w", str(path), "This is the reference voice, speaking clearly for the tests."], check=True
    )
    return path
