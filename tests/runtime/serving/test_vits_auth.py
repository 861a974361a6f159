"""A tiny random VITS behind a real server with bearer-token auth (the token in a file, as a Secret)."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from tts_runtime.server import Settings

from .audiocheck import AudioFormat, check_audio, decode

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    path.write_text(TOKEN + "\n")  # Secrets often end with a newline
    return path


@pytest.fixture(scope="module")
def server(
    vits_source: Path, token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("vits-models")
    add_version(vits_source, root, "vits-1")
    settings = Settings(
        models_root=root,
        version="vits-1",
        engine="vits",
        device_policy="PreferGPU",
        voices_dir=tmp_path_factory.mktemp("vits-voices"),
        auth_token_file=token_file,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture
def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def test_health_needs_no_token_everything_else_does(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").json()["version"] == "vits-1"
        assert anonymous.get("/").status_code == 200  # the page holds no data; it asks for the token
        for method, path in [
            ("GET", "/info"),
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("GET", "/v1/audio/voices"),
            ("POST", "/v1/audio/speech"),
            ("POST", "/v1/audio/stream"),
            ("POST", "/admin/reload"),
        ]:
            r = anonymous.request(method, path, json={})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
    with server.client(token="wrong") as wrong:
        assert wrong.get("/info").status_code == 401
    with server.client(token=TOKEN) as ok:
        info = ok.get("/info").json()
        assert info["engine"] == "vits" and info["auth"] is True
        assert info["device"]["preflight"] == "passed (CPU fallback)"  # PreferGPU on a machine without one


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])
def test_openai_sdk_with_token(sdk: openai.OpenAI, fmt: AudioFormat) -> None:
    response = sdk.audio.speech.create(
        model="tts-1", voice="default", input="Hello world.", response_format=fmt
    )
    check_audio(response.content, fmt)


def test_pcm_is_24khz_whatever_the_model_rate(sdk: openai.OpenAI) -> None:
    # VITS speaks at 22.05 kHz; OpenAI's pcm is 24 kHz and clients assume it
    with sdk.audio.speech.with_streaming_response.create(
        model="vits-1",
        voice="default",
        input="Testing the rate.",
        response_format="pcm",
        extra_body={"stream": False},
    ) as response:
        assert response.http_response.headers["x-sample-rate"] == "22050"
        pcm = response.read()
    _, rate = decode(pcm, "pcm")
    assert rate == 24000
    check_audio(pcm, "pcm")


def test_speed_changes_duration(sdk: openai.OpenAI) -> None:
    def seconds(speed: float) -> float:
        audio = sdk.audio.speech.create(
            model="tts-1",
            voice="default",
            input="How long is this sentence?",
            response_format="wav",
            speed=speed,
        )
        samples, rate = decode(audio.content, "wav")
        return len(samples) / rate

    # speed 0.5 against 2.0 scales the predicted durations 4x, but VITS rounds each token's duration up to
    # whole frames and this random model predicts very short durations, so the audio comes out only
    # about 2x longer; the duration predictor also samples noise: compare medians of three calls
    slow = statistics.median(seconds(0.5) for _ in range(3))
    fast = statistics.median(seconds(2.0) for _ in range(3))
    assert slow > 1.5 * fast, (slow, fast)


def test_vits_voices(server: LiveServer, sdk: openai.OpenAI) -> None:
    with server.client(token=TOKEN) as c:
        assert [v["id"] for v in c.get("/v1/audio/voices").json()["data"]] == ["default"]
        r = c.post("/v1/audio/voices", data={"name": "x"}, files={"file": ("a.wav", b"RIFF", "audio/wav")})
        assert r.status_code == 400 and r.json()["error"]["code"] == "cloning_unsupported"
    with pytest.raises(openai.NotFoundError) as e:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert "default" in str(e.value)


def test_token_rotation_and_missing_file(server: LiveServer, token_file: Path) -> None:
    try:
        token_file.write_text("rotated-token-with-another-length")
        with server.client(token=TOKEN) as old:
            assert old.get("/info").status_code == 401
        with server.client(token="rotated-token-with-another-length") as new:
            assert new.get("/info").status_code == 200
        token_file.unlink()  # a missing Secret fails closed
        with server.client(token=TOKEN) as c:
            r = c.get("/info")
            assert r.status_code == 503 and r.json()["error"]["code"] == "auth_unavailable"
            assert c.get("/healthz").status_code == 200
    finally:
        token_file.write_text(TOKEN + "\n")


def test_native_stream_with_vits(server: LiveServer) -> None:
    with server.client(token=TOKEN) as c:
        body = {"text": "One. Two. Three.", "voice": "default", "format": "wav"}
        with c.stream("POST", "/v1/audio/stream", json=body) as r:
            assert r.status_code == 200
            data = b"".join(r.iter_bytes())
    samples, rate = decode(data, "wav")
    assert rate == 22050 and len(samples) > 0 and np.isfinite(samples).all()
