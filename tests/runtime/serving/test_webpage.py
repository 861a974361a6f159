"""The web page at ``/`` in a real headless browser: type text, press Speak, the audio plays.

Debian's chromium (``/usr/bin/chromium``) driven by Playwright; no browser is downloaded. The page
talks to a real uvicorn server with the tiny random XTTS and one registered voice. "Plays" means the
audio element got a decodable source (a finite ``duration`` > 0) and its playback advanced to the
``ended`` event; chromium runs muted, so nothing is heard.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from tts_contract.contract import VoiceSpec
from tts_runtime.server import Settings

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
]
#: one tiny-XTTS generation on two busy cores, plus encoding
SPEAK_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def web_server(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("web-models")
    version_dir = add_version(xtts_source, root, "xtts-web")
    (version_dir / "voices").mkdir()
    shutil.copy(reference_wav, version_dir / "voices" / "narrator.wav")
    settings = Settings(
        models_root=root,
        version="xtts-web",
        engine="xtts",
        device_policy="CPU",
        voices=[VoiceSpec(name="narrator", wav="voices/narrator.wav")],
        voices_dir=tmp_path_factory.mktemp("web-voices"),
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


@pytest.fixture
def page(browser: Any, web_server: LiveServer) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web_server.url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _speak_and_play(page: Any, text: str, fmt: str) -> dict[str, Any]:
    """Type, pick the format, click Speak; wait until the audio element has played to the end."""
    page.fill("#text", text)
    page.select_option("#format", fmt)
    # a fresh element state per attempt: the page reuses one <audio>, so record this source's events
    page.evaluate(
        """() => {
            const p = document.getElementById('player');
            window.played = { canplay: false, ended: false };
            p.addEventListener('canplay', () => { window.played.canplay = true; }, { once: true });
            p.addEventListener('ended', () => { window.played.ended = true; }, { once: true });
        }"""
    )
    page.click("#speak")
    page.wait_for_function(
        "() => window.played.ended || document.getElementById('status').className === 'error'",
        timeout=SPEAK_TIMEOUT_MS,
    )
    return dict(
        page.evaluate(
            """() => {
                const p = document.getElementById('player');
                return {
                    status: document.getElementById('status').textContent,
                    statusClass: document.getElementById('status').className,
                    src: p.currentSrc,
                    duration: p.duration,
                    currentTime: p.currentTime,
                    error: p.error ? p.error.code : null,
                    canplay: window.played.canplay,
                    ended: window.played.ended,
                };
            }"""
        )
    )


def test_page_lists_the_model_and_voices(page: Any) -> None:
    page.wait_for_function("() => document.getElementById('voice').options.length > 0", timeout=30_000)
    assert page.locator("#voice option").all_text_contents() == ["narrator"]
    assert "en" in page.locator("#language option").all_text_contents()
    assert "xtts model xtts-web" in page.text_content("#model")


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_page_synthesises_and_plays(page: Any, fmt: str) -> None:
    page.wait_for_function("() => document.getElementById('voice').options.length > 0", timeout=30_000)
    result = _speak_and_play(page, "Hello from the browser test.", fmt)
    assert result["statusClass"] != "error", f"the page reported an error: {result['status']}"
    assert result["src"].startswith("blob:"), result
    assert result["error"] is None, f"the browser could not decode the {fmt} audio: {result}"
    assert result["canplay"] and result["ended"], result
    assert result["duration"] > 0 and result["currentTime"] > 0, result
    assert "KiB in" in result["status"]


def test_page_shows_a_server_error(page: Any) -> None:
    """An error from the API reaches the person at the page (here: text over the length limit)."""
    page.wait_for_function("() => document.getElementById('voice').options.length > 0", timeout=30_000)
    page.fill("#text", "x" * 5000)
    page.click("#speak")
    page.wait_for_function(
        "() => document.getElementById('status').className === 'error'", timeout=SPEAK_TIMEOUT_MS
    )
    assert "input_too_long" in (page.text_content("#status") or "")
