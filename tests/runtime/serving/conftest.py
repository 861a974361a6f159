"""Serving tests: a real uvicorn server on 127.0.0.1 (a free port) per test module, tiny random models.

The model directories come from the session fixtures ``tiny_xtts_dir`` / ``tiny_vits_dir``
(``tests/runtime/conftest.py``); each server gets its own models root holding hard-linked copies
named as versions, so reload tests can switch between them and break one without touching the
shared originals.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tts_operator.contract import MANIFEST_NAME, ModelManifest
from tts_runtime.server import Settings, create_app

READY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def add_version(source: Path, models_root: Path, version: str) -> Path:
    """Copy a model directory into ``models_root/version`` (hard links: no 100 MB copies) and name
    the version in its manifest. The manifest itself is rewritten, so it is a real copy."""
    dest = models_root / version
    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.name == MANIFEST_NAME or not item.is_file():
            continue
        try:
            os.link(item, dest / item.name)
        except OSError:
            shutil.copy2(item, dest / item.name)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    manifest["version"] = version
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    ModelManifest.load(dest)  # still valid
    return dest


@dataclass
class LiveServer:
    url: str
    settings: Settings
    app: Any

    def client(self, token: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @property
    def state(self) -> Any:
        return self.app.state.tts


@contextmanager
def live_server(settings: Settings, token: str | None = None) -> Iterator[LiveServer]:
    """Run ``create_app(settings)`` on uvicorn in a thread until the model is ready."""
    import uvicorn

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", settings, app)
    try:
        with httpx.Client(base_url=live.url, timeout=5) as c:

            def ready() -> bool:
                if not thread.is_alive():
                    raise AssertionError("the server thread died during start-up")
                try:
                    r = c.get("/readyz")
                except httpx.TransportError:
                    return False
                body = r.json()
                if body.get("phase") == "failed":
                    raise AssertionError(f"the server failed to start: {body.get('error')}")
                return r.status_code == 200

            wait_for(ready, READY_TIMEOUT, "the server to become ready", interval=0.2)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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
