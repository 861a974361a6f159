"""Schemathesis against the served OpenAPI schema: nothing a client sends gets a 5xx.

A real uvicorn server with the tiny random XTTS and one registered voice. Schemathesis reads the
schema from the running server (``/openapi.json``), generates valid and invalid requests for every
operation and checks each response with ``not_a_server_error``. Random model and voice names almost
never hit the served ones, so three in four of the speech requests are pointed at them: those run the whole
generation and encoding path with generated text, speeds, formats and sampling settings.

Bounded: a few examples per operation and a short text limit keep it under a minute on two cores.
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from tts_contract.contract import VoiceSpec
from tts_runtime.server import Settings

pytestmark = pytest.mark.slow

VOICE = "narrator"
#: the operations that synthesise: their bodies name a voice
SPEECH_PATHS = {"/v1/audio/speech", "/v1/audio/stream"}
#: per operation; the speech operations dominate the run time (a generation each when valid)
MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzzed_server(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz-models")
    version_dir = add_version(xtts_source, root, "xtts-fuzz")
    (version_dir / "voices").mkdir()
    shutil.copy(reference_wav, version_dir / "voices" / "narrator.wav")
    settings = Settings(
        models_root=root,
        version="xtts-fuzz",
        engine="xtts",
        device_policy="CPU",
        voices=[VoiceSpec(name=VOICE, wav="voices/narrator.wav")],
        voices_dir=tmp_path_factory.mktemp("fuzz-voices"),
        max_concurrency=1,
        max_queue=4,
        # short texts: a generated input is at most a couple of tiny-model generations
        max_text_length=60,
        request_timeout_seconds=60,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")


def _with_registered_voice(case: Any, use_it: bool) -> Any:
    """Point a valid speech request at the served model and the registered voice (random names are
    almost never either, and every such request would stop at a 404)."""
    body = case.body
    if use_it and case.operation.path in SPEECH_PATHS and isinstance(body, dict) and "voice" in body:
        # the voice may have been generated as a string or as an object ({"id": ...}); only the
        # OpenAI endpoint has a model field (the native stream refuses unknown fields)
        model = {"model": "tts-1"} if case.operation.path == "/v1/audio/speech" else {}
        case.body = {**body, **model, "voice": VOICE}
    return case


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema: Any, fuzzed_server: LiveServer, mode: GenerationMode) -> None:
    # Operations are driven one by one from the live schema rather than through
    # ``schemathesis.pytest.from_fixture``: that lazy loader breaks on pytest 9 (it writes
    # ``request.node._nodeid``, which pytest 9 no longer has).
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, "the served schema lost operations"
    for operation in operations:
        strategy = st.builds(
            _with_registered_voice,
            operation.as_strategy(generation_mode=mode),
            st.sampled_from([True, True, True, False]),
        )

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            # no shrinking: a failure is reported as found, and a slow generation is not repeated
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call_and_validate(
                base_url=fuzzed_server.url, checks=[not_a_server_error], timeout=90
            )
            statuses[f"{case.method} {case.operation.path}"][response.status_code] += 1

        try:
            check()
        except Unsatisfiable:
            # negative mode: nothing in this operation can be made invalid (no parameters, no body)
            continue
        except Exception as e:  # collect every operation's failure, then fail once
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    print(f"{mode.value}: statuses seen:", {op: dict(counts) for op, counts in statuses.items()})
    assert not failures, "\n\n".join(failures)
    if mode is GenerationMode.POSITIVE:
        # the fuzzing reached generation, not only validation: some speech requests produced audio
        assert statuses["POST /v1/audio/speech"][200] > 0, statuses["POST /v1/audio/speech"]


def test_still_serving_after_the_fuzzing(fuzzed_server: LiveServer) -> None:
    """Runs after the fuzzing (pytest keeps file order): the same process still answers and speaks."""
    with fuzzed_server.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        r = http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": "Still here.", "voice": VOICE, "response_format": "wav"},
        )
        assert r.status_code == 200, r.text
        assert r.content[:4] == b"RIFF"
        assert len(r.content) > 44  # more than a WAV header
