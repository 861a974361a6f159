"""One source of truth for the pins: the runtime image installs what the tests install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_pins(extra: str) -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    pins = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.]+)", d)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _dockerfile_args(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))


def test_runtime_image_torch_pins_equal_the_tests_pins():
    pins = _pyproject_pins("runtime")
    args = _dockerfile_args("Dockerfile.runtime")
    assert args["TORCH_VERSION"] == pins["torch"] == "2.4.0"
    assert args["TORCHAUDIO_VERSION"] == pins["torchaudio"] == "2.4.0"
    assert args["TORCH_CUDA"] == "cu118"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:11.8.0-cudnn8-runtime")
    assert args["PYTHON_VERSION"] == "3.11"


def test_runtime_image_installs_everything_else_from_pyproject():
    text = (ROOT / "Dockerfile.runtime").read_text()
    # the rest of the stack (coqui-tts, trainer, transformers, six, ...) comes from the runtime extra only
    assert 'pip install ".[runtime]"' in text
    assert not re.search(r"pip install[^\n]*(coqui|transformers|six)", text)
    pins = _pyproject_pins("runtime")
    assert pins["coqui-tts"] == "0.28.0" and pins["coqui-tts-trainer"] == "0.4.0"


def test_operator_image_has_no_torch():
    text = (ROOT / "Dockerfile.operator").read_text()
    assert 'pip install ".[operator]"' in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(d.startswith(("torch", "coqui")) for d in extras["operator"])


def test_images_run_as_non_root():
    for name in ("Dockerfile.runtime", "Dockerfile.operator"):
        text = (ROOT / name).read_text()
        assert re.search(r"^USER 1000:1000$", text, flags=re.M), name
