"""Backpressure, deadlines and hot reload on a real server with a tiny random XTTS."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from support.live_server import LiveServer, live_server
from support.model_versions import add_version
from support.waiting import wait_for
from tts_contract.contract import MANIFEST_NAME, ManifestFile, ModelManifest, VoiceSpec, sha256_file
from tts_runtime.server import Settings

from .audiocheck import check_audio

pytestmark = pytest.mark.slow

SPEECH = {
    "model": "tts-1",
    "input": "Hello world.",
    "voice": "narrator",
    "response_format": "wav",
    "stream": False,
}


def _register(http: httpx.Client, reference_wav: Path) -> None:
    files = {"file": ("narrator.wav", reference_wav.read_bytes(), "audio/wav")}
    r = http.post("/v1/audio/voices", data={"name": "narrator"}, files=files)
    assert r.status_code == 201, r.text


def _corrupt(source: Path, root: Path) -> None:
    """A version whose config.json no longer matches its manifest checksum."""
    dest = add_version(source, root, "xtts-corrupt")
    config = dest / "config.json"
    text = config.read_text()
    config.unlink()  # a hard link to the shared original: replace it, never edit it
    config.write_text(text.replace('"gpt_layers": 2', '"gpt_layers": 3'))


def _unloadable(source: Path, root: Path) -> None:
    """A version whose checksums all match but whose weights are not a checkpoint."""
    dest = add_version(source, root, "xtts-unloadable")
    (dest / "model.pth").unlink()
    (dest / "model.pth").write_bytes(b"not a torch checkpoint" * 100)
    manifest = ModelManifest.load(dest)
    manifest.files = [
        ManifestFile(path=f.path, sha256=sha256_file(dest / f.path), size=(dest / f.path).stat().st_size)
        for f in manifest.files
    ]
    (dest / MANIFEST_NAME).write_text(manifest.dumps())


@pytest.fixture(scope="module")
def server(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("reload-models")
    for version in ("xtts-a", "xtts-b"):
        add_version(xtts_source, root, version)
    _corrupt(xtts_source, root)
    _unloadable(xtts_source, root)
    settings = Settings(
        models_root=root,
        version="xtts-a",
        engine="xtts",
        device_policy="CPU",
        voices_dir=tmp_path_factory.mktemp("reload-voices"),
        max_concurrency=1,
        max_queue=2,
    )
    with live_server(settings) as live:
        with live.client() as http:
            _register(http, reference_wav)
        yield live


def test_overload_answers_429_with_retry_after(server: LiveServer) -> None:
    def one(_: int) -> httpx.Response:
        with server.client() as c:
            return c.post("/v1/audio/speech", json=SPEECH)

    # 1 running + 2 queued fit; the other seven arrive while those are busy
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "overloaded"
        else:
            check_audio(r.content, "wav")
    with server.client() as c:
        assert c.post("/v1/audio/speech", json=SPEECH).status_code == 200
        metrics = c.get("/metrics").text
    assert 'tts_rejected_total{reason="queue_full"}' in metrics
    assert 'status="429"' in metrics


class SteadyLoad:
    """Clients sending one request after another until stopped; every answer is recorded."""

    def __init__(self, server: LiveServer, clients: int) -> None:
        self.server = server
        self.results: list[list[tuple[int, str | None]]] = [[] for _ in range(clients)]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, index: int) -> None:
        try:
            with self.server.client() as c:
                while not self._stop.is_set():
                    r = c.post("/v1/audio/speech", json=SPEECH)
                    self.results[index].append((r.status_code, r.headers.get("x-model-version")))
        except BaseException as e:  # a transport error is a failed request too
            self.errors.append(e)

    def count(self, version: str) -> int:
        return sum(1 for rs in self.results for status, v in rs if v == version and status == 200)

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def test_hot_reload_under_load_drops_nothing(server: LiveServer) -> None:
    with server.client() as admin, SteadyLoad(server, clients=2) as load:
        wait_for(lambda: load.count("xtts-a") >= 2, 120, "requests served by xtts-a", retry_on=())
        r = admin.post("/admin/reload", json={"version": "xtts-b"})
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == "xtts-a" and r.json()["version"] == "xtts-b"
        wait_for(lambda: load.count("xtts-b") >= 2, 120, "requests served by xtts-b", retry_on=())
    assert not load.errors, load.errors
    for results in load.results:
        statuses = {status for status, _ in results}
        assert statuses == {200}, results
        versions = [v or "" for _, v in results]
        # per client, the version switches once and never goes back
        assert versions == sorted(versions), versions
    with server.client() as c:
        assert c.get("/readyz").json()["version"] == "xtts-b"
        assert c.get("/info").json()["lastReload"]["ok"] is True
        assert 'tts_model_info{device="cpu",engine="xtts",version="xtts-b"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize(
    ("version", "reason"), [("xtts-corrupt", "sha256"), ("xtts-unloadable", "failed to load")]
)
def test_reload_to_a_broken_model_keeps_the_old_one(server: LiveServer, version: str, reason: str) -> None:
    with server.client() as c:
        serving = c.get("/readyz").json()["version"]
        r = c.post("/admin/reload", json={"version": version})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "reload_failed"
        assert reason in error["message"] and f"still serving {serving}" in error["message"]
        assert c.get("/readyz").json()["version"] == serving
        info = c.get("/info").json()
        assert info["lastReload"] == {**info["lastReload"], "ok": False, "version": version}
        ok = c.post("/v1/audio/speech", json=SPEECH)
        assert ok.status_code == 200 and ok.headers["x-model-version"] == serving
        assert 'tts_reloads_total{result="failed"}' in c.get("/metrics").text


def test_deadline_stops_a_long_generation(
    xtts_source: Path, reference_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("deadline-models")
    version_dir = add_version(xtts_source, root, "xtts-a")
    # a spec voice: its latents are computed while loading, outside the one-second request deadline
    shutil.copy(reference_wav, version_dir / "narrator.wav")
    settings = Settings(
        models_root=root,
        version="xtts-a",
        device_policy="CPU",
        voices_dir=tmp_path_factory.mktemp("deadline-voices"),
        voices=[VoiceSpec(name="narrator", wav="narrator.wav")],
        request_timeout_seconds=1.0,
    )
    long_text = " ".join(f"Sentence number {i} is here." for i in range(20))
    with live_server(settings) as live, live.client() as c:
        r = c.post("/v1/audio/speech", json={**SPEECH, "input": long_text})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "deadline_exceeded"
        # the worker stops at the next piece rather than generating all twenty sentences
        wait_for(
            lambda: c.get("/info").json()["load"]["inFlight"] == 0, 30, "the worker to stop", retry_on=()
        )
        pieces = [
            float(line.split()[-1])
            for line in c.get("/metrics").text.splitlines()
            if line.startswith("tts_text_pieces_generated_total ")
        ]
        assert pieces and pieces[0] < 20
        assert c.get("/healthz").status_code == 200


def test_reload_request_needs_a_version(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post(
            "/admin/reload", content=json.dumps({"version": ""}), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
