"""A run folder mirrored to object storage (``RunSpec.checkpointsUri``), so a run outlives its node.

With ``checkpointsUri`` set, the run folder (``RunSpec.outputPath``, layout in runner.py) is a
pod-local emptyDir and the bucket is its durable copy, under ``<uri>/`` with the same relative
paths:

- ``restore()``, before the trainer opens its ``CheckpointStore``, downloads the folder: the
  checkpoint index and the checkpoints it names, progress.json and events.jsonl (the attempt count
  and progress continue), samples, TensorBoard logs, voices. A pod on another node then resumes
  from the newest complete checkpoint. An empty (or absent) prefix is a fresh run. A folder that
  already has a history (``events.jsonl``: the container restarted inside the same pod, whose
  emptyDir survived) is newer than the bucket, which is only ever written from it: nothing is
  downloaded then.
- ``sync()``, after each epoch (before the progress report names the epoch's checkpoint, so a
  checkpoint the TrainingRun's status lists is one a pod on another node can resume from), after
  the SIGTERM checkpoint and at the finish, uploads what changed
  since the last sync, in parallel (a file hard-linked to one already in the bucket,
  ``best_model.pth``, is copied there server-side instead of uploaded again). Then the *seals*, in
  order: ``checkpoints/index.json`` (its snapshot from before the uploads, so the bucket's index
  never names a checkpoint whose object is not complete: an S3 object is visible only once whole)
  and ``training.json`` (the export's summary, after ``model/``). Then the objects whose local file
  is gone (checkpoints the store pruned, a superseded ``interrupted.pth``) are deleted: after the
  index that no longer names them.

The checkpoints a bucket's index does not name (a sync that died between its uploads and its
index, or between its index and its deletions) are never restored, and the next sync deletes them.

Never mirrored: ``cache/`` (the resampled dataset, made again from the dataset) and any path with a
segment starting with ``.`` (temporary files of atomic writes, this module's markers).

Data-parallel runs (ddp.py): the ranks share one run folder. Rank 0 restores everything except
``ranks/``, rank N restores its own ``ranks/N/`` (its audit trail), each before it counts its
attempts; rank 0 reaches the ranks' first collective only after its restore, so no rank opens the
checkpoints before they are there. Only rank 0 uploads (``sync`` is a no-op on the others).

Errors are ``ArtifactError`` (artifacts/store.py): an unreachable storage is retried with back-off
(``retrying``) and then ends the run with STORAGE_UNREACHABLE (68: the Job retries it, the retry
resumes from the bucket); refused credentials are ACCESS_DENIED (77, permanent). Messages name the
URI, never a secret. Credentials and the endpoint come from the environment (``StorageEnv``: the
operator passes the checkpoints Secret to the trainer as ``envFrom``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tts_contract.contract import ExitCode, RunSpec
from tts_contract.uris import ArtifactUri, parse

from ..artifacts.fetch import CONCURRENCY, IO_CHUNK, PART_SIZE, safe_relpath
from ..artifacts.store import (
    DEFAULT_RETRY_TOTAL_S,
    ArtifactError,
    classify,
    retrying,
    s3_client,
    transfers,
)
from .checkpoints import INDEX

log = logging.getLogger(__name__)

#: the checkpoint index, relative to the run folder: uploaded after every checkpoint it names
CHECKPOINT_INDEX = f"checkpoints/{INDEX}"
#: the export's summary, written after model/: uploaded after it
SUMMARY = "training.json"
#: uploaded last, in this order
SEALS = (CHECKPOINT_INDEX, SUMMARY)
EVENTS = "events.jsonl"
#: top-level folders that are never mirrored
LOCAL_ONLY = frozenset({"cache"})
#: in the rank's folder while a restore is under way: a restore that did not finish is done again
RESTORING_MARKER = ".mirror-restoring"
#: download temporaries (s3transfer adds a random suffix of its own while it writes)
_TMP_SUFFIX = ".mirror-tmp"
#: how long the best-effort sync after a failure retries an unreachable storage
BEST_EFFORT_RETRY_S = 10.0
MIB = 1 << 20


def mirrored(rel: str) -> bool:
    """Whether the run folder's file ``rel`` (posix, relative) belongs in the bucket."""
    parts = rel.split("/")
    return parts[0] not in LOCAL_ONLY and not any(p.startswith(".") for p in parts)


@dataclass(frozen=True)
class _Sig:
    """What a local file looked like when it was uploaded (or restored)."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Local:
    sig: _Sig
    inode: tuple[int, int]
    links: int


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    mtime: float


@dataclass
class RestoreResult:
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    #: the folder already had a history: nothing was downloaded
    kept_local: bool = False
    #: checkpoint objects left in the bucket because its index does not name them
    ignored: list[str] = field(default_factory=list)


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    #: copied inside the bucket from an object with the same content (hard links)
    copied: list[str] = field(default_factory=list)
    #: the seals written, in order
    sealed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.uploaded or self.copied or self.sealed or self.deleted)


class _Counter:
    """Bytes moved, shared by the transfer threads: ``retrying`` restarts its clock while they grow."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n

    def __call__(self) -> int:
        return self.value


class RunMirror:
    """The run folder ``out`` mirrored to the s3 prefix ``uri`` (see the module's docstring)."""

    def __init__(
        self,
        uri: str | ArtifactUri,
        out: str | Path,
        *,
        rank: int = 0,
        env: Mapping[str, str] | None = None,
        retry_s: float = DEFAULT_RETRY_TOTAL_S,
        on_retry: Callable[[str], None] | None = None,
        client: Any = None,
    ) -> None:
        text = str(uri)
        try:
            self.uri = uri if isinstance(uri, ArtifactUri) else parse(text)
        except ValueError as e:
            raise ArtifactError(ExitCode.BAD_INPUT, text, str(e).removeprefix(f"{text}: ")) from e
        if self.uri.scheme != "s3":
            raise ArtifactError(ExitCode.BAD_INPUT, self.uri, "checkpointsUri must be an s3:// location")
        self.out = Path(out)
        self.rank = rank
        #: the folder this rank restores (rank 0: the run folder; rank N: ranks/N)
        self.rank_dir = self.out if rank == 0 else self.out / "ranks" / str(rank)
        self.env = env
        self.retry_s = retry_s
        self.on_retry = on_retry or _warn
        self._client = client
        #: what the bucket holds, as far as this process knows: relative path -> the local file's
        #: signature when it was uploaded or restored (None: an object whose content is unknown)
        self._remote: dict[str, _Sig | None] = {}
        self._prefix = f"{self.uri.path}/" if self.uri.path else ""

    @classmethod
    def for_run(cls, spec: RunSpec, rank: int = 0) -> RunMirror | None:
        """The mirror of ``spec``'s run folder, None when the run has no ``checkpointsUri``."""
        if not spec.checkpoints_uri:
            return None
        return cls(spec.checkpoints_uri, spec.output_path, rank=rank)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.env, max_pool_connections=CONCURRENCY + 4)
        return self._client

    def _key(self, rel: str) -> str:
        return self._prefix + rel

    def _retry(
        self, op: Callable[[], Any], what: str, retry_s: float, progress: _Counter | None = None
    ) -> Any:
        return retrying(op, self.uri, total_s=retry_s, what=what, on_retry=self.on_retry, progress=progress)

    # --- restore -------------------------------------------------------------------------------

    def _in_restore_scope(self, rel: str) -> bool:
        if self.rank == 0:
            return rel.split("/", 1)[0] != "ranks"
        return rel.startswith(f"ranks/{self.rank}/")

    def _list(self) -> dict[str, _Object]:
        objects: dict[str, _Object] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.uri.bucket, Prefix=self._prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                rel = key[len(self._prefix) :]
                if not key.startswith(self._prefix) or not rel or key.endswith("/") or not mirrored(rel):
                    continue
                try:
                    safe_relpath(rel, self.uri)
                except ArtifactError:
                    log.warning("%s: ignoring the object %r: not a path inside the run folder", self.uri, rel)
                    continue
                modified = item["LastModified"]
                mtime = modified.timestamp() if isinstance(modified, datetime) else float(modified)
                objects[rel] = _Object(key, int(item["Size"]), mtime)
        return objects

    def restore(self, *, retry_s: float | None = None) -> RestoreResult:
        """Download this rank's part of the run folder from the bucket (see the module's docstring)."""
        retry_s = self.retry_s if retry_s is None else retry_s
        started = time.monotonic()
        result = RestoreResult()
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        marker = self.rank_dir / RESTORING_MARKER
        objects: dict[str, _Object] = self._retry(self._list, "list the run folder", retry_s)
        # what this rank restores is what it remembers: rank 0, which alone uploads and deletes, leaves
        # the objects of ranks/ alone until it has seen their files (their ranks restore them)
        scope = {r: o for r, o in objects.items() if self._in_restore_scope(r)}
        if (self.rank_dir / EVENTS).is_file() and not marker.exists():
            self._remember_existing(scope)
            result.kept_local = True
            print(
                f"checkpoints: {self.rank_dir} already has a history (newer than {self.uri}): "
                "nothing restored",
                file=sys.stderr,
            )
            return result
        marker.touch()
        self._remove_temporaries()
        mine = scope
        if self.rank == 0:
            mine, result.ignored = self._named_checkpoints_only(mine, retry_s)
        self._download(mine, retry_s)
        for rel in scope:
            restored = self._stat(rel) if rel in mine else None
            self._remote[rel] = restored.sig if restored is not None else None
        marker.unlink(missing_ok=True)
        result.files = sorted(mine)
        result.bytes = sum(o.size for o in mine.values())
        result.seconds = round(time.monotonic() - started, 3)
        if mine:
            print(
                f"checkpoints: restored {len(mine)} files ({result.bytes / MIB:.1f} MiB) from {self.uri} "
                f"in {result.seconds:.1f} s",
                file=sys.stderr,
            )
        elif self.rank == 0:
            print(f"checkpoints: nothing at {self.uri} yet: a fresh run", file=sys.stderr)
        return result

    def _named_checkpoints_only(
        self, objects: dict[str, _Object], retry_s: float
    ) -> tuple[dict[str, _Object], list[str]]:
        """``objects`` without the checkpoints the bucket's index does not name."""
        names: set[str] = set()
        index = objects.get(CHECKPOINT_INDEX)
        if index is not None:

            def read() -> bytes:
                body: bytes = self.client.get_object(Bucket=self.uri.bucket, Key=index.key)["Body"].read()
                return body

            try:
                names = set(json.loads(self._retry(read, "read the checkpoint index", retry_s))["files"])
            except (ValueError, KeyError, TypeError):
                log.warning(
                    "%s: %s is not a checkpoint index: no checkpoint restored", self.uri, CHECKPOINT_INDEX
                )
                objects = {r: o for r, o in objects.items() if r != CHECKPOINT_INDEX}
        kept: dict[str, _Object] = {}
        ignored: list[str] = []
        for rel, obj in objects.items():
            folder, _, name = rel.partition("/")
            if folder == "checkpoints" and rel != CHECKPOINT_INDEX and name not in names:
                ignored.append(rel)
            else:
                kept[rel] = obj
        if ignored:
            log.info("%s: not restoring %s: the checkpoint index does not name them", self.uri, ignored)
        return kept, sorted(ignored)

    def _remember_existing(self, objects: dict[str, _Object]) -> None:
        """The bucket's state when the local folder is kept: an object counts as the local file's
        copy when the sizes agree and the file has not changed since the object was written."""
        for rel, obj in objects.items():
            local = self._stat(rel)
            same = (
                local is not None and local.sig.size == obj.size and local.sig.mtime_ns / 1e9 <= obj.mtime + 1
            )
            self._remote[rel] = local.sig if same and local is not None else None

    def _place(self, tmp: Path, rel: str, obj: _Object, done: set[str]) -> None:
        """A downloaded temporary into its place, with the object's time (what ``_remember_existing``
        compares)."""
        dest = self.out / rel
        os.replace(tmp, dest)
        os.utime(dest, (obj.mtime, obj.mtime))
        done.add(rel)

    def _remove_temporaries(self) -> None:
        for path in self.rank_dir.rglob(f".*{_TMP_SUFFIX}*"):
            if path.is_file():
                path.unlink(missing_ok=True)

    def _download(self, objects: dict[str, _Object], retry_s: float) -> None:
        if not objects:
            return
        from boto3.s3.transfer import TransferConfig
        from s3transfer.subscribers import BaseSubscriber

        moved = _Counter()
        done: set[str] = set()

        class _Count(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                moved.add(bytes_transferred)

        def attempt() -> None:
            started: list[tuple[str, Path, Any]] = []
            with transfers(self.client, _transfer_config(TransferConfig)) as manager:
                for rel, obj in sorted(objects.items()):
                    if rel in done:
                        continue
                    dest = self.out / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}{_TMP_SUFFIX}")
                    future = manager.download(self.uri.bucket, obj.key, str(tmp), subscribers=[_Count()])
                    started.append((rel, tmp, future))
                error = _settle(started, lambda rel, tmp: self._place(tmp, rel, objects[rel], done))
                if error is not None:
                    raise error

        self._retry(attempt, "restore the run folder", retry_s, moved)

    # --- sync ----------------------------------------------------------------------------------

    def _stat(self, rel: str) -> _Local | None:
        try:
            st = (self.out / rel).stat()
        except OSError:
            return None
        return _Local(_Sig(st.st_size, st.st_mtime_ns), (st.st_dev, st.st_ino), st.st_nlink)

    def _scan(self) -> dict[str, _Local]:
        """Every mirrored regular file of the run folder."""
        found: dict[str, _Local] = {}
        if not self.out.is_dir():
            return found
        for root, dirs, files in os.walk(self.out):
            base = Path(root)
            rel_root = base.relative_to(self.out).as_posix()
            dirs[:] = sorted(d for d in dirs if mirrored(f"{rel_root}/{d}" if rel_root != "." else d))
            for name in files:
                rel = f"{rel_root}/{name}" if rel_root != "." else name
                if not mirrored(rel) or (base / name).is_symlink():
                    continue
                local = self._stat(rel)
                if local is not None:
                    found[rel] = local
        return found

    def sync(self, *, final: bool = False, retry_s: float | None = None) -> SyncResult:
        """Upload what changed since the last sync, the seals last, then delete what is gone.

        ``final``: the attempt's last sync; the bucket is then listed and checked against the folder
        (anything missing there is uploaded again). A no-op on ranks > 0.
        """
        result = SyncResult()
        if self.rank != 0:
            return result
        retry_s = self.retry_s if retry_s is None else retry_s
        started = time.monotonic()
        # the index as it is now: every checkpoint it names exists now and is uploaded below
        index_path = self.out / CHECKPOINT_INDEX
        index_local = self._stat(CHECKPOINT_INDEX)
        index_body = index_path.read_bytes() if index_local is not None else None
        local = self._scan()
        if index_local is not None:
            local[CHECKPOINT_INDEX] = index_local
        changed = [r for r in sorted(local) if r not in SEALS and self._remote.get(r) != local[r].sig]
        uploads, copies = self._plan(changed, local)
        self._transfer(uploads, copies, local, result, retry_s)
        if (
            index_body is not None
            and index_local is not None
            and self._remote.get(CHECKPOINT_INDEX) != index_local.sig
        ):
            self._seal_index(index_body, index_local.sig, local, result, retry_s)
        summary = local.get(SUMMARY)
        if summary is not None and self._remote.get(SUMMARY) != summary.sig:
            body = (self.out / SUMMARY).read_bytes()
            self._put(SUMMARY, body, summary.sig, retry_s)
            result.sealed.append(SUMMARY)
            result.bytes += len(body)
        self._delete_gone(local, result, retry_s)
        if final and self._verify(local, retry_s):
            again = self.sync(retry_s=retry_s)
            for name in ("uploaded", "copied", "sealed", "deleted"):
                getattr(result, name).extend(getattr(again, name))
            result.bytes += again.bytes
        result.seconds = round(time.monotonic() - started, 3)
        if result.changed or final:
            print(
                f"checkpoints: mirrored to {self.uri}: {len(result.uploaded)} uploaded "
                f"({result.bytes / MIB:.1f} MiB), {len(result.copied)} copied, "
                f"{len(result.deleted)} deleted in {result.seconds:.1f} s",
                file=sys.stderr,
            )
        return result

    def _plan(self, changed: list[str], local: dict[str, _Local]) -> tuple[list[str], dict[str, str]]:
        """The files to upload, and those to copy from an object with the same inode (a hard link:
        ``best_model.pth``) that is in the bucket already or uploaded first."""
        sources: dict[tuple[int, int], str] = {}
        for rel, loc in local.items():
            if loc.links > 1 and rel not in SEALS and self._remote.get(rel) == loc.sig:
                sources.setdefault(loc.inode, rel)
        uploads: list[str] = []
        copies: dict[str, str] = {}
        # epoch files before best_model.pth: the copy goes to the link, the upload to the epoch file
        for rel in sorted(changed, key=lambda r: (r.endswith("best_model.pth"), r)):
            loc = local[rel]
            if loc.links > 1 and loc.inode in sources:
                copies[rel] = sources[loc.inode]
            else:
                uploads.append(rel)
                if loc.links > 1:
                    sources[loc.inode] = rel
        return uploads, copies

    def _transfer(
        self,
        uploads: list[str],
        copies: dict[str, str],
        local: dict[str, _Local],
        result: SyncResult,
        retry_s: float,
    ) -> None:
        if not uploads and not copies:
            return
        from boto3.s3.transfer import TransferConfig
        from s3transfer.subscribers import BaseSubscriber

        moved = _Counter()

        class _Count(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                moved.add(bytes_transferred)

        def done(rel: str, copied: bool) -> None:
            self._remote[rel] = local[rel].sig
            if copied:
                result.copied.append(rel)
            else:
                result.uploaded.append(rel)
                result.bytes += local[rel].sig.size

        def attempt() -> None:
            with transfers(self.client, _transfer_config(TransferConfig)) as manager:
                started = [
                    (rel, False, manager.upload(
                        os.fspath(self.out / rel), self.uri.bucket, self._key(rel), subscribers=[_Count()]
                    ))
                    for rel in uploads
                    if self._remote.get(rel) != local[rel].sig
                ]  # fmt: skip
                error = _settle(started, done)
                if error is None:  # a link's source is in the bucket now
                    source = {"Bucket": self.uri.bucket}
                    started = [
                        (rel, True, manager.copy(
                            {**source, "Key": self._key(src)}, self.uri.bucket, self._key(rel),
                            subscribers=[_Count()],
                        ))
                        for rel, src in copies.items()
                        if self._remote.get(rel) != local[rel].sig
                    ]  # fmt: skip
                    error = _settle(started, done)
                if error is not None:
                    raise error

        self._retry(attempt, "upload the run folder", retry_s, moved)

    def _seal_index(
        self, body: bytes, sig: _Sig, local: dict[str, _Local], result: SyncResult, retry_s: float
    ) -> None:
        try:
            names = list(json.loads(body)["files"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: not a checkpoint index: not uploaded", self.out / CHECKPOINT_INDEX)
            return
        missing = [
            n
            for n in names
            if (loc := local.get(f"checkpoints/{n}")) is None
            or self._remote.get(f"checkpoints/{n}") != loc.sig
        ]
        if missing:  # cannot happen while only this process writes the folder; never seal them
            log.warning(
                "%s: the index names %s, which are not uploaded: index not uploaded", self.uri, missing
            )
            return
        self._put(CHECKPOINT_INDEX, body, sig, retry_s)
        result.sealed.append(CHECKPOINT_INDEX)
        result.bytes += len(body)

    def _put(self, rel: str, body: bytes, sig: _Sig, retry_s: float) -> None:
        def put() -> None:
            self.client.put_object(Bucket=self.uri.bucket, Key=self._key(rel), Body=body)

        self._retry(put, f"upload {rel}", retry_s)
        self._remote[rel] = sig

    def _delete_gone(self, local: dict[str, _Local], result: SyncResult, retry_s: float) -> None:
        for rel in sorted(r for r in self._remote if r not in local):

            def delete(rel: str = rel) -> None:
                try:
                    self.client.delete_object(Bucket=self.uri.bucket, Key=self._key(rel))
                except Exception as e:
                    if classify(e, self.uri).code != ExitCode.ARTIFACT_NOT_FOUND:
                        raise

            self._retry(delete, f"delete {rel}", retry_s)
            del self._remote[rel]
            result.deleted.append(rel)

    def _verify(self, local: dict[str, _Local], retry_s: float) -> bool:
        """Whether the bucket misses (or has another size of) a file of the folder; those are
        marked for upload."""
        objects: dict[str, _Object] = self._retry(self._list, "list the run folder", retry_s)
        stale = False
        for rel, loc in local.items():
            obj = objects.get(rel)
            if obj is None or obj.size != loc.sig.size:
                log.warning("%s: %s is not in the bucket as it is here: uploading it again", self.uri, rel)
                self._remote[rel] = None
                stale = True
        for rel in objects:
            if rel not in local and rel not in self._remote and self._in_restore_scope(rel):
                self._remote[rel] = None  # an object the folder no longer has: deleted by the next sync
                stale = True
        return stale


def _settle(started: list[tuple[Any, Any, Any]], done: Callable[[Any, Any], None]) -> BaseException | None:
    """Wait for every ``(a, b, future)``; ``done(a, b)`` for each that succeeded; the first error."""
    error: BaseException | None = None
    for a, b, future in started:
        try:
            future.result()
        except BaseException as e:
            error = error or e
            continue
        done(a, b)
    return error


def _transfer_config(config_cls: Any) -> Any:
    return config_cls(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=CONCURRENCY,
        io_chunksize=IO_CHUNK,
    )


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)
