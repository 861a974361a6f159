"""``tts-runtime serve`` as the pod runs it: a real process, a spec file, signals and exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support.model_versions import add_version
from support.processes import free_port
from support.runtime_cli import REPO, runtime_env
from support.waiting import wait_for
from tts_contract.contract import ExitCode, ServeSpec

#: the ``run_runtime_cli`` fixture (tests/runtime/conftest.py): runs ``python -m tts_runtime.cli ARGS``
CliRunner = Callable[..., subprocess.CompletedProcess[str]]


pytestmark = pytest.mark.slow


def test_help_names_the_flags(run_runtime_cli: CliRunner) -> None:
    result = run_runtime_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for flag in (
        "--spec",
        "--model-dir",
        "--host",
        "--port",
        "--auth-token-file",
        "--max-queue",
        "TTS_SERVE_SPEC",
    ):
        assert flag in result.stdout, flag


def test_nothing_to_serve_is_bad_input() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tts_runtime.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in runtime_env().items() if k != "TTS_SERVE_SPEC"},
        cwd=REPO,
    )
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "--model-dir" in result.stderr


def test_corrupt_model_exits_65(vits_source: Path, tmp_path: Path, run_runtime_cli: CliRunner) -> None:
    version = add_version(vits_source, tmp_path, "broken")
    config = version / "config.json"
    text = config.read_text()
    config.unlink()  # a hard link to the shared model: replace, never edit
    config.write_text(text + " ")
    result = run_runtime_cli(
        "serve",
        "--model-dir",
        str(version),
        "--port",
        str(free_port()),
        "--device-policy",
        "CPU",
        timeout=180,
    )
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "failed verification" in result.stderr and "config.json" in result.stderr


def test_serves_from_a_spec_file_and_stops_on_sigterm(vits_source: Path, tmp_path: Path) -> None:
    add_version(vits_source, tmp_path / "models", "v1")
    port = free_port()
    spec = ServeSpec.model_validate(
        {
            "engine": "vits",
            "modelsRoot": str(tmp_path / "models"),
            "version": "v1",
            "devicePolicy": "CPU",
            "voicesDir": str(tmp_path / "voices"),
            "server": {"port": port, "maxConcurrency": 1, "maxQueue": 4},
        }
    )
    spec_file = tmp_path / "serve.json"
    spec_file.write_text(spec.model_dump_json(by_alias=True))
    env = {**runtime_env(), "TTS_SERVE_SPEC": str(spec_file)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tts_runtime.cli", "--log-format", "json", "serve", "--host", "127.0.0.1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 180, "the served model to become ready", interval=0.25, retry_on=())
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["version"] == "v1" and info["limits"]["maxQueue"] == 4
        speech = httpx.post(
            f"{url}/v1/audio/speech",
            json={"model": "tts-1", "input": "Hi.", "voice": "default", "response_format": "wav"},
            timeout=60,
        )
        assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert '"level": "info"' in stderr  # uvicorn and the server log through the runtime's JSON lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
