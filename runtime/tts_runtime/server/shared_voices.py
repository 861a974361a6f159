"""The shared voice store: uploaded voices in object storage, the same on every replica.

With ``voicesUri`` set (``s3://bucket/prefix/_voices/<namespace>/<voicemodel>``), a voice uploaded
to one pod is written there before the upload is answered, and every other pod copies it into its
own voices directory (``voices.py``, the same layout) within about a second::

    <voicesUri>/<name>/clip-<i>.wav             the reference clips
    <voicesUri>/<name>/latents-<digest>.pt      conditioning latents, one file per model version
    <voicesUri>/<name>/voice.json               name, creation time, clips with their sha256: last

``voice.json`` is written last and deleted first: a voice is in the store exactly while it is
there, so a replica never copies half a voice. Each pod lists the prefix every
``voices_poll_seconds`` (one cheap listing) and compares the ETags with what it copied: a new or
replaced ``voice.json`` brings the voice (its clips and latents) in, a new latents file (another
replica computed them for a version) is copied beside the voice, a ``voice.json`` that is gone
takes the voice away. Latents computed here are uploaded when the voice is in the store, so the
other replicas load them instead of computing them again. The spec's voices stay pod-local: a
stored voice of the same name is ignored.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_contract.contract import sha256_file
from tts_contract.uris import parse

from .settings import is_safe_name
from .voices import LATENTS_PREFIX, VOICE_FILE, VoiceStore

log = logging.getLogger(__name__)

#: name -> file -> ETag
Listing = dict[str, dict[str, str]]


@dataclass
class SyncChanges:
    """What a ``sync`` changed in the pod's voices directory."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: voices whose new latents files were copied in
    latents: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.replaced or self.removed or self.latents)


def _is_store_file(file: str) -> bool:
    return file == VOICE_FILE or (
        is_safe_name(file) and (file.startswith("clip-") or file.startswith(LATENTS_PREFIX))
    )


class SharedVoices:
    """The store at ``uri`` and the pod's copy of it in ``local``.

    ``protected(name)`` says which local voices are the pod's own (the spec's): never replaced,
    removed or uploaded. Every method blocks (network): call them from a thread. Errors are
    ``ArtifactError`` (``tts_runtime.artifacts.store``).
    """

    def __init__(
        self,
        uri: str,
        local: VoiceStore,
        *,
        protected: Callable[[str], bool] = lambda _: False,
        client: Any = None,
    ) -> None:
        parsed = parse(uri)
        if parsed.scheme != "s3":
            raise ValueError(f"voicesUri {uri}: the voice store must be an s3:// location")
        self.uri = str(parsed)
        self.bucket = parsed.bucket
        self.prefix = parsed.path
        self.local = local
        self._protected = protected
        self._client = client
        #: what this pod's copy holds: name -> file -> ETag of the stored object it came from
        self._known: Listing = {}
        self._lock = threading.Lock()
        local.on_latents_saved = self._share_latents

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from tts_runtime.artifacts.store import s3_client

            # short timeouts: a poll must not hang for a minute on a storage that went away
            self._client = s3_client(connect_timeout=3.0, read_timeout=30.0)
        return self._client

    def _key(self, name: str, file: str = "") -> str:
        return "/".join(part for part in (self.prefix, name, file) if part)

    def _uri(self, name: str = "", file: str = "") -> str:
        return "s3://" + "/".join(part for part in (self.bucket, self._key(name, file)) if part)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from tts_runtime.artifacts.store import classify

        try:
            return fn()
        except Exception as e:
            raise classify(e, what) from e

    # --- reading the store --------------------------------------------------------------------------

    def listing(self) -> Listing:
        """Every voice file in the store: name -> file -> ETag (voices without ``voice.json`` too)."""
        found: Listing = {}
        base = f"{self.prefix}/" if self.prefix else ""

        def pages() -> list[dict[str, Any]]:
            paginator = self.client.get_paginator("list_objects_v2")
            return list(paginator.paginate(Bucket=self.bucket, Prefix=base))

        for page in self._call(self.uri, pages):
            for obj in page.get("Contents", []) or []:
                rest = obj["Key"][len(base) :]
                name, _, file = rest.partition("/")
                if not is_safe_name(name) or not _is_store_file(file):
                    continue
                found.setdefault(name, {})[file] = str(obj.get("ETag", ""))
        return found

    def exists(self, name: str) -> bool:
        from tts_runtime.artifacts.store import ArtifactError

        try:
            self._call(
                self._uri(name, VOICE_FILE),
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(name, VOICE_FILE)),
            )
        except ArtifactError as e:
            if e.reason == "ArtifactNotFound":
                return False
            raise
        return True

    def _get(self, name: str, file: str, dest: Path) -> str:
        """Download one object to ``dest``; its ETag."""

        def get() -> str:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name, file))
            tmp = dest.with_name(f".{dest.name}.part")
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response["Body"], f)
            tmp.replace(dest)
            return str(response.get("ETag", ""))

        result: str = self._call(self._uri(name, file), get)
        return result

    def _put(self, name: str, file: str, path: Path) -> str:
        def put() -> str:
            with open(path, "rb") as body:
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(name, file), Body=body)
            return str(response.get("ETag", ""))

        result: str = self._call(self._uri(name, file), put)
        return result

    # --- writing the store --------------------------------------------------------------------------

    def publish(self, name: str) -> None:
        """Upload the pod's voice ``name`` (clips, latents, then ``voice.json``)."""
        folder = self.local.folder(name)
        files = sorted(p for p in folder.iterdir() if p.is_file() and _is_store_file(p.name))
        etags: dict[str, str] = {}
        for path in files:
            if path.name != VOICE_FILE:
                etags[path.name] = self._put(name, path.name, path)
        etags[VOICE_FILE] = self._put(name, VOICE_FILE, folder / VOICE_FILE)
        with self._lock:
            self._known[name] = etags

    def delete(self, name: str) -> None:
        """Remove ``name`` from the store: ``voice.json`` first (the voice is gone for every
        replica from then on), then its other files."""
        with self._lock:
            self._known.pop(name, None)
        self._call(
            self._uri(name, VOICE_FILE),
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(name, VOICE_FILE)),
        )

        def rest() -> None:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(name) + "/"):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", []) or []]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

        self._call(self._uri(name), rest)

    def _share_latents(self, name: str, path: Path) -> None:
        """Upload latents computed here when the voice is in the store (the others reuse them)."""
        with self._lock:
            known = self._known.get(name)
            if known is None or path.name in known:
                return
        etag = self._put(name, path.name, path)
        with self._lock:
            if name in self._known:
                self._known[name][path.name] = etag

    # --- the pod's copy -----------------------------------------------------------------------------

    def sync(self, *, initial: bool = False) -> SyncChanges:
        """Bring the pod's voices directory in line with the store. ``initial``: also remove stored
        voices the directory holds from before (a restarted container) that the store no longer has."""
        remote = self.listing()
        changes = SyncChanges()
        with self._lock:
            known = {name: dict(files) for name, files in self._known.items()}
        for name, files in sorted(remote.items()):
            if VOICE_FILE not in files or self._protected(name):
                continue
            mine = known.get(name)
            if mine is None or mine.get(VOICE_FILE) != files[VOICE_FILE]:
                replaced = mine is not None or self.local.exists(name)
                etags = self._fetch_voice(name, files)
                if etags is None:
                    continue
                (changes.replaced if replaced else changes.added).append(name)
                with self._lock:
                    self._known[name] = etags
                continue
            for file, etag in files.items():
                if file.startswith(LATENTS_PREFIX) and mine.get(file) != etag:
                    self._get(name, file, self.local.folder(name) / file)
                    changes.latents.append(name)
                    with self._lock:
                        self._known.setdefault(name, {})[file] = etag
        gone = [n for n in known if VOICE_FILE not in remote.get(n, {})]
        if initial:
            gone += [
                n
                for n in self.local.names()
                if n not in known and VOICE_FILE not in remote.get(n, {}) and self.local.source(n) == "upload"
            ]
        for name in gone:
            if self._protected(name):
                continue
            with self._lock:
                self._known.pop(name, None)
            if self.local.exists(name):
                self.local.delete(name)
            changes.removed.append(name)
        return changes

    def _fetch_voice(self, name: str, files: dict[str, str]) -> dict[str, str] | None:
        """Copy one stored voice into place; its files' ETags, or None when it is not complete yet
        (a clip missing or not matching voice.json: written again right now; the next poll retries)."""
        scratch = self.local.scratch(name)
        try:
            etags = {VOICE_FILE: self._get(name, VOICE_FILE, scratch / VOICE_FILE)}
            record = json.loads((scratch / VOICE_FILE).read_text())
            for clip in record.get("clips", []):
                file = str(clip.get("file", ""))
                if not _is_store_file(file) or file not in files:
                    log.info("voice %s: %s not in the store yet", name, file)
                    return None
                etags[file] = self._get(name, file, scratch / file)
                if clip.get("sha256") and sha256_file(scratch / file) != clip["sha256"]:
                    log.info("voice %s: %s does not match voice.json yet", name, file)
                    return None
            for file in files:
                if file.startswith(LATENTS_PREFIX):
                    etags[file] = self._get(name, file, scratch / file)
            self.local.install(name, scratch)
            return etags
        except ValueError as e:  # voice.json that is not JSON
            log.warning("voice %s: unreadable %s in the store: %s", name, VOICE_FILE, e)
            return None
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
