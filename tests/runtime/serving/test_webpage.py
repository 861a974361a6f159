"""The web page at ``/`` in a real headless browser: create a voice, pick the settings, speak, listen.

Debian's chromium (``/usr/bin/chromium``) driven by Playwright; no browser is downloaded. The page
talks to a real uvicorn server with the tiny random XTTS and one registered voice (a tiny VITS with
a bearer token for the engine without cloning). "Plays" means the audio element got a decodable
source (a finite ``duration`` > 0) and its playback advanced to the ``ended`` event; chromium runs
muted, so nothing is heard. Its fake microphone (``--use-fake-device-for-media-stream``) beeps, which
is enough for a recorded reference clip.

``WEBPAGE_SCREENSHOT=docs/images/webpage.png pytest tests/runtime/serving/test_webpage.py -k
screenshot`` also writes the README's screenshot (skipped otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from tts_contract.contract import VoiceSpec
from tts_runtime.server import Settings
from tts_runtime.server.api_speech import SpeechRequest
from tts_runtime.server.audio import FORMATS

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # the page calls play() after a fetch, outside the click's user-activation window
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    # a microphone that beeps, granted without asking
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
#: one tiny-XTTS generation (or voice conditioning) on two busy cores, plus encoding and playback
SPEAK_TIMEOUT_MS = 120_000
LOAD_TIMEOUT_MS = 30_000
#: three sentences: the speech endpoint generates (and streams) one at a time
SENTENCES = "The first sentence is here. A second one follows it. And a third ends it."
VITS_TOKEN = "page-token"


def _xtts_settings(root: Path, voices_dir: Path, version: str) -> Settings:
    return Settings(
        models_root=root,
        version=version,
        engine="xtts",
        device_policy="CPU",
        voices=[VoiceSpec(name="narrator", wav="voices/narrator.wav")],
        voices_dir=voices_dir,
        max_voice_seconds=20,
    )


@pytest.fixture(scope="module")
def web_server(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("web-models")
    version_dir = add_version(xtts_source, root, "xtts-web")
    (version_dir / "voices").mkdir()
    shutil.copy(reference_wav, version_dir / "voices" / "narrator.wav")
    with live_server(_xtts_settings(root, tmp_path_factory.mktemp("web-voices"), "xtts-web")) as live:
        yield live


@pytest.fixture(scope="module")
def vits_server(vits_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("web-vits-models")
    add_version(vits_source, root, "vits-web")
    token_file = tmp_path_factory.mktemp("web-secret") / "token"
    token_file.write_text(VITS_TOKEN + "\n")
    settings = Settings(
        models_root=root,
        version="vits-web",
        engine="vits",
        device_policy="PreferGPU",
        voices_dir=tmp_path_factory.mktemp("web-vits-voices"),
        auth_token_file=token_file,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def _open(browser: Any, url: str, **context_options: Any) -> Iterator[Any]:
    context = browser.new_context(**context_options)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any, web_server: LiveServer) -> Iterator[Any]:
    with _open(browser, web_server.url) as page:
        yield page


def _wait_for_voices(page: Any) -> None:
    page.wait_for_function(
        "() => document.getElementById('voice').options.length > 0", timeout=LOAD_TIMEOUT_MS
    )


def _number(text: str) -> float:
    match = re.search(r"\d+(\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group())


def _speak_and_play(page: Any) -> tuple[dict[str, Any], Any]:
    """Click Speak; wait until the audio element has played to the end (or the page shows an error).

    Returns the player's state and the speech request the browser sent (the server's input)."""
    # a fresh record per attempt: the page reuses one <audio>, so watch this source's events;
    # `playingAt`: when playback began, in ms since the epoch (the clock of the request's timing)
    page.evaluate(
        """() => {
            const p = document.getElementById('player');
            window.played = { canplay: false, ended: false, playingAt: null };
            p.addEventListener('canplay', () => { window.played.canplay = true; }, { once: true });
            p.addEventListener('playing', () => {
                window.played.playingAt = performance.timeOrigin + performance.now();
            }, { once: true });
            p.addEventListener('ended', () => { window.played.ended = true; }, { once: true });
        }"""
    )
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/speech")) as request:
        page.click("#speak")
    page.wait_for_function(
        "() => (window.played.ended && /\\d/.test(document.getElementById('rtf').textContent))"
        " || document.getElementById('status').classList.contains('error')",
        timeout=SPEAK_TIMEOUT_MS,
    )
    state = page.evaluate(
        """() => {
            const p = document.getElementById('player');
            const text = (id) => document.getElementById(id).textContent;
            return {
                status: text('status'),
                error: document.getElementById('status').classList.contains('error'),
                src: p.currentSrc,
                duration: p.duration,
                currentTime: p.currentTime,
                mediaError: p.error ? p.error.code : null,
                delivery: text('delivery'),
                ttfa: text('ttfa'),
                generation: text('gen-time'),
                audio: text('audio-length'),
                rtf: text('rtf'),
                download: document.getElementById('download').download,
                ...window.played,
            };
        }"""
    )
    assert not state["error"], f"the page reported an error: {state['status']}"
    return dict(state), request.value


def _assert_played(result: dict[str, Any]) -> None:
    assert result["src"].startswith("blob:"), result
    assert result["mediaError"] is None, f"the browser could not decode the audio: {result}"
    assert result["canplay"] and result["ended"], result
    assert result["duration"] > 0 and result["currentTime"] > 0, result


def _assert_timings(result: dict[str, Any]) -> None:
    """Time to first audio, generation time, audio length and RTF shown, and consistent."""
    ttfa_ms, generation, audio, rtf = (_number(result[k]) for k in ("ttfa", "generation", "audio", "rtf"))
    assert result["ttfa"].endswith(" ms") and 0 < ttfa_ms <= generation * 1000 + 5, result  # rounded to 10 ms
    assert audio == pytest.approx(result["duration"], abs=0.15), result  # the file the player got
    assert rtf == pytest.approx(generation / audio, rel=0.05, abs=0.01), result


def _speech_clip(path: Path, seconds: float = 3.0, rate: int = 22050, amplitude: float = 0.3) -> Path:
    """A voiced-sounding clip: a 130 Hz fundamental with harmonics, syllable-rate amplitude changes."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t)
    noise = np.random.default_rng(0).normal(0, 0.02, t.size)
    samples = amplitude * (tone / np.max(np.abs(tone))) * envelope + amplitude * noise
    sf.write(path, samples.astype(np.float32), rate, subtype="PCM_16")
    return path


def test_info_panel_and_choices_come_from_the_server(page: Any, web_server: LiveServer) -> None:
    from playwright.sync_api import expect

    with web_server.client() as http:
        info = http.get("/info").json()
    _wait_for_voices(page)
    expect(page.locator("#info-version")).to_have_text("xtts-web")
    expect(page.locator("#info-engine")).to_have_text("xtts")
    expect(page.locator("#info-device")).to_contain_text(info["device"]["device"])
    expect(page.locator("#info-preflight")).to_have_text(web_server.state.device.preflight)
    expect(page.locator("#info-rate")).to_have_text(f"{info['sampleRate']} Hz")
    assert "xtts model xtts-web" in page.text_content("#model")
    assert "narrator" in page.locator("#voice option").all_text_contents()
    languages = page.eval_on_selector_all("#language option", "os => os.map(o => o.value)")
    assert languages == info["languages"]
    formats = page.eval_on_selector_all("#format option", "os => os.map(o => o.value)")
    assert formats == info["formats"]
    assert page.input_value("#format") == "mp3"  # the default streams
    speed = SpeechRequest.model_json_schema()["properties"]["speed"]
    assert float(page.get_attribute("#speed", "min") or "nan") == speed["minimum"]
    assert float(page.get_attribute("#speed", "max") or "nan") == speed["maximum"]
    expect(page.locator("#clone-form")).to_be_visible()
    expect(page.locator("[role=status]")).to_have_count(2)


def test_streamed_speech_plays_while_it_arrives(page: Any, web_server: LiveServer) -> None:
    """mp3 streams: playback begins before the response ends; the choices reach the request."""
    _wait_for_voices(page)
    page.fill("#text", SENTENCES)
    page.select_option("#format", "mp3")
    page.select_option("#language", "de")
    page.focus("#speed")
    for _ in range(10):  # the keyboard moves the slider: 1.00 + 10 x 0.05
        page.keyboard.press("ArrowRight")
    assert page.text_content("#speed-out") == "1.50\u00d7"
    result, request = _speak_and_play(page)

    body = request.post_data_json
    assert body["stream"] is True and body["response_format"] == "mp3", body
    assert body["speed"] == 1.5 and body["language"] == "de" and body["voice"] == "narrator", body
    assert request.response().headers["content-type"] == FORMATS["mp3"].media_type
    assert result["delivery"].startswith("streamed"), result
    _assert_played(result)
    # playback began while the response was still arriving
    timing = request.timing
    assert timing["responseEnd"] > 0, timing
    last_byte_at = timing["startTime"] + timing["responseEnd"]
    assert result["playingAt"] < last_byte_at - 500, (result, timing)
    _assert_timings(result)
    assert _number(result["ttfa"]) < _number(result["generation"]) * 1000, result
    assert result["download"] == "speech.mp3"


@pytest.mark.parametrize(("fmt", "stream"), [("wav", True), ("pcm", True), ("mp3", False)])
def test_formats_fetched_whole_still_play(page: Any, fmt: str, stream: bool) -> None:
    """wav and raw pcm cannot stream into the page's player; streaming switched off fetches whole."""
    _wait_for_voices(page)
    page.fill("#text", "Hello from the browser test.")
    page.select_option("#format", fmt)
    page.set_checked("#stream", stream)
    assert page.text_content("#stream-hint").startswith("Not streamed")
    result, request = _speak_and_play(page)

    body = request.post_data_json
    assert body["stream"] is False and body["response_format"] == fmt and body["speed"] == 1.0, body
    assert body["language"] == page.input_value("#language")
    assert request.response().headers["content-type"] == FORMATS[fmt].media_type
    assert result["delivery"].startswith("not streamed"), result
    _assert_played(result)
    _assert_timings(result)
    assert result["download"] == f"speech.{'wav' if fmt == 'pcm' else fmt}"  # pcm gets a WAV header


def test_upload_a_voice_speak_with_it_and_delete_it(
    page: Any, web_server: LiveServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    _wait_for_voices(page)
    page.fill("#voice-name", "uploaded")
    page.set_input_files("#clip-file", str(_speech_clip(tmp_path / "me.wav", seconds=3.0)))
    expect(page.locator("#clip-chosen")).to_have_text("Clip: me.wav, 3.0 s")
    page.click("#create-voice")
    expect(page.locator("#voice-status")).to_have_class(re.compile(r"\bok\b"), timeout=SPEAK_TIMEOUT_MS)
    expect(page.locator("#voice")).to_have_value("uploaded")  # listed and selected
    clips = web_server.state.voices.record("uploaded")["clips"]
    assert [c["original"] for c in clips] == ["me.wav"] and clips[0]["seconds"] == pytest.approx(3.0)

    page.fill("#text", "Hello in a new voice.")
    page.select_option("#format", "wav")
    result, request = _speak_and_play(page)
    assert request.post_data_json["voice"] == "uploaded"
    _assert_played(result)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-voice")
    expect(page.locator("#voice-status")).to_have_text("Voice \u201cuploaded\u201d deleted.")
    assert "uploaded" not in page.locator("#voice option").all_text_contents()
    assert not web_server.state.voices.exists("uploaded")


def test_record_a_voice_with_the_microphone(page: Any, web_server: LiveServer) -> None:
    from playwright.sync_api import expect

    _wait_for_voices(page)
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    expect(record).to_have_text("Stop")
    page.wait_for_function("() => parseFloat(document.getElementById('rec-time').textContent) >= 1.5")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#clip-chosen")).to_contain_text("recording.webm")
    shown = _number(page.text_content("#rec-time") or "")
    page.fill("#voice-name", "recorded")
    page.click("#create-voice")
    expect(page.locator("#voice-status")).to_have_class(re.compile(r"\bok\b"), timeout=SPEAK_TIMEOUT_MS)
    expect(page.locator("#voice")).to_have_value("recorded")
    try:
        clip = web_server.state.voices.record("recorded")["clips"][0]
        assert clip["original"] == "recording.webm"
        assert clip["seconds"] == pytest.approx(shown, abs=0.5), (clip, shown)
    finally:
        with web_server.client() as http:
            http.delete("/v1/audio/voices/recorded")


def test_server_errors_are_shown_in_plain_words(page: Any, web_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    _wait_for_voices(page)
    limit = web_server.settings.max_text_length
    page.fill("#text", "x" * (limit + 1))
    page.click("#speak")
    status = page.locator("#status")
    expect(status).to_have_class(re.compile(r"\berror\b"), timeout=SPEAK_TIMEOUT_MS)
    expect(status).to_have_text(
        f"Not accepted: the input is {limit + 1} characters; at most {limit} (input_too_long)"
    )
    expect(page.locator("#rtf")).to_have_text("\u2013")

    page.fill("#voice-name", "quiet")
    page.set_input_files("#clip-file", str(_speech_clip(tmp_path / "quiet.wav", amplitude=1e-5)))
    page.click("#create-voice")
    voice_status = page.locator("#voice-status")
    expect(voice_status).to_have_class(re.compile(r"\berror\b"), timeout=SPEAK_TIMEOUT_MS)
    expect(voice_status).to_contain_text("the clip is silent")
    expect(voice_status).to_contain_text("(silent_audio)")
    assert not web_server.state.voices.exists("quiet")


def test_vits_page_asks_for_the_token_and_offers_no_cloning(browser: Any, vits_server: LiveServer) -> None:
    from playwright.sync_api import expect

    with _open(browser, vits_server.url) as page:
        expect(page.locator("#status")).to_have_text(
            "This server needs an access token: enter it under Server.", timeout=LOAD_TIMEOUT_MS
        )
        page.fill("#token", VITS_TOKEN)
        page.keyboard.press("Tab")  # leaving the field applies it
        _wait_for_voices(page)
        expect(page.locator("#info-engine")).to_have_text("vits")
        expect(page.locator("#info-preflight")).to_have_text(vits_server.state.device.preflight)
        expect(page.locator("#clone-form")).to_be_hidden()
        expect(page.locator("#delete-voice")).to_be_hidden()
        expect(page.locator("#clone-note")).to_contain_text("cloning a voice from a clip needs an XTTS model")
        with vits_server.client(token=VITS_TOKEN) as http:
            voices = [v["id"] for v in http.get("/v1/audio/voices").json()["data"]]
        assert page.locator("#voice option").all_text_contents() == voices

        page.select_option("#format", "wav")
        result, request = _speak_and_play(page)
        assert request.headers["authorization"] == f"Bearer {VITS_TOKEN}"
        _assert_played(result)


@pytest.mark.skipif(not os.environ.get("WEBPAGE_SCREENSHOT"), reason="set WEBPAGE_SCREENSHOT=<png path>")
def test_screenshot(browser: Any, web_server: LiveServer, reference_wav: Path) -> None:
    """The README's picture: a voice created from a clip, a streamed clip played, the panels filled."""
    from playwright.sync_api import expect

    target = Path(os.environ["WEBPAGE_SCREENSHOT"])
    with _open(browser, web_server.url, viewport={"width": 1000, "height": 900}) as page:
        _wait_for_voices(page)
        page.fill("#voice-name", "maria")
        page.set_input_files("#clip-file", str(reference_wav))
        page.click("#create-voice")
        expect(page.locator("#voice")).to_have_value("maria", timeout=SPEAK_TIMEOUT_MS)
        page.fill("#text", "Good morning! Your train leaves from platform four. Have a pleasant trip.")
        page.select_option("#format", "mp3")
        _assert_played(_speak_and_play(page)[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        with web_server.client() as http:
            http.delete("/v1/audio/voices/maria")
    assert target.stat().st_size < 200 * 1024
