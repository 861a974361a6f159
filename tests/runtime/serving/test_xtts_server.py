"""A tiny random XTTS behind a real uvicorn server, driven by the OpenAI SDK and plain HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from support.waiting import wait_for
from tts_contract.contract import VoiceSpec
from tts_runtime.server import Settings

from .audiocheck import FORMATS, AudioFormat, check_audio

pytestmark = pytest.mark.slow

MULTI_SENTENCE = (
    "The first sentence is here. A second one follows it. Then comes a third. And a fourth ends it."
)


@pytest.fixture(scope="module")
def server(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("xtts-models")
    version_dir = add_version(xtts_source, root, "xtts-a")
    # a spec voice: its reference clip ships inside the model directory
    (version_dir / "voices").mkdir()
    shutil.copy(reference_wav, version_dir / "voices" / "narrator.wav")
    settings = Settings(
        models_root=root,
        version="xtts-a",
        engine="xtts",
        device_policy="CPU",
        voices=[VoiceSpec(name="narrator", wav="voices/narrator.wav")],
        voices_dir=tmp_path_factory.mktemp("xtts-voices"),
        max_concurrency=2,
        max_queue=8,
        max_voice_seconds=10,
        max_text_length=500,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture
def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-checked", max_retries=0, timeout=120)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def test_health_readiness_and_info(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["version"] == "xtts-a"
    assert ready.json()["checks"] == {"checksums": True, "preflight": "passed", "warmup": True}
    info = http.get("/info").json()
    assert info["engine"] == "xtts"
    assert info["version"] == "xtts-a"
    assert info["device"]["device"] == "cpu"
    assert "CPU preflight passed" in info["device"]["message"]
    assert {op["name"] for op in info["device"]["report"]["ops"]}  # the ops that ran, with timings
    assert info["torch"].startswith("2.4")
    assert info["sampleRate"] == 24000
    assert "en" in info["languages"]
    assert set(info["formats"]) == set(FORMATS)
    assert info["timings"]["warmupSeconds"] > 0
    models = http.get("/v1/models").json()
    assert models["data"][0]["id"] == "xtts-a"


def test_spec_voice_is_registered_at_start(http: httpx.Client) -> None:
    voices = {v["id"]: v for v in http.get("/v1/audio/voices").json()["data"]}
    assert voices["narrator"]["source"] == "spec"
    assert voices["narrator"]["clips"][0]["seconds"] > 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_sdk_whole_file_in_every_format(sdk: openai.OpenAI, fmt: AudioFormat) -> None:
    response = sdk.audio.speech.create(
        model="tts-1",
        voice="narrator",
        input="Hello world.",
        response_format=fmt,
        extra_body={"stream": False},
    )
    data = response.content
    assert response.response.headers["x-model-version"] == "xtts-a"
    assert "content-length" in response.response.headers
    check_audio(data, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_sdk_streaming_in_every_format(sdk: openai.OpenAI, fmt: AudioFormat) -> None:
    with sdk.audio.speech.with_streaming_response.create(
        model="xtts-a", voice={"id": "narrator"}, input="Good morning. See you soon.", response_format=fmt
    ) as response:
        assert response.http_response.headers.get("transfer-encoding") == "chunked"
        chunks = list(response.iter_bytes())
    assert len(chunks) >= 1
    check_audio(b"".join(chunks), fmt, min_seconds=0.6)


def _in_flight(http: httpx.Client) -> int:
    return int(http.get("/info").json()["load"]["inFlight"])


def _metric(http: httpx.Client, name: str) -> float:
    """The value of a metric line ``name`` (labels included verbatim), 0 when absent."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_native_stream_yields_first_chunk_before_generation_ends(
    server: LiveServer, http: httpx.Client
) -> None:
    pieces_before = _metric(http, "tts_text_pieces_generated_total")
    body = {"text": MULTI_SENTENCE, "voice": "narrator", "format": "pcm", "chunk_chars": 60}
    started = time.monotonic()
    with server.client() as streamer, streamer.stream("POST", "/v1/audio/stream", json=body) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic() - started
        # the first audio is here while the rest of the text is still being generated
        assert _in_flight(http) == 1
        pieces_at_first = _metric(http, "tts_text_pieces_generated_total") - pieces_before
        rest = b"".join(chunks)
        total_at = time.monotonic() - started
    assert pieces_at_first < 4
    assert _metric(http, "tts_text_pieces_generated_total") - pieces_before == 4
    assert first_at < total_at
    samples = np.frombuffer(first + rest, dtype="<i2")
    assert len(samples) / 24000 > 4 * 0.3  # four sentences of audio
    assert len(first) < len(first + rest) / 2


def test_sse_stream(server: LiveServer) -> None:
    body = {
        "model": "tts-1",
        "input": "Hello there. Goodbye now.",
        "voice": "narrator",
        "response_format": "mp3",
    }
    events = []
    with (
        server.client() as c,
        c.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done"
    assert kinds[:-1] and set(kinds[:-1]) == {"speech.audio.delta"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    check_audio(audio, "mp3", min_seconds=0.6)
    assert events[-1]["usage"]["output_audio_seconds"] > 0.6


def test_client_disconnect_cancels_generation(server: LiveServer, http: httpx.Client) -> None:
    sentences = " ".join(f"This is sentence number {i}." for i in range(12))
    pieces_before = _metric(http, "tts_text_pieces_generated_total")
    cancelled_before = _metric(http, 'tts_cancelled_total{reason="client_gone"}')
    with (
        server.client() as c,
        c.stream("POST", "/v1/audio/stream", json={"text": sentences, "voice": "narrator"}) as r,
    ):
        assert r.status_code == 200
        next(r.iter_bytes())
    # the connection is closed: the worker stops at the next piece instead of generating all twelve
    wait_for(lambda: _in_flight(http) == 0, 60, "the cancelled generation to stop", retry_on=())
    wait_for(
        lambda: _metric(http, 'tts_cancelled_total{reason="client_gone"}') > cancelled_before,
        10,
        "the cancellation to be counted",
        retry_on=(),
    )
    generated = _metric(http, "tts_text_pieces_generated_total") - pieces_before
    assert 1 <= generated < 12


def test_voice_lifecycle(
    server: LiveServer, http: httpx.Client, sdk: openai.OpenAI, reference_wav: Path
) -> None:
    files = {"file": ("alice.wav", reference_wav.read_bytes(), "audio/wav")}
    created = http.post("/v1/audio/voices", data={"name": "alice"}, files=files)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "alice"
    assert "alice" in [v["id"] for v in http.get("/v1/audio/voices").json()["data"]]
    # the latents were computed once and persisted beside the clips
    stored = server.settings.voices_dir / "alice"
    assert list(stored.glob("latents-*.pt")) and list(stored.glob("clip-*.wav"))
    assert _metric(http, "tts_voices_cached") >= 2

    audio = sdk.audio.speech.create(model="tts-1", voice="alice", input="Hi there.", response_format="wav")
    check_audio(audio.content, "wav")

    again = http.post("/v1/audio/voices", data={"name": "alice"}, files=files)
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"

    assert http.delete("/v1/audio/voices/alice").json()["deleted"] is True
    assert not stored.exists()
    assert "alice" not in [v["id"] for v in http.get("/v1/audio/voices").json()["data"]]
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.audio.speech.create(model="tts-1", voice="alice", input="Hi there.", response_format="wav")
    assert "alice" in str(gone.value)
    assert http.delete("/v1/audio/voices/alice").status_code == 404


def _tone(seconds: float, rate: int = 22050, amplitude: float = 0.3) -> bytes:
    import io

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * 180 * t)).astype("float32"), rate, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("notaudio", b"this is not audio at all", "invalid_audio"),
        ("empty", b"", "invalid_audio"),
        ("short", _tone(0.2), "audio_too_short"),
        ("long", _tone(12.0), "audio_too_long"),
        ("silent", _tone(2.0, amplitude=0.0), "silent_audio"),
        ("../escape", _tone(2.0), "invalid_voice_name"),
        (".hidden", _tone(2.0), "invalid_voice_name"),
    ],
)
def test_bad_reference_audio_is_rejected_with_a_reason(
    server: LiveServer, http: httpx.Client, name: str, payload: bytes, code: str
) -> None:
    r = http.post("/v1/audio/voices", data={"name": name}, files={"file": ("clip.wav", payload, "audio/wav")})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert not (server.settings.voices_dir / name.strip("./")).exists()


def test_voice_upload_shape_errors(http: httpx.Client, reference_wav: Path) -> None:
    no_file = http.post(
        "/v1/audio/voices", data={"name": "nofile"}, files={"other": ("x.txt", b"x", "text/plain")}
    )
    assert no_file.status_code == 400 and no_file.json()["error"]["code"] == "no_audio"
    no_name = http.post(
        "/v1/audio/voices", files={"file": ("a.wav", reference_wav.read_bytes(), "audio/wav")}
    )
    assert no_name.status_code == 400 and no_name.json()["error"]["code"] == "missing_name"
    as_json = http.post("/v1/audio/voices", json={"name": "x"})
    assert as_json.status_code == 415


BAD_REQUESTS: list[tuple[str, str, dict]] = [
    ("POST", "/v1/audio/speech", {"content": b"{not json"}),
    ("POST", "/v1/audio/speech", {"content": b"", "headers": {"content-type": "application/json"}}),
    ("POST", "/v1/audio/speech", {"json": []}),
    ("POST", "/v1/audio/speech", {"json": "a string"}),
    ("POST", "/v1/audio/speech", {"json": {}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "", "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "   ", "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": 42, "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "x" * 501, "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi", "voice": "nobody"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi", "voice": "../../etc/passwd"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi", "voice": {"id": 5}}}),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "speed": 0}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "speed": "fast"}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "response_format": "ogg"}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "language": "xx"}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "temperature": -1}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "temperature": 1e-80}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "repetition_penalty": 5.8e-87}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "top_k": 0}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "stream_format": "x"}},
    ),
    (
        "POST",
        "/v1/audio/speech",
        {"json": {"model": "tts-1", "input": "hi", "voice": "narrator", "unknown": 1}},
    ),
    ("POST", "/v1/audio/speech", {"json": {"model": "gpt-9", "input": "hi", "voice": "narrator"}}),
    ("POST", "/v1/audio/speech", {"json": {"model": "", "input": "hi", "voice": "narrator"}}),
    (
        "POST",
        "/v1/audio/speech",
        {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}},
    ),
    ("POST", "/v1/audio/stream", {"json": {"text": "hi", "voice": "narrator", "chunk_chars": 1}}),
    ("POST", "/v1/audio/stream", {"json": {"text": "hi", "voice": "narrator", "format": "midi"}}),
    ("GET", "/v1/audio/speech", {}),
    ("PUT", "/v1/audio/voices", {}),
    ("GET", "/v1/no/such/route", {}),
    ("GET", "/v1/audio/voices/nobody", {}),
    ("DELETE", "/v1/audio/voices/nobody", {}),
    ("POST", "/admin/reload", {"json": {"version": "../../etc"}}),
    ("POST", "/admin/reload", {"json": {"version": "does-not-exist"}}),
    ("POST", "/admin/reload", {"json": {}}),
]


def test_bad_requests_get_json_4xx_and_the_server_keeps_serving(
    http: httpx.Client, sdk: openai.OpenAI
) -> None:
    assert len(BAD_REQUESTS) >= 20
    for method, path, kwargs in BAD_REQUESTS:
        r = http.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, kwargs, r.status_code, r.text)
        error = r.json()["error"]
        assert error["code"] and error["message"], (path, kwargs, r.text)
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").json()["version"] == "xtts-a"  # a bad reload left the model alone
    check_audio(sdk.audio.speech.create(model="tts-1", voice="narrator", input="Still here.").content, "mp3")


def test_sdk_raises_its_usual_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        sdk.audio.speech.create(model="tts-1", voice="narrator", input="")
    assert e.value.code == "empty_input"
    with pytest.raises(openai.NotFoundError):
        sdk.audio.speech.create(model="tts-1", voice="ghost", input="hi")


def test_metrics(http: httpx.Client, sdk: openai.OpenAI) -> None:
    sdk.audio.speech.create(model="tts-1", voice="narrator", input="Counting.", response_format="wav")
    text = http.get("/metrics").text
    assert 'tts_requests_total{method="POST",route="/v1/audio/speech",status="200"}' in text
    assert 'route="/v1/audio/voices/{name}"' in text  # templates, not raw paths
    assert 'tts_model_info{device="cpu",engine="xtts",version="xtts-a"} 1.0' in text
    for name in (
        "tts_request_duration_seconds_bucket",
        "tts_time_to_first_audio_seconds_count",
        "tts_real_time_factor_count",
        "tts_queue_depth",
        "tts_in_flight",
        "tts_voices_cached",
        "tts_ready 1.0",
    ):
        assert name in text, name
    assert _metric(http, 'tts_time_to_first_audio_seconds_count{streamed="false"}') >= 1
    assert _metric(http, "tts_real_time_factor_count") >= 1


def test_web_page_is_served(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/audio/speech" in page.text and "<audio" in page.text


# --- fuzzing: hypothesis instead of schemathesis (not installed), same question: is there any 5xx? ---

_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["narrator", "tts-1", "wav", "pcm", "sse", "en", "xx", "../x", ""]),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_SPEECH_FIELDS = [
    "model",
    "input",
    "voice",
    "response_format",
    "speed",
    "stream",
    "stream_format",
    "language",
    "temperature",
    "top_k",
    "top_p",
]


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/audio/speech", "/v1/audio/stream", "/admin/reload"]),
    body=st.one_of(
        _JSON, st.dictionaries(st.sampled_from([*_SPEECH_FIELDS, "text", "version"]), _JSON, max_size=6)
    ),
)
def test_fuzzed_json_never_gets_a_5xx(http: httpx.Client, path: str, body: object) -> None:
    r = http.post(path, json=body)
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]["code"]


def test_openapi_schema_is_served(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    assert {"/v1/audio/speech", "/v1/audio/stream", "/v1/audio/voices", "/admin/reload"} <= set(
        schema["paths"]
    )
