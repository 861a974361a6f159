"""Voices shared by replicas (``voicesUri``) and versions fetched from a URI (``modelUri``), against a
real S3 server (SeaweedFS, the ``s3_server`` fixture: tests/support/s3.py).

Two real ``tts-runtime serve`` processes share one voice store: a voice uploaded to one is spoken by
the other within two seconds (its latents reused, not computed again), and a delete on either is
gone from the other within two seconds (that it outlives both pods: tests/e2e/test_shared_voices.py).
A hot swap to a version that is only in object storage fetches it first, verified against its
manifest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.datasets import MissingToolError, speak
from support.live_server import live_server
from support.model_versions import add_version
from support.processes import free_port, stop_process
from support.runtime_cli import REPO, runtime_env
from support.s3 import boto3_client, unique_prefix
from support.waiting import wait_for

pytestmark = pytest.mark.slow

#: what the issue asks of the shared store: every replica follows an upload or a delete within this
PROPAGATION_S = 2.0
READY_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def reference_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return speak(
            "This is the reference voice, speaking clearly for the tests.",
            tmp_path_factory.mktemp("refs") / "speaker.wav",
        )
    except MissingToolError as e:
        pytest.skip(str(e))


class ServerProcess:
    """``python -m tts_runtime.cli serve --spec FILE`` as a pod runs it, with the store's keys in its
    environment; stopped by its PID."""

    def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], workdir: Path) -> None:
        self.name, self.spec, self.env, self.workdir = name, spec, env, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    def launch(self) -> None:
        spec_path = self.workdir / f"{self.name}.json"
        spec_path.write_text(json.dumps({**self.spec, "server": {"port": self.port}}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tts_runtime.cli",
                    "serve",
                    "--spec",
                    str(spec_path),
                    "--host",
                    "127.0.0.1",
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**runtime_env(), "OMP_NUM_THREADS": "1", **self.env},
            )

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, READY_TIMEOUT, f"{self.name} to be ready", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)


def _voice_names(http: httpx.Client) -> set[str]:
    return {v["name"] for v in http.get("/v1/audio/voices").json()["data"]}


def _speak(http: httpx.Client, voice: str) -> httpx.Response:
    return http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": voice, "input": "Hi.", "response_format": "wav", "stream": False},
    )


def _latents(http: httpx.Client) -> dict[str, float]:
    """``tts_voice_latents_total`` by origin (computed, file)."""
    found = re.findall(
        r'^tts_voice_latents_total\{origin="(\w+)"\} ([0-9.e+]+)$', http.get("/metrics").text, re.M
    )
    return {origin: float(value) for origin, value in found}


def _propagation(what: str, predicate: Any) -> float:
    """Seconds until ``predicate()`` holds (polled every 20 ms, at most PROPAGATION_S)."""
    started = time.monotonic()
    wait_for(predicate, PROPAGATION_S, what, interval=0.02)
    return time.monotonic() - started


@pytest.fixture
def replicas(
    tiny_xtts_dir: Path, s3_server: Any, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    """Two servers of one VoiceModel: one models root, each its own scratch voices folder, one store."""
    models = tmp_path / "models"
    add_version(tiny_xtts_dir, models, "v1")
    voices_uri = f"s3://{s3_server.bucket}/{unique_prefix('store')}/_voices/ns/narrator"
    servers = [
        ServerProcess(
            name,
            {
                "engine": "xtts",
                "modelsRoot": str(models),
                "version": "v1",
                "devicePolicy": "CPU",
                "voicesDir": str(tmp_path / name / "voices"),
                "voicesUri": voices_uri,
            },
            s3_server.env("admin"),
            tmp_path,
        )
        for name in ("a", "b")
    ]
    try:
        for server in servers:  # both start at once, as a Deployment's pods do
            server.launch()
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1], voices_uri
    finally:
        for server in servers:
            server.stop()


def test_a_voice_uploaded_to_one_replica_is_every_replicas(
    replicas: tuple[ServerProcess, ServerProcess, str], reference_clip: Path, s3_server: Any, tmp_path: Path
) -> None:
    a, b, voices_uri = replicas
    clip = reference_clip.read_bytes()
    with a.client() as ha, b.client() as hb:
        r = ha.post(
            "/v1/audio/voices", data={"name": "alice"}, files={"file": ("ref.wav", clip, "audio/wav")}
        )
        assert r.status_code == 201, r.text
        seconds = _propagation("b to have alice", lambda: hb.get("/v1/audio/voices/alice").status_code == 200)
        print(f"\nupload answered on a -> b has the voice: {seconds:.2f} s")
        # answered only once it is in the store: clip, latents and voice.json
        s3 = boto3_client(s3_server)
        bucket, _, prefix = voices_uri.removeprefix("s3://").partition("/")
        keys = {
            o["Key"].removeprefix(f"{prefix}/")
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        }
        assert {"alice/voice.json", "alice/clip-0.wav"} <= keys and any(
            k.startswith("alice/latents-") for k in keys
        )
        record = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/alice/voice.json")["Body"].read())
        assert record["name"] == "alice" and record["createdAt"] and len(record["clips"][0]["sha256"]) == 64

        r = _speak(hb, "alice")
        assert r.status_code == 200, r.text
        # b loaded a's latents from the store: nothing computed there
        assert _latents(hb).get("computed", 0) == 0 and _latents(hb)["file"] >= 1, _latents(hb)
        # the name is taken for every replica
        r = hb.post(
            "/v1/audio/voices", data={"name": "alice"}, files={"file": ("ref.wav", clip, "audio/wav")}
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "voice_exists"

        # (both pods replaced, the voice still there: tests/e2e/test_shared_voices.py, on the cluster)
        r = hb.delete("/v1/audio/voices/alice")
        assert r.status_code == 200 and r.json()["deleted"] is True
        seconds = _propagation(
            "alice gone from a", lambda: ha.get("/v1/audio/voices/alice").status_code == 404
        )
        print(f"delete answered on b -> gone on a: {seconds:.2f} s")
        r = _speak(ha, "alice")
        assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found"
        assert _voice_names(ha) == _voice_names(hb) == set()
        assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/alice/").get("Contents")


def test_hot_swap_fetches_a_version_from_the_model_uri(
    tiny_xtts_dir: Path, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tts_runtime.artifacts.publish import publish
    from tts_runtime.server import Settings

    for key, value in s3_server.env("admin").items():
        monkeypatch.setenv(key, value)
    model_uri = f"s3://{s3_server.bucket}/{unique_prefix('models')}"
    staging = tmp_path / "staging"
    for version in ("v2", "v3"):
        publish(add_version(tiny_xtts_dir, staging, version), f"{model_uri}/{version}")
    broken = add_version(tiny_xtts_dir, staging, "v4")
    manifest = json.loads((broken / "manifest.json").read_text())
    publish(broken, f"{model_uri}/v4")
    # a file in the store that no longer matches its manifest (corrupted at rest)
    s3 = boto3_client(s3_server)
    bucket, _, prefix = model_uri.removeprefix("s3://").partition("/")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/v4/config.json", Body=b"{}")
    assert manifest["files"]

    models = tmp_path / "models"
    models.mkdir()
    settings = Settings(
        models_root=models,
        version="v2",  # not there: fetched at start
        device_policy="CPU",
        voices_dir=tmp_path / "voices",
        model_uri=model_uri,
        warmup_text="Hi.",
    )
    with live_server(settings) as server, server.client() as http:
        assert http.get("/info").json()["version"] == "v2" and (models / "v2" / "manifest.json").is_file()
        r = http.post("/admin/reload", json={"version": "v3"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "v3" and http.get("/info").json()["version"] == "v3"
        assert sorted(p.name for p in models.iterdir()) == ["v2", "v3"]  # no staging folder left

        for version, reason in (("v9", "ArtifactNotFound"), ("v4", "ChecksumMismatch")):
            r = http.post("/admin/reload", json={"version": version})
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "reload_failed" and reason in error["message"], error
            assert "still serving v3" in error["message"]
            assert not (models / version).exists()
        assert http.get("/info").json()["version"] == "v3"
