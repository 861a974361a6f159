"""The Argo CD health check (charts/tts-operator/argocd-health.lua), run in a real Lua interpreter
(lupa) on VoiceModel objects the e2e tests captured from the real operator
(``TTS_CAPTURE_FIXTURES=1 pytest tests/e2e/test_voicemodel_availability.py``).

Argo CD runs a health script with the object as the global ``obj`` and reads ``{status, message}``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "charts" / "tts-operator" / "argocd-health.lua").read_text()
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "voicemodel"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    # objects become tables, arrays 1-based tables: what Argo CD's gopher-lua conversion gives
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not captured (run the VoiceModel e2e tests with TTS_CAPTURE_FIXTURES=1)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_ready_is_healthy() -> None:
    status, message = health(fixture("ready"))
    assert status == "Healthy" and message.startswith("serving v1")


def test_rolling_out_is_progressing() -> None:
    status, _ = health(fixture("deploying"))
    assert status == "Progressing"


def test_failed_rollout_is_degraded_with_the_operator_message() -> None:
    obj = fixture("degraded")
    status, message = health(obj)
    assert status == "Degraded"
    assert message.startswith("desired v4-broken failed:") and message.endswith("serving v2")


def test_a_spec_change_not_yet_observed_is_progressing_even_if_ready() -> None:
    obj = copy.deepcopy(fixture("ready"))
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    assert health(obj)[0] == "Progressing"


def test_no_status_yet() -> None:
    obj = copy.deepcopy(fixture("ready"))
    del obj["status"]
    assert health(obj)[0] == "Progressing"


def test_waiting_for_a_training_run_is_progressing() -> None:
    status, message = health(fixture("pending"))
    assert status == "Progressing" and "has not exported a model yet" in message
