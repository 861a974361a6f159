"""``tts-runtime fetch`` and ``publish`` against real servers: SeaweedFS (the session's ``s3_server``),
a local hub look-alike (``support.hub_server``) and an https server with a self-signed certificate.

What a pod relies on: a prefix fetched whole and in parallel; a second fetch transferring nothing; an
interrupted one (an exception, or SIGKILL) transferring only what was missing; a model version
verified file by file against its manifest; the contract's exit code for each failure (not found,
access denied, checksum mismatch, storage unreachable after bounded retries, version exists); a
published version never overwritten, its manifest written last; no path escaping the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from support.hub_server import HubServer
from support.processes import free_port
from support.runtime_cli import REPO, runtime_env
from support.s3 import boto3_client, unique_prefix
from tts_contract.contract import MANIFEST_NAME, Engine, ExitCode, ManifestFile, ModelManifest, sha256_file
from tts_runtime.artifacts import fetch as fetch_mod
from tts_runtime.artifacts import publish as publish_mod
from tts_runtime.artifacts.fetch import JOURNAL_SUFFIX, PART_SIZE, PART_SUFFIX, fetch, safe_relpath
from tts_runtime.artifacts.publish import publish
from tts_runtime.artifacts.report import Progress
from tts_runtime.artifacts.store import ArtifactError, classify, redact, s3_client

MIB = 1 << 20


# --- helpers -------------------------------------------------------------------------------------


def blob(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes (deterministic, fast)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def put_tree(s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_version(root: Path, files: dict[str, bytes], version: str = "v1") -> Path:
    """A version directory: ``files`` and a manifest.json listing them."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append(ManifestFile(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    manifest = ModelManifest(version=version, engine=Engine.XTTS, files=entries)
    (root / MANIFEST_NAME).write_text(manifest.dumps())
    return root


def expect_error(code: ExitCode, fn: Callable[[], Any]) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        fn()
    assert info.value.code == code, str(info.value)
    return info.value


class Interrupt(Exception):
    """Raised from a progress callback: the fetch dies mid-transfer, as a killed pod would."""


class TcpProxy:
    """A TCP forwarder on 127.0.0.1:``port`` to ``target``, optionally throttling what comes back
    (bytes/s per connection). Stopped with ``stop()`` (closes the listener and every connection)."""

    def __init__(self, port: int, target: tuple[str, int], rate: float | None = None):
        self.port, self.target, self.rate = port, target, rate
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._stopped = threading.Event()

    def start(self) -> TcpProxy:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.rate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        try:
            while not self._stopped.is_set():
                data = src.recv(64 * 1024)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()
        for s in [self._listener, *self._socks]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def s3_target(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


# --- s3: fetch -------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return unique_prefix("art")


def test_fetch_prefix_downloads_every_file_and_a_second_fetch_transfers_nothing(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    s3 = boto3_client(s3_server)
    files = {
        "model.pth": blob(PART_SIZE + 3 * MIB + 17, 1),  # above the multipart threshold: ranged parts
        "config.json": b'{"a": 1}',
        "sub/deeper/vocab.json": blob(70_000, 2),
        "empty.txt": b"",
    }
    put_tree(s3, s3_server.bucket, prefix, files)
    s3.put_object(
        Bucket=s3_server.bucket, Key=f"{prefix}-other/not-mine", Body=b"x"
    )  # same start, not under it
    seen: list[Progress] = []
    result = fetch(
        f"s3://{s3_server.bucket}/{prefix}",
        tmp_path / "out",
        env=s3_server.env("reader"),
        progress=seen.append,
    )
    assert read_tree(tmp_path / "out") == files
    assert sorted(result.files) == sorted(files)
    assert result.bytes == result.transferred == sum(map(len, files.values()))
    assert result.skipped == 0
    assert seen and seen[-1].files_done == len(files) and seen[-1].bytes_done == result.bytes
    assert not list((tmp_path / "out").rglob(f"*{PART_SUFFIX}*"))

    again = fetch(f"s3://{s3_server.bucket}/{prefix}", tmp_path / "out", env=s3_server.env("reader"))
    assert again.transferred == 0 and again.skipped == len(files)

    one = fetch(
        f"s3://{s3_server.bucket}/{prefix}/sub/deeper/vocab.json", tmp_path / "one", env=s3_server.env()
    )
    assert read_tree(tmp_path / "one") == {"vocab.json": files["sub/deeper/vocab.json"]}
    assert one.files == ["vocab.json"]


def test_interrupted_fetch_resumes_from_its_part_file(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    s3 = boto3_client(s3_server)
    files = {
        "big.bin": blob(3 * PART_SIZE + 5, 3),
        **{f"small-{i}.txt": blob(10_000 + i, 10 + i) for i in range(4)},
    }
    put_tree(s3, s3_server.bucket, prefix, files)
    total = sum(map(len, files.values()))
    uri = f"s3://{s3_server.bucket}/{prefix}"

    def die_half_way(p: Progress) -> None:
        if p.transferred >= total // 2:
            raise Interrupt("killed")

    dest = tmp_path / "out"
    with pytest.raises(ArtifactError) as stopped:
        fetch(uri, dest, env=s3_server.env("reader"), progress=die_half_way, retry_s=0)
    assert isinstance(stopped.value.__cause__, Interrupt), stopped.value
    part = dest / f"big.bin{PART_SUFFIX}"
    journal = dest / f"big.bin{JOURNAL_SUFFIX}"
    assert part.exists() and journal.exists()
    ranges = fetch_mod._journal_ranges(part, journal, _obj_of(s3, s3_server.bucket, f"{prefix}/big.bin"))
    assert ranges is not None
    journalled = sum(b - a for a, b in ranges)
    finished = sum(len(files[n]) for n in files if (dest / n).is_file())
    assert 0 < journalled < len(files["big.bin"])

    result = fetch(uri, dest, env=s3_server.env("reader"))
    assert read_tree(dest) == files
    # exactly the missing bytes crossed the network: the resumed half did not start from zero
    assert result.transferred == total - journalled - finished
    assert result.transferred < total * 0.75
    assert not part.exists() and not journal.exists()


def _obj_of(s3: Any, bucket: str, key: str) -> Any:
    head = s3.head_object(Bucket=bucket, Key=key)
    return fetch_mod._Obj(key, key.rsplit("/", 1)[-1], head["ContentLength"], head["ETag"], 0.0)


def test_killed_fetch_process_resumes_where_it_stopped(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    """SIGKILL mid-download (through a throttled proxy, so it is surely mid-way), then the command again:
    only the bytes the journal does not cover are downloaded."""
    s3 = boto3_client(s3_server)
    data = blob(2 * PART_SIZE, 4)
    s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/weights.bin", Body=data)
    proxy = TcpProxy(free_port(), s3_target(s3_server.url), rate=4 * MIB).start()
    dest = tmp_path / "out"
    env = {**runtime_env(), **s3_server.env("reader"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    argv = [sys.executable, "-m", "tts_runtime.cli", "fetch", "--from", f"s3://{s3_server.bucket}/{prefix}"]
    proc = subprocess.Popen([*argv, "--to", str(dest), "--quiet"], env=env, cwd=REPO)
    journal = dest / f"weights.bin{JOURNAL_SUFFIX}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and _journalled(journal) >= 6 * MIB:
                break
            assert proc.poll() is None, "the fetch ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.stop()
    done = _journalled(journal)
    assert 6 * MIB <= done < len(data)
    env["AWS_ENDPOINT_URL"] = s3_server.url
    second = subprocess.run(
        [*argv, "--to", str(dest), "--quiet", "--result-file", str(tmp_path / "r.json")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["transferred"] == len(data) - done
    assert (dest / "weights.bin").read_bytes() == data


def _journalled(journal: Path) -> int:
    total = 0
    for line in journal.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2:
            total += int(parts[1])
    return total


def test_manifest_fetch_takes_only_listed_files_and_checks_each(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    files = {
        "model.pth": blob(2 * MIB, 5),
        "config.json": b'{"model": "xtts"}',
        "voices/ref.wav": blob(50_000, 6),
    }
    version = make_version(tmp_path / "v1", files)
    uri = f"s3://{s3_server.bucket}/{prefix}/v1"
    publish(version, uri, env=s3_server.env())
    s3 = boto3_client(s3_server)
    s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/v1/notes.txt", Body=b"not in the manifest")

    result = fetch(uri, tmp_path / "out", manifest=True, env=s3_server.env("reader"))
    assert read_tree(tmp_path / "out") == {**files, MANIFEST_NAME: (version / MANIFEST_NAME).read_bytes()}
    assert result.version == "v1" and result.digest == ModelManifest.load(version).digest
    assert sorted(result.files) == sorted([*files, MANIFEST_NAME])

    # a file spoiled on the local disk (same size) is noticed and fetched again
    spoiled = bytearray(files["model.pth"])
    spoiled[1000] ^= 0xFF
    (tmp_path / "out" / "model.pth").write_bytes(bytes(spoiled))
    again = fetch(uri, tmp_path / "out", manifest=True, env=s3_server.env("reader"))
    assert again.transferred == len(files["model.pth"]) and again.skipped == 2
    assert (tmp_path / "out" / "model.pth").read_bytes() == files["model.pth"]

    # a flipped byte in the store: CHECKSUM_MISMATCH naming the file, no manifest in the destination
    s3.put_object(
        Bucket=s3_server.bucket, Key=f"{prefix}/v1/voices/ref.wav", Body=_flip(files["voices/ref.wav"])
    )
    err = expect_error(
        ExitCode.CHECKSUM_MISMATCH,
        lambda: fetch(uri, tmp_path / "bad", manifest=True, env=s3_server.env("reader")),
    )
    assert "voices/ref.wav" in err.message and err.reason == "ChecksumMismatch"
    assert not (tmp_path / "bad" / MANIFEST_NAME).exists()
    assert not (tmp_path / "bad" / "voices" / "ref.wav").exists()


def _flip(data: bytes, at: int = 123) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def test_a_version_without_manifest_is_not_found(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    put_tree(boto3_client(s3_server), s3_server.bucket, f"{prefix}/v1", {"model.pth": b"half a publish"})
    err = expect_error(
        ExitCode.ARTIFACT_NOT_FOUND,
        lambda: fetch(f"s3://{s3_server.bucket}/{prefix}/v1", tmp_path, manifest=True, env=s3_server.env()),
    )
    assert "missing or incomplete" in err.message and err.reason == "ArtifactNotFound"
    assert not (tmp_path / "model.pth").exists()


def test_missing_bucket_or_prefix_is_not_found(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    env = s3_server.env("reader")
    err = expect_error(ExitCode.ARTIFACT_NOT_FOUND, lambda: fetch("s3://no-such-bucket/x", tmp_path, env=env))
    assert "no-such-bucket" in str(err)
    err = expect_error(
        ExitCode.ARTIFACT_NOT_FOUND,
        lambda: fetch(f"s3://{s3_server.bucket}/{prefix}/nothing", tmp_path, env=env),
    )
    assert f"{prefix}/nothing" in str(err)


def test_wrong_keys_are_access_denied_and_never_shown(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    put_tree(boto3_client(s3_server), s3_server.bucket, prefix, {"a.txt": b"a"})
    secret = "WrongSecretValue-0123456789abcdef"
    env = {**s3_server.env("reader"), "AWS_SECRET_ACCESS_KEY": secret}
    err = expect_error(
        ExitCode.ACCESS_DENIED, lambda: fetch(f"s3://{s3_server.bucket}/{prefix}", tmp_path, env=env)
    )
    assert err.reason == "AccessDenied" and secret not in str(err)
    env = {**s3_server.env("reader"), "AWS_ACCESS_KEY_ID": "NOSUCHKEY123"}
    expect_error(
        ExitCode.ACCESS_DENIED, lambda: fetch(f"s3://{s3_server.bucket}/{prefix}", tmp_path, env=env)
    )
    # the reader may not write
    version = make_version(tmp_path / "v", {"a.txt": b"a"})
    expect_error(
        ExitCode.ACCESS_DENIED,
        lambda: publish(version, f"s3://{s3_server.bucket}/{prefix}/v", env=s3_server.env("reader")),
    )


def test_unreachable_storage_gives_up_after_bounded_retries(s3_server: Any, tmp_path: Path) -> None:
    env = {**s3_server.env("reader"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    retries: list[str] = []
    started = time.monotonic()
    err = expect_error(
        ExitCode.STORAGE_UNREACHABLE,
        lambda: fetch(f"s3://{s3_server.bucket}/x", tmp_path, env=env, retry_s=2.5, on_retry=retries.append),
    )
    elapsed = time.monotonic() - started
    assert 2.5 <= elapsed < 20, elapsed
    assert len(retries) >= 2 and all(
        r.startswith(f"StorageUnreachable: s3://{s3_server.bucket}/x") for r in retries
    )
    assert "gave up after" in err.message


def test_storage_down_then_up_recovers_by_itself(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    files = {"a.bin": blob(300_000, 7), "b.txt": b"b"}
    put_tree(boto3_client(s3_server), s3_server.bucket, prefix, files)
    port = free_port()
    env = {**s3_server.env("reader"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    proxy = TcpProxy(port, s3_target(s3_server.url))
    timer = threading.Timer(2.0, proxy.start)
    timer.start()
    retries: list[str] = []
    try:
        result = fetch(
            f"s3://{s3_server.bucket}/{prefix}", tmp_path, env=env, retry_s=30, on_retry=retries.append
        )
    finally:
        timer.cancel()
        proxy.stop()
    assert retries, "the storage was down at first: there must have been retries"
    assert read_tree(tmp_path) == files and result.transferred == sum(map(len, files.values()))


def test_keys_and_manifest_entries_never_escape_the_destination(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    for bad in ("../x", "/abs", "a/../../b", "a//b", "./a", "C:/x", "a\\..\\b", ""):
        with pytest.raises(ArtifactError) as e:
            safe_relpath(bad, "s3://b/p")
        assert e.value.code == ExitCode.BAD_INPUT
    assert safe_relpath("voices/ref.wav", "s3://b/p") == "voices/ref.wav"

    # a stored manifest naming a file outside the version
    s3 = boto3_client(s3_server)
    evil = ModelManifest(
        version="v1", engine=Engine.XTTS, files=[ManifestFile(path="../escaped.txt", sha256="0" * 64, size=1)]
    )
    s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/v1/{MANIFEST_NAME}", Body=evil.dumps().encode())
    dest = tmp_path / "deep" / "dest"
    err = expect_error(
        ExitCode.BAD_INPUT,
        lambda: fetch(f"s3://{s3_server.bucket}/{prefix}/v1", dest, manifest=True, env=s3_server.env()),
    )
    assert "../escaped.txt" in err.message
    assert not (tmp_path / "deep" / "escaped.txt").exists()

    # a listed key with a ".." segment (S3 keys may hold anything; SeaweedFS cleans such paths, so
    # the listing is faked here)
    job = fetch_mod._S3Fetch(
        fetch_mod.parse(f"s3://{s3_server.bucket}/{prefix}"),
        dest,
        None,
        Progress(),
        manifest=False,
        sha256=None,
    )
    job._list = lambda p: [  # type: ignore[method-assign]
        {"Key": f"{prefix}/../../etc/passwd", "Size": 1, "ETag": '"x"', "LastModified": 0.0}
    ]
    with pytest.raises(ArtifactError) as e:
        job.plan()
    assert e.value.code == ExitCode.BAD_INPUT


# --- s3: publish ---------------------------------------------------------------------------------


def test_publish_twice_is_refused_and_overwrites_nothing(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    files = {"model.pth": blob(PART_SIZE + MIB, 8), "config.json": b"{}"}
    version = make_version(tmp_path / "v1", files)
    uri = f"s3://{s3_server.bucket}/{prefix}/v1"
    result = publish(version, uri, env=s3_server.env())
    assert result.files[-1] == MANIFEST_NAME and result.version == "v1"
    s3 = boto3_client(s3_server)
    before = {
        o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)["Contents"]
    }
    assert set(before) == {f"{prefix}/v1/{n}" for n in [*files, MANIFEST_NAME]}
    head = s3.head_object(Bucket=s3_server.bucket, Key=f"{prefix}/v1/model.pth")
    assert head["Metadata"]["sha256"] == hashlib.sha256(files["model.pth"]).hexdigest()

    changed = make_version(tmp_path / "v1-changed", {"model.pth": b"other weights", "config.json": b"{}"})
    err = expect_error(ExitCode.VERSION_EXISTS, lambda: publish(changed, uri, env=s3_server.env()))
    assert err.reason == "VersionExists" and "never overwritten" in err.message
    after = {
        o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)["Contents"]
    }
    assert after == before
    got = s3.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/v1/model.pth")["Body"].read()
    assert got == files["model.pth"]


def test_publish_refuses_a_directory_that_fails_its_manifest(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    version = make_version(tmp_path / "v1", {"model.pth": b"weights"})
    (version / "model.pth").write_bytes(b"weightz")
    err = expect_error(
        ExitCode.BAD_INPUT,
        lambda: publish(version, f"s3://{s3_server.bucket}/{prefix}/v1", env=s3_server.env()),
    )
    assert "model.pth" in err.message
    assert "Contents" not in boto3_client(s3_server).list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)


def test_publish_writes_the_manifest_last(
    s3_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {
        "model.pth": blob(PART_SIZE + 2 * MIB, 9),
        **{f"f{i}.txt": blob(1000 * i + 1, i) for i in range(6)},
    }
    version = make_version(tmp_path / "v1", files)
    events: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def recording_client(*args: Any, **kwargs: Any) -> Any:
        client = s3_client(*args, **kwargs)

        def before(params: dict[str, Any], context: dict[str, Any], model: Any, **_: Any) -> None:
            context["key"] = params.get("Key", "")
            with lock:
                events.append(("start", model.name, context["key"]))

        def after(context: dict[str, Any], model: Any, **_: Any) -> None:
            with lock:
                events.append(("end", model.name, context.get("key", "")))

        client.meta.events.register("provide-client-params.s3.*", before)
        client.meta.events.register("after-call.s3.*", after)
        return client

    monkeypatch.setattr(publish_mod, "s3_client", recording_client)
    publish(version, f"s3://{s3_server.bucket}/{prefix}/v1", env=s3_server.env())
    manifest_key = f"{prefix}/v1/{MANIFEST_NAME}"
    put_manifest = events.index(("start", "PutObject", manifest_key))
    uploads = [i for i, (kind, op, key) in enumerate(events) if kind == "end" and key != manifest_key]
    ops = {op for _, op, key in events if key != manifest_key}
    assert {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "PutObject"} <= ops
    assert uploads and max(uploads) < put_manifest, events


def test_a_racing_publisher_is_refused_by_the_conditional_put(
    s3_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publishers both saw no manifest: SeaweedFS honours ``If-None-Match: *``, so the second
    manifest is refused (412) and the first version stays."""
    uri = f"s3://{s3_server.bucket}/{prefix}/v1"
    publish(make_version(tmp_path / "a", {"x.txt": b"first"}), uri, env=s3_server.env())
    monkeypatch.setattr(publish_mod, "_exists", lambda *a: False)
    err = expect_error(
        ExitCode.VERSION_EXISTS,
        lambda: publish(make_version(tmp_path / "b", {"x.txt": b"second"}), uri, env=s3_server.env()),
    )
    assert "another publisher" in err.message
    s3 = boto3_client(s3_server)
    body = s3.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/v1/{MANIFEST_NAME}")["Body"].read()
    assert ModelManifest.model_validate_json(body).files[0].sha256 == hashlib.sha256(b"first").hexdigest()


# --- https ---------------------------------------------------------------------------------------


@dataclass
class TlsServer:
    url: str
    root: Path
    ca: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """An https file server on 127.0.0.1 with a self-signed certificate (made by the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [
            *req,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    root = tmp / "files"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TlsServer(f"https://127.0.0.1:{server.server_address[1]}", root, cert)
    finally:
        server.shutdown()
        server.server_close()


def test_https_file_needs_and_checks_its_sha256(tls_server: TlsServer, tmp_path: Path) -> None:
    data = blob(3 * MIB + 5, 11)
    (tls_server.root / "speaker.wav").write_bytes(data)
    url = f"{tls_server.url}/speaker.wav"
    env = {"SSL_CERT_FILE": str(tls_server.ca)}
    good = hashlib.sha256(data).hexdigest()
    result = fetch(url, tmp_path / "ok", sha256=good, env=env)
    assert (tmp_path / "ok" / "speaker.wav").read_bytes() == data and result.sha256 == good
    assert fetch(url, tmp_path / "ok", sha256=good, env=env).transferred == 0

    err = expect_error(
        ExitCode.CHECKSUM_MISMATCH, lambda: fetch(url, tmp_path / "bad", sha256="0" * 64, env=env)
    )
    assert "speaker.wav" in err.message
    assert list((tmp_path / "bad").iterdir()) == []
    expect_error(ExitCode.BAD_INPUT, lambda: fetch(url, tmp_path / "none", env=env))

    # a certificate nobody trusts: refused at once (no retries: a retry cannot fix it)
    started = time.monotonic()
    err = expect_error(
        ExitCode.STORAGE_UNREACHABLE,
        lambda: fetch(url, tmp_path / "untrusted", sha256=good, env={}, retry_s=30),
    )
    assert "certificate verify failed" in err.message and time.monotonic() - started < 10


def test_https_archives_are_unpacked_and_nothing_escapes(tls_server: TlsServer, tmp_path: Path) -> None:
    env = {"SSL_CERT_FILE": str(tls_server.ca)}
    members = {"metadata.csv": b"a|b\n", "wavs/1.wav": blob(20_000, 12)}
    tgz = _tar(members)
    (tls_server.root / "ds.tar.gz").write_bytes(tgz)
    result = fetch(
        f"{tls_server.url}/ds.tar.gz", tmp_path / "ds", sha256=hashlib.sha256(tgz).hexdigest(), env=env
    )
    assert sorted(result.files) == sorted(members)
    assert {k: v for k, v in read_tree(tmp_path / "ds").items() if not k.startswith(".")} == members

    # a model version as an archive: with --manifest, checked file by file; without one, not found
    version = make_version(tmp_path / "version", {"model.pth": blob(10_000, 16)})
    packed = _tar({p.name: p.read_bytes() for p in version.iterdir()})
    (tls_server.root / "version.tgz").write_bytes(packed)
    checked = fetch(
        f"{tls_server.url}/version.tgz",
        tmp_path / "v",
        sha256=hashlib.sha256(packed).hexdigest(),
        manifest=True,
        env=env,
    )
    assert checked.version == "v1"
    err = expect_error(
        ExitCode.ARTIFACT_NOT_FOUND,
        lambda: fetch(
            f"{tls_server.url}/ds.tar.gz",
            tmp_path / "nv",
            sha256=hashlib.sha256(tgz).hexdigest(),
            manifest=True,
            env=env,
        ),
    )
    assert MANIFEST_NAME in err.message

    zipped = _zip(members)
    (tls_server.root / "ds.zip").write_bytes(zipped)
    fetch(f"{tls_server.url}/ds.zip", tmp_path / "z", sha256=hashlib.sha256(zipped).hexdigest(), env=env)
    assert (tmp_path / "z" / "wavs" / "1.wav").read_bytes() == members["wavs/1.wav"]

    for name, archive in (
        ("dots.tar.gz", _tar({"../escaped.txt": b"x"})),
        ("abs.tar", _tar({"/tmp/escaped.txt": b"x"}, gz=False)),
        ("link.tar.gz", _tar({"ok.txt": b"x"}, link=("evil", "/etc/passwd"))),
        ("dots.zip", _zip({"../escaped.txt": b"x"})),
    ):
        (tls_server.root / name).write_bytes(archive)
        dest = tmp_path / "evil" / name
        err = expect_error(
            ExitCode.BAD_INPUT,
            lambda n=name, a=archive, d=dest: fetch(
                f"{tls_server.url}/{n}", d, sha256=hashlib.sha256(a).hexdigest(), env=env
            ),
        )
        assert "archive member" in err.message
        assert not (tmp_path / "evil" / "escaped.txt").exists() and not (dest / "evil").exists()


def _tar(members: dict[str, bytes], gz: bool = True, link: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            t.addfile(info)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# --- hf ------------------------------------------------------------------------------------------

HF_TOKEN = "hf_TestTokenThatMustNotLeak0123"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        yield server


def test_hf_revision_resolves_to_a_commit_and_the_token_reaches_the_hub(
    hub: HubServer, tmp_path: Path
) -> None:
    files = {"config.json": b'{"x": 1}', "model.pth": blob(2 * MIB, 13), "sub/vocab.json": b"{}"}
    repo_dir = tmp_path / "repo"
    for rel, data in files.items():
        (repo_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / rel).write_bytes(data)
    repo = hub.add_repo("coqui/tiny", repo_dir, private=True, token=HF_TOKEN)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN}

    seen: list[Progress] = []
    result = fetch("hf://coqui/tiny@main", tmp_path / "out", env=env, progress=seen.append)
    assert seen[-1].files_done == 3 and seen[-1].bytes_done == result.bytes == result.transferred
    assert result.commit == repo.commit and result.resolved == f"hf://coqui/tiny@{repo.commit}"
    assert {k: v for k, v in read_tree(tmp_path / "out").items() if not k.startswith(".cache/")} == files
    assert hub.authorizations() == {f"Bearer {HF_TOKEN}"}
    # every file request asked for the commit, not the branch (a moving main cannot mix two commits)
    assert all(repo.commit in r.path for r in hub.requests if "/resolve/" in r.path)
    again = fetch("hf://coqui/tiny@main", tmp_path / "out", env=env)
    assert again.transferred == 0 and again.skipped == len(files)

    err = expect_error(
        ExitCode.ACCESS_DENIED, lambda: fetch("hf://coqui/tiny", tmp_path / "x", env={"HF_ENDPOINT": hub.url})
    )
    assert "HF_TOKEN" in err.message
    expect_error(ExitCode.ARTIFACT_NOT_FOUND, lambda: fetch("hf://coqui/tiny@v9", tmp_path / "x", env=env))
    expect_error(ExitCode.ARTIFACT_NOT_FOUND, lambda: fetch("hf://coqui/nothing", tmp_path / "x", env=env))


def test_hf_model_version_fetches_only_its_manifest_files(hub: HubServer, tmp_path: Path) -> None:
    files = {"model.pth": blob(MIB, 14), "config.json": b"{}"}
    repo_dir = make_version(tmp_path / "repo", files)
    (repo_dir / "README.md").write_text("not in the manifest")
    hub.add_repo("org/voice", repo_dir)
    env = {"HF_ENDPOINT": hub.url}
    result = fetch("hf://org/voice", tmp_path / "out", manifest=True, env=env)
    assert read_tree(tmp_path / "out") == {**files, MANIFEST_NAME: (repo_dir / MANIFEST_NAME).read_bytes()}
    assert result.version == "v1" and result.commit

    (repo_dir / "model.pth").write_bytes(_flip(files["model.pth"]))
    err = expect_error(
        ExitCode.CHECKSUM_MISMATCH, lambda: fetch("hf://org/voice", tmp_path / "bad", manifest=True, env=env)
    )
    assert "model.pth" in err.message

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pth").write_bytes(b"x")
    hub.add_repo("org/bare", bare)
    err = expect_error(
        ExitCode.ARTIFACT_NOT_FOUND, lambda: fetch("hf://org/bare", tmp_path / "b", manifest=True, env=env)
    )
    assert "missing or incomplete" in err.message


# --- errors, secrets and the command line --------------------------------------------------------


def test_classify_maps_library_errors_onto_the_contract() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    cases = {
        client_error("AccessDenied", 403): ExitCode.ACCESS_DENIED,
        client_error("InvalidAccessKeyId", 403): ExitCode.ACCESS_DENIED,
        client_error("SignatureDoesNotMatch", 403): ExitCode.ACCESS_DENIED,
        client_error("NoSuchKey", 404): ExitCode.ARTIFACT_NOT_FOUND,
        client_error("NoSuchBucket", 404): ExitCode.ARTIFACT_NOT_FOUND,
        client_error("404", 404): ExitCode.ARTIFACT_NOT_FOUND,
        client_error("InternalError", 500): ExitCode.STORAGE_UNREACHABLE,
        client_error("Whatever", 503): ExitCode.STORAGE_UNREACHABLE,
        client_error("PreconditionFailed", 412): ExitCode.VERSION_EXISTS,
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"): ExitCode.STORAGE_UNREACHABLE,
        ConnectionRefusedError(111, "Connection refused"): ExitCode.STORAGE_UNREACHABLE,
        TimeoutError("timed out"): ExitCode.STORAGE_UNREACHABLE,
    }
    for exc, code in cases.items():
        err = classify(exc, "s3://b/p")
        assert err.code == code, (exc, err)
        assert str(err).startswith(f"{err.reason}: s3://b/p: ")


def test_messages_never_carry_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SuperSecretKey987")
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    text = redact(
        "failed https://user:pw@host/f.tar?X-Amz-Signature=abc&X-Amz-Credential=AKIA with SuperSecretKey987 "
        f"and {HF_TOKEN} Authorization: Bearer abcdef"
    )
    for secret in ("SuperSecretKey987", HF_TOKEN, "X-Amz-Signature", "pw@", "abcdef", "AKIA"):
        assert secret not in text, text
    assert "https://host/f.tar?…" in text
    err = ArtifactError(
        ExitCode.ACCESS_DENIED, "https://host/x?token=SuperSecretKey987", "denied SuperSecretKey987"
    )
    assert "SuperSecretKey987" not in str(err)
    # the secrets of an explicit env mapping (not the environment) are masked too
    s3_client({"AWS_SECRET_ACCESS_KEY": "MappingSecret-5555", "AWS_ACCESS_KEY_ID": "k"})
    assert "MappingSecret-5555" not in str(
        ArtifactError(ExitCode.FAILURE, "s3://b/p", "saw MappingSecret-5555")
    )


def test_the_commands_end_to_end(s3_server: Any, prefix: str, tmp_path: Path) -> None:
    version = make_version(tmp_path / "v1", {"model.pth": blob(MIB, 15), "config.json": b"{}"})
    uri = f"s3://{s3_server.bucket}/{prefix}/v1"
    log = tmp_path / "termination-log"
    log.write_text("")
    base = {**runtime_env(), "TTS_TERMINATION_LOG": str(log)}

    def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tts_runtime.cli", *args],
            env={**base, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # --check (what a training pod runs before it trains): free, uploading nothing
    free = cli("publish", "--check", "--to", uri, env=s3_server.env())
    assert free.returncode == 0, free.stderr
    assert f"{uri} is free" in free.stderr
    listed = boto3_client(s3_server).list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/v1")
    assert "Contents" not in listed
    done = cli("publish", "--from", str(version), "--to", uri, env=s3_server.env())
    assert done.returncode == 0, done.stderr
    assert "published v1" in done.stderr
    again = cli("publish", "--from", str(version), "--to", uri, env=s3_server.env())
    assert again.returncode == ExitCode.VERSION_EXISTS
    assert again.stderr.strip().splitlines()[-1].startswith(f"VersionExists: {uri}: ")
    assert log.read_text().startswith(f"VersionExists: {uri}: ")
    log.write_text("")
    taken = cli("publish", "--check", "--to", uri, env=s3_server.env())
    assert taken.returncode == ExitCode.VERSION_EXISTS
    assert log.read_text().startswith(f"VersionExists: {uri}: manifest.json is already there")
    wrong = "WrongSecretForTheCheck-0123456789"
    denied = cli("publish", "--check", "--to", uri, env={**s3_server.env(), "AWS_SECRET_ACCESS_KEY": wrong})
    assert denied.returncode == ExitCode.ACCESS_DENIED, denied.stderr
    assert wrong not in denied.stderr + denied.stdout
    neither = cli("publish", "--to", uri, env=s3_server.env())
    assert neither.returncode == 2 and "one of the arguments --from --check is required" in neither.stderr

    result_file = str(tmp_path / "r.json")
    got = cli(
        "fetch", "--from", uri, "--to", str(tmp_path / "out"), "--manifest", "--result-file", result_file,
        env=s3_server.env("reader"),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert f"fetched {uri} into {tmp_path / 'out'}: 3 files" in got.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["version"] == "v1" and result["fileCount"] == 3
    assert sha256_file(tmp_path / "out" / "model.pth") == sha256_file(version / "model.pth")

    secret = "DefinitelyWrongSecret-42-xyz"
    denied = cli(
        "fetch", "--from", uri, "--to", str(tmp_path / "denied"), "--manifest",
        env={**s3_server.env("reader"), "AWS_SECRET_ACCESS_KEY": secret},
    )  # fmt: skip
    assert denied.returncode == ExitCode.ACCESS_DENIED
    lines = denied.stderr.strip().splitlines()
    assert lines[-1].startswith(f"AccessDenied: {uri}: "), denied.stderr
    assert secret not in denied.stderr + denied.stdout
    assert log.read_text() == lines[-1]

    missing = cli(
        "fetch", "--from", f"{uri}-nope", "--to", str(tmp_path / "m"), "--manifest", env=s3_server.env()
    )
    assert missing.returncode == ExitCode.ARTIFACT_NOT_FOUND
    assert (
        missing.stderr.strip().splitlines()[-1].startswith(f"ArtifactNotFound: {uri}-nope: no manifest.json")
    )
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "\0") not in missing.stderr
