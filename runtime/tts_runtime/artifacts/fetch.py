"""``tts-runtime fetch --from URI --to DIR``: an artifact into a local directory, resumable and checked.

- ``s3://bucket/prefix``: every object under the prefix (or the one object the URI names), in
  parallel through boto3's transfer manager (s3transfer: ranged multipart GETs for big objects).
- ``hf://org/repo@revision``: the revision is resolved to its commit first, then that commit's files
  are downloaded (``huggingface_hub.snapshot_download``); the token comes from ``HF_TOKEN`` only.
- ``https://host/path``: one file (``--sha256`` required and checked) or an archive (``.tar``,
  ``.tar.gz``, ``.tgz``, ``.zip``, the archive's sha256 checked) unpacked into DIR; no member may land
  outside DIR and links are refused.

``--manifest`` (a model version): ``manifest.json`` must be there (the publisher writes it last, so
its absence means the version is missing or incomplete), only the files it lists are fetched, each is
checked against its size and sha256, and ``manifest.json`` is written into DIR last.

**Resume.** A file already in DIR is skipped when it is complete: for s3, its size and modification
time match the object's (the time is set from the object's LastModified when a fetch completes it);
with a manifest, its size and sha256 match the manifest. An s3 object is downloaded into
``<name>.part`` next to ``<name>``, with a journal ``<name>.part.ranges`` that records the object's
ETag and size and each byte range once it is written. An interrupted fetch leaves both; the next one
reads the journal and downloads only the missing ranges with ranged GETs conditioned on the same ETag
(``If-Match``), so a resumed half download does not start from zero. When the object changed in
between (another ETag or size), the part is discarded and the object downloaded again. An https
download resumes its ``.part`` with a ``Range`` request (the server may answer with the whole file
instead: then it starts again); the sha256 check at the end catches any mix. A hub download resumes
through huggingface_hub's own ``.incomplete`` files (under ``DIR/.cache/huggingface``).

**Retries.** While the storage cannot be reached (connection refused or reset, timeouts, 5xx), the
fetch is tried again with exponential back-off and jitter, for at most ``retry_s`` seconds without
progress (default 60), printing each retry; every retry resumes what was already written. Then it
ends with STORAGE_UNREACHABLE.

Every path is relative to DIR and stays inside it: an object key, a manifest entry or an archive
member with a ``..`` segment or an absolute path is refused (BAD_INPUT) before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tts_contract.contract import MANIFEST_NAME, ExitCode, ModelManifest, StorageEnv, sha256_file
from tts_contract.uris import SHA256, ArtifactUri, parse

from .report import Progress, ProgressPrinter, line_printers, report_failure
from .store import (
    DEFAULT_RETRY_TOTAL_S,
    ArtifactError,
    classify,
    log,
    remember_secrets,
    retrying,
    s3_client,
    shutdown_transfers,
)

#: objects above this size are downloaded in parts, this big, in parallel
PART_SIZE = 16 << 20
#: parallel requests (files, and parts of big files)
CONCURRENCY = 16
#: what one journal line covers at most when s3transfer writes (its io_chunksize)
IO_CHUNK = 1 << 20
PART_SUFFIX = ".part"
JOURNAL_SUFFIX = ".part.ranges"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
#: in DIR after an https archive was unpacked: its sha256 (a second fetch of the same archive skips)
ARCHIVE_MARKER = ".fetched-archive.sha256"
_HEX64 = re.compile(SHA256)


@dataclass
class FetchResult:
    """What a fetch did. ``resolved`` pins what was fetched: for hf the commit (``hf://org/repo@<sha>``),
    otherwise the URI itself."""

    uri: str
    resolved: str
    dest: str
    #: the files now in DIR that the fetch covers, relative to DIR (manifest.json included)
    files: list[str] = field(default_factory=list)
    #: their total size
    bytes: int = 0
    #: bytes downloaded by this fetch (a skipped file adds nothing, a resumed one its missing part)
    transferred: int = 0
    #: files that were already complete
    skipped: int = 0
    seconds: float = 0.0
    #: hf: the commit the revision resolved to
    commit: str | None = None
    #: https: the checked sha256 of the file or archive
    sha256: str | None = None
    #: with --manifest: the version and its digest
    version: str | None = None
    digest: str | None = None

    def to_json(self, max_files: int = 50) -> dict[str, Any]:
        """A JSON-able summary (the file list cut to ``max_files``: termination messages are small)."""
        data = asdict(self)
        data["fileCount"] = len(self.files)
        if len(self.files) > max_files:
            data["files"] = self.files[:max_files]
            data["filesTruncated"] = True
        return data


# --- paths ---------------------------------------------------------------------------------------


def safe_relpath(rel: str, uri: ArtifactUri | str, what: str = "key") -> str:
    """``rel`` when it is a relative path that stays below its directory; BAD_INPUT otherwise."""
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", rel)
    ):
        raise ArtifactError(
            ExitCode.BAD_INPUT,
            uri,
            f"{what} {rel!r}: refusing a path that is absolute or leaves the destination",
        )
    return rel


def _target(dest: Path, rel: str, uri: ArtifactUri | str, what: str = "key") -> Path:
    path = dest / safe_relpath(rel, uri, what)
    if not path.resolve().is_relative_to(dest.resolve()):
        raise ArtifactError(ExitCode.BAD_INPUT, uri, f"{what} {rel!r}: resolves outside the destination")
    return path


# --- s3 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Obj:
    key: str
    rel: str
    size: int
    etag: str
    mtime: float
    sha256: str | None = None


class _PartFile:
    """``<name>.part`` plus its journal: the file-like object s3transfer writes into (seek + write,
    from its single IO thread), and ``pwrite`` for our own ranged GETs (any thread). Each write is
    flushed to the OS before its range is journalled, so a killed process never journals a range it
    did not write."""

    def __init__(self, path: Path, obj: _Obj, progress: Progress, fresh: bool):
        self.path = path
        self.journal_path = path.with_name(path.name[: -len(PART_SUFFIX)] + JOURNAL_SUFFIX)
        self.obj = obj
        self.progress = progress
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.journal_path.unlink(missing_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self.journal = open(self.journal_path, "w")  # noqa: SIM115 (closed in close())
            self.journal.write(json.dumps({"key": obj.key, "etag": obj.etag, "size": obj.size}) + "\n")
            self.journal.flush()
        else:
            self.fd = os.open(path, os.O_RDWR)
            self.journal = open(self.journal_path, "a")  # noqa: SIM115
        self._pos = 0
        self._lock = threading.Lock()

    # the file-like interface s3transfer uses for a seekable target
    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("only absolute seeks")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        n = self.pwrite(self._pos, data)
        self._pos += n
        return n

    def pwrite(self, offset: int, data: bytes | memoryview) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], offset + written)
        with self._lock:
            self.journal.write(f"{offset} {written}\n")
            self.journal.flush()
        self.progress.add(written)
        return written

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.journal.close()


def _journal_ranges(part: Path, journal: Path, obj: _Obj) -> list[tuple[int, int]] | None:
    """The byte ranges ``[start, end)`` already in ``part`` for ``obj``, merged; None when the part
    cannot be resumed (no journal, another object version, a truncated part)."""
    try:
        lines = journal.read_text().splitlines()
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if header != {"key": obj.key, "etag": obj.etag, "size": obj.size}:
        return None
    try:
        part_size = part.stat().st_size
    except OSError:
        return None
    ranges: list[tuple[int, int]] = []
    for line in lines[1:]:
        try:
            start, length = (int(x) for x in line.split())
        except ValueError:
            continue  # a line cut short by a kill
        if length > 0 and start + length <= min(obj.size, part_size):
            ranges.append((start, start + length))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _missing(ranges: list[tuple[int, int]], size: int, piece: int = PART_SIZE) -> list[tuple[int, int]]:
    """The gaps of ``ranges`` in ``[0, size)``, cut into pieces of at most ``piece`` bytes."""
    gaps = []
    pos = 0
    for start, end in [*ranges, (size, size)]:
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    return [(a, min(a + piece, b)) for a, b in gaps for a in range(a, b, piece)]


class _S3Fetch:
    def __init__(
        self,
        uri: ArtifactUri,
        dest: Path,
        client: Any,
        progress: Progress,
        *,
        manifest: bool,
        sha256: str | None,
        concurrency: int = CONCURRENCY,
    ):
        self.uri = uri
        self.dest = dest
        self.client = client
        self.progress = progress
        self.manifest = manifest
        self.sha256 = sha256
        self.concurrency = concurrency
        self.objects: list[_Obj] | None = None
        self.manifest_obj: ModelManifest | None = None
        self.manifest_bytes = b""
        self.done: set[str] = set()
        #: keys whose local file was found to match its sha256 already (not hashed again)
        self.verified: set[str] = set()

    # listing ----------------------------------------------------------------------------------

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.uri.bucket, Prefix=prefix):
            out += page.get("Contents", [])
        return out

    def _obj(self, item: Mapping[str, Any], rel: str, sha256: str | None = None) -> _Obj:
        modified = item["LastModified"]
        mtime = modified.timestamp() if isinstance(modified, datetime) else float(modified)
        return _Obj(
            item["Key"], rel, int(item.get("Size", item.get("ContentLength", 0))), item["ETag"], mtime, sha256
        )

    def plan(self) -> list[_Obj]:
        """The objects to fetch (listed once; a retry reuses the list)."""
        if self.objects is not None:
            return self.objects
        path = self.uri.path
        if self.manifest:
            self.objects = self._plan_manifest()
            return self.objects
        prefix = f"{path}/" if path else ""
        items = self._list(path)
        members = [i for i in items if i["Key"].startswith(prefix) and not i["Key"].endswith("/")]
        single = [i for i in items if path and i["Key"] == path]
        if not members and single:
            objs = [self._obj(single[0], path.rsplit("/", 1)[-1])]
        else:
            objs = [self._obj(i, i["Key"][len(prefix) :]) for i in members]
        if not objs:
            raise ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, self.uri, "no object at or under this prefix")
        for o in objs:
            _target(self.dest, o.rel, self.uri)
        if self.sha256 and len(objs) != 1:
            raise ArtifactError(
                ExitCode.BAD_INPUT, self.uri, f"--sha256 checks one file, this prefix holds {len(objs)}"
            )
        if self.sha256:
            objs = [_Obj(objs[0].key, objs[0].rel, objs[0].size, objs[0].etag, objs[0].mtime, self.sha256)]
        self.objects = objs
        return objs

    def _plan_manifest(self) -> list[_Obj]:
        key = self.uri.key(MANIFEST_NAME)
        try:
            body = self.client.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read()
        except Exception as e:
            err = classify(e, self.uri)
            if err.code == ExitCode.ARTIFACT_NOT_FOUND:
                raise ArtifactError(
                    ExitCode.ARTIFACT_NOT_FOUND,
                    self.uri,
                    f"no {MANIFEST_NAME}: the version is missing or incomplete "
                    f"(a publisher writes {MANIFEST_NAME} last)",
                ) from e
            raise err from e
        manifest = _parse_manifest(body, self.uri)
        self.manifest_obj = manifest
        self.manifest_bytes = body
        listed = {i["Key"]: i for i in self._list(f"{self.uri.path}/" if self.uri.path else "")}
        objs = []
        for f in manifest.files:
            _target(self.dest, f.path, self.uri, "manifest entry")
            item = listed.get(self.uri.key(f.path))
            if item is None:
                raise ArtifactError(
                    ExitCode.ARTIFACT_NOT_FOUND,
                    self.uri,
                    f"{f.path}: listed in {MANIFEST_NAME} but not in the store",
                )
            obj = self._obj(item, f.path, f.sha256)
            if obj.size != f.size:
                raise ArtifactError(
                    ExitCode.CHECKSUM_MISMATCH,
                    self.uri,
                    f"{f.path}: the stored object has {obj.size} bytes, {MANIFEST_NAME} says {f.size}",
                )
            objs.append(obj)
        return objs

    # downloading ------------------------------------------------------------------------------

    def _complete(self, obj: _Obj, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != obj.size:
            return False
        if obj.sha256:
            if sha256_file(path) != obj.sha256:
                return False
            self.verified.add(obj.key)
            return True
        return abs(st.st_mtime - obj.mtime) < 1.0

    def run(self) -> None:
        from boto3.s3.transfer import TransferConfig
        from s3transfer.manager import TransferManager
        from s3transfer.subscribers import BaseSubscriber

        objs = self.plan()
        self.progress.plan(len(objs) + (1 if self.manifest else 0), sum(o.size for o in objs))
        todo: list[_Obj] = []
        with ThreadPoolExecutor(4) as pool:  # hashing what is already there (manifest) runs in parallel
            checks = {
                o: pool.submit(self._complete, o, self.dest / o.rel) for o in objs if o.key not in self.done
            }
            for o, check in checks.items():
                if check.result():
                    self.done.add(o.key)
                    self.progress.file_done(skipped=True, nbytes=o.size)
                else:
                    todo.append(o)
        if not todo:
            return
        fresh: list[tuple[_Obj, _PartFile]] = []
        resumes: list[tuple[_Obj, _PartFile, list[tuple[int, int]]]] = []
        for o in todo:
            target = self.dest / o.rel
            part = target.with_name(target.name + PART_SUFFIX)
            journal = target.with_name(target.name + JOURNAL_SUFFIX)
            ranges = _journal_ranges(part, journal, o) if part.exists() else None
            if ranges:
                self.progress.add(sum(b - a for a, b in ranges), transferred=False)
                resumes.append((o, _PartFile(part, o, self.progress, fresh=False), ranges))
            else:
                fresh.append((o, _PartFile(part, o, self.progress, fresh=True)))
        if resumes:
            log.info(
                "resuming %d partly downloaded file(s): %.1f MiB already there",
                len(resumes),
                sum(b - a for _, _, r in resumes for a, b in r) / (1 << 20),
            )

        finished: queue.Queue[tuple[_Obj, BaseException | None]] = queue.Queue()

        class _Done(BaseSubscriber):
            def __init__(self, obj: _Obj):
                self.obj = obj

            def on_queued(self, future: Any, **kwargs: Any) -> None:
                # no HeadObject per file, and every part of a multipart download asks for this
                # ETag (If-Match): a part of a newer object is refused, not mixed in
                future.meta.provide_transfer_size(self.obj.size)
                if hasattr(future.meta, "provide_object_etag"):
                    future.meta.provide_object_etag(self.obj.etag)

            def on_done(self, future: Any, **kwargs: Any) -> None:
                try:
                    future.result()
                    finished.put((self.obj, None))
                except BaseException as e:
                    finished.put((self.obj, e))

        config = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=self.concurrency,
            io_chunksize=IO_CHUNK,
            num_download_attempts=3,
        )
        parts = {o.key: p for o, p in fresh} | {o.key: p for o, p, _ in resumes}
        manager = TransferManager(self.client, config)
        pool = ThreadPoolExecutor(self.concurrency)
        error: BaseException | None = None
        try:
            for o, p in fresh:
                if o.size == 0:
                    finished.put((o, None))
                    continue
                manager.download(self.uri.bucket, o.key, p, subscribers=[_Done(o)])
            for o, p, ranges in resumes:
                self._resume(pool, o, p, ranges, finished)
            for _ in range(len(parts)):
                obj, exc = finished.get()
                if exc is not None:
                    error = exc
                    break
                self._finish(obj, parts[obj.key])
        except BaseException as e:
            error = e
        finally:
            try:
                shutdown_transfers(manager, error)
            finally:
                pool.shutdown(wait=True, cancel_futures=error is not None)
                for p in parts.values():
                    p.close()
        if error is not None:
            raise error

    def _resume(
        self,
        pool: ThreadPoolExecutor,
        obj: _Obj,
        part: _PartFile,
        ranges: list[tuple[int, int]],
        finished: queue.Queue[tuple[_Obj, BaseException | None]],
    ) -> None:
        gaps = _missing(ranges, obj.size)
        if not gaps:
            finished.put((obj, None))
            return
        left = [len(gaps)]
        lock = threading.Lock()
        failed = threading.Event()

        def piece(start: int, end: int) -> None:
            if failed.is_set():
                return
            try:
                resp = self.client.get_object(
                    Bucket=self.uri.bucket, Key=obj.key, Range=f"bytes={start}-{end - 1}", IfMatch=obj.etag
                )
                pos = start
                for chunk in resp["Body"].iter_chunks(IO_CHUNK):
                    part.pwrite(pos, chunk)
                    pos += len(chunk)
                if pos != end:
                    raise ConnectionError(f"{obj.rel}: short read at byte {pos} of range {start}-{end}")
            except BaseException as e:
                if _precondition_failed(e):
                    # the object changed since the part was written: start it again
                    part.journal_path.unlink(missing_ok=True)
                    e = ConnectionError(
                        f"{obj.rel}: the object changed during the download; starting it again"
                    )
                failed.set()
                finished.put((obj, e))
                return
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                finished.put((obj, None))

        for start, end in gaps:
            pool.submit(piece, start, end)

    def _finish(self, obj: _Obj, part: _PartFile) -> None:
        target = self.dest / obj.rel
        if obj.size == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        os.truncate(part.fd, obj.size)
        os.replace(part.path, target)
        part.journal_path.unlink(missing_ok=True)
        os.utime(target, (obj.mtime, obj.mtime))
        self.done.add(obj.key)
        self.progress.file_done()

    def verify(self) -> None:
        """Every file against its sha256 (manifest or --sha256), in parallel; a mismatch removes the file
        and ends with CHECKSUM_MISMATCH naming it."""
        objs = [o for o in self.plan() if o.sha256 and o.key not in self.verified]
        with ThreadPoolExecutor(4) as pool:
            sums = list(pool.map(lambda o: sha256_file(self.dest / o.rel), objs))
        for o, got in zip(objs, sums, strict=True):
            if got == o.sha256:
                self.verified.add(o.key)
            else:
                (self.dest / o.rel).unlink(missing_ok=True)
                self.done.discard(o.key)
                source = MANIFEST_NAME if self.manifest else "--sha256"
                raise ArtifactError(
                    ExitCode.CHECKSUM_MISMATCH,
                    self.uri,
                    f"{o.rel}: sha256 {got} differs from {source}'s {o.sha256}",
                )


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or (
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
    )


def _parse_manifest(body: bytes, uri: ArtifactUri | str) -> ModelManifest:
    try:
        return ModelManifest.model_validate_json(body)
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArtifactError(
            ExitCode.BAD_INPUT, uri, f"{MANIFEST_NAME} is not a valid manifest: {first}"
        ) from e


def _write_manifest(dest: Path, body: bytes) -> None:
    tmp = dest / f".{MANIFEST_NAME}.tmp"
    tmp.write_bytes(body)
    os.replace(tmp, dest / MANIFEST_NAME)


def _fetch_s3(
    uri: ArtifactUri,
    dest: Path,
    progress: Progress,
    *,
    sha256: str | None,
    manifest: bool,
    retry_s: float,
    env: Mapping[str, str] | None,
    on_retry: Callable[[str], None] | None,
) -> FetchResult:
    job = _S3Fetch(
        uri,
        dest,
        s3_client(env, max_pool_connections=2 * CONCURRENCY + 4),
        progress,
        manifest=manifest,
        sha256=sha256,
    )

    def attempt() -> None:
        job.run()
        job.verify()

    retrying(
        attempt, uri, total_s=retry_s, what="fetch", on_retry=on_retry, progress=lambda: progress.transferred
    )
    objs = job.plan()
    files = [o.rel for o in objs]
    result = FetchResult(str(uri), str(uri), str(dest), files, sum(o.size for o in objs), sha256=sha256)
    if manifest and job.manifest_obj is not None:
        _write_manifest(dest, job.manifest_bytes)
        progress.file_done()
        result.files.append(MANIFEST_NAME)
        result.bytes += len(job.manifest_bytes)
        result.version = job.manifest_obj.version
        result.digest = job.manifest_obj.digest
    return result


# --- hf ------------------------------------------------------------------------------------------


def _hf_token(env: Mapping[str, str]) -> str | bool:
    """The token from HF_TOKEN only; False (no token at all, not a cached login) when unset."""
    return env.get(StorageEnv.HF_TOKEN) or False


def _hf_local_commit(dest: Path, name: str) -> str | None:
    """The commit huggingface_hub recorded for ``name`` in ``dest`` (its local_dir metadata)."""
    try:
        return (
            (dest / ".cache" / "huggingface" / "download" / f"{name}.metadata").read_text().split("\n", 1)[0]
        )
    except OSError:
        return None


def _fetch_hf(
    uri: ArtifactUri,
    dest: Path,
    progress: Progress,
    *,
    manifest: bool,
    retry_s: float,
    env: Mapping[str, str],
    on_retry: Callable[[str], None] | None,
) -> FetchResult:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from tqdm.auto import tqdm

    token = _hf_token(env)
    endpoint = env.get(StorageEnv.HF_ENDPOINT) or None
    api = HfApi(endpoint=endpoint, token=token)
    info = retrying(
        lambda: api.model_info(uri.authority, revision=uri.revision, files_metadata=True),
        uri,
        total_s=retry_s,
        what="resolve the revision",
        on_retry=on_retry,
    )
    commit = info.sha
    if not commit:
        raise ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, "the hub returned no commit for this revision")
    resolved = ArtifactUri("hf", uri.authority, "", commit)
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    for name in siblings:
        _target(dest, name, uri, "hub file")
    dest.mkdir(parents=True, exist_ok=True)

    def size_of(name: str) -> int:
        s = siblings.get(name)
        return int(s.size) if s is not None and s.size is not None else 0

    common: dict[str, Any] = {"revision": commit, "token": token, "endpoint": endpoint}
    result = FetchResult(str(uri), str(resolved), str(dest), commit=commit)
    if not manifest:
        names = sorted(siblings)
        progress.plan(len(names), sum(size_of(n) for n in names))
        # what hf_hub_download will skip: the file is there, downloaded from this very commit
        before = {n for n in names if _hf_local_commit(dest, n) == commit and (dest / n).is_file()}

        for n in sorted(before):
            progress.file_done(skipped=True, nbytes=size_of(n))
        counted = [0]

        def poll() -> None:
            """Bytes so far: huggingface_hub's .incomplete files and the files it has finished."""
            cache = dest / ".cache" / "huggingface" / "download"
            now = sum(p.stat().st_size for p in cache.rglob("*.incomplete") if p.is_file())
            finished = [n for n in names if n not in before and _hf_local_commit(dest, n) == commit]
            now += sum(size_of(n) for n in finished)
            if now > counted[0]:
                progress.add(now - counted[0])
                counted[0] = now

        class _Files(tqdm):
            """snapshot_download's bar of files: one update per file done (it is never shown)."""

            def __init__(self, *args: Any, **kwargs: Any):
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                with contextlib.suppress(OSError):
                    poll()
                for _ in range(int(n or 0)):
                    progress.file_done()
                return None

        def attempt() -> None:
            stop = threading.Event()

            def poller() -> None:
                while not stop.wait(1.0):
                    with contextlib.suppress(OSError):
                        poll()

            watcher = threading.Thread(target=poller, name="hf-progress", daemon=True)
            watcher.start()
            try:
                snapshot_download(uri.authority, local_dir=dest, tqdm_class=_Files, max_workers=8, **common)
            finally:
                stop.set()
                watcher.join()
            missing = [n for n in names if not (dest / n).is_file()]
            if missing:  # snapshot_download returns an existing local_dir when the hub went away
                raise ConnectionError(f"{len(missing)} file(s) not downloaded, e.g. {missing[0]}")

        retrying(attempt, uri, total_s=retry_s, what="download", on_retry=on_retry)
        result.files = names
        result.bytes = sum((dest / n).stat().st_size for n in names)
        result.skipped = len(before)
        result.transferred = sum(size_of(n) for n in names if n not in before)
        if result.transferred > counted[0]:
            progress.add(result.transferred - counted[0])
        return result

    # a model version: manifest.json first (into a staging folder), then only the files it lists
    if MANIFEST_NAME not in siblings:
        raise ArtifactError(
            ExitCode.ARTIFACT_NOT_FOUND,
            resolved,
            f"no {MANIFEST_NAME}: the version is missing or incomplete "
            f"(a publisher writes {MANIFEST_NAME} last)",
        )
    staging = dest / ".cache" / "tts-fetch"
    staging.mkdir(parents=True, exist_ok=True)
    path = retrying(
        lambda: hf_hub_download(uri.authority, MANIFEST_NAME, local_dir=staging, **common),
        uri,
        total_s=retry_s,
        what="download the manifest",
        on_retry=on_retry,
    )
    body = Path(path).read_bytes()
    m = _parse_manifest(body, resolved)
    for f in m.files:
        _target(dest, f.path, uri, "manifest entry")
        if f.path not in siblings:
            raise ArtifactError(
                ExitCode.ARTIFACT_NOT_FOUND,
                resolved,
                f"{f.path}: listed in {MANIFEST_NAME} but not in the repository",
            )
    progress.plan(len(m.files) + 1, sum(f.size for f in m.files))
    with ThreadPoolExecutor(4) as pool:
        complete = list(
            pool.map(lambda f: (dest / f.path).is_file() and sha256_file(dest / f.path) == f.sha256, m.files)
        )
    todo = [f for f, ok in zip(m.files, complete, strict=True) if not ok]
    for f, ok in zip(m.files, complete, strict=True):
        if ok:
            progress.file_done(skipped=True, nbytes=f.size)

    def one(f: Any) -> None:
        hf_hub_download(uri.authority, f.path, local_dir=dest, **common)
        progress.add(f.size)
        progress.file_done()

    def attempt_files() -> None:
        with ThreadPoolExecutor(8) as pool:
            for fut in [pool.submit(one, f) for f in todo]:
                fut.result()

    retrying(attempt_files, uri, total_s=retry_s, what="download", on_retry=on_retry)
    for f in todo:
        got = sha256_file(dest / f.path)
        if got != f.sha256:
            (dest / f.path).unlink(missing_ok=True)
            raise ArtifactError(
                ExitCode.CHECKSUM_MISMATCH,
                resolved,
                f"{f.path}: sha256 {got} differs from {MANIFEST_NAME}'s {f.sha256}",
            )
    # huggingface_hub's bookkeeping would read as files outside the manifest (`tts-runtime verify`)
    shutil.rmtree(dest / ".cache" / "huggingface", ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        (dest / ".cache").rmdir()
    _write_manifest(dest, body)
    progress.file_done()
    result.files = [f.path for f in m.files] + [MANIFEST_NAME]
    result.bytes = sum(f.size for f in m.files) + len(body)
    result.skipped = len(m.files) - len(todo)
    result.transferred = sum(f.size for f in todo)
    result.version = m.version
    result.digest = m.digest
    return result


# --- https ---------------------------------------------------------------------------------------


def _https_name(uri: ArtifactUri) -> str:
    name = unquote(uri.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    if not name:
        raise ArtifactError(ExitCode.BAD_INPUT, uri, "the URL names no file")
    return safe_relpath(name, uri, "file name")


def _archive_kind(name: str) -> str | None:
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return "zip" if suffix == ".zip" else "tar"
    return None


def _ca_bundle(env: Mapping[str, str]) -> str | bool:
    return env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or env.get("CURL_CA_BUNDLE") or True


def _download_https(
    url: str, uri: ArtifactUri, part: Path, progress: Progress, env: Mapping[str, str], sha256: str
) -> str:
    """``url`` into ``part`` (resumed from its current size when the server answers a Range request
    with 206); its sha256."""
    import requests

    h = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=(10, 60), verify=_ca_bundle(env)) as resp:
        if resp.status_code == 416 and have:  # the part is already whole (or longer than the file)
            part.unlink()
            raise ConnectionError("the partial download did not match the file; starting again")
        resp.raise_for_status()
        total = int(resp.headers.get("Content-Length") or 0)
        if resp.status_code == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            progress.plan(1, have + total)
            progress.add(have, transferred=False)
            mode = "ab"
        else:
            progress.plan(1, total)
            mode = "wb"
        with open(part, mode) as f:
            for chunk in resp.iter_content(1 << 20):
                f.write(chunk)
                h.update(chunk)
                progress.add(len(chunk))
    return h.hexdigest()


def _safe_extract(archive: Path, kind: str, dest: Path, uri: ArtifactUri) -> list[str]:
    """Unpack ``archive`` into ``dest``, every member checked first: no absolute path, no ``..``, no
    link, no device; BAD_INPUT naming the first bad member."""
    names: list[str] = []
    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for info in infos:
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise ArtifactError(
                        ExitCode.BAD_INPUT, uri, f"archive member {info.filename!r} is a link"
                    )
                name = info.filename.rstrip("/")
                if name:
                    _target(dest, name, uri, "archive member")
            for info in infos:
                z.extract(info, dest)
                if not info.is_dir():
                    names.append(info.filename)
        return sorted(names)
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for member in members:
            name = member.name.rstrip("/")
            if name in ("", "."):
                continue
            _target(dest, name.removeprefix("./"), uri, "archive member")
            if member.issym() or member.islnk():
                raise ArtifactError(ExitCode.BAD_INPUT, uri, f"archive member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise ArtifactError(ExitCode.BAD_INPUT, uri, f"archive member {member.name!r} is not a file")
            try:
                tarfile.data_filter(member, str(dest))
            except tarfile.FilterError as e:
                raise ArtifactError(ExitCode.BAD_INPUT, uri, f"archive member {member.name!r}: {e}") from e
        t.extractall(dest, members=members, filter="data")
    return sorted(m.name.removeprefix("./") for m in members if m.isfile())


def _fetch_https(
    uri: ArtifactUri,
    url: str,
    dest: Path,
    progress: Progress,
    *,
    sha256: str | None,
    manifest: bool,
    retry_s: float,
    env: Mapping[str, str],
    on_retry: Callable[[str], None] | None,
) -> FetchResult:
    if not sha256:
        raise ArtifactError(ExitCode.BAD_INPUT, uri, "an https download needs its sha256 (--sha256)")
    name = _https_name(uri)
    kind = _archive_kind(name)
    dest.mkdir(parents=True, exist_ok=True)
    result = FetchResult(str(uri), str(uri), str(dest), sha256=sha256)
    if kind is None:
        target = dest / name
        if target.is_file() and sha256_file(target) == sha256:
            progress.plan(1, target.stat().st_size)
            progress.file_done(skipped=True, nbytes=target.stat().st_size)
            result.files, result.bytes, result.skipped = [name], target.stat().st_size, 1
            return result
        part = dest / (name + PART_SUFFIX)
    else:
        marker = dest / ARCHIVE_MARKER
        if marker.is_file() and marker.read_text().strip() == sha256:
            result.files = sorted(
                p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p != marker
            )
            result.skipped = len(result.files)
            result.bytes = sum((dest / f).stat().st_size for f in result.files)
            progress.plan(len(result.files), result.bytes)
            for f in result.files:
                progress.file_done(skipped=True, nbytes=(dest / f).stat().st_size)
            return result
        part = dest / f".{name}{PART_SUFFIX}"

    def attempt() -> str:
        return _download_https(url, uri, part, progress, env, sha256)

    got = retrying(
        attempt,
        uri,
        total_s=retry_s,
        what="download",
        on_retry=on_retry,
        progress=lambda: progress.transferred,
    )
    result.transferred = progress.transferred
    if got != sha256:
        part.unlink(missing_ok=True)
        raise ArtifactError(
            ExitCode.CHECKSUM_MISMATCH, uri, f"{name}: sha256 {got} differs from the expected {sha256}"
        )
    if kind is None:
        os.replace(part, dest / name)
        progress.file_done()
        result.files, result.bytes = [name], (dest / name).stat().st_size
    else:
        try:
            result.files = _safe_extract(part, kind, dest, uri)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
            raise ArtifactError(ExitCode.BAD_INPUT, uri, f"{name}: not a readable {kind} archive: {e}") from e
        finally:
            part.unlink(missing_ok=True)
        (dest / ARCHIVE_MARKER).write_text(sha256 + "\n")
        result.bytes = sum((dest / f).stat().st_size for f in result.files)
        progress.file_done()
    if manifest:
        from tts_contract.contract import verify_manifest

        if not (dest / MANIFEST_NAME).is_file():
            raise ArtifactError(
                ExitCode.ARTIFACT_NOT_FOUND,
                uri,
                f"no {MANIFEST_NAME} in it: not a model version, or an incomplete one",
            )
        problems = verify_manifest(dest)
        if problems:
            raise ArtifactError(ExitCode.CHECKSUM_MISMATCH, uri, "; ".join(problems[:3]))
        m = ModelManifest.load(dest)
        result.version, result.digest = m.version, m.digest
    return result


# --- the entry point -----------------------------------------------------------------------------


def fetch(
    uri: str | ArtifactUri,
    dest: str | Path,
    *,
    sha256: str | None = None,
    manifest: bool = False,
    progress: Callable[[Progress], None] | None = None,
    retry_s: float = DEFAULT_RETRY_TOTAL_S,
    env: Mapping[str, str] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> FetchResult:
    """Fetch ``uri`` into the directory ``dest`` (created); see the module's docstring.

    ``progress`` is called (from transfer threads, often) with the shared ``Progress``;
    ``retry_s`` bounds the retries of an unreachable storage; ``env`` replaces ``os.environ`` as the
    source of ``StorageEnv`` variables. Raises ``ArtifactError`` with the contract's exit code.
    """
    text = str(uri)
    try:
        parsed = uri if isinstance(uri, ArtifactUri) else parse(text)
    except ValueError as e:
        raise ArtifactError(ExitCode.BAD_INPUT, text, str(e).removeprefix(f"{text}: ")) from e
    if sha256 is not None and not _HEX64.match(sha256):
        raise ArtifactError(ExitCode.BAD_INPUT, parsed, f"--sha256 {sha256!r} is not 64 lowercase hex digits")
    environ: Mapping[str, str] = os.environ if env is None else env
    remember_secrets(env)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    counter = Progress()
    counter.listen(progress)
    started = time.monotonic()
    if parsed.scheme == "s3":
        result = _fetch_s3(
            parsed,
            dest,
            counter,
            sha256=sha256,
            manifest=manifest,
            retry_s=retry_s,
            env=env,
            on_retry=on_retry,
        )
    elif parsed.scheme == "hf":
        if sha256:
            raise ArtifactError(ExitCode.BAD_INPUT, parsed, "--sha256 is for one https file or s3 object")
        result = _fetch_hf(
            parsed, dest, counter, manifest=manifest, retry_s=retry_s, env=environ, on_retry=on_retry
        )
    else:
        result = _fetch_https(
            parsed,
            text if not isinstance(uri, ArtifactUri) else str(uri),
            dest,
            counter,
            sha256=sha256,
            manifest=manifest,
            retry_s=retry_s,
            env=environ,
            on_retry=on_retry,
        )
    if parsed.scheme == "s3":
        result.transferred = counter.transferred
        result.skipped = counter.files_skipped
    result.seconds = round(time.monotonic() - started, 3)
    return result


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "credentials and endpoints come from the environment (a location's secretRef):\n"
        "  s3:    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL,\n"
        "         AWS_REGION (default us-east-1), AWS_S3_ADDRESSING_STYLE (path|virtual)\n"
        "  hf:    HF_TOKEN (private or gated repositories), HF_ENDPOINT (a mirror)\n"
        "  https: SSL_CERT_FILE or REQUESTS_CA_BUNDLE to trust a private CA\n"
        "\n"
        "exit codes: 0 done, 65 bad input, 66 not found (or no manifest), 68 storage unreachable\n"
        "after retries, 74 checksum mismatch, 77 access denied. On failure one line\n"
        "'<Reason>: <uri>: <what>' goes to stderr and to /dev/termination-log when it is writable.\n"
        "\n"
        "examples:\n"
        "  tts-runtime fetch --from s3://models/narrator/v3 --to /data/model --manifest\n"
        "  tts-runtime fetch --from hf://coqui/XTTS-v2@main --to /data/base\n"
        "  tts-runtime fetch --from https://example.com/ds.tar.gz --sha256 <hex> --to /data/dataset"
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URI",
        help="s3://bucket/prefix, hf://org/repo@rev or https://...",
    )
    parser.add_argument(
        "--to", dest="dest", required=True, type=Path, metavar="DIR", help="directory to fill (created)"
    )
    parser.add_argument(
        "--sha256",
        metavar="HEX",
        help="expected sha256 of the one file (required for https; archives: of the archive)",
    )
    parser.add_argument(
        "--manifest",
        action="store_true",
        help="a model version: require manifest.json, fetch only its files and check each one's sha256",
    )
    add_transfer_arguments(parser, "write what was fetched (JSON: files, bytes, hf commit) here")


def add_transfer_arguments(parser: argparse.ArgumentParser, result_help: str) -> None:
    """``--result-file``, ``--retry-for`` and ``--quiet``: what ``fetch`` and ``publish`` share."""
    parser.add_argument("--result-file", type=Path, metavar="PATH", help=result_help)
    parser.add_argument(
        "--retry-for",
        type=float,
        default=DEFAULT_RETRY_TOTAL_S,
        metavar="SECONDS",
        help="retry an unreachable storage for this long without progress "
        f"(default {DEFAULT_RETRY_TOTAL_S:.0f})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines (failures are still printed)")


def run_transfer(
    args: argparse.Namespace,
    uri: str,
    verb: str,
    transfer: Callable[[ProgressPrinter | None, Callable[[str], None]], Any],
    summary: Callable[[Any], str],
) -> int:
    """Run ``transfer(progress, on_retry)`` as a command (``fetch``, ``publish``): one failure line
    (stderr and the termination log) and the contract's exit code, never a secret; else the summary
    line and ``--result-file``."""
    info, warn = line_printers(getattr(args, "log_format", "text"), log)
    try:
        result = transfer(None if args.quiet else ProgressPrinter(verb, emit=info), warn)
    except ArtifactError as e:
        report_failure(str(e))
        return int(e.code)
    except Exception as e:  # a bug or an unforeseen failure: still one line, still no secret
        err = classify(e, uri)
        log.debug("%s failed", verb, exc_info=True)
        report_failure(str(err))
        return int(err.code)
    if not args.quiet:
        info(summary(result))
    if args.result_file is not None:
        args.result_file.parent.mkdir(parents=True, exist_ok=True)
        args.result_file.write_text(json.dumps(result.to_json(), sort_keys=True) + "\n")
    return ExitCode.SUCCESS


def run(args: argparse.Namespace) -> int:
    def summary(result: FetchResult) -> str:
        extra = f" (commit {result.commit})" if result.commit else ""
        return (
            f"fetched {result.uri}{extra} into {result.dest}: {len(result.files)} files, "
            f"{result.bytes / (1 << 20):.1f} MiB, {result.transferred / (1 << 20):.1f} MiB transferred, "
            f"{result.skipped} already there, {result.seconds:.1f}s"
        )

    return run_transfer(
        args,
        args.source,
        "fetched",
        lambda progress, on_retry: fetch(
            args.source,
            args.dest,
            sha256=args.sha256,
            manifest=args.manifest,
            progress=progress,
            retry_s=args.retry_for,
            on_retry=on_retry,
        ),
        summary,
    )
