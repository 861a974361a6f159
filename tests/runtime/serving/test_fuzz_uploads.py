"""Fuzzing the audio upload path (`POST /v1/audio/voices`) of a real server on the tiny XTTS.

Hypothesis builds what a careless or hostile client sends: random bytes, WAV files with every header
field wrong (sample rates of 0, 1 Hz or 4 GHz, zero channels, odd bit depths, lying chunk sizes),
truncated files, real audio at strange rates, and hand-made multipart bodies (no boundary, a wrong
one, unterminated parts, repeated fields, too many files, odd filenames and voice names). The one
rule: never a 5xx, every refusal a JSON error with a code, any accepted voice stays inside the voices
directory, and the server keeps serving afterwards.

Named cases of bad audio live in test_xtts_server.py; this file looks for the cases nobody named.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from tts_runtime.server import Settings

pytestmark = pytest.mark.slow

FUZZ = hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def server(xtts_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz-models")
    add_version(xtts_source, root, "xtts-fuzz")
    settings = Settings(
        models_root=root,
        version="xtts-fuzz",
        engine="xtts",
        device_policy="CPU",
        voices_dir=tmp_path_factory.mktemp("fuzz-voices"),
        max_concurrency=1,
        max_queue=8,
        max_voice_seconds=10,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client(timeout=120) as c:
        yield c


def check_answer(server: LiveServer, http: httpx.Client, r: httpx.Response, name: str | None) -> None:
    """No 5xx; a refusal is a JSON error; an accepted voice lives inside the voices directory (and is
    deleted again, so later examples start clean)."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.json()["error"]["code"], r.text
        return
    assert r.status_code == 201, r.text
    voice = r.json()["id"]
    assert voice == name
    voices_dir = server.settings.voices_dir.resolve()
    assert (voices_dir / voice).resolve().parent == voices_dir
    assert http.delete(f"/v1/audio/voices/{voice}").status_code == 200


# --- WAV files with any header --------------------------------------------------------------------


def wav_file(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes, data_size: int | None) -> bytes:
    """A RIFF/WAVE file written field by field, so each field can be anything the format can hold."""
    block_align = (channels * bits // 8) & 0xFFFF
    byte_rate = (rate * block_align) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, byte_rate, block_align, bits)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


_RATES = st.one_of(
    st.sampled_from([0, 1, 8, 100, 4000, 8000, 16000, 22050, 44100, 48000, 192000, 2**31 - 1, 2**32 - 1]),
    st.integers(min_value=0, max_value=2**32 - 1),
)


@st.composite
def header_wavs(draw: st.DrawFn) -> bytes:
    data = draw(st.one_of(st.binary(max_size=4096), st.builds(lambda n: np.random.default_rng(n).bytes(
        40000), st.integers(0, 100))))  # fmt: skip
    raw = wav_file(
        fmt_tag=draw(st.sampled_from([0, 1, 3, 2, 6, 7, 0x55, 0xFFFE, 0xFFFF])),
        channels=draw(st.sampled_from([0, 1, 2, 3, 8, 255, 65535])),
        rate=draw(_RATES),
        bits=draw(st.sampled_from([0, 1, 4, 8, 12, 16, 24, 32, 64, 65535])),
        data=data,
        data_size=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2**32 - 1))),
    )
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(raw))))
    return raw if cut is None else raw[:cut]


@st.composite
def real_audio(draw: st.DrawFn) -> bytes:
    """Audio libsndfile really wrote (noise or a tone, any rate and length), maybe truncated."""
    rate = draw(st.sampled_from([1, 8, 1000, 8000, 11025, 16000, 22050, 48000, 96000, 384000]))
    seconds = draw(st.floats(min_value=0.0, max_value=12.0))
    channels = draw(st.sampled_from([1, 2, 6]))
    frames = min(int(rate * seconds), 400_000 // channels)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    samples = (0.3 * rng.standard_normal((frames, channels))).astype("float32")
    fmt, subtype = draw(
        st.sampled_from([("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", None)])
    )
    if (fmt == "FLAC" and rate > 655350) or (fmt == "OGG" and not 1000 <= rate <= 192000) or frames == 0:
        fmt, subtype = "WAV", "PCM_16"
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    raw = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(raw))))
    return raw if cut is None else raw[:cut]


_NAMES = st.one_of(
    st.sampled_from(
        ["fuzz", "a", "voice-1", "../x", "..", ".", "/etc/passwd", "a/b", "x" * 300, " ", "\x00"]
    ),
    st.text(min_size=1, max_size=20),
)
_CONTENT_TYPES = st.sampled_from(["audio/wav", "audio/mpeg", "application/octet-stream", "text/plain", ""])
_FILENAMES = st.sampled_from(["a.wav", "", "../../evil.wav", "a\x00.wav", "é.flac", "x" * 500])


@FUZZ
@given(payload=st.one_of(st.binary(max_size=2048), header_wavs(), real_audio()), name=_NAMES,
       content_type=_CONTENT_TYPES, filename=_FILENAMES)  # fmt: skip
def test_uploaded_audio_never_gets_a_5xx(
    server: LiveServer, http: httpx.Client, payload: bytes, name: str, content_type: str, filename: str
) -> None:
    r = http.post(
        "/v1/audio/voices", data={"name": name}, files={"file": (filename, payload, content_type or None)}
    )
    check_answer(server, http, r, name)


@FUZZ
@given(clips=st.lists(st.one_of(header_wavs(), real_audio()), min_size=1, max_size=8),
       key=st.sampled_from(["file", "files", "file[]"]))  # fmt: skip
def test_several_clips_never_get_a_5xx(
    server: LiveServer, http: httpx.Client, clips: list[bytes], key: str
) -> None:
    files = [(key, (f"c{i}.wav", clip, "audio/wav")) for i, clip in enumerate(clips)]
    r = http.post("/v1/audio/voices", data={"name": "many"}, files=files)
    check_answer(server, http, r, "many")


# --- multipart bodies by hand -------------------------------------------------------------------------


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[dict[str, bytes], bytes]:
    boundary = draw(st.sampled_from(["b0undary", "x", "-" * 70, "a b", "é"]))
    header_boundary = draw(st.sampled_from([boundary, boundary, "other", ""]))
    ctype = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={header_boundary}",
                f'multipart/form-data; boundary="{header_boundary}"',
                "multipart/form-data",
                "multipart/form-data; boundary=",
                f"multipart/mixed; boundary={header_boundary}",
                f"multipart/form-data; charset=utf-16; boundary={header_boundary}",
            ]
        )
    )
    parts: list[bytes] = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        disposition = draw(
            st.sampled_from(
                [
                    'form-data; name="name"',
                    'form-data; name="file"; filename="a.wav"',
                    'form-data; name="file"',
                    'form-data; name="name"; filename="n.txt"',
                    "form-data",
                    "form-data; name=\"file\"; filename*=UTF-8''%C3%A9.wav",
                    "attachment; filename=x",
                    'form-data; name="' + "n" * 2000 + '"',
                ]
            )
        )
        extra = draw(st.sampled_from(["", "Content-Type: audio/wav\r\n", "Content-Length: 99999999\r\n"]))
        content = draw(st.one_of(st.binary(max_size=512), header_wavs(), st.just(b"fuzz")))
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + content)
    ending = draw(st.sampled_from([f"\r\n--{boundary}--\r\n", f"\r\n--{boundary}", "", "\r\n--\r\n"]))
    body = b"\r\n".join(parts) + ending.encode()
    if draw(st.booleans()):
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    # header values are bytes on the wire: a non-ASCII boundary goes as its UTF-8 bytes
    return {"content-type": ctype.encode()}, body


@FUZZ
@given(request=multipart_bodies())
def test_malformed_multipart_never_gets_a_5xx(
    server: LiveServer, http: httpx.Client, request: tuple[dict[str, bytes], bytes]
) -> None:
    headers, body = request
    r = http.post("/v1/audio/voices", headers=headers, content=body)
    check_answer(server, http, r, "fuzz" if r.status_code == 201 else None)


def test_still_serving_after_the_fuzzing(server: LiveServer, http: httpx.Client) -> None:
    """Runs after the fuzz tests in this module (file order): the server is up and synthesises."""
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    voices = http.get("/v1/audio/voices").json()["data"]
    assert voices == [], f"fuzzing left voices behind: {[v['id'] for v in voices]}"
    tone = 0.3 * np.sin(2 * np.pi * 180 * np.arange(2 * 22050) / 22050)
    buf = io.BytesIO()
    sf.write(buf, tone.astype("float32"), 22050, format="WAV")
    created = http.post(
        "/v1/audio/voices", data={"name": "after"}, files={"file": ("a.wav", buf.getvalue(), "audio/wav")}
    )
    assert created.status_code == 201, created.text
    speech = {"model": "tts-1", "input": "Still here.", "voice": "after", "response_format": "wav"}
    r = http.post("/v1/audio/speech", json=speech)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
